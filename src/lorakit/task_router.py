"""TaskRouter: pick a task's adapter for each prompt, from the tasks' own training prompts.

    router = TaskRouter().fit({"notes": TaskSpec("runs/notes/adapter", "bundled:quickstart_train"),
                               "contacts": TaskSpec("runs/contacts/adapter", "bundled:contacts_train")})
    router.route(["Call Ana Ruiz at 555-201-3344."])   # -> ["contacts"]
    router.save("runs/router"); TaskRouter.load("runs/router")

Each prompt is embedded by a sentence encoder (default the embedded all-MiniLM-L6-v2: mean of the
last hidden states over real tokens, L2-normalised), `(N, H)`. Two ways to decide, `RouterKind`:

- `centroid` (default): one unit-length mean embedding per task, `(T, H)`; a prompt goes to the task
  with the highest cosine similarity. No training, no hyperparameters.
- `linear`: a small classifier (one linear layer, `(H) -> (T)`) trained on the frozen embeddings
  (full-batch AdamW, seeded); it can weigh the directions that separate the tasks.

On disk (a directory, replaced as a whole): `router.json` (encoder, kind, tasks with their adapter
dirs and prompt counts) and `router.safetensors` (`centroids`, and `classifier.weight/bias` for
`linear`). The task names are the adapter names `lorakit serve --router` serves them under.
"""
from __future__ import annotations

import enum
import json
import threading
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Mapping, Optional, Sequence

import torch
from torch import nn

from .errors import InputError
from .models import DEFAULT_ENCODER

CONFIG_FILE = "router.json"
TENSORS_FILE = "router.safetensors"
FORMAT_VERSION = 1


class RouterError(InputError):
    """A router directory or task spec that cannot be used: names the file or task and what is wrong."""


class RouterKind(str, enum.Enum):
    CENTROID = "centroid"
    LINEAR = "linear"


@dataclass(frozen=True)
class TaskSpec:
    """One task: its adapter directory and where its prompts come from (a data file or bundled:NAME)."""

    adapter: str
    data: Optional[str] = None


def prompts_of(source: str, key: str = "data", limit: Optional[int] = None) -> list[str]:
    """The prompts of a data file: each conversation's last user message (chat rows) or the text."""
    from .data.formats import load_dataset
    from .data.io import data_path

    dataset = load_dataset(data_path(source, key))
    if dataset.kind == "chat":
        prompts = [next(m["content"] for m in reversed(row) if m["role"] == "user") for row in dataset.rows
                   if any(m["role"] == "user" for m in row)]
    else:
        prompts = [row["text"] for row in dataset.rows]
    prompts = [p for p in prompts if p.strip()][:limit]
    if not prompts:
        raise RouterError(f"{key}: {source}: no prompt to learn from")
    return prompts


class Encoder:
    """A sentence encoder: `(texts) -> (N, H)` unit vectors, mean-pooled over real tokens."""

    def __init__(self, name: str = DEFAULT_ENCODER, max_length: int = 128, batch_size: int = 64):
        from transformers import AutoModel, AutoTokenizer

        from .models import local_dir

        path = local_dir(name)
        self.name, self.max_length, self.batch_size = name, max_length, batch_size
        self.tokenizer = AutoTokenizer.from_pretrained(path)
        self.model = AutoModel.from_pretrained(path, dtype=torch.float32).eval()
        self.dim = int(self.model.config.hidden_size)
        self._lock = threading.Lock()  # one forward at a time (the server routes from several threads)

    @torch.no_grad()
    def __call__(self, texts: Sequence[str]) -> torch.Tensor:
        out = []
        with self._lock:
            for start in range(0, len(texts), self.batch_size):
                enc = self.tokenizer(list(texts[start : start + self.batch_size]), padding=True, truncation=True,
                                     max_length=self.max_length, return_tensors="pt")
                hidden = self.model(**enc).last_hidden_state  # (n, L, H)
                mask = enc["attention_mask"].unsqueeze(-1).to(hidden.dtype)
                pooled = (hidden * mask).sum(1) / mask.sum(1).clamp(min=1)
                out.append(nn.functional.normalize(pooled, dim=-1))
        return torch.cat(out) if out else torch.zeros(0, self.dim)


