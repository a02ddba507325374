"""One line per validation error of ``params.yaml``: the key where the file has it, what is
expected there, and a "did you mean" for an unknown key or name."""

from __future__ import annotations

import re
import typing
from typing import Annotated, Any, Literal

from pydantic import (
    BaseModel,
    ValidationError,
)

from pipeline.study.priors import PRIOR_TYPES, prior_types_text
from pipeline.study.schema import (
    Located,
    is_int_field,
    is_union,
    short_repr,
)
from pipeline.study.study_config import StudyConfig
from pipeline.util.errors import did_you_mean


def one_line(text: str) -> str:
    return " ".join(part.strip() for part in text.splitlines() if part.strip())


# pydantic error types -> what the message says is expected (numbers get their bound).
_EXPECTED = {
    "int_parsing": "an integer",
    "int_type": "an integer",
    "int_from_float": "an integer",
    "float_parsing": "a number",
    "float_type": "a number",
    "finite_number": "a finite number",
    "bool_parsing": "true or false",
    "bool_type": "true or false",
    "string_type": "a string",
    "string_too_short": "a non-empty string",
    "list_type": "a list (e.g. [1, 5])",
    "dict_type": "a mapping of keys",
    "model_type": "a mapping of keys",
    "model_attributes_type": "a mapping of keys",
}
_BOUNDS = {
    "greater_than_equal": ("ge", ">="),
    "greater_than": ("gt", ">"),
    "less_than_equal": ("le", "<="),
    "less_than": ("lt", "<"),
}


# how pydantic labels the member of a union (``float | list[float]``) that an error came from:
# a part of the error's location that is no key of the file
_UNION_MEMBER = re.compile(r"(constrained-)?(float|int|str|bool)|(list|dict|tuple)\[.*\]")


def _file_loc(loc: tuple[Any, ...], raw: Any) -> tuple[Any, ...]:
    """``loc`` without pydantic's union-member labels, where the file has no such key."""
    out: list[Any] = []
    node = raw
    for part in loc:
        has = isinstance(node, dict) and part in node
        if not has and isinstance(part, str) and _UNION_MEMBER.fullmatch(part):
            continue
        out.append(part)
        try:
            node = node[part]
        except (KeyError, IndexError, TypeError):
            node = None
    return tuple(out)


def describe_error(err: ValidationError, raw: Any) -> str:
    e = _first_error(err)
    loc = _file_loc(tuple(e.get("loc", ())), raw)
    typ = e.get("type", "")
    ctx = e.get("ctx") or {}
    inner = ctx.get("error")
    if isinstance(inner, Located):
        return f"{loc_text(loc + tuple(inner.loc))}: {inner.message}"
    if len(loc) >= 2 and loc[-1] == "[key]":  # a mapping key of the wrong type (priors: {1: ...})
        key = loc[-2]
        kinds = {bool: "a boolean", int: "an integer", float: "a number", type(None): "null"}
        kind = kinds.get(type(key), type(key).__name__)
        return (
            f"{loc_text(loc[:-2])}: key {short_repr(key)} is {kind}, not a name (quote it: '{key}')"
        )
    if typ == "extra_forbidden":
        known = _known_keys(StudyConfig, loc[:-1], raw)
        return f"{loc_text(loc)}: " + did_you_mean("key", str(loc[-1]), known, show_name=False)
    got = e.get("input")
    if typ == "union_tag_invalid":
        tags = [t.strip(" '") for t in str(ctx.get("expected_tags", "")).split(",")]
        tag = _tag_value(raw, loc)
        if not isinstance(tag, str):
            return f"{loc_text(loc)}.type: expected {prior_types_text()}, got {short_repr(tag)}"
        return f"{loc_text(loc)}.type: " + did_you_mean("prior type", tag, tags)
    if typ == "union_tag_not_found":
        return f"{loc_text(loc)}: missing key 'type' (expected {prior_types_text()})"
    if typ == "missing":
        return f"{loc_text(loc)}: missing required key"
    if typ == "literal_error":
        options = _literal_options(_annotation_at(loc, raw))
        if isinstance(got, str) and options:
            return f"{loc_text(loc)}: " + did_you_mean(_what(loc), got, options)
        if options:
            listed = ", ".join(repr(o) for o in options)
            return f"{loc_text(loc)}: expected one of {listed}, got {short_repr(got)}"
    if typ in _BOUNDS:
        key, op = _BOUNDS[typ]
        kind = "an integer" if is_int_field(_annotation_at(loc, raw)) else "a number"
        bound = ctx.get(key)
        bound = f"{bound:g}" if isinstance(bound, float) else bound
        return f"{loc_text(loc)}: expected {kind} {op} {bound}, got {short_repr(got)}"
    if typ == "too_short":
        n = ctx.get("min_length", 1)
        what = "a non-empty list" if n == 1 else f"a list of at least {n} items"
        if isinstance(got, dict):
            what = "a non-empty mapping" if n == 1 else f"a mapping of at least {n} entries"
        return f"{loc_text(loc)}: expected {what}, got {short_repr(got)}"
    if typ in _EXPECTED:
        return f"{loc_text(loc)}: expected {_EXPECTED[typ]}, got {short_repr(got)}"
    message = str(e.get("msg") or "invalid value").removeprefix("Value error, ")
    return f"{loc_text(loc)}: {message[:1].lower()}{message[1:]}, got {short_repr(got)}"


