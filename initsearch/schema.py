"""Tell the first schema error of a protocol or space file as the one line the CLI prints.

Both files are checked by pydantic models, but a user reads YAML, not a model: pydantic's own
report is several lines per error and names union members and tags the file never mentions.
:func:`validate` turns the first error into a :class:`~initsearch.errors.UsageError` such as
``protocol x.yaml: seeds.0 must be int, not 'a'`` -- the key path dotted as in the file, what
is expected, the value found. "What is expected" is the ``description`` of the innermost field
on the path that has one (so a model words its own expectations, e.g. ``two numbers in [0, 1)``),
else a phrase for the error's type: the type's name, or the broken bound.
"""
from __future__ import annotations

from dataclasses import dataclass
from types import NoneType, UnionType
from typing import Annotated, Any, Literal, TypeVar, Union, get_args, get_origin

from pydantic import BaseModel, ConfigDict, ValidationError
from pydantic.fields import FieldInfo
from pydantic_core import ErrorDetails, PydanticCustomError

from initsearch.errors import UsageError

M = TypeVar("M", bound=BaseModel)
YAML_HINT = " (YAML reads 1.0e4 as text: write 1.0e+4)"
_BOUNDS = {"greater_than": "> {gt}", "greater_than_equal": ">= {ge}", "less_than": "< {lt}",
           "less_than_equal": "<= {le}"}


class StrictModel(BaseModel):
    """A file section: no unknown keys, no coercion (``true`` is no number, ``1`` no boolean,
    ``"1.0e4"`` no float) -- except that an int is a valid float."""

    model_config = ConfigDict(extra="forbid", strict=True)


def validate(model: type[M], data: Any, what: str) -> M:
    """``data`` validated as ``model``, or a one-line UsageError starting ``<what>: ``."""
    try:
        return model.model_validate(data)
    except ValidationError as exc:
        raise UsageError(f"{what}: {_explain(model, data, exc.errors())}") from None


def refuse(text: str) -> PydanticCustomError:
    """The error for a validator to raise: ``text`` follows the key path in the line
    (``must be > 0, not -1.0``, ``needs lr``)."""
    return PydanticCustomError("refused", "{text}", {"text": text})


@dataclass(frozen=True)
class _Step:
    """One key along an error's location: the path so far, its annotation, the input there."""

    path: str
    annotation: Any
    value: Any


def _explain(model: type[BaseModel], data: Any, errors: list[ErrorDetails]) -> str:
    err = errors[0]
    kind, loc = err["type"], err["loc"]
    steps, holder = _walk(model, data, loc)
    here = steps[-1]
    if kind == "refused":
        return f"{here.path} {err['msg']}".lstrip()
    inside = f"{steps[-2].path}: " if len(steps) > 1 and steps[-2].path else ""
    if kind == "extra_forbidden":  # every unknown key of that mapping at once
        unknown = sorted((e["loc"][-1] for e in errors
                          if e["type"] == kind and e["loc"][:-1] == loc[:-1]), key=str)
        return f"{inside}unknown key(s) {unknown}; allowed: {', '.join(holder.model_fields)}"
    if kind == "invalid_key":
        return f"{inside}keys must be str, not {err['input']!r}"
    if kind == "missing":
        expected = _description(here.annotation) or _name(here.annotation)
        return f"{here.path} is missing; it must be {expected}"
    if kind == "union_tag_invalid":  # a discriminated union's tag names no member
        ctx = err["ctx"]
        tags = [t.strip(" '") for t in ctx["expected_tags"].split(",")]
        return f"{here.path}.{ctx['discriminator'][1:-1]} must be {_either(tags)}, not {ctx['tag']!r}"
    owner = next((s for s in reversed(steps) if _description(s.annotation)), None)
    if owner is not None:
        at, expected, value = owner, _description(owner.annotation), owner.value
    else:
        at, value = here, err["input"]
        ctx = err.get("ctx", {})
        if kind in _BOUNDS:
            expected = _BOUNDS[kind].format(**ctx)
        elif kind in ("too_short", "too_long"):
            n = ctx["min_length" if kind == "too_short" else "max_length"]
            expected = (f"{_name(here.annotation)} with at {'least' if kind == 'too_short' else 'most'} "
                        f"{n} item{'s' if n != 1 else ''}")
        else:  # the wrong kind of value, or not one of a Literal's values
            expected = _name(here.annotation)
    hint = YAML_HINT if kind == "float_type" and _reads_as_number(err["input"]) else ""
    return f"{at.path or 'the file'} must be {expected}, not {value!r}{hint}"


