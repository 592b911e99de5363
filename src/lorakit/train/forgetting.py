"""The forgetting evaluator: several held-out sets at once plus a general-skill probe, as one table.

    trained = load_trained("runs/b/adapter")
    rows = evaluate_suites(trained, ["bundled:quickstart_eval", "bundled:contacts_eval"], Probe.ALL)
    print(format_table(rows))

Each suite is scored by the trainer's own recipe (`evaluate.evaluate_dataset`: loss, perplexity,
exact match of greedy answers or a classifier's accuracy). The general-skill probe measures what a
fine-tune may have cost outside its tasks:

- `general_text`: perplexity on short paragraphs of general English written for this project
  (`lorakit/data/probe/general_text.txt`);
- `general_prompts`: agreement of the model's greedy answers to 30 general prompts
  (`lorakit/data/probe/general_prompts.txt`) with the BASE model's own greedy answers: exact match,
  token-level F1 and ROUGE-L (LCS) F1. The references are generated at eval time with the adapters
  disabled and cached under `$LORAKIT_CACHE/probe/`, keyed by a fingerprint of the base, the prompts
  and the generation length, so stored answers never go stale.

A row is a dict: `{"split": "suite" | "probe", "suite": NAME, "rows": N, <metrics>, "model": ..., "time": ...}`;
`append_rows` adds them to a run's `metrics.jsonl`, `compare_runs` pairs the latest rows of two runs.
"""
from __future__ import annotations

import enum
import hashlib
import json
import re
import time
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Callable, Optional, Sequence

from ..data.overlap import rouge_l, token_f1
from ..data.prefixes import Suite, parse_suite, prefix_for, with_prefix
from ..errors import InputError
from ..files import atomic_write_text, read_text
from ..io import is_adapter_dir, read_task_prefixes
from ..tuners.layers import LayerWrapper

if TYPE_CHECKING:
    from ..data.formats import Dataset

PROBE_DIR = Path(__file__).resolve().parent.parent / "data" / "probe"
GENERAL_TEXT = "general_text"
GENERAL_PROMPTS = "general_prompts"
METRIC_ORDER = ("loss", "perplexity", "exact_match", "accuracy", "agree_exact", "agree_f1", "agree_rouge_l")
"""Table columns, in order (a row shows the ones it has)."""
SPLITS = ("suite", "probe")
"""The `split` values of the evaluator's rows in metrics.jsonl."""


class Probe(str, enum.Enum):
    """Which parts of the general-skill probe to run (`lorakit eval --probe [KIND]`)."""

    PERPLEXITY = "perplexity"  # perplexity on the general-text sample
    AGREEMENT = "agreement"  # agreement with the base model's answers to the general prompts
    ALL = "all"

    @property
    def perplexity(self) -> bool:
        return self in (Probe.PERPLEXITY, Probe.ALL)

    @property
    def agreement(self) -> bool:
        return self in (Probe.AGREEMENT, Probe.ALL)


@dataclass(frozen=True)
class EvalOptions:
    max_length: int = 512
    max_new_tokens: int = 48
    batch_size: int = 16
    max_samples: Optional[int] = None
    probe_max_new_tokens: int = 48


def general_text() -> list[str]:
    """The bundled general-English paragraphs (blank-line separated in the file)."""
    text = (PROBE_DIR / f"{GENERAL_TEXT}.txt").read_text(encoding="utf-8")
    return [p.strip() for p in text.split("\n\n") if p.strip()]


def general_prompts() -> list[str]:
    """The bundled general prompts, one per line."""
    return [l.strip() for l in (PROBE_DIR / f"{GENERAL_PROMPTS}.txt").read_text(encoding="utf-8").splitlines()
            if l.strip()]


