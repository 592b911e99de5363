"""Timing helpers shared by the side-by-side benchmarks.

Timings are medians over repeats taken after warmup; when two or more implementations are
compared, their repeats are interleaved (with the order rotated every round) so that drift on a
noisy machine (thermal, other processes) hits all of them alike.
"""
from __future__ import annotations

import gc
import resource
import statistics
import sys
import time
from typing import Callable, Mapping, Optional

import torch


def sync(device: Optional[torch.device] = None) -> None:
    """Wait for queued GPU work (a no-op on CPU)."""
    if device is not None and torch.device(device).type == "cuda":
        torch.cuda.synchronize()


def time_once(fn: Callable[[], object], device: Optional[torch.device] = None) -> float:
    """Wall seconds of one `fn()` call (GPU work included)."""
    sync(device)
    start = time.perf_counter()
    fn()
    sync(device)
    return time.perf_counter() - start


def median_time(fn: Callable[[], object], reps: int, warmup: int = 1,
                device: Optional[torch.device] = None) -> float:
    """Median wall seconds of `fn()` over `reps` runs after `warmup` runs."""
    for _ in range(warmup):
        fn()
    return statistics.median(time_once(fn, device) for _ in range(reps))


def interleaved(fns: Mapping[str, Callable[[], object]], reps: int, warmup: int = 1,
                device: Optional[torch.device] = None, setup: Optional[Callable[[], object]] = None,
                ) -> dict[str, list[float]]:
    """Time each of `fns` `reps` times, round-robin, after `warmup` rounds; returns all samples.

    The order inside a round rotates each round. `setup()` (untimed) runs before every call.
    The garbage collector is run before, and kept off during, each timed call.
    """
    names = list(fns)
    samples: dict[str, list[float]] = {n: [] for n in names}
    for i in range(warmup + reps):
        k = i % len(names)
        for name in names[k:] + names[:k]:
            if setup is not None:
                setup()
            gc.collect()
            gc.disable()
            try:
                t = time_once(fns[name], device)
            finally:
                gc.enable()
            if i >= warmup:
                samples[name].append(t)
    return samples


def medians(samples: Mapping[str, list[float]]) -> dict[str, float]:
    return {n: statistics.median(ts) for n, ts in samples.items()}


def spread(ts: list[float]) -> float:
    """Relative interquartile-ish spread (max-min over median of the middle half); noise indicator."""
    s = sorted(ts)
    q = len(s) // 4
    mid = s[q: len(s) - q] or s
    return (mid[-1] - mid[0]) / statistics.median(s)


def peak_rss_mib() -> float:
    """Peak resident set size of this process so far, in MiB."""
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return rss / (1024 * 1024) if sys.platform == "darwin" else rss / 1024


def fmt_time(seconds: float) -> str:
    if seconds >= 1:
        return f"{seconds:.3f} s"
    if seconds >= 1e-3:
        return f"{seconds * 1e3:.2f} ms"
    return f"{seconds * 1e6:.1f} us"


def ratio_line(label: str, ours: float, theirs: float, ours_name: str = "lorakit",
               theirs_name: str = "peft") -> str:
    return (f"{label}: {ours_name} {fmt_time(ours)}  {theirs_name} {fmt_time(theirs)}  "
            f"ratio {ours / theirs:.3f}")


def paired_ratio(ours: list[float], theirs: list[float]) -> float:
    """Median over rounds of ours[i] / theirs[i]: samples taken in the same interleaved round are
    compared with each other, so drift between rounds (a noisy machine) cancels out."""
    return statistics.median(a / b for a, b in zip(ours, theirs))


class Table:
    """Rows of metric / ours / theirs / ratios / goal / verdict, printed aligned at the end."""

    HEADER = ("metric", "lorakit", "reference", "ratio", "ratio(min)", "ratio(paired)", "goal", "result")

    def __init__(self) -> None:
        self.rows: list[tuple[str, ...]] = []

    def add(self, metric: str, ours: float, theirs: float, goal: Optional[float] = None,
            reference: str = "peft", fmt: Callable[[float], str] = fmt_time,
            mins: Optional[tuple[float, float]] = None, paired: Optional[float] = None) -> bool:
        """Add a row; `goal` is the largest passing ratio ours/theirs (None: reported only).

        `mins` (ours, theirs): fastest samples, whose ratio is shown too (less sensitive to a loaded machine).
        `paired`: the median of per-round ratios (see `paired_ratio`); when given, the goal is judged
        on it, else on the ratio of the medians.
        """
        ratio = ours / theirs
        judged = ratio if paired is None else paired
        ok = goal is None or judged <= goal
        verdict = "-" if goal is None else ("PASS" if ok else "FAIL")
        self.rows.append((metric, fmt(ours), f"{fmt(theirs)} ({reference})", f"{ratio:.3f}",
                          "-" if mins is None else f"{mins[0] / mins[1]:.3f}",
                          "-" if paired is None else f"{paired:.3f}",
                          "-" if goal is None else f"<= {goal:.2f}", verdict))
        return ok

    def render(self) -> str:
        rows = [self.HEADER, *self.rows]
        widths = [max(len(r[i]) for r in rows) for i in range(len(self.HEADER))]
        lines = ["  ".join(c.ljust(w) for c, w in zip(r, widths)).rstrip() for r in rows]
        lines.insert(1, "  ".join("-" * w for w in widths))
        return "\n".join(lines)
