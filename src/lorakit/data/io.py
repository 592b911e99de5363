"""Read raw records from JSON, JSONL, CSV and parquet files, each tagged with where it came from.

Every record is returned with a location string that error messages start with:

    JSONL / CSV   ``path:LINE``       (1-based line in the file; for CSV the line the record ends on)
    JSON          ``path[INDEX]``     (0-based index in the top-level array)
    parquet       ``path[row INDEX]`` (0-based row)

In CSV files a cell holding a JSON list (``messages``, ``conversations``, ``history``) is
decoded, so every format can be written as CSV.

Text files are decoded by `lorakit.files.read_text`: UTF-8 with or without a BOM, UTF-16/32 with
a BOM; anything else is a DataError naming the byte offset.
"""
from __future__ import annotations

import csv
import io
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

from ..errors import InputError
from ..files import read_text
from . import bundled


class DataError(InputError):
    """A problem with a data file; the message is one line starting with ``file:location:``."""


def data_path(value: str, key: str) -> Path:
    """The data file `value` names: `bundled:NAME` → the shipped file; anything else must be an existing
    file (`key`: the option or config key it came from, for the error)."""
    if value.startswith("bundled:"):
        try:
            return bundled.path(value.split(":", 1)[1])
        except KeyError as e:
            raise DataError(f"{key}: {value}: {e.args[0]}") from None
    path = Path(value).expanduser()
    if path.is_dir():
        raise DataError(f"{key}: {value} is a directory, not a data file")
    if not path.is_file():
        raise DataError(f"{key}: file not found: {value}")
    return path


@dataclass(frozen=True)
class Record:
    """One raw row: ``where`` is its location (see module docstring), ``row`` the decoded object."""

    where: str
    row: Any


_JSON_CELLS = ("messages", "conversations", "history")


def _read_jsonl(path: Path, bad_lines: list[DataError] | None = None) -> list[Record]:
    """Every line's record; an invalid line raises, or is appended to `bad_lines` when that is a list."""
    out = []
    lines = read_text(path, DataError).replace("\r\n", "\n").replace("\r", "\n").split("\n")
    for lineno, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        try:
            out.append(Record(f"{path}:{lineno}", json.loads(line)))
        except json.JSONDecodeError as e:
            error = DataError(f"{path}:{lineno}: invalid JSON: {e.msg} (column {e.colno})")
            if bad_lines is None:
                raise error from None
            bad_lines.append(error)
    return out


def _read_json(path: Path) -> list[Record]:
    text = read_text(path, DataError)
    if not text.strip():
        return []
    try:
        data = json.loads(text)
    except json.JSONDecodeError as e:
        raise DataError(f"{path}:{e.lineno}: invalid JSON: {e.msg} (column {e.colno})") from None
    if isinstance(data, dict) and len(data) == 1 and isinstance(next(iter(data.values())), list):
        data = next(iter(data.values()))  # {"data": [...]} / {"train": [...]}
    if not isinstance(data, list):
        raise DataError(f"{path}: expected a JSON array of objects, got {type(data).__name__}")
    return [Record(f"{path}[{i}]", row) for i, row in enumerate(data)]


def _decode_cells(row: dict, where: str) -> dict:
    out = {}
    for key, value in row.items():
        if key is None:
            raise DataError(f"{where}: more cells than header columns")
        if value is None or value == "":
            continue  # missing / empty cell = absent optional field
        if key in _JSON_CELLS:
            try:
                value = json.loads(value)
            except json.JSONDecodeError as e:
                raise DataError(f"{where}: column {key!r} is not valid JSON: {e.msg}") from None
        out[key] = value
    return out


def _read_csv(path: Path) -> list[Record]:
    out = []
    reader = csv.DictReader(io.StringIO(read_text(path, DataError), newline=""))
    try:
        for row in reader:
            where = f"{path}:{reader.line_num}"
            out.append(Record(where, _decode_cells(row, where)))
    except csv.Error as e:
        raise DataError(f"{path}:{reader.line_num}: invalid CSV: {e}") from None
    return out


def _read_parquet(path: Path) -> list[Record]:
    import pyarrow.parquet as pq

    try:
        rows = pq.read_table(path).to_pylist()
    except Exception as e:  # pyarrow raises several unrelated types for corrupt files
        raise DataError(f"{path}: cannot read parquet: {e}".splitlines()[0]) from None
    return [Record(f"{path}[row {i}]", {k: v for k, v in r.items() if v is not None}) for i, r in enumerate(rows)]


READERS: dict[str, Callable[[Path], list[Record]]] = {
    ".jsonl": _read_jsonl,
    ".json": _read_json,
    ".csv": _read_csv,
    ".parquet": _read_parquet,
}


def read_records(path: str | Path, bad_lines: list[DataError] | None = None) -> list[Record]:
    """Read every record of ``path``; raises DataError for a missing/empty file, bad extension or bad JSON.

    With a list as ``bad_lines``, a JSONL line that is not valid JSON is appended there as its DataError
    and reading goes on (what `lorakit data check` needs to report every bad line at once)."""
    path = Path(path)
    reader = READERS.get(path.suffix.lower())
    if reader is None:
        raise DataError(f"{path}: unknown extension {path.suffix!r}; expected one of {', '.join(READERS)}")
    if path.is_dir():
        raise DataError(f"{path}: is a directory, not a data file")
    if not path.is_file():
        raise DataError(f"{path}: no such file")
    records = _read_jsonl(path, bad_lines) if reader is _read_jsonl and bad_lines is not None else reader(path)
    if not records and not bad_lines:
        raise DataError(f"{path}: empty file (no records)")
    return records


WRITE_SUFFIXES = (".jsonl", ".json")


def check_output_file(path: str | Path, inputs: tuple[str | Path, ...] = (), overwrite: bool = False,
                      what: str = "output") -> Path:
    """A data file about to be written: a .jsonl/.json path that is not one of `inputs`, not a directory, and
    (unless `overwrite`) does not exist yet. Creates nothing; raises DataError."""
    path = Path(path).expanduser()
    if path.suffix.lower() not in WRITE_SUFFIXES:
        raise DataError(f"{what} {path}: unknown extension {path.suffix!r}; expected one of {', '.join(WRITE_SUFFIXES)}")
    if path.is_dir():
        raise DataError(f"{what} {path}: is a directory, not a data file")
    if any(path.resolve() == Path(i).expanduser().resolve() for i in inputs):
        raise DataError(f"{what} {path}: is the input file; write the output elsewhere")
    if path.exists() and not overwrite:
        raise DataError(f"{what} {path}: exists (pass --overwrite to replace it)")
    for parent in path.parents:
        if parent.exists():
            if not parent.is_dir():
                raise DataError(f"{what} {path}: {parent} is a file, not a directory")
            break
    return path


def write_records(path: str | Path, rows: list[Any]) -> Path:
    """Write rows (JSON objects) atomically: one per line for .jsonl, one array for .json (UTF-8, not ASCII-escaped)."""
    from ..files import atomic_write_text

    path = Path(path)
    if path.suffix.lower() == ".json":
        text = json.dumps(rows, ensure_ascii=False, indent=1) + "\n"
    else:
        text = "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows)
    atomic_write_text(path, text)
    return path
