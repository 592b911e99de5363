"""The dashboard's HTTP side: the page (static files under `/ui/`) and its JSON API under `/ui/api/`.

    router = ui_router(settings, backend, launcher)   # the pages and /ui/api/*
    app = create_ui_app(settings, backend)             # `lorakit ui`: the router + the model's /v1 routes

The playground talks to the OpenAI-compatible routes of the same server (`/v1/chat/completions`
streamed, `/v1/models`, `/v1/load_lora_adapter`); the API here covers what those do not: runs,
their metrics (read from byte offsets, so live curves fetch only new rows), config diffs, the
rendered chat prompt, the run form's schema and validation, launching and stopping runs.

Safe by default: with an API key every API call needs `Authorization: Bearer KEY`; bound to a
loopback address, requests whose Host header is not a loopback name are refused (a web page
elsewhere cannot reach the dashboard through DNS rebinding); runs, data and configs are read only
inside their directories.
"""
from __future__ import annotations

import contextlib
import secrets
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional

from fastapi import APIRouter, Depends, FastAPI, Query, Request
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import FileResponse, JSONResponse, RedirectResponse
from fastapi.staticfiles import StaticFiles
from pydantic import BaseModel, ConfigDict, Field

from ..errors import InputError
from ..serve.protocol import error_body
from . import forms
from .launcher import Busy, Launcher
from .runs import RunsDir, UnknownRun, config_diff

STATIC = Path(__file__).parent / "static"
DATA_SUFFIXES = (".jsonl", ".json", ".csv", ".parquet")
LOOPBACK_NAMES = {"127.0.0.1", "localhost", "::1", "[::1]"}
PAGE_HEADERS = {"Content-Security-Policy": "default-src 'self'; script-src 'self'; style-src 'self'; "
                "img-src 'self' data:; connect-src 'self'; frame-ancestors 'none'; base-uri 'none'",
                "X-Content-Type-Options": "nosniff", "Referrer-Policy": "no-referrer", "Cache-Control": "no-cache"}


@dataclass
class UiSettings:
    runs: Path
    data_dirs: list[Path] = field(default_factory=list)
    configs: Optional[Path] = None
    api_key: Optional[str] = None
    max_running: int = 1


class _Body(BaseModel):
    model_config = ConfigDict(extra="forbid")


class RunRef(_Body):
    id: str = Field(min_length=1, max_length=300)


class FormBody(_Body):
    name: str = Field("", max_length=200)
    values: dict[str, Any] = Field(default_factory=dict)


class LoadBase(_Body):
    base: str = Field(min_length=1, max_length=4096)


class RenderBody(_Body):
    messages: list[dict[str, str]] = Field(min_length=1, max_length=256)


