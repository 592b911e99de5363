#!/usr/bin/env python
"""Chaos test for `lorakit train --resume`: SIGKILL a training process at random points, N times.

    python scripts/chaos_resume.py 20                # 20 kills, a report, exit code 0 when all held
    python scripts/chaos_resume.py 3 --seed 1 --workdir /tmp/chaos --keep

A tiny Llama (character-level tokenizer, `tests/helpers.py`, no download) trains LoRA with dropout for
`--steps` steps, a checkpoint every 2 steps, in a real `python -m lorakit train` subprocess. First
one uninterrupted reference run; then N rounds, each in a fresh output_dir:

1. start a run and SIGKILL it at a random point: half the rounds during a random optimizer step
   (0-10 ms after the metrics show the step before it, outside a checkpoint write), half while a
   checkpoint is being written (the moment a `.tmp-step-*` directory appears). Where each kill
   really landed is read off the output dir (a checkpoint's temporary directory present or not)
   and counted in the summary;
2. check that every `step-*` checkpoint left behind is complete and readable (tensors, optimizer
   state, trainer state, and its adapter through `lorakit.io`);
3. one round in three, `--resume` and SIGKILL that run too (a resumed run must survive a kill);
4. `--resume` to the end (a plain run when no checkpoint had been written yet) and compare: the
   final adapter must equal the reference's to 1e-6 and metrics.jsonl must hold each step's loss
   exactly once, equal to the reference's.

Prints one line per round and a summary; exits 1 if any round failed.
"""
from __future__ import annotations

import argparse
import json
import os
import random
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SAVE_EVERY = 2
TOLERANCE = 1e-6


def build_assets(work: Path, rows: int) -> Path:
    """A tiny Llama with a character-level tokenizer (tests/helpers.py) over the bundled quickstart rows."""
    sys.path.insert(0, str(ROOT / "tests"))
    from helpers import tiny_char_lm_dir

    from lorakit.data.bundled import path as bundled

    lines = bundled("quickstart_train").read_text(encoding="utf-8").splitlines()[:rows]
    (work / "train.jsonl").write_text("\n".join(lines) + "\n", encoding="utf-8")
    texts = [m["content"] + m["role"] for line in lines for m in json.loads(line)["messages"]]
    return tiny_char_lm_dir(work / "model", texts)


def write_config(work: Path, model_dir: Path, steps: int) -> Path:
    import yaml

    config = {
        "model": {"name": str(model_dir)},
        "lora": {"r": 4, "lora_alpha": 8, "lora_dropout": 0.1, "target_modules": "all-linear"},
        "data": {"train": str(work / "train.jsonl"), "max_length": 160, "max_tokens": 640},
        "train": {"steps": steps, "lr": 1.0e-2, "schedule": "cosine", "warmup_steps": 2, "save_every": SAVE_EVERY,
                  "keep_last": 2, "seed": 0},
        "output_dir": str(work / "unused"),
    }
    path = work / "run.yaml"
    path.write_text(yaml.safe_dump(config, sort_keys=False), encoding="utf-8")
    return path


def command(config: Path, out: Path, resume: bool) -> list[str]:
    return [sys.executable, "-m", "lorakit", "train", str(config), f"output_dir={out}",
            *(["--resume"] if resume else [])]


def child_env() -> dict:
    env = dict(os.environ, OMP_NUM_THREADS="1", OMP_WAIT_POLICY="PASSIVE")
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT / "src"), env.get("PYTHONPATH")]))
    return env


def run_to_end(config: Path, out: Path, resume: bool) -> None:
    proc = subprocess.run(command(config, out, resume), env=child_env(), capture_output=True, text=True)
    if proc.returncode != 0:
        raise RuntimeError(f"training {'--resume ' if resume else ''}exited {proc.returncode}: "
                           f"{proc.stderr.strip().splitlines()[-1:] or proc.stdout[-300:]}")


def logged_steps(out: Path) -> int:
    try:
        lines = (out / "metrics.jsonl").read_text().splitlines()
    except OSError:
        return 0
    steps = []
    for line in lines:
        try:
            row = json.loads(line)
        except json.JSONDecodeError:
            continue
        if row.get("split") == "train":
            steps.append(row["step"])
    return max(steps, default=0)


def in_checkpoint_write(out: Path) -> bool:
    root = out / "checkpoints"
    try:
        return any(e.name.startswith((".tmp-", ".trash-")) for e in os.scandir(root))
    except OSError:
        return False


