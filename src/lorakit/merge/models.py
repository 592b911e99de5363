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
from ..inject import LAYER_LIST_NAMES
from ..io.shards import ShardWriter, check_output_directory, staged_directory
from ..models import DTYPES
from .recipe import Recipe, RecipeError, load_recipe, resolve
from .sources import ModelSource, open_source

_LAYER = re.compile(rf"(?:^|\.)(?:{'|'.join(LAYER_LIST_NAMES)})\.(\d+)(?=\.|$)")
TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "added_tokens.json",
                   "vocab.json", "vocab.txt", "merges.txt", "tokenizer.model", "spiece.model",
                   "sentencepiece.bpe.model", "chat_template.jinja", "chat_template.json")
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
    if not isinstance(recipe, Recipe):
        text = Path(recipe).read_text()
        recipe = load_recipe(recipe)
    with contextlib.ExitStack() as scratch:
        sources = _open_all(recipe, scratch)
        tasks, layers, reference = _plan(recipe, sources)
        out = check_output_directory(out_dir, overwrite, [s.directory for s in sources.values()])
        with staged_directory(out) as staging:
            writer = ShardWriter(staging, [(t.out_key, t.shape, t.out_dtype) for t in tasks], max_shard_bytes)
            from tqdm import tqdm

            for task in tqdm(tasks, desc="merging", unit="tensor", disable=not progress):
                writer.write(task.out_key, _run(task, recipe, seed))
            files = writer.close()
            _write_config(reference, staging, recipe, tasks, layers)
            _copy_tokenizer(recipe, sources, reference, staging)
            import yaml

            (staging / RECIPE_NAME).write_text(text or yaml.safe_dump(recipe.model_dump(exclude_none=True)))
    return {"out_dir": str(out), "method": recipe.merge_method, "models": len(sources), "tensors": len(tasks),
            "shards": sum(f.suffix == ".safetensors" for f in files),
            "bytes": sum(f.stat().st_size for f in (Path(out) / p.name for p in files)),
            "seconds": round(time.perf_counter() - start, 2)}


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
    if recipe.tokenizer_source not in (None, "base"):
        refs.setdefault(recipe.tokenizer_source, "tokenizer_source")
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


def _plan(recipe: Recipe, sources: dict[str, ModelSource]) -> tuple[list[_Task], list[tuple[ModelSource, int]], ModelSource]:
    """Every output tensor with its inputs and parameter values; (tasks, out layer → (source, layer), reference)."""
    method = recipe.method
    slices = recipe.normalized_slices()
    tasks: list[_Task] = []
    layer_map: list[tuple[ModelSource, int]] = []
    groups = []  # per slice: (base input, other inputs as (source, first layer, where, params)), shared scopes
    for i, s in enumerate(slices):
        base_ref = s.base_model or recipe.base_model
        entries = [(src, f"slices.{i}.sources.{j}" if recipe.slices else f"models.{j}") for j, src in enumerate(s.sources)]
        if recipe.slices is None and base_ref is not None and all(src.model != base_ref for src, _ in entries):
            from .recipe import SliceSource

            entries.append((SliceSource(model=base_ref, layer_range=(0, -1)), "base_model"))
        if recipe.slices is not None and method.needs_base and all(src.model != base_ref for src, _ in entries):
            raise RecipeError(f"slices.{i}: base_model {base_ref!r} must be one of the slice's sources")
        resolved = []
        for src, where in entries:
            source = sources[src.model]
            lo, hi = src.layer_range
            if hi == -1:
                lo, hi = 0, _layer_count(source)
            if hi > _layer_count(source):
                raise InputError(f"{where}.layer_range: {src.model} has {_layer_count(source)} layers, not {hi}")
            resolved.append((source, lo, hi, where, [src.parameters, s.parameters, recipe.parameters]))
        counts = {hi - lo for _, lo, hi, _, _ in resolved}
        if len(counts) > 1:
            detail = ", ".join(f"{sr.label}: {hi - lo}" for sr, lo, hi, _, _ in resolved)
            raise InputError(f"models have different numbers of layers ({detail})")
        base = next((r for r in resolved if r[0].label == base_ref), None) if method.needs_base else None
        others = [r for r in resolved if r is not base]
        groups.append((base, others, [s.parameters, recipe.parameters], resolved[0][2] - resolved[0][1]))
    reference = (groups[0][0] or groups[0][1][0])[0]
    keys = reference.keys()
    outside = [k for k in keys if not _LAYER.search(k)]
    pre, post = _split_outside(outside, reference, keys) if len(slices) > 1 else (outside, [])
    offset = 0
    per_slice = []
    for base, others, shared, count in groups:
        ref_src, ref_lo = (base or others[0])[0], (base or others[0])[1]
        layer_keys = sorted({_with_layer(k, 0) for k in ref_src.keys() if _LAYER.search(k)
                             and int(_LAYER.search(k).group(1)) == ref_lo}, key=lambda k: k)
        per_slice.append((base, others, shared, count, offset, layer_keys))
        layer_map += [(ref_src, ref_lo + i) for i in range(count)]
        offset += count
    first, last = per_slice[0], per_slice[-1]
    for key in pre:
        tasks.append(_task(recipe, key, key, first[0], first[1], first[2], 0.0, None))
    for base, others, shared, count, out_offset, layer_keys in per_slice:
        for i in range(count):
            t = i / (count - 1) if count > 1 else 1.0
            for template in layer_keys:
                tasks.append(_task(recipe, _with_layer(template, out_offset + i), template, base, others, shared, t, i))
    for key in post:
        tasks.append(_task(recipe, key, key, last[0], last[1], last[2], 0.0, None))
    _check_complete(groups)
    return tasks, layer_map, reference


