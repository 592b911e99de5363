"""Whole-model merging from a recipe, streamed tensor by tensor (`lorakit merge-models`).

    stats = merge_models("recipe.yaml", "out/merged")

1. The recipe is validated (`merge/recipe.py`), every model is opened (headers only) and the
   whole merge is planned: each output tensor, its inputs, its parameter values. Mismatched
   architectures, missing tensors, different shapes and unset parameters are errors naming the
   tensor, raised before anything is written.
2. Each output tensor is read from its inputs (plain file reads), merged in fp32 by the recipe's
   method (`merge/methods.py`), cast, and written straight to its place in the output shards.
   Memory holds the inputs and result of one tensor at a time, never a whole model.
3. config.json (from the base, or the first model), generation_config.json, the tokenizer and the
   recipe are written beside the weights; the directory appears only when complete.
"""
from __future__ import annotations

import contextlib
import json
import re
import shutil
import time
import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

import torch

from ..errors import InputError
from ..files import read_text
from ..io.shards import ShardWriter, check_output_directory, release_free_memory, staged_directory
from ..targets import LAYER_LIST_NAMES
from ..models import DTYPES, TOKENIZER_FILES, ModelNotFoundError, local_dir
from .recipe import Recipe, RecipeError, SliceSource, check_recipe, load_recipe, resolve
from .sources import ModelSource, open_source, split_reference

_LAYER = re.compile(rf"(?:^|\.)(?:{'|'.join(LAYER_LIST_NAMES)})\.(\d+)(?=\.|$)")
RECIPE_NAME = "lorakit_merge.yaml"


@dataclass
class _Input:
    source: ModelSource
    key: str
    where: str  # recipe key of the model entry
    scopes: list[dict]  # parameter settings, highest precedence first


@dataclass
class _Task:
    out_key: str
    shape: tuple[int, ...]
    out_dtype: torch.dtype
    base: Optional[_Input]
    others: list[_Input]
    params: dict


def merge_models(recipe: str | Path | Recipe, out_dir: str | Path, overwrite: bool = False, seed: int = 0,
                 max_shard_bytes: int = 2 * 1024 ** 3, progress: bool = False) -> dict:
    """Run a merge recipe (a YAML path or a `Recipe`) and write the merged model to `out_dir`.

    overwrite: replace an existing non-empty `out_dir` (else it is an error).
    seed: DARE's random drop; each tensor draws from its own stream (seed, tensor name), so the
        result does not depend on the order tensors are processed in.
    Returns out_dir, method, models, tensors, shards, bytes, seconds.
    """
    start = time.perf_counter()
    text = None
    if isinstance(recipe, Recipe):
        check_recipe(recipe, _raise)
    else:
        path, recipe = recipe, load_recipe(recipe)
        text = read_text(path, RecipeError)
    with contextlib.ExitStack() as scratch:
        sources = _open_all(recipe, scratch)
        tasks, layers, reference = _plan(recipe, sources)
        tokenizer = _tokenizer_files(recipe, sources, reference)
        out = check_output_directory(out_dir, overwrite, [s.directory for s in sources.values()])
        with staged_directory(out) as staging:
            writer = ShardWriter(staging, [(t.out_key, t.shape, t.out_dtype) for t in tasks], max_shard_bytes)
            from tqdm import tqdm

            for task in tqdm(tasks, desc="merging", unit="tensor", disable=not progress):
                writer.write(task.out_key, _run(task, recipe, seed))
                release_free_memory()
            files = writer.close()
            _write_config(reference, staging, recipe, tasks, layers)
            for file in tokenizer:
                shutil.copyfile(file, staging / file.name)
            import yaml

            (staging / RECIPE_NAME).write_text(text or yaml.safe_dump(recipe.model_dump(exclude_none=True)))
    return {"out_dir": str(out), "method": recipe.merge_method, "models": len(sources), "tensors": len(tasks),
            "shards": sum(f.suffix == ".safetensors" for f in files),
            "bytes": sum(f.stat().st_size for f in (Path(out) / p.name for p in files)),
            "tokenizer": str(tokenizer[0].parent) if tokenizer else None,
            "seconds": round(time.perf_counter() - start, 2)}