def kill_run(config: Path, out: Path, resume: bool, rng: random.Random, phase: str, steps: int) -> str:
    """Start a run, SIGKILL it at a random point of `phase` ("step" or "checkpoint"); returns where it died."""
    first = logged_steps(out) if resume else 0
    target = rng.randint(first + 1, steps)
    delay = rng.uniform(0.0, 0.01)
    proc = subprocess.Popen(command(config, out, resume), env=child_env(), stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 600
    try:
        while proc.poll() is None and time.monotonic() < deadline:
            if phase == "checkpoint" and logged_steps(out) >= target - 1 and in_checkpoint_write(out):
                break
            if phase == "step" and logged_steps(out) >= target - 1 and (out / "metrics.jsonl").exists() \
                    and not in_checkpoint_write(out):
                time.sleep(delay)
                break
            time.sleep(0.001)
        if proc.poll() is not None:
            return "finished before the kill"
        writing = in_checkpoint_write(out)
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        writing = writing or in_checkpoint_write(out)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    return f"{'checkpoint write' if writing else 'step'} (after step {logged_steps(out)})"


def check_checkpoints(out: Path) -> int:
    """Every complete `step-*` checkpoint must load in full; returns how many there are."""
    import torch
    from safetensors.torch import load_file

    from lorakit.io import read_config, read_weights
    from lorakit.train import checkpoint

    root = out / "checkpoints"
    done = sorted(root.glob("step-*")) if root.is_dir() else []
    for path in done:
        checkpoint.check(path)
        load_file(str(path / "trainable.safetensors"))
        torch.load(path / "optimizer.pt", weights_only=True, map_location="cpu")
        json.loads((path / "trainer_state.json").read_text())
        read_config(path / "adapter")
        read_weights(path / "adapter")
    return len(done)


def compare(out: Path, reference: Path, steps: int) -> float:
    """Max |Δ| between the final adapters; raises if the adapters or the logged losses differ."""
    from safetensors.torch import load_file

    ours = load_file(str(out / "adapter" / "adapter_model.safetensors"))
    theirs = load_file(str(reference / "adapter" / "adapter_model.safetensors"))
    if ours.keys() != theirs.keys():
        raise AssertionError("adapter keys differ from the reference run's")
    worst = max(float((ours[k].double() - theirs[k].double()).abs().max()) for k in ours)
    if worst > TOLERANCE:
        raise AssertionError(f"final adapter differs from the reference run by {worst:.3g} (> {TOLERANCE})")
    losses = [(r["step"], r["loss"]) for r in map(json.loads, (out / "metrics.jsonl").read_text().splitlines())
              if r.get("split") == "train"]
    expected = [(r["step"], r["loss"]) for r in map(json.loads, (reference / "metrics.jsonl").read_text().splitlines())
                if r.get("split") == "train"]
    if [s for s, _ in losses] != list(range(1, steps + 1)):
        raise AssertionError(f"metrics.jsonl train steps are {[s for s, _ in losses]}, expected 1..{steps} once each")
    bad = [s for (s, a), (_, b) in zip(losses, expected) if abs(a - b) > TOLERANCE * max(1.0, abs(b))]
    if bad:
        raise AssertionError(f"logged losses differ from the reference run at steps {bad}")
    return worst


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("n", type=int, help="number of kill rounds")
    p.add_argument("--seed", type=int, default=0, help="seed of the kill points")
    p.add_argument("--steps", type=int, default=12, help="optimizer steps of each run")
    p.add_argument("--rows", type=int, default=48, help="training rows")
    p.add_argument("--workdir", type=Path, help="where runs go (default: a temporary directory)")
    p.add_argument("--keep", action="store_true", help="keep the work directory")
    args = p.parse_args(argv)
    sys.path.insert(0, str(ROOT / "src"))
    work = args.workdir or Path(tempfile.mkdtemp(prefix="lorakit-chaos-"))
    work.mkdir(parents=True, exist_ok=True)
    rng = random.Random(args.seed)
    start = time.perf_counter()
    try:
        config = write_config(work, build_assets(work, args.rows), args.steps)
        reference = work / "reference"
        run_to_end(config, reference, resume=False)
        failures, where = 0, {}
        for i in range(args.n):
            out = work / f"round-{i:03d}"
            shutil.rmtree(out, ignore_errors=True)
            notes = []
            try:
                phase = "step" if i % 2 == 0 else "checkpoint"
                died = kill_run(config, out, False, rng, phase, args.steps)
                where[died.split(" (")[0]] = where.get(died.split(" (")[0], 0) + 1
                notes.append(f"killed in {died}; {check_checkpoints(out)} checkpoints readable")
                if i % 3 == 2 and check_checkpoints(out):
                    died = kill_run(config, out, True, rng, rng.choice(["step", "checkpoint"]), args.steps)
                    notes.append(f"resume killed in {died}; {check_checkpoints(out)} readable")
                resumed = check_checkpoints(out) > 0
                run_to_end(config, out, resume=resumed)
                worst = compare(out, reference, args.steps)
                how = "resumed" if resumed else "restarted (no checkpoint yet)"
                notes.append(f"{how}; max |Δ adapter| {worst:.1e}")
                print(f"round {i + 1}/{args.n}: ok: " + "; ".join(notes), flush=True)
            except Exception as e:  # noqa: BLE001  (a failed round is reported, the others still run)
                failures += 1
                print(f"round {i + 1}/{args.n}: FAILED: {'; '.join(notes)}; {type(e).__name__}: {e}", flush=True)
        kills = ", ".join(f"{k}: {v}" for k, v in sorted(where.items()))
        print(f"chaos resume: {args.n - failures}/{args.n} rounds ok ({kills}) in {time.perf_counter() - start:.0f}s")
        return 1 if failures else 0
    finally:
        if not args.keep and args.workdir is None:
            shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
