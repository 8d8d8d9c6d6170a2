"""Hand a selection to annotators and bring their labels back into a ledger.

**Export** (:func:`export_selection`): a job's ``selection.parquet`` as CSV, JSON lines or
Label Studio tasks. Every record carries ``row_id``, ``rank``, ``score``, ``strategy``,
``round`` and, when the pool has one, the row's media reference: the ``path`` value
(absolute, or the URI) or, for an ``image`` column of encoded bytes, a ``data:`` URI.
Label Studio tasks are ``{"id": row_id, "data": {"image": ref, "row_id": ..., ...}}``.

**Import** (:func:`import_labels`): labels from CSV (``row_id,label``), JSON lines
(``{"row_id": .., "label": ..}``) or a Label Studio JSON export (the first choice of each
task's latest annotation, its task ``data.row_id``) into an append-only
:class:`~alscale.loop.ledger.Ledger` as one new round, with the file as its source. Checked
before anything is written, each failure one line naming the file, line or task and the value:
row ids that are not in the pool, labels outside the class set (``classes``: names in class
order, or None for integers 0..C-1), two different labels for one row (in the file, or against
the ledger). The same label twice — in the file or already in the ledger — is accepted once
(importing a file again changes nothing).
"""

from __future__ import annotations

import base64
import csv
import io
import json
import logging
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow.parquet as pq

from alscale.errors import AlscaleError, short_repr

logger = logging.getLogger(__name__)

FORMATS = ("csv", "jsonl", "labelstudio")


def _format_of(path: str | Path, fmt: str | None) -> str:
    if fmt:
        if fmt not in FORMATS:
            raise AlscaleError(f"format must be one of {', '.join(FORMATS)}; got {short_repr(fmt)}")
        return fmt
    name = str(path).lower()
    if name.endswith(".csv"):
        return "csv"
    if name.endswith(".jsonl"):
        return "jsonl"
    if name.endswith(".json"):
        return "labelstudio"
    raise AlscaleError(f"{path}: cannot tell the format from the name; use .csv, .jsonl or .json (Label Studio), "
                       "or pass --format")


def _pool_row_ids(pool: str) -> np.ndarray:
    from alscale.pool import open_pool, read_shard
    from alscale.types import ShardSpec

    info = open_pool(pool)
    return read_shard(ShardSpec(info.path, 0, 0, info.n_rows), []).row_ids_N


