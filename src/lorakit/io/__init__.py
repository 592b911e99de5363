"""Adapters on disk, in peft's format: `adapter_config.json` + `adapter_model.safetensors`.

Keys are built from module paths here: `base_model.model.<path>.<suffix>`, where each adapter
holder names its suffixes (`saved_tensors`, see tuners/base.py; e.g. LoRA's `lora_A.weight`, a
`modules_to_save` copy's own parameter names), plus the tensors a method keeps outside the layers
(`Method.model_tensors`, e.g. VeRA's `base_model.vera_A`) and the biases under `bias`
(`<path>.base_layer.bias` for a wrapped layer, `<path>.bias` otherwise). The method is found from
`peft_type` in the registry (`lorakit.methods`).
Loading checks the files before the model is touched: `adapter_config.json` must be a JSON
object that validates, the safetensors file must be complete, and every tensor must be a finite
floating-point tensor (a NaN, inf or integer tensor is named). Then the key set and every shape
are checked before copying anything: a mismatch is one error listing what is missing, unexpected
or wrongly shaped, and the model is left as it was.
An adapter trained on a quantized base (QLoRA) also gets `base_quantization.json` (lorakit's own
file; peft ignores it) saying how, so a merge can rebuild the exact base it was trained on.
"""
from __future__ import annotations

import json
import os
import warnings
from pathlib import Path
from typing import Optional

import torch
from torch import nn

from .. import methods
from ..config import InitKind, LoraConfig
from ..errors import InputError, UnknownAdapterError
from ..files import atomic_write, atomic_write_text, check_output_dir, read_json
from ..inject import inject
from ..quant import quant_spec
from ..state import adapter_configs, bias_parameters, delete_adapter, holders, mark_trainable, set_adapter
from ..strict import validation_message
from ..targets import candidate_modules
from ..tuners.base import Kind, ModulesToSave
from .shards import check_safetensors

CONFIG_NAME = "adapter_config.json"
WEIGHTS_NAME = "adapter_model.safetensors"
LEGACY_WEIGHTS_NAME = "adapter_model.bin"
BASE_QUANTIZATION_NAME = "base_quantization.json"  # lorakit only: the quantized base of a QLoRA adapter
PREFIX = "base_model.model."
PROMPT_PREFIX = "base_model."  # peft's prompt-learning models have no inner wrapper (their heads: base_model.<path>)
TASK_TYPES = {"ForCausalLM": "CAUSAL_LM", "LMHeadModel": "CAUSAL_LM", "ForSequenceClassification": "SEQ_CLS",
              "ForTokenClassification": "TOKEN_CLS", "ForQuestionAnswering": "QUESTION_ANS",
              "ForConditionalGeneration": "SEQ_2_SEQ_LM"}


class AdapterFormatError(InputError):
    """An adapter directory that cannot be loaded: names the file and what is wrong."""


def adapter_tensors(model: nn.Module, adapter_name: str) -> dict[str, torch.Tensor]:
    """On-disk key → live tensor for everything `adapter_name` saves."""
    out: dict[str, torch.Tensor] = {}
    method = methods.for_config(adapter_configs(model)[adapter_name])
    prefix = PREFIX if method.kind is Kind.LAYERS else PROMPT_PREFIX
    for name, holder in holders(model):
        if adapter_name in holder.adapters:
            out.update({f"{prefix}{name}.{k}": t for k, t in holder.saved_tensors(adapter_name).items()})
    model_tensors = method.model_tensors
    if model_tensors is not None:
        out.update(model_tensors(model, adapter_name))
    for key, t in bias_parameters(model, adapter_configs(model)[adapter_name].bias_mode).items():
        out[PREFIX + key.replace(".base.bias", ".base_layer.bias")] = t
    return out


def _loadable_extras(model: nn.Module, adapter_name: str) -> dict[str, torch.Tensor]:
    """On-disk key → live tensor that peft may write besides `adapter_tensors` (copied when present)."""
    return {f"{PREFIX}{name}.{k}": t for name, holder in holders(model) if adapter_name in holder.adapters
            for k, t in holder.loadable_extras(adapter_name).items()}


