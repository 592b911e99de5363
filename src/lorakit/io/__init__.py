"""Adapters on disk, in peft's format: `adapter_config.json` + `adapter_model.safetensors`.

Keys are built from module paths here and only here:
    base_model.model.<path>.lora_A.weight            (r, in)
    base_model.model.<path>.lora_B.weight            (out, r)
    base_model.model.<path>.lora_embedding_A         (r, num_embeddings)
    base_model.model.<path>.lora_embedding_B         (dim, r)
    base_model.model.<path>.lora_A / lora_E / lora_B  AdaLoRA: (r', in) / (r', 1) / (out, r'), kept triplets only
    base_model.model.<path>.<param>                  modules_to_save (the trained copy)
    base_model.model.<path>.base_layer.bias / <path>.bias   biases under bias="all" / "lora_only"
Loading checks the key set and every shape before copying anything: a mismatch is one error
listing what is missing, unexpected or wrongly shaped, and the model is left as it was.
An adapter trained on a quantized base (QLoRA) also gets `base_quantization.json` (lorakit's own
file; peft ignores it) saying how, so a merge can rebuild the exact base it was trained on.
"""
from __future__ import annotations

import json
import os
import tempfile
import warnings
from pathlib import Path
from typing import Optional

import torch
from torch import nn

from ..config import CONFIG_TYPES, LoraConfig
from ..inject import adapter_configs, bias_parameters, candidate_modules, inject, mark_trainable
from ..quant import quant_spec
from ..routing import delete_adapter, set_adapter
from ..tuners.lora import LoraAdapter, LoraEmbedding, LoraWrapper, ModulesToSave
from ..tuners.vera import shared_projection
from ..errors import InputError

CONFIG_NAME = "adapter_config.json"
WEIGHTS_NAME = "adapter_model.safetensors"
LEGACY_WEIGHTS_NAME = "adapter_model.bin"
BASE_QUANTIZATION_NAME = "base_quantization.json"  # lorakit only: the quantized base of a QLoRA adapter
PREFIX = "base_model.model."
TASK_TYPES = {"ForCausalLM": "CAUSAL_LM", "ForSequenceClassification": "SEQ_CLS",
              "ForTokenClassification": "TOKEN_CLS", "ForQuestionAnswering": "QUESTION_ANS",
              "ForConditionalGeneration": "SEQ_2_SEQ_LM"}


class AdapterFormatError(InputError):
    """An adapter directory that cannot be loaded: names the file and what is wrong."""


def adapter_tensors(model: nn.Module, adapter_name: str) -> dict[str, torch.Tensor]:
    """On-disk key → live tensor for everything `adapter_name` saves."""
    out: dict[str, torch.Tensor] = {}
    for name, module in model.named_modules():
        if isinstance(module, LoraWrapper) and adapter_name in module.adapters:
            a = module.adapters[adapter_name]
            if not isinstance(a, LoraAdapter):
                out.update({f"{PREFIX}{name}.{k}": t for k, t in a.saved_tensors().items()})
                continue
            if isinstance(module, LoraEmbedding):
                out[f"{PREFIX}{name}.lora_embedding_A"] = a.lora_A
                out[f"{PREFIX}{name}.lora_embedding_B"] = a.lora_B
            else:
                out[f"{PREFIX}{name}.lora_A.weight"] = a.lora_A
                out[f"{PREFIX}{name}.lora_B.weight"] = a.lora_B
            if a.dora is not None:
                out[f"{PREFIX}{name}.lora_magnitude_vector"] = a.dora.magnitude
        elif isinstance(module, ModulesToSave) and adapter_name in module.copies:
            for key, t in module.copies[adapter_name].state_dict(keep_vars=True).items():
                out[f"{PREFIX}{name}.{key}"] = t
    config = adapter_configs(model)[adapter_name]
    projection = shared_projection(model, adapter_name)
    if projection is not None and config.save_projection:
        out["base_model.vera_A"], out["base_model.vera_B"] = projection.vera_A, projection.vera_B
    bias_mode = config.bias
    for key, t in bias_parameters(model, bias_mode).items():
        out[PREFIX + key.replace(".base.bias", ".base_layer.bias")] = t
    return out


