"""The scheduler that owns the model: continuous batching with a different adapter per row.

One thread runs `_loop`; nothing else touches the model. Each turn of the loop:

1. runs the jobs other threads queued for the model (loading / unloading adapters);
2. drops cancelled requests (a client went away) and frees their rows at once;
3. admits waiting requests while rows are free: their prompts are prefilled together (left-padded,
   one forward per group, see below) and the first token of each is sampled and streamed;
   then their KV caches join the running batch of their group;
4. runs one decode step per group: one forward over all its rows, each row through its own adapter
   (`lorakit.route`), samples one token per row, streams the new text, and retires the rows that
   finished (end-of-turn token, a stop string, max_tokens or the context length).

Groups: plain LoRA adapters and the base model mix freely in one forward (`route`). An adapter
that `route` cannot mix (DoRA, VeRA, AdaLoRA, modules_to_save, virtual tokens) runs as its own
group: its rows are batched together with `set_adapter`, so a step costs one forward per such
adapter in use. (A prompt- or prefix-tuning adapter's prefill puts its virtual tokens in the cache
before every row; the group's mask is widened to cover them, so rows can still join and leave.)

Greedy decoding equals `lorakit generate` (HF `generate`) for the same prompt and adapter: positions
count only a row's real tokens, left padding is masked out, and each row's cache holds exactly
its own tokens, so a row's computation does not depend on its batch neighbours beyond float
rounding.
"""
from __future__ import annotations

import collections
import contextlib
import inspect
import logging
import os
import threading
import time
from concurrent.futures import Future
from dataclasses import dataclass, field
from typing import Callable, Optional

import torch
from torch import nn

from ..routing import route, routable, set_adapter
from .kv import BatchCache, check_supported
from .metrics import Metrics

log = logging.getLogger("lorakit.serve")

MIXED = ""
"""Group key of the rows that share one routed forward (the base and plain LoRA adapters)."""


class QueueFull(RuntimeError):
    """Too many requests are waiting (HTTP 429)."""


class EngineClosed(RuntimeError):
    """The engine is shutting down and takes no new requests (HTTP 503)."""


class Retry(Exception):
    """Raised by a job given to `Engine.call` to run again after the next step."""


@dataclass(frozen=True)
class SamplingParams:
    max_tokens: int
    temperature: float = 0.0  # 0: greedy
    top_p: float = 1.0
    seed: Optional[int] = None
    stop: tuple[str, ...] = ()


@dataclass
class Event:
    """What a request's sink receives: new text, and on the last event why it finished."""

    text: str
    finish_reason: Optional[str] = None  # "stop" | "length" | "error" on the last event
    prompt_tokens: int = 0
    completion_tokens: int = 0
    error: Optional[str] = None


@dataclass(eq=False)
class Request:
    """One generation request. `sink` is called on the engine thread with each `Event`."""

    prompt_ids: list[int]
    adapter: Optional[str]  # None: the base model
    params: SamplingParams
    stop_ids: frozenset[int]
    sink: Callable[[Event], None]
    id: str = ""
    arrived: float = field(default_factory=time.monotonic)
    # engine-side state
    generated: list[int] = field(default_factory=list)
    text: str = ""  # the reply decoded so far (tokens before `read`)
    prefix: int = 0  # decoding restarts at this token, for context (see `_decoded`)
    read: int = 0
    sent: int = 0  # characters of `text` already streamed
    cancelled: bool = False
    first_token_at: Optional[float] = None
    rng: Optional[torch.Generator] = None


