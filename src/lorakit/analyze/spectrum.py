"""The singular-value spectrum of a trained LoRA update, layer by layer (`lorakit analyze adapter`).

For each adapted module, ΔW = s·B A (out, in) is never formed: with the thin QR factorisations
B = Q_B R_B (Q_B (out, r), R_B (r, r)) and Aᵀ = Q_A R_A (Q_A (in, r)),

    ΔW = Q_B (s · R_B R_Aᵀ) Q_Aᵀ,

and Q_B, Q_A have orthonormal columns, so ΔW's non-zero singular values are those of the r×r core
s·R_B R_Aᵀ (and ‖ΔW‖_F = ‖core‖_F). The factors come from the adapter files through the tuners'
own `LoraAdapter` (`low_rank_factors()`), the same definition `delta_weight()` uses.

Per module: ‖ΔW‖_F, the spectrum σ_1 ≥ … ≥ σ_r, the entropy effective rank exp(−Σ p_i log p_i)
with p_i = σ_i / Σσ (Roy & Vetterli, 2007), and the energy rank: the fewest directions holding
`energy` (default 90%) of Σσ². The suggested rank is the largest energy rank over the modules,
rounded up to a power of two; it is offered when it is below the trained rank. The same rule per
module kind (the last part of the module name: `v_proj`, `down_proj`, ...) gives a `rank_pattern`
(peft's field, matched by name suffix) for the kinds that need fewer directions than the rest.
"""
from __future__ import annotations

import io
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional

import torch

from ..errors import InputError
from ..files import atomic_write


@dataclass
class ModuleSpectrum:
    module: str
    shape: tuple[int, int]  # ΔW (out, in)
    rank: int
    singular_values: list[float]
    frobenius: float
    entropy_rank: float
    energy_rank: int


@dataclass
class AdapterSpectrum:
    adapter_dir: str
    rank: int  # the largest trained rank
    energy: float
    modules: list[ModuleSpectrum] = field(default_factory=list)
    suggested_rank: Optional[int] = None  # None: no smaller rank holds `energy` everywhere
    rank_pattern: dict[str, int] = field(default_factory=dict)  # module kind → a smaller rank that holds `energy`

    def to_dict(self) -> dict:
        return {"adapter_dir": self.adapter_dir, "rank": self.rank, "energy": self.energy,
                "suggested_rank": self.suggested_rank, "rank_pattern": self.rank_pattern,
                "modules": [vars(m) | {"shape": list(m.shape)} for m in self.modules]}


def factor_spectrum(a: torch.Tensor, b: torch.Tensor, scaling: float) -> torch.Tensor:
    """Singular values (r,) of scaling · B A for A (r, in), B (out, r), descending, in fp64, from the r×r core."""
    a64, b64 = a.detach().double(), b.detach().double()
    _, r_b = torch.linalg.qr(b64)  # B = Q_B R_B
    _, r_a = torch.linalg.qr(a64.T)  # Aᵀ = Q_A R_A
    core = scaling * (r_b @ r_a.T)
    return torch.linalg.svdvals(core)


def entropy_rank(s: torch.Tensor) -> float:
    """exp of the entropy of σ / Σσ; 0 for a zero update."""
    total = float(s.sum())
    if total <= 0:
        return 0.0
    p = s[s > 0] / total
    return float(torch.exp(-(p * p.log()).sum()))


def energy_rank(s: torch.Tensor, energy: float) -> int:
    """Fewest leading directions whose Σσ² reaches `energy` of the total; 0 for a zero update."""
    sq = s.double() ** 2
    total = float(sq.sum())
    if total <= 0:
        return 0
    cumulative = torch.cumsum(sq, 0) / total
    return int((cumulative < energy - 1e-12).sum()) + 1


def analyze_adapter(adapter_dir: str | Path, energy: float = 0.9, allow_pickle: bool = False) -> AdapterSpectrum:
    """The spectrum of every LoRA module of the adapter in `adapter_dir` (no base model is loaded)."""
    from ..config import LoraConfig
    from ..io import AdapterFormatError, read_config, read_weights
    from ..merge.sources import lora_modules

    if not 0 < energy <= 1:
        raise InputError(f"energy must be in (0, 1], got {energy}")
    label = str(adapter_dir)
    config = read_config(adapter_dir)
    if not isinstance(config, LoraConfig):
        raise AdapterFormatError(f"{label}: not a LoRA adapter ({type(config).__name__}): no low-rank ΔW = B A to "
                                 "analyze")
    if config.use_dora:
        raise AdapterFormatError(f"{label}: a DoRA adapter rescales W + B A by its magnitude vector; its update "
                                 "is not the low-rank product alone (analyze adapter reads plain LoRA)")
    adapters, _, _ = lora_modules(config, read_weights(adapter_dir, allow_pickle), label)
    if not adapters:
        raise AdapterFormatError(f"{label}: no lora_A / lora_B tensors in the adapter")
    result = AdapterSpectrum(label, max(ad.r for ad in adapters.values()), energy)
    for module, adapter in sorted(adapters.items(), key=lambda kv: _natural(kv[0])):
        a, b, scaling = adapter.low_rank_factors()
        s = factor_spectrum(a, b, scaling)
        result.modules.append(ModuleSpectrum(
            module=module, shape=(b.shape[0], a.shape[1]), rank=adapter.r,
            singular_values=[float(x) for x in s], frobenius=float(s.square().sum().sqrt()),
            entropy_rank=entropy_rank(s), energy_rank=energy_rank(s, energy)))
    result.suggested_rank = _smaller_rank([m.energy_rank for m in result.modules], result.rank)
    overall = result.suggested_rank or result.rank
    kinds: dict[str, list[ModuleSpectrum]] = {}
    for m in result.modules:
        kinds.setdefault(m.module.rsplit(".", 1)[-1], []).append(m)
    for kind, modules in kinds.items():
        smaller = _smaller_rank([m.energy_rank for m in modules], overall)
        if smaller is not None:
            result.rank_pattern[kind] = smaller
    return result


