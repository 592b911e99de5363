"""Exact and near-duplicate rows: normalised text, MinHash signatures, LSH buckets, exact Jaccard.

    row text     the non-system messages of a chat row, joined by newlines (a system prompt shared by
                 every row would make all rows look alike); ``text`` of a text or classification row
    normalised   NFKC, case-folded, every run of whitespace one space, stripped
    exact        same normalised text as an earlier kept row
    near         Jaccard similarity of the character 5-gram sets ("shingles") of the normalised texts
                 >= ``threshold`` against an earlier kept row

Candidates for near pairs come from MinHash locality-sensitive hashing: ``NUM_PERM`` seeded hash
permutations ``(a*x + b) mod (2^31 - 1)`` over crc32 shingle hashes, split into bands; rows sharing
a band's values are candidates. Every candidate is then confirmed with the exact Jaccard of the
shingle sets, so a reported pair is always at or above the threshold; LSH can only miss pairs just
above it (at Jaccard = threshold the chance of a miss is under 1%, see `bands_for`).

Rows are visited in file order and a row is a duplicate of the first kept row it matches: what
`lorakit data check` reports is exactly what `lorakit data dedupe` removes.
"""
from __future__ import annotations

import enum
import re
import unicodedata
import zlib
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional

import numpy as np

from .formats import Dataset, normalize_records
from .io import check_output_file, read_records, write_records

NUM_PERM = 128
SHINGLE = 5
SEED = 0
_PRIME = (1 << 31) - 1
_SPACE = re.compile(r"\s+")


class DupKind(str, enum.Enum):
    EXACT = "exact"
    NEAR = "near"


@dataclass(frozen=True)
class Duplicate:
    """Row ``index`` repeats row ``of`` (both 0-based positions in the dataset); ``similarity`` is the Jaccard (1.0 exact)."""

    index: int
    of: int
    kind: DupKind
    similarity: float


def normalize_text(text: str) -> str:
    return _SPACE.sub(" ", unicodedata.normalize("NFKC", text).casefold()).strip()


def row_text(row: Any) -> str:
    """The text a row is compared by (module docstring)."""
    if isinstance(row, list):
        return "\n".join(m["content"] for m in row if m["role"] != "system")
    return row["text"]


def shingles(text: str, size: int = SHINGLE) -> set[str]:
    """Character ``size``-grams of a normalised text (the whole text when shorter)."""
    if len(text) <= size:
        return {text}
    return {text[i:i + size] for i in range(len(text) - size + 1)}


def jaccard(a: set, b: set) -> float:
    return len(a & b) / len(a | b) if a or b else 1.0


class MinHasher:
    """MinHash signatures of shingle sets: ``NUM_PERM`` seeded universal hash permutations."""

    def __init__(self, num_perm: int = NUM_PERM, seed: int = SEED):
        rng = np.random.default_rng(seed)
        self.a = rng.integers(1, _PRIME, size=num_perm, dtype=np.uint64)
        self.b = rng.integers(0, _PRIME, size=num_perm, dtype=np.uint64)

    def signature(self, shingle_set: set[str]) -> np.ndarray:
        """(num_perm,) uint64: the minimum of each permutation over the set's hashes."""
        x = np.fromiter((zlib.crc32(s.encode("utf-8")) for s in shingle_set), dtype=np.uint64, count=len(shingle_set))
        return ((self.a[:, None] * x[None, :] + self.b[:, None]) % _PRIME).min(axis=1)


