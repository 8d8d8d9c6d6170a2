"""Declarative configuration: the sections of a job file as pydantic v2 models, and the
adapter that turns pydantic's error list into alscale's one-line messages.

A section is a frozen, strict :class:`Section`; each field declares once its type, its
default, its range and the phrase that completes "*field* must be ...":

    class RuntimeConfig(Section):
        shards: int = setting(2, "an integer >= 1", ge=1)

The phrase is the field's JSON-schema description and its error message:
``runtime.shards must be an integer >= 1; got 'two'`` (the value bounded by
:func:`alscale.errors.short_repr`). Strict means what a YAML file means: ``2.0`` or ``true``
is not an integer, ``"4"`` is not a number.

A check that reads more than one field, a registry or the rest of the job lives in a pydantic
validator of the field it is about. It sees the fields declared before it that are valid
(``info.data``) and the job's facts (``info.context``, given only when a file is read:
:func:`from_file`), and it raises :func:`problem` (a whole message), :func:`field_problem`
(``field: message``) or a ``ValueError`` (the field's phrase).

:func:`check_section` validates and reports every error at once: unknown fields name the
valid ones, a field's errors keep the order the fields are declared in, at most
:data:`MAX_ERRORS_SHOWN` are listed and the rest counted.
"""

from __future__ import annotations

import typing
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, ClassVar, TypeVar

from pydantic import BaseModel, ConfigDict, Field, ValidationError, ValidationInfo
from pydantic_core import InitErrorDetails, PydanticCustomError, PydanticUndefined
from pydantic_core.core_schema import ErrorType

from alscale.errors import JobError, short_repr

#: A section with more problems lists this many and counts the rest.
MAX_ERRORS_SHOWN = 20
#: The validation context key that marks reading a file (names are resolved through registries).
FROM_FILE = "alscale.from_file"

M = TypeVar("M", bound=BaseModel)
_LAST = 1 << 30
_BUILTIN_ERRORS = frozenset(typing.get_args(ErrorType))


class Section(BaseModel):
    """A section of a job file: strict types, unknown fields refused, frozen once validated."""

    model_config = ConfigDict(extra="forbid", strict=True, frozen=True)  # fields are read by their aliases only
    #: How an unknown field's message lists the valid names: ``"sorted"`` gives
    #: ``(valid under strategy: budget, name, ...)``; ``"declared"`` gives them in
    #: declaration order as ``(valid: ...)``.
    valid_names: ClassVar[str] = "sorted"
    #: What a value in place of the whole section must be (a list item has no field phrase).
    must: ClassVar[str] = "a mapping"

    def replace(self: M, **changes: Any) -> M:
        """A copy with some fields changed (``dataclasses.replace``'s role; not validated again)."""
        return self.model_copy(update=changes)


@dataclass(frozen=True)
class Missing:
    """Field metadata: the message when the field is absent or null (``strategy.name is
    missing (valid: ...)``); a callable is asked at error time."""

    text: str | Callable[[], str]

    def __str__(self) -> str:
        return self.text() if callable(self.text) else self.text


def setting(default: Any = PydanticUndefined, must: str = "", **constraints: Any) -> Any:
    """A field: its default, the phrase completing "*field* must be ...", and pydantic's
    constraints (``ge``, ``gt``, ``min_length``, ``pattern``, ``default_factory``, ``alias``...)."""
    return Field(default, description=must or None, **constraints)


def problem(message: str) -> PydanticCustomError:
    """A validator's error shown as it is (the whole message names its field)."""
    return PydanticCustomError("alscale", "{message}", {"message": message})


def field_problem(message: str) -> PydanticCustomError:
    """A validator's error shown as ``dotted.field: message`` (a registry's own message)."""
    return PydanticCustomError("alscale_field", "{message}", {"message": message})


def parent_problem(message: str) -> PydanticCustomError:
    """A validator's error shown as ``dotted.place: message`` for the mapping that holds the
    field (``loop.strategies[0]: unknown strategy 'x'``)."""
    return PydanticCustomError("alscale_parent", "{message}", {"message": message})


def also(value: Any, handler: Callable[[Any], Any],
         checks: Sequence[PydanticCustomError] | Callable[[Any], Sequence[PydanticCustomError]] = ()) -> Any:
    """For a ``mode="wrap"`` field validator: the field's own checks, and ``checks`` (problems,
    or a function of the validated value -- None when it is invalid -- that returns them)
    whatever those say: every error at once."""
    try:
        out, errors = handler(value), []
    except ValidationError as exc:
        out, errors = None, [_again(e) for e in exc.errors()]
    problems = checks(out) if callable(checks) else checks
    errors += [InitErrorDetails(type=p, loc=(), input=value) for p in problems]
    if errors:
        raise ValidationError.from_exception_data("problems", errors)
    return out