def _raise(key: str, message: str):
    raise RecipeError(f"recipe: {key}: {message}")


def _open_all(recipe: Recipe, scratch) -> dict[str, ModelSource]:
    """Every model the recipe names, opened once (headers only), with config checks across them."""
    refs: dict[str, str] = {}
    if recipe.base_model:
        refs[recipe.base_model] = "base_model"
    for i, s in enumerate(recipe.normalized_slices()):
        if s.base_model:
            refs.setdefault(s.base_model, f"slices.{i}.base_model")
        for j, src in enumerate(s.sources):
            refs.setdefault(src.model, f"slices.{i}.sources.{j}.model" if recipe.slices else f"models.{j}.model")
    sources = {ref: open_source(ref, where, scratch) for ref, where in refs.items()}
    first = next(iter(sources.values()))
    want = first.config()
    for ref, source in sources.items():
        cfg = source.config()
        for key in ("model_type", "architectures"):
            if cfg.get(key) != want.get(key):
                raise InputError(f"{refs[ref]}: {ref}: {key} {cfg.get(key)!r} differs from {first.label}'s "
                                 f"{want.get(key)!r}; models of one architecture only")
    return sources


def _layer_count(source: ModelSource) -> int:
    found = [int(m.group(1)) for k in source.keys() for m in [_LAYER.search(k)] if m]
    return max(found) + 1 if found else 0


def _with_layer(key: str, index: int) -> str:
    m = _LAYER.search(key)
    return key[: m.start(1)] + str(index) + key[m.end(1):]


@dataclass
class _Entry:
    """One model of one slice: its layers [lo, hi), its recipe key and parameter scopes."""

    source: ModelSource
    lo: int
    hi: int
    where: str
    scopes: list[dict]

    def input(self, template: str, layer: Optional[int], out_key: str) -> _Input:
        key = template if layer is None else _with_layer(template, self.lo + layer)
        if key not in self.source:
            raise InputError(f"{self.where}: {self.source.label} has no tensor {key} (needed for {out_key})")
        return _Input(self.source, key, self.where, self.scopes)


@dataclass
class _Group:
    """One slice: the base entry (methods with a base), the others, the slice-level parameter scopes."""

    base: Optional[_Entry]
    others: list[_Entry]
    shared: list[dict]

    @property
    def reference(self) -> _Entry:
        return self.base or self.others[0]

    @property
    def count(self) -> int:
        return self.reference.hi - self.reference.lo


def _groups(recipe: Recipe, sources: dict[str, ModelSource]) -> list[_Group]:
    """The recipe's slices with their models resolved (layer ranges checked against the checkpoints)."""
    groups = []
    for i, s in enumerate(recipe.normalized_slices()):
        base_ref = s.base_model or recipe.base_model
        listed = [(src, f"slices.{i}.sources.{j}" if recipe.slices else f"models.{j}") for j, src in enumerate(s.sources)]
        if recipe.slices is None and base_ref is not None and all(src.model != base_ref for src, _ in listed):
            listed.append((SliceSource(model=base_ref, layer_range=(0, -1)), "base_model"))
        entries = []
        for src, where in listed:
            source = sources[src.model]
            layers = _layer_count(source)
            lo, hi = (0, layers) if src.layer_range[1] == -1 else src.layer_range
            if hi > layers:
                raise InputError(f"{where}.layer_range: {src.model} has {layers} layers, not {hi}")
            entries.append(_Entry(source, lo, hi, where, [src.parameters, s.parameters, recipe.parameters]))
        if len({e.hi - e.lo for e in entries}) > 1:
            detail = ", ".join(f"{e.source.label}: {e.hi - e.lo}" for e in entries)
            raise InputError(f"models have different numbers of layers ({detail})")
        base = next((e for e in entries if e.source.label == base_ref), None) if recipe.method.needs_base else None
        groups.append(_Group(base, [e for e in entries if e is not base], [s.parameters, recipe.parameters]))
    return groups


