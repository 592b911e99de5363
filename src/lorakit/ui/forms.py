"""The "start a run" form: the run schema as fields, and validation with one error per field.

The form is generated from `RunConfig` itself (sections, types, defaults, descriptions), so a
field added to the schema appears on the page without a change here. Each field's text is read
as YAML, exactly like a `lorakit train ... key=value` override, and the whole config is validated
by the same pydantic schema as `lorakit train`; every error is reported beside its field.

Paths a launched config names (data files, a local model, or any string value that is an existing
path) must lie inside the runs or data directories: a page reachable over the network cannot make
the trainer read arbitrary files.
"""
from __future__ import annotations

import re
import types
from pathlib import Path
from typing import Any, Literal, Optional, Union, get_args, get_origin

import yaml
from pydantic import BaseModel, ValidationError

from ..data.prefixes import parse_suite
from ..errors import InputError
from ..yamlconfig import _set_dotted, parse_yaml
from .runs import flatten

RUN_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}")
PATH_FIELDS = ("data.train", "data.eval", "eval.suites", "model.name", "data.replay.file")
"""Fields that name files: checked against the allowed directories even when the file does not exist."""


def schema_fields(schema: type[BaseModel]) -> list[dict]:
    """Sections of the form: `[{"name": "" | section, "description", "fields": [field, ...]}]`.

    A field: `key` (dotted), `kind` (choice | boolean | integer | number | text | yaml), `choices`,
    `nullable`, `required`, `default` (as the form shows it), `description`."""
    top = {"name": "", "description": "", "fields": []}
    sections = [top]
    for name, info in schema.model_fields.items():
        nested = _model_type(info.annotation)
        if nested is not None:
            sections.append({"name": name, "description": info.description or "",
                             "fields": [_field(f"{name}.{k}", i) for k, i in nested.model_fields.items()
                                        if _model_type(i.annotation) is None]})
        elif name != "output_dir":  # the run's name sets it (inside the runs directory)
            top["fields"].append(_field(name, info))
    return sections


def method_sections(schema: type[BaseModel]) -> list[str]:
    """Sections that belong to one method (their name is a choice of `method`): the form shows only
    the chosen method's."""
    choices = _choices(schema.model_fields["method"].annotation) if "method" in schema.model_fields else []
    return [name for name in schema.model_fields if name in choices]


def _field(key: str, info) -> dict:
    annotation = info.annotation
    args = [a for a in _union_args(annotation) if a is not type(None)]
    nullable = len(args) < len(_union_args(annotation))
    kind, choices = "yaml", None
    if len(args) == 1:
        only = args[0]
        if get_origin(only) is Literal:
            kind, choices = "choice", [c for c in get_args(only)]
        elif only is bool:
            kind = "boolean"
        elif only is int:
            kind = "integer"
        elif only is float:
            kind = "number"
        elif only is str:
            kind = "text"
    required = info.is_required()
    default = None if required else info.get_default(call_default_factory=True)
    return {"key": key, "kind": kind, "choices": choices, "nullable": nullable, "required": required,
            "default": default, "description": info.description or ""}


def parse_values(values: dict[str, Any]) -> tuple[dict, dict[str, str]]:
    """Form values (dotted key → text, bool or None) → a nested config dict, and parse errors by key.
    Text is read as YAML (as a command-line override is); an empty text leaves the key at its default."""
    data, errors = {}, {}
    for key, raw in values.items():
        if not isinstance(key, str) or not re.fullmatch(r"[A-Za-z_][\w]*(\.[A-Za-z_][\w]*)*", key):
            errors[str(key)] = "not a config key"
            continue
        if isinstance(raw, str):
            if not raw.strip():
                continue
            try:
                raw = parse_yaml(raw)  # as command-line overrides: YAML 1.2 numbers (1e-2 is a float)
            except yaml.YAMLError as e:
                errors[key] = f"not valid YAML: {getattr(e, 'problem', None) or e}"
                continue
        _set_dotted(data, key, raw)
    return data, errors


