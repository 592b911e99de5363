"""Run configs from YAML: a file, then `key.sub=value` overrides, then a validated schema.

Run configs are YAML 1.2 as far as numbers go (`1e-3` is a number, not the string PyYAML's
YAML 1.1 makes of it); a key written twice in one mapping is an error. Every mistake is a
`ConfigError` naming the file and line or the override, and the dotted key.
"""
from __future__ import annotations

import copy
import re

import yaml
from pydantic import BaseModel, ValidationError

from .strict import ConfigError, error_key, validation_message


class _Loader(yaml.SafeLoader):
    """PyYAML's SafeLoader with YAML 1.2 numbers (`1e-3` is a float) and duplicate keys refused."""

    def construct_mapping(self, node, deep=False):
        seen: dict = {}
        for key_node, _ in node.value:
            if key_node.tag == "tag:yaml.org,2002:merge":
                continue
            key = self.construct_object(key_node, deep=deep)
            if isinstance(key, (str, int, float, bool)) and key in seen:
                raise yaml.constructor.ConstructorError(
                    None, None, f"key {key!r} appears twice in one mapping (first on line {seen[key]})",
                    key_node.start_mark)
            seen[key] = key_node.start_mark.line + 1
        return super().construct_mapping(node, deep)


_Loader.add_implicit_resolver(
    "tag:yaml.org,2002:float", re.compile(r"^[-+]?(?:[0-9][0-9_]*(?:\.[0-9_]*)?|\.[0-9_]+)[eE][-+]?[0-9]+$"),
    list("-+0123456789."))


def parse_yaml(text: str):
    """YAML text → Python objects, the way run configs and overrides are read (see module docstring)."""
    return yaml.load(text, Loader=_Loader)


def _yaml_problem(e: yaml.YAMLError) -> str:
    return str(getattr(e, "problem", None) or e).splitlines()[0]


def load_config(schema: type[BaseModel], path: str | None, overrides: list[str] = (), base: dict | None = None):
    """YAML file → dict → `key.sub=value` overrides (values parsed as YAML) → validated `schema`.

    Every mistake is a ConfigError naming where: `file:line: dotted.key: problem` or
    `override key=value: problem`.
    """
    from .files import read_text

    data, lines = copy.deepcopy(base or {}), {}  # (overrides must not write into the caller's dict)
    if path is not None:
        text = read_text(path, ConfigError)
        try:
            loaded = parse_yaml(text) or {}
            lines = yaml_lines(text)
        except yaml.YAMLError as e:
            mark = getattr(e, "problem_mark", None)
            where = f"{path}:{mark.line + 1}" if mark else path
            raise ConfigError(f"{where}: invalid YAML: {_yaml_problem(e)}") from None
        if not isinstance(loaded, dict):
            raise ConfigError(f"{path}: the top level must be a mapping of sections")
        data = _deep_merge(data, loaded)
    given = {}
    for item in overrides:
        key, sep, value = item.partition("=")
        key = key.strip()
        if not sep or not key:
            raise ConfigError(f"override {item!r}: expected dotted.key=value")
        if any(not part.strip() for part in key.split(".")):
            raise ConfigError(f"override {item!r}: {key!r} has an empty name between dots")
        try:
            parsed = parse_yaml(value) if value.strip() else None
        except yaml.YAMLError as e:
            raise ConfigError(f"override {item!r}: the value is not valid YAML: {_yaml_problem(e)}") from None
        _set_dotted(data, key, parsed)
        given[key] = item
    try:
        return schema.model_validate(data)
    except ValidationError as e:
        key = error_key(e.errors()[0])
        line = key_line(lines, key)
        item = next((given[k] for k in given if key == k or key.startswith(k + ".")), None)
        if item is not None:
            where = f"override {item!r}"
        else:
            where = f"{path}:{line}" if path and line else (path or "config")
        raise ConfigError(f"{where}: {validation_message(e)}") from None  # (no key: a whole-config check)


def key_line(lines: dict[str, int], key: str) -> int | None:
    """The line of dotted `key` in a YAML file (`lines` from `yaml_lines`), else of its nearest parent."""
    if key in lines:
        return lines[key]
    parents = [k for k in lines if key.startswith(k + ".")]
    return lines[max(parents, key=len)] if parents else None


def yaml_lines(text: str) -> dict[str, int]:
    """Dotted key (list items by index: `models.0.model`) → 1-based line, for a YAML document."""
    import yaml

    return _yaml_lines(yaml.compose(text))


def _yaml_lines(node, prefix: str = "") -> dict[str, int]:
    import yaml

    out = {}
    if isinstance(node, yaml.MappingNode):
        for k, v in node.value:
            key = f"{prefix}{k.value}"
            out[key] = k.start_mark.line + 1
            out.update(_yaml_lines(v, key + "."))
    elif isinstance(node, yaml.SequenceNode):  # list items: models.0.model
        for i, v in enumerate(node.value):
            out[f"{prefix}{i}"] = v.start_mark.line + 1
            out.update(_yaml_lines(v, f"{prefix}{i}."))
    return out


def _deep_merge(a: dict, b: dict) -> dict:
    out = dict(a)
    for k, v in b.items():
        out[k] = _deep_merge(out[k], v) if isinstance(v, dict) and isinstance(out.get(k), dict) else v
    return out


def _set_dotted(data: dict, key: str, value) -> None:
    *parents, last = key.split(".")
    node = data
    for i, p in enumerate(parents):
        if node.get(p) is None:
            node[p] = {}
        node = node[p]
        if not isinstance(node, dict):
            raise ConfigError(f"override {key}: {'.'.join(parents[:i + 1])} is a value, not a section")
    node[last] = value