def load_suites(sources: Sequence[str | Suite], format: Optional[str] = None,
                adapter: Optional[str] = None) -> list[tuple[Suite, Dataset]]:
    """(suite, Dataset) for each data source (a file or `bundled:NAME`, either optionally `TASK=`: see
    `lorakit.data.prefixes`): every path checked, then every file read and every row validated, so a bad input
    fails before any model loads or any work starts. With `adapter` (its directory), a task it does not record
    in task_prefixes.json is refused here too. `format`: the files' row format (detected per file when None)."""
    from ..data.formats import load_dataset
    from ..data.io import data_path

    suites = [s if isinstance(s, Suite) else parse_suite(s) for s in sources]
    paths = [data_path(s.source, "--data") for s in suites]
    if adapter is not None and is_adapter_dir(adapter):
        recorded = read_task_prefixes(adapter)
        for suite in suites:
            prefix_for(recorded, suite.task, f"--data {suite.name}", adapter)
    return [(s, load_dataset(path, format)) for s, path in zip(suites, paths)]


def evaluate_file(load: Callable[[], object], source: str, options: EvalOptions = EvalOptions(),
                  format: Optional[str] = None, adapter: Optional[str] = None) -> dict:
    """`lorakit eval --data [TASK=]FILE`: the file (or `bundled:NAME`) read and every row checked, then the
    model loaded by `load()` (e.g. `lambda: load_trained(dir)`) and scored (with TASK's prefix): its metrics
    and the rows scored. `adapter`: the adapter directory `load` reads, to refuse an unknown TASK early."""
    ((suite, dataset),) = load_suites([source], format, adapter)
    trained = load()
    warn_unprefixed(trained, [suite])
    rows, metrics = _score(trained, _prefixed(trained, suite, dataset), options)
    return {**metrics, "rows": rows}


def evaluate_suites(trained, sources: Sequence[str | Suite], probe: Optional[Probe] = None,
                    options: EvalOptions = EvalOptions(), cache: Optional[Path] = None,
                    format: Optional[str] = None) -> list[dict]:
    """One row per data source (a file or `bundled:NAME`, or `TASK=` either: see `lorakit.data.prefixes`),
    then the probe's rows.

    `trained`: a `lorakit.inference.Trained` (model, tokenizer, base name, adapter dir, task prefixes). A
    `TASK=` source is scored with the prefix the adapter was trained with for TASK. `cache`: where the
    base's probe answers are kept (default `$LORAKIT_CACHE/probe`). `format`: the files' row format
    (detected per file when None)."""
    if not sources and probe is None:
        raise InputError("--data: nothing to evaluate (give --data, eval.suites in the run config, or --probe)")
    return _score_suites(trained, load_suites(sources, format), probe, options, cache)


def _score_suites(trained, datasets: list[tuple[Suite, Dataset]], probe: Optional[Probe], options: EvalOptions,
                  cache: Optional[Path] = None) -> list[dict]:
    """`evaluate_suites` on data already read (`load_suites`)."""
    stamp = {"model": str(trained.adapter_dir or trained.base), "time": time.strftime("%Y-%m-%dT%H:%M:%SZ",
                                                                                   time.gmtime())}
    prefixed = [_prefixed(trained, suite, dataset) for suite, dataset in datasets]  # every task checked first
    warn_unprefixed(trained, [suite for suite, _ in datasets])
    rows = []
    for (suite, _), dataset in zip(datasets, prefixed):
        scored, metrics = _score(trained, dataset, options)
        rows.append({"split": "suite", "suite": suite.name, "rows": scored, **metrics, **stamp})
    if probe is not None:
        rows += [{**row, **stamp} for row in general_probe(trained, probe, options, cache)]
    return rows


def _score(trained, dataset: Dataset, options: EvalOptions) -> tuple[int, dict]:
    """(rows scored, metrics) of one data set, by the trainer's own recipe (`evaluate.evaluate_dataset`)."""
    from .evaluate import evaluate_dataset

    result = evaluate_dataset(trained.model, trained.tokenizer, dataset, labels=trained.labels,
                              max_length=options.max_length, max_new_tokens=options.max_new_tokens,
                              batch_size=options.batch_size, max_samples=options.max_samples)
    return min(len(dataset.rows), options.max_samples or len(dataset.rows)), result.metrics()


