"""Hostile input, full disks, read-only places, duplicate keys, lock races, redirects,
permissions and the trust model of job files (issue 18, items 1-8).

The full-disk and read-only tests mount a small tmpfs (they need root and CAP_SYS_ADMIN, as
in the project's container; elsewhere they skip and the injected-failure tests below still
run).
"""

from __future__ import annotations

import contextlib
import json
import math
import multiprocessing
import os
import subprocess
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, HTTPServer
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest
import yaml

from alscale.cli import main
from alscale.errors import AlscaleError, JobError, OutputWriteError, short_repr
from alscale.jobspec import load_job, validate_job
from alscale.pool import pool_table, write_table
from tests.conftest import log_softmax

N = 400


@pytest.fixture(scope="module")
def pool(tmp_path_factory):
    rng = np.random.default_rng(0)
    path = tmp_path_factory.mktemp("pool") / "lp.arrow"
    write_table(pool_table(np.arange(N, dtype=np.int64), log_probs_N_K_C=log_softmax(rng.normal(size=(N, 2, 4)))),
                str(path))
    return str(path)


def _job_file(tmp_path: Path, pool: str, out: Path, **extra) -> Path:
    job = {"pool": {"path": pool}, "strategy": {"name": "entropy", "budget": 50},
           "runtime": {"executor": "local", "shards": 2}, "output": str(out), **extra}
    path = tmp_path / "job.yaml"
    path.write_text(yaml.safe_dump(job))
    return path


def _cli(*args: str, **kw) -> subprocess.CompletedProcess:
    return subprocess.run([str(Path(sys.executable).parent / "alscale"), *args], capture_output=True, text=True,
                          timeout=180, **kw)


def _alias_bomb(levels: int) -> str:
    """A few hundred bytes that expand to 9**levels values (the 'billion laughs'), as an
    option value."""
    defs = ["  x0: &a0 [lol, lol, lol, lol, lol, lol, lol, lol, lol]"]
    defs += [f"  x{i}: &a{i} [" + ", ".join([f"*a{i - 1}"] * 9) + "]" for i in range(1, levels + 1)]
    return ("defs:\n" + "\n".join(defs) + "\npool: {path: p.arrow}\n"
            f"strategy: {{name: power, budget: 5, options: {{beta: *a{levels}}}}}\n")


# -- 1. bounded error values -------------------------------------------------------------

def test_short_repr_is_bounded_and_exact_for_short_values():
    for v in ("two", 1.5, None, [1, 2], {"b": 1, "a": [1, 2]}, (1,)):
        assert short_repr(v) == repr(v)
    nested: list = [1] * 9
    for _ in range(40):  # 9**40 leaves: repr would never finish
        nested = [nested] * 9
    for v in ("x" * 10**6, list(range(10**6)), {i: i for i in range(10**5)}, nested, 7 ** 999):
        text = short_repr(v)
        assert len(text) <= 100 and "\n" not in text


def test_alias_bomb_is_one_short_line_with_bounded_memory(tmp_path):
    """Eight levels of anchors: 43 million values. ``alscale validate`` answers in one short
    line, exit 2, in a process whose address space is capped (a MemoryError traceback or a
    40 MB "line" before)."""
    job = tmp_path / "bomb.yaml"
    job.write_text(_alias_bomb(8))
    assert job.stat().st_size < 1000
    # The child's own high-water mark (VmHWM): its ru_maxrss would start at the pytest
    # process's peak, which the kernel carries over across fork/vfork and exec.
    code = ("import resource, sys; resource.setrlimit(resource.RLIMIT_AS, (6 << 30, 6 << 30)); "
            "from alscale.cli import main; rc = main(['validate', sys.argv[1]]); "
            "print(next(ln.split()[1] for ln in open('/proc/self/status') if ln.startswith('VmHWM:'))); "
            "sys.exit(rc)")
    r = subprocess.run([sys.executable, "-c", code, str(job)], capture_output=True, text=True, timeout=120)
    assert r.returncode == 2, r.stderr[-2000:]
    assert r.stderr.count("\n") == 1 and len(r.stderr) < 400, r.stderr[:2000]
    assert "expands to more than 100,000 elements" in r.stderr and "line " in r.stderr
    peak_kib = int(r.stdout.split()[-1])
    assert peak_kib < 1_500_000, f"peak RSS {peak_kib} KiB"


