"""Continual learning on three bundled tasks: how much each strategy forgets, measured.

SmolLM2-135M-Instruct learns three project-written tasks one after another (stage 1, 2, 3):
calendar notes → `activity|person|day|time` (bundled:quickstart_*), contacts → `Last, First:
ddd-ddd-dddd` (bundled:contacts_*), orders → `item-color-size xQTY` (bundled:orders_*). After every
stage each strategy's model is scored by held-out exact match (greedy) on all three tasks, giving
a matrix R[stage][task]. From it:
- average accuracy: the mean of the last row (all tasks after the last stage);
- backward transfer (BWT): mean over the first two tasks of R[last][task] − R[task's own stage][task];
  negative = forgetting;
and, after the last stage, the general-skill probe of `lorakit eval --probe` (perplexity on the
project's general-English sample; agreement with the base model's own answers to 30 general prompts).

Strategies (LoRA r=16 on all linear layers, the quickstart's recipe, STEPS optimizer steps per stage):
- naive: one adapter, continued task after task (`train.init_adapter`: the previous stage's adapter);
- replay10 / replay30: naive plus rows of the earlier tasks in every batch (`data.replay`, ratio 0.1 / 0.3);
- ewc: naive plus the EWC penalty against the previous stage (`train.ewc: {lambda, from}`, λ = --ewc-lambda,
  the Fisher over FISHER_SAMPLES training rows saved by that run: `train.save_fisher_samples`);
- joint: multi-task training on every task seen so far (`data.train` as weighted sources), a fresh
  adapter per stage (the usual upper bound);
- router: one fresh adapter per task, a `lorakit.TaskRouter` (MiniLM nearest centroid, built from
  the seen tasks' training prompts) picks the adapter for each prompt;
- progressive: a new adapter per task on top of the earlier ones, frozen (`lora.progressive_from`).
A strategy whose config keys this trainer does not have is reported as skipped (with the key).

    python benchmarks/continual.py                  # all strategies, 30 steps / stage, 40 eval rows / task
    python benchmarks/continual.py --quick          # a smoke run: 3 steps / stage, 6 eval rows, short answers
    python benchmarks/continual.py --strategies naive router --markdown   # the README table
Results go to OUT/results.json (OUT: --out, default runs/bench-continual); trained adapters are
cached under OUT/<full|quick>/<strategy>/stage-N (delete them to retrain).
"""
from __future__ import annotations

import argparse
import copy
import json
import sys
import time
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Callable, Optional

import lorakit
from lorakit.data.bundled import NAMES as BUNDLED, path as bundled_path
from lorakit.data.formats import load_dataset
from lorakit.files import atomic_write_text
from lorakit.strict import ConfigError
from lorakit.train.config import RunConfig
from lorakit.train.evaluate import generate_answers
from lorakit.train.forgetting import agreement, base_answers, general_prompts
from lorakit.train.quickstart import QUICKSTART
from lorakit.yamlconfig import load_config

TASKS = {"notes": "quickstart", "contacts": "contacts", "orders": "orders"}
"""Task name → bundled stem (`bundled:<stem>_train` / `_eval`), in training order."""


@dataclass(frozen=True)
class Budget:
    steps: int  # optimizer steps per stage (per task for joint)
    eval_rows: int  # held-out rows scored per task
    max_new_tokens: int
    probe_tokens: int  # answer length of the agreement probe
    fisher_samples: int  # rows of the EWC Fisher
    ewc_lambda: float = 3e4  # the best of 1, 1e4, 3e4, 1e5 on these tasks (README, 2026-12-02)


FULL = Budget(steps=30, eval_rows=40, max_new_tokens=24, probe_tokens=48, fisher_samples=64)
QUICK = Budget(steps=3, eval_rows=6, max_new_tokens=24, probe_tokens=12, fisher_samples=8)


