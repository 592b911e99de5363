"""What the virtual-token methods train: modules that produce `n` virtual tokens.

Each source's `forward()` takes no input and returns its tokens, `(n, width)`:
    PromptTable     prompt tuning: the tokens themselves, width = hidden size
    PromptEncoder   P-tuning: an MLP (or bidirectional LSTM + MLP) over n trained embeddings
    PrefixEncoder   prefix tuning / P-tuning v2: every layer's key and value prefix in one row per
                    token, width = num_layers · 2 · kv_heads · head_dim, ordered (layer, key|value,
                    head, head_dim), with an optional two-layer tanh MLP in front (prefix_projection)

`kind` says where the tokens go (`tuners/virtual_tokens.py` puts them there): "embeddings" are
prepended to the input embeddings, "prefix" is written into the key/value cache.

On disk (peft's format) an adapter is only its final tokens, `prompt_embeddings` (n, width):
peft saves the encoder's output, not the encoder, and loads it (inference mode) as a fixed
table. A P-tuning or projected-prefix adapter read from a file is therefore a `PromptTable` /
plain `PrefixEncoder` holding those tokens (`embedding.weight`); further training moves them
directly. (Checkpoints for resuming keep the whole encoder: they save every trainable tensor.)
"""
from __future__ import annotations

from typing import ClassVar, Literal, Optional

import torch
from pydantic import Field, field_validator, model_validator
from torch import nn

from ..config import PeftFormatConfig


class PromptLearningConfig(PeftFormatConfig):
    """Shared by the virtual-token methods (prompt tuning, P-tuning, prefix tuning): peft's field names.

    `token_dim`, `num_layers`, `num_attention_heads` and `num_transformer_submodules` describe the
    model; left unset they are filled in from it when the adapter is added (and written to
    adapter_config.json, where peft reads them). See `lorakit.tuners.prompt`.
    """

    PEFT_EXTRAS: ClassVar[dict] = {"revision": None}

    num_virtual_tokens: int = Field(20, gt=0, description="Number of virtual tokens (prompt length or prefix length).")
    token_dim: int | None = Field(
        None, gt=0, description="Width of a virtual token: the hidden size (prefix tuning: key/value heads × head "
        "dim). Filled in from the model.")
    num_transformer_submodules: int | None = Field(
        None, description="1: decoder-only or encoder-only models (encoder-decoder models are not supported).")
    num_attention_heads: int | None = Field(
        None, gt=0, description="Attention heads (prefix tuning: key/value heads). Filled in from the model.")
    num_layers: int | None = Field(None, gt=0, description="Transformer layers. Filled in from the model.")
    modules_to_save: list[str] | None = Field(
        None, description="Whole modules (e.g. a classification head) trained and saved with the adapter.")
    task_type: str | None = Field(None, description="peft task type, e.g. CAUSAL_LM or SEQ_CLS.")
    base_model_name_or_path: str | None = Field(None, description="Where the base model came from.")
    inference_mode: bool = Field(
        False, description="Written by peft. True: the adapter holds the final virtual tokens only (P-tuning's and "
        "the prefix projection's encoder is not rebuilt; no initialisation from text).")

    @field_validator("num_transformer_submodules")
    @classmethod
    def _one_stack(cls, v):
        if v not in (None, 1):
            raise ValueError(f"num_transformer_submodules={v}: encoder-decoder models are not supported (expected 1)")
        return v

    @field_validator("modules_to_save")
    @classmethod
    def _dedupe(cls, v):
        return list(dict.fromkeys(v)) if v else v


class PromptTuningConfig(PromptLearningConfig):
    """Prompt tuning (Lester et al. 2021): `num_virtual_tokens` trained embeddings prepended to the input."""

    PEFT_TYPE: ClassVar[str] = "PROMPT_TUNING"

    prompt_tuning_init: Literal["RANDOM", "TEXT", "SAMPLE_VOCAB"] = Field(
        "RANDOM", description="RANDOM: normal with the spread of the model's word embeddings; TEXT: the embeddings "
        "of prompt_tuning_init_text (repeated or cut to num_virtual_tokens); SAMPLE_VOCAB: random vocabulary rows.")
    prompt_tuning_init_text: str | None = Field(None, description="Text whose token embeddings start the prompt (TEXT).")
    tokenizer_name_or_path: str | None = Field(
        None, description="Tokenizer for TEXT: a local model dir, .gguf file or embedded name (default: "
        "base_model_name_or_path, the model's own).")
    tokenizer_kwargs: dict | None = Field(None, description="Keyword arguments for loading that tokenizer (TEXT only).")

    @model_validator(mode="after")
    def _text_init(self):
        if self.prompt_tuning_init == "TEXT" and not self.prompt_tuning_init_text:
            raise ValueError("prompt_tuning_init_text: required when prompt_tuning_init is TEXT")
        if self.tokenizer_kwargs and self.prompt_tuning_init != "TEXT":
            raise ValueError("tokenizer_kwargs: only used when prompt_tuning_init is TEXT")
        return self