def save_adapter(model: nn.Module, path: str | os.PathLike, adapter_name: str = "default",
                 base_model_name_or_path: Optional[str] = None,
                 convert_pissa_to_lora: str | os.PathLike | None = None) -> Path:
    """Write `adapter_name` to directory `path` in peft's format (atomically, file by file).

    `convert_pissa_to_lora`: directory of the same PiSSA adapter saved right after `inject`; the
    file written is then a rank-2r plain LoRA for the original (not the residual) base weights.
    See `lorakit.tuners.pissa` for which to use when.
    """
    if adapter_name not in adapter_configs(model):
        raise UnknownAdapterError(f"save_adapter: no adapter named {adapter_name!r}; adapters on this model: "
                                  f"{list(adapter_configs(model))}")
    tensors = adapter_tensors(model, adapter_name)
    config = resolved_config(model, adapter_name, base_model_name_or_path)
    if convert_pissa_to_lora is not None:
        tensors, config = _pissa_as_lora(tensors, config, convert_pissa_to_lora)
    path = write_adapter(path, tensors, config)
    spec = quant_spec(model)
    if spec is not None:
        spec_text = json.dumps(spec, indent=2, sort_keys=True)
        atomic_write(path / BASE_QUANTIZATION_NAME, lambda f: Path(f).write_text(spec_text))
    elif (path / BASE_QUANTIZATION_NAME).exists():
        (path / BASE_QUANTIZATION_NAME).unlink()
    return path


def write_adapter(path: str | os.PathLike, tensors: dict[str, torch.Tensor], config) -> Path:
    """Write on-disk key → tensor and the adapter's config to directory `path`, each file atomically."""
    from safetensors.torch import save_file

    path = check_output_dir(path, "adapter directory")
    path.mkdir(parents=True, exist_ok=True)
    tensors = {k: t.detach().cpu().contiguous() for k, t in tensors.items()}
    atomic_write(path / WEIGHTS_NAME, lambda f: save_file(tensors, f, metadata={"format": "pt"}))
    text = json.dumps(config.to_peft_dict(), indent=2, sort_keys=True)
    atomic_write(path / CONFIG_NAME, lambda f: Path(f).write_text(text))
    return path


def read_base_quantization(path: str | os.PathLike) -> Optional[dict]:
    """How the base an adapter was trained on was quantized (QLoRA), or None for a full-precision base.

    lorakit writes this beside the adapter (`base_quantization.json`, ignored by peft) rather than
    into `adapter_config.json`, so that file stays exactly peft's schema.
    """
    from ..models import DTYPES
    from ..quant import QUANTIZED_LINEARS

    file = Path(path) / BASE_QUANTIZATION_NAME
    if not file.exists():
        return None
    spec = read_json(file, AdapterFormatError, expect=dict)
    checks = {"method": lambda v: v in QUANTIZED_LINEARS, "double_quant": lambda v: isinstance(v, bool),
              "blocksize": lambda v: isinstance(v, int) and not isinstance(v, bool) and v > 0,
              "compute_dtype": lambda v: v in DTYPES}
    for key, ok in checks.items():
        if (key in spec or key == "method") and not ok(spec.get(key)):
            raise AdapterFormatError(f"{file}: {key}: unexpected value {spec.get(key)!r}")
    return spec


def _pissa_as_lora(tensors: dict, config: LoraConfig, initial_dir) -> tuple[dict, LoraConfig]:
    from ..tuners.pissa import converted_tensors, doubled_alpha

    if not isinstance(config, LoraConfig) or config.init.kind is not InitKind.PISSA:
        raise ValueError(f"convert_pissa_to_lora: adapter was initialised with "
                         f"{getattr(config, 'init_lora_weights', None)!r}, not PiSSA")
    initial = read_weights(initial_dir)
    tensors = {k: t.contiguous() for k, t in converted_tensors(tensors, initial).items()}
    rs = config.use_rslora
    return tensors, config.model_copy(update=dict(
        init_lora_weights=True, r=2 * config.r, lora_alpha=doubled_alpha(config.lora_alpha, rs),
        rank_pattern={k: 2 * v for k, v in config.rank_pattern.items()},
        alpha_pattern={k: doubled_alpha(v, rs) for k, v in config.alpha_pattern.items()},
    ))