@pytest.mark.parametrize("where", ["strategy.options.beta", "runtime.shards.x", "loop.trials.x"])
def test_alias_bombs_are_refused_in_every_section(tmp_path, where):
    section, field, key = where.split(".")
    defs = "defs:\n  x0: &a0 [lol, lol, lol, lol, lol, lol, lol, lol, lol]\n" + "".join(
        f"  x{i}: &a{i} [" + ", ".join([f"*a{i - 1}"] * 9) + "]\n" for i in range(1, 7))
    path = tmp_path / "job.yaml"
    path.write_text(defs + f"pool: {{path: p.arrow}}\n{section}: {{{field}: {{{key}: *a6}}}}\n")
    with pytest.raises(JobError, match="refused YAML at line .*expands to more than"):
        load_job(path)
    with pytest.raises(JobError, match="expands to more than"):  # and through an override
        load_job(_plain(tmp_path), [f"{section}.{field}=" + "[&a [1,1,1,1,1,1,1,1,1,1], "
                                    + ", ".join(f"&b{i} [{', '.join(['*a' if i == 0 else f'*b{i - 1}'] * 10)}]"
                                                for i in range(6)) + "]"])


def _plain(tmp_path: Path) -> Path:
    p = tmp_path / "plain.yaml"
    p.write_text("pool: {path: p.arrow}\nstrategy: {name: entropy, budget: 5}\n")
    return p


def test_benign_aliases_still_work(tmp_path):
    path = tmp_path / "job.yaml"
    path.write_text("pool: {path: p.arrow}\nstrategy: &s {name: power, budget: 5, options: {beta: 2.0}}\n"
                    "loop: {strategies: [*s, *s]}\n")
    job = load_job(path)
    assert job.strategy.options["beta"] == 2.0 and len(job.loop["strategies"]) == 2


def test_job_file_size_and_nesting_are_bounded(tmp_path):
    big = tmp_path / "big.yaml"
    big.write_text("pool: {path: p.arrow}\n# " + "x" * (2 << 20) + "\n")
    with pytest.raises(JobError, match=r"larger than the 1,048,576 bytes a job file may have \(2,097,1"):
        load_job(big)
    deep = tmp_path / "deep.yaml"
    deep.write_text("pool: {path: p.arrow}\nseed: " + "[" * 5000 + "]" * 5000 + "\n")
    with pytest.raises(JobError, match="refused YAML at line 2.*nesting deeper than 64 levels"):
        load_job(deep)


def test_huge_values_give_short_messages_everywhere(tmp_path):
    from alscale.strategies.registry import check_options, get_strategy
    from alscale.workflow.stream import parse_stream

    huge = list(range(10**5))
    for call in (lambda: check_options("power", {"beta": huge}),
                 lambda: check_options("power", {f"k{i}": 1 for i in range(1000)}),
                 lambda: get_strategy("x" * 10**6),
                 lambda: validate_job({"pool": {"path": "p"}, "strategy": {"name": "entropy", "budget": huge},
                                       "runtime": {"shards": huge, "executor": huge}, "seed": huge,
                                       **{f"junk{i}": 1 for i in range(500)}}),
                 lambda: parse_stream(_small_job(), {"budget": huge, "pacing": huge, "threshold": huge}),
                 ):
        with pytest.raises(AlscaleError) as info:
            call()
        assert len(str(info.value)) < 2500, str(info.value)[:300]


def _small_job():
    return validate_job({"pool": {"path": "p"}, "strategy": {"name": "entropy", "budget": 5}})


def test_loop_section_values_are_bounded():
    from alscale.loop.spec import parse_loop

    job = validate_job({"pool": {"path": "p"}, "strategy": {"name": "entropy", "budget": 5},
                        "loop": {"test": "t.arrow", "trials": list(range(10**5)), "strategies": ["x" * 10**5]}})
    with pytest.raises(AlscaleError) as info:
        parse_loop(job)
    assert "loop.trials must be an integer >= 1" in str(info.value) and len(str(info.value)) < 2500


