"""`lorakit data convert` and `lorakit data split`: chat rows rewritten in another format; a seeded train/eval split.

Conversion goes through the normalised conversation (`formats`), so a converted file trains exactly
like its source: every row of the output normalises to the same messages as the input row.
Alpaca holds one conversation as ``system`` + ``history`` pairs + ``instruction``/``output``; an
alpaca ``input`` is already joined into the user turn (``instruction\\n\\ninput``), so it comes back
as part of ``instruction``. Keys the formats do not define are not carried over.
"""
from __future__ import annotations

import enum
import random
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Optional

from . import bundled
from .formats import normalize_records
from .io import DataError, check_output_file, read_records, write_records


class ChatFormat(str, enum.Enum):
    ALPACA = "alpaca"
    SHAREGPT = "sharegpt"
    MESSAGES = "messages"


_SHAREGPT_FROM = {"system": "system", "user": "human", "assistant": "gpt"}


class _NotRepresentable(Exception):
    pass


def _to_messages(conversation: list[dict]) -> dict:
    return {"messages": [{"role": m["role"], "content": m["content"]} for m in conversation]}


def _to_sharegpt(conversation: list[dict]) -> dict:
    return {"conversations": [{"from": _SHAREGPT_FROM[m["role"]], "value": m["content"]} for m in conversation]}


def _to_alpaca(conversation: list[dict]) -> dict:
    system = conversation[0]["content"] if conversation[0]["role"] == "system" else None
    turns = conversation[1:] if system is not None else conversation
    roles = [m["role"] for m in turns]
    if len(turns) % 2 or roles != ["user", "assistant"] * (len(turns) // 2):
        raise _NotRepresentable("alpaca needs alternating user/assistant turns ending with the assistant; "
                                f"this conversation has {'/'.join(roles)}")
    row = {"system": system} if system else {}
    pairs = [[turns[i]["content"], turns[i + 1]["content"]] for i in range(0, len(turns) - 2, 2)]
    if pairs:
        row["history"] = pairs
    return {**row, "instruction": turns[-2]["content"], "output": turns[-1]["content"]}


WRITERS: dict[ChatFormat, Callable[[list[dict]], dict]] = {
    ChatFormat.ALPACA: _to_alpaca, ChatFormat.SHAREGPT: _to_sharegpt, ChatFormat.MESSAGES: _to_messages,
}


def conversation_to(conversation: list[dict], to: ChatFormat) -> dict:
    """One normalised conversation as a row of format ``to``; ValueError when ``to`` cannot hold it."""
    try:
        return WRITERS[to](conversation)
    except _NotRepresentable as e:
        raise ValueError(str(e)) from None


@dataclass
class ConvertResult:
    rows: int
    source_format: str
    to: ChatFormat


def convert_file(source: str | Path, output: str | Path, to: ChatFormat, format: Optional[str] = None,
                 overwrite: bool = False) -> ConvertResult:
    """Rewrite every row of a chat data file (any input format) as ``to``; ``output`` is .jsonl or .json."""
    to = ChatFormat(to)
    output = check_output_file(output, (source,), overwrite)
    records = read_records(source)
    dataset = normalize_records(records, format, source=str(source))
    if dataset.kind != "chat":
        raise DataError(f"{source}: {dataset.format} rows are not conversations; they cannot be written as {to.value}")
    rows = []
    for rec, conversation in zip(records, dataset.rows):
        try:
            rows.append(WRITERS[to](conversation))
        except _NotRepresentable as e:
            raise DataError(f"{rec.where}: {e}") from None
    write_records(output, rows)
    return ConvertResult(len(rows), dataset.format, to)


@dataclass
class SplitResult:
    train: int
    eval: int
    train_path: Path
    eval_path: Path
    stratified: bool


def split_indices(n: int, eval_fraction: float, seed: int, groups: Optional[list] = None) -> list[int]:
    """Sorted indices of the eval rows: ``round(n * eval_fraction)`` drawn with ``random.Random(seed)``, at least one
    and never all. With ``groups`` (labels), each group is split on its own and keeps at least one training row."""
    if not 0.0 < eval_fraction < 1.0:
        raise ValueError(f"eval fraction must be in (0, 1), got {eval_fraction}")
    rng = random.Random(seed)
    if groups is None:
        k = min(max(1, round(n * eval_fraction)), n - 1)
        return sorted(rng.sample(range(n), k))
    members: dict = defaultdict(list)
    for i, g in enumerate(groups):
        members[g].append(i)
    chosen = []
    for g in sorted(members, key=str):
        rows = members[g]
        chosen += rng.sample(rows, min(round(len(rows) * eval_fraction), len(rows) - 1))
    return sorted(chosen)


def split_file(source: str | Path, eval_fraction: float = 0.1, seed: int = 0, out_dir: Optional[str | Path] = None,
               train_out: Optional[str | Path] = None, eval_out: Optional[str | Path] = None,
               format: Optional[str] = None, overwrite: bool = False) -> SplitResult:
    """Split a data file into train and eval files, deterministic for a seed (`split_indices`; classification rows
    are split per label). Rows keep their file order and their original keys. Default outputs:
    ``OUT_DIR/STEM_train.jsonl`` and ``OUT_DIR/STEM_eval.jsonl``, OUT_DIR defaulting to the source's folder
    (the current directory for a bundled dataset: never into the installed package)."""
    source = Path(source)
    if out_dir is not None:
        folder = Path(out_dir).expanduser()
    else:
        folder = Path(".") if bundled.holds(source) else source.parent
    train_out = Path(train_out) if train_out is not None else folder / f"{source.stem}_train.jsonl"
    eval_out = Path(eval_out) if eval_out is not None else folder / f"{source.stem}_eval.jsonl"
    if train_out.expanduser().resolve() == eval_out.expanduser().resolve():
        raise DataError(f"split: the train and eval outputs are the same file {train_out}")
    check_output_file(train_out, (source,), overwrite, what="train output")
    check_output_file(eval_out, (source,), overwrite, what="eval output")
    records = read_records(source)
    dataset = normalize_records(records, format, source=str(source))
    if len(records) < 2:
        raise DataError(f"{source}: {len(records)} row; a split needs at least two")
    labels = [str(r["label"]) for r in dataset.rows] if dataset.kind == "classification" else None
    chosen = set(split_indices(len(records), eval_fraction, seed, labels))
    if not chosen:
        raise DataError(f"{source}: no label has enough rows for an eval share of {eval_fraction:g}")
    write_records(train_out, [r.row for i, r in enumerate(records) if i not in chosen])
    write_records(eval_out, [r.row for i, r in enumerate(records) if i in chosen])
    return SplitResult(len(records) - len(chosen), len(chosen), train_out, eval_out, labels is not None)
