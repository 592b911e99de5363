"""The bad-input table's harness: every malformed input gets one clear line, exit code 2, nothing lost.

Each family module (`test_config.py`, `test_data.py`, `test_model.py`, ...) holds a list of rows and
one parametrized test that hands each row to `check_cli` or `check_api`. A row is what a user
might type or write, wrong in one way:

    Cli("lora-r-true", ["train", "{tmp}/run.yaml"], names=["{tmp}/run.yaml", "lora.r"],
        setup=lambda env: env.config({"lora": {"r": True}}))

`check_cli` runs `lorakit.cli.main(argv)` in-process (or, for the few rows with
`subprocess=True`, `python -m lorakit argv` for real) from inside the row's own directory and
asserts:
  - exit code 2;
  - stderr is exactly one line, `lorakit <command>: error: ...`, with no traceback;
  - that line contains every string of `names` (the file, key or value at fault);
  - no file under the row's directory or the shared assets was added, removed or changed, except
    paths matching the row's `may_change` globs (relative to `{tmp}`).
`check_api` calls a Python function and asserts it raises `error` (default `InputError`) with a
one-line message containing `names`, and the same "nothing changed" rule.

Placeholders in argv, names and may_change are filled from `Env.vars()`: `{tmp}` (the row's own
directory, also the working directory), `{model}` (a tiny Llama dir with a character-level tokenizer),
`{adapter}` (a LoRA adapter for it), `{train}` / `{eval}` (good chat JSONL files),
`{classify_train}` (good classification JSONL). Shared assets are read-only for rows: a row that
needs a broken adapter, model or run copies one first (`env.adapter_copy()`, `env.model_copy()`,
`env.run_copy()`); `env.config(changes)` writes `{tmp}/run.yaml`, a good tiny run config with
`changes` merged in; `env.write(relative, content)` writes any other file.

Adding rows for a new command: create `tests/bad_inputs/test_<feature>.py` with

    import pytest
    from bad_inputs.harness import Cli, check_cli, table

    ROWS = [Cli("my-case", ["mycommand", "--opt", "bad"], names=["--opt", "bad"]), ...]

    @pytest.mark.parametrize("row", table(ROWS))
    def test_my_feature_bad_input(row, env, capsys):
        check_cli(row, env, capsys)

(`Api(id, call, names)` rows with `check_api(row, env)` do the same for Python functions.)
Keep rows in-process and tiny (no real SmolLM2 / MiniLM loads); mark a real subprocess row with
`subprocess=True` only where the process boundary itself is under test.
"""
from __future__ import annotations

import fnmatch
import hashlib
import json
import os
import shutil
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Optional, Sequence

import yaml

from lorakit.errors import InputError


@dataclass(frozen=True)
class Cli:
    """One malformed command line (after `setup` wrote its files)."""

    id: str
    argv: Sequence[str]
    names: Sequence[str] = ()
    setup: Optional[Callable[["Env"], Any]] = None
    may_change: Sequence[str] = ()
    stdin: Optional[str] = None
    subprocess: bool = False


@dataclass(frozen=True)
class Api:
    """One malformed Python API call: `call(env)` must raise `error` naming `names`."""

    id: str
    call: Callable[["Env"], Any]
    names: Sequence[str] = ()
    error: type[BaseException] = InputError
    setup: Optional[Callable[["Env"], Any]] = None
    may_change: Sequence[str] = ()


@dataclass
class Assets:
    """Read-only files shared by every row (built once per session)."""

    root: Path
    model: Path
    adapter: Path
    train: Path
    eval: Path
    classify_train: Path
    run: Path  # a finished run of RUN_CHANGES: checkpoints/step-000001, step-000002, adapter/, config.yaml

    def watched(self) -> list[Path]:
        return [self.root] + ([] if self.root in self.model.parents else [self.model])


