"""Continual learning in the trainer: continuing an adapter, the Fisher of a run, EWC, progressive LoRA.

Continue from an adapter (`train.init_adapter: DIR`): the run's adapter is built from its own config
as usual, then takes DIR's weights (key set and shapes checked, so a different method, rank or
target set is refused before training). Naive sequential training is one run per task, each
starting from the previous run's adapter.

Fisher (`train.save_fisher_samples: N`): after training, the diagonal (empirical) Fisher of the
adapter's trained parameters, F_i = mean over N training rows of (∂ log p(targets of the row) / ∂θ_i)²,
one row per backward (the rows: the first N of a seeded permutation of the training examples,
replay rows excluded; the model in eval mode, no dropout), written to `output_dir/fisher.safetensors`
with the adapter's on-disk keys.

EWC (`train.ewc: {lambda, from: RUN_DIR}`): the run continues RUN_DIR's adapter (θ* =
RUN_DIR/adapter, also its starting point) and adds λ/2 · Σ_i F_i (θ_i - θ*_i)² to the loss of every
optimizer step (a `TrainingHooks.regularizer`, logged as `ewc_penalty` in metrics.jsonl). F is
RUN_DIR's own Fisher: for a chain A → B → C, C's penalty protects B's solution (which started
from A's).

Progressive LoRA (`lora.progressive_from: [ADAPTER_DIR, ...]`): the earlier adapters are loaded
frozen, as the named adapters `progressive_0`, `progressive_1`, ... of the same layer wrappers, and
applied together with the new one (`set_adapter(model, [...all of them])`, `tuners.layers.AdapterStack`):
each layer computes base(x) + Σ earlier updates + the new update. They apply without dropout (they do
not train). Only the new adapter trains, sits in checkpoints and is saved (`output_dir/adapter`); at
inference the stack is loaded again by naming every adapter: `lorakit generate --adapter EARLIER ...
--adapter NEW` (`inference.load_trained` with a list of dirs). `lora.orthogonal_lambda` adds O-LoRA's
penalty (`tuners.lora.OrthogonalityPenalty`, the LoRA method's training hook).
"""
from __future__ import annotations

from pathlib import Path
from typing import Callable, Optional, Sequence

import torch
from safetensors.torch import load_file, save_file
from torch import nn

from ..errors import InputError
from ..files import atomic_write
from ..io import (WEIGHTS_NAME, AdapterFormatError, adapter_tensors, attach_adapter, check_adapter_dir, copy_weights,
                  read_config, read_weights)
from ..state import set_adapter
from ..io.shards import check_safetensors
from ..tuners.base import TrainingHooks
from .config import RunConfig

FISHER_NAME = "fisher.safetensors"
"""In a run's output_dir: the diagonal Fisher of its adapter (`train.save_fisher_samples`)."""
ADAPTER = "default"
"""The name of the adapter a run trains."""
PROGRESSIVE = "progressive_{}"
"""The names of progressive LoRA's earlier adapters on the model, by position in `progressive_from`."""


class ContinualInputError(InputError):
    """A continual-learning input (earlier adapter, run or Fisher file) that cannot be used: names the key."""


def check_inputs(config: RunConfig) -> None:
    """The earlier runs and adapters the config names exist and read; before any model loads."""
    if config.train.init_adapter:
        _check_adapter(Path(config.train.init_adapter).expanduser(), "train.init_adapter")
    if config.train.ewc:
        run = Path(config.train.ewc.run).expanduser()
        if not run.is_dir():
            raise ContinualInputError(f"train.ewc.from: {run}: not a run directory")
        _check_adapter(run / "adapter", "train.ewc.from")
        fisher = run / FISHER_NAME
        if not fisher.is_file():
            raise ContinualInputError(f"train.ewc.from: {fisher}: not found (train that run with "
                                      "train.save_fisher_samples: N)")
        check_safetensors(fisher, ContinualInputError)


    for i, directory in enumerate(config.adapter.stacked_on if config.spec is not None else []):
        key = f"{config.method}.progressive_from.{i}"
        earlier = _check_adapter(Path(directory).expanduser(), key)
        if type(earlier) is not type(config.adapter) or earlier.use_dora:
            raise ContinualInputError(f"{key}: {directory}: a {earlier.PEFT_TYPE}{' DoRA' if getattr(earlier, 'use_dora', False) else ''} "
                                      "adapter; progressive LoRA stacks plain LoRA adapters")


def _check_adapter(path: Path, key: str):
    check_adapter_dir(path, f"{key}: {path}", ContinualInputError)
    try:
        return read_config(path)
    except AdapterFormatError as e:
        raise ContinualInputError(f"{key}: {e}") from None


def attach_progressive(model: nn.Module, config: RunConfig) -> list[str]:
    """Load `progressive_from`'s adapters frozen (no dropout) as `progressive_0`, ...; returns their names.
    Called before the run's own adapter is added; `stack_progressive` then applies them all together."""
    names = []
    for i, directory in enumerate(config.adapter.stacked_on if config.spec is not None else []):
        key, path = f"{config.method}.progressive_from.{i}", Path(directory).expanduser()
        try:
            earlier = read_config(path)
            frozen = earlier.model_copy(update={"lora_dropout": 0.0})  # (checked: plain LoRA) frozen: no dropout
            attach_adapter(model, frozen, read_weights(path), path / WEIGHTS_NAME, PROGRESSIVE.format(i))
        except InputError as e:
            raise ContinualInputError(f"{key}: {e}") from None
        names.append(PROGRESSIVE.format(i))
    return names


