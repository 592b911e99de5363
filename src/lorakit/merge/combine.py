"""Adapter arithmetic: a new LoRA adapter from weighted combinations of others (peft's `add_weighted_adapter`).

    lorakit.combine_adapters(model, ["sql", "chat"], [1.0, 1.0], "both", method="cat")
    lorakit.combine_adapters(model, ["both", "chat"], [1.0, -1.0], "sql_only", method="cat")  # negation

Per adapted layer, with s_i each adapter's scaling and w_i its weight (negative: subtract):
- `cat` (exact): A' = [w_1 s_1 A_1; w_2 s_2 A_2; ...], B' = [B_1, B_2, ...]  →  B'A' = Σ w_i ΔW_i; rank Σ r_i.
- `svd`, `ties_svd`, `dare_linear_svd`, `dare_ties_svd`, `magnitude_prune_svd`: the full ΔW_i
  (`delta_weight()`) combined by task arithmetic / TIES / DARE / magnitude pruning, then truncated
  to `svd_rank` (default: the largest input rank) by SVD: B' = U_k S_k, A' = Vh_k.
- `linear`, `ties`, `dare_linear`, `dare_ties`, `magnitude_prune`: the same combinations applied to
  the factors A_i (weights sign(w_i s_i)·sqrt|w_i s_i|) and B_i (sqrt|w_i s_i|) separately. Cheap but
  rough: B'A' holds cross terms B_i A_j (same rank needed).
The new adapter has scaling 1 (lora_alpha = r) and is an ordinary named adapter: save, load,
route and merge it like any other. As in peft it is added frozen and the active adapter stays.
Differences from peft: inputs with rsLoRA combine correctly (peft keeps `use_rslora` on the
result, scaling it by sqrt(r)); per-layer ranks are exact (`rank_pattern`), not padded with zeros;
a single adapter is combined by the method asked for (peft switches to `linear`).
"""
from __future__ import annotations

import math
from collections import Counter
from dataclasses import dataclass
from enum import Enum
from pathlib import Path
from typing import Callable, Optional, Sequence

import torch
from torch import nn

from ..config import Bias, LoraConfig
from ..errors import InputError
from ..inject import adapter_configs, inject
from ..routing import active_adapter, set_adapter
from ..tuners.lora import LoraAdapter, LoraEmbedding, LoraWrapper
from ..tuners.svd import top_singular
from .methods import SIGN_VOTES, by_count, combine_deltas, prune_magnitude, prune_random


class Level(Enum):
    """What a combination type combines: the factors concatenated, the factors A and B mixed
    separately, or the full ΔW mixed and then truncated by SVD."""

    CAT = "cat"
    FACTORS = "factors"
    SVD = "svd"


@dataclass(frozen=True)
class Combination:
    """One of peft's combination types: its level and how it mixes stacked tensors,
    mix(stacked (n, ...), weights (n,), density, majority sign method, generator) -> (...)."""

    level: Level
    mix: Optional[Callable[..., torch.Tensor]] = None
    uses_density: bool = False


def _sum(x, w, density, sign, gen):
    return combine_deltas(x, w)


def _magnitude(x, w, density, sign, gen):
    return combine_deltas(x, w, prune=lambda d: prune_magnitude(d, density))


def _ties(x, w, density, sign, gen):
    return combine_deltas(x, w, prune=lambda d: prune_magnitude(d, density), consensus=sign,
                          elect_weighted=False, divide=by_count)


def _dare(density, gen):
    return lambda d: prune_random(d, density, gen).div_(density) if density < 1 else d


def _dare_linear(x, w, density, sign, gen):
    return combine_deltas(x, w, prune=_dare(density, gen))


def _dare_ties(x, w, density, sign, gen):
    return combine_deltas(x, w, prune=_dare(density, gen), consensus=sign, elect_weighted=False, divide=by_count)


COMBINATIONS: dict[str, Combination] = {
    "cat": Combination(Level.CAT),
    "linear": Combination(Level.FACTORS, _sum),
    "ties": Combination(Level.FACTORS, _ties, True),
    "dare_linear": Combination(Level.FACTORS, _dare_linear, True),
    "dare_ties": Combination(Level.FACTORS, _dare_ties, True),
    "magnitude_prune": Combination(Level.FACTORS, _magnitude, True),
    "svd": Combination(Level.SVD, _sum),
    "ties_svd": Combination(Level.SVD, _ties, True),
    "dare_linear_svd": Combination(Level.SVD, _dare_linear, True),
    "dare_ties_svd": Combination(Level.SVD, _dare_ties, True),
    "magnitude_prune_svd": Combination(Level.SVD, _magnitude, True),
}
"""peft's `combination_type` names → how the layer's adapters are combined."""