def _again(err: Mapping[str, Any]) -> InitErrorDetails:
    """An error of a ``ValidationError`` as it is raised again."""
    kind: Any = err["type"]
    if kind not in _BUILTIN_ERRORS:
        kind = PydanticCustomError(kind, "{message}", {**err.get("ctx", {}), "message": err.get("ctx", {}).get(
            "message", err["msg"])})
    return InitErrorDetails(type=kind, loc=err["loc"], input=err["input"],
                            **({"ctx": err["ctx"]} if "ctx" in err and isinstance(kind, str) else {}))


def from_file(info: ValidationInfo) -> bool:
    """Whether this validation reads a job file (then names go through the registries);
    constructing a section in code checks types and ranges only."""
    return bool(info.context) and bool(info.context.get(FROM_FILE))


def fact(info: ValidationInfo, key: str, default: Any = None) -> Any:
    """A fact about the rest of the job that the caller put in the validation context."""
    return (info.context or {}).get(key, default)


def lenient(model: type[M], raw: Any, context: Mapping[str, Any] | None = None) -> M | None:
    """``model`` from ``raw`` with its unknown keys dropped (a value that is not a mapping
    taken as the defaults), or None when a field is invalid: what the checks relating a
    section to the rest of the job read, so that an unknown key is reported together with
    them, not instead of them."""
    fields = _fields_by_alias(model)
    known = {k: v for k, v in raw.items() if k in fields} if isinstance(raw, dict) else {}
    try:
        return model.model_validate(known, context=context)
    except ValidationError:
        return None


def check_section(model: type[M], raw: Any, *, source: str, prefix: str = "", context: Mapping[str, Any] | None = None,
                  unknown_first: bool = False, lead: list[str] | None = None, trail: list[str] | None = None) -> M:
    """``model`` validated from ``raw`` (a file's mapping), or one :class:`JobError`:
    ``job SOURCE: N errors: ...`` naming every problem.

    ``prefix`` is the section's dotted place in the job (``"loop"``); ``context`` the facts
    the validators read (:data:`FROM_FILE` is set); ``unknown_first`` lists every unknown
    field of every level first (else each section's unknown fields open that section);
    ``lead`` and ``trail`` are problems of the rest of the job, listed after the unknown
    fields of the top level and at the end.
    """
    ctx = {**(context or {}), FROM_FILE: True}
    try:
        value = model.model_validate(raw, context=ctx)
    except ValidationError as exc:
        errors = explain(exc, model, raw, prefix=prefix, unknown_first=unknown_first, lead=lead) + list(trail or ())
    else:
        if not lead and not trail:
            return value
        errors = list(lead or ()) + list(trail or ())
    raise JobError(summary(source, errors))


def summary(source: str, errors: list[str]) -> str:
    """``job SOURCE: N errors: a; b; ...`` with at most :data:`MAX_ERRORS_SHOWN` listed."""
    n = len(errors)
    shown = errors[:MAX_ERRORS_SHOWN] + ([f"and {n - MAX_ERRORS_SHOWN} more"] if n > MAX_ERRORS_SHOWN else [])
    return f"job {source}: {n} error{'s' if n > 1 else ''}: " + "; ".join(shown)


def explain(exc: ValidationError, model: type[BaseModel], raw: Any, *, prefix: str = "", unknown_first: bool = False,
            lead: list[str] | None = None) -> list[str]:
    """pydantic's errors as alscale's messages, in the order of the fields' declaration."""
    keyed: list[tuple[tuple, str]] = []
    seen: set[str] = set()
    n_top = 0  # unknown fields of the top level: ``lead`` follows them
    for n, err in enumerate(exc.errors(include_url=False)):
        where = _locate(model, raw, tuple(err["loc"]), prefix, err["type"])
        message = _message(err, where)
        once = err["type"] not in ("alscale", "alscale_field", "alscale_parent")  # one per field (a union's branches)
        if once and (message in seen or where.dotted in seen):
            continue
        seen.update((message, where.dotted) if once else (message,))
        n_top += where.unknown and len(where.path) == 1
        keyed.append(((where.order(unknown_first), n), message))
    keyed.sort(key=lambda item: item[0])
    messages = [m for _, m in keyed]
    messages[n_top:n_top] = lead or []
    return messages


