"""`lorakit serve`: an OpenAI-compatible server for a base model and many adapters."""
from __future__ import annotations

import argparse
import os

from ..errors import InputError
from .common import RAW, positive_int

EPILOG = """examples:
  lorakit serve --adapter notes=runs/quickstart/adapter
  lorakit serve --model smollm2-135m-instruct --adapter a=runs/a/adapter --adapter b=runs/b/adapter \\
      --adapter-dir runs --max-loaded-adapters 8
  curl http://127.0.0.1:8000/v1/chat/completions -H 'Content-Type: application/json' \\
      -d '{"model": "notes", "messages": [{"role": "user", "content": "Lunch with Ana on Friday at noon."}]}'
"""


def cmd_serve(args) -> int:
    from ..serve.launch import ServeOptions, parse_adapter_specs, serve
    from ..serve.packed import CpuWeights
    from .ui import need_serve_extra

    need_serve_extra("serve")
    extend = None
    if args.ui:
        extend, args.adapter_dir, args.api_key = _dashboard(args)
    elif args.data or args.configs or args.runs is not None or args.max_runs != 1:
        raise InputError("--runs, --data, --configs and --max-runs go with --ui")
    options = ServeOptions(
        model=args.model, adapters=parse_adapter_specs(args.adapter), adapter_dir=args.adapter_dir,
        host=args.host, port=args.port, api_key=args.api_key, quantization=args.quantization,
        max_batch=args.max_batch, max_model_len=args.max_model_len, max_loaded_adapters=args.max_loaded_adapters,
        max_waiting=args.max_waiting, router=args.router, cpu_weights=CpuWeights(args.cpu_weights),
    )
    return serve(options, extend)


def _dashboard(args):
    """`--ui`: the dashboard's settings checked now; the adapter directory defaults to the runs (so the
    playground can load their adapters); off loopback a key is required (made up and printed if none)."""
    from ..ui.launch import access_key, add_to_server, is_loopback, settings_for
    from .ui import ui_options

    args.runs = args.runs or args.adapter_dir or "runs"
    key, made_up = access_key(args.host, args.api_key)
    args.api_key = key
    options = ui_options(args)
    settings_for(options.runs, options.data, options.configs, key, options.max_runs)
    adapter_dir = args.adapter_dir or options.runs
    if not os.path.isdir(adapter_dir):
        os.makedirs(adapter_dir, exist_ok=True)

    def extend(app):
        served = add_to_server(app, options, loopback=is_loopback(args.host))
        print(f"lorakit serve: dashboard at http://{args.host}:{args.port}/ui/"
              f"{'#token=' + key if made_up else ''}", flush=True)
        return served
    return extend, adapter_dir, key


def port_number(text: str) -> int:
    if not text.strip().isdigit() or not 0 < int(text) < 65536:
        raise argparse.ArgumentTypeError(f"expected a port number 1-65535, got {text!r}")
    return int(text)


def register(sub, parent) -> None:
    p = sub.add_parser("serve", parents=[parent], formatter_class=RAW, epilog=EPILOG,
                       help="OpenAI-compatible server: a base model and many adapters, batched together")
    p.add_argument("--model", help="base model: an embedded name, a local HF dir, a merged model dir or a .gguf "
                                   "(default: the adapters' base_model_name_or_path, else smollm2-135m-instruct)")
    p.add_argument("--adapter", action="append", default=[], metavar="NAME=DIR",
                   help="serve the adapter in DIR as model NAME (repeatable); classification adapters answer "
                        "/v1/classify")
    p.add_argument("--adapter-dir", metavar="DIR",
                   help="allow /v1/load_lora_adapter for adapters inside DIR (off without it)")
    p.add_argument("--host", default="127.0.0.1", help="address to bind (default 127.0.0.1: this machine only)")
    p.add_argument("--port", type=port_number, default=8000, help="(default 8000)")
    p.add_argument("--api-key", metavar="KEY", help="require 'Authorization: Bearer KEY' on /v1 (default: $LORAKIT_API_KEY)")
    p.add_argument("--quantization", choices=["nf4", "int8"], help="quantize the base's linear layers")
    p.add_argument("--max-batch", type=positive_int, metavar="N", default=32, help="requests decoded together (default 32)")
    p.add_argument("--max-model-len", type=positive_int, metavar="N",
                   help="prompt + reply tokens per request (default: the model's, at most 4096)")
    p.add_argument("--max-loaded-adapters", type=positive_int, metavar="N",
                   help="keep at most N generation adapters in memory; the least recently used idle one is "
                        "evicted and reloaded on demand")
    p.add_argument("--max-waiting", type=positive_int, metavar="N", default=256,
                   help="queued requests beyond which new ones get 429 (default 256)")
    p.add_argument("--router", metavar="DIR",
                   help="a router (lorakit router build): its tasks' adapters are served under the task names and "
                        "requests for model \"auto\" go to the adapter the router picks for their prompt")
    p.add_argument("--cpu-weights", choices=["packed", "plain"], default="packed",
                   help="on a CPU, keep a prepacked copy of the fp32 linear weights for batched decode steps "
                        "(faster from 2 to 128 rows as measured; one more copy of those weights in memory) or not "
                        "(default packed)")
    p.add_argument("--ui", action="store_true", help="also serve the web dashboard at /ui/ (see lorakit ui)")
    from .ui import dashboard_args

    dashboard_args(p, runs_default=None)
    p.set_defaults(func=cmd_serve)
