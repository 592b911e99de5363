"""The adapters a server offers by name: loading, unloading, the allowed directory, LRU eviction.

A served name is either the base model, a generation adapter (loaded into the engine's model, or
known and evicted: it is loaded again when a request needs it) or a classification adapter (its
own classifier model, answered by `/v1/classify`). `resolve` is the one place where a request's
`model` field becomes an adapter: a router that picks adapters by task (`model: "auto"`) plugs in
there.

Methods marked *engine thread* change the model and run only inside `Engine.call` or as the
engine's `ensure_adapter` hook; the others may run on any thread (one lock guards the names).
"""
from __future__ import annotations

import re
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional

from torch import nn

from ..errors import InputError
from ..data.prefixes import prefix_for
from ..io import (STACK_NAME, WEIGHTS_NAME, check_adapter_dir, load_adapter, read_config, read_stack_record,
                  read_task_prefixes)
from ..routing import delete_adapter, list_adapters
from .engine import Retry

NAME = re.compile(r"[\w.:@/+-]{1,128}")


class UnknownModel(InputError, KeyError):
    """A request names a model or adapter that is not served (HTTP 404)."""

    def __str__(self) -> str:  # KeyError would quote the message
        return str(self.args[0])


class Forbidden(InputError):
    """A load outside the allowed adapter directory, or runtime loading switched off (HTTP 403)."""


@dataclass
class Entry:
    name: str
    path: Path
    task: str  # "sft" or "classification"
    last_used: float = 0.0
    loaded: bool = False
    prefixes: dict[str, str] = field(default_factory=dict)  # task name -> prefix (task_prefixes.json)


