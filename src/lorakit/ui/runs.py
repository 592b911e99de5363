"""Training runs as the dashboard sees them: read from the files a run leaves, never from the trainer's internals.

A run is a directory under the runs directory (at depth 1 or 2) holding `config.yaml`,
`metrics.jsonl` or `launch.yaml` (a run started from the page). Its status comes from, in order:

1. `launch.json`, written by the page's launcher (`launcher.py`): the process id, and once it has
   exited its exit code and whether the user stopped it;
2. the files: `adapter/` (or `model/`) newer than the metrics means finished (stopped early when the
   last step is short of `train.steps`); metrics written in the last `STALE_S` seconds mean running;
   anything else is `incomplete` (killed, crashed, or still loading before its first step).

`metrics.jsonl` is read incrementally by byte offset, so a page polling a live run reads only the
rows appended since its last poll; a file that shrank (a new run or a resume into the directory)
is read again from the start.
"""
from __future__ import annotations

import json
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional

import yaml

from ..errors import InputError

MARKERS = ("config.yaml", "metrics.jsonl", "launch.yaml")
STALE_S = 120.0
"""A run without a launcher record whose metrics were written this recently counts as running."""
MAX_READ_BYTES = 8 * 2**20
"""At most this much of metrics.jsonl is returned per request (the page asks again for the rest)."""
SKIP_DIRS = {"checkpoints", "adapter", "model", "tensorboard", "pissa_initial"}


class UnknownRun(InputError, KeyError):
    """A run id that names no run under the runs directory (HTTP 404)."""

    def __str__(self) -> str:
        return str(self.args[0])


@dataclass
class Run:
    """One run directory; `id` is its path relative to the runs directory, with '/' separators."""

    id: str
    path: Path

    def read_config(self) -> Optional[dict]:
        """The resolved config the trainer wrote (`config.yaml`), else the one the page launched with."""
        for name in ("config.yaml", "launch.yaml"):
            data = _read_yaml(self.path / name)
            if data is not None:
                return data
        return None

    def launch_record(self) -> Optional[dict]:
        try:
            return json.loads((self.path / "launch.json").read_text())
        except (OSError, ValueError):
            return None

    def metrics(self, offset: int = 0, limit: int = MAX_READ_BYTES) -> dict:
        """Rows of metrics.jsonl from byte `offset` on (whole lines only). `reset`: the file is shorter
        than `offset` (rewritten), so these rows start again from the beginning."""
        path = self.path / "metrics.jsonl"
        try:
            size = path.stat().st_size
        except OSError:
            return {"rows": [], "offset": 0, "reset": offset > 0}
        reset = offset > size
        start = 0 if reset else offset
        with open(path, "rb") as f:
            f.seek(start)
            chunk = f.read(min(limit, size - start))
        end = chunk.rfind(b"\n") + 1  # a torn last line waits for its newline
        rows = []
        for line in chunk[:end].splitlines():
            try:
                row = json.loads(line)
            except ValueError:
                continue
            if isinstance(row, dict):
                rows.append(row)
        return {"rows": rows, "offset": start + end, "reset": reset}

    def adapters(self) -> list[dict]:
        """The run's final adapter and its checkpoints' adapters: id, path, base model, peft type, rank."""
        found = [(self.id, self.path / "adapter", None)]
        root = self.path / "checkpoints"
        if root.is_dir():
            found += [(f"{self.id}@{p.name}", p / "adapter", p.name) for p in sorted(root.glob("step-*"))]
        out = []
        for name, path, checkpoint in found:
            config = _read_json(path / "adapter_config.json")
            if config is None or not (path / "adapter_model.safetensors").is_file():
                continue
            out.append({"id": name, "run": self.id, "checkpoint": checkpoint, "path": str(path.resolve()),
                        "base": config.get("base_model_name_or_path") or "", "peft_type": config.get("peft_type"),
                        "task": "classification" if config.get("task_type") == "SEQ_CLS" else "sft",
                        "r": config.get("r") or config.get("init_r")})
        return out

    def log_tail(self, lines: int = 40) -> str:
        """The end of `train.log` (the launched process's output), progress-bar redraws collapsed."""
        path = self.path / "train.log"
        try:
            with open(path, "rb") as f:
                f.seek(max(0, path.stat().st_size - 64 * 1024))
                text = f.read().decode("utf-8", "replace")
        except OSError:
            return ""
        kept = []
        for line in text.replace("\r\n", "\n").split("\n"):
            redraws = [part for part in line.split("\r") if part.strip()]
            if redraws:
                kept.append(redraws[-1])
        return "\n".join(kept[-lines:])

    def summary(self, alive: Optional[bool] = None) -> dict:
        """What the runs table shows: status, steps, final metrics, model and method, times."""
        config = self.read_config() or {}
        rows = self.metrics()["rows"]
        train = [r for r in rows if r.get("split") == "train"]
        evals = [r for r in rows if r.get("split") == "eval"]
        step = max((r.get("step", 0) for r in train + evals), default=0)
        planned = (config.get("train") or {}).get("steps")
        state, error = self._status(config, step, planned, alive)
        final = {}
        if train:
            final["train_loss"] = train[-1].get("loss")
        if evals:
            final.update({f"eval_{k}": v for k, v in evals[-1].items()
                          if isinstance(v, (int, float)) and k not in ("step",)})
        model = config.get("model") or {}
        return {"id": self.id, "status": state, "error": error, "step": step, "total_steps": planned,
                "task": config.get("task"), "method": config.get("method"), "model": model.get("name"),
                "final": final, "started": self._started(), "updated": _mtime(self.path / "metrics.jsonl"),
                "has_adapter": (self.path / "adapter" / "adapter_config.json").is_file(),
                "launched": self.launch_record() is not None}

    def _started(self) -> Optional[float]:
        record = self.launch_record()
        if record and record.get("started"):
            return record["started"]
        return _mtime(self.path / "config.yaml") or _mtime(self.path / "launch.yaml")

    def _status(self, config: dict, step: int, planned: Optional[int], alive: Optional[bool]) -> tuple[str, Optional[str]]:
        record = self.launch_record()
        if record is not None:
            if alive is None:
                alive = record.get("exit_code") is None and _pid_alive(record.get("pid"))
            if alive:
                return "running", None
            if record.get("stopped"):
                return "stopped", None
            code = record.get("exit_code")
            if code not in (0, None):
                return "failed", self._error_line() or f"exit code {code}"
            if code is None and not self._finished():
                return "failed", self._error_line() or "the training process is gone"
        if self._finished():
            early = planned is not None and 0 < step < planned
            return ("stopped early" if early else "finished"), None
        updated = _mtime(self.path / "metrics.jsonl")
        if updated is not None and time.time() - updated < STALE_S:
            return "running", None
        return "incomplete", None

    def _finished(self) -> bool:
        done = _mtime(self.path / "adapter" / "adapter_config.json") or _mtime(self.path / "model" / "config.json")
        metrics = _mtime(self.path / "metrics.jsonl")
        return done is not None and (metrics is None or done >= metrics - 1.0)

    def _error_line(self) -> Optional[str]:
        """The one-line error `lorakit train` printed (`lorakit train: error: ...`), or a traceback's last line."""
        lines = [l for l in self.log_tail(200).splitlines() if l.strip()]
        for line in reversed(lines):
            if ": error: " in line:
                return line.split(": error: ", 1)[1]
        return lines[-1] if lines and ("Error" in lines[-1] or "error" in lines[-1]) else None