def _plan(recipe: Recipe, sources: dict[str, ModelSource]) -> tuple[list[_Task], list[tuple[ModelSource, int]], ModelSource]:
    """Every output tensor with its inputs and parameter values, in output order: tensors before the
    layers, the layers slice by slice (renumbered), tensors after them. Also returns output layer →
    (model, layer) and the reference model (the first slice's base, else its first model)."""
    groups = _groups(recipe, sources)
    _check_complete(groups)
    reference = groups[0].reference.source
    keys = reference.keys()
    outside = [k for k in keys if not _LAYER.search(k)]
    pre, post = _split_outside(outside, reference, keys) if len(groups) > 1 else (outside, [])
    tasks = [_task(recipe, key, key, groups[0], 0.0, None) for key in pre]
    layer_map: list[tuple[ModelSource, int]] = []
    for group in groups:
        ref = group.reference
        templates = sorted({_with_layer(k, 0) for k in ref.source.keys()
                            if (m := _LAYER.search(k)) and int(m.group(1)) == ref.lo})
        for i in range(group.count):
            t = i / (group.count - 1) if group.count > 1 else 1.0
            out_layer = len(layer_map)
            tasks += [_task(recipe, _with_layer(k, out_layer), k, group, t, i) for k in templates]
            layer_map.append((ref.source, ref.lo + i))
    tasks += [_task(recipe, key, key, groups[-1], 0.0, None) for key in post]
    return tasks, layer_map, reference


def _task(recipe: Recipe, out_key: str, template: str, group: _Group, t: float, layer: Optional[int]) -> _Task:
    """One output tensor: find it in every input, check shapes, resolve the parameters."""
    base = group.base.input(template, layer, out_key) if group.base else None
    inputs = [e.input(template, layer, out_key) for e in group.others]
    ref = base or inputs[0]
    shape = ref.source.shape(ref.key)
    for inp in inputs:
        if inp.source.shape(inp.key) != shape:
            raise InputError(f"{inp.where}: tensor {inp.key} has shape {inp.source.shape(inp.key)} in "
                             f"{inp.source.label} but {shape} in {ref.source.label}")
    params: dict = {}
    for p in recipe.method.params:
        if p.per_model:
            params[p.name] = [_required(p, resolve(p.name, p.kind, inp.scopes, inp.key, t), inp.where,
                                        f"{inp.source.label}, tensor {inp.key}") for inp in inputs]
        else:
            params[p.name] = _required(p, resolve(p.name, p.kind, group.shared, out_key, t), "parameters",
                                       f"tensor {out_key}")
    for name in ("density", "gamma"):
        for value, inp in zip(params.get(name, []), inputs):
            if not 0 <= value <= 1:
                raise InputError(f"{inp.where}.parameters.{name}: {value} for tensor {inp.key}; expected 0 to 1")
    stored = ref.source.dtype(ref.key)
    named = recipe.out_dtype or recipe.dtype
    out_dtype = DTYPES[named] if named and stored.is_floating_point else stored
    return _Task(out_key, shape, out_dtype, base, inputs, params)


def _required(param, value, where: str, what: str):
    if value is None:
        if param.default is None:
            raise InputError(f"{where}: parameter {param.name} is not set for {what}")
        return param.default
    return value


def _check_complete(groups: list[_Group]) -> None:
    """Every input model must hold the same tensors per layer and outside the layers (one architecture)."""
    def names(source: ModelSource) -> set[str]:
        return {_with_layer(k, 0) if _LAYER.search(k) else k for k in source.keys()}

    entries = [e for g in groups for e in ([g.base] if g.base else []) + g.others]
    first = entries[0].source
    want = names(first)
    for entry in entries[1:]:
        have = names(entry.source)
        if have != want:
            odd = sorted(have ^ want)[0]
            whose = entry.source.label if odd in have else first.label
            raise InputError(f"{entry.where}: {entry.source.label} and {first.label} differ in their tensors: "
                             f"only {whose} has {odd}")


