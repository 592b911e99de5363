"""`lorakit merge`: fold an adapter into its base and write a plain transformers model."""
from __future__ import annotations


def cmd_merge(args) -> int:
    from ..merge import merge_adapter_to_dir

    stats = merge_adapter_to_dir(args.adapter, args.output, requantize=args.requantize, base_model=args.base)
    print(f"merged model written to {args.output} (loads with transformers.AutoModelForCausalLM.from_pretrained)")
    for key, value in stats.items():
        print(f"  {key}: {value}")
    return 0


def register(sub, parent) -> None:
    p = sub.add_parser("merge", parents=[parent],
                       help="fold an adapter into its base; write a plain transformers model")
    p.add_argument("adapter", help="adapter directory")
    p.add_argument("output", help="directory for the merged model + tokenizer")
    p.add_argument("--base", help="base model, overriding the adapter's base_model_name_or_path")
    p.add_argument("--requantize", choices=["nf4"], help="also report the error of re-quantizing the merged weights")
    p.set_defaults(func=cmd_merge)
