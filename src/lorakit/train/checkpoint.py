"""Checkpoints that survive a kill at any moment: written to a temp directory, fsynced, renamed.

    <output_dir>/checkpoints/step-000050/
        adapter/                  the adapter in peft's format (usable on its own)
        trainable.safetensors     every trainable tensor by module path (what resume restores)
        optimizer.pt              optimizer + scheduler state and the torch RNG (tensors and numbers only)
        trainer_state.json        step, data position, eval history, Python RNG
        config.yaml               the resolved run config
        aux.safetensors           what the loss trains besides the model, if anything (distillation's projections)
Resuming reads `optimizer.pt` with `torch.load(weights_only=True)`: no arbitrary unpickling.
"""
from __future__ import annotations

import json
import os
import random
import shutil
from pathlib import Path
from typing import Callable, Optional

import torch
from safetensors.torch import load_file, save_file
from torch import nn

from ..errors import InputError

PREFIX = "step-"


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
    final = root / f"{PREFIX}{step:06d}"
    tmp = root / f".tmp-{PREFIX}{step:06d}"
    shutil.rmtree(tmp, ignore_errors=True)
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
        shutil.rmtree(final)
    os.replace(tmp, final)
    _fsync_dir(root)
    for old in sorted(p for p in root.glob(f"{PREFIX}*"))[:-keep_last]:
        shutil.rmtree(old, ignore_errors=True)
    return final


def restore(path: Path, model: nn.Module, optimizer, scheduler) -> dict:
    """Load a checkpoint written by `save` into live objects; returns the trainer state dict."""
    params = dict(model.named_parameters())
    tensors = load_file(str(path / "trainable.safetensors"))
    missing = sorted(n for n, p in params.items() if p.requires_grad and n not in tensors)
    unknown = sorted(n for n in tensors if n not in params)
    if missing or unknown:
        raise InputError(f"{path}: checkpoint does not match this run (missing {missing[:3]}, unknown {unknown[:3]})")
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
