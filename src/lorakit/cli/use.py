"""`lorakit eval`, `generate` and `chat`: using a trained adapter or model."""
from __future__ import annotations

import json
import sys

from ..data.formats import FORMATS
from ..errors import InputError
from ..train.forgetting import Probe
from .common import RAW, gen_args, load_trained_from_args, model_args, positive_int

EVAL_EPILOG = """examples:
  lorakit eval --adapter runs/notes/adapter --data bundled:quickstart_eval
  lorakit eval --adapter runs/b/adapter --data bundled:quickstart_eval --data bundled:contacts_eval --probe
  lorakit eval --compare runs/a runs/b

With several --data, --probe, --config or --out, one table is printed and its rows are appended to
the run's metrics.jsonl (the adapter's parent directory) or to --out.
"""


def cmd_eval(args) -> int:
    if args.compare:
        return _compare(args)
    if args.adapter is None and args.model is None:
        raise InputError("one of the arguments --adapter --model is required (or --compare RUN_A RUN_B)")
    from ..train.forgetting import EvalOptions, evaluate_and_record, evaluate_file, format_table

    options = EvalOptions(max_length=args.max_length, max_new_tokens=args.max_new_tokens,
                          batch_size=args.batch_size, max_samples=args.max_samples,
                          probe_max_new_tokens=args.probe_max_new_tokens)

    def load():  # called once every data row has been read and checked
        return load_trained_from_args(args)

    if len(args.data) == 1 and args.probe is None and args.out is None and args.config is None:
        metrics = evaluate_file(load, args.data[0], options, args.format,  # one line, nothing written
                                adapter=args.adapter[-1] if args.adapter else None)
        if args.json:
            print(json.dumps(metrics))
        else:
            print("  ".join(f"{k}: {v:.4f}" if isinstance(v, float) else f"{k}: {v}" for k, v in metrics.items()))
        return 0
    rows, written = evaluate_and_record(load, args.data, args.probe, options, config=args.config, out=args.out,
                                        adapter=args.adapter[-1] if args.adapter else None, format=args.format)
    if args.json:
        print("\n".join(json.dumps(r) for r in rows))
    else:
        print(format_table(rows))
        if written is not None:
            print(f"rows appended to {written}")
    return 0


def _compare(args) -> int:
    from ..train.forgetting import compare_runs, format_comparison

    if args.adapter or args.model or args.data or args.probe or args.out or args.config:
        raise InputError("--compare RUN_A RUN_B reads the runs' metrics; it takes no --adapter, --model, --data, "
                         "--probe, --out or --config")
    before, after = args.compare
    pairs = compare_runs(before, after)
    print("\n".join(json.dumps(p) for p in pairs) if args.json else format_comparison(pairs, before, after))
    return 0


def _check_task(args) -> None:
    """`--task NAME` that the adapter records no prefix for: refused before the model loads."""
    from ..data.prefixes import prefix_for
    from ..io import is_adapter_dir, read_task_prefixes

    if args.task is not None and args.adapter and is_adapter_dir(args.adapter[-1]):
        prefix_for(read_task_prefixes(args.adapter[-1]), args.task, "--task", args.adapter[-1])


def cmd_generate(args) -> int:
    from ..inference import classify, generate, task_prefix
    from ..train.config import Task

    if not args.prompt.strip():
        raise InputError("prompt: empty; give the text to answer (or use lorakit chat)")
    if args.router is not None:
        from ..task_router import load_routed

        if args.base:
            raise InputError("--base goes with --adapter; --router's adapters load on their own bases")
        task, trained = load_routed(args.router, args.prompt, allow_pickle=args.allow_pickle)
        print(f"[routed to {task}]", file=sys.stderr, flush=True)
    else:
        _check_task(args)
        trained = load_trained_from_args(args)
    prompt = task_prefix(trained, args.task) + args.prompt
    if trained.task is Task.CLASSIFICATION:
        label, p = classify(trained, prompt)
        print(f"{label}\t{p:.3f}")
        return 0
    generate(trained, prompt, args.max_new_tokens, args.temperature, args.system,
             on_text=lambda piece: print(piece, end="", flush=True))
    print()
    return 0


