"""A merged causal LM as one GGUF file (llama.cpp, Ollama, LM Studio), checked with transformers' reader.

    stats = export_gguf("runs/quickstart/adapter", "out/model.gguf", gguf_type="q8_0")

The adapter (or a merged / full fine-tuned / pruned / distilled model dir) is loaded and merged in
full precision, then written with the `gguf` package: llama.cpp's tensor names (from
`gguf.get_tensor_name_map`), Q and K rows permuted into llama.cpp's rotary layout, the hyper-
parameters under `llama.*`, and the tokenizer with its chat template (`gguf_vocab`).

Types: `f32` (everything float32), `f16` (matrices float16, norms float32), `q8_0` (matrices in
blocks of 32 int8 values with one float16 scale, norms float32; a matrix whose rows are not a
multiple of 32 stays f16).

Parity (`check_gguf`): transformers loads the file back (`from_pretrained(dir, gguf_file=...)`,
which dequantizes and undoes the permutation independently of this code) and its logits are
compared with the merged model's; its tokenizer, rebuilt from the GGUF metadata, must encode the
probe texts to the same ids. Llama-family models only, for now (SmolLM2 is one).
"""
from __future__ import annotations

import os
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Callable, Optional

import gguf
import numpy as np
import torch
from torch import nn

from ..errors import InputError
from ..files import atomic_write
from ..io.shards import check_output_file
from ..train.config import Task
from .gguf_vocab import gguf_vocab, write_vocab
from .probe import PROBE_TEXTS, probe_ids

GGUF_TYPES = {"f32": gguf.LlamaFileType.ALL_F32, "f16": gguf.LlamaFileType.MOSTLY_F16,
              "q8_0": gguf.LlamaFileType.MOSTLY_Q8_0}


class UnsupportedArchitecture(InputError):
    """A model family the GGUF writer does not handle yet."""


@dataclass
class GgufParity:
    """How the file read back by transformers compares with the model it was written from."""
    max_abs_logit_diff: float  # max |Δ| over the probe's logits
    mean_abs_logit_diff: float
    logit_scale: float  # max |logit| of the reference, for reading the error relatively
    top1_agreement: float  # fraction of positions with the same argmax
    tokenizer_equal: bool  # the GGUF tokenizer encodes the probe texts to the same ids


def llama_layout(config) -> dict:
    """The hyper-parameters llama.cpp's `llama` architecture needs, or UnsupportedArchitecture."""
    kind = getattr(config, "model_type", None)
    if kind != "llama":
        raise UnsupportedArchitecture(f"GGUF export supports Llama-family models (model_type 'llama'); "
                                      f"{kind!r} ({', '.join(getattr(config, 'architectures', None) or [])}) "
                                      "is not supported yet")
    rope = dict(getattr(config, "rope_parameters", None) or getattr(config, "rope_scaling", None) or {})
    rope_type = rope.get("rope_type", rope.get("type", "default"))
    if rope_type != "default":
        raise UnsupportedArchitecture(f"rope_type {rope_type!r}: GGUF export handles plain RoPE only, for now")
    if getattr(config, "attention_bias", False) or getattr(config, "mlp_bias", False):
        raise UnsupportedArchitecture("Llama with attention/MLP biases: not supported by the GGUF export yet")
    theta = rope.get("rope_theta", getattr(config, "rope_theta", 10000.0))
    heads, kv_heads = config.num_attention_heads, config.num_key_value_heads or config.num_attention_heads
    head_dim = getattr(config, "head_dim", None) or config.hidden_size // heads
    return {"context_length": config.max_position_embeddings, "embedding_length": config.hidden_size,
            "block_count": config.num_hidden_layers, "feed_forward_length": config.intermediate_size,
            "head_count": heads, "head_count_kv": kv_heads, "head_dim": head_dim, "rope_theta": float(theta),
            "rms_norm_eps": float(config.rms_norm_eps), "vocab_size": config.vocab_size}


