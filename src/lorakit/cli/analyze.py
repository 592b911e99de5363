"""`lorakit analyze memory | adapter` and `lorakit recommend`: analysis tools (lorakit/analyze/)."""
from __future__ import annotations

import argparse
import json

from .common import RAW, bounded_float, positive_int

_positive_float = bounded_float(lambda v: v > 0, "a positive number")
_fraction = bounded_float(lambda v: 0 < v <= 1, "a fraction in (0, 1]")
_dropout = bounded_float(lambda v: 0 <= v < 1, "a dropout probability in [0, 1)")


def _targets(text: str) -> frozenset:
    from ..analyze.memory import ALL_LINEAR, Role

    if text == "all-linear":
        return ALL_LINEAR
    names = [t.strip() for t in text.split(",") if t.strip()]
    known = {r.value: r for r in Role}
    bad = [n for n in names if n not in known]
    if bad or not names:
        raise argparse.ArgumentTypeError(f"unknown target {', '.join(bad) or text!r}; expected all-linear or a "
                                         f"comma-separated list of {', '.join(known)}")
    return frozenset(known[n] for n in names)


def _enum(cls):
    def parse(text: str):
        try:
            return cls(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected one of {', '.join(m.value for m in cls)}, got {text!r}") \
                from None
    parse.__name__ = cls.__name__.lower()
    return parse


def cmd_memory(args) -> int:
    from ..analyze.memory import estimate_memory, format_estimate, load_shape

    est = estimate_memory(load_shape(args.model), args.method, r=args.r, batch_tokens=args.batch_tokens,
                          gradient_checkpointing=args.gradient_checkpointing, dtype=args.dtype,
                          optimizer=args.optimizer, targets=args.target_modules, lora_dropout=args.lora_dropout,
                          device=args.device)
    print(json.dumps(est.to_dict(), indent=1) if args.json else format_estimate(est))
    return 0


def cmd_adapter(args) -> int:
    from ..analyze.spectrum import analyze_adapter, format_spectrum, plot_spectra

    spec = analyze_adapter(args.adapter_dir, energy=args.energy, allow_pickle=args.allow_pickle)
    png = plot_spectra(spec, args.png) if args.png else None
    if args.json:
        print(json.dumps(spec.to_dict() | {"png": str(png) if png else None}, indent=1))
    else:
        print(format_spectrum(spec))
        if png:
            print(f"spectra plotted in {png}")
    return 0


def cmd_recommend(args) -> int:
    from ..analyze.memory import load_shape
    from ..analyze.recommend import format_recommendation, parse_params, recommend, shape_for_params

    shape = load_shape(args.model) if args.model else shape_for_params(parse_params(args.params))
    rec = recommend(shape, args.memory_gb, args.examples, args.task, args.dtype)
    print(json.dumps(rec.to_dict(), indent=1) if args.json else format_recommendation(rec, shape))
    return 0


def register(sub, parent) -> None:
    from ..analyze.memory import BUNDLED_SHAPES, Device, Dtype, Method, Optimizer
    from ..analyze.recommend import Task

    p = sub.add_parser("analyze", parents=[parent], help="memory estimate of a run; spectrum of a trained adapter",
                       formatter_class=RAW,
                       epilog="examples:\n  lorakit analyze memory --model llama-2-7b --method qlora --r 16 "
                              "--batch-tokens 2048 --gradient-checkpointing --dtype bfloat16\n"
                              "  lorakit analyze adapter runs/quickstart/adapter --png spectra.png")
    kinds = p.add_subparsers(dest="kind", required=True, metavar="KIND")

    g = kinds.add_parser("memory", parents=[parent], help="training memory by component (weights, gradients, "
                         "optimizer, activations, ...)")
    g.add_argument("--model", required=True,
                   help=f"bundled shape ({', '.join(BUNDLED_SHAPES)}), a config.json, a model dir or an embedded model")
    g.add_argument("--method", type=_enum(Method), required=True, help="lora, qlora or full")
    g.add_argument("--r", type=positive_int, default=16, help="LoRA rank")
    g.add_argument("--batch-tokens", type=positive_int, default=4096, help="tokens in one micro-batch (data.max_tokens)")
    g.add_argument("--gradient-checkpointing", action="store_true")
    g.add_argument("--dtype", type=_enum(Dtype), default=Dtype.FLOAT32, help="float32, bfloat16 or float16")
    g.add_argument("--optimizer", type=_enum(Optimizer), default=Optimizer.ADAMW, help="adamw or sgd (momentum)")
    g.add_argument("--target-modules", type=_targets, default="all-linear",
                   help="all-linear or a comma-separated list of q_proj,k_proj,v_proj,o_proj,gate_proj,up_proj,down_proj")
    g.add_argument("--lora-dropout", type=_dropout, default=0.0)
    g.add_argument("--device", type=_enum(Device), default=Device.CPU,
                   help="cpu (glibc: freed activations stay resident; the validated figure) or cuda (not counted)")
    g.add_argument("--json", action="store_true", help="print the estimate as JSON")
    g.set_defaults(func=cmd_memory)

    g = kinds.add_parser("adapter", parents=[parent], help="per-layer ‖ΔW‖, singular values, effective rank")
    g.add_argument("adapter_dir", help="a LoRA adapter directory (adapter_config.json + safetensors)")
    g.add_argument("--energy", type=_fraction, default=0.9, help="energy share for the energy rank (default 0.9)")
    g.add_argument("--png", help="write a PNG of the spectra here (needs matplotlib)")
    g.add_argument("--allow-pickle", action="store_true", help="read a legacy adapter_model.bin you trust")
    g.add_argument("--json", action="store_true", help="print the analysis as JSON")
    g.set_defaults(func=cmd_adapter)

    r = sub.add_parser("recommend", parents=[parent], help="which method and settings for a model, memory and data",
                       formatter_class=RAW,
                       epilog="example:\n  lorakit recommend --params 7B --memory-gb 24 --examples 5000 --task sft")
    which = r.add_mutually_exclusive_group(required=True)
    which.add_argument("--params", help="model size, e.g. 7B, 13B, 135M (a Llama-like shape of that size)")
    which.add_argument("--model", help=f"bundled shape ({', '.join(BUNDLED_SHAPES)}), config.json, model dir or "
                                       "embedded model")
    r.add_argument("--memory-gb", type=_positive_float, required=True, help="memory available for training (GB)")
    r.add_argument("--examples", type=positive_int, required=True, help="training examples")
    r.add_argument("--task", type=_enum(Task), default=Task.SFT, help="sft or classification")
    r.add_argument("--dtype", type=_enum(Dtype), default=Dtype.FLOAT32, help="training dtype")
    r.add_argument("--json", action="store_true")
    r.set_defaults(func=cmd_recommend)