def _prefixed(trained, suite: Suite, dataset: Dataset) -> Dataset:
    """`dataset` with the prefix `trained` was trained with for the suite's task (unchanged without a task)."""
    return with_prefix(dataset, prefix_for(trained.prefixes, suite.task, f"--data {suite.name}",
                                           trained.adapter_dir or trained.base))


def suite_name(source: str) -> str:
    """How a source is named in the table and in metrics.jsonl: `bundled:NAME` → NAME, a file as given
    (`TASK=` kept in front)."""
    return parse_suite(source).name


def warn_unprefixed(trained, suites: Sequence[Suite]) -> None:
    """One warning when a model trained with task prefixes is scored on data named without a task."""
    if not any(trained.prefixes.values()):
        return
    bare = [s.source for s in suites if s.task is None]
    if bare:
        warnings.warn(f"{trained.adapter_dir or trained.base} was trained with task prefixes "
                      f"({', '.join(f'{t}={p!r}' for t, p in trained.prefixes.items())}); {', '.join(bare)} "
                      f"scored without one (name the task to apply its prefix: --data TASK={bare[0]})", stacklevel=2)


def general_probe(trained, probe: Probe, options: EvalOptions = EvalOptions(),
                  cache: Optional[Path] = None) -> list[dict]:
    """The probe's rows: `general_text` (loss, perplexity) and/or `general_prompts` (agreement with the base)."""
    from ..data.formats import Dataset
    from .config import Task
    from .evaluate import evaluate_dataset

    if trained.task is not Task.SFT:
        raise InputError("--probe: the general-skill probe needs a causal LM, not a classifier")
    rows = []
    if probe.perplexity:
        paragraphs = general_text()
        dataset = Dataset(GENERAL_TEXT, "text", "text", [{"text": p} for p in paragraphs])
        result = evaluate_dataset(trained.model, trained.tokenizer, dataset, max_length=options.max_length,
                                  generate=False)
        rows.append({"split": "probe", "suite": GENERAL_TEXT, "rows": len(paragraphs), **result.metrics()})
    if probe.agreement:
        prompts = general_prompts()
        references = base_answers(trained, prompts, options.probe_max_new_tokens, options.batch_size, cache)
        answers = answer(trained.model, trained.tokenizer, prompts, options.probe_max_new_tokens, options.batch_size)
        rows.append({"split": "probe", "suite": GENERAL_PROMPTS, "rows": len(prompts), **agreement(answers, references)})
    return rows


def answer(model, tokenizer, prompts: list[str], max_new_tokens: int, batch_size: int) -> list[str]:
    """Greedy answers to single-turn prompts."""
    from .evaluate import generate_answers

    conversations = [[{"role": "user", "content": p}, {"role": "assistant", "content": ""}] for p in prompts]
    return [g.prediction.strip() for g in generate_answers(model, tokenizer, conversations, max_new_tokens,
                                                           batch_size)]


def base_answers(trained, prompts: list[str], max_new_tokens: int, batch_size: int = 16,
                 cache: Optional[Path] = None) -> list[str]:
    """The base model's greedy answers to `prompts`: the adapters disabled, cached per base fingerprint."""
    from ..models import cache_dir
    from ..state import disable_adapters

    key = base_fingerprint(trained, prompts, max_new_tokens)
    path = Path(cache or cache_dir() / "probe") / f"{key}.json"
    if path.is_file():
        try:
            stored = json.loads(path.read_text(encoding="utf-8"))
            if stored.get("prompts") == prompts and len(stored.get("answers", ())) == len(prompts):
                return list(stored["answers"])
        except (json.JSONDecodeError, AttributeError):
            pass  # a damaged cache entry is regenerated
    with disable_adapters(trained.model):
        answers = answer(trained.model, trained.tokenizer, prompts, max_new_tokens, batch_size)
    atomic_write_text(path, json.dumps({"base": str(trained.base), "max_new_tokens": max_new_tokens,
                                        "prompts": prompts, "answers": answers}, indent=1))
    return answers


