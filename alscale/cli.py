"""``alscale`` command line: validate | run | submit | status | logs | stop | simulate | pool | strategies.

Bad input (job, pool, labelled set, arguments) prints one line ``alscale: error: ...`` to
stderr and exits with code 2, leaving no output behind.
"""

from __future__ import annotations

import argparse
import errno
import json
import logging
import sys
from collections.abc import Sequence
from typing import Any

from alscale.errors import AlscaleError, OutputWriteError, WorkerLostError, short_repr

logger = logging.getLogger("alscale")


def _version() -> str:
    from alscale import __version__

    return f"alscale {__version__} (Python {sys.version.split()[0]})"


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="alscale", description="Active-learning acquisition over sharded Arrow pools.")
    p.add_argument("-v", "--verbose", action="store_true", help="log progress details")
    p.add_argument("--version", action="version", version=_version())
    sub = p.add_subparsers(dest="command", required=True)
    _add_job_commands(sub)
    _add_pool_commands(sub)
    _add_selection_commands(sub)
    _add_tool_commands(sub)
    _add_examples(p)
    return p


def _add_job_commands(sub: Any) -> None:
    """validate, run, submit, status, stop, logs, simulate: the commands that take a job."""
    v = sub.add_parser("validate", help="check a job file (and its pool) without computing anything")
    v.add_argument("job", nargs="?")
    v.add_argument("overrides", nargs="*", metavar="key=value")
    v.add_argument("--offline", action="store_true",
                   help="check the job's structure only, without opening the pool (e.g. a cloud job's s3:// pool "
                        "from a laptop); the pool's columns are checked when the job runs")
    v.add_argument("--schema", action="store_true",
                   help="print the JSON schema of a job file (every section and field: type, default, range, "
                        "description) and exit")

    r = sub.add_parser("run", help="run an acquisition job")
    r.add_argument("job")
    r.add_argument("overrides", nargs="*", metavar="key=value", help="e.g. strategy.budget=500 runtime.shards=7")
    r.add_argument("--out", help="output directory (default: the job's 'output')")
    r.add_argument("--force", action="store_true", help="overwrite an output directory that holds a selection")
    r.add_argument("--no-progress", action="store_true", help="no progress bar")
    r.add_argument("--json", action="store_true",
                   help="print a JSON summary (out_dir, n_selected, phase seconds, rows/s, cache) instead of text")
    r.add_argument("--resume", action="store_true",
                   help="continue an interrupted run in the output directory: reuse its valid cached scores")
    r.add_argument("--cache-from", action="append", default=[], metavar="DIR",
                   help="also reuse the cached model outputs of an earlier run's output directory (e.g. the last "
                        "round's, on a pool that has grown since); repeatable")

    sb = sub.add_parser("submit", help="submit a job to a Ray cluster through the Jobs API")
    sb.add_argument("job")
    sb.add_argument("overrides", nargs="*", metavar="key=value")
    sb.add_argument("--address", help="Ray dashboard URL (default: RAY_API_SERVER_ADDRESS, RAY_ADDRESS, "
                    "http://127.0.0.1:8265)")
    sb.add_argument("--out", help="output directory or URI, as the cluster sees it (default: the job's 'output')")
    sb.add_argument("--force", action="store_true", help="overwrite an output directory that holds a selection")
    sb.add_argument("--no-wait", action="store_true", help="print the submission id and return")
    sb.add_argument("--no-package", action="store_true",
                    help="do not upload the local alscale package (the cluster image has alscale installed)")
    for name, text in (("status", "show a submitted job's status"), ("stop", "stop a submitted job")):
        c = sub.add_parser(name, help=text)
        c.add_argument("submission_id")
        c.add_argument("--address")
    lg = sub.add_parser("logs", help="print a submitted job's logs")
    lg.add_argument("submission_id")
    lg.add_argument("--address")
    lg.add_argument("--follow", action="store_true", help="keep printing until the job ends; exit by its status")

    sim = sub.add_parser("simulate", help="run the job's active-learning loop with a simulated oracle")
    sim.add_argument("job")
    sim.add_argument("overrides", nargs="*", metavar="key=value",
                     help="e.g. loop.trials=1 loop.stop.budget=100 'loop.strategies=[bald,random]'")
    sim.add_argument("--out", help="output directory (default: the job's 'output')")
    sim.add_argument("--force", action="store_true", help="replace an earlier simulation in the output directory")
    sim.add_argument("--targets", default="0.9,0.95",
                     help="accuracies of the labels-to-reach table, comma-separated (default 0.9,0.95)")
    sim.add_argument("--no-progress", action="store_true", help="no progress bars")