def cmd_chat(args) -> int:
    from ..data.prefixes import prefix_messages
    from ..inference import chat_messages, generate, task_prefix
    from ..train.config import Task

    _check_task(args)
    trained = load_trained_from_args(args)
    prefix = task_prefix(trained, args.task)
    if trained.task is not Task.SFT:
        raise InputError(f"{args.adapter[-1] if args.adapter else args.model}: a classifier cannot chat; "
                         "use lorakit generate")
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
        if not history:  # the task prefix goes in front of the first user message, as in training
            messages = prefix_messages(messages, prefix)
        print("bot> ", end="", flush=True)
        reply = generate(trained, messages, args.max_new_tokens, args.temperature,
                         on_text=lambda piece: print(piece, end="", flush=True))
        print()
        history = messages[1 if args.system else 0:] + [{"role": "assistant", "content": reply}]


def register(sub, parent) -> None:
    p = sub.add_parser("eval", parents=[parent], formatter_class=RAW, epilog=EVAL_EPILOG,
                       help="loss, perplexity, exact match or accuracy on data files; forgetting (--probe, --compare)")
    model_args(p, required=False)
    p.add_argument("--data", action="append", default=[], metavar="[TASK=]FILE",
                   help="data file (json, jsonl, csv, parquet) or bundled:NAME; repeat to score several sets as one "
                        "table (default: eval.suites of the run's config.yaml). TASK=FILE puts the prefix the "
                        "adapter was trained with for TASK (task_prefixes.json) in front of every prompt")
    p.add_argument("--format", choices=list(FORMATS), help="data format (detected per file when omitted)")
    p.add_argument("--probe", type=Probe, nargs="?", const=Probe.ALL, metavar="KIND",
                   help="add the general-skill probe: perplexity (general-text sample), agreement (with the base "
                        "model's answers to general prompts) or all (the default)")
    p.add_argument("--probe-max-new-tokens", type=positive_int, default=48, metavar="N",
                   help="answer length of the agreement probe (default 48)")
    p.add_argument("--config", metavar="YAML", help="read eval.suites from this run config (default: the "
                                                    "adapter's run config.yaml when no --data is given)")
    p.add_argument("--out", metavar="JSONL", help="append the rows here instead of the run's metrics.jsonl")
    p.add_argument("--compare", nargs=2, metavar=("RUN_A", "RUN_B"),
                   help="print before/after deltas of the latest eval rows in two runs' metrics.jsonl")
    p.add_argument("--max-samples", type=positive_int)
    p.add_argument("--max-length", type=positive_int, default=512)
    p.add_argument("--max-new-tokens", type=positive_int, default=48)
    p.add_argument("--batch-size", type=positive_int, default=16)
    p.add_argument("--json", action="store_true", help="print JSON (one object, or one per table row)")
    p.set_defaults(func=cmd_eval)

    p = sub.add_parser("generate", parents=[parent], help="answer one prompt (streams tokens)")
    which = model_args(p)
    which.add_argument("--router", metavar="DIR", help="a router (lorakit router build) picks the task adapter "
                                                       "for the prompt")
    p.add_argument("prompt")
    gen_args(p)
    task_arg(p)
    p.set_defaults(func=cmd_generate)

    p = sub.add_parser("chat", parents=[parent], help="interactive chat, streaming tokens")
    model_args(p)
    gen_args(p)
    task_arg(p)
    p.set_defaults(func=cmd_chat)


def task_arg(p) -> None:
    p.add_argument("--task", metavar="NAME", help="put the prefix the adapter was trained with for this task "
                                                  "(a data.train source's name, task_prefixes.json) in front of "
                                                  "the prompt")
