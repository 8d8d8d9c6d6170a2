"""Oracles: whoever answers "what is the label of these rows?".

The loop and the stream talk to an :class:`Oracle`: :class:`SimulatedOracle` reveals the
pool's ``label`` column (benchmarks and reproductions of published curves);
:class:`CommandOracle` asks a program (e.g. an LLM client) over stdin/stdout;
:class:`HumanOracle` writes the batch for annotators and waits for ``alscale labels import``;
:class:`HybridOracle` sends the rows a model is sure about to a machine oracle and the rest
to people, and records the routing.
"""

from __future__ import annotations

import logging
import urllib.request
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, Protocol

import numpy as np

from alscale.errors import AlscaleError, short_repr

logger = logging.getLogger(__name__)


class Oracle(Protocol):
    name: str

    def label(self, row_ids_B: np.ndarray) -> np.ndarray:
        """Labels (int64 ``[B]``) of ``row_ids_B``, in the same order."""
        ...


class SimulatedOracle:
    """Answers from known labels (a pool's ``label`` column)."""

    name = "simulated"

    def __init__(self, row_ids_N: np.ndarray, labels_N: np.ndarray, *, source: str = "pool") -> None:
        row_ids_N = np.asarray(row_ids_N, dtype=np.int64)
        labels_N = np.asarray(labels_N, dtype=np.int64)
        if row_ids_N.shape != labels_N.shape:
            raise AlscaleError(f"simulated oracle: {row_ids_N.size} row_ids but {labels_N.size} labels")
        self._order = np.argsort(row_ids_N, kind="stable")
        self._sorted_ids = row_ids_N[self._order]
        self._labels = labels_N
        self.source = source
        self.queries = 0

    def label(self, row_ids_B: np.ndarray) -> np.ndarray:
        row_ids_B = np.asarray(row_ids_B, dtype=np.int64)
        pos = np.searchsorted(self._sorted_ids, row_ids_B)
        pos = np.minimum(pos, self._sorted_ids.size - 1)
        missing = self._sorted_ids[pos] != row_ids_B if self._sorted_ids.size else np.ones(row_ids_B.size, bool)
        if missing.any():
            raise AlscaleError(f"simulated oracle ({self.source}) has no label for row_id "
                               f"{int(row_ids_B[np.argmax(missing)])}")
        self.queries += int(row_ids_B.size)
        return self._labels[self._order[pos]]


def _check_answers(where: str, row_ids_B: np.ndarray, answers: dict[int, Any], n_classes: int | None) -> np.ndarray:
    """The labels of ``row_ids_B`` from ``answers`` (row_id -> label), checked."""
    out = np.empty(row_ids_B.shape[0], dtype=np.int64)
    for i, rid in enumerate(row_ids_B.tolist()):
        if rid not in answers:
            raise AlscaleError(f"{where} gave no label for row_id {rid}; it must answer every row it is sent")
        v = answers[rid]
        if isinstance(v, bool) or not isinstance(v, (int, np.integer)) or v < 0 or (n_classes is not None
                                                                                     and v >= n_classes):
            allowed = f"0..{n_classes - 1}" if n_classes else ">= 0"
            raise AlscaleError(f"{where} labelled row_id {rid} {short_repr(v)}; labels are class indices {allowed}")
        out[i] = int(v)
    return out


