"""Whole-model merge recipes in mergekit's YAML format, validated before anything is read.

    merge_method: ties                  # linear | slerp | task_arithmetic | ties | dare_linear | dare_ties
    base_model: smollm2-135m-instruct   #   | breadcrumbs | breadcrumbs_ties
    models:
      - model: runs/a/merged            # a HF dir, a .gguf file, an embedded name,
        parameters: {weight: 1.0, density: 0.5}
      - model: smollm2-135m-instruct+runs/b/adapter   # or BASE+ADAPTER_DIR: the base with a LoRA applied
        parameters: {weight: 1.0, density: 0.5}
    parameters: {normalize: true}
    dtype: float32                      # inputs are rounded to it; out_dtype (default: dtype) is written
    tokenizer_source: base

`slices:` (each with `sources: [{model, layer_range: [a, b]}]`) take layers from several ranges,
as mergekit's do. A parameter value is a number (or boolean), a gradient (a list of numbers
interpolated over the layers of a slice: layer i of L gets t = i / (L − 1)), or a list of
`{filter: SUBSTRING, value: ...}` whose first entry with a filter found in the tensor name wins
(no filter: any tensor). Per-model values override slice-level ones, which override the
recipe's `parameters`. Tensors outside the layers (embeddings, final norm, head) get t = 0.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any, Literal, Optional

from pydantic import Field

from ..files import read_text
from ..strict import ConfigError, StrictConfig
from ..yamlconfig import key_line, load_config, yaml_lines
from .methods import METHODS, Method

DTYPE_NAMES = Literal["float32", "bfloat16", "float16"]


class _Strict(StrictConfig):
    """Strict types and unknown keys refused, like every config class (`lorakit.strict.StrictConfig`)."""


class ModelEntry(_Strict):
    model: str = Field(description="A HF model dir, merged model dir, .gguf file, embedded name, or BASE+ADAPTER_DIR.")
    parameters: dict[str, Any] = Field(default_factory=dict, description="This model's parameters (weight, density...).")


class SliceSource(_Strict):
    model: str
    layer_range: tuple[int, int] = Field(strict=False, description="[first, end) layer indices taken from this model.")
    parameters: dict[str, Any] = Field(default_factory=dict)


class Slice(_Strict):
    sources: list[SliceSource] = Field(min_length=1)
    base_model: Optional[str] = None
    parameters: dict[str, Any] = Field(default_factory=dict)


class Recipe(_Strict):
    """A mergekit merge recipe (the subset lorakit runs; unknown keys are errors)."""

    merge_method: str = Field(description=f"One of {', '.join(METHODS)}.")
    base_model: Optional[str] = Field(None, description="The model task vectors are taken against (SLERP: t=0).")
    models: Optional[list[ModelEntry]] = Field(None, min_length=1)
    slices: Optional[list[Slice]] = Field(None, min_length=1)
    parameters: dict[str, Any] = Field(default_factory=dict, description="Recipe-wide parameters.")
    dtype: Optional[DTYPE_NAMES] = Field(None, description="Inputs are rounded to this dtype before merging.")
    out_dtype: Optional[DTYPE_NAMES] = Field(None, description="dtype of the written tensors (default: dtype).")
    tokenizer_source: Optional[str] = Field(None, description="'base' (default) or a model whose tokenizer to copy.")

    @property
    def method(self) -> Method:
        return METHODS[self.merge_method]

    def normalized_slices(self) -> list[Slice]:
        """The recipe as slices: `models:` becomes one slice over every layer (layer_range (0, -1))."""
        if self.slices is not None:
            return self.slices
        return [Slice(sources=[SliceSource(model=m.model, layer_range=(0, -1), parameters=m.parameters)
                               for m in self.models])]


class RecipeError(ConfigError):
    """A recipe that cannot run: names the file, line and key."""


def load_recipe(path: str | Path) -> Recipe:
    """Read and check a recipe: structure (pydantic), then methods, parameter names and kinds."""
    recipe = load_config(Recipe, str(path))
    lines = yaml_lines(read_text(path, RecipeError))

    def fail(key: str, msg: str):
        line = key_line(lines, key)
        raise RecipeError(f"{path}:{line}: {key}: {msg}" if line else f"{path}: {key}: {msg}")

    check_recipe(recipe, fail)
    return recipe


def check_recipe(recipe: Recipe, fail) -> None:
    """Call `fail(dotted_key, message)` for the first problem a recipe has (fail raises)."""
    if recipe.merge_method not in METHODS:
        fail("merge_method", f"unknown method {recipe.merge_method!r}; expected one of {', '.join(METHODS)}")
    if (recipe.models is None) == (recipe.slices is None):
        fail("models", "give exactly one of models: or slices:")
    method = recipe.method
    _check_params(recipe.parameters, "parameters", method, recipe.merge_method, fail, per_model=False)
    if recipe.tokenizer_source == "union":
        fail("tokenizer_source", "'union' (merged vocabularies) is not supported; use 'base' or a model")
    for i, s in enumerate(recipe.normalized_slices()):
        where = f"slices.{i}" if recipe.slices is not None else "models"
        base = s.base_model or recipe.base_model
        if recipe.slices is not None:
            _check_params(s.parameters, f"{where}.parameters", method, recipe.merge_method, fail, per_model=False)
        seen: dict[str, int] = {}
        for j, src in enumerate(s.sources):
            key = f"{where}.sources.{j}" if recipe.slices is not None else f"models.{j}"
            if src.model in seen:
                fail(f"{key}.model", f"{src.model!r} is listed twice (entry {seen[src.model]} and {j})")
            seen[src.model] = j
            a, b = src.layer_range
            if recipe.slices is not None and not 0 <= a < b:
                fail(f"{key}.layer_range", f"[{a}, {b}]: expected 0 <= first < end")
            _check_params(src.parameters, f"{key}.parameters", method, recipe.merge_method, fail, per_model=True)
        if recipe.slices is not None:
            lengths = {src.layer_range[1] - src.layer_range[0] for src in s.sources}
            if len(lengths) > 1:
                fail(f"{where}.sources", f"layer ranges of different lengths {sorted(lengths)}")
        others = [src for src in s.sources if src.model != base]
        if method.needs_base and base is None:
            fail("base_model", f"{recipe.merge_method} needs a base_model")
        if recipe.slices is not None and method.needs_base and base not in seen:
            fail(f"{where}.sources", f"the base_model {base!r} must be one of the slice's sources")
        if not method.needs_base and base is not None and base not in seen:
            fail("base_model", f"{recipe.merge_method} averages its models and has no base; list {base!r} "
                 "under models with a weight, or drop base_model")
        if not others:
            fail(where, f"{recipe.merge_method} needs at least one model besides the base")
        if method.max_models is not None and len(others) > method.max_models:
            fail(where, f"{recipe.merge_method} merges the base with exactly {method.max_models} other model "
                 f"(got {len(others)}: {', '.join(o.model for o in others)})")


def _check_params(params: dict, where: str, method: Method, name: str, fail, per_model: bool) -> None:
    known = {p.name: p for p in method.params}
    for key, setting in params.items():
        if key not in known:
            fail(f"{where}.{key}", f"unknown parameter for {name} (known: {', '.join(sorted(known))})")
        spec = known[key]
        if per_model and not spec.per_model:
            fail(f"{where}.{key}", f"{key} applies to the whole merge; set it under the recipe's (or slice's) parameters")
        _check_setting(setting, f"{where}.{key}", spec.kind, fail)


def _check_setting(setting, where: str, kind: type, fail) -> None:
    """A scalar, a gradient (list of scalars) or a list of {filter, value} entries, of `kind`."""
    if isinstance(setting, list):
        if not setting:
            fail(where, "empty list")
        if all(isinstance(e, dict) for e in setting):
            for i, entry in enumerate(setting):
                extra = set(entry) - {"filter", "value"}
                if extra or "value" not in entry:
                    fail(f"{where}.{i}", "expected {filter: SUBSTRING, value: ...}" +
                         (f"; unknown keys {sorted(extra)}" if extra else "; 'value' is missing"))
                if entry.get("filter") is not None and not isinstance(entry["filter"], str):
                    fail(f"{where}.{i}.filter", "expected a string")
                if isinstance(entry["value"], dict) or (isinstance(entry["value"], list) and
                                                         any(isinstance(v, (dict, list)) for v in entry["value"])):
                    fail(f"{where}.{i}.value", "expected a value or a gradient (list of values)")
                _check_setting(entry["value"], f"{where}.{i}.value", kind, fail)
            return
        for i, value in enumerate(setting):
            _check_scalar(value, f"{where}.{i}", kind, fail)
        return
    _check_scalar(setting, where, kind, fail)


def _check_scalar(value, where: str, kind: type, fail) -> None:
    if kind is bool:
        if not isinstance(value, bool):
            fail(where, f"expected true or false, got {value!r}")
        return
    if isinstance(value, bool) or as_float(value) is None:
        fail(where, f"expected a number, got {value!r}")


def as_float(value) -> Optional[float]:
    """A number, or a string YAML left unparsed such as '1e-3'; None if neither."""
    if isinstance(value, bool):
        return None
    if isinstance(value, (int, float)):
        return float(value)
    if isinstance(value, str):
        try:
            return float(value)
        except ValueError:
            return None
    return None


def evaluate(setting, tensor_name: str, t: float, kind: type):
    """The value of one (checked) setting for `tensor_name` at layer position `t`; None if no filter matched."""
    if isinstance(setting, list) and setting and all(isinstance(e, dict) for e in setting):
        for entry in setting:
            f = entry.get("filter")
            if f is None or f == "*" or f in tensor_name:
                return evaluate(entry["value"], tensor_name, t, kind)
        return None
    if isinstance(setting, list):
        if kind is bool:
            return setting[int(t * (len(setting) - 1))]
        pos = t * (len(setting) - 1)
        i0 = int(pos)
        i1 = min(len(setting) - 1, i0 + 1)
        frac = pos - i0
        return (1 - frac) * as_float(setting[i0]) + frac * as_float(setting[i1])
    return setting if kind is bool else as_float(setting)


def resolve(name: str, kind: type, scopes: list[dict], tensor_name: str, t: float):
    """The first value any of `scopes` (highest precedence first) gives parameter `name`; None if none."""
    for scope in scopes:
        if name in scope:
            value = evaluate(scope[name], tensor_name, t, kind)
            if value is not None:
                return value
    return None
