"""The strict base of every config class, and pydantic's errors as one line.

Every config class (the adapter configs in `config.py`, the run config's sections, merge recipes)
derives from `StrictConfig`: unknown fields, values of the wrong type (`r: true`, `r: "8"`,
`lr: fast`) and non-finite numbers are errors, also in Python code, where they raise `ConfigError`
naming the class, field and value.
"""
from __future__ import annotations

import re
from typing import Any

from pydantic import BaseModel, ConfigDict, ValidationError

from .errors import InputError


class ConfigError(InputError):
    """A config file, override or config object that does not validate: names the file, line and dotted key."""


_TYPE_TAGS = {"str", "int", "float", "bool", "list", "dict", "none"}


def error_key(err: dict) -> str:
    """The dotted key of one pydantic error, without the union-branch tags pydantic puts in `loc`
    (`target_modules.list[str].0` -> `target_modules.0`)."""
    parts = [p for p in err["loc"] if not (isinstance(p, str) and (p in _TYPE_TAGS or any(c in p for c in "[]-")))]
    return ".".join(map(str, parts))


def validation_message(e: ValidationError) -> str:
    """One line for pydantic's first error: `dotted.key: what is wrong (got VALUE)`, and how many more."""
    errors = e.errors()
    err = errors[0]
    key = error_key(err)
    msg = "unknown key" if err["type"] == "extra_forbidden" else err["msg"].removeprefix("Value error, ")
    value = err.get("input")
    if err["type"] != "extra_forbidden" and isinstance(value, (bool, int, float, str, type(None))) \
            and len(repr(value)) <= 60 and repr(value) not in msg:
        msg += f" (got {value!r})"
    others = len({error_key(x) for x in errors[1:]} - {key})  # (a union's branches are one mistake)
    more = f" (and {others} more)" if others else ""
    return f"{key + ': ' if key else ''}{msg}{more}"


class StrictConfig(BaseModel):
    """Base of every config class: extra fields, wrong types and inf/nan are errors; in Python code they
    raise `ConfigError` ("LoraConfig: r: Input should be a valid integer (got True)")."""

    model_config = ConfigDict(extra="forbid", validate_assignment=True, strict=True, allow_inf_nan=False)

    def __init__(self, **data: Any):
        try:
            super().__init__(**data)
        except ValidationError as e:
            raise ConfigError(f"{type(self).__name__}: {validation_message(e)}") from None

    __init__.__pydantic_base_init__ = True  # nested validation keeps pydantic's errors (with their dotted keys)

    def __setattr__(self, name: str, value: Any):
        try:
            super().__setattr__(name, value)
        except ValidationError as e:
            raise ConfigError(f"{type(self).__name__}: {validation_message(e)}") from None


def check_regex(pattern: str) -> str:
    try:
        re.compile(pattern)
    except re.error as e:
        raise ValueError(f"{pattern!r} is not a valid regex ({e})") from None
    return pattern
