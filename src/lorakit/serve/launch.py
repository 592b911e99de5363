"""`lorakit serve`: check the options, load the base model and adapters, run uvicorn.

Everything a user can get wrong (an adapter spec, a missing directory, adapters on different bases,
a bad adapter file) is reported before the model loads or before the port opens, as an InputError.
"""
from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Optional

from ..errors import InputError
from ..io import WEIGHTS_NAME, check_adapter_dir, read_base_quantization, read_config
from .packed import CpuWeights, pack_linears

DEFAULT_MAX_MODEL_LEN = 4096


@dataclass
class ServeOptions:
    model: Optional[str] = None  # what `lorakit generate --model` takes; default: the adapters' base
    adapters: dict[str, str] = field(default_factory=dict)  # served name → adapter directory
    adapter_dir: Optional[str] = None  # runtime loads must resolve inside it (None: runtime loading off)
    host: str = "127.0.0.1"
    port: int = 8000
    api_key: Optional[str] = None
    quantization: Optional[str] = None  # "nf4" | "int8": the base's linears, adapters stay unmerged
    max_batch: int = 32
    max_model_len: Optional[int] = None  # default: the model's, at most DEFAULT_MAX_MODEL_LEN
    max_loaded_adapters: Optional[int] = None
    max_waiting: int = 256
    drain_timeout: float = 30.0
    router: Optional[str] = None  # a TaskRouter dir: its tasks' adapters are served, model "auto" is routed
    cpu_weights: CpuWeights = CpuWeights.PACKED  # on a CPU: prepacked linear weights for decode steps (packed.py)


def parse_adapter_specs(specs: list[str]) -> dict[str, str]:
    """`["NAME=DIR", ...]` → {NAME: DIR}; a bad or repeated NAME is an InputError."""
    from .registry import NAME

    adapters: dict[str, str] = {}
    for spec in specs:
        name, sep, directory = spec.partition("=")
        if not sep or not directory or not NAME.fullmatch(name):
            raise InputError(f"--adapter {spec!r}: expected NAME=DIR (NAME: 1-128 letters, digits or ._:@/+-)")
        if name in adapters:
            raise InputError(f"--adapter {spec!r}: the name {name!r} is given twice")
        adapters[name] = directory
    return adapters


@dataclass
class _Plan:
    base: Optional[str]
    quantization: Optional[str]
    generation: dict[str, Path]
    classification: dict[str, Path]


def plan(options: ServeOptions) -> _Plan:
    """Check the options and every adapter's files; decide the base model and its quantization."""
    if options.adapter_dir is not None and not Path(options.adapter_dir).expanduser().is_dir():
        raise InputError(f"--adapter-dir {options.adapter_dir}: not a directory")
    for flag, value in (("--max-batch", options.max_batch), ("--max-model-len", options.max_model_len),
                        ("--max-loaded-adapters", options.max_loaded_adapters)):
        if value is not None and value < 1:
            raise InputError(f"{flag} {value}: must be at least 1")
    generation, classification, bases, quants = {}, {}, {}, {}
    adapters = dict(options.adapters)
    if options.router is not None:
        adapters = _with_router_tasks(options.router, adapters)
    for name, directory in adapters.items():
        path = check_adapter_dir(directory, f"--adapter {name}={directory}", InputError).resolve()
        if not (path / WEIGHTS_NAME).is_file():
            raise InputError(f"--adapter {name}={directory}: no {WEIGHTS_NAME} (only safetensors adapters are served)")
        config = read_config(path)
        if config.task_type == "SEQ_CLS":
            classification[name] = path
            continue
        generation[name] = path
        bases[name] = config.base_model_name_or_path
        quants[name] = (read_base_quantization(path) or {}).get("method")
    if options.router is not None and set(adapters) - set(options.adapters) & set(classification):
        raise InputError(f"--router {options.router}: every task needs a generation adapter, not a classifier "
                         f"({', '.join(sorted(set(adapters) - set(options.adapters) & set(classification)))})")
    base = options.model
    if base is None and generation:
        if len(set(bases.values())) > 1:
            listing = ", ".join(f"{n}: {b}" for n, b in bases.items())
            raise InputError(f"the adapters were trained on different base models ({listing}); "
                             "serve one base per server, or pass --model")
        base = next(iter(bases.values()))
        if not base:
            raise InputError(f"--adapter {next(iter(bases))}: base_model_name_or_path is empty; pass --model")
    if base is None and not classification:
        from ..models import DEFAULT_CAUSAL_LM

        base = DEFAULT_CAUSAL_LM
    quantization = options.quantization
    if quantization is None and options.model is None and len(set(quants.values())) == 1:
        quantization = next(iter(quants.values()), None)  # QLoRA adapters: the 4-bit base they trained on
    return _Plan(base, quantization, generation, classification)