def save_adapter(model: nn.Module, path: str | os.PathLike, adapter_name: str = "default",
                 base_model_name_or_path: Optional[str] = None,
                 convert_pissa_to_lora: str | os.PathLike | None = None) -> Path:
    """Write `adapter_name` to directory `path` in peft's format (atomically, file by file).

    `convert_pissa_to_lora`: directory of the same PiSSA adapter saved right after `inject`; the
    file written is then a rank-2r plain LoRA for the original (not the residual) base weights.
    See `lorakit.tuners.pissa` for which to use when.
    """
    if adapter_name not in adapter_configs(model):
        raise KeyError(f"no adapter named {adapter_name!r}; adapters on this model: {list(adapter_configs(model))}")
    tensors = adapter_tensors(model, adapter_name)
    config = resolved_config(model, adapter_name, base_model_name_or_path)
    if convert_pissa_to_lora is not None:
        tensors, config = _pissa_as_lora(tensors, config, convert_pissa_to_lora)
    path = write_adapter(path, tensors, config)
    spec = quant_spec(model)
    if spec is not None:
        spec_text = json.dumps(spec, indent=2, sort_keys=True)
        _atomic_write(path / BASE_QUANTIZATION_NAME, lambda f: Path(f).write_text(spec_text))
    elif (path / BASE_QUANTIZATION_NAME).exists():
        (path / BASE_QUANTIZATION_NAME).unlink()
    return path


def write_adapter(path: str | os.PathLike, tensors: dict[str, torch.Tensor], config) -> Path:
    """Write on-disk key → tensor and the adapter's config to directory `path`, each file atomically."""
    from safetensors.torch import save_file

    path = Path(path)
    path.mkdir(parents=True, exist_ok=True)
    tensors = {k: t.detach().cpu().contiguous() for k, t in tensors.items()}
    _atomic_write(path / WEIGHTS_NAME, lambda f: save_file(tensors, f, metadata={"format": "pt"}))
    text = json.dumps(config.to_peft_dict(), indent=2, sort_keys=True)
    _atomic_write(path / CONFIG_NAME, lambda f: Path(f).write_text(text))
    return path


def read_base_quantization(path: str | os.PathLike) -> Optional[dict]:
    """How the base an adapter was trained on was quantized (QLoRA), or None for a full-precision base.

    lorakit writes this beside the adapter (`base_quantization.json`, ignored by peft) rather than
    into `adapter_config.json`, so that file stays exactly peft's schema.
    """
    file = Path(path) / BASE_QUANTIZATION_NAME
    if not file.is_file():
        return None
    try:
        return json.loads(file.read_text())
    except json.JSONDecodeError as e:
        raise AdapterFormatError(f"{file}:{e.lineno}: invalid JSON: {e.msg}") from None


def _pissa_as_lora(tensors: dict, config: LoraConfig, initial_dir) -> tuple[dict, LoraConfig]:
    from ..tuners.pissa import converted_tensors, doubled_alpha, pissa_niter

    if pissa_niter(config.init_lora_weights) is False:
        raise ValueError(f"convert_pissa_to_lora: adapter was initialised with {config.init_lora_weights!r}, not PiSSA")
    initial = read_weights(initial_dir)
    tensors = {k: t.contiguous() for k, t in converted_tensors(tensors, initial).items()}
    rs = config.use_rslora
    return tensors, config.model_copy(update=dict(
        init_lora_weights=True, r=2 * config.r, lora_alpha=doubled_alpha(config.lora_alpha, rs),
        rank_pattern={k: 2 * v for k, v in config.rank_pattern.items()},
        alpha_pattern={k: doubled_alpha(v, rs) for k, v in config.alpha_pattern.items()},
    ))