class MediaRefs:
    """The media reference of pool rows: the ``path`` value (absolute, or the URI) or, for an
    ``image`` column, a ``data:`` URI. The pool's row-id order is read once; media are read
    chunk by chunk (``_CHUNK`` rows), only for chunks holding requested rows."""

    _CHUNK = 65536

    def __init__(self, pool: str) -> None:
        from alscale.pool import open_pool, read_shard
        from alscale.pool.location import media_base
        from alscale.types import ShardSpec

        self.info = open_pool(pool)
        self.enabled = self.info.media is not None
        if self.enabled:
            ids = read_shard(ShardSpec(self.info.path, 0, 0, self.info.n_rows), []).row_ids_N
            self._order = np.argsort(ids, kind="stable")
            self._sorted = ids[self._order]
            self._base = media_base(self.info.path)

    def __call__(self, row_ids: np.ndarray) -> list[str] | None:
        """References of ``row_ids`` in their order (None when the pool has no image/path column)."""
        import sys

        from tqdm import tqdm

        from alscale.pool.read import read_media
        from alscale.types import ShardSpec

        if not self.enabled:
            return None
        pos = self._order[np.searchsorted(self._sorted, np.asarray(row_ids, np.int64))]
        out: list[str] = [""] * pos.shape[0]
        chunks = np.unique(pos // self._CHUNK)
        for c in tqdm(chunks.tolist(), desc="exporting", unit="chunks", disable=not sys.stderr.isatty(),
                      file=sys.stderr):
            lo = c * self._CHUNK
            values = read_media(ShardSpec(self.info.path, 0, lo, min(self.info.n_rows, lo + self._CHUNK)),
                                self.info.media)
            for i in np.flatnonzero(pos // self._CHUNK == c).tolist():
                out[i] = self._ref(values[int(pos[i]) - lo].as_py())
        return out

    def _ref(self, value: Any) -> str:
        if self.info.media == "path":
            return value if ("://" in value or os.path.isabs(value)) else (self._base.rstrip("/") + "/" + value)
        kind = "png" if value[:8] == b"\x89PNG\r\n\x1a\n" else "jpeg" if value[:2] == b"\xff\xd8" else None
        mime = f"image/{kind}" if kind else "application/octet-stream"
        return f"data:{mime};base64," + base64.b64encode(value).decode()


def export_selection(out_dir: str | Path, dest: str | Path, fmt: str | None = None) -> int:
    """Write the selection in ``out_dir`` to ``dest`` (atomically); returns the rows written."""
    from alscale.fsio import atomic_write
    from alscale.runtime.output import MANIFEST_FILE, SELECTION_FILE

    out_dir = Path(out_dir)
    fmt = _format_of(dest, fmt)
    sel_file, man_file = out_dir / SELECTION_FILE, out_dir / MANIFEST_FILE
    if not man_file.is_file() or not sel_file.is_file():
        raise AlscaleError(f"{out_dir} holds no finished selection ({MANIFEST_FILE} and {SELECTION_FILE}); run "
                           "`alscale run` first")
    manifest = json.loads(man_file.read_text())
    sel = pq.read_table(sel_file).to_pylist()
    refs = MediaRefs(manifest["pool"]["path"])(np.array([r["row_id"] for r in sel], np.int64))
    records = []
    for i, r in enumerate(sel):
        rec = {k: r[k] for k in ("row_id", "rank", "score", "strategy", "round")}
        if refs is not None:
            rec["image"] = refs[i]
        records.append(rec)
    if fmt == "csv":
        buf = io.StringIO()
        w = csv.DictWriter(buf, fieldnames=list(records[0]) if records else ["row_id"], lineterminator="\n")
        w.writeheader()
        w.writerows(records)
        text = buf.getvalue()
    elif fmt == "jsonl":
        text = "".join(json.dumps(r) + "\n" for r in records)
    else:
        text = json.dumps([{"id": r["row_id"], "data": r} for r in records], indent=1) + "\n"
    atomic_write(Path(dest), text)
    return len(records)


def _read_labels(path: Path, fmt: str) -> list[tuple[Any, Any, str]]:
    """(row_id, label, where) per record of the file, as written there."""
    try:
        text = path.read_text()
    except (OSError, UnicodeDecodeError) as exc:
        raise AlscaleError(f"labels {path}: cannot read it ({exc})") from None
    read = {"csv": _csv_labels, "jsonl": _jsonl_labels}.get(fmt, _labelstudio_labels)
    return read(path, text)


def _csv_labels(path: Path, text: str) -> list[tuple[Any, Any, str]]:
    reader = csv.reader(io.StringIO(text))
    try:
        rows = list(reader)
    except csv.Error as exc:  # e.g. a field over the csv module's size limit
        raise AlscaleError(f"labels {path} line {reader.line_num}: not CSV ({exc})") from None
    if not rows or "row_id" not in rows[0] or "label" not in rows[0]:
        raise AlscaleError(f"labels {path}: the header must name 'row_id' and 'label' columns; got "
                           f"{short_repr(rows[0]) if rows else 'an empty file'}")
    i, j = rows[0].index("row_id"), rows[0].index("label")
    out = []
    for n, row in enumerate(rows[1:], start=2):
        if not row:
            continue
        if len(row) <= max(i, j):
            raise AlscaleError(f"labels {path} line {n}: {len(row)} fields, expected row_id and label")
        out.append((row[i], row[j], f"line {n}"))
    return out


def _jsonl_labels(path: Path, text: str) -> list[tuple[Any, Any, str]]:
    out = []
    for n, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        try:
            rec = json.loads(line)
        except json.JSONDecodeError as exc:
            raise AlscaleError(f"labels {path} line {n}: not JSON ({exc.msg})") from None
        except RecursionError:
            raise AlscaleError(f"labels {path} line {n}: JSON nested too deeply") from None
        if not isinstance(rec, dict) or "row_id" not in rec or "label" not in rec:
            raise AlscaleError(f"labels {path} line {n}: expected an object with row_id and label")
        out.append((rec["row_id"], rec["label"], f"line {n}"))
    return out


def _labelstudio_labels(path: Path, text: str) -> list[tuple[Any, Any, str]]:
    """A Label Studio JSON export: each labelled task's latest annotation that was not cancelled."""
    try:
        tasks = json.loads(text)
    except json.JSONDecodeError as exc:
        raise AlscaleError(f"labels {path}: not JSON ({exc.msg} at line {exc.lineno}); give a Label Studio "
                           "JSON export") from None
    except RecursionError:
        raise AlscaleError(f"labels {path}: JSON nested too deeply; give a Label Studio JSON export") from None
    if not isinstance(tasks, list):
        raise AlscaleError(f"labels {path}: a Label Studio export is a JSON list of tasks")
    out = []
    for n, task in enumerate(tasks):
        where = f"task {short_repr(task.get('id', n), 40) if isinstance(task, dict) else n}"
        data = task.get("data", {}) if isinstance(task, dict) else {}
        if "row_id" not in data:
            raise AlscaleError(f"labels {path} {where}: data.row_id is missing; export tasks made by "
                               "`alscale labels export --format labelstudio`")
        anns = [a for a in task.get("annotations", []) if not a.get("was_cancelled")]
        if not anns:
            continue  # not labelled yet
        ann = max(anns, key=lambda a: (str(a.get("updated_at", "")), a.get("id", 0)))
        choices = [c for r in ann.get("result", []) for c in r.get("value", {}).get("choices", [])]
        if len(choices) != 1:
            raise AlscaleError(f"labels {path} {where}: {len(choices)} choices in its annotation; one class "
                               "per row")
        out.append((data["row_id"], choices[0], where))
    return out


def _class_index(value: Any, classes: Sequence[str] | None, n_classes: int | None) -> int | None:
    if classes is not None:
        names = [str(c) for c in classes]
        return names.index(str(value)) if str(value) in names else None
    try:
        v = int(str(value).strip())
    except ValueError:
        return None
    return v if v >= 0 and (n_classes is None or v < n_classes) else None


def import_labels(src: str | Path, ledger: str | Path, *, pool: str, fmt: str | None = None,
                  classes: Sequence[str] | None = None, n_classes: int | None = None,
                  round: int | None = None) -> dict[str, Any]:
    """Append the labels in ``src`` to the ledger at ``ledger`` (see the module docstring).

    Returns ``{"added": n, "already": n, "round": r, "file": path or None}``.
    """
    from alscale.loop.ledger import Ledger

    src = Path(src)
    fmt = _format_of(src, fmt)
    records = _read_labels(src, fmt)
    pool_ids = _pool_row_ids(pool)
    pool_sorted = np.sort(pool_ids)
    seen: dict[int, tuple[int, str]] = {}
    for raw_id, raw_label, where in records:
        try:
            rid = int(str(raw_id).strip())
        except ValueError:
            raise AlscaleError(f"labels {src} {where}: row_id {short_repr(raw_id)} is not an integer") from None
        k = np.searchsorted(pool_sorted, rid)
        if k >= pool_sorted.size or pool_sorted[k] != rid:
            raise AlscaleError(f"labels {src} {where}: row_id {rid} is not in pool {pool}; labels must name rows of "
                               "the pool the selection came from")
        label = _class_index(raw_label, classes, n_classes)
        if label is None:
            allowed = (", ".join(map(str, classes)) if classes is not None else
                       f"integers 0..{n_classes - 1}" if n_classes else "integers >= 0")
            raise AlscaleError(f"labels {src} {where}: label {short_repr(raw_label)} of row_id {rid} "
                               f"is not a class ({allowed})")
        if rid in seen and seen[rid][0] != label:
            raise AlscaleError(f"labels {src} {where}: row_id {rid} is labelled {label} here and {seen[rid][0]} at "
                               f"{seen[rid][1]}; resolve the conflict in the file")
        seen.setdefault(rid, (label, where))
    led = Ledger(ledger)
    have = dict(zip(led.row_ids.tolist(), led.labels.tolist()))
    new_ids, new_labels, already = [], [], 0
    for rid, (label, where) in seen.items():
        if rid in have:
            if have[rid] != label:
                raise AlscaleError(f"labels {src} {where}: row_id {rid} is labelled {label} here but {have[rid]} in "
                                   f"ledger {ledger}; a row is labelled once (fix the file, or keep the ledger's)")
            already += 1
            continue
        new_ids.append(rid)
        new_labels.append(label)
    rnd = (max(led.rounds) + 1 if led.rounds else 0) if round is None else int(round)
    written = None
    if new_ids:
        try:
            written = led.append(np.asarray(new_ids, np.int64), np.asarray(new_labels, np.int64), rnd,
                                 source=str(src))
        except FileExistsError:
            raise AlscaleError(f"ledger {ledger}: round {rnd} was appended by another import meanwhile; run this "
                               "import again") from None
    logger.info("labels %s: %d added to %s (round %d), %d already there", src, len(new_ids), ledger, rnd, already)
    return {"added": len(new_ids), "already": already, "round": rnd, "file": None if written is None else str(written)}
