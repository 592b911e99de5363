"""Starting and stopping `lorakit train` from the page.

A launched run is `python -m lorakit train <runs>/<name>/launch.yaml` in its own process group,
its output in `<runs>/<name>/train.log`. `launch.json` beside it records the process id, and, once
the process has exited, its exit code and whether the user stopped it: the runs table reads that
(see `runs.py`), also after the dashboard restarts. Runs keep going when the dashboard stops.

Stop sends SIGINT to the run's process group (the trainer stops as on Ctrl-C; its last checkpoint
stays, so "resume" continues from there), then SIGTERM if it has not exited after `STOP_GRACE_S`.
"""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Optional

import yaml

from ..errors import InputError
from ..files import atomic_write_text
from .runs import Run, RunsDir

STOP_GRACE_S = 15.0
_RECORDS = threading.Lock()  # launch.json is updated by the stop and the reaper threads


class Busy(InputError):
    """Another launched run is still running (HTTP 409)."""


class Launcher:
    """The runs this dashboard started, by run id; at most `max_running` at a time."""

    def __init__(self, runs: RunsDir, max_running: int = 1, python: str = sys.executable):
        self.runs, self.max_running, self.python = runs, max_running, python
        self.procs: dict[str, subprocess.Popen] = {}
        self.lock = threading.Lock()

    def alive(self, run_id: str) -> Optional[bool]:
        """Whether a run this dashboard started is running; None for runs it did not start."""
        proc = self.procs.get(run_id)
        return None if proc is None else proc.poll() is None

    def running(self) -> list[str]:
        return [run_id for run_id, proc in self.procs.items() if proc.poll() is None]

    def start(self, name: str, config: dict, resume: bool = False) -> Run:
        """Write `config` (its output_dir set to the run's directory) and start training it."""
        with self.lock:
            busy = self.running()
            if len(busy) >= self.max_running:
                raise Busy(f"{', '.join(busy)} is still running; stop it first (or start lorakit ui with "
                           f"--max-runs {self.max_running + 1})")
            directory = self.runs.root / name
            directory.mkdir(parents=True, exist_ok=True)
            config = dict(config, output_dir=str(directory))
            atomic_write_text(directory / "launch.yaml", yaml.safe_dump(config, sort_keys=False))
            command = [self.python, "-m", "lorakit", "train", str(directory / "launch.yaml")]
            if resume:
                command.append("--resume")
            env = dict(os.environ, PYTHONUNBUFFERED="1")
            with open(directory / "train.log", "ab" if resume else "wb") as log:
                proc = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                        env=env, start_new_session=True)
            self.procs[name] = proc
            record = {"pid": proc.pid, "started": time.time(), "command": command, "exit_code": None,
                      "stopped": False}
            atomic_write_text(directory / "launch.json", json.dumps(record, indent=1))
            threading.Thread(target=self._reap, args=(name, proc, directory), daemon=True,
                             name=f"lorakit-ui-run-{name}").start()
            return Run(name, directory)

    def resume(self, run: Run) -> Run:
        """Start `run` again with `--resume` from its resolved config (it continues at its last checkpoint)."""
        config = run.read_config()
        if config is None:
            raise InputError(f"{run.id}: no config to resume from")
        if not any((run.path / "checkpoints").glob("step-*/trainer_state.json")):
            raise InputError(f"{run.id}: no checkpoint to resume from (set train.save_every to write some)")
        return self.start(run.id, config, resume=True)

    def stop(self, run_id: str) -> None:
        """Interrupt a run this dashboard started (SIGINT to its process group, SIGTERM after a grace period)."""
        proc = self.procs.get(run_id)
        if proc is None or proc.poll() is not None:
            raise InputError(f"{run_id}: not running from this dashboard (a run started elsewhere is "
                             "stopped where it was started)")
        _update(self.runs.root / run_id / "launch.json", stopped=True)
        _signal_group(proc, signal.SIGINT)

        def escalate():
            try:
                proc.wait(STOP_GRACE_S)
            except subprocess.TimeoutExpired:
                _signal_group(proc, signal.SIGTERM)
        threading.Thread(target=escalate, daemon=True).start()

    def _reap(self, name: str, proc: subprocess.Popen, directory: Path) -> None:
        code = proc.wait()
        _update(directory / "launch.json", exit_code=code, ended=time.time())


def _signal_group(proc: subprocess.Popen, sig: int) -> None:
    try:
        os.killpg(proc.pid, sig)
    except (ProcessLookupError, PermissionError):
        pass


def _update(path: Path, **fields) -> None:
    with _RECORDS:
        try:
            record = json.loads(path.read_text())
        except (OSError, ValueError):
            record = {}
        record.update(fields)
        atomic_write_text(path, json.dumps(record, indent=1))
