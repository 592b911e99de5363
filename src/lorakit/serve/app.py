"""The HTTP side: OpenAI-compatible routes over an `Engine` and a `Registry`.

    app = create_app(engine, registry, api_key="...")   # a FastAPI app; uvicorn serves it
    app.include_router(other_router)                     # e.g. a UI, on the same engine

Routes: `GET /v1/models`, `POST /v1/chat/completions`, `POST /v1/completions` (streaming as SSE
ending in `data: [DONE]`), `POST /v1/classify`, `POST /v1/load_lora_adapter`,
`POST /v1/unload_lora_adapter` (vLLM's names), `GET /health`, `GET /metrics`. Every error is
OpenAI's body `{"error": {"message", "type", "param", "code"}}`; no request can stop the server.
"""
from __future__ import annotations

import asyncio
import contextlib
import json
import secrets
import threading
import time
from typing import Optional

from fastapi import APIRouter, Depends, FastAPI, Request as HttpRequest
from fastapi.concurrency import run_in_threadpool
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, PlainTextResponse, StreamingResponse
from starlette.exceptions import HTTPException

from ..errors import InputError
from .engine import Engine, EngineClosed, Event, QueueFull, Request, Retry, SamplingParams
from .metrics import Metrics
from .protocol import (ChatRequest, ClassifyRequest, CompletionRequest, LoadAdapter, UnloadAdapter, chunk_body,
                       completion_body, error_body, new_id, usage)
from .registry import Forbidden, Registry, UnknownModel

DEFAULT_MAX_TOKENS = 256  # what `lorakit generate` uses when a request gives no max_tokens
MAX_BODY_BYTES = 4 * 2**20
ENDPOINTS = frozenset({"/health", "/metrics", "/v1/models", "/v1/chat/completions", "/v1/completions",
                       "/v1/classify", "/v1/load_lora_adapter", "/v1/unload_lora_adapter"})


class ApiError(Exception):
    def __init__(self, status: int, message: str, param: Optional[str] = None):
        super().__init__(message)
        self.status, self.message, self.param = status, message, param


def create_app(engine: Optional[Engine], registry: Registry, *, api_key: Optional[str] = None,
               drain_timeout: float = 30.0, max_body_bytes: int = MAX_BODY_BYTES, router=None) -> FastAPI:
    """The server app. `engine` is None when only classification adapters are served. The engine is
    started with the app and drained on shutdown (in-flight requests finish, up to `drain_timeout` s).
    `router`: a `lorakit.TaskRouter` whose tasks are served adapters; requests for model "auto" are
    routed by their prompt (the last user message) before they join the batch."""

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI):
        if engine is not None and not engine.thread.is_alive():
            engine.start()
        yield
        if engine is not None:
            await run_in_threadpool(engine.shutdown, drain_timeout)

    app = FastAPI(title="lorakit", lifespan=lifespan, docs_url=None, redoc_url=None, openapi_url=None)
    metrics = engine.metrics if engine is not None else Metrics()
    app.state.engine, app.state.registry, app.state.metrics = engine, registry, metrics
    app.include_router(openai_router(engine, registry, api_key, metrics, router))
    _install_errors(app)
    app.add_middleware(_Guard, metrics=metrics, max_body_bytes=max_body_bytes)
    return app