def resolved_config(model: nn.Module, adapter_name: str, base_model_name_or_path: Optional[str] = None) -> LoraConfig:
    """The adapter's config with targets and rank/alpha overrides spelled out as peft will match them."""
    config = adapter_configs(model)[adapter_name]
    adapted = {n: m.adapters[adapter_name] for n, m in model.named_modules()
               if isinstance(m, LoraWrapper) and adapter_name in m.adapters}
    leaves = {n.rsplit(".", 1)[-1] for n in adapted}
    others = [n for n in candidate_modules(model) if n not in adapted and n.rsplit(".", 1)[-1] in leaves]
    targets = sorted(leaves) if not others else sorted(adapted)
    saved = [n for n, m in model.named_modules() if isinstance(m, ModulesToSave) and adapter_name in m.copies]
    name_or_path = base_model_name_or_path or config.base_model_name_or_path or _model_name_or_path(model)
    update = dict(
        target_modules=targets, exclude_modules=None, layers_to_transform=None, layers_pattern=None,
        modules_to_save=saved or None,
        base_model_name_or_path=name_or_path, task_type=config.task_type or _task_type(model),
        fan_in_fan_out=any(getattr(model.get_submodule(n), "fan_in_fan_out", False) for n in adapted),
    )
    if isinstance(config, LoraConfig):
        update["rank_pattern"] = {n: a.r for n, a in adapted.items() if a.r != config.r}
        update["alpha_pattern"] = {n: a.alpha for n, a in adapted.items() if a.alpha != config.lora_alpha}
    elif hasattr(config, "rank_pattern"):  # AdaLoRA: masks of the kept triplets, once pruned
        masks = {f"{n}.lora_E": a.kept_mask() for n, a in adapted.items()}
        update["rank_pattern"] = masks if any(not all(m) for m in masks.values()) else config.rank_pattern
        if config.total_step is None:
            warnings.warn("AdaLoRA adapter saved without total_step: peft refuses to load it; set "
                          "AdaLoraConfig.total_step (training_hooks and the trainer fill it in)", stacklevel=3)
    return config.model_copy(update={k: v for k, v in update.items() if k in type(config).model_fields})


def read_config(path: str | os.PathLike) -> LoraConfig:
    """Read and validate `adapter_config.json` in `path` (lorakit- or peft-written)."""
    file = Path(path) / CONFIG_NAME
    if not file.is_file():
        raise AdapterFormatError(f"{file}: not found (is {path} an adapter directory?)")
    try:
        data = json.loads(file.read_text())
    except json.JSONDecodeError as e:
        raise AdapterFormatError(f"{file}:{e.lineno}: invalid JSON: {e.msg}") from None
    peft_type = data.get("peft_type", "LORA")
    if peft_type not in CONFIG_TYPES:
        raise AdapterFormatError(f"{file}: peft_type {peft_type!r} is not supported by load_adapter "
                                 f"(expected one of {sorted(CONFIG_TYPES)})")
    try:
        return CONFIG_TYPES[peft_type].from_peft_dict(data, source=str(file))
    except ValueError as e:
        raise AdapterFormatError(f"{file}: {_first_error(e)}") from None


def read_weights(path: str | os.PathLike, allow_pickle: bool = False) -> dict[str, torch.Tensor]:
    """Load the adapter tensors; `.bin` only with `allow_pickle=True` (then with weights_only=True)."""
    from safetensors.torch import load_file

    path = Path(path)
    st, legacy = path / WEIGHTS_NAME, path / LEGACY_WEIGHTS_NAME
    if st.is_file():
        try:
            return load_file(str(st))
        except Exception as e:  # safetensors raises its own error types for corrupt/truncated files
            raise AdapterFormatError(f"{st}: cannot read safetensors file ({e})") from None
    if legacy.is_file():
        if not allow_pickle:
            raise AdapterFormatError(
                f"{legacy}: legacy pickle weights are not loaded by default; pass allow_pickle=True if you trust it"
            )
        try:
            return torch.load(str(legacy), map_location="cpu", weights_only=True)
        except Exception as e:
            raise AdapterFormatError(f"{legacy}: cannot read weights ({e})") from None
    raise AdapterFormatError(f"{st}: not found")


