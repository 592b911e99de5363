"""Model weights on disk: safetensors files and shards, read one tensor at a time and written as they come.

Used wherever whole checkpoints are streamed: quantized loading (`quant/load.py`), model merging
and LoRA extraction (`merge/`), export.

- `SafetensorsReader` reads single tensors with plain `readinto` calls, never a memory map: the
  pages of a mapped file count towards (and stay in) the process's resident memory, so streaming
  three 500 MB checkpoints through a map shows 1.5 GB RSS; plain reads hold one tensor.
- `ShardWriter` takes the full list of (name, shape, dtype) up front, lays the shards out, writes
  each header first and then every tensor straight to its offset when it is produced: memory holds
  one tensor, not a shard. The index (`model.safetensors.index.json`) follows transformers' layout.
- `staged_directory` writes a whole output directory beside its target and renames it into place
  at the end, so a failure or Ctrl-C never leaves half a model where the user asked for one
  (`lorakit.files.atomic_write` does the same for one file).
"""
from __future__ import annotations

import contextlib
import json
import os
import shutil
import struct
import tempfile
from pathlib import Path
from typing import Iterable, Iterator

import torch

from ..errors import InputError
from ..files import check_output_dir

SAFETENSORS_INDEX = "model.safetensors.index.json"
SAFETENSORS_FILE = "model.safetensors"
DTYPES = {
    "F64": torch.float64, "F32": torch.float32, "F16": torch.float16, "BF16": torch.bfloat16,
    "I64": torch.int64, "I32": torch.int32, "I16": torch.int16, "I8": torch.int8, "U8": torch.uint8,
    "BOOL": torch.bool,
}
DTYPE_NAMES = {v: k for k, v in DTYPES.items()}


class CheckpointMismatch(ValueError):
    """The checkpoint's tensor names do not match the model's state dict (e.g. renamed keys)."""


class OutputExistsError(InputError):
    """The output directory already holds files and overwriting was not asked for."""


def _malloc_trim():
    """glibc's malloc_trim, or a no-op elsewhere.

    Streaming frees one tensor-sized block after another; glibc keeps freed blocks below its
    (adaptive, up to 32 MiB) mmap threshold mapped, between long-lived small allocations, so
    without trimming RSS creeps up by several tensors: SmolLM2-135M's quantized streamed load
    peaked ~170 MiB higher, a merge of three 115 MB models ~ 2 of its largest tensors higher.
    """
    try:
        import ctypes

        trim = ctypes.CDLL("libc.so.6").malloc_trim
    except (OSError, AttributeError):
        return lambda: None
    trim.argtypes = [ctypes.c_size_t]
    return lambda: trim(0)


release_free_memory = _malloc_trim()
"""Hand freed heap memory back to the OS (after each tensor of a stream)."""


def checkpoint_files(directory: str | Path, name: str = SAFETENSORS_FILE) -> list[Path]:
    """The safetensors files of a HF model directory (one file `name` or an index of its shards); [] if none."""
    directory = Path(directory)
    index = directory / _index_name(name)
    if index.is_file():
        shards = sorted(set(json.loads(index.read_text())["weight_map"].values()))
        return [directory / s for s in shards]
    single = directory / name
    return [single] if single.is_file() else []


_HEADER_DTYPES = {"F64", "F32", "F16", "BF16", "I64", "I32", "I16", "I8", "U64", "U32", "U16", "U8", "BOOL",
                      "F8_E4M3", "F8_E5M2", "F8_E8M0", "F4", "F6_E2M3", "F6_E3M2", "C64", "U1", "I1", "I4", "U4"}


def check_safetensors(path: str | os.PathLike, error: type[InputError] = InputError) -> dict[str, dict]:
    """The header of a safetensors file, checked against the file's size without reading its tensors.

    Returns {tensor name: {"dtype", "shape", "data_offsets"}}. An empty, truncated or
    non-safetensors file is `error` naming it, before a loader fails halfway through it.
    """
    path = Path(path)
    size = path.stat().st_size if path.is_file() else None
    if size is None:
        raise error(f"{path}: no such file")
    with open(path, "rb") as f:
        head = f.read(8)
        n = struct.unpack("<Q", head)[0] if len(head) == 8 else None
        if n is None or n > size - 8:
            what = "empty" if size == 0 else "truncated or not a safetensors file"
            raise error(f"{path}: {what} ({size} bytes; the header alone needs {8 + (n or 0)})")
        raw = f.read(n)
    try:
        header = json.loads(raw)
        if not isinstance(header, dict):
            raise ValueError
        tensors = {k: v for k, v in header.items() if k != "__metadata__"}
        end = max([int(v["data_offsets"][1]) for v in tensors.values()] or [0])
        if any(v["dtype"] not in _HEADER_DTYPES or not isinstance(v["shape"], list) for v in tensors.values()):
            raise ValueError
    except (ValueError, KeyError, TypeError, IndexError):
        raise error(f"{path}: not a safetensors file (its header is not a tensor table)") from None
    if 8 + n + end > size:
        raise error(f"{path}: truncated: its tensors need {8 + n + end} bytes, the file has {size}")
    return tensors