def ui_router(settings: UiSettings, backend, launcher: Launcher) -> APIRouter:
    """The page and its API, for `lorakit ui` and `lorakit serve --ui` alike."""
    from ..models import EMBEDDED
    from ..train.config import RunConfig

    runs = launcher.runs
    policy = forms.PathPolicy([runs.root, *settings.data_dirs], tuple(EMBEDDED))
    router = APIRouter()
    api = APIRouter(prefix="/ui/api", dependencies=[Depends(_key_check(settings.api_key))])

    @router.get("/ui", include_in_schema=False)
    async def to_page():
        return RedirectResponse("/ui/")

    @router.get("/ui/", include_in_schema=False)
    async def page():
        return FileResponse(STATIC / "index.html", headers=PAGE_HEADERS)

    @api.get("/info")
    async def info():
        return {"runs_dir": str(runs.root), "data_dirs": [str(d) for d in settings.data_dirs],
                "configs_dir": str(settings.configs) if settings.configs else None,
                "backend": backend.status(), "auth": settings.api_key is not None,
                "method_sections": forms.method_sections(RunConfig)}

    @api.get("/runs")
    async def list_runs():
        found = await run_in_threadpool(lambda: [r.summary(launcher.alive(r.id)) for r in runs.list()])
        return {"runs": found}

    @api.get("/run")
    async def one_run(id: str = Query(min_length=1, max_length=300)):
        def read():
            run = runs.get(id)
            return {**run.summary(launcher.alive(id)), "config": run.read_config(), "log": run.log_tail(),
                    "adapters": run.adapters(), "can_stop": bool(launcher.alive(id))}
        return await run_in_threadpool(read)

    @api.get("/metrics")
    async def metrics(id: str = Query(min_length=1, max_length=300), offset: int = Query(0, ge=0)):
        return await run_in_threadpool(lambda: runs.get(id).metrics(offset))

    @api.get("/compare")
    async def compare(id: list[str] = Query(min_length=2, max_length=16)):
        return await run_in_threadpool(lambda: config_diff({i: runs.get(i).read_config() for i in id}))

    @api.get("/adapters")
    async def adapters():
        status = backend.status()
        served = []
        if status["state"] == "ready" and backend.registry is not None:
            served = [{"id": e.name, "path": str(e.path), "task": e.task, "loaded": e.loaded}
                      for e in backend.registry.listing()]
        return {"runs": await run_in_threadpool(runs.adapters), "served": served, "backend": status}

    @api.get("/backend")
    async def backend_status():
        return backend.status()

    @api.post("/backend")
    async def backend_load(body: LoadBase):
        backend.load(body.base)
        return backend.status()

    @api.post("/render")
    async def render(body: RenderBody):
        from ..data.tokenize import render_ids

        engine = backend.engine
        if engine is None:
            raise InputError("no model loaded")
        messages = [{"role": m.get("role", ""), "content": m.get("content", "")} for m in body.messages]
        if any(m["role"] not in ("system", "user", "assistant") for m in messages):
            raise InputError("messages: each role must be system, user or assistant")

        def encode():
            ids = render_ids(engine.tokenizer, messages, add_generation_prompt=True)
            return {"text": engine.tokenizer.decode(ids, skip_special_tokens=False), "tokens": len(ids),
                    "max_model_len": engine.max_model_len}
        return await run_in_threadpool(encode)

    @api.get("/schema")
    async def schema():
        return {"sections": forms.schema_fields(RunConfig), "method_sections": forms.method_sections(RunConfig)}

    @api.get("/sources")
    async def sources():
        return await run_in_threadpool(lambda: _sources(settings))

    @api.get("/source")
    async def source(config: Optional[str] = None, data: Optional[str] = None):
        return await run_in_threadpool(lambda: _prefill(settings, policy, config, data))

    @api.post("/validate")
    async def validate(body: FormBody):
        return await run_in_threadpool(lambda: _check_form(RunConfig, policy, runs, body, deep=False)[0])

    @api.post("/launch")
    async def launch(body: FormBody):
        report, config = await run_in_threadpool(lambda: _check_form(RunConfig, policy, runs, body, deep=True))
        if not report["ok"]:
            return JSONResponse({**error_body(400, "the config has errors"), **report}, status_code=400)
        run = await run_in_threadpool(lambda: launcher.start(body.name, config))
        return {"id": run.id}

    @api.post("/stop")
    async def stop(body: RunRef):
        runs.get(body.id)
        launcher.stop(body.id)
        return {"id": body.id, "status": "stopping"}

    @api.post("/resume")
    async def resume(body: RunRef):
        run = await run_in_threadpool(lambda: launcher.resume(runs.get(body.id)))
        return {"id": run.id}

    router.include_router(api)
    return router


def install(app: FastAPI, settings: UiSettings, backend, launcher: Launcher) -> None:
    """Add the dashboard to `app` (its routes, static files and error replies)."""
    app.include_router(ui_router(settings, backend, launcher))
    app.mount("/ui/static", StaticFiles(directory=STATIC), name="ui-static")

    @app.exception_handler(UnknownRun)
    async def unknown_run(_, e: UnknownRun):
        return JSONResponse(error_body(404, str(e)), status_code=404)

    @app.exception_handler(Busy)
    async def busy(_, e: Busy):
        return JSONResponse(error_body(409, str(e)), status_code=409)


def create_ui_app(settings: UiSettings, backend, launcher: Optional[Launcher] = None, loopback: bool = True):
    """`lorakit ui`: the dashboard, with every other path (`/v1/...`, `/health`, `/metrics`) forwarded
    to the model backend. Returns an ASGI app; its lifespan closes the backend."""
    from ..serve.app import _install_errors

    launcher = launcher or Launcher(RunsDir(settings.runs), settings.max_running)

    @contextlib.asynccontextmanager
    async def lifespan(_):
        yield
        await run_in_threadpool(backend.close)

    ui = FastAPI(title="lorakit ui", lifespan=lifespan, docs_url=None, redoc_url=None, openapi_url=None)
    _install_errors(ui)
    install(ui, settings, backend, launcher)

    @ui.get("/", include_in_schema=False)
    async def root():
        return RedirectResponse("/ui/")
    ui.state.backend, ui.state.launcher = backend, launcher

    async def dispatch(scope, receive, send):
        path = scope.get("path", "")
        if scope["type"] == "lifespan" or path == "/" or path == "/ui" or path.startswith("/ui/"):
            return await ui(scope, receive, send)
        return await backend(scope, receive, send)
    dispatch.state = ui.state
    return HostGuard(dispatch) if loopback else dispatch


class HostGuard:
    """ASGI middleware for a server bound to a loopback address: HTTP requests must name a loopback
    host (`Host: 127.0.0.1:PORT`, `localhost`, `[::1]`), which a page on another site cannot send."""

    def __init__(self, app):
        self.app = app
        self.state = getattr(app, "state", None)

    async def __call__(self, scope, receive, send):
        if scope["type"] == "http":
            host = dict(scope.get("headers") or []).get(b"host", b"").decode("latin-1")
            name = host.rsplit(":", 1)[0] if not host.endswith("]") else host
            if name.lower() not in LOOPBACK_NAMES:
                body = error_body(403, f"Host {host!r} refused: this server answers only to 127.0.0.1 / localhost")
                return await JSONResponse(body, status_code=403)(scope, receive, send)
        await self.app(scope, receive, send)


