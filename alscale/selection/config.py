"""The ``selection:`` job section as pydantic v2 models: filters, weighted scores, hard group
constraints and diversity, composed into one objective (README "Selection as one objective").

A job gives either ``strategy:`` or ``selection:``. The section is validated as a whole and
every problem is reported at once, one line each, naming the dotted field, the value
(:func:`alscale.errors.short_repr`) and the fix::

    selection:
      budget: 1000
      filters: ["entropy >= 0.5", "source in [drone, dashcam]"]     # one rule: every predicate holds
      scores:
        - {name: entropy, weight: 1.0}                               # a per-row score strategy
        - {name: margin, weight: 0.5, normalize: minmax}
        - {column: sharpness, weight: 0.2}                           # a numeric pool column
      normalize: rank                                                # default of the scores
      constraints: {by: predicted_class, min: 5, max: {3: 0}}        # hard quotas per group
      diversity: {kind: kcenter, weight: 1.0}                        # none | kcenter | threshold | badge | kmeanspp

``filters`` is a list of predicate strings (one rule: a row passes when all hold) or a list of
named rules ``{name, where: [...]}`` (a row passes when any rule passes; its provenance names
the first rule it passed). A predicate is ``FIELD OP VALUE`` with ``OP`` one of ``==``, ``!=``,
``<``, ``<=``, ``>``, ``>=``, ``in``, ``not in``, ``between`` (``[lo, hi]``, inclusive); the
field is a per-row score strategy (``entropy``, ``bald``, ...; or ``score.NAME``) or a pool
column (``column.NAME`` when a column shares a score's name).

The validated section becomes the options of the registered strategy ``objective``
(:mod:`alscale.strategies.objective`): ``budget``, ``round`` and ``embedding`` go to the
job's strategy fields, the rest is :meth:`Objective.options`, a plain JSON-able mapping.
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping
from typing import Annotated, Any, Literal

from pydantic import (
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    StrictInt,
    ValidationError,
    field_validator,
    model_validator,
)

from alscale.errors import AlscaleError, short_repr

#: The registered strategy a ``selection:`` section runs as.
STRATEGY = "objective"

__all__ = ["STRATEGY", "Objective", "SelectionSection", "check_objective_options", "section_errors", "NORMALIZE", "OPS",
           "DIVERSITY", "needs_of", "columns_of"]

#: Predicate operators.
OPS = ("==", "!=", "<", "<=", ">", ">=", "in", "not in", "between")
#: How a score is put on a common scale before weighting: the raw value, its mid-rank among the
#: unlabelled rows scaled to [0, 1], or (value - min) / (max - min) over them.
NORMALIZE = ("raw", "rank", "minmax")
#: Diversity kinds; all exact (the plain names of exact loops, as everywhere in alscale).
DIVERSITY = ("none", "kcenter", "threshold", "badge", "kmeanspp")
#: Per-row strategy kinds a score component may be.
_SCORE_KINDS = ("score", "random", "stochastic")
_LABEL = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")
_PREDICATE = re.compile(r"^\s*(?P<field>[A-Za-z_][A-Za-z0-9_.]*)\s*"
                        r"(?P<op>==|!=|<=|>=|<|>|not\s+in\b|in\b|between\b)\s*(?P<value>.*?)\s*$")



def _number(v: Any) -> Any:
    if isinstance(v, bool) or not isinstance(v, (int, float)):
        raise ValueError(f"must be a number; got {short_repr(v)}")
    return float(v)


def _counts(v: Any) -> Any:
    """A count >= 0, or a mapping group -> count >= 0 (groups: integers or strings)."""
    ok = lambda c: isinstance(c, int) and not isinstance(c, bool) and c >= 0  # noqa: E731
    if v is None or ok(v):
        return v
    if isinstance(v, Mapping) and all(isinstance(k, (int, str)) and not isinstance(k, bool) for k in v) \
            and all(ok(c) for c in v.values()):
        return dict(v)
    raise ValueError(f"must be a count >= 0 for every group, or a mapping group -> count >= 0 (e.g. {{3: 10, 5: 0}}); "
                     f"got {short_repr(v)}")


def _scale(v: Any) -> Any:
    if v == "auto" or (not isinstance(v, bool) and isinstance(v, (int, float)) and 0 < v < math.inf):
        return v if v == "auto" else float(v)
    raise ValueError(f"must be auto (the largest distance of a candidate to the labelled rows when the selection "
                     f"starts) or a positive distance; got {short_repr(v)}")


Number = Annotated[float, BeforeValidator(_number)]
Counts = Annotated[Any, BeforeValidator(_counts)]


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


def _score_spec(name: str) -> Any:
    """The per-row score strategy called ``name`` (None when it is not one)."""
    from alscale.strategies import registry

    try:
        spec = registry.get_strategy(name)
    except AlscaleError:
        return None
    if spec.kind not in _SCORE_KINDS or (spec.kind == "stochastic" and spec.keys is None):
        return None
    return spec


def _field_source(field: str) -> tuple[str, str]:
    """(``"score"`` | ``"column"``, name) of a predicate's field."""
    if field.startswith("score."):
        return "score", field[6:]
    if field.startswith("column."):
        return "column", field[7:]
    return ("score", field) if _score_spec(field) is not None else ("column", field)