@dataclass
class _Where:
    dotted: str  # "runtime.shards", "loop.strategies[0]"
    field: Any  # the FieldInfo of the last field (None for a list item or the section itself)
    owner: type[BaseModel] | None  # the model whose field (or unknown key) it is
    item: type[BaseModel] | None  # the section model a list item or the field holds
    path: tuple  # per level: (declaration index or -1 for an unknown key, position in the file)
    unknown: bool = False
    parent: str = ""  # the mapping that holds the last field or unknown key ("runtime")

    def order(self, unknown_first: bool) -> tuple:
        """Sort key: the fields' declaration order, a section's unknown keys first (in the
        file's order); with ``unknown_first`` every unknown key of any level before the rest."""
        if unknown_first:
            return (0, tuple(r for _, r in self.path)) if self.unknown else (1, (*(d for d, _ in self.path), _LAST))
        return (*((d, r if d == -1 else 0) for d, r in self.path), (_LAST,))  # a field's own errors after its fields


def _locate(model: type[BaseModel], raw: Any, loc: tuple, prefix: str, kind: str) -> _Where:
    """Walk ``loc`` through the models' fields (by alias); stop at what is not a field (a
    union's branch tag). The last segment of an unknown-field error is the unknown key."""
    unknown = kind in ("extra_forbidden", "invalid_key")
    where = _Where(prefix, None, model, model, ())
    current: type[BaseModel] | None = model
    for seg in loc[:-1] if unknown else loc:
        if isinstance(seg, int) and not isinstance(seg, bool) and where.field is not None:
            where.dotted += f"[{seg}]"
            where.path += ((seg, seg),)
            where.field, where.owner = None, None
            raw = raw[seg] if isinstance(raw, list) and 0 <= seg < len(raw) else None
            continue
        fields = _fields_by_alias(current) if current is not None else {}
        if seg not in fields:
            break
        index, info = fields[seg]
        where.parent = where.dotted
        where.dotted = f"{where.dotted}.{seg}" if where.dotted else str(seg)
        where.path += ((index, _position(raw, seg)),)
        where.field, where.owner = info, current
        current = where.item = _section_of(info.annotation)
        raw = raw.get(seg) if isinstance(raw, dict) else None
    if unknown:
        key = loc[-1]
        where.owner, where.unknown, where.parent = current, True, where.dotted
        where.dotted = f"{where.dotted}.{key}" if where.dotted else str(key)
        where.path += ((-1, _position(raw, key)),)
    return where


def _position(raw: Any, key: Any) -> int:
    return list(raw).index(key) if isinstance(raw, dict) and key in raw else _LAST


def _message(err: Mapping[str, Any], where: _Where) -> str:
    kind, value = err["type"], err.get("input")
    if kind == "alscale":
        return str(err["ctx"]["message"])
    if kind == "alscale_field":
        return f"{where.dotted}: {err['ctx']['message']}"
    if kind == "alscale_parent":
        return f"{where.parent}: {err['ctx']['message']}"
    if where.unknown:
        return _unknown(where)
    missing = next((m for m in (where.field.metadata if where.field is not None else ()) if isinstance(m, Missing)),
                   None)
    if kind == "missing":
        value = None
    if missing is not None and value is None:
        return f"{where.dotted} {missing}"
    must = where.field.description if where.field is not None and where.field.description else None
    if must is None:
        must = where.item.must if where.item is not None else "valid"
    return f"{where.dotted} must be {must}; got {short_repr(value)}"


def _unknown(where: _Where) -> str:
    owner, parent = where.owner, where.parent
    aliases = [alias for alias, _ in _aliases(owner)] if owner is not None else []
    if owner is not None and getattr(owner, "valid_names", "sorted") == "declared":
        return f"unknown field {short_repr(where.dotted)} (valid: {', '.join(aliases)})"
    under = f" under {parent}" if parent else ""
    return f"unknown field {short_repr(where.dotted)} (valid{under}: {', '.join(sorted(aliases))})"


def _aliases(model: type[BaseModel]) -> Iterator[tuple[str, Any]]:
    for name, info in model.model_fields.items():
        yield (info.alias or name), info


def _fields_by_alias(model: type[BaseModel]) -> dict[str, tuple[int, Any]]:
    return {alias: (i, info) for i, (alias, info) in enumerate(_aliases(model))}


def _section_of(annotation: Any) -> type[BaseModel] | None:
    """The section model a field holds: itself, in ``X | None``, in ``list[X]`` or ``Annotated``."""
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return annotation
    for arg in typing.get_args(annotation):
        found = _section_of(arg)
        if found is not None:
            return found
    return None


def schema(model: type[BaseModel]) -> dict[str, Any]:
    """The JSON schema of a section, field phrases as descriptions (``alscale validate --schema``)."""
    return model.model_json_schema(by_alias=True, mode="validation")