def resolved_config(model: nn.Module, adapter_name: str, base_model_name_or_path: Optional[str] = None):
    """The adapter's config with targets (and the method's derived fields) spelled out as peft will match them."""
    config = adapter_configs(model)[adapter_name]
    method = methods.for_config(config)
    saved = [n for n, m in holders(model) if isinstance(m, ModulesToSave) and adapter_name in m.adapters]
    name_or_path = base_model_name_or_path or config.base_model_name_or_path or _model_name_or_path(model)
    update = dict(modules_to_save=saved or None, base_model_name_or_path=name_or_path,
                  task_type=config.task_type or _task_type(model))
    adapted = {n: h.adapters[adapter_name] for n, h in holders(model)
               if adapter_name in h.adapters and not isinstance(h, ModulesToSave)}
    if method.kind is Kind.LAYERS and "target_modules" in type(config).model_fields:
        leaves = {n.rsplit(".", 1)[-1] for n in adapted}
        others = [n for n in candidate_modules(model) if n not in adapted and n.rsplit(".", 1)[-1] in leaves]
        update.update(target_modules=sorted(leaves) if not others else sorted(adapted), exclude_modules=None,
                      layers_to_transform=None, layers_pattern=None,
                      fan_in_fan_out=any(getattr(model.get_submodule(n), "fan_in_fan_out", False) for n in adapted))
    if method.saved_config is not None:
        update.update(method.saved_config(config, adapted))
    if method.kind is Kind.VIRTUAL_TOKENS and update["task_type"] is None:
        raise InputError(f"adapter {adapter_name!r}: set task_type (e.g. CAUSAL_LM, SEQ_CLS) for "
                         f"{type(model).__name__}: peft applies virtual tokens only for a known task type")
    return config.model_copy(update={k: v for k, v in update.items() if k in type(config).model_fields})


STACK_NAME = "stacked_on.json"
"""Beside a progressive LoRA adapter: the earlier adapters it was trained on top of, which must be applied
with it (lorakit's own file; peft ignores it)."""


def write_stack_record(adapter_dir: str | os.PathLike, earlier: list[str | os.PathLike]) -> None:
    """Record the earlier adapters (absolute paths, in stacking order) that `adapter_dir` was trained on."""
    record = {"stacked_on": [str(Path(e).expanduser().resolve()) for e in earlier]}
    atomic_write_text(Path(adapter_dir) / STACK_NAME, json.dumps(record, indent=2) + "\n")


def read_stack_record(adapter_dir: str | os.PathLike) -> list[Path]:
    """The earlier adapters `adapter_dir` was trained on top of ([] for an ordinary adapter); each must exist."""
    file = Path(adapter_dir) / STACK_NAME
    if not file.is_file():
        return []
    data = read_json(file, AdapterFormatError, expect=dict)
    earlier = data.get("stacked_on")
    if not isinstance(earlier, list) or not all(isinstance(e, str) and e for e in earlier):
        raise AdapterFormatError(f"{file}: stacked_on: expected a list of adapter directories")
    for e in earlier:
        if not (Path(e) / CONFIG_NAME).is_file():
            raise AdapterFormatError(f"{file}: this adapter was trained on top of {e}, which is not an adapter "
                                     "directory any more; it cannot be used without it")
    return [Path(e) for e in earlier]


def is_adapter_dir(path: str | os.PathLike) -> bool:
    """Whether `path` (`~` expanded) holds an `adapter_config.json`, the mark of an adapter directory."""
    return (Path(path).expanduser() / CONFIG_NAME).is_file()


def check_adapter_dir(path: str | os.PathLike, where: str, error: type[InputError] = AdapterFormatError) -> Path:
    """`path` (`~` expanded) if it is an adapter directory; else `error` saying
    "<where>: not an adapter directory (no adapter_config.json)". `where` names the input as the user
    gave it (`--adapter DIR`, a recipe key and its value, ...); `error` is the caller's `InputError` kind."""
    if not is_adapter_dir(path):
        raise error(f"{where}: not an adapter directory (no {CONFIG_NAME})")
    return Path(path).expanduser()


TASKS_NAME = "task_prefixes.json"
"""Beside an adapter trained on `data.train` sources with prefixes: `{"tasks": {NAME: PREFIX, ...}}`, every
source's prefix by task name, applied again by eval / generate / serve when a task is named (lorakit's own
file; peft ignores it)."""