class Predicate(_Model):
    """``field op value``: ``source`` says whether ``field`` is a score or a pool column."""

    field: str
    op: Literal[OPS]  # type: ignore[valid-type]
    value: Any
    source: Literal["score", "column"] = "column"

    @model_validator(mode="before")
    @classmethod
    def _parse(cls, raw: Any) -> Any:
        if isinstance(raw, str):
            m = _PREDICATE.match(raw)
            if m is None or not m["value"]:
                raise ValueError(f"cannot read predicate {short_repr(raw)}; write FIELD OP VALUE with OP one of "
                                 f"{', '.join(OPS)} (e.g. 'entropy >= 0.5', 'source in [drone, dashcam]')")
            from alscale.yamlfile import load_yaml

            try:
                value = load_yaml(m["value"], source="predicate", what="job")
            except AlscaleError:
                value = m["value"]
            raw = {"field": m["field"], "op": " ".join(m["op"].split()), "value": value}
        if isinstance(raw, Mapping) and isinstance(raw.get("field"), str) and "source" not in raw:
            source, name = _field_source(raw["field"])
            raw = {**raw, "field": name, "source": source}
        return raw

    @model_validator(mode="after")
    def _value_fits_op(self) -> Predicate:
        v = self.value
        scalar = (str, int, float, bool)
        if self.op in ("in", "not in"):
            if not isinstance(v, list) or not v or not all(isinstance(x, scalar) for x in v):
                raise ValueError(f"'{self.op}' needs a non-empty list of values, e.g. {self.field} {self.op} [a, b]; "
                                 f"got {short_repr(v)}")
        elif self.op == "between":
            if not (isinstance(v, list) and len(v) == 2 and all(_is_number(x) for x in v) and v[0] <= v[1]):
                raise ValueError(f"'between' needs [low, high] numbers with low <= high, e.g. {self.field} between "
                                 f"[0.2, 0.8]; got {short_repr(v)}")
        elif self.op in ("<", "<=", ">", ">="):
            if not _is_number(v):
                raise ValueError(f"'{self.op}' compares with a number; got {short_repr(v)}")
        elif not isinstance(v, scalar):
            raise ValueError(f"'{self.op}' compares with one value (a number or a string); got {short_repr(v)}")
        if self.source == "score":
            if _score_spec(self.field) is None:
                raise ValueError(f"{short_repr(self.field)} is not a per-row score strategy (e.g. entropy, margin, "
                                 "bald); write column.NAME for a pool column")
            if self.op in ("==", "!=", "in", "not in") and not all(_is_number(x) for x in _as_list(v)):
                raise ValueError(f"score {self.field} is a number; compare it with numbers, got {short_repr(v)}")
        elif not _LABEL.match(self.field):
            raise ValueError(f"column name {short_repr(self.field)} is not a plain name")
        return self


def _is_number(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)


def _as_list(v: Any) -> list[Any]:
    return v if isinstance(v, list) else [v]


