"""Checkpoints that survive a kill at any moment: written to a temp directory, fsynced, renamed.

    <output_dir>/checkpoints/step-000050/
        adapter/                  the adapter in peft's format (usable on its own)
        trainable.safetensors     every trainable tensor by module path (what resume restores)
        optimizer.pt              optimizer + scheduler state and the torch RNG (tensors and numbers only)
        trainer_state.json        step, data position, eval history, Python RNG
        config.yaml               the resolved run config
        aux.safetensors           what the loss trains besides the model, if anything (distillation's projections)
Resuming reads `optimizer.pt` with `torch.load(weights_only=True)`: no arbitrary unpickling.

A SIGKILL at any moment leaves every `step-*` directory complete: a checkpoint is built under
`.tmp-step-*` and renamed into place; an old one is renamed to `.trash-*` before it is deleted.
`check` reads a checkpoint's files far enough to know `restore` will succeed, before a resumed
run touches anything.
"""
from __future__ import annotations

import json
import os
import random
import shutil
import zipfile
from pathlib import Path
from typing import Callable, Optional

import torch
from safetensors.torch import load_file, save_file
from torch import nn

from ..errors import InputError
from ..files import read_json
from ..io.shards import check_safetensors

PREFIX = "step-"


class CheckpointError(InputError):
    """A checkpoint that cannot be resumed from: names the file and what is wrong."""


def checkpoint_root(output_dir: Path) -> Path:
    return Path(output_dir) / "checkpoints"


def latest(output_dir: Path) -> Optional[Path]:
    """The newest complete checkpoint, or None."""
    root = checkpoint_root(output_dir)
    done = sorted(p for p in root.glob(f"{PREFIX}*") if (p / "trainer_state.json").is_file()) if root.is_dir() else []
    return done[-1] if done else None


def save(output_dir: Path, step: int, model: nn.Module, optimizer, scheduler, state: dict,
         write_extras: Callable[[Path], None], keep_last: int) -> Path:
    """Write checkpoint `step` atomically and prune all but the newest `keep_last`."""
    root = checkpoint_root(output_dir)
    root.mkdir(parents=True, exist_ok=True)
    for leftover in (*root.glob(f".tmp-{PREFIX}*"), *root.glob(f".trash-{PREFIX}*")):  # from a killed run
        shutil.rmtree(leftover, ignore_errors=True)
    final = root / f"{PREFIX}{step:06d}"
    tmp = root / f".tmp-{PREFIX}{step:06d}"
    tmp.mkdir()
    trainable = {n: p.detach().cpu().contiguous() for n, p in model.named_parameters() if p.requires_grad}
    save_file(trainable, str(tmp / "trainable.safetensors"))
    torch.save({"optimizer": optimizer.state_dict(), "scheduler": scheduler.state_dict(),
                "torch_rng": torch.get_rng_state()}, tmp / "optimizer.pt")
    py_state = random.getstate()
    full_state = dict(state, step=step, python_rng=[py_state[0], list(py_state[1]), py_state[2]])
    write_extras(tmp)
    (tmp / "trainer_state.json").write_text(json.dumps(full_state, indent=1))
    _fsync_tree(tmp)
    if final.exists():
        _remove(final)
    os.replace(tmp, final)
    _fsync_dir(root)
    for old in sorted(p for p in root.glob(f"{PREFIX}*"))[:-keep_last]:
        _remove(old)
    return final


def _remove(path: Path) -> None:
    """Delete a checkpoint so that a kill midway never leaves a partial one under a `step-*` name."""
    trash = path.with_name(f".trash-{path.name}")
    shutil.rmtree(trash, ignore_errors=True)
    os.replace(path, trash)
    shutil.rmtree(trash, ignore_errors=True)


STATE_KEYS = {"step": int, "batches": dict, "python_rng": list}


def check(path: Path, model: Optional[nn.Module] = None) -> None:
    """Raise CheckpointError unless `restore(path, ...)` can read every file (cheap: headers, the zip
    directory and the JSON state; with `model`, the tensor names and shapes must be its trainable ones)."""
    tensors = check_safetensors(path / "trainable.safetensors", CheckpointError)
    optimizer = path / "optimizer.pt"
    if not optimizer.is_file():
        raise CheckpointError(f"{optimizer}: missing")
    try:
        with zipfile.ZipFile(optimizer) as z:
            z.namelist()
    except (zipfile.BadZipFile, OSError) as e:
        raise CheckpointError(f"{optimizer}: truncated or corrupt ({e})") from None
    state = read_json(path / "trainer_state.json", CheckpointError, expect=dict)
    for key, kind in STATE_KEYS.items():
        if not isinstance(state.get(key), kind) or isinstance(state.get(key), bool):
            raise CheckpointError(f"{path / 'trainer_state.json'}: {key}: missing or not {kind.__name__}")
    if model is not None:
        _check_fits(path, model, {k: tuple(v["shape"]) for k, v in tensors.items()})


def _check_fits(path: Path, model: nn.Module, shapes: dict[str, tuple]) -> None:
    params = {n: tuple(p.shape) for n, p in model.named_parameters() if p.requires_grad}
    missing = sorted(set(params) - set(shapes))
    unknown = sorted(set(shapes) - set(params))
    wrong = sorted(f"{n} (checkpoint {shapes[n]} vs model {params[n]})" for n in set(params) & set(shapes)
                   if params[n] != shapes[n])
    problems = [f"{label}: {', '.join(items[:2])}{' ...' if len(items) > 2 else ''}"
                for label, items in (("missing", missing), ("unknown", unknown), ("wrong shapes", wrong)) if items]
    if problems:
        raise CheckpointError(f"{path}: checkpoint does not match this run's model and adapter "
                              f"(was the config changed?): {'; '.join(problems)}")


def restore(path: Path, model: nn.Module, optimizer, scheduler) -> dict:
    """Load a checkpoint written by `save` into live objects; returns the trainer state dict."""
    params = dict(model.named_parameters())
    tensors = load_file(str(path / "trainable.safetensors"))
    _check_fits(path, model, {k: tuple(t.shape) for k, t in tensors.items()})
    with torch.no_grad():
        for name, t in tensors.items():
            params[name].copy_(t)
    blob = torch.load(path / "optimizer.pt", weights_only=True, map_location="cpu")
    optimizer.load_state_dict(blob["optimizer"])
    scheduler.load_state_dict(blob["scheduler"])
    torch.set_rng_state(blob["torch_rng"])
    state = json.loads((path / "trainer_state.json").read_text())
    version, internal, gauss = state["python_rng"]
    random.setstate((version, tuple(internal), gauss))
    return state


def _fsync_tree(path: Path) -> None:
    for p in path.rglob("*"):
        if p.is_file():
            with open(p, "rb") as f:
                os.fsync(f.fileno())
    _fsync_dir(path)


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
