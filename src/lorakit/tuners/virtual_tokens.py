"""Virtual-token adapters on a model: prompt tuning, P-tuning, prefix tuning.

A virtual-token method wraps no layer. `VirtualTokens` is installed on the model as
`model.virtual_tokens` (found by type) and holds the named sources (`tuners/prompt.py`); two hooks
on the model's backbone (`model.base_model`: LlamaModel, GPT2Model, BertModel, ...) hand the
backbone's inputs to `tuners/virtual_inputs.py` for the active source (or, under `route()`, each
row's own), which puts the tokens in, and trim the outputs back to the real tokens.
"""
from __future__ import annotations

import inspect
from typing import Optional, Sequence

import torch
from torch import nn

from ..errors import InputError
from .base import AdapterHolder, Kind, Method
from .prompt import (PrefixEncoder, PrefixTuningConfig, PromptEncoder, PromptEncoderConfig, PromptLearningConfig,
                     PromptTable, PromptTuningConfig, saved_tokens)
from .virtual_inputs import ModelSpec, add_embeddings, add_per_row, add_prefix, strip_outputs

HOLDER_NAME = "virtual_tokens"
FILLED = ("token_dim", "num_attention_heads", "num_layers", "num_transformer_submodules", "encoder_hidden_size",
          "tokenizer_name_or_path")
"""Config fields filled in from the model when an adapter is added (written to adapter_config.json)."""


def backbone_of(model: nn.Module) -> nn.Module:
    """The module whose forward takes input_ids / inputs_embeds and the cache (HF's `base_model`)."""
    body = getattr(model, "base_model", None)
    if not isinstance(body, nn.Module) or not callable(getattr(body, "get_input_embeddings", None)):
        raise InputError(f"{type(model).__name__}: virtual tokens need a Hugging Face transformers model "
                         "(with base_model and get_input_embeddings)")
    return body


def model_spec(model: nn.Module) -> ModelSpec:
    config = getattr(model, "config", None)
    if config is None:
        raise InputError(f"{type(model).__name__}: virtual tokens need a model with a transformers config")
    if getattr(config, "is_encoder_decoder", False):
        raise InputError(f"{type(model).__name__}: encoder-decoder models are not supported by the virtual-token "
                         "methods (decoder-only and encoder-only models are)")
    text = config.get_text_config() if hasattr(config, "get_text_config") else config
    heads = text.num_attention_heads
    params = inspect.signature(backbone_of(model).forward).parameters
    return ModelSpec(
        hidden=text.hidden_size, num_layers=text.num_hidden_layers, heads=heads,
        kv_heads=getattr(text, "num_key_value_heads", None) or heads,
        head_dim=getattr(text, "head_dim", None) or text.hidden_size // heads,
        max_positions=getattr(text, "max_position_embeddings", None),
        cache_arg=next((a for a in ("cache", "past_key_values") if a in params), None),
    )


def filled_config(config: PromptLearningConfig, spec: ModelSpec) -> PromptLearningConfig:
    """`config` with the model's dimensions filled in (peft's rule: prefix tuning counts key/value
    heads), or an InputError when the config names dimensions this model does not have."""
    prefix = isinstance(config, PrefixTuningConfig)
    dims = {"token_dim": spec.kv_heads * spec.head_dim if prefix else spec.hidden,
            "num_attention_heads": spec.kv_heads if prefix else spec.heads,
            "num_layers": spec.num_layers, "num_transformer_submodules": 1}
    wrong = [f"{k}={getattr(config, k)} (model: {v})" for k, v in dims.items()
             if getattr(config, k) is not None and getattr(config, k) != v]
    if wrong:
        raise InputError(f"{type(config).__name__} does not fit this model: {', '.join(wrong)}")
    if spec.max_positions and config.num_virtual_tokens >= spec.max_positions:
        raise InputError(f"num_virtual_tokens={config.num_virtual_tokens}: must be below the model's "
                         f"{spec.max_positions} positions (and leave room for the text)")
    if prefix and spec.cache_arg is None:
        raise InputError(f"{type(config).__name__}: this model's forward takes no key/value cache, which prefix "
                         "tuning needs")
    if "encoder_hidden_size" in type(config).model_fields and config.encoder_hidden_size is None:
        dims["encoder_hidden_size"] = dims["token_dim"]
    return config.model_copy(update=dims)