class _Batch:
    """The running rows of one group: their requests, left-padded attention mask and KV cache.

    `mask` (rows, cache length) is 1 on real tokens; `last` (rows,) holds each row's newest token,
    sampled but not yet in the cache; `positions` (rows,) the number of real tokens cached.
    """

    def __init__(self):
        self.requests: list[Request] = []
        self.cache = BatchCache()
        self.mask = torch.zeros(0, 0, dtype=torch.long)
        self.last = torch.zeros(0, dtype=torch.long)
        self.positions = torch.zeros(0, dtype=torch.long)

    def join(self, other: "_Batch") -> None:
        length = max(self.mask.shape[1], other.mask.shape[1])
        pad = lambda m: torch.nn.functional.pad(m, (length - m.shape[1], 0))  # noqa: E731
        self.cache.concat(other.cache, spare=32)
        self.mask = torch.cat([pad(self.mask), pad(other.mask)])
        self.last = torch.cat([self.last, other.last])
        self.positions = torch.cat([self.positions, other.positions])
        self.requests += other.requests

    def keep(self, keep: list[int]) -> None:
        """Keep the rows `keep`; drop padding columns that no remaining row needs."""
        if len(keep) == len(self.requests):
            return
        rows = torch.tensor(keep, dtype=torch.long)
        self.requests = [self.requests[i] for i in keep]
        self.last, self.positions, self.mask = self.last[rows], self.positions[rows], self.mask[rows]
        if not keep:
            self.cache, self.mask = BatchCache(), torch.zeros(0, 0, dtype=torch.long)
            return
        self.cache.select_rows(rows)
        unused = int((self.mask.cumsum(1) == 0).sum(1).min())
        if unused:
            self.cache.drop_left(unused)
            self.mask = self.mask[:, unused:]