@dataclass
class Env:
    """A row's world: its own directory `tmp` (the working directory while it runs) and the shared assets."""

    tmp: Path
    assets: Assets
    extra: dict = field(default_factory=dict)

    def vars(self) -> dict[str, str]:
        a = self.assets
        return {"tmp": str(self.tmp), "model": str(a.model), "adapter": str(a.adapter), "train": str(a.train),
                "eval": str(a.eval), "classify_train": str(a.classify_train), **self.extra}

    def fmt(self, text: str) -> str:
        return text.format(**self.vars())

    def write(self, relative: str, content: str | bytes | Any) -> Path:
        """Write `content` (text, bytes, or an object dumped as JSON) to `{tmp}/relative`."""
        path = self.tmp / relative
        path.parent.mkdir(parents=True, exist_ok=True)
        if isinstance(content, bytes):
            path.write_bytes(content)
        elif isinstance(content, str):
            path.write_text(content, encoding="utf-8")
        else:
            path.write_text(json.dumps(content), encoding="utf-8")
        return path

    def run_config(self) -> dict:
        """A good run config for the tiny model (1 step), output under `{tmp}/out`."""
        return good_run_config(self.assets, self.tmp / "out")

    def config(self, changes: Optional[dict] = None, drop: Sequence[str] = (), name: str = "run.yaml") -> Path:
        """Write the good run config with `changes` deep-merged in (and dotted keys in `drop` removed);
        placeholders in the string values of `changes` are filled."""
        data = deep_merge(self.run_config(), self._fill(changes or {}))
        for key in drop:
            *parents, last = key.split(".")
            node = data
            for p in parents:
                node = node[p]
            node.pop(last, None)
        return self.write(name, yaml.safe_dump(data, sort_keys=False))

    def _fill(self, value):
        if isinstance(value, str):
            return self.fmt(value)
        if isinstance(value, dict):
            return {k: self._fill(v) for k, v in value.items()}
        if isinstance(value, list):
            return [self._fill(v) for v in value]
        return value

    def adapter_copy(self, name: str = "adapter", config: Optional[dict] = None) -> Path:
        """A private copy of the shared adapter under `{tmp}/name`; `config` updates its adapter_config.json."""
        target = self.tmp / name
        shutil.copytree(self.assets.adapter, target)
        if config is not None:
            file = target / "adapter_config.json"
            file.write_text(json.dumps({**json.loads(file.read_text()), **self._fill(config)}))
        return target

    def run_copy(self, name: str = "out") -> Path:
        """A private copy of the shared finished run (2 steps, a checkpoint after each) under `{tmp}/name`."""
        target = self.tmp / name
        shutil.copytree(self.assets.run, target)
        return target

    def model_copy(self, name: str = "model") -> Path:
        target = self.tmp / name
        shutil.copytree(self.assets.model, target)
        return target


RUN_CHANGES = {"train": {"steps": 2, "save_every": 1}}
"""What the shared run (`Assets.run`, `Env.run_copy`) used on top of `good_run_config`."""


def good_run_config(assets: Assets, output_dir: Path) -> dict:
    """A run config that trains the tiny model for one step (LoRA r=2 on q_proj, v_proj)."""
    return {
        "model": {"name": str(assets.model)},
        "lora": {"r": 2, "lora_alpha": 4, "target_modules": ["q_proj", "v_proj"]},
        "data": {"train": str(assets.train), "eval": str(assets.eval), "max_length": 256, "max_tokens": 512},
        "train": {"steps": 1, "lr": 1.0e-3, "schedule": "constant"},
        "eval": {"max_new_tokens": 2, "generate": False},
        "output_dir": str(output_dir),
    }


def deep_merge(a: dict, b: dict) -> dict:
    out = dict(a)
    for k, v in b.items():
        out[k] = deep_merge(out[k], v) if isinstance(v, dict) and isinstance(out.get(k), dict) else v
    return out


def snapshot(roots: Sequence[Path]) -> dict[str, tuple]:
    """path -> (kind, size, content hash) for everything under `roots` (directories included)."""
    out = {}
    for root in roots:
        if not root.exists():
            continue
        for dirpath, dirnames, filenames in os.walk(root):
            for d in dirnames:
                out[os.path.join(dirpath, d)] = ("dir",)
            for f in filenames:
                p = os.path.join(dirpath, f)
                if os.path.islink(p):
                    out[p] = ("link", os.readlink(p))
                    continue
                with open(p, "rb") as fh:
                    out[p] = ("file", os.path.getsize(p), hashlib.sha1(fh.read()).hexdigest())
    return out