def test_labels_import_values_are_bounded(tmp_path, pool):
    from alscale.workflow.labels import import_labels

    cases = {"a.csv": ("row_id,label\n" + "9" * 100_000 + "x,1\n", "is not an integer"),
             "b.csv": ("row_id,label\n" + "9" * 200_000 + "x,1\n", "line 2: not CSV (field larger than"),
             "c.jsonl": (json.dumps({"row_id": 1, "label": ["x"] * 100_000}) + "\n", "is not a class"),
             "d.jsonl": ("[" * 100_000 + "]" * 100_000 + "\n", "line 1: JSON nested too deeply")}
    for name, (text, message) in cases.items():
        (tmp_path / name).write_text(text)
        with pytest.raises(AlscaleError) as info:
            import_labels(str(tmp_path / name), str(tmp_path / "ledger"), pool=pool, n_classes=4)
        assert message in str(info.value) and len(str(info.value)) < 600, (name, str(info.value)[:300])


def test_labels_files_are_size_capped_before_parsing(tmp_path, pool):
    """A labels file over the cap is refused in one line before it is parsed (a sparse file of
    the default cap + 1 byte: no disk, and the refusal reads at most cap + 1 bytes); nothing
    reaches the ledger; --max-bytes sets the cap."""
    from alscale.workflow.labels import MAX_LABELS_BYTES, import_labels

    huge = tmp_path / "huge.csv"
    with open(huge, "wb") as fh:
        fh.truncate(MAX_LABELS_BYTES + 1)
    with pytest.raises(AlscaleError) as info:
        import_labels(str(huge), str(tmp_path / "ledger"), pool=pool, n_classes=4)
    assert "64.0 MiB cap on a labels file" in str(info.value) and "--max-bytes" in str(info.value)
    assert not (tmp_path / "ledger").exists()
    small = tmp_path / "labels.csv"
    small.write_text("row_id,label\n" + "".join(f"{i},{i % 4}\n" for i in range(200)))
    r = _cli("labels", "import", str(small), "--ledger", str(tmp_path / "ledger"), "--pool", pool, "--num-classes",
             "4", "--max-bytes", "1KiB")
    assert r.returncode == 2 and r.stderr.count("\n") == 1, r.stderr
    assert r.stderr.startswith(f"alscale: error: labels {small}: 1.1 KiB is over the") and "--max-bytes" in r.stderr
    assert not (tmp_path / "ledger").exists()
    r = _cli("labels", "import", str(small), "--ledger", str(tmp_path / "ledger"), "--pool", pool, "--num-classes",
             "4", "--max-bytes", "lots")
    assert r.returncode == 2 and "--max-bytes must be a size" in r.stderr
    r = _cli("labels", "import", str(small), "--ledger", str(tmp_path / "ledger"), "--pool", pool, "--num-classes",
             "4", "--max-bytes", "2KiB")
    assert r.returncode == 0 and "imported 200 labels" in r.stdout, r.stderr


# -- 2. full disk ---------------------------------------------------------------------------

@contextlib.contextmanager
def _tmpfs(where: Path, size: str):
    where.mkdir(parents=True, exist_ok=True)
    r = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(where)], capture_output=True)
    if r.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here ({r.stderr.decode().strip()}); needs root")
    try:
        yield where
    finally:
        subprocess.run(["umount", "-l", str(where)], capture_output=True)


def _pages(n_bytes: int) -> int:
    return math.ceil(n_bytes / 4096)