def _add_pool_commands(sub: Any) -> None:
    """pool synth | mnist | images | info."""
    pool = sub.add_parser("pool", help="make or inspect pools")
    psub = pool.add_subparsers(dest="pool_command", required=True)
    s = psub.add_parser("synth", help="synthetic pool with planted clusters and labels")
    s.add_argument("out", help="pool file: .arrow (Arrow IPC) or .parquet; without a suffix, OUT.arrow")
    s.add_argument("--rows", type=int, required=True)
    s.add_argument("--dim", type=int, required=True)
    s.add_argument("--classes", type=int, required=True)
    s.add_argument("--seed", type=int, default=0)
    s.add_argument("--format", choices=("ipc", "parquet"), default=None,
                   help="default: from OUT's suffix; Arrow IPC when OUT has none")
    s.add_argument("--separation", type=float, default=4.5,
                   help="typical distance between blob centres in noise SDs (4.5: overlapping; 12: separable)")
    s.add_argument("--label-noise", type=float, default=0.05, help="fraction of flipped labels (default 0.05)")
    s.add_argument("--clusters-per-class", type=int, default=2, help="Gaussian blobs per class (default 2)")
    s.add_argument("--split", choices=("pool", "test"), default="pool",
                   help="test: a held-out set from the same planted classes (other rows)")
    s.add_argument("--log-probs", type=int, default=0, metavar="K",
                   help="also write a precomputed log_probs column with K samples (0: none)")
    s.add_argument("--embedding-dim", type=int, default=0, metavar="E",
                   help="also write an 'embedding' column of E dims (a fixed random linear map of the features)")
    s.add_argument("--metadata", action="store_true",
                   help="also write metadata columns: source (camera_a, camera_b, dashcam, drone: 2%%) and quality "
                        "(0-1)")
    m = psub.add_parser("mnist", help="MNIST idx files -> pool (features 784, label)")
    m.add_argument("out")
    m.add_argument("--source", help="folder with the idx files (default: ../shared/data/mnist)")
    m.add_argument("--split", choices=("train", "test"), default="train")
    m.add_argument("--format", choices=("ipc", "parquet"), default=None,
                   help="default: from OUT's suffix; Arrow IPC when OUT has none")
    m.add_argument("--images", action="store_true",
                   help="write an 'image' column of PNG bytes instead of features (a raw-image pool)")
    m.add_argument("--rows", type=int, help="keep only the first N images")
    im = psub.add_parser("images", help="a 'path' pool from a folder of images (ROOT/<class>/<file>)")
    im.add_argument("out")
    im.add_argument("root", help="local folder or URI (s3://bucket/imagenet/train)")
    im.add_argument("--format", choices=("ipc", "parquet"), default=None)
    i = psub.add_parser("info", help="schema and size of a pool")
    i.add_argument("pool")



