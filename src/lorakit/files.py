"""The user's files: one text decoder, one JSON reader, one output-directory check, atomic writes,
and integrity checks of tensor files read before anything heavy starts.

Text (run configs, data files, adapter_config.json, config.json, ...) is read by `read_text`:
UTF-8 with or without a byte-order mark, and UTF-16 / UTF-32 with a byte-order mark, are accepted.
Anything else (Latin-1, Windows-1252, binary files, UTF-16 without a BOM) is an InputError naming
the file and the byte offset of the first byte that is not text, before a parser sees it.

Output directories are checked by `check_output_dir` before the work that fills them (a model
load, a training run): a path that is a file, lies under a file, cannot be written, or (where
the caller asks) is a non-empty directory fails in one line and nothing is created.
"""
from __future__ import annotations

import codecs
import json
import os
import struct
import tempfile
from pathlib import Path
from typing import Any, Callable, Optional

from .errors import InputError

_BOMS = (  # UTF-32 first: its little-endian BOM starts with UTF-16's
    (codecs.BOM_UTF32_LE, "utf-32"), (codecs.BOM_UTF32_BE, "utf-32"), (codecs.BOM_UTF8, "utf-8-sig"),
    (codecs.BOM_UTF16_LE, "utf-16"), (codecs.BOM_UTF16_BE, "utf-16"),
)
_JSON_TYPES = {dict: "an object", list: "an array", str: "a string", int: "a number", float: "a number",
               bool: "true/false", type(None): "null"}


def decode_text(data: bytes, where: str, error: type[InputError] = InputError) -> str:
    """`data` as text (see the module docstring for what is accepted); `where` starts the error message."""
    for bom, codec in _BOMS:
        if data.startswith(bom):
            try:
                return data.decode(codec)
            except UnicodeDecodeError as e:
                raise error(f"{where}: not {codec.upper().removesuffix('-SIG')} text: byte {e.start} "
                            f"(0x{data[e.start]:02x}) cannot be decoded after its byte-order mark") from None
    try:
        text, bad = data.decode("utf-8"), None
    except UnicodeDecodeError as e:
        text, bad = None, e
    nul = data.find(b"\x00")
    if nul >= 0 and (bad is None or nul < bad.start):
        raise error(f"{where}: byte {nul} is NUL: a binary file, or UTF-16/32 text without a byte-order mark; "
                    "save it as UTF-8")
    if bad is not None:
        cut = " (the file ends inside a character)" if bad.reason == "unexpected end of data" else ""
        raise error(f"{where}: not UTF-8 text: byte {bad.start} (0x{data[bad.start]:02x}) is invalid in UTF-8{cut}; "
                    "Latin-1 or Windows-1252? save it as UTF-8")
    return text


def read_bytes(path: str | os.PathLike, error: type[InputError] = InputError) -> bytes:
    """The bytes of a file the user named; a directory, a missing file or an unreadable one is `error`."""
    path = Path(path)
    if path.is_dir():
        raise error(f"{path}: is a directory, not a file")
    try:
        return path.read_bytes()
    except FileNotFoundError:
        raise error(f"{path}: no such file") from None
    except OSError as e:
        raise error(f"{path}: cannot read ({e.strerror})") from None


def read_text(path: str | os.PathLike, error: type[InputError] = InputError) -> str:
    """A text file as str: UTF-8 (BOM optional) or UTF-16/32 with a BOM; otherwise `error` with the byte offset."""
    return decode_text(read_bytes(path, error), str(path), error)


def read_json(path: str | os.PathLike, error: type[InputError] = InputError, expect: Optional[type] = None) -> Any:
    """A JSON file, decoded; `expect` (dict, list) checks the top-level type. Errors name file and line."""
    text = read_text(path, error)
    try:
        value = json.loads(text)
    except json.JSONDecodeError as e:
        raise error(f"{path}:{e.lineno}: invalid JSON: {e.msg} (column {e.colno})") from None
    if expect is not None and not isinstance(value, expect):
        raise error(f"{path}: expected {_JSON_TYPES[expect]}, got {json_type(value)}")
    return value


def json_type(value: Any) -> str:
    """How a decoded JSON value is named in messages ("an array", "a string", ...)."""
    return _JSON_TYPES.get(type(value), type(value).__name__)


def check_output_dir(path: str | os.PathLike, what: str, must_be_empty: bool = False,
                     hint: str = "pass --overwrite to replace its contents") -> Path:
    """Check that `path` can become (or already is) a directory to write into; creates nothing.

    `what` is how the user named it (`output_dir`, `OUT_DIR`, `save_adapter path`). Refused:
    an empty path; an existing file; a path under a file; a place without write permission; and,
    with `must_be_empty`, a directory that already holds files (`hint` says how to allow it).
    """
    if not str(path).strip():
        raise InputError(f"{what}: empty path")
    path = Path(path).expanduser()
    if path.exists() and not path.is_dir():
        raise InputError(f"{what} {path}: exists and is not a directory")
    existing = path
    while not existing.exists():
        parent = existing.parent
        if parent == existing:
            break
        if parent.exists() and not parent.is_dir():
            raise InputError(f"{what} {path}: {parent} is a file, not a directory")
        existing = parent
    if existing.is_dir() and not os.access(existing, os.W_OK | os.X_OK):
        raise InputError(f"{what} {path}: no permission to write in {existing}")
    if must_be_empty and path.is_dir() and any(path.iterdir()):
        raise InputError(f"{what} {path}: directory is not empty; {hint}")
    return path


def atomic_write(target: Path, write: Callable[[str], None]) -> None:
    """`write(tmp_path)` then rename over `target`: readers see the old file or the new one, never half of one."""
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


def atomic_write_text(target: Path, text: str) -> None:
    atomic_write(target, lambda tmp: Path(tmp).write_text(text, encoding="utf-8"))


SAFETENSORS_DTYPES = {"F64", "F32", "F16", "BF16", "I64", "I32", "I16", "I8", "U64", "U32", "U16", "U8", "BOOL",
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
        if any(v["dtype"] not in SAFETENSORS_DTYPES or not isinstance(v["shape"], list) for v in tensors.values()):
            raise ValueError
    except (ValueError, KeyError, TypeError, IndexError):
        raise error(f"{path}: not a safetensors file (its header is not a tensor table)") from None
    if 8 + n + end > size:
        raise error(f"{path}: truncated: its tensors need {8 + n + end} bytes, the file has {size}")
    return tensors


__all__ = ["decode_text", "read_bytes", "read_text", "read_json", "json_type", "check_output_dir", "atomic_write",
           "atomic_write_text", "check_safetensors"]