class FilterRule(_Model):
    """A named rule: a row passes when every predicate in ``where`` holds."""

    name: str | None = None
    where: Annotated[list[Predicate], Field(min_length=1)]

    @field_validator("name")
    @classmethod
    def _name(cls, v: str | None) -> str | None:
        if v is not None and not _LABEL.match(v):
            raise ValueError(f"a filter name is a plain name (letters, digits, _); got {short_repr(v)}")
        return v


class ScoreTerm(_Model):
    """One component of the combined score: a per-row score strategy (``name``, its
    ``options``) or a numeric pool column (``column``), its ``weight`` and normalisation."""

    name: str | None = None
    column: str | None = None
    label: str | None = None
    weight: Number = 1.0
    normalize: Literal[NORMALIZE] | None = None  # type: ignore[valid-type]
    options: dict[str, Any] = Field(default_factory=dict)

    @model_validator(mode="after")
    def _one_source(self) -> ScoreTerm:
        if (self.name is None) == (self.column is None):
            raise ValueError("a score names a score strategy (name: entropy) or a pool column (column: sharpness), "
                             "exactly one of them")
        if not math.isfinite(self.weight):
            raise ValueError(f"weight must be a finite number; got {short_repr(self.weight)}")
        if self.label is not None and not _LABEL.match(self.label):
            raise ValueError(f"label must be a plain name (letters, digits, _); got {short_repr(self.label)}")
        if self.column is not None:
            if not _LABEL.match(self.column):
                raise ValueError(f"column name {short_repr(self.column)} is not a plain name")
            if self.options:
                raise ValueError("a pool column takes no options; drop 'options'")
            return self
        spec = _score_spec(self.name)
        if spec is None:
            raise ValueError(f"{short_repr(self.name)} is not a per-row score strategy; use a score, random or "
                             "stochastic strategy (entropy, margin, bald, power ...; `alscale strategies` lists "
                             "them), or column: NAME for a pool column")
        from alscale.strategies import registry

        try:
            registry.check_options(spec, self.options)
        except AlscaleError as exc:
            raise ValueError(f"options: {exc}") from None
        return self

    def canonical(self) -> dict[str, Any]:
        """The JSON-able form with the strategy's canonical name and checked options."""
        from alscale.strategies import registry

        if self.column is not None:
            return {"label": self.label or self.column, "name": None, "column": self.column,
                    "weight": float(self.weight), "normalize": self.normalize, "options": {}}
        spec = _score_spec(self.name)
        return {"label": self.label or spec.name, "name": registry.strategy_ref(spec), "column": None,
                "weight": float(self.weight), "normalize": self.normalize,
                "options": dict(registry.check_options(spec, self.options))}


class Constraints(_Model):
    """Hard quotas per group: the predicted class or an integer/string pool column ``by``."""

    by: str = "predicted_class"
    min: Counts = None
    max: Counts = None
    max_groups: Annotated[StrictInt, Field(ge=1)] | None = None

    @model_validator(mode="after")
    def _some_bound(self) -> Constraints:
        if self.min is None and self.max is None:
            raise ValueError("constraints need 'min' and/or 'max' (a count for every group, or {group: count})")
        if not self.by or not (_LABEL.match(self.by)):
            raise ValueError(f"'by' names a pool column or predicted_class; got {short_repr(self.by)}")
        return self

    def quotas(self) -> dict[str, Any]:
        """The form :func:`alscale.strategies.quotas.select_with_quotas` takes."""
        out: dict[str, Any] = {"by": self.by}
        for key in ("min", "max", "max_groups"):
            v = getattr(self, key)
            if v is not None:
                out[key] = dict(v) if isinstance(v, dict) else v
        return out