class TaskRouter:
    """Nearest-centroid (or linear-classifier) routing of prompts to tasks; see the module docstring."""

    def __init__(self, encoder: str = DEFAULT_ENCODER, kind: RouterKind = RouterKind.CENTROID,
                 max_length: int = 128):
        self.kind = RouterKind(kind)
        self.encoder_name, self.max_length = encoder, max_length
        self._encoder: Optional[Encoder] = None
        self.tasks: dict[str, TaskSpec] = {}
        self.counts: dict[str, int] = {}
        self.centroids: Optional[torch.Tensor] = None  # (T, H), unit rows
        self.classifier: Optional[nn.Linear] = None  # (H) -> (T), for RouterKind.LINEAR

    @property
    def encoder(self) -> Encoder:
        if self._encoder is None:
            self._encoder = Encoder(self.encoder_name, self.max_length)
        return self._encoder

    @property
    def names(self) -> list[str]:
        return list(self.tasks)

    def fit(self, tasks: Mapping[str, TaskSpec], prompts: Optional[Mapping[str, Sequence[str]]] = None,
            max_prompts: Optional[int] = None, seed: int = 0) -> "TaskRouter":
        """Learn from each task's prompts: `prompts[name]` if given, else read from `tasks[name].data`."""
        if len(tasks) < 2:
            raise RouterError(f"a router needs at least two tasks, got {len(tasks)}")
        texts: dict[str, list[str]] = {}
        for name, spec in tasks.items():
            if prompts is not None and name in prompts:
                texts[name] = [p for p in prompts[name] if p.strip()][:max_prompts]
            elif spec.data is not None:
                texts[name] = prompts_of(spec.data, f"task {name}", max_prompts)
            else:
                raise RouterError(f"task {name}: no prompts (give a data file or prompts)")
            if not texts[name]:
                raise RouterError(f"task {name}: no prompt to learn from")
        embedded = {name: self.encoder(t) for name, t in texts.items()}
        self.tasks, self.counts = dict(tasks), {n: len(t) for n, t in texts.items()}
        self.centroids = nn.functional.normalize(torch.stack([e.mean(0) for e in embedded.values()]), dim=-1)
        self.classifier = None
        if self.kind is RouterKind.LINEAR:
            x = torch.cat(list(embedded.values()))
            y = torch.cat([torch.full((len(e),), i) for i, e in enumerate(embedded.values())])
            self.classifier = _train_linear(x, y, len(tasks), seed)
        return self

    @torch.no_grad()
    def scores(self, prompts: Sequence[str]) -> torch.Tensor:
        """`(N, T)`: cosine similarity to each task's centroid, or the classifier's logits."""
        if self.centroids is None:
            raise RouterError("the router is not fitted; call fit() or TaskRouter.load()")
        x = self.encoder(prompts)
        return self.classifier(x) if self.classifier is not None else x @ self.centroids.T

    def route(self, prompts: Sequence[str] | str) -> list[str]:
        """The task (= adapter) name for each prompt."""
        prompts = [prompts] if isinstance(prompts, str) else list(prompts)
        if not prompts:
            return []
        return [self.names[i] for i in self.scores(prompts).argmax(-1).tolist()]

    def adapter_dirs(self, prompts: Sequence[str] | str) -> list[str]:
        """The adapter directory for each prompt."""
        return [self.tasks[name].adapter for name in self.route(prompts)]

    def accuracy(self, prompts: Mapping[str, Sequence[str]]) -> dict[str, float]:
        """Share of each task's prompts routed to that task, and `overall` (over all prompts)."""
        out, right, seen = {}, 0, 0
        for name, texts in prompts.items():
            routed = self.route(list(texts))
            hits = sum(r == name for r in routed)
            out[name] = hits / max(len(routed), 1)
            right, seen = right + hits, seen + len(routed)
        out["overall"] = right / max(seen, 1)
        return out

    def save(self, directory: str | Path) -> Path:
        """Write router.json + router.safetensors into `directory`, replaced as a whole."""
        from safetensors.torch import save_file

        from .files import atomic_write_text
        from .io.shards import staged_directory

        if self.centroids is None:
            raise RouterError("the router is not fitted; nothing to save")
        tensors = {"centroids": self.centroids.contiguous()}
        if self.classifier is not None:
            tensors |= {"classifier.weight": self.classifier.weight.detach().contiguous(),
                        "classifier.bias": self.classifier.bias.detach().contiguous()}
        meta = {"version": FORMAT_VERSION, "encoder": self.encoder_name, "kind": self.kind.value,
                "max_length": self.max_length, "dim": int(self.centroids.shape[1]),
                "tasks": [{"name": n, **asdict(s), "prompts": self.counts.get(n, 0)} for n, s in self.tasks.items()]}
        directory = Path(directory).expanduser()
        with staged_directory(directory) as staging:
            save_file(tensors, str(staging / TENSORS_FILE))
            atomic_write_text(staging / CONFIG_FILE, json.dumps(meta, indent=1) + "\n")
        return directory

    @classmethod
    def load(cls, directory: str | Path, load_encoder: bool = True) -> "TaskRouter":
        """A saved router; `load_encoder=False` reads only the files (the encoder loads on first use)."""
        meta, tensors = read_router(directory)
        router = cls(meta["encoder"], RouterKind(meta["kind"]), meta["max_length"])
        router.tasks = {t["name"]: TaskSpec(t["adapter"], t.get("data")) for t in meta["tasks"]}
        router.counts = {t["name"]: int(t.get("prompts", 0)) for t in meta["tasks"]}
        router.centroids = tensors["centroids"]
        if router.kind is RouterKind.LINEAR:
            weight = tensors["classifier.weight"]
            router.classifier = nn.Linear(weight.shape[1], weight.shape[0])
            router.classifier.load_state_dict({"weight": weight, "bias": tensors["classifier.bias"]})
        if load_encoder and router.encoder.dim != router.centroids.shape[1]:
            raise RouterError(f"{Path(directory) / CONFIG_FILE}: encoder {meta['encoder']} gives {router.encoder.dim}-"
                              f"dim embeddings, the centroids are {router.centroids.shape[1]}-dim")
        return router


