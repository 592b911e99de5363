"""Dataset formats, detection and row validation, normalised to one internal shape.

Normalised rows, by kind:

    chat            ``[{"role": "system"|"user"|"assistant", "content": str}, ...]``
                    (from alpaca, sharegpt and OpenAI messages)
    text            ``{"text": str}``                 language modelling: every token is a target
    classification  ``{"text": str, "label": str|int}``

Formats and their keys:

    alpaca          instruction, output, [input], [system], [history: [[user, assistant], ...]]
    sharegpt        conversations: [{"from": human|user|gpt|assistant|system, "value": str}, ...]
    messages        messages: [{"role": system|user|assistant, "content": str}, ...]
    text            text
    classification  text, label

Every row is validated at load time; a bad row raises DataError naming file and line.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Literal

from lorakit.data.io import DataError, Record, read_records

Kind = Literal["chat", "text", "classification"]
ROLES = ("system", "user", "assistant")
SHAREGPT_ROLES = {"human": "user", "user": "user", "gpt": "assistant", "assistant": "assistant", "system": "system"}


@dataclass
class Dataset:
    """Validated, normalised rows of one file.

    ``rows`` holds chat conversations (list of messages) or ``{"text"[, "label"]}`` dicts per ``kind``.
    """

    source: str
    format: str
    kind: Kind
    rows: list[Any]

    def __len__(self) -> int:
        return len(self.rows)


class _RowError(Exception):
    """Raised by a normaliser; turned into a DataError with the row's location."""


def _str_field(row: dict, key: str, fmt: str, required: bool = True) -> str | None:
    if key not in row:
        if required:
            raise _RowError(f"missing key {key!r} ({fmt} format)")
        return None
    value = row[key]
    if not isinstance(value, str):
        raise _RowError(f"{key!r} must be a string, got {type(value).__name__} ({fmt} format)")
    return value


def _check_conversation(messages: list[dict]) -> list[dict]:
    if not messages:
        raise _RowError("empty conversation")
    first = 1 if messages[0]["role"] == "system" else 0
    if first >= len(messages) or messages[first]["role"] != "user":
        raise _RowError("conversation must start with a user turn (after an optional system message)")
    for i, m in enumerate(messages):
        if m["role"] == "system" and i != 0:
            raise _RowError(f"message {i}: a system message may only come first")
    if not any(m["role"] == "assistant" for m in messages):
        raise _RowError("conversation has no assistant turn")
    return messages


def _message_list(row: dict, key: str, fmt: str) -> list:
    if key not in row:
        raise _RowError(f"missing key {key!r} ({fmt} format)")
    value = row[key]
    if not isinstance(value, list):
        raise _RowError(f"{key!r} must be a list, got {type(value).__name__} ({fmt} format)")
    return value


def _norm_messages(row: dict) -> list[dict]:
    out = []
    for i, m in enumerate(_message_list(row, "messages", "messages")):
        if not isinstance(m, dict) or "role" not in m or "content" not in m:
            raise _RowError(f"message {i}: expected an object with 'role' and 'content'")
        if m["role"] not in ROLES:
            raise _RowError(f"message {i}: role {m['role']!r} is not one of {'/'.join(ROLES)}")
        if not isinstance(m["content"], str):
            raise _RowError(f"message {i}: content must be a string, got {type(m['content']).__name__}")
        out.append({"role": m["role"], "content": m["content"]})
    return _check_conversation(out)


def _norm_sharegpt(row: dict) -> list[dict]:
    out = []
    for i, m in enumerate(_message_list(row, "conversations", "sharegpt")):
        if not isinstance(m, dict) or "from" not in m or "value" not in m:
            raise _RowError(f"message {i}: expected an object with 'from' and 'value'")
        if m["from"] not in SHAREGPT_ROLES:
            raise _RowError(f"message {i}: role {m['from']!r} is not one of {'/'.join(SHAREGPT_ROLES)}")
        if not isinstance(m["value"], str):
            raise _RowError(f"message {i}: value must be a string, got {type(m['value']).__name__}")
        out.append({"role": SHAREGPT_ROLES[m["from"]], "content": m["value"]})
    return _check_conversation(out)