def bands_for(threshold: float, num_perm: int = NUM_PERM) -> tuple[int, int]:
    """(bands, rows per band) for LSH: the split whose S-curve midpoint (1/bands)^(1/rows) is the highest one
    still at least 0.1 below ``threshold`` (candidates are confirmed exactly, so erring low only costs time)."""
    splits = [(num_perm // r, r) for r in (1, 2, 4, 8, 16, 32) if num_perm % r == 0]
    ok = [(b, r) for b, r in splits if (1 / b) ** (1 / r) <= threshold - 0.1]
    return max(ok, key=lambda br: (1 / br[0]) ** (1 / br[1])) if ok else splits[0]


class DuplicateIndex:
    """Rows added so far, searchable for an exact or near (Jaccard >= ``near``) match of a new text."""

    def __init__(self, near: Optional[float] = None, seed: int = SEED):
        if near is not None and not 0.0 < near <= 1.0:
            raise ValueError(f"near-duplicate threshold must be in (0, 1], got {near}")
        self.near = near
        self.hasher = MinHasher(seed=seed) if near is not None else None
        self.bands, self.rows = bands_for(near) if near is not None else (0, 0)
        self.exact: dict[str, int] = {}
        self.sets: dict[int, set[str]] = {}
        self.buckets: dict[tuple[int, bytes], list[int]] = defaultdict(list)

    def _keys(self, grams: set[str]) -> list[tuple[int, bytes]]:
        sig = self.hasher.signature(grams)
        return [(band, sig[band * self.rows:(band + 1) * self.rows].tobytes()) for band in range(self.bands)]

    def match(self, text: str) -> Optional[tuple[int, DupKind, float]]:
        """(id of the first added row it repeats, kind, Jaccard) or None."""
        norm = normalize_text(text)
        if norm in self.exact:
            return self.exact[norm], DupKind.EXACT, 1.0
        if self.hasher is None:
            return None
        grams = shingles(norm)
        candidates = sorted({j for key in self._keys(grams) for j in self.buckets.get(key, ())})
        return next(((j, DupKind.NEAR, s) for j in candidates if (s := jaccard(grams, self.sets[j])) >= self.near), None)

    def add(self, row_id: int, text: str) -> None:
        norm = normalize_text(text)
        self.exact.setdefault(norm, row_id)
        if self.hasher is not None and row_id not in self.sets:
            grams = self.sets[row_id] = shingles(norm)
            for key in self._keys(grams):
                self.buckets[key].append(row_id)


def find_duplicates(texts: list[str], near: Optional[float] = None, seed: int = SEED) -> list[Duplicate]:
    """Duplicates among ``texts`` (raw row texts), in order; ``near`` = Jaccard threshold in (0, 1], None = exact only."""
    index, found = DuplicateIndex(near, seed), []
    for i, text in enumerate(texts):
        hit = index.match(text)
        if hit is None:
            index.add(i, text)
        else:
            found.append(Duplicate(i, *hit))
    return found


def cross_duplicates(texts: list[str], reference: list[str], near: Optional[float] = None,
                     seed: int = SEED) -> list[Duplicate]:
    """Rows of ``texts`` that repeat a row of ``reference`` (``of`` indexes ``reference``): an eval set's leaks."""
    index = DuplicateIndex(near, seed)
    for j, text in enumerate(reference):
        index.add(j, text)
    return [Duplicate(i, *hit) for i, text in enumerate(texts) if (hit := index.match(text)) is not None]


def dataset_duplicates(dataset: Dataset, near: Optional[float] = None) -> list[Duplicate]:
    return find_duplicates([row_text(r) for r in dataset.rows], near)


@dataclass
class DedupeResult:
    rows: int
    kept: int
    exact: int
    near: int

    def summary(self) -> str:
        return (f"{self.kept}/{self.rows} rows kept; removed {self.exact} exact and {self.near} near duplicates")


def dedupe_file(source: str | Path, output: str | Path, near: Optional[float] = None, format: Optional[str] = None,
                overwrite: bool = False) -> DedupeResult:
    """Write the rows of ``source`` that are not duplicates of an earlier row to ``output`` (.jsonl/.json), each row
    as it was in the file. The whole file is validated first (a bad row: DataError naming its line)."""
    output = check_output_file(output, (source,), overwrite)
    records = read_records(source)
    dataset = normalize_records(records, format, source=str(source))
    dups = dataset_duplicates(dataset, near)
    drop = {d.index for d in dups}
    write_records(output, [r.row for i, r in enumerate(records) if i not in drop])
    return DedupeResult(rows=len(records), kept=len(records) - len(drop),
                        exact=sum(d.kind is DupKind.EXACT for d in dups), near=sum(d.kind is DupKind.NEAR for d in dups))