def _prompt_table(config: PromptTuningConfig, word_embeddings: torch.Tensor,
                  init_token_ids: Optional[list[int]]) -> PromptTable:
    table = PromptTable(config.num_virtual_tokens, config.token_dim, word_embeddings.device)
    if not config.inference_mode:
        if init_token_ids is not None:
            table.init_from_tokens(word_embeddings, init_token_ids)
        else:
            table.init_random(word_embeddings)
    return table


def _prompt_encoder(config: PromptEncoderConfig, word_embeddings: torch.Tensor, init_token_ids=None) -> nn.Module:
    n, device = config.num_virtual_tokens, word_embeddings.device
    if config.inference_mode:
        return PromptTable(n, config.token_dim, device)
    lstm = config.encoder_reparameterization_type == "LSTM"
    if not lstm and config.encoder_num_layers != 2:
        raise InputError(f"encoder_num_layers={config.encoder_num_layers}: only used by the LSTM encoder (the MLP "
                         "always has three layers); remove it or set encoder_reparameterization_type: LSTM")
    return PromptEncoder(n, config.token_dim, config.encoder_hidden_size, lstm, config.encoder_num_layers,
                         config.encoder_dropout, device)


def _prefix_encoder(config: PrefixTuningConfig, word_embeddings: torch.Tensor, init_token_ids=None) -> PrefixEncoder:
    hidden = config.encoder_hidden_size if config.prefix_projection and not config.inference_mode else None
    return PrefixEncoder(config.num_virtual_tokens, config.token_dim, config.num_layers, hidden,
                         config.init_weights == "zero", word_embeddings.device)


SOURCE_BUILDERS = {PromptTuningConfig: _prompt_table, PromptEncoderConfig: _prompt_encoder,
                   PrefixTuningConfig: _prefix_encoder}
"""Config type → function(filled config, word embeddings (vocab, d), init token ids) -> source module.
`inference_mode` builds the tokens as a plain table (what a file holds), skipping initialisation.
(A prefix's init token ids are applied after building: their keys and values need the model.)"""


def add_virtual_tokens(model: nn.Module, config: PromptLearningConfig, adapter_name: str) -> PromptLearningConfig:
    """Add a virtual-token adapter named `adapter_name` (installing `model.virtual_tokens` and its hooks
    on first use); returns the config with the model's dimensions filled in."""
    spec = model_spec(model)
    config = filled_config(config, spec)
    backbone = backbone_of(model)
    if isinstance(config, PrefixTuningConfig) and any(getattr(m, "gradient_checkpointing", False)
                                                      for m in model.modules()):
        raise InputError("prefix tuning does not work with gradient checkpointing (checkpointed layers drop the "
                         "key/value cache that holds the prefix); switch one of them off")
    if isinstance(config, PromptTuningConfig) and config.prompt_tuning_init == "TEXT" and not config.tokenizer_name_or_path:
        name = config.base_model_name_or_path or getattr(model, "name_or_path", None)  # the model's own tokenizer
        config = config.model_copy(update={"tokenizer_name_or_path": name or None})
    embeddings = backbone.get_input_embeddings().weight
    init_ids = _init_token_ids(config, embeddings.shape[0])  # (drawn first: a seed set just before reproduces them)
    source = SOURCE_BUILDERS[type(config)](config, embeddings, init_ids)
    if isinstance(source, PrefixEncoder) and init_ids is not None:  # (a direct prefix: its table is the tokens)
        with torch.no_grad():
            source.table().copy_(own_keys_and_values(model, torch.tensor([init_ids], device=embeddings.device)))
    source.__dict__["filled"] = config  # (what adapter_config.json records about the model, see _saved_config)
    install(model, spec).add(adapter_name, source)
    return config


def own_keys_and_values(model: nn.Module, ids: torch.Tensor) -> torch.Tensor:
    """The keys and values `model` computes for the tokens `ids` (1, n), in the prefix layout
    (n, layers · 2 · kv_heads · head_dim): a prefix that makes the model continue as if `ids` came
    first. Computed in eval mode, without gradients, with the model's virtual tokens off (other
    active adapters apply)."""
    from transformers import DynamicCache

    backbone, spec = backbone_of(model), model_spec(model)
    holder = holder_of(model)
    saved = {k: holder.__dict__[k] for k in ("active", "rows")} if holder is not None else {}
    modes = [(m, m.training) for m in model.modules()]
    cache = DynamicCache(config=backbone.config)
    try:
        if holder is not None:
            holder.__dict__.update(active=None, rows=None)
        model.eval()
        with torch.no_grad():
            backbone(input_ids=ids, use_cache=True, **{spec.cache_arg: cache})
    finally:
        if holder is not None:
            holder.__dict__.update(saved)
        for m, training in modes:
            m.training = training
    per_layer = torch.stack([torch.stack([layer.keys[0], layer.values[0]]) for layer in cache.layers])
    return per_layer.permute(3, 0, 1, 2, 4).reshape(ids.shape[1], -1)  # (layers, 2, kv_heads, n, dim) -> (n, ...)