def _index_name(name: str) -> str:
    """`model.safetensors` → `model.safetensors.index.json` (transformers' naming)."""
    return f"{name}.index.json"


class SafetensorsReader:
    """Random access to the tensors of one safetensors file by plain reads (no mmap)."""

    def __init__(self, path: str | Path):
        self.path = Path(path)
        self.entries: dict[str, dict] = check_safetensors(self.path)
        with open(self.path, "rb") as f:
            self._data_start = 8 + struct.unpack("<Q", f.read(8))[0]

    def keys(self) -> list[str]:
        return list(self.entries)

    def shape(self, key: str) -> tuple[int, ...]:
        return tuple(self.entries[key]["shape"])

    def dtype(self, key: str) -> torch.dtype:
        name = self.entries[key]["dtype"]
        if name not in DTYPES:
            raise CheckpointMismatch(f"{self.path}: {key}: unsupported dtype {name}")
        return DTYPES[name]

    def read(self, key: str) -> torch.Tensor:
        """The tensor `key` as a fresh CPU tensor of its stored dtype and shape."""
        entry, dtype = self.entries[key], self.dtype(key)
        begin, end = entry["data_offsets"]
        out = torch.empty(end - begin, dtype=torch.uint8)
        with open(self.path, "rb", buffering=0) as f:
            f.seek(self._data_start + begin)
            if f.readinto(memoryview(out.numpy())) != end - begin:
                raise CheckpointMismatch(f"{self.path}: {key}: file is truncated")
        return out.view(dtype).view(entry["shape"])


class CheckpointReader:
    """All tensors of a model directory (one file or shards) by name: `keys()`, `shape`, `dtype`, `read`."""

    def __init__(self, directory: str | Path):
        self.directory = Path(directory)
        files = checkpoint_files(self.directory)
        if not files:
            raise CheckpointMismatch(f"{self.directory}: no model.safetensors or {SAFETENSORS_INDEX}")
        self.where = {key: r for r in map(SafetensorsReader, files) for key in r.keys()}

    def keys(self) -> list[str]:
        return list(self.where)

    def __contains__(self, key: str) -> bool:
        return key in self.where

    def shape(self, key: str) -> tuple[int, ...]:
        return self.where[key].shape(key)

    def dtype(self, key: str) -> torch.dtype:
        return self.where[key].dtype(key)

    def read(self, key: str) -> torch.Tensor:
        return self.where[key].read(key)


def _nbytes(shape: Iterable[int], dtype: torch.dtype) -> int:
    n = 1
    for d in shape:
        n *= d
    return n * torch.empty((), dtype=dtype).element_size()