def write_task_prefixes(adapter_dir: str | os.PathLike, prefixes: dict[str, str]) -> None:
    """Record the task prefixes `adapter_dir` was trained with (see `lorakit.data.prefixes`)."""
    atomic_write_text(Path(adapter_dir) / TASKS_NAME, json.dumps({"tasks": dict(prefixes)}, indent=2) + "\n")


def read_task_prefixes(adapter_dir: str | os.PathLike) -> dict[str, str]:
    """The task prefixes `adapter_dir` was trained with ({} for an adapter without the record)."""
    file = Path(adapter_dir).expanduser() / TASKS_NAME
    if not file.is_file():
        return {}
    tasks = read_json(file, AdapterFormatError, expect=dict).get("tasks")
    if not isinstance(tasks, dict) or not all(isinstance(k, str) and k and isinstance(v, str)
                                              for k, v in tasks.items()):
        raise AdapterFormatError(f"{file}: tasks: expected an object of task name -> prefix string")
    return dict(tasks)


def read_config(path: str | os.PathLike):
    """Read and validate `adapter_config.json` in `path` (lorakit- or peft-written), as its method's config class."""
    file = Path(path) / CONFIG_NAME
    if not file.is_file():
        raise AdapterFormatError(f"{file}: not found (is {path} an adapter directory?)")
    data = read_json(file, AdapterFormatError, expect=dict)
    peft_type = data.get("peft_type", "LORA")
    method = methods.for_peft_type(peft_type) if isinstance(peft_type, str) else None
    if method is None:
        raise AdapterFormatError(f"{file}: peft_type {peft_type!r} is not supported by load_adapter "
                                 f"(expected one of {sorted(m.peft_type for m in methods.METHODS.values())})")
    try:
        return method.config.from_peft_dict(data, source=str(file))
    except ValueError as e:
        raise AdapterFormatError(f"{file}: {_first_error(e)}") from None


def read_weights(path: str | os.PathLike, allow_pickle: bool = False) -> dict[str, torch.Tensor]:
    """Load and check the adapter tensors; `.bin` only with `allow_pickle=True` (then with weights_only=True).

    Every tensor must be floating point and finite: an adapter with NaN/inf or integer weights
    would load and quietly produce nothing useful, so it is refused naming the tensor.
    """
    from safetensors.torch import load_file

    path = Path(path)
    st, legacy = path / WEIGHTS_NAME, path / LEGACY_WEIGHTS_NAME
    if st.is_file():
        check_safetensors(st, AdapterFormatError)
        try:
            tensors = load_file(str(st))
        except Exception as e:  # safetensors raises its own error types for corrupt files
            raise AdapterFormatError(f"{st}: cannot read safetensors file ({str(e).splitlines()[0]})") from None
        return check_tensor_values(tensors, st)
    if legacy.is_file():
        if not allow_pickle:
            raise AdapterFormatError(
                f"{legacy}: legacy pickle weights (no {WEIGHTS_NAME}) are not read by default; if you trust the "
                "file, pass --allow-pickle (Python: allow_pickle=True)")
        warnings.warn(f"{legacy}: reading pickle weights (allow_pickle); only do this for files you trust",
                      stacklevel=2)
        try:
            tensors = torch.load(str(legacy), map_location="cpu", weights_only=True)
        except Exception as e:
            raise AdapterFormatError(f"{legacy}: cannot read weights ({str(e).splitlines()[0]})") from None
        if not isinstance(tensors, dict) or not all(isinstance(t, torch.Tensor) for t in tensors.values()):
            raise AdapterFormatError(f"{legacy}: expected a dict of tensors")
        return check_tensor_values(tensors, legacy)
    raise AdapterFormatError(f"{st}: not found")


def check_tensor_values(tensors: dict[str, torch.Tensor], source) -> dict[str, torch.Tensor]:
    """Refuse (naming the tensor) an adapter tensor that is not floating point or holds NaN / inf."""
    for key, t in tensors.items():
        if not t.is_floating_point():
            raise AdapterFormatError(f"{source}: {key}: dtype {str(t.dtype).removeprefix('torch.')}, "
                                     "expected a floating-point tensor")
        bad = ~torch.isfinite(t)
        if bad.any():
            first = [int(i) for i in bad.nonzero()[0]]
            value = t[tuple(first)].item()
            raise AdapterFormatError(f"{source}: {key}: {int(bad.sum())} non-finite values "
                                     f"({'NaN' if value != value else value} at {first})")
    return tensors


