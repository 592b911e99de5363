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


class DataError(InputError):
    """A problem with a data file; the message is one line starting with ``file:location:``."""


@dataclass(frozen=True)
class Record:
    """One raw row: ``where`` is its location (see module docstring), ``row`` the decoded object."""

    where: str
    row: Any


_JSON_CELLS = ("messages", "conversations", "history")


def _read_jsonl(path: Path) -> list[Record]:
    out = []
    lines = read_text(path, DataError).replace("\r\n", "\n").replace("\r", "\n").split("\n")
    for lineno, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        try:
            out.append(Record(f"{path}:{lineno}", json.loads(line)))
        except json.JSONDecodeError as e:
            raise DataError(f"{path}:{lineno}: invalid JSON: {e.msg} (column {e.colno})") from None
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


def read_records(path: str | Path) -> list[Record]:
    """Read every record of ``path``; raises DataError for a missing/empty file, bad extension or bad JSON."""
    path = Path(path)
    reader = READERS.get(path.suffix.lower())
    if reader is None:
        raise DataError(f"{path}: unknown extension {path.suffix!r}; expected one of {', '.join(READERS)}")
    if path.is_dir():
        raise DataError(f"{path}: is a directory, not a data file")
    if not path.is_file():
        raise DataError(f"{path}: no such file")
    records = reader(path)
    if not records:
        raise DataError(f"{path}: empty file (no records)")
    return records
