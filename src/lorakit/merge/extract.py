"""LoRA extraction: the difference between a fine-tuned model and its base as a peft LoRA adapter.

    report = lorakit.extract_lora("smollm2-135m-instruct", "runs/full/model", "out/adapter", rank=16)

Per linear layer (nn.Linear, GPT-2 Conv1D), streamed one tensor pair at a time:

    ΔW = W_tuned − W_base  (out, in)  ≈  U_k S_k Vh_k   →   A = sqrt(S_k) Vh_k (k, in),  B = U_k sqrt(S_k) (out, k)

with lora_alpha = k (scaling 1). `rank` fixes k (at most min(out, in)); `energy=0.9` picks per
layer the smallest k whose singular values keep 90% of ‖ΔW‖²_F (capped by `rank` when both are
given), written through `rank_pattern`. Large matrices (min side > 1024 and > 4k) use a
randomized SVD. Other changed tensors: a changed bias of a LoRA layer is saved (peft's
`bias="lora_only"`); changed embeddings, norms and layers whose weight did not change go to
`modules_to_save` (or are dropped with `keep_other=False`); an embedding tied to the output head
cannot be represented by an adapter and is always reported as dropped.
"""
from __future__ import annotations

import contextlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional

import torch
from torch import nn

from ..errors import InputError
from ..io import PREFIX, write_adapter
from ..io.shards import check_output_directory, staged_directory
from ..tuners.svd import split_factors, top_singular
from .combine import lora_config_for
from .sources import ModelSource, open_source

RANDOMIZED_MIN_SIDE = 1024


@dataclass
class Extraction:
    """What `extract_lora` wrote: per LoRA layer its rank and the kept share of ‖ΔW‖², and the rest."""

    out_dir: str
    layers: dict[str, tuple[int, float]] = field(default_factory=dict)  # module → (rank, kept energy)
    biases: list[str] = field(default_factory=list)
    modules_to_save: list[str] = field(default_factory=list)
    dropped: dict[str, str] = field(default_factory=dict)  # tensor → why
    delta_norms: dict[str, float] = field(default_factory=dict)  # module → ‖ΔW‖²_F

    @property
    def kept_energy(self) -> float:
        """Share of Σ‖ΔW‖² over all LoRA layers that the adapter keeps."""
        total = sum(self.delta_norms.values())
        return sum(self.delta_norms[m] * e for m, (_, e) in self.layers.items()) / total if total else 1.0


def extract_lora(base: str, tuned: str, out_dir: str | Path, rank: Optional[int] = None,
                 energy: Optional[float] = None, keep_other: bool = True, niter: int = 4,
                 overwrite: bool = False) -> Extraction:
    """Write the LoRA adapter that turns `base` into `tuned` (both model references, see
    `merge/sources.py`) to `out_dir` in peft's format; returns what was extracted.

    rank: the rank of every layer (with `energy`: the largest allowed). energy: share of ‖ΔW‖² to keep.
    keep_other: save changed non-linear tensors as modules_to_save, else drop them (reported).
    niter: subspace iterations of the randomized SVD used for large matrices.
    """
    if rank is None and energy is None:
        raise InputError("give rank and/or energy (e.g. rank=16, or energy=0.9 to keep 90% of each ‖ΔW‖²)")
    if rank is not None and rank <= 0:
        raise InputError(f"rank must be a positive integer, got {rank}")
    if energy is not None and not 0 < energy <= 1:
        raise InputError(f"energy must be in (0, 1], got {energy}")
    from transformers.pytorch_utils import Conv1D

    with contextlib.ExitStack() as scratch:
        base_src = open_source(base, "--base", scratch)
        tuned_src = open_source(tuned, "--tuned", scratch)
        modules, tied = _skeleton(base_src)
        _check_same_tensors(base_src, tuned_src)
        out = check_output_directory(out_dir, overwrite, [base_src.directory, tuned_src.directory])
        result = Extraction(str(out))
        tensors: dict[str, torch.Tensor] = {}
        changed_bias: dict[str, torch.Tensor] = {}
        saved_modules: set[str] = set()
        for key in base_src.keys():
            module, _, param = key.rpartition(".")
            old, new = base_src.read(key), tuned_src.read(key)
            if torch.equal(old, new):
                continue
            layer = modules.get(module)
            linear = isinstance(layer, (nn.Linear, Conv1D))
            if linear and param == "weight" and key not in tied:
                delta = new.float() - old.float()
                delta = delta.T if isinstance(layer, Conv1D) else delta  # (out, in)
                a, b, k, kept = _low_rank(delta, rank, energy, niter)
                tensors[f"{PREFIX}{module}.lora_A.weight"] = a
                tensors[f"{PREFIX}{module}.lora_B.weight"] = b
                result.layers[module] = (k, kept)
                result.delta_norms[module] = float(delta.pow(2).sum())
            elif linear and param == "bias":
                changed_bias[module] = new
            elif key in tied:
                result.dropped[key] = "tied to the output head; an adapter cannot change it alone"
            elif not keep_other or module == "":
                result.dropped[key] = "not a linear layer (keep_other=False)" if module else "not inside a module"
            else:
                saved_modules.add(module)
        for module, bias in changed_bias.items():
            if module in result.layers:
                result.biases.append(module)
            elif keep_other:
                saved_modules.add(module)
            else:
                result.dropped[f"{module}.bias"] = "bias of a layer whose weight did not change (keep_other=False)"
        if result.biases:  # bias="lora_only": every LoRA layer's bias is saved, changed or not
            for module in result.layers:
                if f"{module}.bias" in tuned_src:
                    tensors[f"{PREFIX}{module}.base_layer.bias"] = tuned_src.read(f"{module}.bias")
        for module in sorted(saved_modules):
            for key in tuned_src.keys():
                if key.rpartition(".")[0] == module:
                    tensors[f"{PREFIX}{key}"] = tuned_src.read(key)
        result.modules_to_save = sorted(saved_modules)
        if not result.layers:
            raise InputError(f"{tuned}: no linear layer differs from {base}; nothing to extract")
        config = lora_config_for({m: k for m, (k, _) in result.layers.items()},
                                 modules_to_save=result.modules_to_save or None,
                                 bias="lora_only" if result.biases else "none",
                                 fan_in_fan_out=any(isinstance(modules.get(m), Conv1D) for m in result.layers),
                                 task_type=_task_type(base_src), base_model_name_or_path=base)
        with staged_directory(out) as staging:
            write_adapter(staging, tensors, config)
    return result