def _smaller_rank(energy_ranks: list[int], rank: int) -> Optional[int]:
    """The largest energy rank rounded up to a power of two, if below `rank` (None for a zero update)."""
    needed = max(energy_ranks)
    if needed == 0:
        return None
    candidate = 1 << math.ceil(math.log2(needed))
    return candidate if candidate < rank else None


def _natural(name: str) -> list:
    return [int(t) if t.isdigit() else t for t in name.replace(".", " . ").split()]


def format_spectrum(spec: AdapterSpectrum, top: int = 4) -> str:
    """One line per module: ‖ΔW‖_F, the leading singular values, effective ranks; then the suggestion."""
    width = max(len(m.module) for m in spec.modules)
    lines = [f"{spec.adapter_dir}: {len(spec.modules)} LoRA modules, rank {spec.rank}",
             f"{'module':<{width}}  {'‖ΔW‖_F':>9}  {'σ_1..σ_' + str(top):<36}  {'entropy':>7}  "
             f"{f'{spec.energy:.0%} rank':>8}"]
    for m in spec.modules:
        leading = " ".join(f"{x:.3g}" for x in m.singular_values[:top])
        lines.append(f"{m.module:<{width}}  {m.frobenius:9.4g}  {leading:<36}  {m.entropy_rank:7.2f}  "
                     f"{m.energy_rank:>8d}")
    ranks = [m.energy_rank for m in spec.modules]
    lines.append("")
    if max(ranks) == 0:
        lines.append("every ΔW is zero (an untrained adapter: B = 0)")
    elif spec.suggested_rank is not None:
        lines.append(f"{spec.energy:.0%} of each module's ΔW energy sits in at most {max(ranks)} directions "
                     f"(median {sorted(ranks)[len(ranks) // 2]}): r={spec.suggested_rank} would keep it "
                     f"(trained with r={spec.rank})")
    else:
        lines.append(f"some modules need {max(ranks)} of {spec.rank} directions for {spec.energy:.0%} of their "
                     f"energy (median {sorted(ranks)[len(ranks) // 2]}): keep r={spec.rank}")
    if spec.rank_pattern:
        pattern = ", ".join(f"{k}: {v}" for k, v in spec.rank_pattern.items())
        lines.append(f"these kinds need fewer in every layer: rank_pattern: {{{pattern}}}")
    return "\n".join(lines)


def plot_spectra(spec: AdapterSpectrum, out: str | Path) -> Path:
    """A PNG: normalised spectra σ_i/σ_1 per module kind (one panel each, one line per layer). Needs matplotlib."""
    try:
        import matplotlib
    except ImportError:
        raise InputError("--png needs matplotlib (pip install matplotlib); the table above does not") from None
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    kinds: dict[str, list[ModuleSpectrum]] = {}
    for m in spec.modules:
        kinds.setdefault(m.module.rsplit(".", 1)[-1], []).append(m)
    cols = min(4, len(kinds))
    rows = -(-len(kinds) // cols)
    fig, axes = plt.subplots(rows, cols, figsize=(3.6 * cols, 2.8 * rows), squeeze=False)
    for ax, (kind, modules) in zip(axes.flat, kinds.items()):
        cmap = plt.get_cmap("viridis")
        for j, m in enumerate(modules):
            s = torch.tensor(m.singular_values)
            if float(s[0]) > 0:
                ax.semilogy(range(1, len(s) + 1), (s / s[0]).clamp_min(1e-8).tolist(),
                            color=cmap(j / max(1, len(modules) - 1)), lw=1)
        ax.set_title(f"{kind} ({len(modules)})", fontsize=9)
        ax.set_xlabel("direction i", fontsize=8)
        ax.set_ylabel("σ_i / σ_1", fontsize=8)
        ax.tick_params(labelsize=7)
    for ax in list(axes.flat)[len(kinds):]:
        ax.axis("off")
    fig.suptitle(f"ΔW spectra, r={spec.rank} (colour: layer order)", fontsize=10)
    fig.tight_layout()
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=110)
    plt.close(fig)
    out = Path(out)
    atomic_write(out, lambda tmp: Path(tmp).write_bytes(buffer.getvalue()))
    return out