class ShardWriter:
    """Write a planned set of tensors into safetensors shards of at most `max_shard_bytes` each.

        writer = ShardWriter(directory, [(name, shape, dtype), ...])
        for name, ...: writer.write(name, tensor)     # any order, each exactly once
        writer.close()                                 # checks every tensor came; writes the index

    Tensors fill shards in the order given (a tensor larger than the limit gets a shard of its
    own). One shard is written as `model.safetensors` (`name`), several as
    `model-0000k-of-0000n.safetensors` plus `model.safetensors.index.json`.
    """

    def __init__(self, directory: str | Path, layout: list[tuple[str, tuple[int, ...], torch.dtype]],
                 max_shard_bytes: int = 2 * 1024 ** 3, metadata: dict[str, str] | None = None,
                 name: str = SAFETENSORS_FILE):
        self.directory, self.name = Path(directory), name
        groups: list[list[tuple[str, tuple[int, ...], torch.dtype]]] = [[]]
        size = 0
        for name, shape, dtype in layout:
            n = _nbytes(shape, dtype)
            if groups[-1] and size + n > max_shard_bytes:
                groups.append([])
                size = 0
            groups[-1].append((name, tuple(shape), dtype))
            size += n
        self.total_size = sum(_nbytes(s, d) for _, s, d in layout)
        count = len(groups)
        stem = self.name.removesuffix(".safetensors")
        names = [self.name] if count == 1 else [f"{stem}-{i + 1:05d}-of-{count:05d}.safetensors"
                                                for i in range(count)]
        self.slots: dict[str, tuple[Path, int, int, tuple[int, ...], torch.dtype]] = {}
        self.weight_map: dict[str, str] = {}
        for file_name, group in zip(names, groups):
            path = self.directory / file_name
            header, offset = {"__metadata__": {"format": "pt", **(metadata or {})}}, 0
            for name, shape, dtype in group:
                n = _nbytes(shape, dtype)
                header[name] = {"dtype": DTYPE_NAMES[dtype], "shape": list(shape), "data_offsets": [offset, offset + n]}
                offset += n
            text = json.dumps(header, separators=(",", ":")).encode()
            text += b" " * (-len(text) % 8)
            start = 8 + len(text)
            with open(path, "wb") as f:
                f.write(struct.pack("<Q", len(text)) + text)
                f.truncate(start + offset)
            for name, shape, dtype in group:
                begin, end = header[name]["data_offsets"]
                self.slots[name] = (path, start + begin, end - begin, shape, dtype)
                self.weight_map[name] = file_name
        self.written: set[str] = set()

    def write(self, name: str, tensor: torch.Tensor) -> None:
        """Put `tensor` (its planned shape and dtype) at its place in its shard."""
        path, offset, n, shape, dtype = self.slots[name]
        if tuple(tensor.shape) != shape or tensor.dtype != dtype:
            raise ValueError(f"{name}: planned {shape} {dtype}, got {tuple(tensor.shape)} {tensor.dtype}")
        data = tensor.detach().cpu().contiguous().reshape(-1).view(torch.uint8)
        with open(path, "r+b", buffering=0) as f:
            f.seek(offset)
            view = memoryview(data.numpy())
            while view.nbytes:
                view = view[f.write(view):]
        self.written.add(name)

    def close(self) -> list[Path]:
        """Check that every planned tensor was written, fsync the shards, write the index; returns the files."""
        missing = [n for n in self.slots if n not in self.written]
        if missing:
            raise RuntimeError(f"{len(missing)} planned tensors were never written, e.g. {missing[0]}")
        files = sorted({p for p, *_ in self.slots.values()})
        for path in files:
            with open(path, "rb+") as f:
                os.fsync(f.fileno())
        if len(files) > 1:
            index = {"metadata": {"total_size": self.total_size}, "weight_map": dict(sorted(self.weight_map.items()))}
            (self.directory / _index_name(self.name)).write_text(json.dumps(index, indent=2))
            files.append(self.directory / _index_name(self.name))
        return files


def check_output_directory(path: str | Path, overwrite: bool, inputs: Iterable[Path] = ()) -> Path:
    """Refuse an output path that is a file, holds files (unless `overwrite`), or is one of `inputs`
    (`lorakit.files.check_output_dir`, raising OutputExistsError)."""
    return check_output_dir(path, "output directory", must_be_empty=not overwrite, inputs=inputs,
                            hint="pass --overwrite to replace it; Python: overwrite=True", error=OutputExistsError)


@contextlib.contextmanager
def staged_directory(target: str | Path) -> Iterator[Path]:
    """Yield a fresh directory beside `target`; on success it replaces `target`, on failure it is removed."""
    target = Path(target).expanduser()
    target.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(dir=target.parent, prefix=f".{target.name}.partial-"))
    umask = os.umask(0)
    os.umask(umask)
    os.chmod(staging, 0o777 & ~umask)  # mkdtemp's 0700 would make the model private
    try:
        yield staging
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    old = None
    if target.exists():
        old = Path(tempfile.mkdtemp(dir=target.parent, prefix=f".{target.name}.old-"))
        os.replace(target, old / "previous")
    os.replace(staging, target)
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)


def check_output_file(path: str | Path, overwrite: bool) -> Path:
    """Refuse an output file path that is a directory, sits under a file, or exists (unless `overwrite`)."""
    path = Path(path).expanduser()
    if path.is_dir():
        raise OutputExistsError(f"{path}: is a directory; expected a file path")
    parent = next((p for p in path.parents if p.exists()), None)
    if parent is not None and not parent.is_dir():
        raise OutputExistsError(f"{path}: {parent} is not a directory")
    if path.exists() and not overwrite:
        raise OutputExistsError(f"{path}: file exists (pass --overwrite to replace it)")
    return path