class Diversity(_Model):
    """How picks are kept apart (see :mod:`alscale.strategies.objective`)."""

    kind: Literal[DIVERSITY] = "none"  # type: ignore[valid-type]
    weight: Annotated[Number, Field(gt=0)] = 1.0
    scale: Annotated[Any, BeforeValidator(_scale)] = "auto"
    radius: Annotated[Number, Field(gt=0)] | None = None
    against: Literal["picks_and_labeled", "picks"] = "picks_and_labeled"
    shortlist: Annotated[StrictInt, Field(ge=1)] | None = None
    backend: str = "auto"

    @model_validator(mode="after")
    def _fits_kind(self) -> Diversity:
        if self.kind == "threshold" and self.radius is None:
            raise ValueError("kind threshold needs 'radius': no two picks closer than radius (embedding distance)")
        if self.kind != "threshold" and self.radius is not None:
            raise ValueError(f"'radius' is for kind threshold; kind {self.kind} does not use it, drop it")
        if self.kind != "threshold" and self.against != "picks_and_labeled":
            raise ValueError("'against' is for kind threshold (k-center always keeps away from the labelled rows)")
        from alscale.index import BACKENDS

        if self.backend not in BACKENDS:
            raise ValueError(f"backend must be one of {', '.join(BACKENDS)}; got {short_repr(self.backend)}")
        if not all(math.isfinite(float(v)) for v in (self.weight, self.radius or 1.0)):
            raise ValueError("weight and radius must be finite")
        return self


_DEFAULT_SCORES = ({"name": "entropy"},)


class Objective(_Model):
    """The composed objective (the options of strategy ``objective``)."""

    filters: list[FilterRule] = Field(default_factory=list)
    scores: list[ScoreTerm] = Field(default_factory=lambda: [ScoreTerm(**s) for s in _DEFAULT_SCORES])
    normalize: Literal[NORMALIZE] = "rank"  # type: ignore[valid-type]
    constraints: Constraints | None = None
    diversity: Diversity = Field(default_factory=Diversity)

    @field_validator("filters", mode="before")
    @classmethod
    def _one_rule(cls, v: Any) -> Any:
        """A list of predicates (strings or mappings with ``field``) is one rule named ``filters``."""
        if isinstance(v, list) and v and all(isinstance(x, str) or (isinstance(x, Mapping) and "field" in x)
                                             for x in v):
            return [{"name": "filters", "where": v}]
        return v

    @model_validator(mode="after")
    def _cross(self) -> Objective:
        labels = [s.canonical()["label"] for s in self.scores]
        dup = sorted({x for x in labels if labels.count(x) > 1})
        if dup:
            raise ValueError(f"scores: two components are called {dup[0]!r}; give one a 'label'")
        names = [r.name for r in self.filters if r.name is not None]
        if len(set(names)) != len(names):
            raise ValueError("filters: two rules have the same name; name each rule once")
        kind = self.diversity.kind
        if not self.scores and kind == "none":
            raise ValueError("scores is empty and diversity.kind is none: nothing ranks the rows; add a score or a "
                             "diversity kind")
        if kind in ("badge", "kmeanspp") and self.scores and self.diversity.shortlist is None:
            raise ValueError(f"diversity {kind} samples by its own D² weights, so the scores would only be reported; "
                             "set diversity.shortlist: M (the M best rows by the combined score are its candidates) "
                             "or scores: []")
        if kind == "kmeanspp" and self.constraints is not None:
            raise ValueError("diversity kmeanspp takes no constraints; use kind badge or kcenter with constraints")
        return self

    def options(self) -> dict[str, Any]:
        """The JSON-able, canonical option mapping (what the manifest records)."""
        rules = []
        for i, r in enumerate(self.filters):
            rules.append({"name": r.name or f"rule{i}", "where": [
                {"field": p.field, "source": p.source, "op": p.op, "value": p.value} for p in r.where]})
        div = self.diversity.model_dump()
        div["scale"] = div["scale"] if div["scale"] == "auto" else float(div["scale"])
        for key in ("weight", "radius"):
            div[key] = None if div[key] is None else float(div[key])
        scores = []
        for s in self.scores:
            c = s.canonical()
            c["normalize"] = c["normalize"] or self.normalize
            scores.append(c)
        return {"filters": rules, "scores": scores, "normalize": self.normalize,
                "constraints": None if self.constraints is None else self.constraints.quotas(), "diversity": div}


class SelectionSection(Objective):
    """The job's ``selection:`` section: the objective plus the batch's budget, round and
    where embeddings come from (as ``strategy.budget``, ``strategy.round``, ``strategy.embedding``)."""

    budget: Annotated[StrictInt, Field(gt=0)]
    round: Annotated[StrictInt, Field(ge=0)] = 0
    embedding: Literal["auto", "column", "model"] = "auto"