def log(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", flush=True)


def base_config(train: object, out: Path, budget: Budget) -> dict:
    """The quickstart's recipe on `train` (a bundled name or a list of sources), no in-run eval."""
    config = copy.deepcopy(QUICKSTART)
    config["data"]["train"] = train
    config["data"].pop("eval", None)
    config["train"]["steps"] = budget.steps
    config["train"]["warmup_steps"] = min(3, budget.steps - 1)
    config["eval"] = {"generate": False}
    config["output_dir"] = str(out)
    return config


def checked(config: dict) -> RunConfig:
    return load_config(RunConfig, None, [], base=config)


def missing_feature(config: dict) -> Optional[str]:
    """None if this trainer accepts `config`, else its one-line complaint (a key it does not have)."""
    try:
        checked(config)
    except ConfigError as e:
        return str(e).splitlines()[0]
    return None


def train_stage(config: dict) -> Path:
    """Train one stage (cached: a finished stage's adapter is reused); returns its adapter directory."""
    from lorakit.train.loop import train

    out = Path(config["output_dir"])
    adapter = out / "adapter"
    if (adapter / "adapter_model.safetensors").is_file():
        return adapter
    result = train(checked(config), quiet=True)
    log(f"    trained {out.parent.name}/{out.name}: {result.steps} steps in {result.seconds:.0f}s")
    return adapter


# ---- strategies: each returns, per stage, a way to score the model after that stage -------------

Scorer = Callable[["Evaluator", int], dict]


def sequential(root: Path, budget: Budget, extra: Callable[[int, Path], dict] = lambda k, out: {}) -> list[Scorer]:
    """One adapter continued task after task (`train.init_adapter`, or EWC's `train.ewc.from`, which
    continues that run's adapter); `extra(stage, out)` adds config (replay, EWC)."""
    stages, previous = [], None
    for k, (task, stem) in enumerate(TASKS.items()):
        out = root / f"stage-{k + 1}"
        config = deep_update(base_config(f"bundled:{stem}_train", out, budget), extra(k, out))
        if previous is not None and "ewc" not in config["train"]:
            config["train"]["init_adapter"] = str(previous)
        previous = train_stage(config)
        stages.append(single(previous))
    return stages


def replay_file(root: Path, k: int) -> str:
    """The earlier tasks' training rows (tasks 1..k), one file."""
    path = root / f"replay-{k}.jsonl"
    lines = [l for stem in list(TASKS.values())[:k] for l in bundled_path(f"{stem}_train").read_text().splitlines()]
    atomic_write_text(path, "\n".join(lines) + "\n")
    return str(path)


def strategy_replay(ratio: float) -> Callable:
    def run(root: Path, budget: Budget) -> list[Scorer]:
        return sequential(root, budget, lambda k, out: {"data": {"replay": {"file": replay_file(root, k),
                                                                           "ratio": ratio}}} if k else {})
    return run


def strategy_naive(root: Path, budget: Budget) -> list[Scorer]:
    return sequential(root, budget)


def strategy_ewc(root: Path, budget: Budget) -> list[Scorer]:
    """Each stage saves its Fisher (`train.save_fisher_samples`); the next one continues its adapter with
    the penalty λ/2 · Σ F (θ − θ*)² (`train.ewc: {lambda, from}`)."""
    def extra(k: int, out: Path) -> dict:
        train = {"save_fisher_samples": budget.fisher_samples} if k < len(TASKS) - 1 else {}
        if k:
            train["ewc"] = {"lambda": budget.ewc_lambda, "from": str(out.parent / f"stage-{k}")}
        return {"train": train}
    return sequential(root, budget, extra)


def strategy_joint(root: Path, budget: Budget) -> list[Scorer]:
    stages = []
    for k in range(len(TASKS)):
        seen = list(TASKS.values())[: k + 1]
        config = base_config([{"file": f"bundled:{s}_train", "weight": 1.0} for s in seen], root / f"stage-{k + 1}",
                             replace(budget, steps=budget.steps * (k + 1)))  # the same steps per task
        stages.append(single(train_stage(config)))
    return stages


def strategy_router(root: Path, budget: Budget) -> list[Scorer]:
    adapters: dict[str, Path] = {}
    stages = []
    for k, (task, stem) in enumerate(TASKS.items()):
        adapters[task] = train_stage(base_config(f"bundled:{stem}_train", root / f"stage-{k + 1}", budget))
        stages.append(routed(dict(adapters)))
    return stages


def strategy_progressive(root: Path, budget: Budget) -> list[Scorer]:
    stages, earlier = [], []
    for k, (task, stem) in enumerate(TASKS.items()):
        config = base_config(f"bundled:{stem}_train", root / f"stage-{k + 1}", budget)
        if earlier:
            config["lora"]["progressive_from"] = [str(a) for a in earlier]
        earlier.append(train_stage(config))
        stages.append(stacked(list(earlier)))
    return stages


STRATEGIES: dict[str, Callable[[Path, Budget], list[Scorer]]] = {
    "naive": strategy_naive, "replay10": strategy_replay(0.1), "replay30": strategy_replay(0.3),
    "ewc": strategy_ewc, "joint": strategy_joint, "router": strategy_router, "progressive": strategy_progressive,
}


def probe_config(strategy: str, root: Path, budget: Budget) -> dict:
    """A stage-2 config of the strategy, to ask the trainer whether it has the strategy's keys."""
    out = root / "probe-config"
    if strategy in ("replay10", "replay30"):
        return deep_update(base_config("bundled:contacts_train", out, budget),
                           {"data": {"replay": {"file": "bundled:quickstart_train", "ratio": 0.1}}})
    if strategy == "ewc":
        config = base_config("bundled:contacts_train", out, budget)
        config["train"].update(ewc={"lambda": budget.ewc_lambda, "from": str(out)},
                               save_fisher_samples=budget.fisher_samples)
        return config
    if strategy == "joint":
        return base_config([{"file": "bundled:quickstart_train", "weight": 1.0},
                            {"file": "bundled:contacts_train", "weight": 1.0}], out, budget)
    if strategy == "progressive":
        config = base_config("bundled:contacts_train", out, budget)
        config["lora"]["progressive_from"] = [str(out)]
        return config
    return base_config("bundled:contacts_train", out, budget)


def deep_update(target: dict, changes: dict) -> dict:
    for key, value in changes.items():
        if isinstance(value, dict) and isinstance(target.get(key), dict):
            deep_update(target[key], value)
        else:
            target[key] = value
    return target


# ---- scoring ----------------------------------------------------------------------------------

class Evaluator:
    """Held-out exact match per task (first `rows` eval rows) and the general-skill probe, on one base."""

    def __init__(self, budget: Budget):
        from lorakit.models import DEFAULT_CAUSAL_LM, load_causal_lm

        self.budget = budget
        self.model, self.tokenizer = load_causal_lm(DEFAULT_CAUSAL_LM)
        self.base = DEFAULT_CAUSAL_LM
        self.rows = {t: load_dataset(bundled_path(f"{s}_eval")).rows[: budget.eval_rows] for t, s in TASKS.items()}
        self.loaded: dict[str, Path] = {}

    def use(self, adapters: dict[str, Path]) -> None:
        """Exactly these named adapters on the base (cached by directory)."""
        for name in list(self.loaded):
            if self.loaded[name] != adapters.get(name):
                lorakit.delete_adapter(self.model, name)
                del self.loaded[name]
        for name, path in adapters.items():
            if name not in self.loaded:
                lorakit.load_adapter(self.model, path, adapter_name=name)
                self.loaded[name] = path

    def answers(self, conversations: list, choose: Callable[[list], list[str]],
                max_new_tokens: Optional[int] = None) -> list[str]:
        """Greedy answers, each conversation with the adapter `choose` names for it (grouped by adapter)."""
        names = choose(conversations)
        out: list[Optional[str]] = [None] * len(conversations)
        for name in dict.fromkeys(names):
            index = [i for i, n in enumerate(names) if n == name]
            activate(self.model, name)
            generated = generate_answers(self.model, self.tokenizer, [conversations[i] for i in index],
                                         max_new_tokens or self.budget.max_new_tokens, batch_size=16)
            for i, g in zip(index, generated):
                out[i] = g.prediction
        return out

    def task_scores(self, choose: Callable[[list], list[str]]) -> dict[str, float]:
        scores = {}
        for task, rows in self.rows.items():
            predictions = self.answers(rows, choose)
            scores[task] = sum(p.strip() == r[-1]["content"].strip() for p, r in zip(predictions, rows)) / len(rows)
        return scores

    def probe(self, choose: Callable[[list], list[str]]) -> dict:
        """The general-skill probe with per-prompt adapters: perplexity (paragraphs routed one by one,
        pooled by target tokens) and agreement with the base's cached answers."""
        import math

        from lorakit.data.formats import Dataset
        from lorakit.inference import Trained
        from lorakit.train.config import Task
        from lorakit.train.evaluate import evaluate_dataset
        from lorakit.train.forgetting import general_text

        paragraphs = general_text()
        names = choose([[{"role": "user", "content": p}] for p in paragraphs])
        total, targets = 0.0, 0
        for name in dict.fromkeys(names):
            group = [p for p, n in zip(paragraphs, names) if n == name]
            activate(self.model, name)
            result = evaluate_dataset(self.model, self.tokenizer, Dataset("general_text", "text", "text",
                                                                          [{"text": p} for p in group]),
                                      generate=False)
            count = sum(len(self.tokenizer(p)["input_ids"]) - 1 for p in group)
            total, targets = total + result.loss * count, targets + count
        prompts = general_prompts()
        trained = Trained(self.model, self.tokenizer, Task.SFT, self.base)
        references = base_answers(trained, prompts, self.budget.probe_tokens)
        conversations = [[{"role": "user", "content": p}, {"role": "assistant", "content": ""}] for p in prompts]
        answers = [a.strip() for a in self.answers(conversations, choose, self.budget.probe_tokens)]
        return {"general_ppl": math.exp(min(total / max(targets, 1), 50.0)), **agreement(answers, references)}


def activate(model, key) -> None:
    """An adapter name, or a tuple of names applied together (stacked)."""
    lorakit.set_adapter(model, key if isinstance(key, str) else key[0] if len(key) == 1 else list(key))


def single(adapter: Path) -> Scorer:
    def score(ev: Evaluator, _stage: int) -> Callable:
        ev.use({"model": adapter})
        return lambda conversations: ["model"] * len(conversations)
    return score


def stacked(adapters: list[Path]) -> Scorer:
    """All of `adapters` applied together (progressive LoRA: the earlier ones under the newest)."""
    def score(ev: Evaluator, _stage: int) -> Callable:
        names = {f"stage-{i + 1}": path for i, path in enumerate(adapters)}
        ev.use(names)
        key = tuple(names)
        return lambda conversations: [key] * len(conversations)
    return score


def routed(adapters: dict[str, Path]) -> Scorer:
    def score(ev: Evaluator, _stage: int) -> Callable:
        from lorakit.task_router import TaskRouter, TaskSpec

        ev.use(adapters)
        if len(adapters) == 1:
            only = next(iter(adapters))
            return lambda conversations: [only] * len(conversations)
        router = TaskRouter().fit({t: TaskSpec(str(p), f"bundled:{TASKS[t]}_train") for t, p in adapters.items()})
        last_user = lambda conv: next(m["content"] for m in reversed(conv) if m["role"] == "user")  # noqa: E731
        return lambda conversations: router.route([last_user(c) for c in conversations])
    return score


def run_strategy(name: str, root: Path, budget: Budget, ev: Evaluator) -> dict:
    folder = f"{name}-lambda{budget.ewc_lambda:g}" if name == "ewc" else name
    stages = STRATEGIES[name](root / folder, budget)
    matrix, probe = [], None
    for k, stage in enumerate(stages):
        choose = stage(ev, k)
        matrix.append(ev.task_scores(choose))
        log(f"  {name} after stage {k + 1}: " + ", ".join(f"{t} {v:.3f}" for t, v in matrix[-1].items()))
        if k == len(stages) - 1:
            probe = ev.probe(choose)
    tasks = list(TASKS)
    last = matrix[-1]
    bwt = sum(last[t] - matrix[i][t] for i, t in enumerate(tasks[:-1])) / (len(tasks) - 1)
    return {"matrix": matrix, "average": sum(last.values()) / len(last), "bwt": bwt, "probe": probe}


def markdown(results: dict, budget: Budget) -> str:
    tasks = list(TASKS)
    lines = [f"| strategy | after stage 1 ({tasks[0]}) | after stage 2 (+{tasks[1]}) | after stage 3 (+{tasks[2]}) "
             "| average | BWT | general ppl | agreement F1 |", "|---|---|---|---|---|---|---|---|"]
    for name, r in results.items():
        if "skipped" in r:
            lines.append(f"| {name} | skipped: {r['skipped']} | | | | | | |")
            continue
        cells = [" / ".join(f"{row[t]:.2f}" for t in tasks[: k + 1]) for k, row in enumerate(r["matrix"])]
        p = r["probe"]
        lines.append(f"| {name} | {' | '.join(cells)} | {r['average']:.3f} | {r['bwt']:+.3f} | "
                     f"{p['general_ppl']:.2f} | {p['agree_f1']:.3f} |")
    return "\n".join(lines) + (f"\n\nExact match on {budget.eval_rows} held-out rows per task (cells: the tasks "
                               f"seen so far, in order); {budget.steps} steps per stage.")


def main(argv: Optional[list[str]] = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--quick", action="store_true", help="smoke run: 3 steps per stage, 6 eval rows, short answers")
    p.add_argument("--strategies", nargs="+", choices=list(STRATEGIES), default=list(STRATEGIES))
    p.add_argument("--out", default="runs/bench-continual")
    p.add_argument("--ewc-lambda", type=float, default=FULL.ewc_lambda, help="λ of the EWC penalty (default 3e4)")
    p.add_argument("--markdown", action="store_true", help="print the README table")
    args = p.parse_args(argv)
    missing = [s for s in TASKS.values() if f"{s}_train" not in BUNDLED]
    if missing:
        sys.exit(f"bundled tasks missing: {missing}")
    budget = replace(QUICK if args.quick else FULL, ewc_lambda=args.ewc_lambda)
    root = Path(args.out) / ("quick" if args.quick else "full")
    ev = None
    results = {}
    for name in args.strategies:
        lacking = missing_feature(probe_config(name, root, budget))
        if lacking:
            log(f"{name}: skipped, this trainer lacks its keys ({lacking})")
            results[name] = {"skipped": lacking}
            continue
        ev = ev or Evaluator(budget)
        log(f"{name}: training {len(TASKS)} stages ({budget.steps} steps each)")
        results[name] = run_strategy(name, root, budget, ev)
        log(f"{name}: average {results[name]['average']:.3f}, BWT {results[name]['bwt']:+.3f}, "
            f"probe {results[name]['probe']}")
    report = {"budget": vars(budget), "tasks": TASKS, "results": results}
    atomic_write_text(Path(args.out) / f"results{'-quick' if args.quick else ''}.json", json.dumps(report, indent=1))
    if args.markdown:
        print(markdown(results, budget))
    return 0


if __name__ == "__main__":
    sys.exit(main())
