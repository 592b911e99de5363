"""What merging does to tasks, measured on SmolLM2-135M-Instruct, plus merge memory and LoRA extraction.

Part `table`: three LoRA adapters (r=16, all linear layers, 30 steps each; cached under OUT) learn
three bundled tasks of the calendar-notes kind: calendar notes → `activity|person|day|time`,
contacts → `Last, First: ddd-ddd-dddd`, orders → `item-color-size xQTY`. Each merge of the three
is scored by held-out exact match (greedy) on every task, next to the base and each single adapter:
- adapter level (`lorakit.combine_adapters`, peft's methods): cat, svd, linear, ties, ties_svd,
  dare_linear, dare_ties, magnitude_prune;
- model level (`lorakit merge-models` recipes on `BASE+ADAPTER` models): linear (the average),
  task_arithmetic, ties, dare_linear, dare_ties, breadcrumbs, and slerp between two tasks;
- task negation: the sum of all three minus the calendar adapter, at both levels.
Weights are 1 per task (linear: 1/3 each, an average), density 0.5 for the pruning methods.

Part `rss`: peak RSS and wall time of merging three copies of SmolLM2 (the base and two merged
fine-tunes, fp32 safetensors) with TIES, lorakit vs mergekit on the same recipe, each in a fresh
process, next to the size of the models and of a process that only imports torch and lorakit.

Part `extract`: `lorakit extract` on the calendar fine-tune merged into the base, at the adapter's
rank (16) and at --energy 0.9: the relative error of ΔW against the original adapter, the ranks
kept and the exact match of the extracted adapter.

    python benchmarks/merging.py                          # all parts, ≈25 min on 2 cores
    python benchmarks/merging.py --part rss extract --out runs/bench-merging
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import time
import warnings
from pathlib import Path

import torch
import yaml

import lorakit
from lorakit.data.bundled import NAMES as BUNDLED, path as bundled_path
from lorakit.data.formats import load_dataset
from lorakit.merge import Recipe
from lorakit.models import DEFAULT_CAUSAL_LM, load_causal_lm, local_dir
from lorakit.train.config import RunConfig
from lorakit.train.evaluate import exact_match, generate_answers
from lorakit.train.quickstart import QUICKSTART
from lorakit.yamlconfig import load_config

TASKS = {"calendar": "quickstart", "contacts": "contacts", "orders": "orders"}
BASE = DEFAULT_CAUSAL_LM
ADAPTER_METHODS = {"cat": {}, "svd": {}, "linear": {}, "ties": {"density": 0.5}, "ties_svd": {"density": 0.5},
                   "dare_linear": {"density": 0.5}, "dare_ties": {"density": 0.5}, "magnitude_prune": {"density": 0.5}}
MODEL_METHODS = {"linear": {}, "task_arithmetic": {}, "ties": {"density": 0.5}, "dare_linear": {"density": 0.5},
                 "dare_ties": {"density": 0.5}, "breadcrumbs": {"density": 0.9, "gamma": 0.01}}


def log(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", flush=True)


def available_tasks() -> dict[str, str]:
    missing = [b for b in TASKS.values() if f"{b}_train" not in BUNDLED]
    if missing:
        sys.exit(f"bundled tasks missing: {missing}; this benchmark needs {list(TASKS.values())}")
    return TASKS


def train_adapters(out: Path, steps: int) -> dict[str, Path]:
    """One LoRA adapter per task (the quickstart's recipe), trained once and cached under OUT/adapters."""
    from lorakit.train.loop import train

    dirs = {}
    for task, bundled in available_tasks().items():
        run_dir = out / "adapters" / task
        adapter = run_dir / "adapter"
        if not (adapter / "adapter_model.safetensors").is_file():
            log(f"training the {task} adapter ({steps} steps)")
            base = json.loads(json.dumps(QUICKSTART))
            base["model"]["name"] = BASE
            base["data"].update(train=f"bundled:{bundled}_train", eval=f"bundled:{bundled}_eval")
            base["train"]["steps"] = steps
            base["eval"]["generate"] = False
            base["output_dir"] = str(run_dir)
            result = train(load_config(RunConfig, None, [], base=base), quiet=True)
            log(f"  {task}: {result.steps} steps in {result.seconds:.0f}s")
        dirs[task] = adapter
    return dirs


class Scorer:
    """Held-out exact match of one model on every task (the first `rows` eval rows of each)."""

    def __init__(self, tokenizer, rows: int, batch_size: int):
        self.tokenizer, self.batch_size = tokenizer, batch_size
        self.conversations = {t: load_dataset(bundled_path(f"{b}_eval")).rows[:rows] for t, b in TASKS.items()}

    def __call__(self, model) -> dict[str, float]:
        return {task: exact_match(generate_answers(model, self.tokenizer, convs, max_new_tokens=24,
                                                   batch_size=self.batch_size))
                for task, convs in self.conversations.items()}


def part_table(out: Path, adapters: dict[str, Path], scorer: Scorer, model, seed: int) -> list[dict]:
    rows = []

    def add(method, level, scores, seconds=None):
        rows.append({"method": method, "level": level, **scores, "mean": sum(scores.values()) / len(scores),
                     "seconds": seconds})
        log(f"  {level:8s} {method:28s} " + "  ".join(f"{t} {s:.0%}" for t, s in scores.items()))

    with lorakit.disable_adapters(model):
        add("base model", "-", scorer(model))
    for task in adapters:
        lorakit.set_adapter(model, task)
        add(f"{task} adapter alone", "-", scorer(model))
    names, ones = list(adapters), [1.0] * len(adapters)
    for method, options in ADAPTER_METHODS.items():
        start = time.perf_counter()
        lorakit.combine_adapters(model, names, ones, method, method=method, seed=seed, **options)
        seconds = time.perf_counter() - start
        lorakit.set_adapter(model, method)
        add(method, "adapter", scorer(model), seconds)
        if method != "cat":
            lorakit.delete_adapter(model, method)
    lorakit.combine_adapters(model, ["cat", "calendar"], [1.0, -1.0], "negated", method="cat")
    lorakit.set_adapter(model, "negated")
    add("cat(all three) − calendar", "adapter", scorer(model))
    lorakit.save_adapter(model, out / "combined" / "all_three", adapter_name="cat")

    from transformers import AutoModelForCausalLM

    def model_level(name: str, recipe: dict):
        target = out / "merged" / name
        start = time.perf_counter()
        lorakit.merge_models(Recipe.model_validate(recipe), target, overwrite=True, seed=seed)
        seconds = time.perf_counter() - start
        merged = AutoModelForCausalLM.from_pretrained(target, dtype=torch.float32).eval()
        scores = scorer(merged)
        del merged
        shutil.rmtree(target)
        return scores, seconds

    for method, options in MODEL_METHODS.items():
        weight = 1.0 / len(adapters) if method == "linear" else 1.0
        recipe = {"merge_method": method, "dtype": "float32",
                  "models": [{"model": f"{BASE}+{adapters[t]}", "parameters": {"weight": weight, **options}}
                             for t in adapters]}
        if method != "linear":
            recipe["base_model"] = BASE
        add(method, "model", *model_level(method, recipe))
    first, second = list(adapters)[:2]
    slerp = {"merge_method": "slerp", "base_model": f"{BASE}+{adapters[first]}", "dtype": "float32",
             "models": [{"model": f"{BASE}+{adapters[first]}"}, {"model": f"{BASE}+{adapters[second]}"}],
             "parameters": {"t": 0.5}}
    add(f"slerp({first}, {second}) t=0.5", "model", *model_level("slerp", slerp))
    negation = {"merge_method": "task_arithmetic", "base_model": BASE, "dtype": "float32",
                "models": [{"model": f"{BASE}+{out / 'combined' / 'all_three'}", "parameters": {"weight": 1.0}},
                           {"model": f"{BASE}+{adapters['calendar']}", "parameters": {"weight": -1.0}}]}
    add("task_arithmetic: all three − calendar", "model", *model_level("negation", negation))
    return rows


def print_table(rows: list[dict]) -> None:
    tasks = list(TASKS)
    print("\n| method | level | " + " | ".join(tasks) + " | mean |")
    print("|---|---|" + "---|" * (len(tasks) + 1))
    for r in rows:
        print(f"| {r['method']} | {r['level']} | " + " | ".join(f"{100 * r[t]:.0f}%" for t in tasks)
              + f" | {100 * r['mean']:.0f}% |")


CHILD = r"""
import json, sys, time, warnings
warnings.simplefilter("ignore")
tool, recipe, out = sys.argv[1:4]
start = time.perf_counter()
if tool == "lorakit":
    from lorakit.merge import merge_models
    merge_models(recipe, out, overwrite=True)
elif tool == "mergekit":
    import yaml
    from mergekit.config import MergeConfiguration
    from mergekit.merge import MergeOptions, run_merge
    run_merge(MergeConfiguration.model_validate(yaml.safe_load(open(recipe))), out,
              options=MergeOptions(copy_tokenizer=True, quiet=True, random_seed=0))
else:
    import torch, lorakit  # the floor: an interpreter with torch and lorakit imported
# VmHWM, not getrusage: after fork + exec, ru_maxrss starts at the parent's peak (the benchmark's own).
hwm = next(int(line.split()[1]) for line in open("/proc/self/status") if line.startswith("VmHWM:"))
print(json.dumps({"peak_rss_mib": hwm / 1024, "seconds": time.perf_counter() - start}))
"""


def part_rss(out: Path, adapters: dict[str, Path], repeats: int) -> dict:
    from lorakit.merge import merge_adapter_to_dir

    inputs = [local_dir(BASE)]
    for task in list(adapters)[:2]:
        target = out / "finetuned" / task
        if not (target / "config.json").is_file():
            log(f"materialising the {task} fine-tune (lorakit merge)")
            merge_adapter_to_dir(adapters[task], target)
        inputs.append(target)
    recipe = {"merge_method": "ties", "base_model": str(inputs[0]), "dtype": "float32",
              "models": [{"model": str(m), "parameters": {"weight": 1.0, "density": 0.5}} for m in inputs[1:]]}
    path = out / "rss_recipe.yaml"
    path.write_text(yaml.safe_dump(recipe, sort_keys=False))
    sizes = [sum(f.stat().st_size for f in Path(m).glob("*.safetensors")) / 2 ** 20 for m in inputs]
    results: dict[str, list[dict]] = {"floor": [], "lorakit": [], "mergekit": []}
    for i in range(repeats):
        for tool in (["floor", "lorakit", "mergekit"] if i % 2 == 0 else ["mergekit", "lorakit", "floor"]):
            target = out / f"rss_{tool}"
            done = subprocess.run([sys.executable, "-c", CHILD, tool, str(path), str(target)], capture_output=True,
                                  text=True, env={**os.environ, "OMP_NUM_THREADS": "2"})
            if done.returncode:
                sys.exit(f"{tool} failed:\n{done.stderr[-2000:]}")
            results[tool].append(json.loads(done.stdout.strip().splitlines()[-1]))
            log(f"  {tool}: {results[tool][-1]}")
            shutil.rmtree(target, ignore_errors=True)
    med = {t: {k: sorted(r[k] for r in rs)[len(rs) // 2] for k in ("peak_rss_mib", "seconds")} for t, rs in results.items()}
    summary = {"model_mib": sizes, "median": med, "runs": results}
    print(f"\nmerging 3 copies of SmolLM2-135M (fp32 safetensors: {', '.join(f'{s:.0f}' for s in sizes)} MiB; "
          f"inputs {sum(sizes):.0f} MiB), TIES, {repeats} runs each, medians:")
    print("| | peak RSS | above the floor (python + torch + lorakit imported) | wall time |\n|---|---|---|---|")
    floor = med["floor"]["peak_rss_mib"]
    for tool in ("floor", "lorakit", "mergekit"):
        m = med[tool]
        above = "" if tool == "floor" else f"{m['peak_rss_mib'] - floor:.0f} MiB"
        print(f"| {tool} | {m['peak_rss_mib']:.0f} MiB | {above} | {m['seconds']:.1f} s |")
    print(f"lorakit / mergekit: peak RSS {med['lorakit']['peak_rss_mib'] / med['mergekit']['peak_rss_mib']:.2f}x, "
          f"wall {med['lorakit']['seconds'] / med['mergekit']['seconds']:.2f}x")
    return summary


def part_extract(out: Path, adapters: dict[str, Path], scorer: Scorer, tokenizer) -> dict:
    from lorakit.io import read_config, read_weights
    from lorakit.merge import merge_adapter_to_dir
    from lorakit.merge.sources import lora_modules

    tuned = out / "finetuned" / "calendar"
    if not (tuned / "config.json").is_file():
        merge_adapter_to_dir(adapters["calendar"], tuned)
    truth, _, _ = lora_modules(read_config(adapters["calendar"]), read_weights(adapters["calendar"]), "truth")
    summary = {}
    for label, options in {"rank 16": {"rank": 16}, "energy 0.9": {"energy": 0.9}}.items():
        target = out / "extracted" / label.replace(" ", "_")
        start = time.perf_counter()
        result = lorakit.extract_lora(BASE, str(tuned), target, overwrite=True, **options)
        seconds = time.perf_counter() - start
        found, _, _ = lora_modules(read_config(target), read_weights(target), "extracted")
        err2 = ref2 = 0.0
        with torch.no_grad():
            for module, adapter in truth.items():
                true = adapter.delta_weight(torch.float32)
                err2 += float((found[module].delta_weight(torch.float32) - true).pow(2).sum())
                ref2 += float(true.pow(2).sum())
        model, _ = load_causal_lm(BASE)
        lorakit.load_adapter(model, target)
        scores = scorer(model)
        ranks = sorted(r for r, _ in result.layers.values())
        summary[label] = {"relative_error": (err2 / ref2) ** 0.5, "kept_energy": result.kept_energy,
                          "rank_min": ranks[0], "rank_median": ranks[len(ranks) // 2], "rank_max": ranks[-1],
                          "calendar_exact_match": scores["calendar"], "seconds": seconds}
        log(f"  extract {label}: {summary[label]}")
    print("\n| extraction | ranks (min / median / max) | kept ‖ΔW‖² | ‖ΔW_extracted − ΔW‖ / ‖ΔW‖ | calendar exact match | time |")
    print("|---|---|---|---|---|---|")
    for label, s in summary.items():
        print(f"| {label} | {s['rank_min']} / {s['rank_median']} / {s['rank_max']} | {100 * s['kept_energy']:.2f}% | "
              f"{s['relative_error']:.2e} | {100 * s['calendar_exact_match']:.0f}% | {s['seconds']:.0f} s |")
    return summary


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--part", nargs="+", default=["table", "rss", "extract"], choices=["table", "rss", "extract"])
    p.add_argument("--out", default="runs/bench-merging", help="adapters, merged models and results go here")
    p.add_argument("--steps", type=int, default=30, help="training steps per adapter")
    p.add_argument("--rows", type=int, default=40, help="held-out rows scored per task")
    p.add_argument("--batch-size", type=int, default=20)
    p.add_argument("--repeats", type=int, default=3, help="runs per tool in the rss part")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    warnings.simplefilter("ignore")
    from transformers.utils import logging as hf_logging

    hf_logging.set_verbosity_error()
    hf_logging.disable_progress_bar()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    start = time.perf_counter()
    adapters = train_adapters(out, args.steps)
    results = {"args": vars(args)}
    if {"table", "extract"} & set(args.part):
        model, tokenizer = load_causal_lm(BASE)
        scorer = Scorer(tokenizer, args.rows, args.batch_size)
        if "table" in args.part:
            for task, adapter in adapters.items():
                lorakit.load_adapter(model, adapter, adapter_name=task)
            log("scoring base, single adapters and merges")
            results["table"] = part_table(out, adapters, scorer, model, args.seed)
            print_table(results["table"])
        del model
        if "extract" in args.part:
            results["extract"] = part_extract(out, adapters, scorer, tokenizer)
    if "rss" in args.part:
        results["rss"] = part_rss(out, adapters, args.repeats)
    (out / "results.json").write_text(json.dumps(results, indent=2, default=str))
    log(f"done in {time.perf_counter() - start:.0f}s; results in {out / 'results.json'}")


if __name__ == "__main__":
    main()