def _messages(exc: ValidationError, prefix: str, model: type[BaseModel]) -> list[str]:
    """One line per pydantic error: ``prefix.dotted.field: what is wrong; got VALUE``."""
    out = []
    for e in exc.errors():
        loc = [p for p in e["loc"] if not (isinstance(p, str) and ("[" in p or p.startswith("function-")))]
        where = prefix
        for p in loc:
            where += f"[{p}]" if isinstance(p, int) else f".{p}"
        got = e.get("input")
        if e["type"] == "extra_forbidden":
            out.append(f"unknown field {where} ({_valid_fields(model, loc[:-1])})")
        elif e["type"] == "missing":
            out.append(f"{where} is missing")
        else:
            msg = e["msg"].removeprefix("Value error, ").replace("Input should be", "must be")
            shown = "" if e["type"] == "value_error" else f"; got {short_repr(got)}"
            out.append(f"{where}: {msg}{shown}")
    return list(dict.fromkeys(out))


def _valid_fields(model: type[BaseModel], loc: list[Any]) -> str:
    """``valid: a, b, c`` for the model found along ``loc`` (list indices skipped)."""
    cur: Any = model
    for p in loc:
        if isinstance(p, int):
            continue
        field = getattr(cur, "model_fields", {}).get(p)
        if field is None:
            return "see the README"
        ann = field.annotation
        inner = [a for a in getattr(ann, "__args__", (ann,)) if isinstance(a, type) and issubclass(a, BaseModel)]
        for a in getattr(ann, "__args__", ()):
            inner += [b for b in getattr(a, "__args__", ()) if isinstance(b, type) and issubclass(b, BaseModel)]
        if not inner:
            return "see the README"
        cur = inner[0]
    return "valid: " + ", ".join(cur.model_fields)


def section_errors(raw: Any, prefix: str = "selection") -> tuple[SelectionSection | None, list[str]]:
    """Validate a job's ``selection:`` mapping: the section (None on error) and every problem."""
    if not isinstance(raw, Mapping):
        return None, [f"{prefix} must be a mapping (budget, filters, scores, constraints, diversity); "
                      f"got {short_repr(raw)}"]
    try:
        return SelectionSection.model_validate(dict(raw)), []
    except ValidationError as exc:
        return None, _messages(exc, prefix, SelectionSection)


def check_objective_options(options: Mapping[str, Any]) -> dict[str, Any]:
    """Validate strategy ``objective``'s options; returns the canonical mapping. One
    :class:`AlscaleError` lists every problem."""
    try:
        obj = Objective.model_validate({k: v for k, v in options.items() if v is not None or k == "constraints"})
    except ValidationError as exc:
        raise AlscaleError("; ".join(_messages(exc, "options", Objective))) from None
    return obj.options()


def needs_of(options: Mapping[str, Any]) -> dict[str, Any]:
    """What a canonical objective needs: log-probs (with K >= min_samples), embeddings, the
    pool columns its filters, scores and constraints read, the score strategies it runs."""
    from alscale.strategies import registry

    log_probs, min_samples = False, 1
    fields = [(s["name"], s["options"]) for s in options["scores"] if s["name"] is not None]
    fields += [(p["field"], {}) for r in options["filters"] for p in r["where"] if p["source"] == "score"]
    for name, opts in fields:
        req = registry.requirements(name, opts)
        log_probs |= req.needs_log_probs
        min_samples = max(min_samples, req.min_samples)
    cons = options["constraints"]
    kind = options["diversity"]["kind"]
    log_probs |= (cons is not None and cons["by"] == "predicted_class") or kind == "badge"
    return {"log_probs": log_probs, "min_samples": min_samples, "embeddings": kind != "none",
            "columns": tuple(columns_of(options)), "components": tuple(dict.fromkeys(n for n, _ in fields))}


def columns_of(options: Mapping[str, Any]) -> list[str]:
    """The pool columns the objective reads (filters, column scores, ``constraints.by``), in order."""
    cols = [p["field"] for r in options["filters"] for p in r["where"] if p["source"] == "column"]
    cols += [s["column"] for s in options["scores"] if s["column"] is not None]
    cons = options["constraints"]
    if cons is not None and cons["by"] != "predicted_class":
        cols.append(cons["by"])
    return list(dict.fromkeys(cols))
