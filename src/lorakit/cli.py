"""The `lorakit` command: each subcommand parses its arguments and calls one function.

Errors a user can fix (bad config, bad data, missing model, bad adapter) print one line and exit
with code 2; `--debug` shows the traceback instead.
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Optional, get_args, get_origin

from pydantic import BaseModel

from .errors import InputError

EXIT_USAGE = 2


def _schema_help(schema: type[BaseModel], prefix: str = "") -> list[str]:
    """One line per config key: dotted name, default, description (the `--help` of train/quickstart)."""
    lines = []
    for name, field in schema.model_fields.items():
        kind = field.annotation
        nested = next((a for a in (kind, *get_args(kind)) if isinstance(a, type) and issubclass(a, BaseModel)), None)
        if nested is not None and get_origin(kind) is None:
            lines.append(f"  {prefix}{name}:")
            lines += _schema_help(nested, f"{prefix}{name}.")
            continue
        default = "required" if field.is_required() else repr(field.get_default(call_default_factory=True))
        lines.append(f"    {prefix}{name} = {default}" + (f"  — {field.description}" if field.description else ""))
    return lines


def _config_epilog() -> str:
    from .train.config import RunConfig

    return ("config keys (set in the YAML file or as dotted.key=value overrides):\n"
            + "\n".join(_schema_help(RunConfig)))


def _positive_int(text: str) -> int:
    if not text.strip().isdigit() or int(text) <= 0:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}")
    return int(text)


def _load_trained(args):
    """The model of `--adapter DIR` (a directory holding adapter_config.json) or `--model NAME`."""
    from .inference import load_trained
    from .io import CONFIG_NAME, AdapterFormatError

    if args.adapter is None:
        if args.base:
            raise InputError("--base goes with --adapter; --model is loaded as it is")
        return load_trained(args.model)
    if not (Path(args.adapter).expanduser() / CONFIG_NAME).is_file():
        raise AdapterFormatError(f"--adapter {args.adapter}: not an adapter directory (no {CONFIG_NAME})")
    return load_trained(args.adapter, base=args.base)


def cmd_train(args) -> int:
    from .config import load_config
    from .train.config import RunConfig
    from .train.loop import train

    config = load_config(RunConfig, args.config, args.overrides)
    result = train(config, resume=args.resume)
    _print_result(result)
    return 0


def cmd_quickstart(args) -> int:
    from .train.quickstart import run_quickstart

    run_quickstart(args.overrides)
    return 0


def cmd_eval(args) -> int:
    from .data.formats import load_dataset
    from .train.evaluate import evaluate_dataset
    from .train.prepare import data_path

    dataset = load_dataset(data_path(args.data, "--data"), args.format)
    trained = _load_trained(args)
    result = evaluate_dataset(trained.model, trained.tokenizer, dataset, labels=trained.labels,
                              max_length=args.max_length, max_new_tokens=args.max_new_tokens,
                              batch_size=args.batch_size, max_samples=args.max_samples)
    metrics = {**result.metrics(), "rows": min(len(dataset), args.max_samples or len(dataset))}
    if args.json:
        print(json.dumps(metrics))
    else:
        print("  ".join(f"{k}: {v:.4f}" if isinstance(v, float) else f"{k}: {v}" for k, v in metrics.items()))
    return 0


def cmd_generate(args) -> int:
    from .inference import classify, generate

    trained = _load_trained(args)
    if trained.task == "classification":
        label, p = classify(trained, args.prompt)
        print(f"{label}\t{p:.3f}")
        return 0
    generate(trained, args.prompt, args.max_new_tokens, args.temperature, args.system,
             on_text=lambda piece: print(piece, end="", flush=True))
    print()
    return 0


def cmd_chat(args) -> int:
    from .inference import chat_messages, generate

    trained = _load_trained(args)
    if trained.task != "sft":
        raise InputError(f"{args.adapter or args.model}: a classifier cannot chat; use lorakit generate")
    print(f"chatting with {trained.adapter_dir or trained.base} — empty line or Ctrl-D to quit, /reset to start over")
    history: list[dict] = []
    while True:
        try:
            line = input("you> ").strip()
        except EOFError:
            print()
            return 0
        if not line:
            return 0
        if line == "/reset":
            history = []
            continue
        messages = chat_messages(line, args.system, history)
        print("bot> ", end="", flush=True)
        reply = generate(trained, messages, args.max_new_tokens, args.temperature,
                         on_text=lambda piece: print(piece, end="", flush=True))
        print()
        history = messages[1 if args.system else 0:] + [{"role": "assistant", "content": reply}]


def cmd_merge(args) -> int:
    from .merge import merge_adapter_to_dir

    stats = merge_adapter_to_dir(args.adapter, args.output, requantize=args.requantize, base_model=args.base)
    print(f"merged model written to {args.output} (loads with transformers.AutoModelForCausalLM.from_pretrained)")
    for key, value in stats.items():
        print(f"  {key}: {value}")
    return 0


def cmd_inspect(args) -> int:
    from .analysis import describe_adapted, describe_model
    from .config import load_config
    from .models import load_causal_lm, load_classifier
    from .train.config import RunConfig
    from .train.prepare import attach_method

    overrides, name = list(args.overrides), args.model
    if name and "=" in name:  # `lorakit inspect lora.r=8`: no model given, only overrides
        overrides, name = [name, *overrides], None
    run = load_config(RunConfig, args.config, overrides, base=None if args.config else {"data": {"train": "-"}})
    name = name or run.model.name
    model, _ = load_classifier(name) if run.task == "classification" else load_causal_lm(name)
    print(describe_model(model))
    names = attach_method(model, run)
    adapter = run.adapter
    rank = getattr(adapter, "init_r", None) or adapter.r
    targets = "the preset targets" if adapter.target_modules is None else repr(adapter.target_modules)
    what = "full fine-tuning" if run.method == "full" else f"{run.method} r={rank} on {targets}"
    print(describe_adapted(model, names, what))
    return 0


def _print_result(result) -> None:
    ev = result.final_eval
    metrics = "  ".join(f"{k} {v:.4f}" for k, v in (ev.metrics() if ev else {}).items())
    print(f"done: {result.steps} steps in {result.seconds:.0f}s; {metrics}")
    print(f"saved: {result.adapter_dir}  (metrics.jsonl, loss_curve.png and config.yaml in {result.output_dir})")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="lorakit", description="LoRA-family fine-tuning, offline and CPU-first.")
    parser.add_argument("--debug", action="store_true", help="show tracebacks instead of one-line errors")
    debug = argparse.ArgumentParser(add_help=False)  # `lorakit train x.yaml --debug` works too
    debug.add_argument("--debug", action="store_true", default=argparse.SUPPRESS, help=argparse.SUPPRESS)
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    raw = argparse.RawDescriptionHelpFormatter

    p = sub.add_parser("train", parents=[debug], help="fine-tune from a YAML config", epilog=_config_epilog(),
                       formatter_class=raw,
                       description="Fine-tune as CONFIG says; dotted.key=value arguments override the file.")
    p.add_argument("config", help="YAML run config (see configs/)")
    p.add_argument("overrides", nargs="*", metavar="key=value", help="e.g. train.lr=1e-3 lora.r=8")
    p.add_argument("--resume", action="store_true", help="continue from the newest checkpoint in output_dir")
    p.set_defaults(func=cmd_train)

    p = sub.add_parser("quickstart", parents=[debug],
                       help="evaluate, fine-tune and re-evaluate SmolLM2 on the bundled task",
                       epilog=_config_epilog(), formatter_class=raw,
                       description="The bundled demo run (configs/quickstart.yaml); dotted.key=value overrides apply.")
    p.add_argument("overrides", nargs="*", metavar="key=value")
    p.set_defaults(func=cmd_quickstart)

    def model_args(p: argparse.ArgumentParser) -> None:
        which = p.add_mutually_exclusive_group(required=True)
        which.add_argument("--adapter", help="adapter directory (its base comes from adapter_config.json)")
        which.add_argument("--model", help="model: a merged model dir, a local HF dir, a .gguf file or an embedded name")
        p.add_argument("--base", help="base model for --adapter, overriding base_model_name_or_path")

    def gen_args(p: argparse.ArgumentParser) -> None:
        p.add_argument("--max-new-tokens", type=_positive_int, default=256)
        p.add_argument("--temperature", type=float, default=0.0, help="0 = greedy")
        p.add_argument("--system", help="system prompt")

    p = sub.add_parser("eval", parents=[debug], help="loss, perplexity, exact match or accuracy on a data file")
    model_args(p)
    p.add_argument("--data", required=True, help="data file (json, jsonl, csv, parquet) or bundled:NAME")
    p.add_argument("--format", help="data format (detected when omitted)")
    p.add_argument("--max-samples", type=_positive_int)
    p.add_argument("--max-length", type=_positive_int, default=512)
    p.add_argument("--max-new-tokens", type=_positive_int, default=48)
    p.add_argument("--batch-size", type=_positive_int, default=16)
    p.add_argument("--json", action="store_true", help="print one JSON object")
    p.set_defaults(func=cmd_eval)

    p = sub.add_parser("generate", parents=[debug], help="answer one prompt (streams tokens)")
    model_args(p)
    p.add_argument("prompt")
    gen_args(p)
    p.set_defaults(func=cmd_generate)

    p = sub.add_parser("chat", parents=[debug], help="interactive chat, streaming tokens")
    model_args(p)
    gen_args(p)
    p.set_defaults(func=cmd_chat)

    p = sub.add_parser("merge", parents=[debug],
                       help="fold an adapter into its base; write a plain transformers model")
    p.add_argument("adapter", help="adapter directory")
    p.add_argument("output", help="directory for the merged model + tokenizer")
    p.add_argument("--base", help="base model, overriding the adapter's base_model_name_or_path")
    p.add_argument("--requantize", choices=["nf4"], help="also report the error of re-quantizing the merged weights")
    p.set_defaults(func=cmd_merge)

    p = sub.add_parser("inspect", parents=[debug],
                       help="a model's adaptable modules, suggested targets, trainable-param count",
                       epilog="examples:\n  lorakit inspect\n  lorakit inspect --config configs/quickstart.yaml\n"
                              "  lorakit inspect path/to/model lora.r=8 'lora.target_modules=[q_proj,v_proj]'\n"
                              "  lorakit inspect all-minilm-l6-v2 task=classification",
                       formatter_class=raw)
    p.add_argument("model", nargs="?", help="model (default: the config's model, else SmolLM2-135M)")
    p.add_argument("--config", help="run config whose model and adapter to count")
    p.add_argument("overrides", nargs="*", metavar="lora.key=value")
    p.set_defaults(func=cmd_inspect)
    return parser


def _quiet_transformers() -> None:
    """Hide transformers' load reports and weight-loading bars (expected: a new classifier head)."""
    from transformers.utils import logging

    logging.set_verbosity_error()
    logging.disable_progress_bar()


def user_errors() -> tuple[type[BaseException], ...]:
    """Exceptions that mean "fix your input", reported in one line."""
    from .train.loop import TrainingError

    # ConfigError, DataError, AdapterFormatError... are InputErrors; ModelNotFoundError is a FileNotFoundError.
    return InputError, TrainingError, FileNotFoundError, NotADirectoryError, PermissionError


def main(argv: Optional[list[str]] = None) -> int:
    args = build_parser().parse_args(argv)
    if not args.debug:
        _quiet_transformers()
    if args.debug:
        return args.func(args)
    try:
        return args.func(args)
    except KeyboardInterrupt:
        print("\ninterrupted", file=sys.stderr)
        return 130
    except user_errors() as e:
        message = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        print(f"lorakit {args.command}: error: {message}", file=sys.stderr)
        return EXIT_USAGE


if __name__ == "__main__":
    sys.exit(main())
