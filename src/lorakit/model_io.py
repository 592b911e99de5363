"""Model directories and safetensors files on disk: the one place that reads and writes them.

Reading: `checkpoint_files(dir)` lists a HF directory's safetensors files (one file or an index of
shards); `SafetensorsReader` reads single tensors by plain file reads (no memory map), so a
loader can stream a checkpoint tensor by tensor; `read_checked` + `fill_remaining` (or `load_into`, both
at once) fill a model built on the meta device (`lorakit.quant.load.parameters_on_meta`) after
checking names and shapes.

Writing: `save_model_dir(model, out, tokenizer)` writes config, generation config, tokenizer and
safetensors weights (sharded above `max_shard_bytes`) into a temporary sibling directory and
swaps it in, so `out` is either the old directory or the complete new one, never half written.
It works for models `save_pretrained` refuses (loaded from GGUF) and for custom state dicts
(lorakit's int8 format). Used by merging, export, compression and the GGUF cache.
`atomic_write(file, write)` does the same for one file.
"""
from __future__ import annotations

import json
import os
import shutil
import struct
import tempfile
from contextlib import contextmanager
from pathlib import Path
from typing import Callable, Iterable, Iterator, Optional

import torch
from torch import nn

from .errors import InputError

SAFETENSORS_INDEX = "model.safetensors.index.json"
SAFETENSORS_FILE = "model.safetensors"
DEFAULT_MAX_SHARD_BYTES = 5 * 2**30
_DTYPES = {
    "F64": torch.float64, "F32": torch.float32, "F16": torch.float16, "BF16": torch.bfloat16,
    "I64": torch.int64, "I32": torch.int32, "I16": torch.int16, "I8": torch.int8, "U8": torch.uint8,
    "BOOL": torch.bool,
}


class CheckpointMismatch(ValueError):
    """The checkpoint's tensor names or shapes do not match the model's state dict."""


class OutputExistsError(InputError):
    """The output path exists and is not something lorakit wrote (it would be replaced)."""


# ---- reading ---------------------------------------------------------------------------------
def checkpoint_files(directory: str | Path, weights_name: str = SAFETENSORS_FILE) -> list[Path]:
    """The safetensors files of a HF model directory (one file or an index of shards); [] if none."""
    directory = Path(directory)
    index = directory / _index_name(weights_name)
    if index.is_file():
        shards = sorted(set(json.loads(index.read_text())["weight_map"].values()))
        return [directory / s for s in shards]
    single = directory / weights_name
    return [single] if single.is_file() else []


class SafetensorsReader:
    """Random access to the tensors of one safetensors file by plain reads (no mmap)."""

    def __init__(self, path: str | Path):
        self.path = Path(path)
        with open(self.path, "rb") as f:
            (length,) = struct.unpack("<Q", f.read(8))
            header = json.loads(f.read(length))
        header.pop("__metadata__", None)
        self.entries: dict[str, dict] = header
        self._data_start = 8 + length

    def keys(self) -> list[str]:
        return list(self.entries)

    def read(self, key: str) -> torch.Tensor:
        """The tensor `key` as a fresh CPU tensor of its stored dtype and shape."""
        entry = self.entries[key]
        if entry["dtype"] not in _DTYPES:
            raise CheckpointMismatch(f"{self.path}: {key}: unsupported dtype {entry['dtype']}")
        begin, end = entry["data_offsets"]
        out = torch.empty(end - begin, dtype=torch.uint8)
        with open(self.path, "rb", buffering=0) as f:
            f.seek(self._data_start + begin)
            if f.readinto(memoryview(out.numpy())) != end - begin:
                raise CheckpointMismatch(f"{self.path}: {key}: file is truncated")
        return out.view(_DTYPES[entry["dtype"]]).view(entry["shape"])


def tied_groups(state: dict[str, torch.Tensor]) -> dict[str, list[str]]:
    """Keys sharing one tensor object (tied weights), grouped under each key of the group."""
    groups: dict[int, list[str]] = {}
    for key, t in state.items():
        groups.setdefault(id(t), []).append(key)
    return {key: group for group in groups.values() if len(group) > 1 for key in group}


def check_keys(expected: dict, aliases: dict, where: dict) -> None:
    """Every meta tensor must come from the file (itself or a tied alias); real buffers may not."""
    missing = [k for k, t in expected.items() if t.device.type == "meta" and k not in where
               and not any(a in where for a in aliases.get(k, []))]
    unexpected = [k for k in where if k not in expected]
    shapes = [f"{k}: file {tuple(where[k].entries[k]['shape'])} vs model {tuple(t.shape)}"
              for k, t in expected.items() if k in where and list(where[k].entries[k]["shape"]) != list(t.shape)]
    problems = [f"{label} ({len(items)}): {', '.join(items[:5])}"
                for label, items in (("missing", missing), ("unexpected", unexpected), ("wrong shape", shapes)) if items]
    if problems:
        raise CheckpointMismatch("checkpoint does not match the model: " + "; ".join(problems))