def _key_check(api_key: Optional[str]):
    async def check(request: Request):
        if api_key is None:
            return
        scheme, _, token = request.headers.get("authorization", "").partition(" ")
        if scheme.lower() != "bearer" or not secrets.compare_digest(token.strip().encode(), api_key.encode()):
            from ..serve.app import ApiError

            raise ApiError(401, "missing or wrong API key (the page asks for it; send Authorization: Bearer KEY)")
    return check


def _sources(settings: UiSettings) -> dict:
    """Config files under the configs directory, data files under the data directories, bundled sets."""
    from ..data import bundled

    configs = []
    if settings.configs is not None and settings.configs.is_dir():
        configs = sorted(p.relative_to(settings.configs).as_posix() for p in settings.configs.rglob("*.yaml")
                         if p.is_file() and not p.is_symlink())
    data = []
    for root in settings.data_dirs:
        if root.is_dir():
            data += sorted(str(p) for p in root.rglob("*") if p.suffix in DATA_SUFFIXES and p.is_file()
                           and not any(part.startswith(".") for part in p.relative_to(root).parts))
    return {"configs": configs, "data": data[:2000], "bundled": [f"bundled:{n}" for n in bundled.NAMES]}


def _prefill(settings: UiSettings, policy: forms.PathPolicy, config: Optional[str], data: Optional[str]) -> dict:
    """Form values (dotted key → text) from a config file of the configs directory, or for a data file."""
    import yaml

    from ..files import read_text
    from ..yamlconfig import parse_yaml

    if config is not None:
        root = settings.configs
        path = (root / config).resolve() if root is not None else None
        if path is None or not path.is_relative_to(root.resolve()) or path.suffix != ".yaml" or not path.is_file():
            raise UnknownRun(f"no config {config!r} under {root}")
        try:
            loaded = parse_yaml(read_text(path)) or {}
        except yaml.YAMLError as e:
            raise InputError(f"{config}: invalid YAML: {getattr(e, 'problem', e)}") from None
        if not isinstance(loaded, dict):
            raise InputError(f"{config}: the top level must be a mapping of sections")
        loaded.pop("output_dir", None)
        return {"name": Path(config).stem.replace("/", "-"),
                "values": {k: forms.yaml_text(v) for k, v in forms.flatten(loaded).items()}}
    if data is None:
        raise InputError("give config=NAME or data=PATH")
    if not data.startswith("bundled:") and not policy.inside(data):
        raise InputError(f"{data}: outside the data directories")
    values = {"data.train": data}
    if "classify" in data or _first_row_has_label(data):
        values["task"] = "classification"
    return {"name": Path(data.split(":")[-1]).stem.replace("_", "-"), "values": values}


def _first_row_has_label(data: str) -> bool:
    import json

    if not data.endswith(".jsonl"):
        return False
    try:
        with open(data) as f:
            first = json.loads(f.readline() or "{}")
    except (OSError, ValueError):
        return False
    return isinstance(first, dict) and "label" in first and "text" in first


def _check_form(schema, policy: forms.PathPolicy, runs: RunsDir, body: FormBody, deep: bool) -> tuple[dict, dict]:
    """Parse and validate the form (and with `deep`, the run name's availability and the data files):
    `({"ok", "errors": {key: message}, "general": [...]}, the config as a plain dict)`."""
    data, errors = forms.parse_values(body.values)
    config, schema_errors, general = forms.validate(schema, data)
    errors.update({k: v for k, v in schema_errors.items() if k not in errors})
    errors.update({k: v for k, v in policy.check(data).items() if k not in errors})
    name = body.name.strip()
    if not forms.RUN_NAME.fullmatch(name):
        errors["name"] = "1-64 letters, digits, '.', '_' or '-', starting with a letter or digit"
    elif deep and (runs.root / name).exists():
        errors["name"] = f"{runs.root / name} exists; pick another name"
    plain = config.model_dump(mode="json") if config is not None else {}
    if deep and config is not None and not errors and not general:
        data_errors = _check_data(config)
        errors.update(data_errors)
    return {"ok": not errors and not general, "errors": errors, "general": general}, plain


def _check_data(config) -> dict[str, str]:
    """Read and validate the data files as the trainer will (before the model loads): errors by key."""
    from ..train.prepare import load_data

    try:
        load_data(config)
    except InputError as e:
        message = str(e).strip().splitlines()[0]
        evals = config.data.eval
        key = "data.eval" if evals and (message.startswith("data.eval") or message.startswith(str(evals))) \
            else "data.train"
        return {key: message}
    return {}