class PromptEncoderConfig(PromptLearningConfig):
    """P-tuning (Liu et al. 2021): virtual tokens produced by a small MLP or LSTM over trained embeddings."""

    PEFT_TYPE: ClassVar[str] = "P_TUNING"

    encoder_reparameterization_type: Literal["MLP", "LSTM"] = Field(
        "MLP", description="MLP: three linear layers with ReLU; LSTM: a bidirectional LSTM, then a two-layer MLP.")
    encoder_hidden_size: int | None = Field(None, gt=0, description="Hidden width of the encoder (default: token_dim).")
    encoder_num_layers: int = Field(2, gt=0, description="LSTM layers (the MLP always has three linear layers).")
    encoder_dropout: float = Field(0.0, ge=0.0, lt=1.0, description="Dropout between LSTM layers.")


class PrefixTuningConfig(PromptLearningConfig):
    """Prefix tuning (Li & Liang 2021) / P-tuning v2: trained keys and values prepended in every layer."""

    PEFT_TYPE: ClassVar[str] = "PREFIX_TUNING"

    prefix_projection: bool = Field(
        False, description="Produce the prefixes with a two-layer MLP (tanh) from num_virtual_tokens embeddings "
        "instead of training them directly.")
    encoder_hidden_size: int | None = Field(None, gt=0, description="Hidden width of that MLP (default: token_dim).")
    init_weights: Literal["zero"] | None = Field(
        None, description="None: start as prefix_init says; 'zero': all-zero keys and values.")
    prefix_init: Literal["SAMPLE_VOCAB", "RANDOM"] | None = Field(
        None, description="SAMPLE_VOCAB (the default of a direct prefix): the model's own keys and values for "
        "num_virtual_tokens random vocabulary tokens (real words' activations, as Li & Liang start), so the fresh "
        "adapter leaves the model's predictions almost as they were; RANDOM (the default with prefix_projection): "
        "peft's start, N(0, 1) prefixes (they swamp a pretrained model's attention: SmolLM2-135M's held-out loss "
        "goes from 2.85 to 10.4) or the projection's random MLP (small outputs; it trains well). Not written to "
        "adapter_config.json (it only shapes training).")

    TRAINER_ONLY: ClassVar[frozenset] = frozenset({"prefix_init"})

    @model_validator(mode="after")
    def _one_init(self):
        if self.prefix_init is not None and self.init_weights == "zero":
            raise ValueError("prefix_init: not used with init_weights 'zero' (all-zero prefixes); remove one of them")
        if self.prefix_init == "SAMPLE_VOCAB" and self.prefix_projection:
            raise ValueError("prefix_init: SAMPLE_VOCAB starts a direct prefix, not prefix_projection's MLP "
                             "(which starts as peft's, RANDOM)")
        return self



