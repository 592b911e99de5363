"""`lorakit export gguf | gguf-lora | onnx`: a trained model for llama.cpp / Ollama or ONNX Runtime."""
from __future__ import annotations

from .common import RAW

F32_LIMITS = {"gguf": 1e-5, "gguf-lora": 1e-5}  # f32 files must match; f16 / q8_0 report their error


def _report(stats: dict, ok: bool) -> int:
    """Print the figures; exit 1 when a checked figure misses its bound (the output stays, for inspection)."""
    for key, value in stats.items():
        print(f"  {key}: {value:.3g}" if isinstance(value, float) else f"  {key}: {value}")
    if not ok:
        print("parity check FAILED: the output was written but does not match the PyTorch model")
    return 0 if ok else 1


def cmd_gguf(args) -> int:
    from ..export import export_gguf

    stats = export_gguf(args.source, args.output, args.type, base=args.base, check=not args.no_check,
                        overwrite=args.overwrite)
    print(f"GGUF written to {args.output} (llama.cpp: llama-cli -m {args.output})")
    ok = args.no_check or stats["parity_tokenizer_equal"] and (
        args.type != "f32" or stats["parity_max_abs_logit_diff"] <= F32_LIMITS["gguf"])
    return _report(stats, ok)


def cmd_gguf_lora(args) -> int:
    from ..export import export_gguf_lora

    stats = export_gguf_lora(args.adapter, args.output, base=args.base, gguf_type=args.type, check=not args.no_check,
                             overwrite=args.overwrite)
    print(f"LoRA GGUF written to {args.output} (llama.cpp: llama-cli -m BASE.gguf --lora {args.output})")
    ok = args.no_check or args.type != "f32" or stats["parity_max_rel_delta_diff"] <= F32_LIMITS["gguf-lora"]
    return _report(stats, ok)


def cmd_onnx(args) -> int:
    from ..export import export_onnx
    from ..export.onnx_runtime import LOGIT_LIMIT, OnnxParity

    stats = export_onnx(args.source, args.output, base=args.base, check=not args.no_check, overwrite=args.overwrite)
    print(f"ONNX model written to {args.output} (model.onnx, tokenizer, onnx_export.json)")
    ok = True
    if not args.no_check:
        parity = OnnxParity(**{k.removeprefix("parity_"): v for k, v in stats.items() if k.startswith("parity_")})
        if parity.onnx_vs_float64 is not None:
            print(f"onnxruntime and PyTorch fp32 differ by more than {LOGIT_LIMIT:g}; against the exact (float64) "
                  f"logits, onnxruntime is off by {parity.onnx_vs_float64:.3g} and PyTorch fp32 by "
                  f"{parity.torch_vs_float64:.3g}")
        ok = parity.passed()
    return _report(stats, ok)


def register(sub, parent) -> None:
    p = sub.add_parser("export", parents=[parent], help="export to GGUF (llama.cpp) or ONNX, checked by reading back",
                       formatter_class=RAW,
                       description="Export a trained adapter (merged into its base) or a model directory.\n"
                                   "Each export is read back by an independent reader and compared (--no-check skips).",
                       epilog="examples:\n  lorakit export gguf runs/quickstart/adapter out/notes.gguf --type q8_0\n"
                              "  lorakit export gguf-lora runs/quickstart/adapter out/notes-lora.gguf\n"
                              "  lorakit export onnx runs/quickstart/adapter out/notes-onnx")
    kinds = p.add_subparsers(dest="format", required=True, metavar="FORMAT")

    def add(name, func, help, source, output, check, types=True, overwrite="replace an existing output file"):
        g = kinds.add_parser(name, parents=[parent], help=help)
        g.add_argument(source[0], help=source[1])
        g.add_argument("output", help=output)
        if types:
            g.add_argument("--type", choices=["f32", "f16", "q8_0"], default="f32", help="tensor type (default f32)")
        g.add_argument("--base", help="base model of an adapter, overriding base_model_name_or_path")
        g.add_argument("--no-check", action="store_true", help=check)
        g.add_argument("--overwrite", action="store_true", help=overwrite)
        g.set_defaults(func=func)

    add("gguf", cmd_gguf, "merged model as one GGUF file (Llama family)",
        ("source", "adapter directory, merged/compressed model directory, .gguf or embedded name"),
        "the .gguf file to write", "skip reading the file back with transformers")
    add("gguf-lora", cmd_gguf_lora, "the adapter alone in llama.cpp's LoRA GGUF layout",
        ("adapter", "LoRA adapter directory"), "the .gguf file to write", "skip rebuilding ΔW from the file")
    add("onnx", cmd_onnx, "merged model as ONNX (with key/value cache) + tokenizer",
        ("source", "adapter directory, merged/compressed model directory or embedded name"),
        "directory to write (model.onnx, tokenizer files, onnx_export.json)", "skip the onnxruntime comparison",
        types=False, overwrite="replace a non-empty OUT_DIR")