class CommandOracle:
    """A program that labels rows (e.g. an LLM client): it gets one JSON object per line on
    stdin — ``{"row_id": .., **fields}`` with the fields ``describe`` gives for the row (for
    instance its ``path``) — and must print ``{"row_id": .., "label": ..}`` per row on stdout.

    ``argv`` is run without a shell (a list of strings from the job; never a string that a
    shell would parse), once per batch, under ``timeout_s``; a non-zero exit, a timeout, a
    missing, duplicate or out-of-range label is a clear error naming the program.
    """

    name = "command"

    def __init__(self, argv: Sequence[str], *, n_classes: int | None = None, timeout_s: float = 600.0,
                 describe: Callable[[np.ndarray], list[dict[str, Any]]] | None = None) -> None:
        if isinstance(argv, str) or not argv or not all(isinstance(a, str) and a for a in argv):
            raise AlscaleError(f"command oracle: give the program as a list of arguments; got {short_repr(argv)}")
        self.argv = list(argv)
        self.n_classes = n_classes
        self.timeout_s = float(timeout_s)
        self.describe = describe
        self.queries = 0

    def label(self, row_ids_B: np.ndarray) -> np.ndarray:
        import json
        import subprocess

        row_ids_B = np.asarray(row_ids_B, dtype=np.int64)
        extra = self.describe(row_ids_B) if self.describe else [{} for _ in range(row_ids_B.size)]
        payload = "".join(json.dumps({"row_id": int(r), **e}) + "\n" for r, e in zip(row_ids_B.tolist(), extra))
        where = f"command oracle {self.argv[0]}"
        try:
            proc = subprocess.run(self.argv, input=payload, capture_output=True, text=True, timeout=self.timeout_s)
        except FileNotFoundError:
            raise AlscaleError(f"{where}: no such program; give its path in the oracle's command") from None
        except subprocess.TimeoutExpired:
            raise AlscaleError(f"{where} did not answer {row_ids_B.size} rows within {self.timeout_s:.0f} s") from None
        if proc.returncode != 0:
            tail = (proc.stderr.strip().splitlines() or [""])[-1][:200]
            raise AlscaleError(f"{where} exited with code {proc.returncode}: {tail}")
        answers: dict[int, Any] = {}
        for n, line in enumerate(proc.stdout.splitlines(), start=1):
            if not line.strip():
                continue
            try:
                rec = json.loads(line)
                rid, lab = int(rec["row_id"]), rec["label"]
            except (json.JSONDecodeError, KeyError, TypeError, ValueError):
                raise AlscaleError(f"{where} printed {short_repr(line[:80])} on line {n}; expected "
                                   '{"row_id": .., "label": ..} per line') from None
            if rid in answers and answers[rid] != lab:
                raise AlscaleError(f"{where} labelled row_id {rid} twice, differently")
            answers[rid] = lab
        self.queries += int(row_ids_B.size)
        return _check_answers(where, row_ids_B, answers, self.n_classes)


class HumanOracle:
    """People: the batch is written for annotators (``pending-<n>.jsonl`` in ``inbox``, one
    ``{"row_id": ..}`` per line, plus ``describe``'s fields), then the oracle waits until every
    row of it is in the ledger at ``ledger`` (``alscale labels import`` appends there), polling
    every ``poll_s`` seconds up to ``timeout_s``."""

    name = "human"

    def __init__(self, inbox: str | Path, ledger: str | Path, *, timeout_s: float = 7 * 24 * 3600.0,
                 poll_s: float = 5.0, describe: Callable[[np.ndarray], list[dict[str, Any]]] | None = None) -> None:
        self.inbox = Path(inbox)
        self.ledger = Path(ledger)
        self.timeout_s, self.poll_s = float(timeout_s), float(poll_s)
        self.describe = describe
        self.batches = 0
        self.queries = 0

    def label(self, row_ids_B: np.ndarray) -> np.ndarray:
        import json
        import time

        from alscale.fsio import atomic_write
        from alscale.loop.ledger import Ledger

        row_ids_B = np.asarray(row_ids_B, dtype=np.int64)
        self.inbox.mkdir(parents=True, exist_ok=True)
        extra = self.describe(row_ids_B) if self.describe else [{} for _ in range(row_ids_B.size)]
        batch = self.inbox / f"pending-{self.batches:05d}.jsonl"
        atomic_write(batch, "".join(json.dumps({"row_id": int(r), **e}) + "\n"
                                         for r, e in zip(row_ids_B.tolist(), extra)))
        self.batches += 1
        logger.info("human oracle: %d rows to label in %s; waiting for them in ledger %s", row_ids_B.size, batch,
                    self.ledger)
        deadline = time.monotonic() + self.timeout_s
        while True:
            if self.ledger.exists():
                led = Ledger(self.ledger)
                answers = dict(zip(led.row_ids.tolist(), led.labels.tolist()))
                if all(r in answers for r in row_ids_B.tolist()):
                    self.queries += int(row_ids_B.size)
                    return _check_answers(f"ledger {self.ledger}", row_ids_B, answers, None)
            if time.monotonic() > deadline:
                raise AlscaleError(f"human oracle: the labels of {batch} were not imported into {self.ledger} within "
                                   f"{self.timeout_s:.0f} s")
            time.sleep(self.poll_s)