def load_adapter(model: nn.Module, path: str | os.PathLike, adapter_name: str = "default",
                 is_trainable: bool = False, allow_pickle: bool = False) -> list[str]:
    """Add the adapter saved in `path` to `model` under `adapter_name` and make it active.

    Reads lorakit- and peft-written adapters. The adapter is frozen unless `is_trainable`.
    Returns the adapted module names.
    """
    config = read_config(path)
    weights = read_weights(path, allow_pickle)
    config = _drop_absent_modules_to_save(model, config)
    fresh = {k: True for k in ("init_lora_weights", "init_weights") if k in type(config).model_fields}
    names = inject(model, config.model_copy(update=fresh), adapter_name)
    try:
        _copy_checked(model, adapter_name, weights, Path(path) / WEIGHTS_NAME)
    except Exception:
        delete_adapter(model, adapter_name)
        raise
    set_adapter(model, adapter_name)
    if is_trainable:
        mark_trainable(model, adapter_name)
    else:
        for p in model.parameters():
            p.requires_grad_(False)
    return names


def _copy_checked(model: nn.Module, adapter_name: str, weights: dict, source: Path) -> None:
    expected = adapter_tensors(model, adapter_name)
    embedding_bases = {f"{PREFIX}{n}.base_layer.weight": m.base.weight for n, m in model.named_modules()
                       if isinstance(m, LoraEmbedding)}  # peft also saves targeted embeddings' base weights
    missing = sorted(set(expected) - set(weights))
    unexpected = sorted(set(weights) - set(expected) - set(embedding_bases))
    shapes = [f"{k}: file {tuple(weights[k].shape)} vs model {tuple(t.shape)}"
              for k, t in {**expected, **embedding_bases}.items() if k in weights and weights[k].shape != t.shape]
    problems = []
    for label, items in (("missing keys", missing), ("unexpected keys", unexpected), ("wrong shapes", shapes)):
        if items:
            problems.append(f"{label} ({len(items)}): {', '.join(items[:5])}{' ...' if len(items) > 5 else ''}")
    if problems:
        raise AdapterFormatError(f"{source}: does not fit this model: " + "; ".join(problems))
    with torch.no_grad():
        for key, t in {**expected, **embedding_bases}.items():
            if key in weights:
                t.copy_(weights[key].to(t.dtype))


def _drop_absent_modules_to_save(model: nn.Module, config: LoraConfig) -> LoraConfig:
    """peft writes default heads (e.g. 'classifier', 'score') for a task type whether they exist or not."""
    if not config.modules_to_save:
        return config
    names = [n for n, _ in model.named_modules() if n]
    keep = [t for t in config.modules_to_save if any(n == t or n.endswith("." + t) for n in names)]
    return config.model_copy(update={"modules_to_save": keep or None})


def _atomic_write(target: Path, write) -> None:
    fd, tmp = tempfile.mkstemp(dir=target.parent, prefix=f".{target.name}.", suffix=".tmp")
    os.close(fd)
    try:
        write(tmp)
        with open(tmp, "rb+") as f:
            os.fsync(f.fileno())
        os.replace(tmp, target)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def _model_name_or_path(model: nn.Module) -> Optional[str]:
    cfg = getattr(model, "config", None)
    return getattr(model, "name_or_path", None) or getattr(cfg, "_name_or_path", None) or None


def _task_type(model: nn.Module) -> Optional[str]:
    cls = type(model).__name__
    return next((t for suffix, t in TASK_TYPES.items() if cls.endswith(suffix)), None)


def _first_error(e: ValueError) -> str:
    errors = getattr(e, "errors", None)
    if callable(errors):
        err = errors()[0]
        return f"{'.'.join(str(p) for p in err['loc'])}: {err['msg']}"
    return str(e)


__all__ = ["save_adapter", "load_adapter", "read_config", "read_weights", "write_adapter", "read_base_quantization",
           "AdapterFormatError"]
