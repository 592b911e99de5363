"""Validate `lorakit analyze memory` against measured peak RSS of real training steps.

    python benchmarks/memory_estimator.py [--steps 3] [--batch-tokens 512,1024] [--repeats 1] [--out results.json]
    python benchmarks/memory_estimator.py --from a.json b.json     # re-print estimates for saved measurements

Each case (method lora | qlora | full, gradient checkpointing off | on, a batch-token budget) trains
`--steps` optimizer steps of the embedded SmolLM2-135M-Instruct with `lorakit.train.train` in a fresh
process (fp32, LoRA r=16 on every linear layer but the head, text rows truncated to `--row-tokens`
tokens so every micro-batch holds exactly the budget, no padding). The worker reads its resident set
after importing torch, transformers and lorakit (the baseline), then the peak RSS of loading the model
and tokenizer (`prepare`) and of the training steps; the checkpoint and adapter written after the
last step are excluded (their peak is kept in the JSON as save_peak_mib). Measured = max(load peak, step peak) − baseline,
next to `lorakit.analyze.estimate_memory` for the same shapes, and the error the estimate would have
without its `retained` term (live tensors only: the naive estimate). Peaks are Linux's VmHWM, reset
between phases through /proc/self/clear_refs.

The peak of the same case differs from process to process (what glibc keeps of the freed forward
temporaries depends on where earlier blocks landed; with gradient checkpointing the spread was 2-4
MLP working sets per layer, up to ±15% of the peak): `--repeats N` runs every case N times, and the
report (also over several `--from` files together) gives each case's median draw, the range, and the
estimate's error against the median and at both ends.
"""
from __future__ import annotations

import argparse
import itertools
import json
import os
import random
import re
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

MIB = 1 << 20
METHODS = ("lora", "qlora", "full")


def _status() -> dict[str, int]:
    text = Path("/proc/self/status").read_text()
    return {key: int(re.search(rf"{key}:\s+(\d+) kB", text).group(1)) * 1024 for key in ("VmRSS", "VmHWM")}


def _reset_peak() -> None:
    Path("/proc/self/clear_refs").write_text("5")


def _text_rows(n: int, words: int, seed: int) -> list[dict]:
    rng = random.Random(seed)
    vocab = ("the model learns a small update to every weight matrix while the base stays frozen and the "
             "optimizer keeps two moments for each trainable value so memory grows with what trains").split()
    return [{"text": " ".join(rng.choice(vocab) for _ in range(words))} for _ in range(n)]


