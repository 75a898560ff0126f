"""YAML configs validated with pydantic: one loader and one error style for every command.

Class schemas, refine runs and calibration audits all read YAML the same way, and a mistake
in any of them reads the same: ``file.yaml: key 'select.budget': must be > 0``.
"""

from __future__ import annotations

import difflib
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel, ValidationError

from tiles.errors import TrustmapError

_MESSAGES = {
    "greater_than": "must be > {gt}",
    "greater_than_equal": "must be >= {ge}",
    "less_than": "must be < {lt}",
    "less_than_equal": "must be <= {le}",
    "missing": "is required",
}


def read_yaml(path: str | os.PathLike) -> Any:
    """Parse a YAML file; a missing, binary or malformed file is a one-line error."""
    p = Path(path)
    if not p.exists():
        raise TrustmapError("config file not found", p)
    if p.is_dir():
        raise TrustmapError("is a directory, expected a YAML config file", p)
    try:
        text = p.read_text(encoding="utf-8")
    except UnicodeDecodeError:
        raise TrustmapError("not a text YAML file (binary content)", p) from None
    except OSError as exc:
        raise TrustmapError(f"cannot read ({exc.strerror or exc})", p) from None
    return parse_yaml(text, p)


def parse_yaml(text: str, source: str | os.PathLike | None = None) -> Any:
    """Parse YAML text; anything malformed is a one-line error naming ``source``."""
    p = source
    if "\x00" in text:
        raise TrustmapError("not a text YAML file (binary content)", p)
    try:
        return yaml.safe_load(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" at line {mark.line + 1}" if mark is not None else ""
        reason = getattr(exc, "problem", None) or exc.__class__.__name__
        raise TrustmapError(f"not valid YAML{where} ({reason})", p) from None
    except (ValueError, TypeError, OverflowError, RecursionError) as exc:
        # PyYAML's constructors: impossible dates (2001-02-30), unhashable keys, deep nesting
        reason = str(exc).splitlines()[0] if str(exc) else exc.__class__.__name__
        raise TrustmapError(f"not valid YAML ({reason})", p) from None


def format_key(loc: tuple[Any, ...]) -> str:
    """pydantic's error location as a dotted key: ``sweeps.nms_iou[2]``."""
    out = ""
    for part in loc:
        out += f"[{part}]" if isinstance(part, int) else (f".{part}" if out else str(part))
    return out


def validate(model: type[BaseModel], data: Any, source: str | os.PathLike | None, what: str) -> Any:
    """``model.model_validate(data)``, with the first error as one line naming the key."""
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise TrustmapError(
            f"a {what} must be a mapping of keys to values, got {type(data).__name__}", source
        )
    try:
        return model.model_validate(data)
    except ValidationError as exc:
        raise validation_error(exc, model, source) from None


def validation_error(
    exc: ValidationError, model: type[BaseModel], source: str | os.PathLike | None
) -> TrustmapError:
    errors = exc.errors()
    # An unknown key is usually a misspelt known one: report it, not the "missing" it causes.
    err = next((e for e in errors if e["type"] == "extra_forbidden"), errors[0])
    key = format_key(err["loc"])
    msg = _message(err, model)
    return TrustmapError(f"key '{key}': {msg}" if key else msg, source)


def _message(err: Mapping[str, Any], model: type[BaseModel]) -> str:
    kind = err["type"]
    ctx = err.get("ctx") or {}
    if kind in _MESSAGES:
        return _MESSAGES[kind].format(**ctx)
    if kind == "extra_forbidden":
        allowed = _allowed_keys(model, err["loc"][:-1])
        close = difflib.get_close_matches(str(err["loc"][-1]), allowed, n=1)
        hint = f"; did you mean '{close[0]}'?" if close else ""
        return "unknown key (check the spelling)" + (
            f"; allowed here: {', '.join(allowed)}" if allowed else ""
        ) + hint
    if kind == "literal_error":
        return f"must be one of {ctx.get('expected', '?')}, got {err.get('input')!r}"
    if kind == "value_error":
        return str(ctx.get("error", err["msg"]))
    if kind in ("int_type", "int_parsing", "int_from_float"):
        return f"must be a whole number, got {err.get('input')!r}"
    if kind in ("float_type", "float_parsing"):
        return f"must be a number, got {err.get('input')!r}"
    if kind in ("bool_type", "bool_parsing"):
        return f"must be true or false, got {err.get('input')!r}"
    if kind in ("model_type", "dict_type"):
        return "must be a mapping of keys to values"
    if kind in ("string_type", "str_type"):
        return f"must be a text string, got {type(err.get('input')).__name__} {_short(err.get('input'))}"
    if kind in ("list_type", "tuple_type"):
        return f"must be a list, got {type(err.get('input')).__name__}"
    return str(err["msg"]).removeprefix("Value error, ")


def _allowed_keys(model: type[BaseModel], loc: tuple) -> list[str]:
    current: Any = model
    for part in loc:
        if isinstance(part, int):
            args = getattr(current, "__args__", ())
            current = args[0] if args else None
            continue
        field = getattr(current, "model_fields", {}).get(part)
        if field is None:
            return []
        current = field.annotation
    return list(getattr(current, "model_fields", {}))


def _short(value: Any, limit: int = 40) -> str:
    text = repr(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."


def paths_in(model: Any) -> list[Path]:
    """Every filesystem path a validated config holds (for output checks: inputs are never outputs)."""
    found: list[Path] = []

    def walk(value: Any) -> None:
        if isinstance(value, os.PathLike):
            found.append(Path(value))
        elif isinstance(value, BaseModel):
            for name in type(value).model_fields:
                walk(getattr(value, name, None))
        elif isinstance(value, dict):
            for v in value.values():
                walk(v)
        elif isinstance(value, list | tuple | set):
            for v in value:
                walk(v)

    walk(model)
    return found
