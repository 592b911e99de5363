"""`lorakit ui` and `lorakit serve --ui`: check the options, build the dashboard, run uvicorn.

Binding anywhere but a loopback address needs a key: `--api-key`, `$LORAKIT_API_KEY`, or one made
up at start and printed once in the URL (`#token=...`, a fragment, so it never reaches a server log).
"""
from __future__ import annotations

import ipaddress
import os
import secrets
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional

from ..errors import InputError
from .app import UiSettings

DEFAULT_DATA_DIRS = ("data", "examples")
DEFAULT_CONFIGS = "configs"


@dataclass
class UiOptions:
    runs: str = "runs"
    data: list[str] = field(default_factory=list)  # empty: those of DEFAULT_DATA_DIRS that exist
    configs: Optional[str] = None  # None: ./configs if it exists
    model: Optional[str] = None  # loaded at start; else on demand from the playground
    host: str = "127.0.0.1"
    port: int = 7860
    api_key: Optional[str] = None
    max_model_len: Optional[int] = None
    max_runs: int = 1


def is_loopback(host: str) -> bool:
    if host.lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def settings_for(runs: str, data: list[str], configs: Optional[str], api_key: Optional[str],
                 max_runs: int = 1) -> UiSettings:
    """Check the directories (a missing --data or --configs is an error; --runs may not exist yet)."""
    runs_dir = Path(runs).expanduser()
    if runs_dir.exists() and not runs_dir.is_dir():
        raise InputError(f"--runs {runs}: not a directory")
    for d in data:
        if not Path(d).expanduser().is_dir():
            raise InputError(f"--data {d}: not a directory")
    if configs is not None and not Path(configs).expanduser().is_dir():
        raise InputError(f"--configs {configs}: not a directory")
    if max_runs < 1:
        raise InputError(f"--max-runs {max_runs}: must be at least 1")
    data_dirs = [Path(d).expanduser().resolve() for d in data] if data else \
        [Path(d).resolve() for d in DEFAULT_DATA_DIRS if Path(d).is_dir()]
    if configs is None and Path(DEFAULT_CONFIGS).is_dir():
        configs = DEFAULT_CONFIGS
    return UiSettings(runs=runs_dir.resolve(), data_dirs=data_dirs,
                      configs=Path(configs).expanduser().resolve() if configs else None, api_key=api_key,
                      max_running=max_runs)


def access_key(host: str, given: Optional[str]) -> tuple[Optional[str], bool]:
    """The key the server requires (None on loopback without one), and whether it was made up here."""
    key = given or os.environ.get("LORAKIT_API_KEY") or None
    if key is None and not is_loopback(host):
        return secrets.token_urlsafe(18), True
    return key, False


def base_candidates(runs_dir: Path, model: Optional[str]) -> list[str]:
    """Bases the playground may load: --model, those the runs' generation adapters name (newest run
    first), and the embedded default."""
    from ..models import DEFAULT_CAUSAL_LM
    from .runs import RunsDir

    def newest(adapter):
        try:
            return -Path(adapter["path"]).stat().st_mtime
        except OSError:
            return 0.0
    named = [a["base"] for a in sorted(RunsDir(runs_dir).adapters(), key=newest) if a["task"] == "sft" and a["base"]]
    return list(dict.fromkeys([*([model] if model else []), *named, DEFAULT_CAUSAL_LM]))


def build_ui_app(options: UiOptions):
    """The `lorakit ui` app (see `app.create_ui_app`); starts loading `--model` if given."""
    from .app import create_ui_app
    from .backend import SwitchableBackend

    settings = settings_for(options.runs, options.data, options.configs, options.api_key, options.max_runs)
    if options.model is not None:
        from ..models import resolve

        resolve(options.model)  # a missing model is an error now, not on the page later
    backend = SwitchableBackend(settings.runs, lambda: base_candidates(settings.runs, options.model),
                                api_key=settings.api_key, max_model_len=options.max_model_len)
    if options.model is not None:
        backend.load(options.model)
    return create_ui_app(settings, backend, loopback=is_loopback(options.host))


def run_ui(options: UiOptions) -> int:
    """`lorakit ui`: serve the dashboard until Ctrl-C."""
    import uvicorn

    options.api_key, made_up = access_key(options.host, options.api_key)
    app = build_ui_app(options)
    url = f"http://{options.host}:{options.port}/ui/"
    print(f"lorakit ui: runs in {app.state.launcher.runs.root}", flush=True)
    print(f"lorakit ui: open {url}{'#token=' + options.api_key if made_up else ''} (Ctrl-C to stop)", flush=True)
    if options.api_key and not made_up:
        print("lorakit ui: the page asks for the API key", flush=True)
    class Server(uvicorn.Server):
        def handle_exit(self, sig, frame):
            super().handle_exit(sig, frame)
            getattr(self, "_captured_signals", []).clear()  # Ctrl-C is a graceful stop (exit 0), not re-raised

    Server(uvicorn.Config(app, host=options.host, port=options.port, log_level="warning",
                          timeout_graceful_shutdown=5)).run()
    print("lorakit ui: stopped (runs started from the page keep going)", flush=True)
    return 0


def add_to_server(app, options: UiOptions, loopback: bool):
    """`lorakit serve --ui`: the dashboard on the server's app, over the server's own model."""
    from .app import HostGuard, install
    from .backend import FixedBackend
    from .launcher import Launcher
    from .runs import RunsDir

    settings = settings_for(options.runs, options.data, options.configs, options.api_key, options.max_runs)
    backend = FixedBackend(app.state.engine, app.state.registry)
    launcher = Launcher(RunsDir(settings.runs), settings.max_running)
    install(app, settings, backend, launcher)
    app.state.launcher = launcher
    return HostGuard(app) if loopback else app
