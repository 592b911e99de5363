"""Pruning end to end: load (and merge) → prune → optionally recover with LoRA → save, once or
iteratively towards a target sparsity, with sparsity and held-out quality recorded per step.

    report = prune_to_dir("runs/quickstart/adapter", "out/pruned", method="structured", sparsity=0.5,
                          heads=1/3, steps=2, recover="configs/quickstart.yaml", eval_data="bundled:quickstart_eval")

One step: prune to the step's sparsity (target · k / steps), evaluate, fine-tune a LoRA adapter on
the pruned model with the `recover` run config (its model.name and output_dir are set here),
merge it, evaluate again. Unstructured pruning keeps its mask: the merged update would refill the
pruned weights, so they are zeroed again after the merge (the quality reported is after that).
The model directory written (`out`) loads in transformers and in `lorakit eval/generate/serve`;
`prune_report.json` beside it holds the per-step rows.
"""
from __future__ import annotations

import json
import os
import shutil
import time
from pathlib import Path
from typing import Callable, Optional, Sequence

from torch import nn

from ..errors import InputError
from ..io.model_dir import save_model_dir
from ..io.shards import check_output_directory
from ..train.config import Task
from .measure import quality
from .prune import apply_masks, prune_unstructured, sparsity_report, zero_masks
from .structured import calibration_batches, evenly_spaced_layers, linear_parameters, prune_structured

REPORT_NAME = "prune_report.json"


def _unstructured(scope: str) -> Callable:
    def run(model, sparsity, previous, heads, keep_layers, calibration):
        prune_unstructured(model, sparsity, scope=scope)
        return model
    return run


def _structured(model, sparsity, previous, heads, keep_layers, calibration):
    """`sparsity` and `heads` are fractions of the original model; the step removes what is left to remove."""
    step_mlp = 1.0 - (1.0 - sparsity) / (1.0 - previous[0])
    step_heads = 1.0 - (1.0 - heads) / (1.0 - previous[1])
    return prune_structured(model, mlp=step_mlp, heads=step_heads, keep_layers=keep_layers, calibration=calibration)


PRUNERS: dict[str, Callable] = {"unstructured": _unstructured("layer"), "global": _unstructured("global"),
                                "structured": _structured}
"""method name → pruner(model, sparsity, previous (mlp, heads) fractions, heads, keep_layers, calibration) → model."""


def _recover_config(recover: str, overrides: Sequence[str], model_dir: Path, workdir: Path):
    """The recovery run's config: `recover` with `overrides`, trained on `model_dir`, written under `workdir`."""
    from ..train.config import RunConfig
    from ..yamlconfig import load_config

    config = load_config(RunConfig, recover, [*overrides, f"model.name={model_dir}", f"output_dir={workdir / 'recover'}"])
    if config.spec is None or config.task is not Task.SFT:
        raise InputError(f"{recover}: recovery fine-tunes a LoRA-family adapter on a causal LM (task sft)")
    return config


def _recover(model: nn.Module, tokenizer, recover: str, overrides: Sequence[str], workdir: Path) -> nn.Module:
    """Fine-tune a LoRA adapter on `model` with the run config `recover`; the merged model back."""
    from ..inference import load_merged
    from ..train.loop import train

    pruned_dir = save_model_dir(model, workdir / "pruned", tokenizer)
    result = train(_recover_config(recover, overrides, pruned_dir, workdir), quiet=True)
    return load_merged(str(result.adapter_dir)).model


def prune_to_dir(source: str, out: str | os.PathLike, method: str = "unstructured", sparsity: float = 0.5,
                 heads: float = 0.0, keep_layers: Optional[list[int] | int] = None, steps: int = 1,
                 recover: Optional[str] = None, recover_overrides: Sequence[str] = (),
                 calibration: Optional[str] = None, eval_data: Optional[str] = None,
                 max_samples: Optional[int] = None, base: Optional[str] = None,
                 on_step: Optional[Callable[[dict], None]] = None, overwrite: bool = False) -> dict:
    """Prune `source` (adapter dir or model) with `method` to `sparsity` in `steps` steps (LoRA
    recovery after each when `recover` names a run config) and save the result to `out`.

    sparsity: unstructured/global: fraction of zero weights in the linears; structured: fraction of
    MLP channels removed (and `heads`: of query heads per group; `keep_layers`: the decoder layers
    kept, or how many, evenly spaced).
    Returns {"out", "method", "steps": [rows], "final": last row, "seconds"}; each row has step,
    phase ("pruned" | "recovered"), sparsity (zero or removed fraction of the decoder linears'
    weights) and the metrics of `eval_data` if given. `on_step` receives each row as it is made.
    """
    from ..inference import load_merged

    if method not in PRUNERS:
        raise InputError(f"--method {method!r}: expected one of {', '.join(PRUNERS)}")
    if steps < 1:
        raise InputError(f"--steps {steps}: expected a positive integer")
    for name, value in (("sparsity", sparsity), ("heads", heads)):
        if not 0.0 <= value < 1.0:
            raise InputError(f"--{name} {value}: expected a fraction in [0, 1)")
    if method != "structured" and (heads or keep_layers):
        raise InputError("--heads and --keep-layers remove whole structures: use them with --method structured")
    if recover is not None:
        if not Path(recover).is_file():
            raise InputError(f"--recover {recover}: run config file not found")
        _recover_config(recover, recover_overrides, Path(source), Path("."))  # a bad config fails before any work
    out = check_output_directory(out, overwrite, [Path(source).expanduser()])
    start = time.perf_counter()
    trained = load_merged(source, base)
    if trained.task is not Task.SFT and (method == "structured" or recover):
        raise InputError(f"{source}: structured pruning and LoRA recovery need a causal LM (task sft)")
    model, tokenizer = trained.model, trained.tokenizer
    if isinstance(keep_layers, int):
        keep_layers = evenly_spaced_layers(model.config.num_hidden_layers, keep_layers)
    original = linear_parameters(model)
    rows: list[dict] = []

    def record(step: int, phase: str) -> None:
        if method == "structured":
            measured = 1.0 - linear_parameters(model) / original
        else:
            measured = sparsity_report(model)["sparsity"]
        row = {"step": step, "phase": phase, "sparsity": round(measured, 4), "linear_weights": linear_parameters(model)}
        if eval_data:
            row.update(quality(model, tokenizer, eval_data, trained.labels, max_samples))
        rows.append(row)
        if on_step:
            on_step(row)

    if eval_data:
        record(0, "source")
    previous = (0.0, 0.0)
    steps_dir = out.parent / f".{out.name}.steps"  # recovery runs' scratch space
    try:
        for step in range(1, steps + 1):
            target = (sparsity * step / steps, heads * step / steps)
            batches = calibration_batches(tokenizer, calibration) if calibration and method == "structured" else None
            model = PRUNERS[method](model, target[0], previous, target[1],
                                    keep_layers if step == 1 else None, batches)
            previous = target
            record(step, "pruned")
            if recover:
                masks = zero_masks(model) if method != "structured" else None
                model = _recover(model, tokenizer, recover, recover_overrides, steps_dir / str(step))
                if masks is not None:
                    apply_masks(model, masks)
                record(step, "recovered")
    finally:
        shutil.rmtree(steps_dir, ignore_errors=True)
    report = {"source": str(source), "method": method, "target_sparsity": sparsity, "heads": heads,
              "keep_layers": keep_layers, "steps": rows, "final": rows[-1]}
    save_model_dir(model, out, tokenizer, extra_files={REPORT_NAME: json.dumps(report, indent=2) + "\n"})
    report.update(out=str(out), seconds=time.perf_counter() - start)
    return report
