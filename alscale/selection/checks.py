"""Checks of a composed selection against its pool, before any worker starts: every column it
names exists, has a type it can read, and fits how it is used (a score column holds numbers;
a comparison with numbers needs a numeric column; a group column is integer or string)."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from alscale.errors import AlscaleError, short_repr


def _number(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool)


def pool_problems(options: Mapping[str, Any], pool: str, field: str = "selection") -> list[str]:
    """Problems of the canonical objective ``options`` with the columns of ``pool``."""
    from alscale.pool.columns import check_group_column, check_meta_column

    problems: list[str] = []
    kinds: dict[str, str] = {}

    def kind(column: str, where: str) -> str | None:
        if column not in kinds:
            try:
                kinds[column] = check_meta_column(pool, column, where)
            except AlscaleError as exc:
                problems.append(str(exc))
                kinds[column] = ""
        return kinds[column] or None

    for i, rule in enumerate(options["filters"]):
        for j, p in enumerate(rule["where"]):
            if p["source"] != "column":
                continue
            where = f"{field}.filters[{i}].where[{j}]"
            k = kind(p["field"], where)
            values = p["value"] if isinstance(p["value"], list) else [p["value"]]
            numeric = k in ("int", "float", "bool")
            if k is None:
                continue
            if p["op"] in ("<", "<=", ">", ">=", "between") and not numeric:
                problems.append(f"{where}: '{p['op']}' compares numbers but column '{p['field']}' holds strings; "
                                "use ==, !=, in or not in")
            elif numeric and not all(_number(v) for v in values):
                problems.append(f"{where}: column '{p['field']}' holds numbers ({k}); compare it with numbers, got "
                                f"{short_repr(p['value'])}")
            elif k == "str" and not all(isinstance(v, str) for v in values):
                problems.append(f"{where}: column '{p['field']}' holds strings; compare it with strings (quote them), "
                                f"got {short_repr(p['value'])}")
    for i, s in enumerate(options["scores"]):
        if s["column"] is not None:
            k = kind(s["column"], f"{field}.scores[{i}].column")
            if k == "str":
                problems.append(f"{field}.scores[{i}].column: column '{s['column']}' holds strings; a score column "
                                "holds numbers (filter on it, or group by it in constraints)")
    cons = options["constraints"]
    if cons is not None and cons["by"] != "predicted_class":
        try:
            check_group_column(pool, cons["by"], f"{field}.constraints.by")
        except AlscaleError as exc:
            problems.append(str(exc))
    return problems
