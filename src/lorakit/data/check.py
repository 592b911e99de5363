"""`lorakit data check`: everything wrong or worth knowing about a data file, before a run.

    report = check_file("train.jsonl", max_length=512)          # SmolLM2's tokenizer (MiniLM's for labels)
    print(report.table()); report.errors; report.to_json()

Errors (exit 1 from the CLI): rows the trainer refuses (the same `file:line: ...` messages: the
check is `formats.normalize_record`, run on every row instead of stopping at the first), lines
that are not JSON, empty or whitespace-only targets (assistant replies, `text`), labels mixing
strings and integers. Warnings: exact and near duplicates (`dedupe`), rows repeating a row of
another file (`against`: an eval set's leaks from its training set), the same prompt with a
different answer or label, rows longer than `max_length` (the trainer truncates them) and rows
left with no target token after that truncation (it drops them), a single label, label
imbalance (largest class over `IMBALANCE` times the smallest).

Lengths are counted in the model's tokens exactly as the trainer encodes rows (chat template and
end-of-turn tokens included; `text` rows with their eos). `tokenizer=False` counts
whitespace-separated words instead, without loading anything, and says so.
"""
from __future__ import annotations

import enum
import json
import statistics
from collections import Counter, defaultdict
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any, Optional, Sequence

from .dedupe import DupKind, cross_duplicates, dataset_duplicates, normalize_text, row_text
from .formats import FORMATS, Dataset, detect_format, normalize_record, normalize_records
from .io import DataError, Record, read_records

IMBALANCE = 5.0
DEFAULT_NEAR = 0.85
SHOWN = 5  # findings of one kind listed in the table (all of them in JSON)


class Severity(str, enum.Enum):
    ERROR = "error"
    WARNING = "warning"


@dataclass(frozen=True)
class Finding:
    severity: Severity
    code: str
    where: str
    message: str


@dataclass
class LengthStats:
    unit: str  # "tokens" or "words"
    rows: int
    min: int
    median: float
    mean: float
    p95: int
    max: int
    total: int
    over_max_length: int
    max_length: int

    @classmethod
    def of(cls, lengths: list[int], unit: str, max_length: int) -> Optional["LengthStats"]:
        if not lengths:
            return None
        ordered = sorted(lengths)
        return cls(unit, len(ordered), ordered[0], statistics.median(ordered), round(statistics.fmean(ordered), 1),
                   ordered[min(len(ordered) - 1, int(0.95 * len(ordered)))], ordered[-1], sum(ordered),
                   sum(n > max_length for n in ordered), max_length)


@dataclass
class CheckReport:
    source: str
    format: Optional[str]
    kind: Optional[str]
    rows: int
    valid_rows: int
    tokenizer: Optional[str]  # the model whose tokenizer counted lengths; None = whitespace words
    near_threshold: Optional[float]
    findings: list[Finding] = field(default_factory=list)
    lengths: list[int] = field(default_factory=list, repr=False)  # per valid row
    length_stats: Optional[LengthStats] = None
    labels: Optional[dict[str, int]] = None
    plot: Optional[str] = None

    @property
    def errors(self) -> list[Finding]:
        return [f for f in self.findings if f.severity is Severity.ERROR]

    @property
    def warnings(self) -> list[Finding]:
        return [f for f in self.findings if f.severity is Severity.WARNING]

    def to_json(self) -> dict:
        out = asdict(self)
        out.pop("lengths")
        out["findings"] = [{**asdict(f), "severity": f.severity.value} for f in self.findings]
        out["errors"], out["warnings"] = len(self.errors), len(self.warnings)
        return out

    def table(self) -> str:
        return "\n".join(_table_lines(self))