class Engine:
    """Continuous batching over one model (see the module docstring).

    `model` is a causal LM with its adapters loaded (any may be added or removed later through
    `call`); `max_batch` caps the running rows, `max_waiting` the queue (beyond: `QueueFull`),
    `max_prefill_tokens` the padded prompt tokens prefilled in one turn. `ensure_adapter(name,
    busy)` is called on the engine thread before a request joins, to load an evicted adapter; it
    returns False while that is impossible (the request then keeps waiting).
    """

    def __init__(self, model: nn.Module, tokenizer, *, max_batch: int = 32, max_model_len: int = 2048,
                 max_waiting: int = 256, max_prefill_tokens: int = 4096, metrics: Optional[Metrics] = None,
                 ensure_adapter: Optional[Callable[[str, set], bool]] = None):
        check_supported(model)
        self.model, self.tokenizer = model.eval(), tokenizer
        self.max_batch, self.max_model_len = max_batch, max_model_len
        self.max_waiting, self.max_prefill_tokens = max_waiting, max_prefill_tokens
        self.metrics = metrics or Metrics()
        self.ensure_adapter = ensure_adapter or (lambda name, busy: True)
        self.pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
        # transformers 5.x renamed `past_key_values` to `cache`
        self.cache_kw = "cache" if "cache" in inspect.signature(model.forward).parameters else "past_key_values"
        self.groups: dict[str, _Batch] = {}
        self.waiting: collections.deque[Request] = collections.deque()
        self.jobs: collections.deque[tuple[Callable, Future]] = collections.deque()
        self.wake = threading.Condition()
        self.closing = self.stopped = False
        self.routed: Optional[tuple[list, contextlib.ExitStack]] = None  # see `_route`
        self.thread = threading.Thread(target=self._loop, name="lorakit-engine", daemon=True)

    # -- called from other threads -------------------------------------------------------------
    def start(self) -> "Engine":
        self.thread.start()
        return self

    def submit(self, request: Request) -> None:
        with self.wake:
            if self.closing:
                raise EngineClosed("the server is shutting down")
            if len(self.waiting) >= self.max_waiting:
                raise QueueFull(f"{len(self.waiting)} requests are already waiting; retry later")
            self.waiting.append(request)
            self.wake.notify()

    def cancel(self, request: Request) -> None:
        """The client is gone: the request leaves the batch before the next step."""
        request.cancelled = True
        with self.wake:
            self.wake.notify()

    def call(self, fn: Callable[[nn.Module], object]) -> Future:
        """Run `fn(model)` on the engine thread between steps; the future holds its result or error."""
        future: Future = Future()
        with self.wake:
            if self.stopped:
                future.set_exception(EngineClosed("the engine has stopped"))
                return future
            self.jobs.append((fn, future))
            self.wake.notify()
        return future

    def running_adapters(self) -> set:
        """Adapters of the running requests (a snapshot)."""
        return {r.adapter for b in list(self.groups.values()) for r in list(b.requests) if r.adapter is not None}

    def load(self) -> tuple[int, int]:
        """(waiting, running) request counts."""
        return len(self.waiting), sum(len(b.requests) for b in list(self.groups.values()))

    def shutdown(self, timeout: float = 30.0) -> None:
        """Stop taking requests, let the running and waiting ones finish (up to `timeout` s), stop."""
        with self.wake:
            self.closing = True
            self.wake.notify()
        deadline = time.monotonic() + timeout
        while sum(self.load()) and time.monotonic() < deadline and self.thread.is_alive():
            time.sleep(0.05)
        with self.wake:
            self.stopped = True
            self.wake.notify()
        if self.thread.is_alive():
            self.thread.join(timeout=5)
        self._fail_all("the server shut down before this request finished")

    # -- the engine thread -----------------------------------------------------------------------
    def _loop(self) -> None:
        torch.set_grad_enabled(False)
        while True:
            with self.wake:
                while not (self.stopped or self.jobs or self.waiting or any(b.requests for b in self.groups.values())):
                    self.wake.wait()
                if self.stopped:
                    break
                jobs, self.jobs = list(self.jobs), collections.deque()
            try:
                if jobs or self.waiting:
                    self._unroute()  # jobs and admissions may load or unload adapters
                for fn, future in jobs:
                    self._run_job(fn, future)
                self._drop_cancelled()
                self._admit()
                for key in list(self.groups):
                    if self.groups[key].requests:
                        self._guarded_decode(key)
            except Exception:  # pragma: no cover - a bug: fail what runs, keep serving
                log.exception("engine loop failed")
                self._fail_all("internal error in the engine loop (see the server log)")
            self.metrics.set_load(*self.load())
        self._unroute()
        for fn, future in self.jobs:
            future.set_exception(EngineClosed("the engine has stopped"))

    def _fail_all(self, message: str) -> None:
        self._unroute()
        with self.wake:
            waiting, self.waiting = list(self.waiting), collections.deque()
        for request in waiting + [r for b in self.groups.values() for r in b.requests]:
            self._finish(request, "error", error=message)
        self.groups.clear()

    def _run_job(self, fn, future: Future) -> None:
        try:
            future.set_result(fn(self.model))
        except Retry:  # e.g. an unload waiting for the adapter's last running request
            with self.wake:
                self.jobs.append((fn, future))
        except BaseException as e:  # the caller gets the error; the engine carries on
            future.set_exception(e)

    def _guarded_decode(self, key: str) -> None:
        """A failing forward fails that group's requests, never the engine."""
        try:
            self._decode_step(key)
        except Exception as e:  # pragma: no cover - defensive: reported to the clients and the log
            log.exception("engine step failed for group %r", key)
            for request in self.groups.pop(key, _Batch()).requests:
                self._finish(request, "error", error=f"internal error: {type(e).__name__}: {e}")

    def _drop_cancelled(self) -> None:
        with self.wake:
            if any(r.cancelled for r in self.waiting):
                self.waiting = collections.deque(r for r in self.waiting if not r.cancelled)
        for batch in self.groups.values():
            if any(r.cancelled for r in batch.requests):
                batch.keep([i for i, r in enumerate(batch.requests) if not r.cancelled])

    def _admit(self) -> None:
        """Move waiting requests into the batch (oldest first) while rows and the prefill budget allow."""
        with self.wake:
            free = self.max_batch - self.load()[1]
            candidates = [self.waiting.popleft() for _ in range(min(free, len(self.waiting)))]
        joining: dict[str, list[Request]] = {}
        back, longest, count = [], 0, 0
        for request in candidates:
            longest_if = max(longest, len(request.prompt_ids))
            if count and longest_if * (count + 1) > self.max_prefill_tokens:
                back.append(request)
                continue
            if request.adapter is not None:
                in_use = {r.adapter for rs in [*joining.values(), *(b.requests for b in self.groups.values())]
                          for r in rs if r.adapter is not None}
                try:
                    ready = self.ensure_adapter(request.adapter, in_use)
                except Exception as e:  # unloaded while it waited, or its files went bad
                    self._finish(request, "error", error=str(e))
                    continue
                if not ready:  # its adapter cannot be loaded yet; later requests may go first
                    back.append(request)
                    continue
            key = MIXED if routable(self.model, request.adapter) else request.adapter
            joining.setdefault(key, []).append(request)
            longest, count = longest_if, count + 1
        with self.wake:
            self.waiting.extendleft(reversed(back))
        for key, requests in joining.items():
            try:
                self._prefill(key, requests)
            except Exception as e:  # pragma: no cover - defensive: reported to the clients and the log
                log.exception("prefill failed for group %r", key)
                for request in requests:
                    self._finish(request, "error", error=f"internal error: {type(e).__name__}: {e}")

    def _prefill(self, key: str, requests: list[Request]) -> None:
        """One forward over the joining prompts (left-padded); sample their first tokens; join the group."""
        length = max(len(r.prompt_ids) for r in requests)
        ids = torch.full((len(requests), length), self.pad_id, dtype=torch.long)
        mask = torch.zeros((len(requests), length), dtype=torch.long)
        for i, r in enumerate(requests):
            ids[i, length - len(r.prompt_ids):] = torch.tensor(r.prompt_ids)
            mask[i, length - len(r.prompt_ids):] = 1
            r.rng = torch.Generator().manual_seed(r.params.seed if r.params.seed is not None
                                                  else int.from_bytes(os.urandom(8), "little") >> 1)
        joining = _Batch()
        joining.requests, joining.mask = list(requests), mask
        joining.positions = mask.sum(1)
        positions = (mask.cumsum(1) - 1).clamp(min=0)
        logits = self._forward(key, joining, ids, positions)
        added = joining.cache.get_seq_length() - joining.mask.shape[1]
        if added > 0:  # columns the model put before every row (virtual tokens: prompt / prefix tuning)
            joining.mask = torch.nn.functional.pad(joining.mask, (added, 0), value=1)
        joining.last = self._sample(requests, logits)
        batch = self.groups.setdefault(key, _Batch())
        first_new = len(batch.requests)
        batch.join(joining)
        self.metrics.observe_prefill(len(requests), int(mask.sum()))
        self._emit(key, first_new)

    def _decode_step(self, key: str) -> None:
        batch = self.groups[key]
        batch.mask = torch.nn.functional.pad(batch.mask, (0, 1), value=1)
        logits = self._forward(key, batch, batch.last[:, None], batch.positions[:, None])
        batch.positions = batch.positions + 1
        batch.last = self._sample(batch.requests, logits)
        self.metrics.observe_step(len(batch.requests))
        self._emit(key)

    def _forward(self, key: str, batch: _Batch, ids: torch.Tensor, positions: torch.Tensor) -> torch.Tensor:
        """(rows, q) ids through the model with each row's adapter → (rows, vocab) logits of the last position."""
        inputs = {"input_ids": ids, "attention_mask": batch.mask, "position_ids": positions,
                  self.cache_kw: batch.cache, "use_cache": True, "logits_to_keep": 1}
        if key == MIXED:
            self._route([r.adapter for r in batch.requests])
        else:
            self._unroute()
            set_adapter(self.model, key)
        return self.model(**inputs).logits[:, -1].float()

    def _route(self, names: list) -> None:
        """Enter `route(model, names)`, or stay in it if it is already open for the same rows: while the
        batch does not change, decode steps reuse one route block (entering one costs a walk over the
        model and a check of every layer's stacked factors)."""
        if self.routed is not None and self.routed[0] == names:
            return
        self._unroute()
        stack = contextlib.ExitStack()
        stack.enter_context(route(self.model, names))
        self.routed = (names, stack)

    def _unroute(self) -> None:
        """Leave the open route block: before the model changes (adapter jobs, loads) or a solo group runs."""
        if self.routed is not None:
            self.routed[1].close()
            self.routed = None

    @staticmethod
    def _sample(requests: list[Request], logits: torch.Tensor) -> torch.Tensor:
        """(rows, vocab) → (rows,) next tokens: argmax for greedy rows, top-p sampling for the others."""
        tokens = logits.argmax(-1)
        for i, r in enumerate(requests):
            if r.params.temperature > 0:
                tokens[i] = _sample_top_p(logits[i] / r.params.temperature, r.params.top_p, r.rng)
        for r, t in zip(requests, tokens.tolist()):
            if r.first_token_at is None:
                r.first_token_at = time.monotonic()
            r.generated.append(t)
        return tokens

    def _emit(self, key: str, first: int = 0) -> None:
        """Stream the new text of rows `first`...; retire the rows that finished."""
        batch = self.groups[key]
        keep = list(range(first))
        for i in range(first, len(batch.requests)):
            if self._stream(batch.requests[i], int(batch.positions[i]) + 1) is None:
                keep.append(i)
        batch.keep(keep)
        if not batch.requests:
            del self.groups[key]

    def _stream(self, r: Request, context: int) -> Optional[str]:
        """Send `r`'s new text; returns the finish reason when `r` is done (after its last event)."""
        stopped_by_token = r.generated[-1] in r.stop_ids
        limit = len(r.generated) >= r.params.max_tokens or context >= self.max_model_len
        text = self._decoded(r, r.generated[:-1] if stopped_by_token else r.generated, stopped_by_token or limit)
        reason = "stop" if stopped_by_token else None
        cut = _find_stop(text, r.params.stop, max(0, r.sent - max((len(s) for s in r.params.stop), default=0)))
        if cut is not None:
            text, reason = text[:cut], "stop"
        elif reason is None and limit:
            reason = "length"
        if reason is None:
            end = len(text) - _held_back(text, r.params.stop)
            if end > r.sent:
                _send(r, Event(text[r.sent:end]))
                r.sent = end
            return None
        self._finish(r, reason, text)
        return reason

    def _decoded(self, r: Request, ids: list[int], final: bool = False) -> str:
        """`r`'s reply text for `ids`, decoding only the new tokens (plus the previous ones, so that
        spaces between words come out as in a full decode): O(new tokens) per step, not O(reply).
        Half a UTF-8 character waits for its next token unless `final`."""
        if len(ids) > r.read:
            before = self.tokenizer.decode(ids[r.prefix:r.read], skip_special_tokens=True)
            after = self.tokenizer.decode(ids[r.prefix:], skip_special_tokens=True)
            if len(after) > len(before) and (final or not after.endswith("\ufffd")):
                r.text += after[len(before):]
                r.prefix, r.read = r.read, len(ids)
        return r.text

    def _finish(self, r: Request, reason: str, text: str = "", error: Optional[str] = None) -> None:
        _send(r, Event(text[r.sent:], reason, len(r.prompt_ids), len(r.generated), error))
        r.sent = len(text)
        self.metrics.observe_finished(r, reason)