def _low_rank(delta: torch.Tensor, rank: Optional[int], energy: Optional[float],
              niter: int) -> tuple[torch.Tensor, torch.Tensor, int, float]:
    """(A, B, k, kept share of ‖ΔW‖²) for one (out, in) difference."""
    side = min(delta.shape)
    cap = min(rank or side, side)
    randomized = side > RANDOMIZED_MIN_SIDE and side > 4 * cap
    u, s, vh = top_singular(delta, cap, niter if randomized else None, oversample=8)
    total = float(delta.pow(2).sum())
    cumulative = torch.cumsum(s.double() ** 2, 0) / total if total else torch.ones_like(s, dtype=torch.float64)
    k = cap
    if energy is not None and total:
        reached = (cumulative >= energy - 1e-12).nonzero()
        k = int(reached[0]) + 1 if len(reached) else cap
    k = max(k, 1)
    a, b = split_factors(u[:, :k], s[:k], vh[:k])
    return a.contiguous(), b.contiguous(), k, min(1.0, float(cumulative[k - 1])) if total else 1.0


def _skeleton(source: ModelSource) -> tuple[dict[str, nn.Module], set[str]]:
    """The architecture's modules by name (built on the meta device: no weights), and the checkpoint
    keys tied to another parameter (e.g. an output head sharing the embedding)."""
    from transformers import AutoConfig, AutoModel, AutoModelForCausalLM

    config = AutoConfig.from_pretrained(source.directory)
    try:
        with torch.device("meta"):
            try:
                skeleton = AutoModelForCausalLM.from_config(config)
            except ValueError:
                skeleton = AutoModel.from_config(config)
    except Exception as e:
        raise InputError(f"{source.label}: transformers cannot build this architecture ({e})") from None
    groups: dict[int, list[str]] = {}
    for key, t in skeleton.state_dict(keep_vars=True).items():
        groups.setdefault(id(t), []).append(key)
    tied = {k for g in groups.values() if len(g) > 1 for k in g}
    return dict(skeleton.named_modules()), tied


def _check_same_tensors(base: ModelSource, tuned: ModelSource) -> None:
    only = sorted(set(base.keys()) ^ set(tuned.keys()))
    if only:
        whose = base.label if only[0] in base else tuned.label
        raise InputError(f"--tuned {tuned.label} and --base {base.label} differ in their tensors: only {whose} "
                         f"has {only[0]} (same architecture needed)")
    for key in base.keys():
        if base.shape(key) != tuned.shape(key):
            raise InputError(f"tensor {key}: --base has shape {base.shape(key)}, --tuned {tuned.shape(key)}")


def _task_type(source: ModelSource) -> Optional[str]:
    from ..io import TASK_TYPES

    arch = (source.config().get("architectures") or [""])[0]
    return next((t for suffix, t in TASK_TYPES.items() if arch.endswith(suffix)), None)
