"""Task prefixes: what a multi-task run put in front of each source's prompts, applied again at use time.

A run whose `data.train` sources carry a `prefix` records every source's prefix by task name beside
its adapter (`task_prefixes.json`, see `lorakit.io.write_task_prefixes`). The task name is the
source's `name`, else its bundled name (`bundled:contacts_train` → `contacts_train`) or its file's
stem. Eval, generate, chat and the server then apply the prefix of the task they are asked for, in
the place training put it: the first user message (text and classification rows: the text).

    lorakit eval --adapter DIR --data contacts=bundled:contacts_eval   # scored with contacts' prefix
    eval: {suites: ["contacts=bundled:contacts_eval", bundled:quickstart_eval]}
    lorakit generate --adapter DIR --task contacts "Call Ana at 555-201-3344."
"""
from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path
from typing import Mapping, Optional

from ..errors import InputError
from .formats import Dataset

TASK_NAME = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.-]{0,63}")
"""A task name: letters, digits, `_ . -` (no `/`, `:` or `=`, so `TASK=FILE` splits unambiguously)."""


def source_task_name(file: str) -> str:
    """The default task name of a training source: `bundled:NAME` → NAME, a file → its stem."""
    name = file.split(":", 1)[1] if file.startswith("bundled:") else Path(file).stem
    name = re.sub(r"[^A-Za-z0-9_.-]+", "_", name).lstrip(".-")[:64]
    return name or "data"


def prefix_messages(messages: list[dict], prefix: str) -> list[dict]:
    """`prefix` put in front of the first user message's content (a new list; the input is unchanged)."""
    if not prefix:
        return list(messages)
    first = next((i for i, m in enumerate(messages) if m["role"] == "user"), None)
    return [dict(m, content=prefix + m["content"]) if i == first else m for i, m in enumerate(messages)]


def with_prefix(ds: Dataset, prefix: str) -> Dataset:
    """`prefix` put verbatim in front of every row's first user message (text / classification rows: the text)."""
    if not prefix:
        return ds
    if ds.kind == "chat":
        rows = [prefix_messages(row, prefix) for row in ds.rows]
    else:
        rows = [dict(r, text=prefix + r["text"]) for r in ds.rows]
    return Dataset(ds.source, ds.format, ds.kind, rows)


@dataclass(frozen=True)
class Suite:
    """An eval source: a data file or `bundled:NAME`, scored with the prefix of `task` (None: no prefix)."""

    source: str
    task: Optional[str] = None

    @property
    def name(self) -> str:
        """How the suite is named in tables and metrics.jsonl: `bundled:NAME` → NAME, `TASK=` kept."""
        plain = self.source.split(":", 1)[1] if self.source.startswith("bundled:") else self.source
        return f"{self.task}={plain}" if self.task else plain


def parse_suite(text: str, key: str = "--data") -> Suite:
    """`FILE`, `bundled:NAME`, or `TASK=FILE` / `TASK=bundled:NAME` (TASK: a name in `TASK_NAME`).

    A string that is an existing file is always a plain file, even with `=` in its name."""
    task, sep, source = text.partition("=")
    if not sep or not TASK_NAME.fullmatch(task) or Path(text).expanduser().is_file():
        return Suite(text)
    if not source:
        raise InputError(f"{key} {text}: no data file after {task + '='!r} (TASK=FILE scores FILE with the "
                         "prefix the adapter was trained with for TASK)")
    return Suite(source, task)


def prefix_for(prefixes: Mapping[str, str], task: Optional[str], key: str, adapter: object = None) -> str:
    """The recorded prefix of `task` ("" when no task is asked for); an InputError naming `key` otherwise."""
    if task is None:
        return ""
    if task in prefixes:
        return prefixes[task]
    where = f"{adapter}" if adapter is not None else "the model"
    if not prefixes:
        raise InputError(f"{key}: task {task!r}: {where} records no task prefixes (only an adapter trained with "
                         "data.train prefixes has task_prefixes.json)")
    raise InputError(f"{key}: task {task!r} is not one {where} was trained with; its tasks: "
                     f"{', '.join(sorted(prefixes))}")