def combine_layer(adapters: Sequence[tuple[LoraAdapter, float]], method: str, rank: Optional[int] = None,
                  density: Optional[float] = None, majority_sign_method: str = "total",
                  svd_clamp: Optional[float] = None, generator: Optional[torch.Generator] = None,
                  transposed: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
    """New (A (r', in), B (out, r')) in fp32, scaling 1, from one layer's (adapter, weight) pairs.

    `rank`: the SVD methods' target rank (capped at min(out, in)). `transposed`: the base weight is
    stored (in, out) (embeddings, GPT-2 Conv1D); the SVD methods prune ΔW in that layout, as peft does.
    """
    spec = COMBINATIONS[method]
    if spec.level is Level.CAT:
        a = torch.cat([ad.lora_A.float() * (w * ad.scaling) for ad, w in adapters], dim=0)
        return a, torch.cat([ad.lora_B.float() for ad, _ in adapters], dim=1)
    if spec.level is Level.FACTORS:
        ws = [w * ad.scaling for ad, w in adapters]
        w_a = torch.tensor([math.copysign(math.sqrt(abs(w)), w) if w != 0 else 0.0 for w in ws])
        w_b = torch.tensor([math.sqrt(abs(w)) for w in ws])
        a = spec.mix(torch.stack([ad.lora_A.float() for ad, _ in adapters]), w_a, density, majority_sign_method, generator)
        b = spec.mix(torch.stack([ad.lora_B.float() for ad, _ in adapters]), w_b, density, majority_sign_method, generator)
        return a, b
    deltas = torch.stack([ad.delta_weight(torch.float32) for ad, _ in adapters])  # (n, out, in)
    deltas = deltas.transpose(1, 2) if transposed else deltas
    delta = spec.mix(deltas, torch.tensor([w for _, w in adapters]), density, majority_sign_method, generator)
    delta = delta.T if transposed else delta
    u, s, vh = top_singular(delta, rank or max(ad.r for ad, _ in adapters))
    b = u * s[None, :]
    if svd_clamp is not None:
        hi = torch.quantile(torch.cat([b.flatten(), vh.flatten()]), svd_clamp)
        b, vh = b.clamp(-hi, hi), vh.clamp(-hi, hi)
    return vh, b


def check_combination(names: Sequence[str], weights: Sequence[float], method: str, density: Optional[float],
                      majority_sign_method: str) -> None:
    """Argument errors shared by the API and the CLI, raised before any work."""
    if method not in COMBINATIONS:
        raise InputError(f"method {method!r}: expected one of {', '.join(COMBINATIONS)}")
    if not names:
        raise InputError("no adapters to combine")
    if len(weights) != len(names):
        raise InputError(f"{len(weights)} weights for {len(names)} adapters; give one weight per adapter")
    if len(set(names)) != len(names):
        raise InputError(f"an adapter is listed twice: {list(names)}")
    if not all(math.isfinite(w) for w in weights):
        raise InputError(f"weights must be finite numbers, got {list(weights)}")
    if COMBINATIONS[method].uses_density:
        if density is None or not 0 <= density <= 1:
            raise InputError(f"method {method} needs density between 0 and 1 (the share of entries kept), got {density}")
    elif density is not None:
        raise InputError(f"density applies to the pruning methods "
                         f"({', '.join(n for n, c in COMBINATIONS.items() if c.uses_density)}), not to {method}")
    if majority_sign_method not in SIGN_VOTES:
        raise InputError(f"majority_sign_method {majority_sign_method!r}: expected one of {', '.join(SIGN_VOTES)}")


def lora_config_for(ranks: dict[str, int], **fields) -> LoraConfig:
    """A LoraConfig adapting exactly the modules of `ranks` (module → rank) with scaling 1 everywhere
    (lora_alpha = r; per-module ranks and alphas through rank_pattern / alpha_pattern)."""
    common = Counter(ranks.values()).most_common(1)[0][0]
    odd = {n: r for n, r in ranks.items() if r != common}
    return LoraConfig(r=common, lora_alpha=common, target_modules=sorted(ranks), rank_pattern=odd,
                      alpha_pattern={n: float(r) for n, r in odd.items()}, **fields)


def combined_config(first: LoraConfig, ranks: dict[str, int]) -> LoraConfig:
    """Config of a combined adapter: these modules and ranks, the first input's other settings."""
    return lora_config_for(ranks, lora_dropout=first.lora_dropout, fan_in_fan_out=first.fan_in_fan_out,
                           task_type=first.task_type, base_model_name_or_path=first.base_model_name_or_path)


def _checked_ranks(layers: dict[str, dict[str, LoraAdapter]], names: Sequence[str], method: str,
                   svd_rank: Optional[int]) -> tuple[dict[str, int], int]:
    """(module → rank of the combined adapter, the SVD methods' target rank), or an InputError."""
    if svd_rank is not None and svd_rank <= 0:
        raise InputError(f"svd_rank must be a positive integer, got {svd_rank}")
    top_rank = svd_rank or max(a.r for present in layers.values() for a in present.values())
    level = COMBINATIONS[method].level
    ranks = {}
    for module, present in layers.items():
        used = [present[n] for n in names if n in present]
        shapes = {(a.lora_B.shape[0], a.lora_A.shape[1]) for a in used}
        if len(shapes) > 1:
            raise InputError(f"{module}: the adapters change weights of different shapes {sorted(shapes)}; "
                             "they were trained on different base models")
        if level is Level.FACTORS and len({a.r for a in used}) > 1:
            raise InputError(f"method {method} combines factors of equal rank; {module} has ranks "
                             f"{ {n: present[n].r for n in names if n in present} } (use cat or an svd method)")
        ranks[module] = (sum(a.r for a in used) if level is Level.CAT else used[0].r if level is Level.FACTORS
                         else min(top_rank, *used[0].lora_A.shape[1:], used[0].lora_B.shape[0]))
    return ranks, top_rank


def combine_modules(layers: dict[str, dict[str, LoraAdapter]], names: Sequence[str], weights: Sequence[float],
                    method: str, top_rank: int, density: Optional[float] = None,
                    majority_sign_method: str = "total", svd_clamp: Optional[float] = None,
                    seed: Optional[int] = None, transposed: frozenset = frozenset(),
                    ) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
    """Module name → combined (A, B), from module name → {adapter name: LoraAdapter} (layers in model
    order); `transposed`: the modules whose base weight is stored (in, out)."""
    generator = None if seed is None else torch.Generator().manual_seed(seed)
    out = {}
    with torch.no_grad():
        for module, present in layers.items():
            pairs = [(present[n], float(w)) for n, w in zip(names, weights) if n in present]
            out[module] = combine_layer(pairs, method, top_rank, density, majority_sign_method, svd_clamp, generator,
                                        module in transposed)
    return out


def combine_adapters(model: nn.Module, adapters: Sequence[str], weights: Sequence[float], adapter_name: str,
                     method: str = "cat", svd_rank: Optional[int] = None, density: Optional[float] = None,
                     majority_sign_method: str = "total", svd_clamp: Optional[float] = None,
                     seed: Optional[int] = None) -> list[str]:
    """Add adapter `adapter_name` = the weighted combination of plain LoRA `adapters` (see module doc).

    weights: one per adapter; negative values subtract (task negation).
    density: share of entries kept by the pruning methods (ties*, dare*, magnitude_prune*).
    majority_sign_method: TIES' sign election, 'total' (sign of the sum) or 'frequency' (more entries).
    seed: DARE's random drop; None draws from torch's global generator, as peft does.
    Returns the names of the modules the new adapter adapts.
    """
    check_combination(adapters, weights, method, density, majority_sign_method)
    configs = adapter_configs(model)
    missing = [n for n in adapters if n not in configs]
    if missing:
        raise InputError(f"no adapter named {missing[0]!r}; adapters on this model: {list(configs)}")
    if adapter_name in configs:
        raise InputError(f"adapter {adapter_name!r} already exists; pick another name or delete it first")
    layers: dict[str, dict[str, LoraAdapter]] = {}
    transposed = set()
    for name, module in model.named_modules():
        if not isinstance(module, LoraWrapper):
            continue
        if isinstance(module, LoraEmbedding) or getattr(module, "fan_in_fan_out", False):
            transposed.add(name)
        present = {n: module.adapters[n] for n in adapters if n in module.adapters}
        for n, a in present.items():
            if a.low_rank_factors() is None:
                raise InputError(f"adapter {n!r} is not plain LoRA (DoRA / VeRA / AdaLoRA / IA³ cannot be combined)")
            if module.merged == n:
                raise InputError(f"adapter {n!r} is merged into the base; unmerge it first")
        if present:
            layers[name] = present
    for n in adapters:
        if configs[n].modules_to_save or configs[n].bias_mode is not Bias.NONE:
            raise InputError(f"adapter {n!r} also trains modules_to_save / biases, which cannot be combined")
    ranks, top_rank = _checked_ranks(layers, adapters, method, svd_rank)
    factors = combine_modules(layers, adapters, weights, method, top_rank, density, majority_sign_method,
                              svd_clamp, seed, frozenset(transposed))
    previous = active_adapter(model)
    trainable = {id(p): p.requires_grad for p in model.parameters()}
    try:
        names = inject(model, combined_config(configs[adapters[0]], ranks), adapter_name)
        with torch.no_grad():
            for name, (a, b) in factors.items():
                new = model.get_submodule(name).adapters[adapter_name]
                new.lora_A.copy_(a.to(new.lora_A.dtype))
                new.lora_B.copy_(b.to(new.lora_B.dtype))
    finally:
        for p in model.parameters():
            p.requires_grad_(trainable.get(id(p), False))
        if previous is not None:
            set_adapter(model, previous)
    return names


def combine_adapter_dirs(adapter_dirs: Sequence[str | Path], weights: Sequence[float], out_dir: str | Path,
                         method: str = "cat", overwrite: bool = False, **options) -> dict:
    """`combine_adapters` on adapter directories, without loading a base model; writes a peft-format adapter.

    options: svd_rank, density, majority_sign_method, svd_clamp, seed. `overwrite`: replace a
    non-empty `out_dir`. Returns a summary dict.
    """
    from ..io import PREFIX, AdapterFormatError, read_config, read_weights, write_adapter
    from ..io.shards import check_output_directory, staged_directory
    from .sources import lora_modules

    labels = [str(d) for d in adapter_dirs]
    check_combination(labels, weights, method, options.get("density"), options.get("majority_sign_method", "total"))
    out = check_output_directory(out_dir, overwrite, [Path(d) for d in labels])
    layers: dict[str, dict[str, LoraAdapter]] = {}
    embeddings: set[str] = set()
    configs = []
    for label in labels:
        config = read_config(label)
        if not isinstance(config, LoraConfig) or config.use_dora:
            raise AdapterFormatError(f"{label}: only plain LoRA adapters can be combined (not DoRA / VeRA / AdaLoRA)")
        modules, emb, replaced = lora_modules(config, read_weights(label), label)
        if replaced:
            raise AdapterFormatError(f"{label}: also holds modules_to_save / biases ({next(iter(replaced))}), "
                                     "which cannot be combined")
        for module, adapter in modules.items():
            layers.setdefault(module, {})[label] = adapter
        embeddings |= emb
        configs.append(config)
    if len({c.fan_in_fan_out for c in configs}) > 1:
        raise AdapterFormatError("the adapters disagree on fan_in_fan_out; they are for different architectures")
    ranks, top_rank = _checked_ranks(layers, labels, method, options.pop("svd_rank", None))
    flipped = frozenset(m for m in layers if m in embeddings or configs[0].fan_in_fan_out)
    factors = combine_modules(layers, labels, weights, method, top_rank, transposed=flipped, **options)
    tensors = {}
    for module, (a, b) in factors.items():
        if module in embeddings:
            tensors[f"{PREFIX}{module}.lora_embedding_A"], tensors[f"{PREFIX}{module}.lora_embedding_B"] = a, b
        else:
            tensors[f"{PREFIX}{module}.lora_A.weight"], tensors[f"{PREFIX}{module}.lora_B.weight"] = a, b
    config = combined_config(configs[0], ranks)
    with staged_directory(out) as staging:
        write_adapter(staging, tensors, config)
    return {"out_dir": str(out), "method": method, "adapters": len(labels), "modules": len(factors),
            "rank": config.r, "ranks": sorted(set(a.shape[0] for a, _ in factors.values()))}