def openai_router(engine: Optional[Engine], registry: Registry, api_key: Optional[str],
                  metrics: Metrics, task_router=None) -> APIRouter:
    """The routes, on their own router: another app can include them next to its own."""
    router = APIRouter()
    v1 = APIRouter(prefix="/v1", dependencies=[Depends(_key_check(api_key))])
    classify_locks: dict[str, threading.Lock] = {}
    started = int(time.time())

    @router.get("/health")
    async def health():
        if engine is not None and engine.closing:
            raise ApiError(503, "shutting down")
        return {"status": "ok"}

    @router.get("/metrics")
    async def prometheus():
        return PlainTextResponse(metrics.render(), media_type="text/plain; version=0.0.4")

    @v1.get("/models")
    async def models():
        base = {"id": registry.base_name, "object": "model", "created": started, "owned_by": "lorakit",
                "root": registry.base_name, "parent": None}
        if engine is not None:
            base["max_model_len"] = engine.max_model_len
        adapters = [{"id": e.name, "object": "model", "created": started, "owned_by": "lorakit", "root": str(e.path),
                     "parent": registry.base_name, "task": e.task, "loaded": e.loaded,
                     **({"task_prefixes": sorted(e.prefixes)} if e.prefixes else {})} for e in registry.listing()]
        auto = ([{"id": "auto", "object": "model", "created": started, "owned_by": "lorakit", "root": None,
                  "parent": registry.base_name, "task": "router", "routes_to": task_router.names}]
                if task_router is not None and engine is not None else [])
        return {"object": "list", "data": ([base] if engine is not None else []) + adapters + auto}

    @v1.post("/chat/completions")
    async def chat(body: ChatRequest, http: HttpRequest):
        return await _generate(engine, registry, body, http, chat=True, task_router=task_router)

    @v1.post("/completions")
    async def completions(body: CompletionRequest, http: HttpRequest):
        return await _generate(engine, registry, body, http, chat=False, task_router=task_router)

    @v1.post("/classify")
    async def classify(body: ClassifyRequest):
        from ..inference import classify_batch

        trained = registry.classifier(body.model)
        prefix = _task_prefix(registry, body.model, body.task)
        lock = classify_locks.setdefault(body.model, threading.Lock())

        def run():
            with lock:
                return classify_batch(trained, [prefix + text for text in body.input])
        results, tokens = await run_in_threadpool(run)
        data = [{"index": i, "label": max(p, key=p.get), "probs": p} for i, p in enumerate(results)]
        return {"id": new_id("classify"), "object": "list", "model": body.model, "data": data,
                "usage": {"prompt_tokens": tokens, "total_tokens": tokens}}

    @v1.post("/load_lora_adapter")
    async def load(body: LoadAdapter):
        from ..inference import load_trained

        registry.check_new_name(body.lora_name)
        path = registry.allowed_path(body.lora_path)
        if registry.task_of(path) == "classification":
            trained = await run_in_threadpool(load_trained, path)
            if trained.task != "classification":
                raise ApiError(400, f"{body.lora_path}: not a classification adapter")
            registry.add_classifier(body.lora_name, path, trained)
        else:
            if engine is None:
                raise ApiError(400, "this server has no generation model to load a generation adapter into")
            await asyncio.wrap_future(engine.call(
                lambda model: registry.add(model, body.lora_name, path, engine.running_adapters())))
        return {"object": "lora_adapter", "id": body.lora_name, "status": "loaded"}

    @v1.post("/unload_lora_adapter")
    async def unload(body: UnloadAdapter):
        entry = registry.withdraw(body.lora_name)
        if entry.task == "sft" and engine is not None:
            def drop(model):
                if entry.name in engine.running_adapters():
                    raise Retry  # its running requests finish first
                registry.drop(model, entry)
            await asyncio.wrap_future(engine.call(drop))
        return {"object": "lora_adapter", "id": body.lora_name, "status": "unloaded"}

    router.include_router(v1)
    return router


async def _generate(engine: Optional[Engine], registry: Registry, body, http: HttpRequest, chat: bool,
                    task_router=None):
    """Validate, route ("auto"), queue the request on the engine, then stream or collect its events."""
    from ..data.prefixes import prefix_messages
    from ..data.tokenize import render_ids
    from ..inference import stop_token_ids
    from ..task_router import AUTO

    if engine is None:
        raise ApiError(404, f"the model {body.model!r} does not exist; this server only classifies")
    model = body.model
    if model == AUTO and AUTO not in registry.names():
        if task_router is None:
            raise ApiError(404, f"the model {AUTO!r} routes each request to a task adapter; start the server "
                                "with --router DIR", "model")
        model = await run_in_threadpool(lambda: task_router.route([_routing_text(body, chat)])[0])
    adapter = registry.resolve(model)
    prefix = _task_prefix(registry, adapter, body.task)
    tokenizer = engine.tokenizer

    def encode() -> list[int]:
        if chat:
            messages = prefix_messages([m.as_dict() for m in body.messages], prefix)
            return render_ids(tokenizer, messages, add_generation_prompt=True)
        return list(tokenizer(prefix + body.prompt)["input_ids"])
    try:
        ids = await run_in_threadpool(encode)
    except Exception as e:  # a chat template refusing the conversation, ...
        raise ApiError(400, f"cannot encode the {'messages' if chat else 'prompt'}: {e}") from None
    room = engine.max_model_len - len(ids)
    if not ids or room <= 0:
        raise ApiError(400, f"the prompt has {len(ids)} tokens; this server takes 1 to "
                            f"{engine.max_model_len - 1} (--max-model-len {engine.max_model_len})", "messages")
    limit = body.token_limit()
    if limit is not None and limit > room:
        raise ApiError(400, f"max_tokens {limit} + prompt {len(ids)} tokens exceeds the context length "
                            f"{engine.max_model_len}; at most {room} here", "max_tokens")
    params = SamplingParams(limit or min(DEFAULT_MAX_TOKENS, room), body.temperature, body.top_p, body.seed,
                            body.stops())
    queue: asyncio.Queue[Event] = asyncio.Queue()
    loop = asyncio.get_running_loop()
    rid = new_id("chatcmpl" if chat else "cmpl")
    request = Request(ids, adapter, params, frozenset(stop_token_ids(tokenizer)),
                      lambda event: loop.call_soon_threadsafe(queue.put_nowait, event), id=rid)
    engine.submit(request)
    if body.stream:
        include_usage = bool(body.stream_options and body.stream_options.include_usage)
        return StreamingResponse(_sse(engine, request, queue, chat, model, include_usage),
                                 media_type="text/event-stream")
    pieces, event = [], None
    try:
        while event is None or event.finish_reason is None:
            try:
                event = await asyncio.wait_for(queue.get(), timeout=1.0)
            except asyncio.TimeoutError:
                if await http.is_disconnected():
                    return PlainTextResponse("", status_code=499)
                continue
            pieces.append(event.text)
    finally:
        if event is None or event.finish_reason is None:
            engine.cancel(request)
    if event.error:
        raise ApiError(500, event.error)
    return completion_body(chat, rid, model, "".join(pieces), event.finish_reason,
                           usage(event.prompt_tokens, event.completion_tokens))