def test_a_full_disk_fails_in_one_line_and_leaves_no_unfinished_output(tmp_path, pool):
    """A real full filesystem (a 1 MiB tmpfs): first so full the selection cannot be written,
    then with room for exactly the lock file and the selection, so the manifest fails. Each
    time: one line naming the path and the cause, exit 1, nothing half-written left, and the
    next run (with space) is not refused as "already holds a selection"."""
    ref = tmp_path / "ref"
    assert main(["run", str(_job_file(tmp_path, pool, ref)), "--no-progress"]) == 0
    sel_pages = _pages((ref / "selection.parquet").stat().st_size)
    assert _pages((ref / "manifest.json").stat().st_size) >= 1
    with _tmpfs(tmp_path / "disk", "1m") as disk:
        out = disk / "out"
        job = _job_file(tmp_path, pool, out)
        for free_pages, failing in ((1, "selection.parquet"), (1 + sel_pages, "manifest.json")):
            filler = disk / "filler"
            filler.unlink(missing_ok=True)
            filler.write_bytes(b"\0" * ((256 - free_pages) * 4096))
            r = _cli("run", str(job), "--no-progress")
            assert r.returncode == 1, r.stderr[-3000:]
            assert r.stderr.count("\n") == 1 and "Traceback" not in r.stderr, r.stderr
            assert f"cannot write {out}/{failing}: No space left on device" in r.stderr, r.stderr
            left = sorted(p.name for p in out.iterdir()) if out.exists() else []
            assert left == [], left  # no selection without its manifest, no temporary files, no lock
        filler.unlink()
        r = _cli("run", str(job), "--no-progress")  # space again: runs, without --force
        assert r.returncode == 0, r.stderr
        assert pq.read_table(out / "selection.parquet").equals(pq.read_table(ref / "selection.parquet"))


def test_a_failed_manifest_write_rolls_back_the_selection(tmp_path, pool, monkeypatch):
    """The same through an injected ENOSPC in the one write helper (no mount needed)."""
    import errno

    import alscale.fsio as fsio
    from alscale.runtime.coordinator import run_job

    out = tmp_path / "out"
    job = load_job(_job_file(tmp_path, pool, out))
    real = fsio.AtomicFile.commit

    def commit(self):
        if self.path.endswith("manifest.json"):
            self.abort()
            raise fsio.write_error(self.display, OSError(errno.ENOSPC, os.strerror(errno.ENOSPC)))
        return real(self)

    monkeypatch.setattr(fsio.AtomicFile, "commit", commit)
    with pytest.raises(OutputWriteError, match=r"cannot write .*manifest.json: No space left on device \(ENOSPC\)"):
        run_job(job, progress=False)
    assert sorted(p.name for p in out.iterdir()) if out.exists() else [] == []
    monkeypatch.setattr(fsio.AtomicFile, "commit", real)
    run_job(job, progress=False)  # not "already holds a selection"
    assert (out / "manifest.json").exists()


def test_a_selection_without_manifest_is_not_a_finished_output(tmp_path, pool):
    out = tmp_path / "out"
    job = _job_file(tmp_path, pool, out)
    assert main(["run", str(job), "--no-progress"]) == 0
    (out / "manifest.json").unlink()
    assert main(["run", str(job), "--no-progress"]) == 0  # rewrites it, no --force needed
    assert (out / "manifest.json").exists()


# -- 3. read-only output location ------------------------------------------------------------

def test_a_read_only_output_location_is_one_line(tmp_path, pool):
    """A tmpfs remounted read-only (root ignores chmod)."""
    with _tmpfs(tmp_path / "ro", "1m") as ro:
        (ro / "existing").mkdir()
        subprocess.run(["mount", "-o", "remount,ro", str(ro)], check=True)
        for out in (ro / "new" / "out", ro / "existing"):
            r = _cli("run", str(_job_file(tmp_path, pool, out)), "--no-progress")
            assert r.returncode == 1 and r.stderr.count("\n") == 1 and "Traceback" not in r.stderr, r.stderr
            assert f"cannot write {out}: Read-only file system (EROFS); choose a writable --out" in r.stderr


def test_an_unwritable_ledger_location_is_one_line(tmp_path, pool):
    with _tmpfs(tmp_path / "ro", "1m") as ro:
        subprocess.run(["mount", "-o", "remount,ro", str(ro)], check=True)
        src = tmp_path / "l.csv"
        src.write_text("row_id,label\n1,0\n")
        r = _cli("labels", "import", str(src), "--ledger", str(ro / "ledger"), "--pool", pool, "--num-classes", "4")
        assert r.returncode == 1 and r.stderr.count("\n") == 1 and "Read-only file system" in r.stderr, r.stderr


