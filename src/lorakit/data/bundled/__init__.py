"""Datasets shipped with lorakit, written by ``generate.py`` in this folder.

``quickstart_train`` / ``quickstart_eval``: calendar note -> ``activity|person|day|time`` (messages format).
``classify_train`` / ``classify_eval``: support tickets labelled billing/technical/account/shipping.
``contacts_train`` / ``contacts_eval``: a sentence with a name and a phone number -> ``Last, First: ddd-ddd-dddd``.
``orders_train`` / ``orders_eval``: a shopping request -> ``item-color-size xQTY``.
"""
from __future__ import annotations

from pathlib import Path

_HERE = Path(__file__).parent
NAMES = ("quickstart_train", "quickstart_eval", "classify_train", "classify_eval",
         "contacts_train", "contacts_eval", "orders_train", "orders_eval")


def holds(file: str | Path) -> bool:
    """Whether `file` is one of the shipped files (outputs derived from it belong elsewhere, not in the package)."""
    return Path(file).expanduser().resolve().parent == _HERE.resolve()


def path(name: str) -> Path:
    """Path of the bundled JSONL file ``name`` (with or without ``.jsonl``); KeyError if unknown."""
    stem = name[:-6] if name.endswith(".jsonl") else name
    if stem not in NAMES:
        raise KeyError(f"unknown bundled dataset {name!r}; choose one of {', '.join(NAMES)}")
    return _HERE / f"{stem}.jsonl"