def stack_progressive(model: nn.Module, earlier: list[str]) -> None:
    """Apply the earlier adapters and the run's own together (only the run's own trains)."""
    if earlier:
        set_adapter(model, [*earlier, ADAPTER])


def load_start(model: nn.Module, config: RunConfig) -> None:
    """Copy the starting adapter's weights (`config.start_adapter`) into the run's fresh adapter."""
    path = config.start_adapter
    if path is None:
        return
    key = "train.init_adapter" if config.train.init_adapter else "train.ewc.from"
    try:
        copy_weights(model, ADAPTER, read_weights(path), path)
    except AdapterFormatError as e:
        raise ContinualInputError(f"{key}: {e}") from None


# ---- Fisher ---------------------------------------------------------------------------------------
def trained_tensors(model: nn.Module) -> dict[str, torch.Tensor]:
    """On-disk key → live parameter, for the run adapter's tensors that train."""
    return {k: t for k, t in adapter_tensors(model, ADAPTER).items() if t.requires_grad}


def fisher_diagonal(model: nn.Module, loss_sum: Callable, examples: Sequence, collate: Callable[[list], dict],
                    samples: int, seed: int = 0) -> dict[str, torch.Tensor]:
    """Diagonal empirical Fisher of the adapter's trained parameters: mean over `samples` rows of the
    squared gradient of the row's summed target log-likelihood (`loss_sum` is its negative)."""
    params = trained_tensors(model)
    keys, tensors = list(params), list(params.values())
    order = torch.randperm(len(examples), generator=torch.Generator().manual_seed(seed)).tolist()[:samples]
    fisher = [torch.zeros_like(t, dtype=torch.float32) for t in tensors]
    device = tensors[0].device
    was_training = model.training
    model.eval()
    try:
        for i in order:
            batch = {k: v.to(device) if torch.is_tensor(v) else v for k, v in collate([examples[i]]).items()}
            grads = torch.autograd.grad(loss_sum(model, batch), tensors, allow_unused=True)
            for f, g in zip(fisher, grads):
                if g is not None:
                    f += g.float().square()
    finally:
        model.train(was_training)
    return {k: (f / max(len(order), 1)).cpu() for k, f in zip(keys, fisher)}


def save_fisher(fisher: dict[str, torch.Tensor], directory: Path, samples: int) -> Path:
    target = Path(directory) / FISHER_NAME
    tensors = {k: t.contiguous() for k, t in fisher.items()}
    atomic_write(target, lambda f: save_file(tensors, f, metadata={"format": "pt", "samples": str(samples)}))
    return target


def load_fisher(path: Path) -> dict[str, torch.Tensor]:
    return load_file(str(path))


# ---- EWC ------------------------------------------------------------------------------------------
class EwcPenalty(TrainingHooks):
    """λ/2 · Σ F (θ - θ*)² over the adapter's trained tensors, as a loss term (`regularizer`)."""

    def __init__(self, params: dict[str, torch.Tensor], fisher: dict[str, torch.Tensor],
                 anchor: dict[str, torch.Tensor], strength: float):
        self.terms = [(params[k], fisher[k].to(params[k].device, torch.float32),
                       anchor[k].to(params[k].device, torch.float32)) for k in fisher]
        self.strength, self.last = strength, 0.0

    def penalty(self) -> torch.Tensor:
        total = sum((f * (p.float() - a).square()).sum() for p, f, a in self.terms)
        return 0.5 * self.strength * total

    def regularizer(self, model: nn.Module) -> Optional[torch.Tensor]:
        value = self.penalty()
        self.last = float(value.detach())
        return value

    def metrics(self) -> dict:
        return {"ewc_penalty": self.last}


def ewc_hooks(model: nn.Module, config: RunConfig) -> EwcPenalty:
    """The EWC term against `train.ewc.from` (its adapter is θ*, its fisher.safetensors F); keys and
    shapes must be the run adapter's trained tensors."""
    run = Path(config.train.ewc.run).expanduser()
    params = trained_tensors(model)
    fisher, anchor = load_fisher(run / FISHER_NAME), read_weights(run / "adapter")
    for name, tensors in ((str(run / FISHER_NAME), fisher), (str(run / "adapter"), anchor)):
        missing = sorted(set(params) - set(tensors))
        wrong = [k for k in params if k in tensors and tensors[k].shape != params[k].shape]
        if missing or wrong:
            what = f"missing {missing[0]}" if missing else f"{wrong[0]}: {tuple(tensors[wrong[0]].shape)} vs " \
                                                            f"{tuple(params[wrong[0]].shape)} in the model"
            raise ContinualInputError(f"train.ewc.from: {name} does not fit this run's adapter ({what})")
    return EwcPenalty(params, {k: fisher[k] for k in params}, anchor, config.train.ewc.strength)


def hooks(model: nn.Module, config: RunConfig) -> list[TrainingHooks]:
    """The continual-learning loss terms of a run, for the loop's hook chain."""
    return [ewc_hooks(model, config)] if config.train.ewc else []