class RunsDir:
    """The runs under one directory; every path a request names is resolved inside it."""

    def __init__(self, root: str | os.PathLike):
        self.root = Path(root).expanduser().resolve()

    def list(self) -> list[Run]:
        if not self.root.is_dir():
            return []
        found = []
        for child in sorted(self.root.iterdir()):
            if not child.is_dir() or child.name.startswith(".") or child.is_symlink():
                continue
            if _is_run(child):
                found.append(Run(child.name, child))
                continue
            for grandchild in sorted(child.iterdir()):  # runs grouped one level down: runs/sweep/lr-1e-3
                if grandchild.is_dir() and not grandchild.is_symlink() and _is_run(grandchild):
                    found.append(Run(f"{child.name}/{grandchild.name}", grandchild))
        return found

    def get(self, run_id: str) -> Run:
        """The run `run_id` (relative to the runs directory); UnknownRun for anything else, including
        `..`, absolute paths and symlinks out of the directory."""
        parts = run_id.split("/")
        if not run_id or len(parts) > 2 or any(p in ("", ".", "..") or p.startswith(".") for p in parts):
            raise UnknownRun(f"no run {run_id!r} under {self.root}")
        path = self.root.joinpath(*parts)
        if path.is_symlink() or not path.resolve().is_relative_to(self.root) or not path.is_dir() or not _is_run(path):
            raise UnknownRun(f"no run {run_id!r} under {self.root}")
        return Run(run_id, path)

    def adapters(self) -> list[dict]:
        return [a for run in self.list() for a in run.adapters()]


def config_diff(configs: dict[str, dict]) -> dict:
    """Keys whose values differ between the configs (dotted keys, values per run id, missing: None),
    and how many keys are the same in all of them."""
    flat = {name: flatten(c or {}) for name, c in configs.items()}
    keys = sorted(set().union(*flat.values())) if flat else []
    differ = [{"key": k, "values": {name: f.get(k) for name, f in flat.items()}}
              for k in keys if len({json.dumps(f.get(k), sort_keys=True) for f in flat.values()}) > 1]
    return {"differ": differ, "same": len(keys) - len(differ)}


def flatten(data: dict, prefix: str = "") -> dict[str, Any]:
    """`{"train": {"lr": 1}}` → `{"train.lr": 1}`; lists and empty dicts are values."""
    out = {}
    for key, value in data.items():
        if isinstance(value, dict) and value:
            out.update(flatten(value, f"{prefix}{key}."))
        else:
            out[f"{prefix}{key}"] = value
    return out


def _is_run(path: Path) -> bool:
    return path.name not in SKIP_DIRS and any((path / m).is_file() for m in MARKERS)


def _read_yaml(path: Path) -> Optional[dict]:
    try:
        data = yaml.safe_load(path.read_text())
    except (OSError, yaml.YAMLError, UnicodeDecodeError):
        return None
    return data if isinstance(data, dict) else None


def _read_json(path: Path) -> Optional[dict]:
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None


def _mtime(path: Path) -> Optional[float]:
    try:
        return path.stat().st_mtime
    except OSError:
        return None


def _pid_alive(pid) -> bool:
    if not isinstance(pid, int) or pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    stat = Path(f"/proc/{pid}/stat")
    if stat.is_file():  # a zombie (exited, not yet reaped) is not running
        try:
            return stat.read_text().rsplit(")", 1)[1].split()[0] != "Z"
        except (OSError, IndexError):
            return True
    return True