def _with_router_tasks(directory: str, adapters: dict[str, str]) -> dict[str, str]:
    """The --adapter specs plus the router's tasks (same name: it must be the same directory)."""
    from ..task_router import AUTO, read_router

    if AUTO in adapters:
        raise InputError(f"--adapter {AUTO}: with --router, {AUTO!r} is the routed model; name the adapter otherwise")
    meta, _ = read_router(directory)
    out = dict(adapters)
    for task in meta["tasks"]:
        given = out.get(task["name"])
        if given is not None and Path(given).expanduser().resolve() != Path(task["adapter"]).expanduser().resolve():
            raise InputError(f"--router {directory}: task {task['name']!r} is {task['adapter']}, but --adapter "
                             f"{task['name']}={given} names another directory")
        out[task["name"]] = task["adapter"]
    return out


def build_app(options: ServeOptions):
    """Load what `options` name and return the FastAPI app (see `serve.app.create_app`)."""
    from ..inference import load_trained
    from ..models import load_causal_lm
    from .app import create_app
    from .engine import Engine
    from .registry import Registry

    p = plan(options)
    engine = None
    registry = Registry(p.base or "", options.adapter_dir and Path(options.adapter_dir).expanduser(),
                        options.max_loaded_adapters)
    if p.base is not None:
        model, tokenizer = load_causal_lm(p.base, quantization=p.quantization)
        limit = getattr(model.config.get_text_config(decoder=True), "max_position_embeddings", None)
        max_len = options.max_model_len or min(limit or DEFAULT_MAX_MODEL_LEN, DEFAULT_MAX_MODEL_LEN)
        for i, (name, path) in enumerate(p.generation.items()):
            if options.max_loaded_adapters is None or i < options.max_loaded_adapters:
                registry.add(model, name, path, in_use=set())
            else:
                registry.register_unloaded(name, path)
        if options.cpu_weights is CpuWeights.PACKED:
            pack_linears(model)  # CPU fp32 linears only; a no-op elsewhere
        engine = Engine(model, tokenizer, max_batch=options.max_batch, max_model_len=max_len,
                        max_waiting=options.max_waiting,
                        ensure_adapter=lambda name, in_use: registry.ensure(model, name, in_use))
    for name, path in p.classification.items():
        registry.add_classifier(name, path, load_trained(path))
    router = None
    if options.router is not None:
        from ..task_router import TaskRouter

        router = TaskRouter.load(options.router)
    return create_app(engine, registry, api_key=options.api_key, drain_timeout=options.drain_timeout, router=router)


def serve(options: ServeOptions, extend: Optional[Callable] = None) -> int:
    """Run the server until Ctrl-C / SIGTERM; in-flight requests finish first (bounded wait).
    `extend(app)` returns the ASGI app to serve instead (e.g. with the dashboard added)."""
    import uvicorn

    options.api_key = options.api_key or os.environ.get("LORAKIT_API_KEY") or None
    app = build_app(options)
    served = extend(app) if extend is not None else app
    registry = app.state.registry
    url = f"http://{options.host}:{options.port}"

    class Server(uvicorn.Server):
        async def startup(self, sockets=None):
            await super().startup(sockets)
            if not self.should_exit:
                print(f"lorakit serve: ready at {url}/v1 (Ctrl-C to stop)", flush=True)

        def handle_exit(self, sig, frame):
            if not self.should_exit:
                print("lorakit serve: stopping after the requests in flight "
                      f"(at most {options.drain_timeout:.0f} s; again to force)", flush=True)
            super().handle_exit(sig, frame)
            getattr(self, "_captured_signals", []).clear()  # a graceful stop exits 0, not by the signal

    print(f"lorakit serve: models {', '.join(registry.names()[0 if app.state.engine else 1:])}"
          f"{' (API key required)' if options.api_key else ''}", flush=True)
    config = uvicorn.Config(served, host=options.host, port=options.port, log_level="warning",
                            timeout_graceful_shutdown=int(options.drain_timeout))
    Server(config).run()
    print("lorakit serve: stopped", flush=True)
    return 0