def read_router(directory: str | Path) -> tuple[dict, dict[str, torch.Tensor]]:
    """router.json and router.safetensors of a router directory, checked (RouterError naming the file)."""
    from safetensors.torch import load_file

    from .files import read_json
    from .io.shards import check_safetensors

    directory = Path(directory).expanduser()
    config, weights = directory / CONFIG_FILE, directory / TENSORS_FILE
    if not config.is_file():
        raise RouterError(f"{directory}: not a router directory (no {CONFIG_FILE}); build one with lorakit router build")
    meta = read_json(config, RouterError, expect=dict)
    problems = []
    if meta.get("version") != FORMAT_VERSION:
        problems.append(f"version {meta.get('version')!r} (expected {FORMAT_VERSION})")
    if meta.get("kind") not in {k.value for k in RouterKind}:
        problems.append(f"kind {meta.get('kind')!r}")
    if not isinstance(meta.get("encoder"), str) or not isinstance(meta.get("max_length"), int):
        problems.append("encoder or max_length missing")
    tasks = meta.get("tasks")
    if (not isinstance(tasks, list) or len(tasks) < 2
            or not all(isinstance(t, dict) and isinstance(t.get("name"), str) and isinstance(t.get("adapter"), str)
                       for t in tasks)):
        problems.append("tasks: expected a list of at least two {name, adapter} objects")
    if problems:
        raise RouterError(f"{config}: {'; '.join(problems)}")
    if not weights.is_file():
        raise RouterError(f"{weights}: missing")
    check_safetensors(weights, RouterError)
    try:
        tensors = load_file(str(weights))
    except Exception as e:  # the header was checked; anything else is a damaged file
        raise RouterError(f"{weights}: not a readable safetensors file ({str(e).splitlines()[0]})") from None
    centroids = tensors.get("centroids")
    linear = RouterKind(meta["kind"]) is RouterKind.LINEAR
    expected = {"centroids"} | ({"classifier.weight", "classifier.bias"} if linear else set())
    shapes_ok = set(tensors) == expected and centroids.ndim == 2 and centroids.shape[0] == len(tasks)
    if shapes_ok and linear:  # the classifier maps an embedding (H) to one logit per task (T)
        w, b = tensors["classifier.weight"], tensors["classifier.bias"]
        shapes_ok = tuple(w.shape) == (len(tasks), centroids.shape[1]) and tuple(b.shape) == (len(tasks),)
    if not shapes_ok or not all(torch.isfinite(t).all() for t in tensors.values()):
        raise RouterError(f"{weights}: expected finite tensors {sorted(expected)} with one centroid (and one "
                          f"classifier row) per task ({len(tasks)}), found "
                          f"{ {k: tuple(v.shape) for k, v in sorted(tensors.items())} }")
    return meta, tensors