def _add_selection_commands(sub: Any) -> None:
    """strategies, stream, report, labels: choosing and handling what is selected."""
    st = sub.add_parser("strategies", help="list the registered strategies")
    st.add_argument("-v", "--verbose", action="store_true", help="also what each needs, supports and takes")
    st = sub.add_parser("stream", help="stream-based selective sampling over the pool in row order")
    st.add_argument("job")
    st.add_argument("overrides", nargs="*", metavar="key=value")
    st.add_argument("--out", help="output directory (default: the job's 'output')")
    st.add_argument("--force", action="store_true", help="replace an earlier stream's outputs")
    st.add_argument("--no-progress", action="store_true")
    st.add_argument("--json", action="store_true", help="print the summary as JSON")
    rp = sub.add_parser("report", help="one self-contained HTML page about a job or simulation output directory")
    rp.add_argument("out_dir")
    rp.add_argument("--sample", type=int, default=20_000, help="pool rows sampled for the plots (default 20,000)")
    lb = sub.add_parser("labels", help="export a selection for annotators; import their labels into a ledger")
    lsub = lb.add_subparsers(dest="labels_command", required=True)
    ex = lsub.add_parser("export", help="a job's selection as CSV, JSON lines or Label Studio tasks")
    ex.add_argument("out_dir", help="the job's output directory")
    ex.add_argument("dest", help="file to write (.csv, .jsonl, .json = Label Studio)")
    ex.add_argument("--format", choices=("csv", "jsonl", "labelstudio"))
    imp = lsub.add_parser("import", help="labels (CSV, JSON lines, Label Studio export) into an append-only ledger")
    imp.add_argument("src", help="labels file (.csv row_id,label / .jsonl / .json Label Studio export)")
    imp.add_argument("--ledger", required=True, help="ledger directory (created if missing); a job's labeled.path")
    imp.add_argument("--pool", required=True, help="the pool the rows belong to")
    imp.add_argument("--format", choices=("csv", "jsonl", "labelstudio"))
    imp.add_argument("--classes", help="class names in class order, comma-separated (default: integers)")
    imp.add_argument("--num-classes", type=int, help="C: labels must be integers 0..C-1")
    imp.add_argument("--round", type=int, help="the ledger round (default: the next)")
    imp.add_argument("--max-bytes", default="64MiB", metavar="SIZE",
                     help="refuse a labels file larger than this, before parsing it (default 64MiB)")
    imp.add_argument("--json", action="store_true", help="print the summary as JSON")


def _add_tool_commands(sub: Any) -> None:
    """dedup, bench."""
    # near-duplicate removal (issue 16)
    dd = sub.add_parser("dedup", help="near-duplicate groups and a kept-row mask (Parquet) over the neighbour layer")
    dd.add_argument("pool", help="pool path (Arrow IPC or Parquet) with an 'embedding' or 'features' column")
    dd.add_argument("--threshold", type=float, required=True, help="rows within this Euclidean distance are duplicates")
    dd.add_argument("--out", required=True, help="output directory (keep.parquet, groups.parquet, dedup.json)")
    dd.add_argument("--shards", type=int, default=2, help="shards searched in this process (default 2)")
    dd.add_argument("--mode", default="exact", help="exact (default) or approx_ivf_flat / approx_ivf_pq / approx_hnsw")
    dd.add_argument("--normalize", action="store_true", help="L2-normalise rows first (cosine-style threshold)")
    dd.add_argument("--column", default="auto", choices=["auto", "embedding", "features"])
    dd.add_argument("--force", action="store_true", help="overwrite an earlier result in --out")
    bn = sub.add_parser("bench", help="the throughput suite (benchmarks/suite.py of a source checkout)")
    bn.add_argument("--quick", action="store_true", help="100k rows and a few peers: under 3 minutes")
    bn.add_argument("--no-peers", action="store_true", help="alscale only")
    bn.add_argument("--make-peers", action="store_true", help="create .venv-peers (the peers' virtualenv) if missing")
    bn.add_argument("--slow-peers", action="store_true", help="also the peers that take minutes per run")
    bn.add_argument("--only", nargs="*", metavar="SCENARIO", help="entropy bald power kcenter badge batchbald ...")
    bn.add_argument("--timeout", type=float, help="seconds per run")
    bn.add_argument("--no-markdown", action="store_true", help="write no BENCHMARKS.md")
    bn.add_argument("--results", metavar="DIR", help="results directory (default: out/bench, git-ignored)")
    bn.add_argument("--update-docs", action="store_true",
                    help="write the committed benchmarks/results/suite/ and BENCHMARKS.md (default: out/bench only)")


