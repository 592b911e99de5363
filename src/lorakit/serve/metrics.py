"""Server metrics in Prometheus' text format (`GET /metrics`), without a client library.

Counters: requests by endpoint and status, prompt and generated tokens, finished requests by
reason. Gauges: waiting and running requests. Histograms: decode batch size, time to first token,
request latency.
"""
from __future__ import annotations

import threading
import time
from collections import Counter
from typing import Iterable

LATENCY_BUCKETS = (0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120)
BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128)


class Histogram:
    def __init__(self, buckets: Iterable[float]):
        self.buckets = tuple(buckets)
        self.counts = [0] * (len(self.buckets) + 1)
        self.sum, self.count = 0.0, 0

    def observe(self, value: float) -> None:
        self.counts[next((i for i, b in enumerate(self.buckets) if value <= b), len(self.buckets))] += 1
        self.sum += value
        self.count += 1

    def lines(self, name: str) -> list[str]:
        out, running = [], 0
        for bound, n in zip([*map(_number, self.buckets), "+Inf"], self.counts):
            running += n
            out.append(f'{name}_bucket{{le="{bound}"}} {running}')
        return out + [f"{name}_sum {self.sum:.6f}", f"{name}_count {self.count}"]


def _number(x: float) -> str:
    return str(int(x)) if float(x).is_integer() else str(x)


class Metrics:
    """Updated by the engine thread and the HTTP handlers; `render()` is the /metrics body."""

    def __init__(self):
        self.lock = threading.Lock()
        self.requests: Counter = Counter()  # (endpoint, status code)
        self.finished: Counter = Counter()  # finish reason
        self.prompt_tokens = self.generated_tokens = 0
        self.waiting = self.running = 0
        self.batch_size = Histogram(BATCH_BUCKETS)
        self.ttft = Histogram(LATENCY_BUCKETS)
        self.latency = Histogram(LATENCY_BUCKETS)

    def observe_request(self, endpoint: str, status: int) -> None:
        with self.lock:
            self.requests[(endpoint, status)] += 1

    def observe_prefill(self, rows: int, tokens: int) -> None:
        with self.lock:
            self.prompt_tokens += tokens
            self.generated_tokens += rows

    def observe_step(self, rows: int) -> None:
        with self.lock:
            self.generated_tokens += rows
            self.batch_size.observe(rows)

    def observe_finished(self, request, reason: str) -> None:
        with self.lock:
            self.finished[reason] += 1
            if request.first_token_at is not None:
                self.ttft.observe(request.first_token_at - request.arrived)
                self.latency.observe(time.monotonic() - request.arrived)

    def set_load(self, waiting: int, running: int) -> None:
        self.waiting, self.running = waiting, running

    def render(self) -> str:
        with self.lock:
            lines = ["# TYPE lorakit_requests_total counter"]
            lines += [f'lorakit_requests_total{{endpoint="{e}",status="{s}"}} {n}'
                      for (e, s), n in sorted(self.requests.items())]
            lines += ["# TYPE lorakit_finished_requests_total counter"]
            lines += [f'lorakit_finished_requests_total{{reason="{r}"}} {n}' for r, n in sorted(self.finished.items())]
            lines += ["# TYPE lorakit_prompt_tokens_total counter", f"lorakit_prompt_tokens_total {self.prompt_tokens}",
                      "# TYPE lorakit_generated_tokens_total counter",
                      f"lorakit_generated_tokens_total {self.generated_tokens}",
                      "# TYPE lorakit_waiting_requests gauge", f"lorakit_waiting_requests {self.waiting}",
                      "# TYPE lorakit_running_requests gauge", f"lorakit_running_requests {self.running}",
                      "# TYPE lorakit_batch_size histogram", *self.batch_size.lines("lorakit_batch_size"),
                      "# TYPE lorakit_time_to_first_token_seconds histogram",
                      *self.ttft.lines("lorakit_time_to_first_token_seconds"),
                      "# TYPE lorakit_request_latency_seconds histogram",
                      *self.latency.lines("lorakit_request_latency_seconds")]
        return "\n".join(lines) + "\n"