def _task_prefix(registry: Registry, adapter: Optional[str], task: Optional[str]) -> str:
    """The request's `task` prefix for the adapter it runs on; a task it was not trained with is a 400."""
    try:
        return registry.prefix(adapter, task)
    except InputError as e:
        raise ApiError(400, str(e), "task") from None


def _routing_text(body, chat: bool) -> str:
    """What the router reads: the last user message (chat), or the prompt."""
    if not chat:
        return body.prompt if isinstance(body.prompt, str) else body.prompt[0]
    messages = [m.as_dict() for m in body.messages]
    return next((m["content"] for m in reversed(messages) if m["role"] == "user"), messages[-1]["content"])


async def _sse(engine: Engine, request: Request, queue: asyncio.Queue, chat: bool, model: str, include_usage: bool):
    """The SSE stream of one request; a client that goes away cancels the request."""
    done = False
    try:
        if chat:
            yield _data(chunk_body(True, request.id, model, "", None, first=True))
        while not done:
            event = await queue.get()
            done = event.finish_reason is not None
            if event.error:
                yield _data(error_body(500, event.error))
                break
            if event.text or done:
                yield _data(chunk_body(chat, request.id, model, event.text, event.finish_reason))
            if done and include_usage:
                yield _data(chunk_body(chat, request.id, model, None, None,
                                       usage(event.prompt_tokens, event.completion_tokens)))
        yield "data: [DONE]\n\n"
    finally:
        if not done:
            engine.cancel(request)


def _data(obj: dict) -> str:
    return f"data: {json.dumps(obj, ensure_ascii=False)}\n\n"


def _key_check(api_key: Optional[str]):
    async def check(http: HttpRequest):
        if api_key is None:
            return
        given = http.headers.get("authorization", "")
        scheme, _, token = given.partition(" ")
        if scheme.lower() != "bearer" or not secrets.compare_digest(token.strip().encode(), api_key.encode()):
            raise ApiError(401, "missing or wrong API key (send the header Authorization: Bearer KEY)")
    return check


def _install_errors(app: FastAPI) -> None:
    def reply(status: int, message: str, param: Optional[str] = None) -> JSONResponse:
        return JSONResponse(error_body(status, message, param), status_code=status)

    @app.exception_handler(ApiError)
    async def api_error(_, e: ApiError):
        return reply(e.status, e.message, e.param)

    @app.exception_handler(RequestValidationError)
    async def invalid(_, e: RequestValidationError):
        first = e.errors()[0] if e.errors() else {"loc": (), "msg": "invalid request"}
        where = ".".join(str(p) for p in first.get("loc", ()) if p != "body")
        if first.get("type") == "json_invalid":
            return reply(400, f"malformed JSON body: {first.get('msg')}")
        return reply(400, f"{where or 'body'}: {first.get('msg')}", where or None)

    @app.exception_handler(HTTPException)
    async def http_error(_, e: HTTPException):
        return reply(e.status_code, str(e.detail))

    @app.exception_handler(UnknownModel)
    async def unknown(_, e: UnknownModel):
        return reply(404, str(e), "model")

    @app.exception_handler(Forbidden)
    async def forbidden(_, e: Forbidden):
        return reply(403, str(e))

    @app.exception_handler(InputError)
    async def bad_input(_, e: InputError):
        return reply(400, str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__)

    @app.exception_handler(QueueFull)
    async def full(_, e: QueueFull):
        return reply(429, str(e))

    @app.exception_handler(EngineClosed)
    async def closed(_, e: EngineClosed):
        return reply(503, str(e))

    @app.exception_handler(Exception)
    async def internal(_, e: Exception):
        return reply(500, f"internal error: {type(e).__name__}: {e}")


class _Guard:
    """ASGI middleware: refuses bodies over `max_body_bytes` (413) and counts responses by route."""

    def __init__(self, app, metrics: Metrics, max_body_bytes: int):
        self.app, self.metrics, self.max_body_bytes = app, metrics, max_body_bytes

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        endpoint = scope["path"] if scope["path"] in ENDPOINTS else "other"
        length = dict(scope.get("headers") or []).get(b"content-length", b"0")
        if not length.isdigit() or int(length) > self.max_body_bytes:
            self.metrics.observe_request(endpoint, 413)
            response = JSONResponse(error_body(413, f"request body over {self.max_body_bytes} bytes"), status_code=413)
            return await response(scope, receive, send)
        status = [500]

        async def counting_send(message):
            if message["type"] == "http.response.start":
                status[0] = message["status"]
            await send(message)
        try:
            await self.app(scope, receive, counting_send)
        finally:
            self.metrics.observe_request(endpoint, status[0])