#: One example per command (shown at the end of its --help; a test checks every command has one).
EXAMPLES: dict[str, str] = {
    "": "make demo                                    # the 1M-row demo: BADGE vs random\n"
        "  alscale pool synth data/pool --rows 100000 --dim 32 --classes 10\n"
        "  alscale run jobs/demo.yaml pool.path=data/pool.arrow runtime.executor=local",
    "validate": "alscale validate jobs/demo.yaml strategy.budget=500\n"
                "  alscale validate jobs/imagenet_entropy.yaml --offline   # s3:// pool not opened\n"
                "  alscale validate --schema > job.schema.json             # for an editor's YAML support",
    "run": "alscale run jobs/demo.yaml --out out/r0 strategy.name=margin runtime.executor=local",
    "submit": "alscale submit jobs/demo.yaml --address http://127.0.0.1:8265 --out /tmp/demo-submit",
    "status": "alscale status raysubmit_abc123 --address http://127.0.0.1:8265",
    "stop": "alscale stop raysubmit_abc123 --address http://127.0.0.1:8265",
    "logs": "alscale logs raysubmit_abc123 --follow --address http://127.0.0.1:8265",
    "simulate": "alscale simulate jobs/mnist_batchbald2019.yaml --force loop.trials=1 loop.stop.budget=100",
    "pool": "alscale pool synth data/pool.arrow --rows 100000 --dim 32 --classes 10",
    "pool synth": "alscale pool synth data/pool --rows 100000 --dim 32 --classes 10   # writes data/pool.arrow",
    "pool mnist": "alscale pool mnist data/mnist-train.arrow --split train",
    "pool images": "alscale pool images data/flowers.parquet ~/datasets/flowers   # ROOT/<class>/<image>",
    "pool info": "alscale pool info data/pool.arrow",
    "strategies": "alscale strategies",
    "stream": "alscale stream job.yaml --out out/stream stream.budget=0.05",
    "report": "alscale report out/r0        # writes out/r0/report.html",
    "labels": "alscale labels export out/r0 batch.csv",
    "labels export": "alscale labels export out/r0 batch.json --format labelstudio",
    "labels import": "alscale labels import labels.csv --ledger labels/ --pool data/pool.arrow --num-classes 10",
    "dedup": "alscale dedup data/pool.arrow --threshold 0.05 --out out/dedup --mode approx_hnsw",
    "bench": "alscale bench --quick --only entropy --no-peers       # results in out/bench/",
}


def _subcommands(parser: argparse.ArgumentParser, prefix: str = "") -> dict[str, argparse.ArgumentParser]:
    """Every (nested) subcommand parser, by its command path (``"pool synth"``); ``""`` is the top."""
    found = {prefix: parser}
    for action in parser._actions:  # argparse keeps subparsers only here
        if isinstance(action, argparse._SubParsersAction):
            for name, child in action.choices.items():
                found.update(_subcommands(child, f"{prefix} {name}".strip()))
    return found


def _add_examples(parser: argparse.ArgumentParser) -> None:
    for path, sub in _subcommands(parser).items():
        if path in EXAMPLES:
            sub.epilog = f"Example:\n  {EXAMPLES[path]}"
            sub.formatter_class = argparse.RawDescriptionHelpFormatter


