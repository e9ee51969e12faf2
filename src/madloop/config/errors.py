"""Config errors in the config's own words: one line per problem, naming the field, the value and
the fix (``loop.synthetic_size: must be >= 1, got -5``)."""

from __future__ import annotations

import difflib
import re
import typing
from collections.abc import Iterable, Mapping
from typing import Any

from pydantic import BaseModel, ValidationError


class ConfigError(ValueError):
    """An invalid config; ``problems`` holds one line per problem."""

    def __init__(self, problems: list[str]) -> None:
        self.problems = problems
        super().__init__("\n".join(problems))


def suggest(key: str, options: Iterable[str]) -> str:
    match = difflib.get_close_matches(key, list(options), n=1, cutoff=0.5)
    return f"; did you mean '{match[0]}'?" if match else ""


def check_choice(value: str, choices: Iterable[str], what: str) -> str:
    """``value`` if it is one of ``choices``, else ValueError ``unknown {what} 'x'; did you mean
    'y'? (valid: a, b)`` (for a field validator: pydantic adds the field's name)."""
    choices = list(choices)
    if value not in choices:
        raise ValueError(
            f"unknown {what} {value!r}{suggest(value, choices)} (valid: {', '.join(choices)})"
        )
    return value


_PLAIN = {  # pydantic error type -> the plain phrase we print
    "int_parsing": "must be an integer",
    "int_type": "must be an integer",
    "int_from_float": "must be an integer",
    "float_parsing": "must be a number",
    "float_type": "must be a number",
    "finite_number": "must be finite",
    "bool_parsing": "must be true or false",
    "bool_type": "must be true or false",
    "string_type": "must be a string",
    "list_type": "must be a list",
    "dict_type": "must be a table",
    "model_type": "must be a table",
    "model_attributes_type": "must be a table",
    "missing": "required",
    "string_too_short": "must not be empty",
    "list_type_mismatch": "must be a list",
    "tuple_type": "must be a list",
    "set_type": "must be a list",
    "none_required": "must not be given",
    "int_too_big": "must be an integer of at most 64 bits",
}
_BOUNDS = {"ge": ">=", "gt": ">", "le": "<=", "lt": "<"}


def phrase(e: Mapping[str, Any]) -> str:
    """One pydantic error as 'must be ...' in the config's own terms."""
    ctx = e.get("ctx") or {}
    if e["type"] in _PLAIN:
        return _PLAIN[e["type"]]
    for key, op in _BOUNDS.items():
        if key in ctx and e["type"].startswith(("greater", "less")):
            return f"must be {op} {ctx[key]}"
    if e["type"] == "literal_error":
        return f"must be {ctx.get('expected', '')}".rstrip()
    msg = str(e["msg"]).removeprefix("Value error, ")
    return msg[:1].lower() + msg[1:] if msg[:1].isupper() and not msg[1:2].isupper() else msg


def format_errors(prefix: str, err: ValidationError, cls: type[BaseModel]) -> list[str]:
    """One line per field: ``section.field: must be ..., got VALUE``. The alternatives of a union
    (``int | list[int]``) are joined into one line."""
    found: dict[str, list[str]] = {}
    shown_for: dict[str, str] = {}
    lines: list[str] = []
    for e in err.errors():
        loc = field_path(e["loc"])
        where = f"{prefix}{'' if loc.startswith('[') else '.'}{loc}" if loc else prefix
        if e["type"] == "extra_forbidden":
            key = str(e["loc"][-1])
            owner = owner_of(cls, e["loc"][:-1])  # a nested table names its own keys
            lines.append(
                f"{where}: unknown key{suggest(key, owner.model_fields)} "
                f"(valid: {', '.join(sorted(owner.model_fields))})"
            )
            continue
        msg = phrase(e)
        value = e.get("input")
        shown = "" if isinstance(value, dict) or e["type"] == "missing" else f", got {value!r}"
        if msg.startswith(tuple(f"{f}:" for f in cls.model_fields)):
            where = f"{prefix}.{msg.split(':', 1)[0]}"
            msg = msg.split(":", 1)[1].strip()
            shown = ""
        if where not in found:
            found[where] = []
            lines.append(where)  # placeholder, filled below in first-seen order
        if msg not in found[where]:
            found[where].append(msg)
        shown_for.setdefault(where, shown)
    out = []
    for line in lines:
        if line not in found:
            out.append(line)
            continue
        msgs = found.pop(line)
        if len(msgs) > 1 and all(m.startswith("must be ") for m in msgs):
            msg = "must be " + " or ".join(m.removeprefix("must be ") for m in msgs)
        else:
            msg = "; ".join(msgs)
        out.append(f"{line}: {msg}{shown_for[line]}")
    return sorted(set(out), key=out.index)


#: the parts of a pydantic error location that name a type, not a field: the members of a union
#: (``int``, ``list[int]``, ``literal['a']``, ``function-after[...]``, ``LogisticAdoption``)
_TYPE_PART = re.compile(
    r"(int|float|str|bool|none|bytes|dict|list|any)"
    r"|[a-z][a-z-]*\[.*\]"
    r"|(?:[A-Z][a-z0-9]+){2,}"
)


def field_path(loc: Iterable[Any]) -> str:
    """A pydantic error location as the config names it: ``lineages[0].name``, ``mean[2]``
    (list items as ``[i]``, union members and validator names left out)."""
    out = ""
    for part in loc:
        if isinstance(part, int):
            out += f"[{part}]"
        elif not _TYPE_PART.fullmatch(str(part)):
            out += f".{part}" if out else str(part)
    return out


def owner_of(cls: type[BaseModel], loc: tuple) -> type[BaseModel]:
    """The model class that holds the field at ``loc`` (for nested tables; else ``cls``)."""
    for part in loc:
        field = cls.model_fields.get(str(part))
        ann = getattr(field, "annotation", None)
        for option in (ann, *typing.get_args(ann)):  # X, list[X], X | None
            if isinstance(option, type) and issubclass(option, BaseModel):
                cls = option
                break
    return cls