def _init_token_ids(config: PromptLearningConfig, vocab_size: int) -> Optional[list[int]]:
    """The tokens a new adapter starts from: prompt tuning's TEXT (the text's token ids) and SAMPLE_VOCAB
    (random ids), direct prefix tuning's SAMPLE_VOCAB (random ids: their keys and values); None otherwise."""
    if config.inference_mode:
        return None
    if isinstance(config, PrefixTuningConfig):
        if config.init_weights is not None or config.prefix_projection or config.prefix_init == "RANDOM":
            return None  # (peft's starts: zeros, the projection's random MLP, N(0, 1) prefixes)
        return torch.randint(0, vocab_size, (config.num_virtual_tokens,)).tolist()
    if not isinstance(config, PromptTuningConfig) or config.prompt_tuning_init == "RANDOM":
        return None
    if config.prompt_tuning_init == "SAMPLE_VOCAB":
        return torch.randint(0, vocab_size, (config.num_virtual_tokens,)).tolist()
    if not config.tokenizer_name_or_path:
        raise InputError("tokenizer_name_or_path: required when prompt_tuning_init is TEXT (default: the model's "
                         "base_model_name_or_path, which is not known here)")
    from ..models import load_tokenizer  # (only here: the tuners need no model loading otherwise)

    kwargs = {k: v for k, v in (config.tokenizer_kwargs or {}).items() if k != "trust_remote_code"}
    ids = load_tokenizer(config.tokenizer_name_or_path, **kwargs)(config.prompt_tuning_init_text)["input_ids"]
    if not ids or max(ids) >= vocab_size:
        raise InputError(f"prompt_tuning_init_text: tokenizer {config.tokenizer_name_or_path!r} gives "
                         f"{'no tokens' if not ids else f'token id {max(ids)}'} for a model with {vocab_size} embeddings")
    return ids


class VirtualTokens(AdapterHolder):
    """The virtual-token adapters of one model, by name; the active one joins every backbone forward.

    An `AdapterHolder` added to the model (not wrapped around a module): `unwrap` removes its hooks
    and returns None. Merging refuses (there is no weight to fold tokens into).
    """

    def __init__(self, backbone: nn.Module, spec: ModelSpec):
        super().__init__()
        self.adapters = nn.ModuleDict()
        # Plain attributes: the backbone is the model's own module, not a child of this one.
        self.__dict__.update(rows=None, backbone=backbone, spec=spec, strip=0)
        self.__dict__["positional"] = [
            name for name, p in inspect.signature(backbone.forward).parameters.items()
            if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD)]

    routes_rows = True

    def unwrap(self, keep_trained: bool) -> None:
        self.detach()
        return None

    def attach(self) -> None:
        self.backbone.register_forward_pre_hook(self._before, with_kwargs=True)
        self.backbone.register_forward_hook(self._after, with_kwargs=True)

    def detach(self) -> None:
        """Remove this holder's hooks (found by owner, so a deep-copied model's hooks are left alone)."""
        for hooks in (self.backbone._forward_pre_hooks, self.backbone._forward_hooks):
            for key in [k for k, h in hooks.items() if getattr(h, "__self__", None) is self]:
                del hooks[key]
                self.backbone._forward_hooks_with_kwargs.pop(key, None)
                self.backbone._forward_pre_hooks_with_kwargs.pop(key, None)

    def tokens_for_io(self, name: str) -> torch.Tensor:
        """`prompt_embeddings` (n, width): the live table when the tokens are stored directly (what
        loading copies into), else the encoder's output."""
        source = self.adapters[name]
        table = source.table()
        return table if table is not None else saved_tokens(source)

    def route_rows(self, names: Optional[Sequence[Optional[str]]]) -> None:
        """Give row i of every batch adapter `names[i]`'s tokens (a name not held here: none; the
        active adapter does not apply), until called with None. Used by `lorakit.route`; inference only."""
        rows = None if names is None else [self.adapters[n] if n in self.adapters else None for n in names]
        self.__dict__["rows"] = rows

    def _before(self, module: nn.Module, args: tuple, kwargs: dict):
        self.__dict__["strip"] = 0
        source, rows = self.active, self.rows
        if rows is not None and all(r is None for r in rows):
            return None  # (routed rows without virtual tokens)
        if source is None and rows is None:
            return None
        kw = {**dict(zip(self.positional, args)), **kwargs}
        if rows is not None:
            self.__dict__["strip"] = add_per_row(rows, kw, self.spec, module)
        elif source.kind == "prefix":
            if module.training and torch.is_grad_enabled() and getattr(module, "gradient_checkpointing", False):
                raise InputError("prefix tuning does not work with gradient checkpointing (checkpointed layers drop "
                                 "the key/value cache that holds the prefix); switch one of them off")
            add_prefix(source, kw, self.spec, module)
        else:
            self.__dict__["strip"] = add_embeddings(source, kw, self.spec, module)
        return (), kw

    def _after(self, module: nn.Module, args: tuple, kwargs: dict, output):
        n = self.strip
        if isinstance(n, int) and n == 0:
            return None
        self.__dict__["strip"] = 0
        return strip_outputs(output, n)