def check_file(path: str | Path, format: Optional[str] = None, max_length: int = 512, model: Optional[str] = None,
               tokenizer: bool = True, near: Optional[float] = DEFAULT_NEAR, plot: Optional[str | Path] = None,
               source: Optional[str] = None, against: Sequence[tuple[str | Path, str]] = ()) -> CheckReport:
    """Check every row of a data file (module docstring). ``format`` None detects it; ``model`` names the
    tokenizer (default: SmolLM2's, all-MiniLM's for classification rows); ``tokenizer=False`` counts words;
    ``near`` is the near-duplicate Jaccard threshold (None: exact duplicates only); ``plot`` writes a length
    histogram PNG; ``against`` holds (path, name) of other files (a training set, when checking its eval set) whose
    rows this file must not repeat. An unreadable file (missing, not text, a .json/.csv that does not parse) raises
    DataError."""
    if format is not None and format not in FORMATS:
        raise DataError(f"{path}: unknown format {format!r}; expected one of {', '.join(FORMATS)}")
    source = source or str(path)
    plot = _plot_path(plot) if plot is not None else None
    bad_lines: list[DataError] = []
    records = read_records(path, bad_lines)
    report = CheckReport(source, None, None, len(records) + len(bad_lines), 0, None, near)
    report.findings += [Finding(Severity.ERROR, "invalid-json", *_split(e)) for e in bad_lines]
    if not records:  # every line is broken: nothing to detect a format from
        return report
    if format is None:
        format = next((f for f in (detect_format(r.row) for r in records) if f is not None), None)
        if format is None:  # no row anywhere says what the file is
            first = records[0]
            keys = sorted(first.row) if isinstance(first.row, dict) else type(first.row).__name__
            raise DataError(f"{first.where}: cannot detect the format from keys {keys}; "
                            f"expected one of {', '.join(FORMATS)} (pass --format)")
    report.format, report.kind = format, FORMATS[format][0]
    rows, kept = [], []
    for rec in records:
        try:
            rows.append(normalize_record(rec, format))
            kept.append(rec)
        except DataError as e:
            report.findings.append(Finding(Severity.ERROR, "invalid-row", *_split(e)))
    report.valid_rows = len(rows)
    dataset = Dataset(str(Path(path)), format, report.kind, rows)  # as records name their file
    report.findings += _empty_targets(dataset, kept)
    report.findings += _duplicates(dataset, kept, near)
    report.findings += _conflicts(dataset, kept)
    for other, name in against:
        report.findings += _leaks(dataset, kept, other, name, near)
    if dataset.kind == "classification":
        report.labels, findings = _labels(dataset, source)
        report.findings += findings
    if rows:
        if tokenizer:
            report.tokenizer, tok = _load_tokenizer(model, dataset.kind)
            report.lengths, findings = _token_lengths(tok, dataset, kept, max_length)
            report.findings += findings
        else:
            report.lengths = [_words(dataset.kind, r) for r in rows]
            report.findings += [Finding(Severity.WARNING, "over-max-length", rec.where,
                                        f"{n} words > max_length {max_length} (words, not tokens: --no-tokenizer)")
                                for rec, n in zip(kept, report.lengths) if n > max_length]
        report.length_stats = LengthStats.of(report.lengths, "tokens" if tokenizer else "words", max_length)
    if plot is not None and report.lengths:
        report.plot = str(write_histogram(report, plot))
    order = {Severity.ERROR: 0, Severity.WARNING: 1}
    report.findings.sort(key=lambda f: order[f.severity])  # stable: file order within each severity
    if source != dataset.source:  # bundled:NAME: locations read bundled:NAME:LINE, not the install path
        report.findings = [replace(f, where=f.where.replace(dataset.source, source, 1)) for f in report.findings]
    return report


def _plot_path(plot: str | Path) -> Path:
    """The histogram's path, checked before any work: a .png file name whose nearest existing parent is a folder."""
    plot = Path(plot).expanduser()
    if plot.suffix.lower() != ".png":
        raise DataError(f"--plot {plot}: expected a .png file name")
    if plot.is_dir():
        raise DataError(f"--plot {plot}: is a directory")
    parent = next(p for p in plot.parents if p.exists())
    if not parent.is_dir():
        raise DataError(f"--plot {plot}: {parent} is a file, not a directory")
    return plot


def _words(kind: str, row: Any) -> int:
    return sum(len(m["content"].split()) for m in row) if kind == "chat" else len(row["text"].split())


def _split(error: DataError) -> tuple[str, str]:
    """'file:line: message' -> ('file:line', 'message')."""
    where, _, message = str(error).partition(": ")
    return where, message


def _ref(where: str, source: str) -> str:
    """Another row of the same file, named briefly: 'line 12' (JSONL, CSV) or 'row [3]' (JSON, parquet)."""
    if where.startswith(source + ":"):
        return f"line {where[len(source) + 1:]}"
    return f"row {where[len(source):]}" if where.startswith(source) else where