def _tag_value(raw: Any, loc: tuple[Any, ...]) -> Any:
    """The ``type:`` value written at ``loc`` (pydantic's error context only has its str())."""
    node = raw
    for part in loc:
        try:
            node = node[part]
        except (KeyError, IndexError, TypeError):
            return None
    return node.get("type") if isinstance(node, dict) else None


def _first_error(err: ValidationError) -> dict[str, Any]:
    errors = err.errors()
    # Prefer the most specific error (deepest location) so unions report their real cause; at
    # equal depth an unknown key first: a typo also makes the intended key "missing".
    return max(errors, key=lambda e: (len(e.get("loc", ())), e.get("type") == "extra_forbidden"))


def _known_keys(model: type[BaseModel], loc: tuple[Any, ...], raw: Any) -> list[str]:
    """Field names of the model found at ``loc``."""
    ann = _resolve(_walk(model, loc, raw), None)
    if isinstance(ann, type) and issubclass(ann, BaseModel):
        return list(ann.model_fields)
    return []


def _annotation_at(loc: tuple[Any, ...], raw: Any) -> Any:
    return _walk(StudyConfig, loc, raw)


def _walk(model: type[BaseModel], loc: tuple[Any, ...], raw: Any) -> Any:
    """The annotation found at ``loc`` (None if the path leaves the schema): walks models,
    lists, dicts and the priors' discriminated union, whose tag pydantic inserts into the
    location."""
    ann: Any = model
    node = raw
    for part in loc:
        if is_union(ann) and isinstance(node, dict) and part == node.get("type"):
            ann = _resolve(ann, node)  # the discriminator tag: not a key of the file
            continue
        ann = _resolve(ann, node)
        origin = typing.get_origin(ann)
        if isinstance(ann, type) and issubclass(ann, BaseModel):
            if part not in ann.model_fields:
                return None
            ann = ann.model_fields[part].annotation
            node = node.get(part) if isinstance(node, dict) else None
        elif origin is list:
            ann = typing.get_args(ann)[0]
            ok = isinstance(node, list) and isinstance(part, int) and 0 <= part < len(node)
            node = node[part] if ok else None
        elif origin is dict:
            ann = typing.get_args(ann)[1]
            node = node.get(part) if isinstance(node, dict) else None
        else:
            return None
    return _resolve(ann, node)


def _literal_options(ann: Any) -> list[Any]:
    ann = _resolve(ann, None)
    while typing.get_origin(ann) is Annotated:
        ann = typing.get_args(ann)[0]
    if typing.get_origin(ann) is Literal:
        return list(typing.get_args(ann))
    return []


def _what(loc: tuple[Any, ...]) -> str:
    """What a value at ``loc`` names: ``sweep.estimators[0]`` -> 'estimator'."""
    names = [p for p in loc if isinstance(p, str)]
    if not names:
        return "value"
    name = names[-1]
    if name == "kind":
        return "degradation kind"
    if isinstance(loc[-1], int) and name.endswith("s"):
        name = name[:-1]
    return name.replace("_", " ")


def _resolve(ann: Any, node: Any) -> Any:
    """Strip Annotated/Optional; pick the union member a ``type:`` tag names."""
    while typing.get_origin(ann) is Annotated:
        ann = typing.get_args(ann)[0]
    if not is_union(ann):
        return ann
    members = [a for a in typing.get_args(ann) if a is not type(None)]
    models = [a for a in members if isinstance(a, type) and issubclass(a, BaseModel)]
    if isinstance(node, dict) and "type" in node:
        for m in models:
            tag = m.model_fields.get("type")
            if tag is not None and node["type"] in typing.get_args(tag.annotation):
                return m
    if len(members) == 1:
        return _resolve(members[0], node)
    return models[0] if len(models) == 1 else ann


def loc_text(loc: tuple[Any, ...]) -> str:
    if len(loc) > 2 and loc[0] == "priors" and loc[2] in PRIOR_TYPES:
        loc = loc[:2] + loc[3:]  # pydantic's discriminator tag, not a key of the file
    out = ""
    for part in loc:
        if isinstance(part, int):
            out += f"[{part}]"
            continue
        text = str(part)
        if not re.fullmatch(r"[\w.-]+", text):
            text = repr(text)  # a key with spaces, quotes or newlines: show it unambiguously
        out += f".{text}" if out else text
    return out or "(top level)"