def rope_permute(weight: torch.Tensor, heads: int) -> torch.Tensor:
    """(heads·d, ...) rows from HF's rotate-half order to llama.cpp's interleaved pairs, per head.

    HF keeps each head's rotary pairs as (i, i + d/2); llama.cpp as (2i, 2i + 1). Applies to
    q_proj (heads = attention heads) and k_proj (heads = key/value heads), and to LoRA B factors.
    """
    rows = weight.shape[0]
    return weight.reshape(heads, 2, rows // heads // 2, *weight.shape[1:]).swapaxes(1, 2).reshape(weight.shape)


def gguf_tensors(model: nn.Module, layout: dict) -> dict[str, torch.Tensor]:
    """GGUF name → float32 tensor in llama.cpp's layout (the tied output head is left out)."""
    names = gguf.get_tensor_name_map(gguf.MODEL_ARCH.LLAMA, layout["block_count"])
    tie = getattr(model.config, "tie_word_embeddings", False)
    out = {}
    for key, value in model.state_dict().items():
        if tie and key == "lm_head.weight":
            continue
        if key.endswith("rotary_emb.inv_freq"):
            continue
        name = names.get_name(key, try_suffixes=(".weight", ".bias"))
        if name is None:
            raise UnsupportedArchitecture(f"{key}: no llama.cpp tensor for this parameter")
        value = value.detach().float()
        if ".attn_q." in name:
            value = rope_permute(value, layout["head_count"])
        elif ".attn_k." in name:
            value = rope_permute(value, layout["head_count_kv"])
        out[name] = value
    return out


def write_gguf(model: nn.Module, tokenizer, out: str | os.PathLike, gguf_type: str = "f32",
               name: Optional[str] = None) -> Path:
    """Write `model` (a plain Llama-family causal LM) and `tokenizer` to the GGUF file `out`, atomically."""
    check_type(gguf_type)
    layout = llama_layout(model.config)
    vocab = gguf_vocab(tokenizer, layout["vocab_size"])

    def metadata(writer) -> None:
        _write_hparams(writer, layout)
        write_vocab(writer, vocab)

    return write_file(out, gguf.GGUFType.MODEL, name, gguf_type, metadata, gguf_tensors(model, layout))


def check_type(gguf_type: str) -> None:
    if gguf_type not in GGUF_TYPES:
        raise InputError(f"--type {gguf_type!r}: expected one of {', '.join(GGUF_TYPES)}")


def write_file(out: str | os.PathLike, kind: str, name: Optional[str], gguf_type: str,
               metadata: Callable[[gguf.GGUFWriter], None], tensors: dict[str, torch.Tensor]) -> Path:
    """One llama-architecture GGUF file, atomically: general.* keys, `metadata(writer)`, then `tensors`
    (GGUF name → float tensor, encoded as `gguf_type`)."""
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)

    def write(path: str) -> None:
        writer = gguf.GGUFWriter(path, gguf.MODEL_ARCH_NAMES[gguf.MODEL_ARCH.LLAMA])
        writer.add_type(kind)
        writer.add_name(name or out.stem)
        writer.add_file_type(int(GGUF_TYPES[gguf_type]))
        if gguf_type == "q8_0":
            writer.add_quantization_version(gguf.GGML_QUANT_VERSION)
        metadata(writer)
        for tensor_name, value in tensors.items():
            array, raw = _encode(value, gguf_type)
            writer.add_tensor(tensor_name, array, raw_dtype=raw)
        writer.write_header_to_file()
        writer.write_kv_data_to_file()
        writer.write_tensors_to_file()
        writer.close()

    atomic_write(out, write)
    return out


def _write_hparams(writer, layout: dict) -> None:
    writer.add_context_length(layout["context_length"])
    writer.add_embedding_length(layout["embedding_length"])
    writer.add_block_count(layout["block_count"])
    writer.add_feed_forward_length(layout["feed_forward_length"])
    writer.add_head_count(layout["head_count"])
    writer.add_head_count_kv(layout["head_count_kv"])
    writer.add_rope_dimension_count(layout["head_dim"])
    writer.add_rope_freq_base(layout["rope_theta"])
    writer.add_layer_norm_rms_eps(layout["rms_norm_eps"])
    writer.add_vocab_size(layout["vocab_size"])
    if layout["head_dim"] * layout["head_count"] != layout["embedding_length"]:  # e.g. after head pruning
        writer.add_key_length(layout["head_dim"])
        writer.add_value_length(layout["head_dim"])


def _encode(value: torch.Tensor, gguf_type: str) -> tuple[np.ndarray, Optional[gguf.GGMLQuantizationType]]:
    array = value.numpy()
    if array.ndim < 2 or gguf_type == "f32":
        return array.astype(np.float32), None
    if gguf_type == "q8_0" and array.shape[-1] % gguf.GGML_QUANT_SIZES[gguf.GGMLQuantizationType.Q8_0][0] == 0:
        return gguf.quants.quantize(array, gguf.GGMLQuantizationType.Q8_0), gguf.GGMLQuantizationType.Q8_0
    return array.astype(np.float16), None


@torch.no_grad()
def check_gguf(model: nn.Module, tokenizer, path: str | os.PathLike) -> GgufParity:
    """Load `path` with transformers' GGUF reader and compare it with `model` on the probe inputs."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    path = Path(path)
    back = AutoModelForCausalLM.from_pretrained(path.parent, gguf_file=path.name, dtype=torch.float32).eval()
    back_tokenizer = AutoTokenizer.from_pretrained(path.parent, gguf_file=path.name)
    tokenizer_equal = all(
        back_tokenizer(t, add_special_tokens=False)["input_ids"] == tokenizer(t, add_special_tokens=False)["input_ids"]
        for t in PROBE_TEXTS)
    diffs, scale, agree, positions = [], 0.0, 0, 0
    for ids in probe_ids(tokenizer):
        x = torch.tensor([ids])
        ref, got = model(input_ids=x).logits.float(), back(input_ids=x).logits.float()
        diffs.append((ref - got).abs().flatten())
        scale = max(scale, float(ref.abs().max()))
        agree += int((ref.argmax(-1) == got.argmax(-1)).sum())
        positions += len(ids)
    diff = torch.cat(diffs)
    return GgufParity(float(diff.max()), float(diff.mean()), scale, agree / positions, tokenizer_equal)


def export_gguf(source: str, out: str | os.PathLike, gguf_type: str = "f32", base: Optional[str] = None,
                check: bool = True, overwrite: bool = False) -> dict:
    """Merge `source` (adapter dir or model) and write it as GGUF; with `check`, the parity figures too.
    An existing `out` is replaced only with `overwrite` (checked before anything loads)."""
    from ..inference import load_merged

    check_type(gguf_type)
    start = time.perf_counter()
    check_output_file(out, overwrite)
    merged = load_merged(source, base)
    if merged.task is not Task.SFT:
        raise UnsupportedArchitecture(f"{source}: a {merged.task} model; GGUF export writes causal LMs only")
    path = write_gguf(merged.model, merged.tokenizer, out, gguf_type, name=Path(str(source)).name)
    stats = {"out": str(path), "type": gguf_type, "bytes": path.stat().st_size}
    if check:
        stats.update({f"parity_{k}": v for k, v in asdict(check_gguf(merged.model, merged.tokenizer, path)).items()})
    stats["seconds"] = time.perf_counter() - start
    return stats
