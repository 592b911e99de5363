"""Every PEFT method side by side on two real tasks: trainable share, peak memory, step time, quality.

    python benchmarks/methods.py                            # both tasks, every method (~30 min on 2 cores)
    python benchmarks/methods.py --tasks sft --runs LoRA,IA3
    python benchmarks/methods.py --markdown                 # also print the README table

Tasks (the bundled data, so the run is offline and the same everywhere):
- sft: SmolLM2-135M-Instruct (fp32) on the calendar-notes task (bundled:quickstart_train, 400 notes),
  held-out exact match of greedy answers on the 60 notes of bundled:quickstart_eval;
- classification: all-MiniLM-L6-v2 with a new head on the support-ticket set (bundled:classify_train,
  600 rows), held-out accuracy on bundled:classify_eval (150 rows).
Budgets fit a 2-core CPU: SFT 30 optimizer steps of ≤ 512 tokens (max_length 128, as the
quickstart), classification 60 steps of ≤ 1024 tokens (max_length 64). Each method keeps its own
learning rate (its usual range: adapters with few parameters want larger ones) and runs in a fresh
process, so its peak RSS is its own (model, optimizer state, activations, eval). Same seed, same
batches in the same order for every method.

Step time is the median, over steps 3.., of each step's time divided by LoRA's time for the same
step (the same batch): a paired ratio. Runs are sequential, so a busy machine still adds noise;
run under `flock /tmp/lorakit-heavy.lock` on a shared one. Methods registered later (the prompt
family) join the table when `lorakit.methods.METHODS` has them.
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from _common import peak_rss_mib  # noqa: E402

LLAMA_LINEAR = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]
BERT_LINEAR = ["query", "key", "value", "dense"]

# name -> (method, section, lr) per task; sections use each method's config fields (peft's names).
# VeRA and AdaLoRA use their shipped configs' rates (configs/vera.yaml, configs/adalora.yaml: 5e-2, 1e-2).
SAME_ON_BOTH: dict[str, tuple[str, dict, float]] = {
    "IA3": ("ia3", {}, 3e-2),
    "Bottleneck houlsby": ("bottleneck", {"placement": "houlsby", "reduction_factor": 16}, 2e-3),
    "Bottleneck pfeiffer": ("bottleneck", {"placement": "pfeiffer", "reduction_factor": 16}, 2e-3),
    "Bottleneck parallel": ("bottleneck", {"placement": "parallel", "reduction_factor": 16}, 2e-3),
    "Prompt tuning": ("prompt_tuning", {"num_virtual_tokens": 20}, 3e-2),
    "P-tuning": ("p_tuning", {"num_virtual_tokens": 20}, 1e-2),
    "Prefix tuning": ("prefix_tuning", {"num_virtual_tokens": 20}, 1e-2),
}
SFT_RUNS: dict[str, tuple[str, dict, float]] = {
    "LoRA": ("lora", {"r": 16, "lora_alpha": 32, "target_modules": "all-linear"}, 2e-3),
    "DoRA": ("lora", {"r": 16, "lora_alpha": 32, "target_modules": "all-linear", "use_dora": True}, 2e-3),
    "VeRA": ("vera", {"r": 64, "target_modules": LLAMA_LINEAR}, 5e-2),
    "AdaLoRA": ("adalora", {"init_r": 16, "target_r": 8, "lora_alpha": 32, "tinit": 4, "tfinal": 6, "deltaT": 2,
                            "target_modules": "all-linear"}, 1e-2),
    **SAME_ON_BOTH,
    "Full FT": ("full", {}, 5e-5),
}
CLS_RUNS: dict[str, tuple[str, dict, float]] = {
    "LoRA": ("lora", {"r": 8, "lora_alpha": 16, "target_modules": BERT_LINEAR}, 2e-3),
    "DoRA": ("lora", {"r": 8, "lora_alpha": 16, "target_modules": BERT_LINEAR, "use_dora": True}, 2e-3),
    "VeRA": ("vera", {"r": 64, "target_modules": BERT_LINEAR}, 5e-2),
    "AdaLoRA": ("adalora", {"init_r": 8, "target_r": 4, "lora_alpha": 16, "tinit": 6, "tfinal": 12, "deltaT": 2,
                            "target_modules": BERT_LINEAR}, 1e-2),
    **SAME_ON_BOTH,
    "Full FT": ("full", {}, 2e-4),
}
TASKS = {
    "sft": {
        "runs": SFT_RUNS,
        "base": {"task": "sft", "model": {"name": "smollm2-135m-instruct"},
                 "data": {"train": "bundled:quickstart_train", "eval": "bundled:quickstart_eval", "max_length": 128,
                          "batching": "grouped", "max_tokens": 512},
                 "train": {"steps": 30, "schedule": "cosine", "warmup_steps": 3, "seed": 0, "device": "cpu"},
                 "eval": {"max_new_tokens": 24, "batch_size": 30}},
        "metric": "exact_match",
    },
    "classification": {
        "runs": CLS_RUNS,
        "base": {"task": "classification", "model": {"name": "all-minilm-l6-v2"},
                 "data": {"train": "bundled:classify_train", "eval": "bundled:classify_eval", "max_length": 64,
                          "max_tokens": 1024},
                 "train": {"steps": 60, "schedule": "cosine", "warmup_steps": 5, "seed": 0, "device": "cpu"}},
        "metric": "accuracy",
    },
}


def run_config(task: str, name: str, output_dir: str):
    """The RunConfig of one benchmark run."""
    from lorakit.train.config import RunConfig
    from lorakit.yamlconfig import load_config

    method, section, lr = TASKS[task]["runs"][name]
    data = json.loads(json.dumps(TASKS[task]["base"]))
    data.update(method=method, output_dir=output_dir)
    data["train"]["lr"] = lr
    if section:
        data[method] = section
    return load_config(RunConfig, None, [], base=data)


def one(task: str, name: str, out_json: str) -> None:
    """Child process: train and evaluate one method, write its figures as JSON."""
    import torch

    from lorakit.inject import trainable_parameters
    from lorakit.train.loop import train
    from lorakit.train.prepare import prepare

    torch.set_num_threads(int(os.environ.get("BENCH_THREADS", "2")))
    with tempfile.TemporaryDirectory() as tmp:
        config = run_config(task, name, tmp)
        t0 = time.perf_counter()
        run = prepare(config)
        trainable, total = trainable_parameters(run.model)
        result = train(config, run=run, quiet=True)
        rows = [json.loads(line) for line in (Path(tmp) / "metrics.jsonl").read_text().splitlines()]
        elapsed = [r["elapsed_s"] for r in rows if r.get("split") == "train"]
    steps = [b - a for a, b in zip([0.0] + elapsed, elapsed)]
    metric = getattr(result.final_eval, TASKS[task]["metric"])
    Path(out_json).write_text(json.dumps({
        "trainable": trainable, "total": total, "peak_rss_mib": peak_rss_mib(), "step_s": steps,
        "metric": metric, "eval_loss": result.final_eval.loss, "wall_s": time.perf_counter() - t0}))


def paired_ratio(steps: list[float], ref: list[float], skip: int = 2) -> float:
    """Median over steps (after `skip` warm-up steps) of this step's time / the reference's same step."""
    return statistics.median(a / b for a, b in list(zip(steps, ref))[skip:])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--tasks", default="sft,classification")
    ap.add_argument("--runs", default=None, help="comma-separated run names (default: every registered method)")
    ap.add_argument("--markdown", action="store_true", help="also print the table as markdown")
    ap.add_argument("--one", nargs=3, metavar=("TASK", "NAME", "OUT_JSON"), help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.one:
        one(*args.one)
        return
    from lorakit.methods import METHODS

    results: dict[str, dict[str, dict]] = {}
    for task in args.tasks.split(","):
        runs = TASKS[task]["runs"]
        names = [n for n in (args.runs.split(",") if args.runs else runs) if runs[n][0] in (*METHODS, "full")]
        if "LoRA" not in names:
            names.insert(0, "LoRA")  # the reference of the step-time ratios
        results[task] = {}
        for name in names:
            with tempfile.NamedTemporaryFile(suffix=".json") as f:
                start = time.perf_counter()
                proc = subprocess.run([sys.executable, __file__, "--one", task, name, f.name],
                                      capture_output=True, text=True)
                if proc.returncode != 0:
                    print(f"{task} {name}: FAILED\n{proc.stderr[-2000:]}", file=sys.stderr)
                    continue
                results[task][name] = json.loads(Path(f.name).read_text())
            r = results[task][name]
            print(f"[{task}] {name}: {TASKS[task]['metric']} {r['metric']:.3f}, {time.perf_counter() - start:.0f}s",
                  flush=True)
        print_table(task, results[task], args.markdown)


def print_table(task: str, res: dict[str, dict], markdown: bool) -> None:
    ref = res.get("LoRA")
    metric = TASKS[task]["metric"].replace("_", " ")
    head = ("method", "trainable", "trainable %", "peak RSS MiB", "step ms (median)", "step / LoRA", metric,
            "eval loss")
    rows = []
    for name, r in res.items():
        steps = r["step_s"][2:] or r["step_s"]
        rows.append((name, f"{r['trainable']:,}", f"{100 * r['trainable'] / r['total']:.3f}",
                     f"{r['peak_rss_mib']:.0f}", f"{1e3 * statistics.median(steps):.0f}",
                     f"{paired_ratio(r['step_s'], ref['step_s']):.2f}" if ref else "-",
                     f"{r['metric']:.3f}", f"{r['eval_loss']:.3f}"))
    widths = [max(len(str(x)) for x in col) for col in zip(head, *rows)]
    print(f"\n{task}:")
    for row in (head, *rows):
        print("  ".join(str(c).ljust(w) for c, w in zip(row, widths)).rstrip())
    if markdown:
        print("\n| " + " | ".join(head) + " |\n|" + "---|" * len(head))
        for row in rows:
            print("| " + " | ".join(row) + " |")


if __name__ == "__main__":
    main()