def holder_of(model: nn.Module) -> Optional[VirtualTokens]:
    holder = getattr(model, HOLDER_NAME, None)
    return holder if isinstance(holder, VirtualTokens) else None


def install(model: nn.Module, spec: ModelSpec) -> VirtualTokens:
    """The model's VirtualTokens, created (as `model.virtual_tokens`, hooks attached) if absent."""
    holder = holder_of(model)
    if holder is None:
        if hasattr(model, HOLDER_NAME):
            raise InputError(f"{type(model).__name__} already has an attribute {HOLDER_NAME!r}")
        holder = VirtualTokens(backbone_of(model), spec)
        model.add_module(HOLDER_NAME, holder)
        holder.attach()
    return holder


# ---- the three methods of the registry ---------------------------------------------------------------
def _build(model: nn.Module, config: PromptLearningConfig, adapter_name: str) -> list[str]:
    add_virtual_tokens(model, config, adapter_name)
    return [HOLDER_NAME]


def _saved_config(config: PromptLearningConfig, adapted: dict) -> dict:
    """The model's dimensions (and TEXT's tokenizer) as filled in when the adapter was added."""
    filled = next(iter(adapted.values())).filled
    return {k: getattr(filled, k) for k in FILLED if k in type(filled).model_fields}


def _model_tensors(model: nn.Module, adapter_name: str) -> dict[str, torch.Tensor]:
    return {"prompt_embeddings": holder_of(model).tokens_for_io(adapter_name)}


def _check_run(config: PromptLearningConfig, run) -> None:
    if run.data.batching == "packed":
        raise ValueError(f"data.batching: packed rows are not supported with {type(config).__name__} (virtual tokens "
                         "lead every sequence); use grouped")
    if isinstance(config, PrefixTuningConfig) and run.model.gradient_checkpointing:
        raise ValueError("model.gradient_checkpointing: prefix tuning does not work with it (checkpointed layers drop "
                         "the key/value cache that holds the prefix)")


def _summary(config: PromptLearningConfig) -> str:
    how = {PromptTuningConfig: lambda c: f"init {c.prompt_tuning_init}",
           PromptEncoderConfig: lambda c: f"{c.encoder_reparameterization_type} encoder",
           PrefixTuningConfig: lambda c: "projected" if c.prefix_projection else "direct"}[type(config)](config)
    return f"{config.num_virtual_tokens} virtual tokens ({how})"


def _method(name: str, config: type) -> Method:
    return Method(name=name, config=config, peft_type=config.PEFT_TYPE, kind=Kind.VIRTUAL_TOKENS, build=_build,
                  summary=_summary, model_tensors=_model_tensors, saved_config=_saved_config,
                  load_overrides={"inference_mode": True}, check_run=_check_run)


PROMPT_TUNING = _method("prompt_tuning", PromptTuningConfig)
P_TUNING = _method("p_tuning", PromptEncoderConfig)
PREFIX_TUNING = _method("prefix_tuning", PrefixTuningConfig)
METHODS = (PROMPT_TUNING, P_TUNING, PREFIX_TUNING)

__all__ = ["VirtualTokens", "add_virtual_tokens", "holder_of", "METHODS", "HOLDER_NAME"]