def main(argv: Sequence[str] | None = None) -> int:
    parser = _parser()
    args, extra = parser.parse_known_args(argv)
    # key=value overrides may also follow the options (``run JOB --force a.b=1``).
    if extra and hasattr(args, "overrides") and not any(e.startswith("-") for e in extra):
        args.overrides = [*args.overrides, *extra]
    elif extra:
        parser.error(f"unrecognized arguments: {' '.join(extra)}")
    logging.basicConfig(
        level=logging.INFO if args.verbose else logging.WARNING,
        format="%(levelname)s %(name)s: %(message)s",
    )
    try:
        return _dispatch(args)
    except AlscaleError as exc:
        print(f"alscale: error: {_one_line(exc)}", file=sys.stderr)
        return 2
    except (WorkerLostError, OutputWriteError) as exc:
        print(f"alscale: failed: {_one_line(exc)}", file=sys.stderr)
        return 1
    except OSError as exc:
        if exc.errno not in _ENVIRONMENT_ERRNOS:
            raise
        from alscale.fsio import write_error  # a write outside alscale.fsio's helpers: still one line

        print(f"alscale: failed: {_one_line(write_error(exc.filename or 'a file', exc))}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("alscale: interrupted", file=sys.stderr)
        return 130


#: OS errors that are the environment's, not a bug: a full disk, a read-only or unwritable place.
_ENVIRONMENT_ERRNOS = (errno.ENOSPC, errno.EDQUOT, errno.EROFS, errno.EACCES, errno.EPERM)
#: Longest message printed (values inside messages are bounded already; this is the last guard).
_MESSAGE_LIMIT = 4000


def _one_line(exc: BaseException) -> str:
    text = " ".join(str(exc).split())
    return text if len(text) <= _MESSAGE_LIMIT else text[: _MESSAGE_LIMIT - 3] + "..."


def _dispatch(args: argparse.Namespace) -> int:
    if args.command == "validate":
        return _validate(args)
    if args.command == "run":
        return _run(args)
    if args.command in ("submit", "status", "logs", "stop"):
        return _jobs(args)
    if args.command == "simulate":
        return _simulate(args)
    if args.command == "pool":
        return _pool(args)
    if args.command == "bench":
        return _bench(args)
    if args.command == "dedup":
        from alscale.workflow.dedup import run_dedup

        summary = run_dedup(args.pool, args.threshold, args.out, shards=args.shards, mode=args.mode,
                            normalize=args.normalize, column=args.column, force=args.force)
        print(f"{summary['groups']:,} near-duplicate groups ({summary['rows_in_groups']:,} rows); "
              f"{summary['removed']:,} of {summary['rows']:,} rows not kept; mask in {args.out}/keep.parquet")
        return 0
    if args.command == "labels":
        return _labels(args)
    if args.command == "stream":
        from alscale.jobspec import load_job
        from alscale.workflow.stream import run_stream

        summary = run_stream(load_job(args.job, args.overrides), out_dir=args.out, force=args.force,
                             progress=False if (args.no_progress or args.json) else None)
        if args.json:
            print(json.dumps(summary))
        else:
            print(f"queried {summary['queried']:,} of {summary['rows']:,} rows ({summary['fraction']:.2%}; budget "
                  f"{summary['budget']:.2%}), {summary['model_updates']} model updates; decisions and ledger in "
                  f"{summary['out_dir']}")
        return 0
    if args.command == "report":
        from alscale.workflow.report import build_report

        if args.sample < 1:
            raise AlscaleError(f"--sample must be >= 1; got {args.sample}")
        print(f"wrote {build_report(args.out_dir, sample=args.sample)}")
        return 0
    if args.command == "strategies":
        from alscale.strategies import get_strategy, strategy_names
        from alscale.strategies.spec import describe

        for name in strategy_names():
            print(f"{name:18s} {get_strategy(name).summary}")
            if args.verbose:
                print(f"{'':18s} {describe(get_strategy(name))}")
        return 0
    raise AssertionError(args.command)


def _labels(args: argparse.Namespace) -> int:
    from alscale.workflow.labels import export_selection, import_labels

    if args.labels_command == "export":
        n = export_selection(args.out_dir, args.dest, args.format)
        print(f"exported {n} rows of {args.out_dir} to {args.dest}")
        return 0
    classes = [c.strip() for c in args.classes.split(",")] if args.classes else None
    from alscale.units import parse_bytes

    max_bytes = parse_bytes(args.max_bytes)
    if max_bytes is None:
        raise AlscaleError(f"--max-bytes must be a size such as 64MiB or 200000000; got {short_repr(args.max_bytes)}")
    res = import_labels(args.src, args.ledger, pool=args.pool, fmt=args.format, classes=classes,
                        n_classes=args.num_classes, round=args.round, max_bytes=max_bytes)
    if args.json:
        print(json.dumps(res))
    else:
        print(f"imported {res['added']} labels into {args.ledger} (round {res['round']}); "
              f"{res['already']} were already there")
    return 0


def _bench(args: argparse.Namespace) -> int:
    """Run benchmarks/suite.py of the checkout this package is installed from (editable)."""
    import subprocess
    from pathlib import Path

    suite = Path(__file__).resolve().parents[1] / "benchmarks" / "suite.py"
    if not suite.is_file():
        raise AlscaleError(f"alscale bench runs {suite}, which this installation lacks; clone the alscale "
                           "repository and install it with `make setup` (an editable install)")
    cmd = [sys.executable, str(suite)]
    for flag in ("quick", "no_peers", "make_peers", "slow_peers", "no_markdown", "update_docs"):
        if getattr(args, flag):
            cmd.append("--" + flag.replace("_", "-"))
    if args.results:
        cmd += ["--results", args.results]
    if args.only:
        cmd += ["--only", *args.only]
    if args.timeout:
        cmd += ["--timeout", str(args.timeout)]
    return subprocess.call(cmd)


def _validate(args: argparse.Namespace) -> int:
    from alscale.jobspec import load_job
    from alscale.pool import open_pool
    from alscale.runtime.coordinator import check_job_against_pool

    if args.schema:
        from alscale.jobspec import job_schema

        print(json.dumps(job_schema(), indent=2))
        return 0
    if args.job is None:
        raise AlscaleError("alscale validate needs a job file (or --schema)")
    job = load_job(args.job, args.overrides)
    if job.loop is not None:
        from alscale.loop.spec import parse_loop

        parse_loop(job)
    if args.offline:
        print(f"job {args.job}: structure valid ({job.strategy.name}, budget {job.strategy.budget}, "
              f"{job.runtime.executor} executor, {job.runtime.shards} shards); pool {job.pool} not opened (--offline): "
              "its columns and row ids are checked when the job runs")
        return 0
    from alscale.pool.location import is_uri

    try:
        info = open_pool(job.pool)
    except AlscaleError as exc:
        if is_uri(job.pool):
            raise AlscaleError(f"{exc}; to check only the job's structure from here, run alscale validate --offline "
                               f"{args.job}") from None
        raise
    problems = check_job_against_pool(job, info)
    if problems:
        raise AlscaleError("; ".join(problems))
    print(f"job {args.job}: valid ({job.strategy.name}, budget {job.strategy.budget}, pool {info.n_rows:,} rows)")
    return 0


def _run(args: argparse.Namespace) -> int:
    from alscale.jobspec import load_job
    from alscale.runtime.coordinator import run_job

    job = load_job(args.job, args.overrides)
    result = run_job(job, out_dir=args.out, force=args.force,
                     progress=False if (args.no_progress or args.json) else None, resume=args.resume,
                     cache_from=args.cache_from)
    if args.json:
        m = result.manifest
        cache = m.get("cache") or {}
        print(json.dumps({
            "out_dir": result.out_dir, "strategy": m["strategy"], "n_selected": m["n_selected"],
            "row_ids": result.selection.indices_B[:20].tolist(), "phase_seconds": m["phase_seconds"],
            "rows_per_s": m["rows_per_s"], "round_trips": m["round_trips"],
            "cache": {k: len(cache.get(k, [])) for k in ("reused", "computed", "rejected")} if cache else None,
        }))
    else:
        _print_summary(result)
    return 0


def _jobs(args: argparse.Namespace) -> int:
    from alscale.runtime import ray_jobs

    if args.command == "submit":
        from alscale.jobspec import load_job

        job = load_job(args.job, args.overrides)
        _print_code_references(job)
        sid = ray_jobs.submit(job, address=args.address, out_dir=args.out, force=args.force,
                              package=not args.no_package)
        print(f"submitted {sid} to {ray_jobs.resolve_address(args.address)}", flush=True)
        if args.no_wait:
            return 0
        state = ray_jobs.follow(sid, address=args.address)
        print(f"job {sid} {state}")
        return ray_jobs.exit_code(state)
    if args.command == "status":
        info = ray_jobs.status(args.submission_id, address=args.address)
        print(f"{info['submission_id']}: {info['status']}" + (f" ({info['summary']})" if info["summary"] else ""))
        return 0
    if args.command == "stop":
        stopped = ray_jobs.stop(args.submission_id, address=args.address)
        print(f"{args.submission_id}: {'stop requested' if stopped else 'already finished'}")
        return 0
    if args.follow:
        state = ray_jobs.follow(args.submission_id, address=args.address)
        return ray_jobs.exit_code(state)
    print(ray_jobs.logs(args.submission_id, address=args.address), end="")
    return 0


def _print_code_references(job) -> None:
    """Say which code outside alscale the job loads (a job file is code; on stderr, so the
    submission id stays the first word of stdout)."""
    from alscale.jobspec import code_references

    refs = code_references(job)
    text = "; ".join(f"{where} {value}" for where, value in refs) if refs else "none (alscale's built-ins only)"
    print(f"alscale: code this job loads and runs: {text}", file=sys.stderr)


def _simulate(args: argparse.Namespace) -> int:
    from alscale.jobspec import load_job
    from alscale.loop import simulate

    try:
        targets = [float(t) for t in args.targets.split(",") if t.strip()]
    except ValueError:
        raise AlscaleError(f"--targets must be comma-separated accuracies like 0.9,0.95; "
                           f"got {args.targets!r}") from None
    if not targets or not all(0 < t <= 1 for t in targets):
        raise AlscaleError(f"--targets must be accuracies in (0, 1]; got {args.targets!r}")
    job = load_job(args.job, args.overrides)
    result = simulate(job, out_dir=args.out, force=args.force, progress=False if args.no_progress else None,
                      targets=targets)
    from alscale.loop.curves import markdown_table

    for strategy, trials in sorted(result.stop_reasons.items()):
        for trial, reason in sorted(trials.items()):
            last = [r for r in result.records if r["strategy"] == strategy and r["trial"] == trial][-1]
            print(f"{strategy} trial {trial}: {last['n_labels']} labels, test accuracy {last['test_accuracy']:.4f};"
                  f" stopped by {reason}")
    print("labels needed (set size - b when first reached):")
    print(markdown_table(result.table), end="")
    print(f"written: {result.out_dir}/rounds.csv, curves.png, labels_to_reach.md, summary.json")
    return 0


def _print_summary(result) -> None:
    m = result.manifest
    sel = result.selection
    phases = "  ".join(f"{k} {v:.2f}s" for k, v in m["phase_seconds"].items())
    rows_s = m.get("rows_per_s")
    print(f"selected {len(sel):,} of {m['pool']['n_rows']:,} rows with {sel.strategy} "
          f"(seed {m['seed']}, {m['runtime']['executor']} executor, {len(m['shard_plan'])} shards)")
    print(f"phases: {phases}")
    if rows_s:
        print(f"throughput: {rows_s:,.0f} rows/s (excluding start-up)")
    head = min(5, len(sel))
    if head:
        picks = ", ".join(f"{int(r)} ({s:.4f})" for r, s in zip(sel.indices_B[:head], sel.scores_B[:head]))
        print(f"first picks (row_id (score)): {picks}")
    print(f"written: {str(result.out_dir).rstrip('/')}/selection.parquet and manifest.json")


def _pool_out(out: str, fmt: str | None) -> tuple[str, str | None]:
    """The file a ``pool`` command writes: OUT as given when its suffix names a format, else
    OUT plus the suffix of ``fmt`` (Arrow IPC by default), said on stderr."""
    from alscale.pool.location import format_from_suffix

    if format_from_suffix(out) is not None or out.endswith("/"):
        return out, fmt
    fmt = fmt or "ipc"
    named = f"{out}.{'arrow' if fmt == 'ipc' else 'parquet'}"
    print(f"alscale: {out} has no .arrow or .parquet suffix; writing {'Arrow IPC' if fmt == 'ipc' else 'Parquet'} "
          f"to {named}", file=sys.stderr)
    return named, fmt


def _pool(args: argparse.Namespace) -> int:
    from alscale import pool

    if args.pool_command == "synth":
        for name in ("rows", "dim", "classes"):
            if getattr(args, name) < (2 if name == "classes" else 1):
                raise AlscaleError(f"--{name} must be >= {2 if name == 'classes' else 1}; got {getattr(args, name)}")
        out, fmt = _pool_out(args.out, args.format)
        info = pool.synth_pool(
            out, rows=args.rows, dim=args.dim, classes=args.classes, seed=args.seed,
            format=fmt, log_probs_samples=args.log_probs, embedding_dim=args.embedding_dim,
            separation=args.separation, label_noise=args.label_noise,
            clusters_per_class=args.clusters_per_class, split=args.split, metadata=args.metadata,
        )
    elif args.pool_command == "mnist":
        out, fmt = _pool_out(args.out, args.format)
        info = pool.mnist_pool(out, source=args.source, split=args.split, format=fmt,
                               images=args.images, rows=args.rows)
    elif args.pool_command == "images":
        from alscale.pool.image_folder import image_folder_pool

        info = image_folder_pool(args.out, args.root, format=args.format)
    else:
        info = pool.open_pool(args.pool)
    print(pool.describe_pool(info))
    return 0


if __name__ == "__main__":
    sys.exit(main())