class PromptTable(nn.Module):
    """Virtual tokens trained directly: `embedding.weight` (n, width)."""

    kind: ClassVar[str] = "embeddings"

    def __init__(self, num_tokens: int, width: int, device=None):
        super().__init__()
        self.embedding = nn.Embedding(num_tokens, width, device=device)

    def forward(self) -> torch.Tensor:
        return self.embedding.weight

    def table(self) -> Optional[nn.Parameter]:
        """The tokens as stored (what a file is loaded into), or None when they are computed."""
        return self.embedding.weight

    @torch.no_grad()
    def init_random(self, like: torch.Tensor, generator: Optional[torch.Generator] = None) -> None:
        """Normal with the standard deviation of `like` (the word embeddings), so the virtual tokens start
        at the scale of real ones (peft's RANDOM draws N(0, 1), far off for most models)."""
        std = float(like.float().std())
        w = torch.randn(self.embedding.weight.shape, generator=generator) * std
        self.embedding.weight.copy_(w.to(self.embedding.weight.device))

    @torch.no_grad()
    def init_from_tokens(self, word_embeddings: torch.Tensor, token_ids: list[int]) -> None:
        """Start from the embeddings of `token_ids` (TEXT, SAMPLE_VOCAB), repeated or cut to n tokens."""
        n = self.embedding.num_embeddings
        if not token_ids:
            raise ValueError("prompt_tuning_init_text: the text has no tokens")
        ids = (token_ids * (n // len(token_ids) + 1))[:n]
        rows = word_embeddings[torch.tensor(ids, device=word_embeddings.device)]
        self.embedding.weight.copy_(rows.float().to(self.embedding.weight.device))


class PromptEncoder(nn.Module):
    """P-tuning's reparameterisation: tokens = head(embedding), (n, dim) -> (n, dim).

    MLP: Linear(dim, h) ReLU Linear(h, h) ReLU Linear(h, dim).
    LSTM: bidirectional LSTM(dim -> h, `num_layers`, dropout) then Linear(2h, 2h) ReLU Linear(2h, dim).
    Parameter names follow peft's (`embedding`, `mlp_head`, `lstm_head`).
    """

    kind: ClassVar[str] = "embeddings"

    def __init__(self, num_tokens: int, dim: int, hidden: int, lstm: bool = False, num_layers: int = 2,
                 dropout: float = 0.0, device=None):
        super().__init__()
        self.embedding = nn.Embedding(num_tokens, dim, device=device)
        if lstm:
            self.lstm_head = nn.LSTM(dim, hidden, num_layers=num_layers, dropout=dropout, bidirectional=True,
                                     batch_first=True, device=device)
            self.mlp_head = nn.Sequential(nn.Linear(2 * hidden, 2 * hidden, device=device), nn.ReLU(),
                                          nn.Linear(2 * hidden, dim, device=device))
        else:
            self.lstm_head = None
            self.mlp_head = nn.Sequential(
                nn.Linear(dim, hidden, device=device), nn.ReLU(), nn.Linear(hidden, hidden, device=device), nn.ReLU(),
                nn.Linear(hidden, dim, device=device))

    def forward(self) -> torch.Tensor:
        x = self.embedding.weight
        if self.lstm_head is not None:
            x = self.lstm_head(x[None])[0][0]
        return self.mlp_head(x)

    def table(self) -> None:
        return None


class PrefixEncoder(nn.Module):
    """Per-layer key/value prefixes, (n, num_layers · 2 · kv_heads · head_dim).

    Without projection the prefixes are `embedding.weight` itself; with it, embedding (n, dim) →
    Linear(dim, hidden) tanh Linear(hidden, width) (peft's `transform`).
    """

    kind: ClassVar[str] = "prefix"

    def __init__(self, num_tokens: int, dim: int, num_layers: int, projection_hidden: Optional[int] = None,
                 zero_init: bool = False, device=None):
        super().__init__()
        width = num_layers * 2 * dim
        self.num_layers, self.dim = num_layers, dim
        if projection_hidden is not None:
            self.embedding = nn.Embedding(num_tokens, dim, device=device)
            self.transform = nn.Sequential(nn.Linear(dim, projection_hidden, device=device), nn.Tanh(),
                                           nn.Linear(projection_hidden, width, device=device))
            last = self.transform[-1]
            if zero_init:
                nn.init.zeros_(last.weight)
                nn.init.zeros_(last.bias)
        else:
            self.embedding = nn.Embedding(num_tokens, width, device=device)
            self.transform = None
            if zero_init:
                nn.init.zeros_(self.embedding.weight)

    def forward(self) -> torch.Tensor:
        x = self.embedding.weight
        return x if self.transform is None else self.transform(x)

    def table(self) -> Optional[nn.Parameter]:
        return self.embedding.weight if self.transform is None else None


def saved_tokens(source: nn.Module) -> torch.Tensor:
    """What peft's file holds for this source: its tokens (n, width), computed in eval mode (no dropout)."""
    was_training = source.training
    source.eval()
    try:
        with torch.no_grad():
            return source().detach()
    finally:
        source.train(was_training)