def _walk(model: type[BaseModel], data: Any,
          loc: tuple[int | str, ...]) -> tuple[list[_Step], type[BaseModel]]:
    """Follow ``loc`` down the model's annotations and the input together: one step per key
    (pydantic's union member names and tags in ``loc`` are no keys of the file), and the last
    model passed -- the one whose keys the last step names."""
    steps, node, holder, key_type = [_Step("", model, data)], model, model, Any
    for i, part in enumerate(loc):
        here, node = steps[-1], _bare(node)
        if part == "[key]":  # the error is about the mapping's key (the part before), not its value
            steps[-1] = _Step(here.path, key_type, loc[i - 1])
            continue
        origin, args = get_origin(node), get_args(node)
        if origin in (Union, UnionType):  # pydantic names the member it tried (or its tag)
            node = next((m for m in args if part in _labels(m)), Any)
            continue
        if isinstance(node, type) and issubclass(node, BaseModel):
            holder, field = node, node.model_fields.get(str(part))
            node = Any if field is None else Annotated[field.annotation, field]
        elif origin is dict:
            key_type, node = args or (Any, Any)
        elif origin is list:
            node = args[0] if args else Any
        else:
            node = Any
        value = here.value
        if isinstance(value, dict):
            value = value.get(part)
        elif isinstance(value, list) and isinstance(part, int) and 0 <= part < len(value):
            value = value[part]
        else:
            value = None
        steps.append(_Step(f"{here.path}.{part}" if here.path else str(part), node, value))
    return steps, holder


def _bare(tp: Any) -> Any:
    """``tp`` without ``Annotated`` and without a ``| None`` (pydantic adds no step for either)."""
    while True:
        if get_origin(tp) is Annotated:
            tp = get_args(tp)[0]
        elif get_origin(tp) in (Union, UnionType) and len(real := _real(tp)) == 1:
            tp = real[0]
        else:
            return tp


def _real(tp: Any) -> list[Any]:
    return [a for a in get_args(tp) if a is not NoneType]


def _labels(tp: Any) -> set[Any]:
    """What pydantic calls a union member in ``loc``: its type name, or a tag (a model's
    Literal value)."""
    tp = _bare(tp)
    labels: set[Any] = {getattr(tp, "__name__", None)}
    if isinstance(tp, type) and issubclass(tp, BaseModel):
        labels |= {v for f in tp.model_fields.values() if get_origin(f.annotation) is Literal
                   for v in get_args(f.annotation)}
    return labels


def _description(tp: Any) -> str | None:
    """The ``Field(description=...)`` on ``tp`` (through a ``| None``), if any."""
    if get_origin(tp) is Annotated:
        described = [m.description for m in get_args(tp)[1:]
                     if isinstance(m, FieldInfo) and m.description]
        return described[-1] if described else _description(get_args(tp)[0])
    if get_origin(tp) in (Union, UnionType) and len(real := _real(tp)) == 1:
        return _description(real[0])
    return None


def _name(tp: Any) -> str:
    """How a type reads in the line: ``int``, ``float | None``, ``a list of int``, ``a mapping``,
    ``true or false``, ``cosine, linear or constant``."""
    origin, args = get_origin(tp), get_args(tp)
    if origin is Annotated:
        return _name(args[0])
    if origin in (Union, UnionType):
        return " | ".join(dict.fromkeys(_name(a) for a in args))
    if origin is Literal:
        return _either([str(a) for a in args])
    if origin is list:
        return f"a list of {_name(args[0])}" if args else "a list"
    if origin is dict or tp is dict or (isinstance(tp, type) and issubclass(tp, BaseModel)):
        return "a mapping"
    if tp is bool:
        return "true or false"
    return "None" if tp is NoneType else getattr(tp, "__name__", str(tp))


def _either(words: list[str]) -> str:
    return " or ".join(filter(None, [", ".join(words[:-1]), words[-1]]))


def _reads_as_number(value: Any) -> bool:
    """Text that YAML 1.1 did not read as a number but Python does: an exponent without a dot
    or a sign (``1.0e4``, ``1e-3``)."""
    if not (isinstance(value, str) and "e" in value.lower()):
        return False
    try:
        float(value)
    except ValueError:
        return False
    return True