def _empty_targets(dataset: Dataset, kept: list[Record]) -> list[Finding]:
    out = []
    for rec, row in zip(kept, dataset.rows):
        if dataset.kind == "chat":
            replies = [m for m in row if m["role"] == "assistant"]
            blank = [i for i, m in enumerate(replies) if not m["content"].strip()]
            if blank:
                which = "the assistant reply is" if len(replies) == 1 else f"assistant replies {blank} are"
                out.append(Finding(Severity.ERROR, "empty-target", rec.where, f"{which} empty or whitespace"))
        elif not row["text"].strip():
            out.append(Finding(Severity.ERROR, "empty-target", rec.where, "'text' is empty or whitespace"))
    return out


def _duplicates(dataset: Dataset, kept: list[Record], near: Optional[float]) -> list[Finding]:
    out = []
    for d in dataset_duplicates(dataset, near):
        if d.kind is DupKind.EXACT:
            out.append(Finding(Severity.WARNING, "exact-duplicate", kept[d.index].where,
                               f"duplicate of {_ref(kept[d.of].where, dataset.source)}"))
        else:
            out.append(Finding(Severity.WARNING, "near-duplicate", kept[d.index].where,
                               f"near-duplicate of {_ref(kept[d.of].where, dataset.source)} "
                               f"(Jaccard {d.similarity:.2f})"))
    return out


def _leaks(dataset: Dataset, kept: list[Record], other: str | Path, name: str, near: Optional[float]) -> list[Finding]:
    """Rows that repeat (exactly or nearly) a row of another file: an eval set that leaks its training set."""
    records = read_records(other)
    reference = normalize_records(records, None, source=str(other))
    label = (lambda where: where.replace(str(Path(other)), name, 1)) if name != str(Path(other)) else (lambda w: w)
    out = []
    for d in cross_duplicates([row_text(r) for r in dataset.rows], [row_text(r) for r in reference.rows], near):
        what = "duplicate" if d.kind is DupKind.EXACT else f"near-duplicate (Jaccard {d.similarity:.2f})"
        out.append(Finding(Severity.WARNING, "in-other-file", kept[d.index].where,
                           f"{what} of {label(records[d.of].where)}"))
    return out


def _prompt_and_answer(kind: str, row: Any) -> tuple[str, str]:
    if kind == "chat":
        last = max(i for i, m in enumerate(row) if m["role"] == "assistant")
        return normalize_text("\n".join(f"{m['role']}: {m['content']}" for m in row[:last])), row[last]["content"].strip()
    return normalize_text(row["text"]), str(row.get("label", ""))


def _conflicts(dataset: Dataset, kept: list[Record]) -> list[Finding]:
    """Rows whose prompt (chat: all but the last reply; classification: text) repeats with another answer."""
    if dataset.kind == "text":
        return []
    first: dict[str, tuple[int, str]] = {}
    out = []
    what = "label" if dataset.kind == "classification" else "answer"
    for i, row in enumerate(dataset.rows):
        prompt, answer = _prompt_and_answer(dataset.kind, row)
        if prompt not in first:
            first[prompt] = (i, answer)
        elif first[prompt][1] != answer:
            j, other = first[prompt]
            out.append(Finding(Severity.WARNING, "conflicting-answers", kept[i].where,
                               f"same prompt as {_ref(kept[j].where, dataset.source)} with another {what}: "
                               f"{answer!r} vs {other!r}"))
    return out


def _labels(dataset: Dataset, source: str) -> tuple[dict[str, int], list[Finding]]:
    counts = Counter(r["label"] for r in dataset.rows)
    out = []
    if len({type(x) for x in counts}) > 1:
        out.append(Finding(Severity.ERROR, "label-types", source, "labels mix strings and integers; use one type"))
    if len(counts) == 1:
        out.append(Finding(Severity.WARNING, "single-label", source,
                           f"only one label ({next(iter(counts))!r}); training a classifier needs at least two"))
    elif counts:
        (top, n_top), (low, n_low) = counts.most_common()[0], counts.most_common()[-1]
        if n_top > IMBALANCE * n_low:
            out.append(Finding(Severity.WARNING, "label-imbalance", source,
                               f"label {top!r} has {n_top} rows, {low!r} only {n_low} (over {IMBALANCE:g}x)"))
    ordered = sorted(counts.items(), key=lambda kv: (-kv[1], str(kv[0])))
    return {str(k): v for k, v in ordered}, out


