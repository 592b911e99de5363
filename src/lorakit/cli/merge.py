"""`lorakit merge`, `combine`, `merge-models` and `extract`: adapters into models, and models into each other."""
from __future__ import annotations

import argparse
import re

from .common import RAW, positive_int


def cmd_merge(args) -> int:
    from ..merge import merge_adapter_to_dir

    stats = merge_adapter_to_dir(args.adapter, args.output, requantize=args.requantize, base_model=args.base,
                                 overwrite=args.overwrite)
    print(f"merged model written to {args.output} (loads with transformers.AutoModelForCausalLM.from_pretrained)")
    for key, value in stats.items():
        print(f"  {key}: {value}")
    return 0


def cmd_combine(args) -> int:
    from ..errors import InputError
    from ..merge import combine_adapter_dirs

    *adapters, output = args.paths
    if not adapters:
        raise InputError("give at least one adapter directory and then the output directory")
    weights = args.weights if args.weights is not None else [1.0] * len(adapters)
    stats = combine_adapter_dirs(adapters, weights, output, method=args.method, overwrite=args.overwrite,
                                 svd_rank=args.svd_rank, density=args.density,
                                 majority_sign_method=args.majority_sign_method, svd_clamp=args.svd_clamp,
                                 seed=args.seed)
    print(f"combined adapter written to {output} ({args.method} of {len(adapters)} adapters, "
          f"weights {', '.join(f'{w:g}' for w in weights)}; rank {stats['rank']}"
          + (f", per-layer ranks {stats['ranks']}" if len(stats["ranks"]) > 1 else "") + f", {stats['modules']} layers)")
    return 0


def cmd_merge_models(args) -> int:
    from ..merge import merge_models

    stats = merge_models(args.recipe, args.output, overwrite=args.overwrite, seed=args.seed,
                         max_shard_bytes=args.max_shard_size, progress=True)
    print(f"merged model written to {args.output} (loads with transformers.AutoModelForCausalLM.from_pretrained)")
    for key, value in stats.items():
        print(f"  {key}: {value}")
    return 0


def cmd_extract(args) -> int:
    from ..merge import extract_lora

    result = extract_lora(args.base, args.tuned, args.output, rank=args.rank, energy=args.energy,
                          keep_other=not args.drop_other, overwrite=args.overwrite)
    width = max(len(m) for m in result.layers)
    print(f"{'layer'.ljust(width)}  rank  kept ‖ΔW‖²")
    for module, (rank, kept) in result.layers.items():
        print(f"{module.ljust(width)}  {rank:>4}  {100 * kept:6.2f}%")
    ranks = sorted({r for r, _ in result.layers.values()})
    print(f"LoRA adapter written to {args.output}: {len(result.layers)} layers, rank "
          f"{ranks[0] if len(ranks) == 1 else f'{ranks[0]}-{ranks[-1]}'}, keeps {100 * result.kept_energy:.2f}% "
          f"of Σ‖ΔW‖²")
    if result.biases:
        print(f"  changed biases saved (bias=lora_only): {len(result.biases)}")
    if result.modules_to_save:
        print(f"  modules_to_save: {', '.join(result.modules_to_save)}")
    for key, why in result.dropped.items():
        print(f"  dropped {key}: {why}")
    return 0


_SIZE = re.compile(r"(\d+(?:\.\d+)?)\s*([KMG]i?B|B)?", re.IGNORECASE)
_UNITS = {"b": 1, "kb": 10 ** 3, "mb": 10 ** 6, "gb": 10 ** 9, "kib": 2 ** 10, "mib": 2 ** 20, "gib": 2 ** 30}


def byte_size(text: str) -> int:
    """'2GB', '500MiB', '1048576' → bytes."""
    m = _SIZE.fullmatch(text.strip())
    if not m or float(m.group(1)) <= 0:
        raise argparse.ArgumentTypeError(f"expected a size such as 2GB or 500MiB, got {text!r}")
    return int(float(m.group(1)) * _UNITS[(m.group(2) or "b").lower()])


