"""`lorakit ui`: the web dashboard (runs, live curves, comparisons, chat playground, starting runs)."""
from __future__ import annotations

from ..errors import InputError
from .common import RAW, positive_int
from .serve import port_number

EPILOG = """examples:
  lorakit ui                                   # http://127.0.0.1:7860/ui/ over ./runs
  lorakit ui --runs runs --data data --model smollm2-135m-instruct
  lorakit ui --host 0.0.0.0 --api-key "$KEY"   # reachable from other machines; the page asks for KEY
  lorakit serve --adapter notes=runs/quickstart/adapter --ui   # the same pages on a running server
"""


def need_serve_extra(command: str) -> None:
    import importlib.util

    missing = [m for m in ("fastapi", "uvicorn") if importlib.util.find_spec(m) is None]
    if missing:
        raise InputError(f"lorakit {command} needs {' and '.join(missing)}: pip install 'lorakit[serve]'")


def ui_options(args):
    from ..ui.launch import UiOptions

    return UiOptions(runs=args.runs, data=args.data, configs=args.configs, host=args.host, port=args.port,
                     api_key=args.api_key, max_runs=args.max_runs,
                     model=getattr(args, "model", None), max_model_len=getattr(args, "max_model_len", None))


def cmd_ui(args) -> int:
    need_serve_extra("ui")
    from ..ui.launch import run_ui

    return run_ui(ui_options(args))


def dashboard_args(p, runs_default: str | None = "runs") -> None:
    """--runs, --data, --configs, --max-runs (shared by `lorakit ui` and `lorakit serve --ui`)."""
    p.add_argument("--runs", metavar="DIR", default=runs_default,
                   help="the runs directory: listed, and where runs started from the page go (default: runs)")
    p.add_argument("--data", action="append", default=[], metavar="DIR",
                   help="a directory of data files the page may train on (repeatable; default: ./data and "
                        "./examples where they exist)")
    p.add_argument("--configs", metavar="DIR", help="run configs offered by the page (default: ./configs)")
    p.add_argument("--max-runs", type=positive_int, default=1, metavar="N",
                   help="runs started from the page that may train at once (default 1)")


def register(sub, parent) -> None:
    p = sub.add_parser("ui", parents=[parent], formatter_class=RAW, epilog=EPILOG,
                       help="web dashboard: runs, live curves, comparisons, chat playground, start runs")
    dashboard_args(p)
    p.add_argument("--model", help="base model to load at start for the playground (default: loaded on "
                                   "demand, the base of the adapter picked)")
    p.add_argument("--host", default="127.0.0.1", help="address to bind (default 127.0.0.1: this machine only; "
                                                       "any other needs a key)")
    p.add_argument("--port", type=port_number, default=7860, help="(default 7860)")
    p.add_argument("--api-key", metavar="KEY", help="require this key (default: $LORAKIT_API_KEY; made up and "
                                                     "printed when --host is not a loopback address)")
    p.add_argument("--max-model-len", type=positive_int, metavar="N",
                   help="prompt + reply tokens per playground request (default: the model's, at most 4096)")
    p.set_defaults(func=cmd_ui)