def worker(method: str, checkpointing: bool, batch_tokens: int, row_tokens: int, steps: int, r: int) -> dict:
    import torch
    import transformers  # noqa: F401  (the import cost belongs to the baseline)
    import transformers.models.llama.modeling_llama  # noqa: F401
    import tokenizers  # noqa: F401

    from lorakit.train import loop
    from lorakit.train.config import RunConfig
    from lorakit.train.prepare import prepare

    torch.set_num_threads(1)
    with tempfile.TemporaryDirectory() as tmp:
        data = Path(tmp) / "train.jsonl"
        rows = _text_rows(4 * steps * max(1, batch_tokens // row_tokens), row_tokens * 2, seed=0)
        data.write_text("".join(json.dumps(row) + "\n" for row in rows))
        config = RunConfig.model_validate({
            "task": "sft", "method": "full" if method == "full" else "lora",
            "model": {"quantization": "nf4" if method == "qlora" else None,
                      "gradient_checkpointing": checkpointing},
            "lora": {"r": r, "lora_alpha": 2 * r, "target_modules": "all-linear"},
            "data": {"train": str(data), "format": "text", "max_length": row_tokens, "batching": "grouped",
                     "max_tokens": batch_tokens},
            "train": {"steps": steps, "lr": 1e-4, "seed": 0, "device": "cpu"},  # CPU RSS is what is measured
            "output_dir": str(Path(tmp) / "run"),
        })
        baseline = _status()["VmRSS"]
        _reset_peak()
        run = prepare(config)
        load = _status()
        shapes = {tuple(b["input_ids"].shape) for b in run.train_batches}
        phases: dict[str, int] = {}

        def before(name, fn):
            def wrapped(*args, **kwargs):
                phases.setdefault("steps", _status()["VmHWM"])  # the first save ends the last step
                _reset_peak()
                out = fn(*args, **kwargs)
                phases[name] = max(phases.get(name, 0), _status()["VmHWM"])
                return out
            return wrapped

        loop._save_checkpoint = before("checkpoint", loop._save_checkpoint)
        loop._write_artifacts = before("artifacts", loop._write_artifacts)
        _reset_peak()
        loop.train(config, run=run, quiet=True)
        rows_, length = max(shapes, key=lambda s: s[0] * s[1])
        return {"method": method, "gradient_checkpointing": checkpointing, "batch_tokens": batch_tokens,
                "rows": rows_, "seq_len": length, "r": r, "steps": steps,
                "baseline_mib": baseline / MIB, "load_peak_mib": (load["VmHWM"] - baseline) / MIB,
                "after_load_mib": (load["VmRSS"] - baseline) / MIB,
                "step_peak_mib": (phases["steps"] - baseline) / MIB,
                "save_peak_mib": (max(phases.get("checkpoint", 0), phases.get("artifacts", 0)) - baseline) / MIB}


def estimate(case: dict):
    from lorakit.analyze.memory import Method, estimate_memory, load_shape

    return estimate_memory(load_shape("smollm2-135m-instruct"), Method(case["method"]), r=case["r"],
                           batch_tokens=case["rows"] * case["seq_len"], gradient_checkpointing=case["gradient_checkpointing"])


def measured_mib(case: dict) -> float:
    return max(case["load_peak_mib"], case["step_peak_mib"])


def report(cases: list[dict]) -> None:
    """One line per case (method, checkpointing, tokens): the median of its draws and their range, the
    estimate's error against the median and against the range's ends, the live-tensor (naive) error, and
    the estimate's components."""
    names = ("weights", "adapter", "gradients", "optimizer", "activations", "retained", "loss", "transient", "runtime")
    groups: dict[tuple, list[dict]] = {}
    for case in cases:
        groups.setdefault((case["method"], case["gradient_checkpointing"], case["rows"] * case["seq_len"]),
                          []).append(case)
    print("MiB above the post-import baseline; measured = the median draw (range over n draws); "
          "components: * = live at the estimated peak")
    print(f"{'method':6s} {'ckpt':4s} {'tokens':>6s} {'n':>2s} | {'measured':>8s} {'range':>11s} | {'estimate':>8s} "
          f"{'error':>7s} {'error at the ends':>17s} {'w/o retained':>12s} | " + " ".join(f"{n[:9]:>10s}" for n in names))
    for (method, ckpt, tokens), draws in groups.items():
        values = sorted(measured_mib(c) for c in draws)
        median = statistics.median(values)
        est = estimate(draws[0])
        total = est.total / MIB
        peak = est.at_peak()
        live = max(est.forward_end() - est.retained, est.optimizer_step()) / MIB  # the tensors alone
        parts = " ".join(f"{v / MIB:9.0f}{'*' if peak[k] else ' '}" for k, v in est.components().items())
        err = lambda m: 100 * (total - m) / m  # noqa: E731
        print(f"{method:6s} {'on' if ckpt else 'off':4s} {tokens:6d} {len(values):2d} | {median:8.0f} "
              f"{values[0]:5.0f}-{values[-1]:<5.0f} | {total:8.0f} {err(median):+6.1f}% "
              f"{err(values[-1]):+7.1f}/{err(values[0]):+6.1f}% {100 * (live - median) / median:+11.1f}% | {parts}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--methods", default=",".join(METHODS))
    ap.add_argument("--batch-tokens", default="512,1024", help="comma-separated micro-batch token budgets")
    ap.add_argument("--row-tokens", type=int, default=256, help="tokens per row (rows are cut to this length)")
    ap.add_argument("--steps", type=int, default=3)
    ap.add_argument("--repeats", type=int, default=1, help="fresh processes per case (the peak varies between them)")
    ap.add_argument("--r", type=int, default=16)
    ap.add_argument("--checkpointing", default="off,on")
    ap.add_argument("--mmap-threshold", type=int,
                    help="run the workers with MALLOC_MMAP_THRESHOLD_=N (fixed: glibc then returns every block "
                         "above N bytes when it is freed, so RSS follows the live tensors; compare with the "
                         "'w/o retained' column)")
    ap.add_argument("--out", help="write the measurements here (JSON)")
    ap.add_argument("--from", dest="sources", nargs="+", metavar="JSON",
                    help="print estimates for measurements saved with --out (several files: their draws pooled)")
    ap.add_argument("--worker", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.worker:
        method, ckpt, tokens = args.worker.split(":")
        print(json.dumps(worker(method, ckpt == "on", int(tokens), args.row_tokens, args.steps, args.r)))
        return
    if args.sources:
        report([case for source in args.sources for case in json.loads(Path(source).read_text())])
        return
    cases = []
    env = dict(os.environ, OMP_NUM_THREADS="1")
    if args.mmap_threshold is not None:
        env["MALLOC_MMAP_THRESHOLD_"] = str(args.mmap_threshold)
    for repeat, method, ckpt, tokens in itertools.product(range(args.repeats), args.methods.split(","),
                                                          args.checkpointing.split(","), args.batch_tokens.split(",")):
        done = subprocess.run([sys.executable, __file__, "--worker", f"{method}:{ckpt}:{tokens}",
                               "--row-tokens", str(args.row_tokens), "--steps", str(args.steps),
                               "--r", str(args.r)], check=True, capture_output=True, text=True, env=env)
        case = json.loads(done.stdout.strip().splitlines()[-1])
        case["mmap_threshold"] = args.mmap_threshold
        case["repeat"] = repeat
        print(json.dumps(case), file=sys.stderr, flush=True)
        cases.append(case)
        if args.out:
            Path(args.out).write_text(json.dumps(cases, indent=1))
    report(cases)


if __name__ == "__main__":
    main()