def _train_linear(x: torch.Tensor, y: torch.Tensor, classes: int, seed: int, steps: int = 300) -> nn.Linear:
    """A linear classifier on frozen embeddings `(N, H)`: full-batch AdamW, class-balanced cross-entropy."""
    generator = torch.Generator().manual_seed(seed)
    head = nn.Linear(x.shape[1], classes)
    with torch.no_grad():
        head.weight.copy_(torch.randn(head.weight.shape, generator=generator) * 0.01)
        head.bias.zero_()
    counts = torch.bincount(y, minlength=classes).float()
    loss_fn = nn.CrossEntropyLoss(weight=counts.sum() / (classes * counts.clamp(min=1)))
    optimizer = torch.optim.AdamW(head.parameters(), lr=0.05, weight_decay=1e-3)
    scale = 10.0  # unit-length inputs: scaled so logits can grow past a few units
    for _ in range(steps):
        optimizer.zero_grad()
        loss_fn(head(x * scale), y).backward()
        optimizer.step()
    with torch.no_grad():  # fold the input scale into the weights: route() feeds unscaled embeddings
        head.weight.mul_(scale)
    return head.eval().requires_grad_(False)


def parse_task_specs(specs: Sequence[str]) -> dict[str, TaskSpec]:
    """`["NAME=ADAPTER_DIR:DATA", ...]` (DATA: a file or bundled:NAME) → {NAME: TaskSpec}, checked."""
    from .io import check_adapter_dir
    from .serve.registry import NAME
    from .data.io import data_path

    tasks: dict[str, TaskSpec] = {}
    for spec in specs:
        name, sep, rest = spec.partition("=")
        adapter, colon, data = rest.partition(":")
        if not sep or not colon or not adapter or not data or not NAME.fullmatch(name) or name == AUTO:
            raise RouterError(f"--task {spec!r}: expected NAME=ADAPTER_DIR:DATA (NAME: 1-128 letters, digits or "
                              f"._:@/+-, not {AUTO!r}; DATA: a file or bundled:NAME)")
        if name in tasks:
            raise RouterError(f"--task {spec!r}: the task {name!r} is given twice")
        adapter_dir = check_adapter_dir(adapter, f"--task {name}: {adapter}", RouterError)
        data_path(data, f"--task {name}")
        tasks[name] = TaskSpec(str(adapter_dir.resolve()), data)
    if len(tasks) < 2:
        raise RouterError(f"--task: a router needs at least two tasks, got {len(tasks)}")
    return tasks


AUTO = "auto"
"""The model name that asks `lorakit serve --router` to route the request."""


def build_router(specs: Sequence[str], out: str | Path, encoder: str = DEFAULT_ENCODER,
                 kind: RouterKind = RouterKind.CENTROID, max_prompts: Optional[int] = None,
                 overwrite: bool = False) -> TaskRouter:
    """`lorakit router build`: parse and check the task specs and the output, fit, save."""
    from .files import check_output_dir

    tasks = parse_task_specs(specs)
    check_output_dir(out, "output directory", must_be_empty=not overwrite, hint="pass --overwrite to replace it",
                     inputs=[s.adapter for s in tasks.values()], error=RouterError)
    router = TaskRouter(encoder, kind).fit(tasks, max_prompts=max_prompts)
    router.save(out)
    return router


def load_routed(directory: str | Path, prompt: str, allow_pickle: bool = False):
    """`lorakit generate --router DIR`: (task name, its adapter loaded as `lorakit.inference.Trained`)."""
    from .inference import load_trained
    from .io import check_adapter_dir

    router = TaskRouter.load(directory)
    task = router.route([prompt])[0]
    adapter = router.tasks[task].adapter
    check_adapter_dir(adapter, f"{Path(directory) / CONFIG_FILE}: task {task}: {adapter}", RouterError)
    return task, load_trained(adapter, allow_pickle=allow_pickle)