def _task(recipe: Recipe, out_key: str, template: str, base, others, shared: list[dict], t: float,
          layer: Optional[int]) -> _Task:
    """One output tensor: find it in every input, check shapes, resolve the parameters."""
    method = recipe.method

    def locate(entry) -> _Input:
        source, lo, _, where, scopes = entry
        key = template if layer is None else _with_layer(template, lo + layer)
        if key not in source:
            raise InputError(f"{where}: {source.label} has no tensor {key} (needed for {out_key})")
        return _Input(source, key, where, scopes)

    base_in = locate(base) if base is not None else None
    inputs = [locate(o) for o in others]
    ref = base_in or inputs[0]
    shape = ref.source.shape(ref.key)
    for inp in inputs:
        if inp.source.shape(inp.key) != shape:
            raise InputError(f"{inp.where}: tensor {inp.key} has shape {inp.source.shape(inp.key)} in "
                             f"{inp.source.label} but {shape} in {ref.source.label}")
    params: dict = {}
    for p in method.params:
        if p.per_model:
            values = []
            for inp in inputs:
                value = resolve(p.name, p.kind, inp.scopes, inp.key, t)
                values.append(_required(p, value, f"{inp.where}", f"{inp.source.label}, tensor {inp.key}"))
            params[p.name] = values
        else:
            params[p.name] = _required(p, resolve(p.name, p.kind, shared, out_key, t), "parameters", f"tensor {out_key}")
    for name in ("density", "gamma"):
        for value, inp in zip(params.get(name, []), inputs):
            if not 0 <= value <= 1:
                raise InputError(f"{inp.where}.parameters.{name}: {value} for tensor {inp.key}; expected 0 to 1")
    stored = ref.source.dtype(ref.key)
    out_dtype = DTYPES[recipe.out_dtype or recipe.dtype] if (recipe.out_dtype or recipe.dtype) else stored
    if not stored.is_floating_point:
        out_dtype = stored
    return _Task(out_key, shape, out_dtype, base_in, inputs, params)


def _required(param, value, where: str, what: str):
    if value is None:
        if param.default is None:
            raise InputError(f"{where}: parameter {param.name} is not set for {what}")
        return param.default
    return value


def _check_complete(groups) -> None:
    """Every input model must hold the same tensors per layer and outside the layers (one architecture)."""
    def names(source: ModelSource) -> set[str]:
        return {_with_layer(k, 0) if _LAYER.search(k) else k for k in source.keys()}

    entries = [e for base, others, _, _ in groups for e in ([base] if base else []) + others]
    want = names(entries[0][0])
    for source, _, _, where, _ in entries[1:]:
        have = names(source)
        if have != want:
            odd = sorted(have ^ want)[0]
            whose = source.label if odd in have else entries[0][0].label
            raise InputError(f"{where}: {source.label} and {entries[0][0].label} differ in their tensors: "
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
    """Read the inputs of one output tensor and merge them."""
    inputs = ([task.base] if task.base else []) + task.others
    tensors = [inp.source.read(inp.key) for inp in inputs]
    if not tensors[0].is_floating_point():
        return tensors[0]
    if recipe.dtype:
        tensors = [t.to(DTYPES[recipe.dtype]) for t in tensors]
    work = torch.float64 if tensors[0].dtype == torch.float64 else torch.float32
    tensors = [t.to(work) for t in tensors]
    base = tensors[0] if task.base else None
    others = torch.stack(tensors[1:] if task.base else tensors)
    del tensors
    generator = torch.Generator().manual_seed((seed * 1_000_003 + zlib.crc32(task.out_key.encode())) % 2 ** 63)
    out = recipe.method.run(base, others, task.params, generator)
    return out.to(task.out_dtype)


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


def _copy_tokenizer(recipe: Recipe, sources: dict[str, ModelSource], reference: ModelSource, out: Path) -> None:
    source = reference if recipe.tokenizer_source in (None, "base") else sources[recipe.tokenizer_source]
    for name in TOKENIZER_FILES:
        if (source.directory / name).is_file():
            shutil.copyfile(source.directory / name, out / name)
