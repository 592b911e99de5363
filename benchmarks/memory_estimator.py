"""Validate `lorakit analyze memory` against measured peak RSS of real training steps.

    python benchmarks/memory_estimator.py [--steps 3] [--batch-tokens 512,1024] [--out results.json]
    python benchmarks/memory_estimator.py --from results.json      # re-print estimates for saved measurements

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
"""
from __future__ import annotations

import argparse
import json
import os
import random
import re
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
            "train": {"steps": steps, "lr": 1e-4, "seed": 0},
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


def report(cases: list[dict]) -> None:
    names = ("weights", "adapter", "gradients", "optimizer", "activations", "retained", "loss", "transient", "runtime")
    print("MiB above the post-import baseline; components: * = live at the estimated peak")
    print(f"{'method':6s} {'ckpt':4s} {'tokens':>6s} | {'load':>5s} {'steps':>6s} {'measured':>8s} | "
          f"{'estimate':>8s} {'error':>7s} {'w/o retained':>12s} | " + " ".join(f"{n[:9]:>10s}" for n in names))
    for case in cases:
        est = estimate(case)
        measured = max(case["load_peak_mib"], case["step_peak_mib"])
        total = est.total / MIB
        peak = est.at_peak()
        live = max(est.forward_end() - est.retained, est.optimizer_step()) / MIB  # the tensors alone
        parts = " ".join(f"{v / MIB:9.0f}{'*' if peak[k] else ' '}" for k, v in est.components().items())
        print(f"{case['method']:6s} {'on' if case['gradient_checkpointing'] else 'off':4s} "
              f"{case['rows'] * case['seq_len']:6d} | {case['load_peak_mib']:5.0f} {case['step_peak_mib']:6.0f} "
              f"{measured:8.0f} | {total:8.0f} {100 * (total - measured) / measured:+6.1f}% "
              f"{100 * (live - measured) / measured:+11.1f}% | {parts}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--methods", default=",".join(METHODS))
    ap.add_argument("--batch-tokens", default="512,1024", help="comma-separated micro-batch token budgets")
    ap.add_argument("--row-tokens", type=int, default=256, help="tokens per row (rows are cut to this length)")
    ap.add_argument("--steps", type=int, default=3)
    ap.add_argument("--r", type=int, default=16)
    ap.add_argument("--checkpointing", default="off,on")
    ap.add_argument("--mmap-threshold", type=int,
                    help="run the workers with MALLOC_MMAP_THRESHOLD_=N (fixed: glibc then returns every block "
                         "above N bytes when it is freed, so RSS follows the live tensors; compare with the "
                         "'w/o retained' column)")
    ap.add_argument("--out", help="write the measurements here (JSON)")
    ap.add_argument("--from", dest="source", help="print estimates for measurements saved with --out")
    ap.add_argument("--worker", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.worker:
        method, ckpt, tokens = args.worker.split(":")
        print(json.dumps(worker(method, ckpt == "on", int(tokens), args.row_tokens, args.steps, args.r)))
        return
    if args.source:
        report(json.loads(Path(args.source).read_text()))
        return
    cases = []
    env = dict(os.environ, OMP_NUM_THREADS="1")
    if args.mmap_threshold is not None:
        env["MALLOC_MMAP_THRESHOLD_"] = str(args.mmap_threshold)
    for method in args.methods.split(","):
        for ckpt in args.checkpointing.split(","):
            for tokens in args.batch_tokens.split(","):
                done = subprocess.run([sys.executable, __file__, "--worker", f"{method}:{ckpt}:{tokens}",
                                       "--row-tokens", str(args.row_tokens), "--steps", str(args.steps),
                                       "--r", str(args.r)], check=True, capture_output=True, text=True, env=env)
                case = json.loads(done.stdout.strip().splitlines()[-1])
                case["mmap_threshold"] = args.mmap_threshold
                print(json.dumps(case), file=sys.stderr, flush=True)
                cases.append(case)
                if args.out:
                    Path(args.out).write_text(json.dumps(cases, indent=1))
    report(cases)


if __name__ == "__main__":
    main()