def _norm_alpaca(row: dict) -> list[dict]:
    instruction = _str_field(row, "instruction", "alpaca")
    output = _str_field(row, "output", "alpaca")
    extra = _str_field(row, "input", "alpaca", required=False)
    system = _str_field(row, "system", "alpaca", required=False)
    out = [{"role": "system", "content": system}] if system else []
    history = row.get("history") or []
    if not isinstance(history, list):
        raise _RowError(f"'history' must be a list of [user, assistant] pairs, got {type(history).__name__}")
    for i, pair in enumerate(history):
        if not (isinstance(pair, (list, tuple)) and len(pair) == 2 and all(isinstance(s, str) for s in pair)):
            raise _RowError(f"history[{i}]: expected a [user, assistant] pair of strings")
        out += [{"role": "user", "content": pair[0]}, {"role": "assistant", "content": pair[1]}]
    prompt = f"{instruction}\n\n{extra}" if extra else instruction
    out += [{"role": "user", "content": prompt}, {"role": "assistant", "content": output}]
    return out


def _norm_text(row: dict) -> dict:
    return {"text": _str_field(row, "text", "text")}


def _norm_classification(row: dict) -> dict:
    text = _str_field(row, "text", "classification")
    if "label" not in row:
        raise _RowError("missing key 'label' (classification format)")
    label = row["label"]
    if isinstance(label, bool) or not isinstance(label, (str, int)):
        raise _RowError(f"'label' must be a string or an integer, got {type(label).__name__}")
    return {"text": text, "label": label}


FORMATS: dict[str, tuple[Kind, Callable[[dict], Any]]] = {
    "alpaca": ("chat", _norm_alpaca),
    "sharegpt": ("chat", _norm_sharegpt),
    "messages": ("chat", _norm_messages),
    "text": ("text", _norm_text),
    "classification": ("classification", _norm_classification),
}


def detect_format(row: dict) -> str | None:
    """The format a row's keys indicate, or None: messages > conversations > instruction > text+label > text."""
    if not isinstance(row, dict):
        return None
    if "messages" in row:
        return "messages"
    if "conversations" in row:
        return "sharegpt"
    if "instruction" in row:
        return "alpaca"
    if "text" in row:
        return "classification" if "label" in row else "text"
    return None


def normalize_records(records: list[Record], fmt: str | None = None, source: str = "<records>") -> Dataset:
    """Validate and normalise every record; ``fmt=None`` detects it from the first row."""
    if fmt is None:
        first = records[0]
        fmt = detect_format(first.row)
        if fmt is None:
            keys = sorted(first.row) if isinstance(first.row, dict) else type(first.row).__name__
            raise DataError(f"{first.where}: cannot detect the format from keys {keys}; "
                            f"expected one of {', '.join(FORMATS)} (pass format=...)")
    if fmt not in FORMATS:
        raise DataError(f"{source}: unknown format {fmt!r}; expected one of {', '.join(FORMATS)}")
    return Dataset(source=source, format=fmt, kind=FORMATS[fmt][0], rows=[normalize_record(r, fmt) for r in records])


def normalize_record(record: Record, fmt: str) -> Any:
    """One record validated and normalised as ``fmt`` (a key of FORMATS); DataError names its location.
    The check every loader runs on every row (`lorakit data check` reports all of them, not the first)."""
    if not isinstance(record.row, dict):
        raise DataError(f"{record.where}: expected an object, got {type(record.row).__name__}")
    try:
        return FORMATS[fmt][1](record.row)
    except _RowError as e:
        raise DataError(f"{record.where}: {e}") from None


def empty_targets(dataset: Dataset) -> int:
    """Rows that train on nothing: blank `text`, or chat rows whose assistant replies are all blank."""
    if dataset.kind == "text":
        return sum(not r["text"].strip() for r in dataset.rows)
    if dataset.kind == "chat":
        return sum(all(not m["content"].strip() for m in r if m["role"] == "assistant") for r in dataset.rows)
    return 0


def load_dataset(path: str | Path, format: str | None = None) -> Dataset:
    """Read, validate and normalise a data file (.json/.jsonl/.csv/.parquet).

    ``format`` is one of ``FORMATS`` or None to detect it from the first row's keys. Raises
    DataError (one line, ``file:location: problem``) at the first bad row.
    """
    return normalize_records(read_records(path), format, source=str(path))