class HybridOracle:
    """Rows with an uncertainty score below ``threshold`` go to the ``machine`` oracle (e.g. an
    LLM through :class:`CommandOracle`), the rest to ``people``; every routing decision is kept
    in :attr:`routes` (row_id, oracle name, score)."""

    name = "hybrid"

    def __init__(self, machine: Oracle, people: Oracle, threshold: float) -> None:
        self.machine, self.people, self.threshold = machine, people, float(threshold)
        self.routes: list[tuple[int, str, float]] = []

    def label_scored(self, row_ids_B: np.ndarray, scores_B: np.ndarray) -> np.ndarray:
        row_ids_B = np.asarray(row_ids_B, dtype=np.int64)
        scores_B = np.asarray(scores_B, dtype=np.float64)
        to_machine = scores_B < self.threshold
        out = np.empty(row_ids_B.shape[0], dtype=np.int64)
        if to_machine.any():
            out[to_machine] = self.machine.label(row_ids_B[to_machine])
        if (~to_machine).any():
            out[~to_machine] = self.people.label(row_ids_B[~to_machine])
        self.routes += [(int(r), (self.machine if m else self.people).name, float(s))
                        for r, m, s in zip(row_ids_B.tolist(), to_machine.tolist(), scores_B.tolist())]
        return out

    def label(self, row_ids_B: np.ndarray) -> np.ndarray:
        raise AlscaleError("the hybrid oracle routes by uncertainty: call label_scored(row_ids, scores)")


class _RefuseRedirects(urllib.request.HTTPRedirectHandler):
    """Every redirect is an error naming where it pointed (the loopback check covers the
    configured URL only, and a 307/308 would re-send the POST body to any host)."""

    def __init__(self, where: str) -> None:
        self.where = where

    def redirect_request(self, req: Any, fp: Any, code: int, msg: str, headers: Any, newurl: str) -> None:
        raise AlscaleError(f"{self.where}: the service answered {code} {msg} to {short_repr(newurl)}; "
                           "redirects are refused (the oracle must answer at the configured URL)")


class HttpOracle:
    """A labelling service on this machine (loopback only: ``http://127.0.0.1:PORT/...`` or
    ``http://localhost:PORT/...``): one POST per batch with a JSON list of ``{"row_id": ..}``
    objects; the reply is a JSON list of ``{"row_id": .., "label": ..}``."""

    name = "http"

    def __init__(self, url: str, *, n_classes: int | None = None, timeout_s: float = 600.0,
                 describe: Callable[[np.ndarray], list[dict[str, Any]]] | None = None) -> None:
        from urllib.parse import urlparse

        u = urlparse(url)
        if u.scheme != "http" or u.hostname not in ("127.0.0.1", "localhost", "::1"):
            raise AlscaleError(f"http oracle {url}: only a service on this machine (http://127.0.0.1:PORT/...) is "
                               "allowed; put a local client in front of remote services")
        self.url, self.n_classes, self.timeout_s, self.describe = url, n_classes, float(timeout_s), describe
        self.queries = 0

    def label(self, row_ids_B: np.ndarray) -> np.ndarray:
        import json
        import urllib.error
        import urllib.request

        row_ids_B = np.asarray(row_ids_B, dtype=np.int64)
        extra = self.describe(row_ids_B) if self.describe else [{} for _ in range(row_ids_B.size)]
        body = json.dumps([{"row_id": int(r), **e} for r, e in zip(row_ids_B.tolist(), extra)]).encode()
        req = urllib.request.Request(self.url, data=body, headers={"Content-Type": "application/json"})
        where = f"http oracle {self.url}"
        # No redirects (a 307/308 would re-send the rows to any host) and no proxies (a
        # loopback URL must not go through http_proxy): the service on this machine answers.
        opener = urllib.request.build_opener(urllib.request.ProxyHandler({}), _RefuseRedirects(where))
        try:
            with opener.open(req, timeout=self.timeout_s) as resp:
                reply = json.loads(resp.read().decode())
        except (urllib.error.URLError, OSError) as exc:
            raise AlscaleError(f"{where}: no answer ({exc}); is the service running?") from None
        except json.JSONDecodeError:
            raise AlscaleError(f"{where}: the reply is not JSON") from None
        if not isinstance(reply, list):
            raise AlscaleError(f"{where}: the reply must be a JSON list of {{row_id, label}} objects")
        answers = {}
        for rec in reply:
            if not isinstance(rec, dict) or "row_id" not in rec or "label" not in rec:
                raise AlscaleError(f"{where}: reply item {short_repr(rec)} is not a {{row_id, label}} object")
            answers[int(rec["row_id"])] = rec["label"]
        self.queries += int(row_ids_B.size)
        return _check_answers(where, row_ids_B, answers, self.n_classes)