def validate(schema: type[BaseModel], data: dict) -> tuple[Optional[BaseModel], dict[str, str], list[str]]:
    """`(config or None, {dotted key: message}, [messages not tied to one field])`: every error pydantic
    finds, each placed on the deepest field of the schema its location names."""
    try:
        return schema.model_validate(data), {}, []
    except ValidationError as e:
        errors, general = {}, []
        known = {f["key"] for s in schema_fields(schema) for f in s["fields"]} | set(schema.model_fields)
        for err in e.errors():
            message = "unknown key" if err["type"] == "extra_forbidden" else err["msg"].removeprefix("Value error, ")
            loc = [str(p) for p in err["loc"]]
            key = next((".".join(loc[:n]) for n in range(len(loc), 0, -1) if ".".join(loc[:n]) in known), None)
            if err["type"] == "extra_forbidden":
                key = ".".join(loc)
            section = _model_type(schema.model_fields[key].annotation) if key in schema.model_fields else None
            if err["type"] == "missing" and section is not None:  # a missing section: its required fields
                for name, info in section.model_fields.items():
                    if info.is_required():
                        errors.setdefault(f"{key}.{name}", message)
                continue
            if key is None:  # a whole-config check: its message starts with the key it is about, if any
                named = re.match(r"`?([a-z_]+(?:\.[a-z_]+)*)`?:", message)
                key = named.group(1) if named and named.group(1) in known else None
            if key is None:
                general.append(message)
            else:
                errors.setdefault(key, message)
        return None, errors, general


class PathPolicy:
    """Allowed directories for the files a launched config names (runs + data directories)."""

    def __init__(self, allowed: list[Path], embedded_models: tuple[str, ...] = ()):
        self.allowed = [Path(p).expanduser().resolve() for p in allowed]
        self.embedded = {m.lower() for m in embedded_models}

    def inside(self, value: str) -> bool:
        path = Path(value).expanduser().resolve()
        return any(path.is_relative_to(root) for root in self.allowed)

    def check(self, config: dict) -> dict[str, str]:
        """Errors by dotted key for path values outside the allowed directories."""
        where = ", ".join(str(p) for p in self.allowed) or "(none)"
        errors = {}
        for key, value in _flatten_lists(flatten(config)).items():
            for item in value if isinstance(value, list) else [value]:
                if key == "eval.suites" and isinstance(item, str):
                    try:
                        item = parse_suite(item, key).source  # `TASK=FILE`: the file
                    except InputError as e:
                        errors[key] = str(e)
                        continue
                if not isinstance(item, str) or not item or item.startswith("bundled:"):
                    continue
                if key == "model.name" and item.lower() in self.embedded:
                    continue
                looks_like_path = re.sub(r"\.\d+\.file$", "", key) in PATH_FIELDS or _exists(item)
                if looks_like_path and not self.inside(item):
                    errors[key] = f"{item}: outside the directories this page may read ({where})"
        return errors


def _flatten_lists(flat: dict[str, Any]) -> dict[str, Any]:
    """Mappings inside list values (`data.train: [{file: ...}, ...]`) flattened too: `data.train.0.file`."""
    out = {}
    for key, value in flat.items():
        if isinstance(value, list) and any(isinstance(v, dict) for v in value):
            for i, v in enumerate(value):
                out.update(_flatten_lists(flatten(v, f"{key}.{i}.")) if isinstance(v, dict) else {f"{key}.{i}": v})
        else:
            out[key] = value
    return out


def _exists(value: str) -> bool:
    """An existing path written as one (with a separator or a file extension): bare words such as
    `layers` or `q_proj` are names, even if the working directory happens to hold such a file."""
    if len(value) > 4096 or "\0" in value or not ("/" in value or re.search(r"\.[A-Za-z0-9]{2,8}$", value)):
        return False
    try:
        return Path(value).expanduser().exists()
    except OSError:
        return False


def _model_type(annotation) -> Optional[type[BaseModel]]:
    return annotation if isinstance(annotation, type) and issubclass(annotation, BaseModel) else None


def _union_args(annotation) -> tuple:
    if get_origin(annotation) in (Union, types.UnionType):
        return get_args(annotation)
    return (annotation,)


def _choices(annotation) -> list:
    return [c for a in _union_args(annotation) if get_origin(a) is Literal for c in get_args(a)]


def yaml_text(value: Any) -> str:
    """A value as the form's text box shows it (YAML flow style, one line)."""
    if value is None:
        return ""
    if isinstance(value, str):
        return value if parse_yaml(value) == value else yaml.safe_dump(value, default_flow_style=True).strip()
    return yaml.safe_dump(value, default_flow_style=True, width=10**6).strip().removesuffix("\n...").strip()

