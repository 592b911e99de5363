"""`lorakit compress int8 | prune`: smaller, faster models for CPU inference (model dirs eval/generate/serve load)."""
from __future__ import annotations

import argparse
import json

from .common import RAW, bounded_float, positive_int


_fraction = bounded_float(lambda v: 0.0 <= v < 1.0, "a fraction in [0, 1)")


def _layer_list(text: str) -> list[int]:
    try:
        return [int(x) for x in text.split(",") if x.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated layer indices, got {text!r}") from None


def _print(stats: dict) -> None:
    for key, value in stats.items():
        print(f"  {key}: {json.dumps(value) if isinstance(value, (dict, list)) else value}")


def cmd_int8(args) -> int:
    from ..compress import compress_int8

    stats = compress_int8(args.source, args.output, kernel=args.kernel, base=args.base, eval_data=args.eval,
                          max_samples=args.max_samples, overwrite=args.overwrite)
    print(f"int8 model written to {args.output} (lorakit eval/generate/serve --model {args.output})")
    _print(stats)
    return 0


def cmd_prune(args) -> int:
    from ..compress import prune_to_dir

    def show(row: dict) -> None:
        print("  step " + "  ".join(f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}" for k, v in row.items()),
              flush=True)

    prune_to_dir(args.source, args.output, method=args.method, sparsity=args.sparsity, heads=args.heads,
                 keep_layers=args.keep_layers if args.layers is None else args.layers, steps=args.steps,
                 recover=args.recover, recover_overrides=args.set, calibration=args.calibration, eval_data=args.eval,
                 max_samples=args.max_samples, base=args.base, on_step=show, overwrite=args.overwrite)
    print(f"pruned model written to {args.output} (per-step report: {args.output}/prune_report.json)")
    return 0


def register(sub, parent) -> None:
    p = sub.add_parser("compress", parents=[parent], help="int8 quantization and pruning for CPU inference",
                       formatter_class=RAW,
                       description="Compress a trained adapter (merged into its base) or a model directory.",
                       epilog="examples:\n  lorakit compress int8 runs/quickstart/adapter out/int8 --eval bundled:quickstart_eval\n"
                              "  lorakit compress prune runs/quickstart/adapter out/sparse --method unstructured --sparsity 0.5\n"
                              "  lorakit compress prune runs/quickstart/adapter out/small --method structured --sparsity 0.5 "
                              "--heads 0.33 \\\n      --calibration bundled:quickstart_train --recover configs/quickstart.yaml")
    kinds = p.add_subparsers(dest="kind", required=True, metavar="KIND")

    def common(g):
        g.add_argument("source", help="adapter directory, model directory, .gguf or embedded name")
        g.add_argument("output", help="model directory to write")
        g.add_argument("--base", help="base model of an adapter, overriding base_model_name_or_path")
        g.add_argument("--eval", help="held-out data (file or bundled:NAME): report quality before and after")
        g.add_argument("--max-samples", type=positive_int, help="evaluate on at most this many rows")
        g.add_argument("--overwrite", action="store_true", help="replace a non-empty OUT_DIR")

    g = kinds.add_parser("int8", parents=[parent], help="dynamic int8 quantization of the linear layers")
    common(g)
    g.add_argument("--kernel", choices=["auto", "dequant", "fbgemm"], default="auto",
                   help="int8 matmul kernel: auto (time both here, keep the faster), dequant (lorakit's, "
                        "weight-only) or fbgemm (torch.ao's dynamic int8)")
    g.set_defaults(func=cmd_int8)

    g = kinds.add_parser("prune", parents=[parent], help="unstructured, global or structured pruning (+ LoRA recovery)")
    common(g)
    g.add_argument("--method", choices=["unstructured", "global", "structured"], default="unstructured",
                   help="unstructured: smallest |w| per layer; global: over all layers; structured: whole MLP "
                        "channels / heads / layers removed (Llama family)")
    g.add_argument("--sparsity", type=_fraction, default=0.5,
                   help="target: zero-weight fraction (unstructured, global) or MLP channels removed (structured)")
    g.add_argument("--heads", type=_fraction, default=0.0, help="structured: fraction of query heads removed per group")
    layers = g.add_mutually_exclusive_group()
    layers.add_argument("--keep-layers", type=_layer_list, help="structured: decoder layers kept, e.g. 0,2,4")
    layers.add_argument("--layers", type=positive_int, help="structured: keep this many layers, evenly spaced")
    g.add_argument("--calibration", help="structured: data whose activations rank channels and heads")
    g.add_argument("--steps", type=positive_int, default=1, help="prune in this many steps (iterative pruning)")
    g.add_argument("--recover", help="run config (YAML) for a LoRA fine-tune after each step, merged back")
    g.add_argument("--set", action="append", default=[], metavar="key=value",
                   help="override in the --recover config (repeatable), e.g. --set train.steps=20")
    g.set_defaults(func=cmd_prune)