ORACLE_KINDS = ("simulated", "command", "http", "human", "hybrid")


def make_oracle(cfg: dict[str, Any] | None, *, simulated: Callable[[], Oracle], n_classes: int | None,
                out_dir: Path, describe: Callable[[np.ndarray], list[dict[str, Any]]] | None = None) -> Any:
    """An oracle from a job's ``oracle:`` mapping (``kind`` one of :data:`ORACLE_KINDS`).

    ``simulated`` builds the simulated oracle (the pool's labels); ``out_dir`` holds a human
    oracle's ``inbox/`` and ``human-ledger/`` unless the mapping names them.
    """
    cfg = dict(cfg or {"kind": "simulated"})
    kind = cfg.pop("kind", "simulated")
    allowed = {"simulated": set(), "command": {"command", "timeout_s"}, "http": {"url", "timeout_s"},
               "human": {"inbox", "ledger", "poll_s", "timeout_s"}, "hybrid": {"threshold", "machine", "people"}}
    if kind not in allowed:
        raise AlscaleError(f"oracle.kind must be one of {', '.join(ORACLE_KINDS)}; got {short_repr(kind)}")
    unknown = sorted(set(cfg) - allowed[kind])
    if unknown:
        raise AlscaleError(f"oracle ({kind}): unknown field(s) {', '.join(unknown)}; allowed: "
                           f"{', '.join(sorted(allowed[kind])) or 'none'}")
    if kind == "simulated":
        return simulated()
    if kind == "command":
        return CommandOracle(cfg.get("command") or [], n_classes=n_classes, timeout_s=cfg.get("timeout_s", 600.0),
                             describe=describe)
    if kind == "http":
        return HttpOracle(str(cfg.get("url")), n_classes=n_classes, timeout_s=cfg.get("timeout_s", 600.0),
                          describe=describe)
    if kind == "human":
        return HumanOracle(cfg.get("inbox") or out_dir / "inbox", cfg.get("ledger") or out_dir / "human-ledger",
                           poll_s=cfg.get("poll_s", 5.0), timeout_s=cfg.get("timeout_s", 7 * 24 * 3600.0),
                           describe=describe)
    if not isinstance(cfg.get("threshold"), (int, float)) or isinstance(cfg.get("threshold"), bool):
        raise AlscaleError(f"oracle (hybrid): threshold must be a number (rows scoring below it go to the machine "
                           f"oracle); got {short_repr(cfg.get('threshold'))}")
    machine = make_oracle(cfg.get("machine"), simulated=simulated, n_classes=n_classes, out_dir=out_dir,
                          describe=describe)
    people = make_oracle(cfg.get("people") or {"kind": "human"}, simulated=simulated, n_classes=n_classes,
                         out_dir=out_dir, describe=describe)
    return HybridOracle(machine, people, float(cfg["threshold"]))
