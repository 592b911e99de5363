"""The user's files: one text decoder, one JSON reader, one output-directory check, atomic writes.
(Tensor files are checked in `lorakit.io.shards.check_safetensors`.)

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
import tempfile
from pathlib import Path
from typing import Any, Callable, Iterable, Optional

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
                     hint: str = "pass --overwrite to replace its contents", inputs: Iterable[os.PathLike] = (),
                     error: type[InputError] = InputError) -> Path:
    """Check that `path` can become (or already is) a directory to write into; creates nothing.

    `what` is how the user named it (`output_dir`, `output directory`, `adapter directory`). Refused
    (as `error`): an empty path; an existing file; a path under a file; a place without write
    permission; the directory of one of `inputs` or one holding it (writing there would destroy
    it); and, with `must_be_empty`, a directory that already holds files (`hint` says how to allow it).
    """
    if not str(path).strip():
        raise error(f"{what}: empty path")
    path = Path(path).expanduser()
    if path.exists() and not path.is_dir():
        raise error(f"{what} {path}: exists and is not a directory")
    resolved = path.resolve()
    for source in inputs:
        source = Path(source).expanduser().resolve()
        if resolved == source or resolved in source.parents:
            raise error(f"{what} {path}: is (or holds) the input {source}; write the output elsewhere")
    existing = path
    while not existing.exists():
        parent = existing.parent
        if parent == existing:
            break
        if parent.exists() and not parent.is_dir():
            raise error(f"{what} {path}: {parent} is a file, not a directory")
        existing = parent
    if existing.is_dir() and not os.access(existing, os.W_OK | os.X_OK):
        raise error(f"{what} {path}: no permission to write in {existing}")
    if must_be_empty and path.is_dir() and any(path.iterdir()):
        raise error(f"{what} {path}: directory exists and is not empty ({hint})")
    return path


def atomic_write(target: Path, write: Callable[[str], None]) -> None:
    """`write(tmp_path)` then rename over `target`: readers see the old file or the new one, never half of one.
    The file gets the permissions a plain `open` would give it, not mkstemp's private 0600."""
    target = Path(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=target.parent, prefix=f".{target.name}.", suffix=".tmp")
    os.close(fd)
    umask = os.umask(0)
    os.umask(umask)
    try:
        write(tmp)
        os.chmod(tmp, 0o666 & ~umask)
        with open(tmp, "rb+") as f:
            os.fsync(f.fileno())
        os.replace(tmp, target)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def atomic_write_text(target: Path, text: str) -> None:
    atomic_write(target, lambda tmp: Path(tmp).write_text(text, encoding="utf-8"))


__all__ = ["decode_text", "read_bytes", "read_text", "read_json", "json_type", "check_output_dir", "atomic_write",
           "atomic_write_text"]