def base_fingerprint(trained, prompts: list[str], max_new_tokens: int) -> str:
    """A key for the base's answers: its name, config, module types without the adapters' (a quantized base
    differs; any adapter on the same base shares the key), a sample of its embedding weights, the chat
    template, the prompts and the generation length."""
    import torch

    model = trained.model
    digest = hashlib.sha256()
    config = model.config.to_json_string(use_diff=False) if hasattr(model, "config") else ""
    from ..state import holders

    adapter_parts = {id(m) for _, h in holders(model) for m in (h, *getattr(h, "adapters", h).modules())}
    kinds = sorted({type(m).__name__ for m in model.modules() if id(m) not in adapter_parts})  # the base's own
    for part in (str(trained.base), config, ",".join(kinds), str(getattr(trained.tokenizer, "chat_template", "")),
                 json.dumps(prompts), str(max_new_tokens)):
        digest.update(part.encode() + b"\0")
    embedding = model.get_input_embeddings()
    embedding = embedding.base_weight_param() if isinstance(embedding, LayerWrapper) else embedding.weight
    digest.update(embedding[:64].detach().to(torch.float32).cpu().numpy().tobytes())
    name = re.sub(r"[^A-Za-z0-9._-]+", "_", Path(str(trained.base)).name)[:40] or "base"
    return f"{name}-{digest.hexdigest()[:16]}"


def agreement(answers: Sequence[str], references: Sequence[str]) -> dict:
    """Mean exact match (surrounding whitespace ignored), token F1 and ROUGE-L of answers vs references."""
    n = max(len(references), 1)
    return {"agree_exact": sum(a.strip() == r.strip() for a, r in zip(answers, references, strict=True)) / n,
            "agree_f1": sum(token_f1(a, r) for a, r in zip(answers, references)) / n,
            "agree_rouge_l": sum(rouge_l(a, r) for a, r in zip(answers, references)) / n}


def evaluate_and_record(load: Callable[[], object], sources: Sequence[str], probe: Optional[Probe] = None,
                        options: EvalOptions = EvalOptions(), config: Optional[str] = None,
                        out: Optional[str] = None, adapter: Optional[str] = None,
                        format: Optional[str] = None) -> tuple[list[dict], Optional[Path]]:
    """`lorakit eval` with a table: the sources (or `eval.suites` of `config`, else of the adapter's run
    config.yaml) read and every row checked, then the model loaded by `load()`, scored, and the rows appended
    to `out` or the run's metrics.jsonl. Returns the rows and the file they went to (None: not a run, no `out`)."""
    sources = list(sources)
    if not sources:
        run_config = Path(config) if config else (Path(adapter).expanduser().parent / "config.yaml" if adapter else None)
        if run_config is not None and (config or run_config.is_file()):
            sources = suites_from_config(run_config)
            if not sources and probe is None:
                raise InputError(f"--data: none given and {run_config} has no eval.suites")
    elif config:
        raise InputError("--config: reads eval.suites when no --data is given; pass one or the other")
    if not sources and probe is None:
        raise InputError("--data: nothing to evaluate (give --data, eval.suites in the run config, or --probe)")
    if out is not None and Path(out).expanduser().is_dir():
        raise InputError(f"--out {out}: is a directory; give a .jsonl file")
    datasets = load_suites(sources, format, adapter)
    trained = load()
    rows = _score_suites(trained, datasets, probe, options)
    run = run_dir_of(trained)
    target = Path(out).expanduser() if out is not None else (run / "metrics.jsonl" if run is not None else None)
    if target is not None:
        append_rows(target, rows)
    return rows, target


