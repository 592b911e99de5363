"""What the subcommand modules share: exit code, argument types, model/generation options."""
from __future__ import annotations

import argparse
import math
from typing import Callable, get_args, get_origin

from pydantic import BaseModel

from ..errors import InputError

EXIT_USAGE = 2
RAW = argparse.RawDescriptionHelpFormatter


def positive_int(text: str) -> int:
    if not text.strip().isdigit() or int(text) <= 0:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}")
    return int(text)


def bounded_float(allowed: Callable[[float], bool], expected: str) -> Callable[[str], float]:
    """An argparse type: a finite number for which `allowed` holds, else "expected <expected>, got 'text'"."""
    def parse(text: str) -> float:
        try:
            value = float(text)
        except ValueError:
            value = math.nan
        if not math.isfinite(value) or not allowed(value):
            raise argparse.ArgumentTypeError(f"expected {expected}, got {text!r}")
        return value
    return parse


temperature = bounded_float(lambda v: v >= 0, "a finite number >= 0 (0 = greedy)")


def schema_help(schema: type[BaseModel], prefix: str = "") -> list[str]:
    """One line per config key: dotted name, default, description (the `--help` of train/quickstart)."""
    lines = []
    for name, field in schema.model_fields.items():
        kind = field.annotation
        nested = next((a for a in (kind, *get_args(kind)) if isinstance(a, type) and issubclass(a, BaseModel)), None)
        if nested is not None and get_origin(kind) is None:
            lines.append(f"  {prefix}{name}:")
            lines += schema_help(nested, f"{prefix}{name}.")
            continue
        default = "required" if field.is_required() else repr(field.get_default(call_default_factory=True))
        lines.append(f"    {prefix}{name} = {default}" + (f"  — {field.description}" if field.description else ""))
    return lines


def config_epilog() -> str:
    from ..train.config import RunConfig

    return ("config keys (set in the YAML file or as dotted.key=value overrides):\n"
            + "\n".join(schema_help(RunConfig)))


def model_args(p: argparse.ArgumentParser, required: bool = True):
    """--adapter DIR | --model NAME, and --base (the base of --adapter); returns the exclusive group."""
    which = p.add_mutually_exclusive_group(required=required)
    which.add_argument("--adapter", action="append", metavar="DIR",
                       help="adapter directory (its base comes from adapter_config.json); repeat it to apply "
                            "several plain LoRA adapters together (base + each update: progressive LoRA's "
                            "earlier adapters and the one trained on top; the base is the last one's)")
    which.add_argument("--model", help="model: a merged model dir, a local HF dir, a .gguf file or an embedded name")
    p.add_argument("--base", help="base model for --adapter, overriding base_model_name_or_path")
    allow_pickle_arg(p)
    return which


def allow_pickle_arg(p: argparse.ArgumentParser) -> None:
    p.add_argument("--allow-pickle", action="store_true",
                   help="read a legacy adapter_model.bin (pickle) when there is no safetensors file; "
                        "only for files you trust")


def gen_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--max-new-tokens", type=positive_int, default=256)
    p.add_argument("--temperature", type=temperature, default=0.0, help="0 = greedy")
    p.add_argument("--system", help="system prompt")


def load_trained_from_args(args):
    """The model of `--adapter DIR` (a directory holding adapter_config.json) or `--model NAME`."""
    from ..inference import load_trained
    from ..io import check_adapter_dir

    if getattr(args, "router", None) is not None:
        raise InputError("--router chooses the adapter; it takes no --adapter or --model")
    if args.adapter is None:
        if args.base:
            raise InputError("--base goes with --adapter; --model is loaded as it is")
        return load_trained(args.model)
    for adapter in args.adapter:
        check_adapter_dir(adapter, f"--adapter {adapter}")
    return load_trained(args.adapter, base=args.base, allow_pickle=args.allow_pickle)