def _send(r: Request, event: Event) -> None:
    try:
        r.sink(event)
    except Exception:  # the client's side is gone (e.g. its event loop closed): stop generating for it
        r.cancelled = True


def _sample_top_p(logits: torch.Tensor, top_p: float, rng: torch.Generator) -> int:
    """One token from softmax(logits) restricted to the smallest set of tokens with mass ≥ top_p."""
    probs = logits.softmax(-1)
    if top_p < 1.0:
        sorted_probs, order = probs.sort(descending=True)
        outside = sorted_probs.cumsum(-1) - sorted_probs >= top_p  # keeps at least the top token
        sorted_probs[outside] = 0
        return int(order[torch.multinomial(sorted_probs, 1, generator=rng)])
    return int(torch.multinomial(probs, 1, generator=rng))


def _find_stop(text: str, stops: tuple[str, ...], start: int) -> Optional[int]:
    """Index of the earliest stop string in `text[start:]` (absolute), or None."""
    hits = [i for i in (text.find(s, start) for s in stops) if i >= 0]
    return min(hits) if hits else None


def _held_back(text: str, stops: tuple[str, ...]) -> int:
    """Characters at the end of `text` not to stream yet: a suffix that may begin a stop string."""
    return max((k for s in stops for k in range(min(len(s) - 1, len(text)), 0, -1) if text.endswith(s[:k])),
               default=0)
