"""`lorakit router build`: a TaskRouter from the tasks' adapters and training prompts."""
from __future__ import annotations

from ..task_router import RouterKind
from .common import RAW, positive_int

EPILOG = """examples:
  lorakit router build --task notes=runs/notes/adapter:bundled:quickstart_train \\
      --task contacts=runs/contacts/adapter:bundled:contacts_train runs/router
  lorakit generate --router runs/router "Call Ana Ruiz at 555-201-3344."
  lorakit serve --router runs/router      # then {"model": "auto", ...} is routed per request
"""


def cmd_build(args) -> int:
    from ..task_router import build_router

    router = build_router(args.task, args.output, encoder=args.encoder, kind=args.kind,
                          max_prompts=args.max_prompts, overwrite=args.overwrite)
    counts = ", ".join(f"{n} ({router.counts[n]} prompts)" for n in router.names)
    print(f"router ({router.kind.value}, {router.encoder_name}) saved to {args.output}: {counts}")
    return 0


def register(sub, parent) -> None:
    from ..models import DEFAULT_ENCODER

    p = sub.add_parser("router", parents=[parent], help="route prompts to per-task adapters (lorakit router build)")
    commands = p.add_subparsers(dest="router_command", required=True, metavar="SUBCOMMAND")
    b = commands.add_parser("build", parents=[parent], formatter_class=RAW, epilog=EPILOG,
                            help="fit a router on the tasks' prompts and save it")
    b.add_argument("--task", action="append", default=[], required=True, metavar="NAME=ADAPTER_DIR:DATA",
                   help="a task: its adapter and its training data (a file or bundled:NAME); at least two")
    b.add_argument("output", help="router directory to write (router.json + router.safetensors)")
    b.add_argument("--encoder", default=DEFAULT_ENCODER,
                   help=f"sentence encoder: an embedded name or a local HF encoder dir (default {DEFAULT_ENCODER})")
    b.add_argument("--kind", type=RouterKind, default=RouterKind.CENTROID, metavar="{centroid,linear}",
                   help="centroid (default): nearest task centroid (cosine); linear: a small classifier on the "
                        "embeddings")
    b.add_argument("--max-prompts", type=positive_int, metavar="N", help="use at most N prompts per task")
    b.add_argument("--overwrite", action="store_true", help="replace a non-empty output directory")
    b.set_defaults(func=cmd_build)