class Registry:
    """Names → adapters for one base model. `max_loaded` caps the generation adapters held in memory."""

    def __init__(self, base_name: str, adapter_dir: Optional[Path] = None, max_loaded: Optional[int] = None):
        self.base_name = base_name
        self.adapter_dir = Path(adapter_dir).resolve() if adapter_dir is not None else None
        self.max_loaded = max_loaded
        self.entries: dict[str, Entry] = {}
        self.classifiers: dict[str, object] = {}  # name → inference.Trained
        self.lock = threading.Lock()

    # -- any thread ----------------------------------------------------------------------------
    def resolve(self, model: str) -> Optional[str]:
        """The adapter a request's `model` names (None: the base model); UnknownModel otherwise."""
        if model == self.base_name:
            return None
        with self.lock:
            entry = self.entries.get(model)
        if entry is None or entry.task != "sft":
            hint = " (a classification adapter: use /v1/classify)" if entry is not None else ""
            raise UnknownModel(f"the model {model!r} does not exist{hint}; served: {self.names()}")
        return model

    def prefix(self, adapter: Optional[str], task: Optional[str]) -> str:
        """The prefix a request's `task` names for `adapter` (None: the base model, which has none); "" for
        no task; an InputError (HTTP 400) for a task the adapter was not trained with."""
        if task is None:
            return ""
        with self.lock:
            entry = self.entries.get(adapter) if adapter is not None else None
        return prefix_for(entry.prefixes if entry is not None else {}, task, "task",
                          repr(adapter) if adapter is not None else f"the base model {self.base_name!r}")

    def classifier(self, model: str):
        """The classification adapter named `model` (an `inference.Trained`)."""
        with self.lock:
            trained = self.classifiers.get(model)
        if trained is None:
            raise UnknownModel(f"{model!r} is not a classification adapter; served: {self.names()}")
        return trained

    def names(self) -> list[str]:
        with self.lock:
            return [self.base_name, *self.entries]

    def listing(self) -> list[Entry]:
        with self.lock:
            return list(self.entries.values())

    def allowed_path(self, lora_path: str) -> Path:
        """`lora_path` (absolute, or relative to the adapter directory) resolved, if inside the adapter
        directory (symlinks followed) and an adapter directory itself."""
        if self.adapter_dir is None:
            raise Forbidden("loading adapters at runtime is off; start the server with --adapter-dir DIR")
        candidate = Path(lora_path)
        path = (candidate if candidate.is_absolute() else self.adapter_dir / candidate).resolve()
        if not path.is_relative_to(self.adapter_dir):
            raise Forbidden(f"lora_path {lora_path!r} is outside the adapter directory")
        check_adapter_dir(path, f"lora_path {lora_path!r}", InputError)
        if not (path / WEIGHTS_NAME).is_file():
            raise InputError(f"lora_path {lora_path!r}: no {WEIGHTS_NAME} (only safetensors adapters are served)")
        return path

    def check_new_name(self, name: str) -> None:
        if not NAME.fullmatch(name):
            raise InputError(f"lora_name {name!r}: expected 1-128 letters, digits or ._:@/+- characters")
        if name == self.base_name:
            raise InputError(f"lora_name {name!r} is the base model's name")
        with self.lock:
            if name in self.entries:
                raise InputError(f"an adapter named {name!r} is already loaded; unload it first")

    def task_of(self, path: Path) -> str:
        """"classification" for a sequence-classification adapter, else "sft" (reads the config: bad → 400)."""
        return "classification" if read_config(path).task_type == "SEQ_CLS" else "sft"

    def add_classifier(self, name: str, path: Path, trained) -> None:
        with self.lock:
            self.entries[name] = Entry(name, path, "classification", time.monotonic(), True,
                                       read_task_prefixes(path))
            self.classifiers[name] = trained

    def withdraw(self, name: str) -> Entry:
        """Stop serving `name` (new requests get 404); the caller then frees it (`drop`)."""
        with self.lock:
            entry = self.entries.pop(name, None)
            if entry is None:
                raise UnknownModel(f"no adapter named {name!r} is loaded; served: {[self.base_name, *self.entries]}")
            self.classifiers.pop(name, None)
            return entry

    # -- engine thread -------------------------------------------------------------------------
    def add(self, model: nn.Module, name: str, path: Path, in_use: set) -> None:
        """Load the generation adapter at `path` as `name` (engine thread), evicting if over `max_loaded`."""
        with self.lock:
            if name in self.entries:
                raise InputError(f"an adapter named {name!r} is already loaded; unload it first")
        _refuse_stacked(path)
        prefixes = read_task_prefixes(path)
        if name in list_adapters(model) or not self._make_room(model, in_use):
            raise Retry  # still unloading that name, or every loaded adapter is busy: after the next step
        load_adapter(model, path, adapter_name=name)
        with self.lock:
            self.entries[name] = Entry(name, path, "sft", time.monotonic(), True, prefixes)

    def register_unloaded(self, name: str, path: Path) -> None:
        """Serve `name` without loading it yet (startup beyond `max_loaded`): loaded on first use."""
        read_config(path)
        _refuse_stacked(path)
        prefixes = read_task_prefixes(path)
        with self.lock:
            self.entries[name] = Entry(name, path, "sft", prefixes=prefixes)

    def ensure(self, model: nn.Module, name: str, in_use: set) -> bool:
        """Make `name` loaded before a request runs on it (engine thread). False: every loaded adapter
        is in use, so the request waits; UnknownModel if `name` was unloaded meanwhile."""
        with self.lock:
            entry = self.entries.get(name)
        if entry is None:
            raise UnknownModel(f"the model {name!r} was unloaded")
        if not entry.loaded:
            if not self._make_room(model, in_use):
                return False
            load_adapter(model, entry.path, adapter_name=name)
            entry.loaded = True
        entry.last_used = time.monotonic()
        return True

    def drop(self, model: nn.Module, entry: Entry) -> None:
        """Remove a withdrawn adapter's weights from the model (engine thread)."""
        if entry.loaded and entry.name in list_adapters(model):
            delete_adapter(model, entry.name)
        entry.loaded = False

    def _make_room(self, model: nn.Module, in_use: set) -> bool:
        """Evict least recently used idle adapters until one more fits under `max_loaded`."""
        if self.max_loaded is None:
            return True
        with self.lock:
            loaded = sorted((e for e in self.entries.values() if e.loaded and e.task == "sft"),
                            key=lambda e: e.last_used)
        while len(loaded) >= self.max_loaded:
            victim = next((e for e in loaded if e.name not in in_use), None)
            if victim is None:
                return False
            self.drop(model, victim)
            loaded.remove(victim)
        return True


def _refuse_stacked(path: Path) -> None:
    """A progressive LoRA adapter only means something on top of its earlier adapters; one request runs one."""
    earlier = read_stack_record(path)
    if earlier:
        raise InputError(f"{path}: trained on top of {', '.join(map(str, earlier))} ({STACK_NAME}); the server "
                         "applies one adapter per request: merge the earlier adapters into the base, or use "
                         "lorakit generate / eval, which load the stack")