def run_dir_of(trained) -> Optional[Path]:
    """The run directory an adapter was saved into (`output_dir/adapter`), if it is one."""
    adapter = trained.adapter_dir
    if adapter is None:
        return None
    parent = Path(adapter).parent
    return parent if any((parent / f).is_file() for f in ("metrics.jsonl", "config.yaml")) else None


def append_rows(path: Path, rows: list[dict]) -> None:
    """Append rows to a JSONL file (a run's metrics.jsonl or `--out`), one object per line."""
    path = Path(path)
    if path.is_dir():
        raise InputError(f"--out {path}: is a directory; give a .jsonl file")
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a", encoding="utf-8") as f:
        f.write("".join(json.dumps(r) + "\n" for r in rows))


def latest_rows(source: str | Path) -> dict[str, dict]:
    """The latest evaluator row per suite in a run dir's metrics.jsonl (or a JSONL file)."""
    path = Path(source).expanduser()
    file = path / "metrics.jsonl" if path.is_dir() else path
    if not file.is_file():
        raise InputError(f"--compare {source}: no metrics.jsonl (give a run directory or a metrics file)")
    latest: dict[str, dict] = {}
    for number, line in enumerate(read_text(file).splitlines(), 1):
        try:
            row = json.loads(line)
        except json.JSONDecodeError:
            continue  # (a killed writer may have torn its last line)
        if isinstance(row, dict) and row.get("split") in SPLITS and isinstance(row.get("suite"), str):
            latest[row["suite"]] = row
    if not latest:
        raise InputError(f"--compare {file}: no lorakit eval rows; run lorakit eval with several --data or "
                         "--probe on it first")
    return latest


def compare_runs(before: str | Path, after: str | Path) -> list[dict]:
    """Per suite and metric: before, after and the change (after − before), suites of either run."""
    a, b = latest_rows(before), latest_rows(after)
    out = []
    for suite in [*a, *(s for s in b if s not in a)]:
        for metric in METRIC_ORDER:
            x, y = a.get(suite, {}).get(metric), b.get(suite, {}).get(metric)
            if x is None and y is None:
                continue
            out.append({"suite": suite, "metric": metric, "before": x, "after": y,
                        "delta": None if x is None or y is None else y - x})
    return out


def _cell(value) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:.4f}" if abs(value) < 1000 else f"{value:.4g}"
    return str(value)


def _table(header: list[str], body: list[list[str]]) -> str:
    widths = [max(len(r[i]) for r in [header, *body]) for i in range(len(header))]
    line = lambda cells: "  ".join(c.ljust(w) if i == 0 else c.rjust(w)  # noqa: E731
                                   for i, (c, w) in enumerate(zip(cells, widths))).rstrip()
    return "\n".join([line(header), line(["-" * w for w in widths]), *map(line, body)])


def format_table(rows: list[dict]) -> str:
    """One line per suite (probe rows marked), one column per metric any row has."""
    metrics = [m for m in METRIC_ORDER if any(m in r for r in rows)]
    body = [[r["suite"] + (" (probe)" if r["split"] == "probe" else ""), str(r["rows"]),
             *(_cell(r.get(m)) for m in metrics)] for r in rows]
    return _table(["suite", "rows", *metrics], body)


def format_comparison(pairs: list[dict], before: str, after: str) -> str:
    body = [[p["suite"], p["metric"], _cell(p["before"]), _cell(p["after"]),
             "-" if p["delta"] is None else f"{p['delta']:+.4f}"] for p in pairs]
    return _table(["suite", "metric", f"before ({before})", f"after ({after})", "delta"], body)


def suites_from_config(path: Path) -> list[str]:
    """`eval.suites` of a run config file (the adapter's run config.yaml or `--config`)."""
    from ..yamlconfig import load_config
    from .config import RunConfig

    return list(load_config(RunConfig, str(path)).eval.suites)
