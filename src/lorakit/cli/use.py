"""`lorakit eval`, `generate` and `chat`: using a trained adapter or model."""
from __future__ import annotations

import json

from ..data.formats import FORMATS
from ..errors import InputError
from .common import gen_args, load_trained_from_args, model_args, positive_int


def cmd_eval(args) -> int:
    from ..data.formats import load_dataset
    from ..train.evaluate import evaluate_dataset
    from ..train.prepare import data_path

    dataset = load_dataset(data_path(args.data, "--data"), args.format)
    trained = load_trained_from_args(args)
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
    from ..inference import classify, generate
    from ..train.config import Task

    if not args.prompt.strip():
        raise InputError("prompt: empty; give the text to answer (or use lorakit chat)")
    trained = load_trained_from_args(args)
    if trained.task is Task.CLASSIFICATION:
        label, p = classify(trained, args.prompt)
        print(f"{label}\t{p:.3f}")
        return 0
    generate(trained, args.prompt, args.max_new_tokens, args.temperature, args.system,
             on_text=lambda piece: print(piece, end="", flush=True))
    print()
    return 0


def cmd_chat(args) -> int:
    from ..inference import chat_messages, generate
    from ..train.config import Task

    trained = load_trained_from_args(args)
    if trained.task is not Task.SFT:
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


def register(sub, parent) -> None:
    p = sub.add_parser("eval", parents=[parent], help="loss, perplexity, exact match or accuracy on a data file")
    model_args(p)
    p.add_argument("--data", required=True, help="data file (json, jsonl, csv, parquet) or bundled:NAME")
    p.add_argument("--format", choices=list(FORMATS), help="data format (detected when omitted)")
    p.add_argument("--max-samples", type=positive_int)
    p.add_argument("--max-length", type=positive_int, default=512)
    p.add_argument("--max-new-tokens", type=positive_int, default=48)
    p.add_argument("--batch-size", type=positive_int, default=16)
    p.add_argument("--json", action="store_true", help="print one JSON object")
    p.set_defaults(func=cmd_eval)

    p = sub.add_parser("generate", parents=[parent], help="answer one prompt (streams tokens)")
    model_args(p)
    p.add_argument("prompt")
    gen_args(p)
    p.set_defaults(func=cmd_generate)

    p = sub.add_parser("chat", parents=[parent], help="interactive chat, streaming tokens")
    model_args(p)
    gen_args(p)
    p.set_defaults(func=cmd_chat)