def _split_outside(outside: list[str], reference: ModelSource, keys: list[str]) -> tuple[list[str], list[str]]:
    """Tensors outside the layers, split into those before them (embeddings) and after (norm, head)
    by the module order of the architecture (multi-slice recipes take them from the first / last slice)."""
    try:
        from transformers import AutoConfig, AutoModelForCausalLM

        with torch.device("meta"):
            skeleton = AutoModelForCausalLM.from_config(AutoConfig.from_pretrained(reference.directory))
        order = {k: i for i, k in enumerate(skeleton.state_dict())}
    except Exception:  # an architecture transformers cannot build: embeddings first, the rest last
        order = {}
    if order:
        first_layer = min((order[k] for k in keys if _LAYER.search(k) and k in order), default=0)
        pre = [k for k in outside if order.get(k, first_layer + 1) < first_layer]
    else:
        pre = [k for k in outside if "embed" in k or k.split(".")[-2:-1] in (["wte"], ["wpe"])]
    return pre, [k for k in outside if k not in pre]


def _run(task: _Task, recipe: Recipe, seed: int) -> torch.Tensor:
    """Read the inputs of one output tensor and merge them; memory: the inputs plus a few temporaries."""
    first = task.base or task.others[0]
    stored = first.source.read(first.key)
    if not stored.is_floating_point():
        return stored
    work = torch.float64 if stored.dtype == torch.float64 else torch.float32
    rounding = DTYPES[recipe.dtype] if recipe.dtype else None

    def load(inp: _Input, tensor: Optional[torch.Tensor] = None) -> torch.Tensor:
        tensor = inp.source.read(inp.key) if tensor is None else tensor
        return (tensor if rounding is None else tensor.to(rounding)).to(work)

    base = load(task.base, stored) if task.base else None
    others = torch.empty((len(task.others), *task.shape), dtype=work)
    for i, inp in enumerate(task.others):
        others[i] = load(inp, None if task.base or i else stored)
    del stored
    generator = torch.Generator().manual_seed((seed * 1_000_003 + zlib.crc32(task.out_key.encode())) % 2 ** 63)
    return recipe.method.run(base, others, task.params, generator).to(task.out_dtype)


def _write_config(reference: ModelSource, out: Path, recipe: Recipe, tasks: list[_Task],
                  layer_map: list[tuple[ModelSource, int]]) -> None:
    """config.json of the reference model with the output dtype (and layer count, if slices changed it)."""
    config = reference.config()
    dtype = recipe.out_dtype or recipe.dtype
    if dtype is None:
        floating = [t.out_dtype for t in tasks if t.out_dtype.is_floating_point]
        dtype = next((n for n, d in DTYPES.items() if floating and d == floating[0]), None)
    if dtype is not None:
        config["dtype"] = dtype
        if "torch_dtype" in config:
            config["torch_dtype"] = dtype
    n_in = config.get("num_hidden_layers")
    if n_in is not None and len(layer_map) != n_in:
        config["num_hidden_layers"] = len(layer_map)
        for key, value in list(config.items()):  # per-layer settings follow their layers
            if isinstance(value, list) and len(value) == n_in:
                config[key] = [src.config()[key][i] for src, i in layer_map]
    (out / "config.json").write_text(json.dumps(config, indent=2, sort_keys=True) + "\n")
    generation = reference.directory / "generation_config.json"
    if generation.is_file():
        shutil.copyfile(generation, out / "generation_config.json")


def _tokenizer_files(recipe: Recipe, sources: dict[str, ModelSource], reference: ModelSource) -> list[Path]:
    """The tokenizer files to copy: the base's (or first model's) by default, else `tokenizer_source`'s."""
    if recipe.tokenizer_source in (None, "base"):
        directory = reference.directory
    elif recipe.tokenizer_source in sources:
        directory = sources[recipe.tokenizer_source].directory
    else:
        try:
            directory = local_dir(split_reference(recipe.tokenizer_source)[0])
        except ModelNotFoundError as e:
            raise InputError(f"tokenizer_source: {e}") from None
    files = [directory / name for name in TOKENIZER_FILES if (directory / name).is_file()]
    if not files and recipe.tokenizer_source not in (None, "base"):
        raise InputError(f"tokenizer_source: {recipe.tokenizer_source}: no tokenizer files in {directory}")
    return files