def assign_tensor(model: nn.Module, key: str, value: torch.Tensor) -> None:
    """Put a parameter (or buffer) object in place of the one named `key`."""
    parent, _, leaf = key.rpartition(".")
    module = model.get_submodule(parent) if parent else model
    if leaf in module._parameters:
        module._parameters[leaf] = value
    else:
        module._buffers[leaf] = value


def read_checked(model: nn.Module, files: Iterable[str | Path]) -> dict[str, SafetensorsReader]:
    """key → reader of the file holding it, after checking the keys and shapes against `model`
    (whose parameters may sit on the meta device); raises `CheckpointMismatch` before reading."""
    readers = [SafetensorsReader(f) for f in files]
    where = {key: r for r in readers for key in r.keys()}
    expected = model.state_dict(keep_vars=True)
    check_keys(expected, tied_groups(expected), where)
    return where


def fill_remaining(model: nn.Module, where: dict[str, SafetensorsReader], done: Iterable[str] = ()) -> None:
    """Read every state-dict tensor of `model` found in `where` (but those in `done`) into place.

    Floating tensors take the dtype of the tensor they replace (integer codes stay as stored);
    tied parameters stay tied. Raises if anything is left on the meta device.
    """
    expected = model.state_dict(keep_vars=True)
    aliases = tied_groups(expected)
    done = set(done)
    for key, current in expected.items():
        if key in done or key not in where:
            continue
        tensor = where[key].read(key)
        value = tensor.to(current.dtype) if tensor.is_floating_point() else tensor
        if isinstance(current, nn.Parameter):
            value = nn.Parameter(value, requires_grad=current.requires_grad)
        for alias in aliases.get(key, [key]):
            assign_tensor(model, alias, value)
            done.add(alias)
    left = [n for n, t in model.state_dict(keep_vars=True).items() if t.device.type == "meta"]
    if left:
        raise CheckpointMismatch(f"not loaded from the checkpoint ({len(left)}): {', '.join(left[:5])}")


def load_into(model: nn.Module, files: Iterable[str | Path]) -> None:
    """Fill a model built on the meta device from safetensors `files` (checked first), e.g. one whose
    linears were already swapped for the quantized layout the files hold."""
    fill_remaining(model, read_checked(model, files))


# ---- writing ---------------------------------------------------------------------------------
def atomic_write(target: Path, write: Callable[[str], None]) -> None:
    """Call `write(tmp_path)`, fsync, then rename onto `target`: readers never see half a file."""
    target = Path(target)
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


def check_output_dir(out: Path, marker: str = "config.json") -> None:
    """`out` may be replaced: it does not exist, is empty, or holds `marker` (an earlier output)."""
    if not out.exists():
        return
    if not out.is_dir():
        raise OutputExistsError(f"{out}: exists and is not a directory")
    if any(out.iterdir()) and not (out / marker).is_file():
        raise OutputExistsError(f"{out}: exists, is not empty and holds no {marker}; "
                                "refusing to replace it (choose a new output directory)")


def check_output_file(out: str | Path) -> None:
    """`out` can be written as a file: it is not a directory and its parent is not a file."""
    out = Path(out)
    if out.is_dir():
        raise OutputExistsError(f"{out}: is a directory; expected a file path")
    parent = next((p for p in out.parents if p.exists()), None)
    if parent is not None and not parent.is_dir():
        raise OutputExistsError(f"{out}: {parent} is not a directory")