def changed(before: dict, after: dict, allowed: Sequence[str]) -> list[str]:
    """Paths added, removed or modified between two snapshots and not matched by an `allowed` glob."""
    diff = [f"added {p}" for p in after.keys() - before.keys()]
    diff += [f"removed {p}" for p in before.keys() - after.keys()]
    diff += [f"modified {p}" for p in before.keys() & after.keys() if before[p] != after[p]]
    return sorted(d for d in diff if not any(fnmatch.fnmatch(d.split(" ", 1)[1], g) for g in allowed))


def _prepare(row, env: Env):
    if row.setup is not None:
        row.setup(env)
    roots = [env.tmp, *env.assets.watched()]
    allowed = [env.fmt(g) for g in row.may_change]
    return roots, allowed, snapshot(roots)


def check_cli(row: Cli, env: Env, capsys) -> str:
    """Run the row's command; assert exit 2, one stderr line naming `names`, nothing changed. Returns the line."""
    roots, allowed, before = _prepare(row, env)
    argv = [env.fmt(a) for a in row.argv]
    if row.subprocess:
        proc = subprocess.run([sys.executable, "-m", "lorakit", *argv], cwd=env.tmp, input=row.stdin or "",
                              capture_output=True, text=True, timeout=300, env=_child_env(env))
        rc, err = proc.returncode, proc.stderr
    else:
        rc, err = _run_in_process(argv, row.stdin, capsys)
    lines = [l for l in err.splitlines() if l.strip()]
    assert rc == 2, f"exit code {rc}, expected 2; stderr:\n{err}"
    assert len(lines) == 1, f"expected one stderr line, got {len(lines)}:\n{err}"
    line = lines[0]
    assert line.startswith("lorakit") and ": error: " in line, f"not a lorakit error line: {line}"
    for name in row.names:
        assert env.fmt(name) in line, f"{env.fmt(name)!r} not named in: {line}"
    diff = changed(before, snapshot(roots), allowed)
    assert not diff, f"files changed by a failed command ({line}):\n" + "\n".join(diff)
    return line


def _run_in_process(argv: list[str], stdin: Optional[str], capsys) -> tuple[int, str]:
    import io

    from lorakit.cli import main

    capsys.readouterr()
    old_stdin = sys.stdin
    sys.stdin = io.StringIO(stdin or "")
    try:
        rc = main(argv)
    except SystemExit as e:  # argparse
        rc = e.code if isinstance(e.code, int) else 1
    finally:
        sys.stdin = old_stdin
    return rc, capsys.readouterr().err


def _child_env(env: Env) -> dict:
    src = str(Path(__file__).resolve().parents[2] / "src")
    out = dict(os.environ, LORAKIT_CACHE=str(env.tmp / "cache"))
    out["PYTHONPATH"] = os.pathsep.join([src, out.get("PYTHONPATH", "")])
    return out


def check_api(row: Api, env: Env) -> str:
    """Call the row's function; assert it raises `row.error` with one line naming `names`, nothing changed."""
    roots, allowed, before = _prepare(row, env)
    try:
        row.call(env)
    except BaseException as e:  # noqa: BLE001  (the type is what is checked)
        error = e
    else:
        raise AssertionError(f"{row.id}: no error raised")
    assert isinstance(error, row.error), f"raised {type(error).__name__}: {error}, expected {row.error.__name__}"
    message = str(error)
    assert message.strip() and "\n" not in message.strip(), f"not one line: {message!r}"
    for name in row.names:
        assert env.fmt(name) in message, f"{env.fmt(name)!r} not named in: {message}"
    diff = changed(before, snapshot(roots), allowed)
    assert not diff, f"files changed by a failed call ({message}):\n" + "\n".join(diff)
    return message


def table(rows: Sequence[Cli | Api]) -> list:
    """`rows` as pytest params named by their ids (which must be unique)."""
    import pytest

    ids = [row.id for row in rows]
    duplicates = sorted({i for i in ids if ids.count(i) > 1})
    assert not duplicates, f"duplicate row ids: {duplicates}"
    return [pytest.param(row, id=row.id) for row in rows]