# -- 4. duplicate keys ------------------------------------------------------------------------

@pytest.mark.parametrize(("text", "message"), [
    ("pool: {path: p.arrow}\nstrategy: {name: entropy, budget: 5}\nseed: 1\nstrategy: {name: bald, budget: 5}\n",
     "duplicate key 'strategy' (lines 2 and 4)"),
    ("pool: {path: p.arrow}\nstrategy:\n  name: entropy\n  budget: 5\n  name: bald\n",
     "duplicate key 'name' (lines 3 and 5)"),
    ("pool: {path: p.arrow}\nstrategy: {name: entropy, budget: 5}\nloop:\n  trials: 1\n  trials: 2\n",
     "duplicate key 'trials' (lines 4 and 5)"),
    ("pool: {path: p.arrow}\nstrategy: {name: entropy, budget: 5}\nstream: {budget: 0.1, budget: 0.2}\n",
     "duplicate key 'budget' (twice on line 3)"),
])
def test_duplicate_keys_are_an_error_naming_both_lines(tmp_path, text, message):
    path = tmp_path / "job.yaml"
    path.write_text(text)
    with pytest.raises(JobError, match=rf"job {path}: refused YAML at line \d+, column \d+: " + message.replace(
            "(", r"\(").replace(")", r"\)")):
        load_job(path)


def test_merge_keys_are_not_duplicates(tmp_path):
    path = tmp_path / "job.yaml"
    path.write_text("pool: {path: p.arrow}\nstrategy:\n  <<: {name: entropy, budget: 5}\n  budget: 7\n")
    assert load_job(path).strategy.budget == 7


# -- 5. the one lock ----------------------------------------------------------------------------

def _contend(out: str, start, results, release) -> None:
    from alscale.runtime.output import OutputLock

    lock = OutputLock(out)
    start.wait()
    try:
        lock.__enter__()
    except AlscaleError as exc:
        results.put(("lost", str(exc)))
        return
    results.put(("won", os.getpid()))
    release.wait(30)
    lock.__exit__(None, None, None)


@pytest.mark.parametrize("stale", [True, False])
def test_exactly_one_of_many_concurrent_jobs_takes_the_lock(tmp_path, stale):
    """Eight processes race for one output directory, over a stale lock left by a killed
    job (whose process is gone) or a fresh one; five rounds; each time exactly one wins."""
    ctx = multiprocessing.get_context("fork")
    out = tmp_path / "out"
    out.mkdir()
    for _ in range(5):
        if stale:
            dead = subprocess.Popen(["true"])
            dead.wait()
            (out / ".alscale.lock").write_text(f"{dead.pid} {os.uname().nodename} 2026-01-01T00:00:00Z\n")
        start, release, results = ctx.Barrier(8), ctx.Event(), ctx.Queue()
        procs = [ctx.Process(target=_contend, args=(str(out), start, results, release)) for _ in range(8)]
        for p in procs:
            p.start()
        got = [results.get(timeout=60) for _ in procs]
        release.set()
        for p in procs:
            p.join(30)
        winners = [g for g in got if g[0] == "won"]
        assert len(winners) == 1, got
        assert all("is in use by another alscale job" in g[1] for g in got if g[0] == "lost")
        assert not (out / ".alscale.lock").exists()


def test_release_removes_only_our_own_lock(tmp_path):
    from alscale.runtime.output import LOCK_FILE, OutputLock

    out = tmp_path / "out"
    lock = OutputLock(out).__enter__()
    theirs = "12345 otherhost 2026-01-01T00:00:00Z feedfacefeedface\n"
    (out / LOCK_FILE).unlink()
    (out / LOCK_FILE).write_text(theirs)  # someone else's lock file now (e.g. removed by hand and retaken)
    lock.__exit__(None, None, None)
    assert (out / LOCK_FILE).read_text() == theirs


