"""Run logs: metrics.jsonl (one JSON object per line), TensorBoard events when installed, a loss-curve PNG."""
from __future__ import annotations

import json
from pathlib import Path

from ..files import atomic_write_text


class MetricsLog:
    """Appends rows to `<dir>/metrics.jsonl` and mirrors scalars to TensorBoard if it is installed."""

    def __init__(self, directory: Path, resume: bool = False, until_step: int | None = None):
        self.path = Path(directory) / "metrics.jsonl"
        self.path.parent.mkdir(parents=True, exist_ok=True)
        if resume and self.path.exists() and until_step is not None:  # (a killed run may have torn its last line)
            kept = [json.dumps(r) for r in _parsed(self.path) if r.get("step", 0) <= until_step]
            atomic_write_text(self.path, "".join(l + "\n" for l in kept))
        elif not resume:
            self.path.write_text("")
        tb_dir = Path(directory) / "tensorboard"
        if not resume:  # a new run into an old output_dir: its curves must not mix with the old ones
            for old in tb_dir.glob("events.out.tfevents.*"):
                old.unlink()
        # On resume, TensorBoard hides the old events from the resumed step on (they are redone).
        self._tb = _tensorboard(tb_dir, purge_step=until_step + 1 if resume and until_step is not None else None)

    def write(self, row: dict) -> None:
        with open(self.path, "a") as f:
            f.write(json.dumps(row) + "\n")
        if self._tb is not None and "step" in row:
            prefix = "eval" if row.get("split") == "eval" else "train"
            for key, value in row.items():
                if isinstance(value, (int, float)) and key not in ("step", "split"):
                    self._tb.add_scalar(f"{prefix}/{key}", value, row["step"])

    def rows(self) -> list[dict]:
        return _parsed(self.path)

    def close(self) -> None:
        if self._tb is not None:
            self._tb.close()


def _parsed(path: Path) -> list[dict]:
    rows = []
    for line in path.read_text(encoding="utf-8", errors="replace").splitlines():
        try:
            row = json.loads(line)
        except json.JSONDecodeError:
            continue
        if isinstance(row, dict):
            rows.append(row)
    return rows


def _tensorboard(directory: Path, purge_step: int | None = None):
    try:
        from torch.utils.tensorboard import SummaryWriter
    except ImportError:
        return None
    return SummaryWriter(str(directory), purge_step=purge_step)


def plot_loss(rows: list[dict], target: Path) -> Path:
    """Train (and eval) loss against step, written as a PNG."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    train = [(r["step"], r["loss"]) for r in rows if r.get("split") == "train"]
    evals = [(r["step"], r["loss"]) for r in rows if r.get("split") == "eval" and "loss" in r]
    fig, ax = plt.subplots(figsize=(6, 3.5), dpi=110)
    if train:
        ax.plot(*zip(*train), label="train loss", lw=1.2)
    if evals:
        ax.plot(*zip(*evals), "o-", label="eval loss")
    ax.set_xlabel("optimizer step")
    ax.set_ylabel("loss (per target token)")
    ax.set_yscale("log")
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(target)
    plt.close(fig)
    return target