def _load_tokenizer(model: Optional[str], kind: str):
    from ..models import DEFAULT_CAUSAL_LM, DEFAULT_ENCODER, load_tokenizer

    name = model or (DEFAULT_ENCODER if kind == "classification" else DEFAULT_CAUSAL_LM)
    return name, load_tokenizer(name)


def _token_lengths(tok, dataset: Dataset, kept: list[Record], max_length: int) -> tuple[list[int], list[Finding]]:
    """Each row's token count as the trainer encodes it, and the rows it would truncate or drop."""
    from .tokenize import IGNORE, _conversation_ids, _text_ids

    lengths, out = [], []
    for rec, row in zip(kept, dataset.rows):
        labels = None
        if dataset.kind == "chat":
            ids, labels = _conversation_ids(tok, row)
        elif dataset.kind == "text":
            ids = labels = _text_ids(tok, row["text"])
        else:
            ids = list(tok(row["text"], add_special_tokens=True)["input_ids"])
        lengths.append(len(ids))
        if len(ids) <= max_length:
            continue
        out.append(Finding(Severity.WARNING, "over-max-length", rec.where,
                           f"{len(ids)} tokens > max_length {max_length} (the trainer truncates it)"))
        has_target = labels is None or any(lab != IGNORE for lab in labels[1:max_length])
        if not has_target and any(m["content"].strip() for m in row if m["role"] == "assistant"):
            out.append(Finding(Severity.WARNING, "no-target-after-truncation", rec.where,
                               f"no target token left in the first {max_length} tokens (the trainer drops it)"))
    return lengths, out


def write_histogram(report: CheckReport, target: str | Path) -> Path:
    """A PNG histogram of the row lengths with the max_length line, written atomically."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from ..files import atomic_write

    target = Path(target).expanduser()
    stats = report.length_stats
    fig, ax = plt.subplots(figsize=(7, 4))
    ax.hist(report.lengths, bins=min(40, max(5, len(set(report.lengths)))), color="#4c72b0")
    if stats.max_length <= stats.max * 1.5:
        ax.axvline(stats.max_length, color="#c44e52", linestyle="--", label=f"max_length {stats.max_length}")
        ax.legend()
    unit = f"{report.tokenizer} tokens" if report.tokenizer else "whitespace words"
    ax.set_xlabel(f"row length ({unit})")
    ax.set_ylabel("rows")
    ax.set_title(f"{Path(report.source).name}: {stats.rows} rows, median {stats.median:g}, max {stats.max}")
    fig.tight_layout()
    try:
        atomic_write(target, lambda tmp: fig.savefig(tmp, format="png", dpi=100))
    finally:
        plt.close(fig)
    return target


def _table_lines(report: CheckReport) -> list[str]:
    lines = [f"{report.source}: {report.format} format ({report.kind}), {report.rows} rows, {report.valid_rows} valid"]
    s = report.length_stats
    if s is not None:
        unit = (f"tokens, {report.tokenizer} tokenizer" if report.tokenizer
                else "whitespace words: --no-tokenizer, not model tokens")
        lines.append(f"lengths ({unit}): min {s.min}  median {s.median:g}  mean {s.mean:g}  p95 {s.p95}  max {s.max}  "
                     f"total {s.total}; {s.over_max_length} over max_length {s.max_length}")
    if report.labels is not None:
        total = sum(report.labels.values()) or 1
        lines.append("labels: " + "  ".join(f"{k} {v} ({100 * v / total:.0f}%)" for k, v in report.labels.items()))
    by_code: dict[tuple[Severity, str], list[Finding]] = defaultdict(list)
    for f in report.findings:
        by_code[(f.severity, f.code)].append(f)
    for (severity, code), items in by_code.items():
        lines.append(f"{severity.value} {code}: {len(items)}")
        lines += [f"  {f.where}: {f.message}" for f in items[:SHOWN]]
        if len(items) > SHOWN:
            lines.append(f"  ... {len(items) - SHOWN} more (--json lists every one)")
    if report.plot:
        lines.append(f"histogram: {report.plot}")
    near = f"near-duplicates at Jaccard >= {report.near_threshold:g}" if report.near_threshold else "exact duplicates only"
    lines.append(f"result: {len(report.errors)} errors, {len(report.warnings)} warnings ({near})")
    return lines


def dumps(report: CheckReport) -> str:
    return json.dumps(report.to_json(), ensure_ascii=False, indent=1)
