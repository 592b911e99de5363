"""The model behind the playground: a serving engine, its adapter registry and the OpenAI routes.

Under `lorakit serve --ui` it is the server's own model (`FixedBackend`). Under `lorakit ui` it is
loaded on demand (`SwitchableBackend`): the page shows runs without loading anything, and the
playground loads the base model an adapter was trained on when it is first needed, or switches to
another one (the old engine drains its requests, then is dropped). The candidates are the bases
that the runs' adapters name, the one given with `--model`, and the embedded default: the page
cannot make the server load an arbitrary path.

`SwitchableBackend` is also an ASGI app: mounted under the dashboard, it forwards `/v1/...`,
`/health` and `/metrics` to the current model's OpenAI app (503 while none is loaded).
"""
from __future__ import annotations

import threading
from pathlib import Path
from typing import Callable, Optional

from starlette.responses import JSONResponse

from ..errors import InputError
from ..serve.protocol import error_body


class FixedBackend:
    """The server's model (`lorakit serve --ui`): always ready, never switched."""

    switchable = False

    def __init__(self, engine, registry):
        self.engine, self.registry = engine, registry

    def status(self) -> dict:
        ready = self.engine is not None
        return {"state": "ready" if ready else "none", "base": self.registry.base_name if ready else None,
                "error": None if ready else "this server only classifies", "switchable": False,
                "candidates": [self.registry.base_name] if ready else [],
                "max_model_len": self.engine.max_model_len if ready else None}

    def load(self, base: str) -> None:
        raise InputError("this server's base model is fixed (lorakit serve --model); start `lorakit ui` to switch")

    def close(self) -> None:
        pass


class SwitchableBackend:
    """A base model loaded on demand (`lorakit ui`), adapters loadable from `adapter_dir` (the runs)."""

    switchable = True

    def __init__(self, adapter_dir: Path, candidates: Callable[[], list[str]], api_key: Optional[str] = None,
                 max_model_len: Optional[int] = None, drain_timeout: float = 30.0):
        self.adapter_dir, self._candidates, self.api_key = adapter_dir, candidates, api_key
        self.max_model_len, self.drain_timeout = max_model_len, drain_timeout
        self.state, self.base, self.error = "none", None, None
        self.app = self.engine = self.registry = None
        self.lock = threading.Lock()

    def candidates(self) -> list[str]:
        names = list(dict.fromkeys([*self._candidates(), *([self.base] if self.base else [])]))
        return [n for n in names if n]

    def status(self) -> dict:
        return {"state": self.state, "base": self.base, "error": self.error, "switchable": True,
                "candidates": self.candidates(),
                "max_model_len": self.engine.max_model_len if self.engine is not None else None}

    def load(self, base: str) -> None:
        """Start loading `base` (one of `candidates()`) in the background; the page polls `status()`."""
        if base not in self.candidates():
            raise InputError(f"base model {base!r}: not one of the models the runs' adapters name "
                             f"({', '.join(self.candidates()) or 'none'})")
        with self.lock:
            if self.state == "loading":
                raise InputError(f"still loading {self.base}; wait for it")
            if self.state == "ready" and self.base == base:
                return
            old, self.state, self.base, self.error = self.engine, "loading", base, None
            self.app = self.engine = self.registry = None
        threading.Thread(target=self._load, args=(base, old), daemon=True, name="lorakit-ui-load").start()

    def _load(self, base: str, old) -> None:
        from ..serve.launch import ServeOptions, build_app

        if old is not None:
            old.shutdown(self.drain_timeout)
        try:
            app = build_app(ServeOptions(model=base, adapter_dir=str(self.adapter_dir), api_key=self.api_key,
                                         max_model_len=self.max_model_len, drain_timeout=self.drain_timeout))
            engine = app.state.engine
            if engine is None:
                raise InputError(f"{base}: not a generation model")
            engine.start()
        except Exception as e:  # shown on the page; the dashboard keeps running
            message = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
            with self.lock:
                self.state, self.error = "error", message
            return
        with self.lock:
            self.app, self.engine, self.registry, self.state = app, engine, app.state.registry, "ready"

    def close(self) -> None:
        with self.lock:
            engine, self.engine, self.app = self.engine, None, None
        if engine is not None:
            engine.shutdown(self.drain_timeout)

    async def __call__(self, scope, receive, send):
        app = self.app
        if app is None:
            if scope["type"] != "http":
                return
            message = ("loading the model" if self.state == "loading" else
                       "no model loaded: pick a base model in the playground (or start lorakit ui with --model)")
            return await JSONResponse(error_body(503, message), status_code=503)(scope, receive, send)
        await app(scope, receive, send)