def test_a_killed_holder_frees_the_lock_at_once(tmp_path):
    out = tmp_path / "out"
    holder = subprocess.Popen([sys.executable, "-c", "import sys, time; from alscale.fsio import DirLock; "
                               f"DirLock({str(out)!r}).acquire(); print('held', flush=True); time.sleep(60)"],
                              stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "held"
        from alscale.fsio import DirLock

        with pytest.raises(AlscaleError, match=rf"pid {holder.pid} on "):
            DirLock(out).acquire()
    finally:
        holder.kill()
        holder.wait()
    with DirLock(out) as lock:
        assert lock.held


def _append_same_rows(path: str, round_: int, start, results) -> None:
    from alscale.loop.ledger import Ledger

    ledger = Ledger(path)  # every writer opens the ledger before any of them appends
    start.wait()
    try:
        ledger.append(np.arange(10), np.zeros(10), round_, f"writer {round_}")
        results.put("ok")
    except (AlscaleError, FileExistsError) as exc:
        results.put(str(exc))


def test_concurrent_ledger_appends_never_label_a_row_twice(tmp_path):
    """Four processes that opened the same ledger append the same rows at rounds 1-4 at once:
    exactly one lands (the others see it under the lock and refuse), and the ledger opens."""
    from alscale.loop.ledger import Ledger

    ctx = multiprocessing.get_context("fork")
    path = str(tmp_path / "led")
    Ledger(path)
    start, results = ctx.Barrier(4), ctx.Queue()
    procs = [ctx.Process(target=_append_same_rows, args=(path, r, start, results)) for r in (1, 2, 3, 4)]
    for p in procs:
        p.start()
    got = [results.get(timeout=60) for _ in procs]
    for p in procs:
        p.join(30)
    assert got.count("ok") == 1, got
    assert all("already labelled" in g or "rounds only grow" in g for g in got if g != "ok"), got
    ledger = Ledger(path)
    assert len(ledger) == 10 and len(ledger.rounds) == 1


# -- 6. HTTP oracle redirects ----------------------------------------------------------------------

def _server(handler_cls):
    server = HTTPServer(("127.0.0.1", 0), handler_cls)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return server


@pytest.mark.parametrize("code", [301, 302, 307, 308])
def test_http_oracle_refuses_redirects(code):
    from alscale.loop.oracle import HttpOracle

    received: list[bytes] = []

    class Elsewhere(BaseHTTPRequestHandler):  # stands in for another host
        def do_POST(self):  # noqa: N802
            received.append(self.rfile.read(int(self.headers["Content-Length"])))
            body = json.dumps([{"row_id": 1, "label": 0}]).encode()
            self.send_response(200)
            self.end_headers()
            self.wfile.write(body)

        do_GET = do_POST  # noqa: N815

        def log_message(self, *a):
            pass

    other = _server(Elsewhere)

    class Redirect(BaseHTTPRequestHandler):
        def do_POST(self):  # noqa: N802
            self.rfile.read(int(self.headers["Content-Length"]))
            self.send_response(code)
            self.send_header("Location", f"http://127.0.0.2:{other.server_port}/steal")
            self.send_header("Content-Length", "0")
            self.end_headers()

        def log_message(self, *a):
            pass

    here = _server(Redirect)
    try:
        oracle = HttpOracle(f"http://127.0.0.1:{here.server_port}/label", n_classes=3)
        with pytest.raises(AlscaleError, match=rf"answered {code} .* to 'http://127.0.0.2:{other.server_port}/steal'; "
                                               "redirects are refused"):
            oracle.label(np.array([1]))
        time.sleep(0.1)
        assert received == []
    finally:
        here.shutdown()
        other.shutdown()


# -- 7. permissions ---------------------------------------------------------------------------

@pytest.mark.parametrize("umask", [0o022, 0o027])
def test_outputs_honour_the_umask(tmp_path, pool, umask):
    out = tmp_path / "out"
    old = os.umask(umask)
    try:
        assert main(["run", str(_job_file(tmp_path, pool, out)), "--no-progress"]) == 0
    finally:
        os.umask(old)
    want = 0o666 & ~umask
    modes = {p.name: p.stat().st_mode & 0o777 for p in out.iterdir()}
    assert modes == {"selection.parquet": want, "manifest.json": want}, {k: oct(v) for k, v in modes.items()}


def test_every_writer_honours_the_umask(tmp_path):
    from alscale.fsio import atomic_write
    from alscale.loop.ledger import Ledger

    old = os.umask(0o007)
    try:
        atomic_write(tmp_path / "a.json", "{}")
        write_table(pool_table(np.arange(3, dtype=np.int64), features_N_D=np.zeros((3, 2), np.float32)),
                    str(tmp_path / "p.arrow"))
        f = Ledger(tmp_path / "led").append(np.arange(3), np.zeros(3), 0, "t")
    finally:
        os.umask(old)
    for p in (tmp_path / "a.json", tmp_path / "p.arrow", f):
        assert p.stat().st_mode & 0o777 == 0o660, (p, oct(p.stat().st_mode))


# -- 8. the trust model of job files ------------------------------------------------------------

@pytest.mark.parametrize(("factory", "message"), [
    ("os:system", "is a builtin_function_or_method, not a Python function or class"),
    ("subprocess:run", "is defined in the Python standard library (subprocess)"),
    ("builtins:exec", "is a builtin_function_or_method"),
    ("collections:OrderedDict", "is the class OrderedDict, which is not a torch.nn.Module"),
    ("functools:partial", "is the class partial, which is not a torch.nn.Module"),
])
def test_factories_that_are_not_model_code_are_refused_before_any_call(tmp_path, factory, message):
    marker = tmp_path / "pwned"
    out = tmp_path / "out"
    features = tmp_path / "f.arrow"
    write_table(pool_table(np.arange(20, dtype=np.int64), features_N_D=np.zeros((20, 6), np.float32)), str(features))
    job = _job_file(tmp_path, str(features), out,
                    model={"factory": factory, "kwargs": {"command": f"touch {marker}"}})
    r = _cli("run", str(job), "--no-progress")
    assert r.returncode == 2 and r.stderr.count("\n") == 1, r.stderr
    assert f"model factory '{factory}' {message}" in r.stderr, r.stderr
    assert not marker.exists() and not out.exists()


def test_transforms_follow_the_same_rule():
    from alscale.scoring.images import resolve_transform

    with pytest.raises(AlscaleError, match="image transform 'os:system' is a builtin_function_or_method"):
        resolve_transform("os:system")
    assert callable(resolve_transform("tests.scoring.factory_fixture:make"))  # any Python function


def test_model_classes_and_functions_of_user_code_are_accepted():
    from alscale.scoring.factory import resolve_factory

    assert resolve_factory("tests.scoring.factory_fixture:make").__name__ == "make"
    assert resolve_factory("tests.scoring.factory_fixture:TinyNet").__name__ == "TinyNet"
    assert resolve_factory("torch.nn:Linear").__name__ == "Linear"


def test_submit_says_which_code_the_job_loads(tmp_path, pool, monkeypatch, capsys):
    from alscale.jobspec import code_references
    from alscale.runtime import ray_jobs

    job = _job_file(tmp_path, pool, tmp_path / "out", model={"factory": "tests.scoring.factory_fixture:make",
                                                             "transform": "mypkg.tf:resize"},
                    stream={"oracle": {"kind": "hybrid", "threshold": 0.5,
                                       "machine": {"kind": "command", "command": ["python", "label.py"]},
                                       "people": {"kind": "human"}}})
    assert code_references(load_job(job)) == [("model.factory", "tests.scoring.factory_fixture:make"),
                                              ("model.transform", "mypkg.tf:resize"),
                                              ("stream.oracle.machine.command", "'python label.py'")]

    def refuse(*a, **k):
        raise AlscaleError("no cluster here")

    monkeypatch.setattr(ray_jobs, "submit", refuse)
    assert main(["submit", str(job)]) == 2
    err = capsys.readouterr().err
    assert ("alscale: code this job loads and runs: model.factory tests.scoring.factory_fixture:make; "
            "model.transform mypkg.tf:resize; stream.oracle.machine.command 'python label.py'") in err