def unit_float(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number between 0 and 1, got {text!r}") from None
    if not 0 <= value <= 1:
        raise argparse.ArgumentTypeError(f"expected a number between 0 and 1, got {text!r}")
    return value


def register(sub, parent) -> None:
    p = sub.add_parser("merge", parents=[parent],
                       help="fold an adapter into its base; write a plain transformers model")
    p.add_argument("adapter", help="adapter directory")
    p.add_argument("output", help="directory for the merged model + tokenizer")
    p.add_argument("--base", help="base model, overriding the adapter's base_model_name_or_path")
    p.add_argument("--requantize", choices=["nf4"], help="also report the error of re-quantizing the merged weights")
    p.add_argument("--overwrite", action="store_true", help="replace a non-empty OUT_DIR")
    p.set_defaults(func=cmd_merge)

    from ..merge import COMBINATIONS

    p = sub.add_parser("combine", parents=[parent], formatter_class=RAW,
                       help="a new adapter from weighted combinations of adapters (peft's add_weighted_adapter)",
                       description="Combine LoRA adapters into one peft-format adapter, without loading the base.",
                       epilog="examples:\n  lorakit combine runs/a/adapter runs/b/adapter out/ab --method cat\n"
                              "  lorakit combine out/ab runs/a/adapter out/b_only --weights 1 -1   # task negation\n"
                              "  lorakit combine a b out --method ties_svd --density 0.5 --svd-rank 16")
    p.add_argument("paths", nargs="+", metavar="DIR",
                   help="adapter directories, then the output directory")
    p.add_argument("--weights", nargs="+", type=float, metavar="W",
                   help="one weight per adapter (default 1 each); negative subtracts")
    p.add_argument("--method", default="cat", choices=list(COMBINATIONS),
                   help="cat: exact, rank Σr; svd*: full ΔW truncated to --svd-rank; others act on the factors")
    p.add_argument("--density", type=unit_float, help="share of entries kept (ties, dare_*, magnitude_prune*)")
    p.add_argument("--majority-sign-method", default="total", choices=["total", "frequency"],
                   help="TIES sign election")
    p.add_argument("--svd-rank", type=positive_int, help="rank of the svd* methods (default: the largest input rank)")
    p.add_argument("--svd-clamp", type=unit_float, help="clamp the SVD factors at this quantile")
    p.add_argument("--seed", type=int, help="seed of DARE's random drop")
    p.add_argument("--overwrite", action="store_true", help="replace a non-empty OUT_DIR")
    p.set_defaults(func=cmd_combine)

    p = sub.add_parser("merge-models", parents=[parent], formatter_class=RAW,
                       help="merge whole models from a mergekit-format recipe (linear, slerp, ties, dare, ...)",
                       description="Merge models as RECIPE says (mergekit's YAML format), streaming tensor by "
                                   "tensor; write a sharded safetensors model to OUT_DIR.",
                       epilog="recipe example:\n  merge_method: ties\n  base_model: smollm2-135m-instruct\n"
                              "  models:\n    - model: smollm2-135m-instruct+runs/a/adapter\n"
                              "      parameters: {weight: 1.0, density: 0.5}\n    - model: runs/b/merged\n"
                              "      parameters: {weight: 1.0, density: 0.5}\n  dtype: float32")
    p.add_argument("recipe", help="recipe YAML file")
    p.add_argument("output", help="directory for the merged model + tokenizer")
    p.add_argument("--overwrite", action="store_true", help="replace a non-empty OUT_DIR")
    p.add_argument("--seed", type=int, default=0, help="seed of DARE's random drop (default 0)")
    p.add_argument("--max-shard-size", type=byte_size, default=2 * 1024 ** 3, metavar="SIZE",
                   help="largest output shard, e.g. 500MB (default 2GiB)")
    p.set_defaults(func=cmd_merge_models)

    p = sub.add_parser("extract", parents=[parent],
                       help="a LoRA adapter from the difference between a fine-tuned model and its base")
    p.add_argument("output", help="directory for the adapter")
    p.add_argument("--base", required=True, help="the base model (dir, .gguf, embedded name or BASE+ADAPTER)")
    p.add_argument("--tuned", required=True, help="the fine-tuned model, same architecture")
    p.add_argument("--rank", type=positive_int, help="rank of every layer (with --energy: the largest)")
    p.add_argument("--energy", type=unit_float, help="per layer, the smallest rank keeping this share of ‖ΔW‖²")
    p.add_argument("--drop-other", action="store_true",
                   help="drop changed non-linear tensors (norms, embeddings) instead of saving them as modules_to_save")
    p.add_argument("--overwrite", action="store_true", help="replace a non-empty OUT_DIR")
    p.set_defaults(func=cmd_extract)