def load_adapter(model: nn.Module, path: str | os.PathLike, adapter_name: str = "default",
                 is_trainable: bool = False, allow_pickle: bool = False) -> list[str]:
    """Add the adapter saved in `path` to `model` under `adapter_name` and make it active.

    Reads lorakit- and peft-written adapters. The adapter is frozen unless `is_trainable`.
    Returns the adapted module names.
    """
    return attach_adapter(model, read_config(path), read_weights(path, allow_pickle), Path(path) / WEIGHTS_NAME,
                          adapter_name, is_trainable)


def attach_adapter(model: nn.Module, config, weights: dict[str, torch.Tensor], source: Path,
                   adapter_name: str = "default", is_trainable: bool = False) -> list[str]:
    """`load_adapter` once `read_config` and `read_weights` have read (and checked) the files."""
    if not isinstance(model, nn.Module):
        raise InputError(f"load_adapter: model must be a torch.nn.Module, got {type(model).__name__}")
    config = _drop_absent_modules_to_save(model, config)
    names = inject(model, config.model_copy(update=dict(methods.for_config(config).load_overrides)), adapter_name)
    try:
        _copy_checked(model, adapter_name, weights, source)
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


def copy_weights(model: nn.Module, adapter_name: str, weights: dict[str, torch.Tensor], source: Path) -> None:
    """Copy `weights` (on-disk keys, e.g. from `read_weights`) into the existing adapter `adapter_name`; the key
    set and every shape are checked first (one AdapterFormatError naming `source`), so nothing is half-copied."""
    _copy_checked(model, adapter_name, weights, Path(source))


def _copy_checked(model: nn.Module, adapter_name: str, weights: dict, source: Path) -> None:
    expected = adapter_tensors(model, adapter_name)
    extras = _loadable_extras(model, adapter_name)
    missing = sorted(set(expected) - set(weights))
    unexpected = sorted(set(weights) - set(expected) - set(extras))
    shapes = [f"{k}: file {tuple(weights[k].shape)} vs model {tuple(t.shape)}"
              for k, t in {**expected, **extras}.items() if k in weights and weights[k].shape != t.shape]
    problems = []
    for label, items in (("missing keys", missing), ("unexpected keys", unexpected), ("wrong shapes", shapes)):
        if items:
            problems.append(f"{label} ({len(items)}): {', '.join(items[:5])}{' ...' if len(items) > 5 else ''}")
    if problems:
        raise AdapterFormatError(f"{source}: does not fit this model: " + "; ".join(problems))
    with torch.no_grad():
        for key, t in {**expected, **extras}.items():
            if key in weights:
                t.copy_(weights[key].to(t.dtype))


def _drop_absent_modules_to_save(model: nn.Module, config):
    """peft writes default heads (e.g. 'classifier', 'score') for a task type whether they exist or not."""
    if not config.modules_to_save:
        return config
    names = [n for n, _ in model.named_modules() if n]
    keep = [t for t in config.modules_to_save if any(n == t or n.endswith("." + t) for n in names)]
    return config.model_copy(update={"modules_to_save": keep or None})


def _model_name_or_path(model: nn.Module) -> Optional[str]:
    cfg = getattr(model, "config", None)
    return getattr(model, "name_or_path", None) or getattr(cfg, "_name_or_path", None) or None


def _task_type(model: nn.Module) -> Optional[str]:
    cls = type(model).__name__
    return next((t for suffix, t in TASK_TYPES.items() if cls.endswith(suffix)), None)


def _first_error(e: ValueError) -> str:
    from pydantic import ValidationError

    return validation_message(e) if isinstance(e, ValidationError) else str(e)


__all__ = ["save_adapter", "load_adapter", "attach_adapter", "copy_weights", "read_config", "read_weights", "write_adapter",
           "check_tensor_values", "read_base_quantization", "AdapterFormatError"]