@contextmanager
def atomic_dir(out: str | Path, marker: str = "config.json") -> Iterator[Path]:
    """Yield a fresh temporary directory beside `out`; on success it replaces `out` whole."""
    out = Path(out)
    check_output_dir(out, marker)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=out.parent, prefix=f".{out.name}.", suffix=".tmp"))
    try:
        yield tmp
        if out.exists():
            old = Path(tempfile.mkdtemp(dir=out.parent, prefix=f".{out.name}.", suffix=".old"))
            os.replace(out, old / "dir")
            os.replace(tmp, out)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(tmp, out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def plain_state_dict(model: nn.Module) -> dict[str, torch.Tensor]:
    """The tensors to save: contiguous CPU copies, the tied output head dropped (transformers re-ties
    it on load), any other storage shared between keys cloned (safetensors refuses shared storage)."""
    state = model.state_dict()
    config = getattr(model, "config", None)
    head = model.get_output_embeddings() if hasattr(model, "get_output_embeddings") else None
    if getattr(config, "tie_word_embeddings", False) and head is not None:
        key = next((f"{n}.weight" for n, m in model.named_modules() if m is head), None)
        if key in state and any(t.data_ptr() == state[key].data_ptr() for k, t in state.items() if k != key):
            state.pop(key)
    out, seen = {}, set()
    for key, t in state.items():
        t = t.detach().cpu().contiguous()
        ptr = (t.untyped_storage().data_ptr(), t.storage_offset()) if t.numel() else None
        out[key] = t.clone() if ptr is not None and ptr in seen else t
        seen.add(ptr)
    return out


def write_safetensors(state: dict[str, torch.Tensor], directory: Path, weights_name: str = SAFETENSORS_FILE,
                      max_shard_bytes: int = DEFAULT_MAX_SHARD_BYTES) -> list[Path]:
    """Write `state` as one file, or as shards `<stem>-0000i-of-0000n.safetensors` plus an index."""
    from safetensors.torch import save_file

    shards: list[dict[str, torch.Tensor]] = [{}]
    size = 0
    for key, t in state.items():
        nbytes = t.numel() * t.element_size()
        if shards[-1] and size + nbytes > max_shard_bytes:
            shards.append({})
            size = 0
        shards[-1][key] = t
        size += nbytes
    if len(shards) == 1:
        save_file(shards[0], str(directory / weights_name), metadata={"format": "pt"})
        return [directory / weights_name]
    stem = weights_name.removesuffix(".safetensors")
    names = [f"{stem}-{i + 1:05d}-of-{len(shards):05d}.safetensors" for i in range(len(shards))]
    for name, shard in zip(names, shards):
        save_file(shard, str(directory / name), metadata={"format": "pt"})
    index = {"metadata": {"total_size": sum(t.numel() * t.element_size() for t in state.values())},
             "weight_map": {key: name for name, shard in zip(names, shards) for key in shard}}
    (directory / _index_name(weights_name)).write_text(json.dumps(index, indent=2, sort_keys=True))
    return [directory / n for n in names]


def save_model_dir(model: nn.Module, out: str | Path, tokenizer=None, state: Optional[dict] = None,
                   config_update: Optional[dict] = None, weights_name: str = SAFETENSORS_FILE,
                   max_shard_bytes: int = DEFAULT_MAX_SHARD_BYTES,
                   extra_files: Optional[dict[str, str]] = None) -> Path:
    """Write a HF model directory atomically: config.json (+ `config_update` keys), generation config,
    tokenizer, safetensors weights (`state`, default `plain_state_dict(model)`) and `extra_files`
    (name → text). Replaces `out` whole if it is an earlier model directory; see `check_output_dir`."""
    out = Path(out)
    config = model.config
    config.architectures = [type(model).__name__]  # as save_pretrained does; loaders pick the head class by it
    with atomic_dir(out) as tmp:
        saved_quantization = getattr(config, "quantization_config", None)
        if saved_quantization is not None:  # a model loaded from GGUF: the weights are plain now
            del config.quantization_config
        try:
            config.save_pretrained(tmp)
        finally:
            if saved_quantization is not None:
                config.quantization_config = saved_quantization
        if config_update:
            data = json.loads((tmp / "config.json").read_text())
            data.update(config_update)
            (tmp / "config.json").write_text(json.dumps(data, indent=2, sort_keys=True) + "\n")
        if getattr(model, "generation_config", None) is not None:
            model.generation_config.save_pretrained(tmp)
        if tokenizer is not None:
            tokenizer.save_pretrained(tmp)
        write_safetensors(plain_state_dict(model) if state is None else state, tmp, weights_name, max_shard_bytes)
        for name, text in (extra_files or {}).items():
            (tmp / name).write_text(text)
        _fsync_tree(tmp)
    return out


def _index_name(weights_name: str) -> str:
    return weights_name + ".index.json"


def _fsync_tree(directory: Path) -> None:
    for path in directory.rglob("*"):
        if path.is_file():
            with open(path, "rb") as f:
                os.fsync(f.fileno())


__all__ = ["checkpoint_files", "SafetensorsReader", "load_into", "CheckpointMismatch", "OutputExistsError",
           "atomic_write", "atomic_dir", "check_output_dir", "check_output_file", "plain_state_dict", "write_safetensors",
           "save_model_dir", "tied_groups", "check_keys", "assign_tensor", "read_checked", "fill_remaining"]
