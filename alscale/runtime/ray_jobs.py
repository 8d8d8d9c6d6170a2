"""``alscale submit | status | logs | stop``: acquisition jobs on a Ray cluster via the Jobs API.

``submit`` validates the job here (every error before anything reaches the cluster),
writes the validated job — overrides applied, relative local paths made absolute — as
``job.yaml`` into a fresh ``working_dir`` and submits ``python -m alscale.cli run job.yaml``
through :class:`ray.job_submission.JobSubmissionClient`: the same driver as ``alscale run``,
now running on the head node and reaching the cluster's workers through ``RAY_ADDRESS``.
With ``package=True`` (development) the local ``alscale`` package travels as a
``py_modules`` entry; in production install ``alscale`` in the cluster image instead.

Address: ``--address``, else ``RAY_API_SERVER_ADDRESS``, else ``RAY_ADDRESS`` when it is an
``http(s)://`` URL, else ``http://127.0.0.1:8265`` (as Ray's own ``ray job`` CLI).

Token authentication (Ray >= 2.59): the client sends the token exactly as Ray's CLI does
(Ray's own ``get_auth_headers_if_auth_enabled``): with ``RAY_AUTH_MODE=token`` it reads
``RAY_AUTH_TOKEN``, else the file ``RAY_AUTH_TOKEN_PATH``, else ``~/.ray/auth_token``
(``ray get-auth-token`` prints it). A rejected or missing token is one clear error.
Tokens are never written into the job, its logs or its manifest.
"""

from __future__ import annotations

import logging
import os
import re
import secrets
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import yaml

from alscale.errors import AlscaleError
from alscale.jobspec import JobSpec

logger = logging.getLogger(__name__)

DEFAULT_ADDRESS = "http://127.0.0.1:8265"
#: Exit codes of ``submit`` (waiting) and ``logs --follow`` by the job's final status.
EXIT_CODES = {"SUCCEEDED": 0, "FAILED": 1, "STOPPED": 3}
TERMINAL = frozenset(EXIT_CODES)


def resolve_address(address: str | None) -> str:
    if address:
        return address
    for var in ("RAY_API_SERVER_ADDRESS", "RAY_ADDRESS"):
        value = os.environ.get(var, "")
        if value.startswith(("http://", "https://")):
            return value
    return DEFAULT_ADDRESS


def _client(address: str | None) -> Any:
    from ray.job_submission import JobSubmissionClient

    url = resolve_address(address)
    try:
        return JobSubmissionClient(url)
    except ConnectionError as exc:
        raise AlscaleError(_connection_message(url, exc)) from None
    except Exception as exc:  # Ray raises plain exceptions for HTTP failures
        raise AlscaleError(_connection_message(url, exc)) from None


def _connection_message(url: str, exc: BaseException) -> str:
    text = " ".join(str(exc).split())
    if "401" in text or "uthenticat" in text or "token" in text.lower():
        return (f"the Ray cluster at {url} rejected the request: authentication token missing or wrong; set "
                "RAY_AUTH_MODE=token and RAY_AUTH_TOKEN (or RAY_AUTH_TOKEN_PATH / ~/.ray/auth_token; "
                "`ray get-auth-token` on the head prints it)")
    return (f"cannot reach the Ray dashboard at {url} ({text[:160]}); start the head (`ray start --head`), "
            "check --address (http://HEAD:8265), or tunnel it with `ray dashboard cluster.yaml`")


def _call(address: str | None, what: Callable[[Any], Any]) -> Any:
    client = _client(address)
    try:
        return what(client)
    except AlscaleError:
        raise
    except RuntimeError as exc:
        text = " ".join(str(exc).split())
        if "does not exist" in text or "404" in text:
            raise AlscaleError(f"no such Ray job: {text[:200]}; list jobs with `ray job list`") from None
        raise AlscaleError(_connection_message(resolve_address(address), exc)) from None
    except Exception as exc:
        raise AlscaleError(_connection_message(resolve_address(address), exc)) from None


def _absolute(path: str | None) -> str | None:
    """Local relative paths become absolute (the head resolves them); URIs stay as written."""
    if path is None or "://" in path:
        return path
    return str(Path(path).resolve())


def portable_job(job: JobSpec, out_dir: str | None) -> dict[str, Any]:
    """The validated job as a dict for the cluster: relative local paths made absolute."""
    d = job.to_dict()
    d["pool"]["path"] = _absolute(job.pool)
    d["labeled"]["path"] = _absolute(job.labeled)
    if d.get("model") and d["model"].get("checkpoint"):
        d["model"]["checkpoint"] = _absolute(d["model"]["checkpoint"])
    d["output"] = _absolute(out_dir if out_dir is not None else job.output)
    if d["output"] is None:
        raise AlscaleError("no output directory: set 'output' in the job or pass --out DIR (a path or URI the "
                           "cluster can write)")
    if d.get("loop") is None:
        d.pop("loop", None)
    return d


def package_dir() -> str:
    """The local ``alscale`` package directory (uploaded as a ``py_modules`` entry)."""
    import alscale

    return str(Path(alscale.__file__).resolve().parent)


def submit(
    job: JobSpec,
    *,
    address: str | None = None,
    out_dir: str | None = None,
    force: bool = False,
    package: bool = True,
    entrypoint_num_cpus: float = 0.0,
    submission_id: str | None = None,
) -> str:
    """Submit ``job`` (already validated) and return its submission id.

    ``entrypoint_num_cpus`` 0 (the default) keeps the driver — the coordinator, which holds
    the selection's state and every worker's restart log — on the head node: Ray pins an
    entrypoint that asks for no resources there. A positive value lets Ray place it on any
    node with that many free CPUs, which on a cluster whose head offers none (``cluster.yaml``)
    is a spot worker: losing that node would lose the job, and its log with it.
    """
    if job.runtime.executor != "ray":
        logger.warning("runtime.executor is %s: the job will run inside the driver on the head node, not on the "
                       "cluster's workers", job.runtime.executor)
    spec = portable_job(job, out_dir)
    name = Path(job.source or "job").stem
    sid = submission_id or f"alscale-{name}-{time.strftime('%Y%m%d-%H%M%S')}-{secrets.token_hex(3)}"
    workdir = Path(tempfile.mkdtemp(prefix="alscale-submit-"))
    (workdir / "job.yaml").write_text(
        f"# submitted by alscale as {sid}, from {job.source}\n" + yaml.safe_dump(spec, sort_keys=False))
    entrypoint = "python -m alscale.cli run job.yaml --no-progress" + (" --force" if force else "")
    runtime_env: dict[str, Any] = {"working_dir": str(workdir)}
    from alscale.runtime.shipping import strategy_sources
    from alscale.strategies import get_strategy

    modules = ([package_dir()] if package else []) + strategy_sources(get_strategy(job.strategy.name))
    if modules:  # alscale itself, and a user strategy's module (imported by the driver and the workers)
        runtime_env["py_modules"] = modules
    metadata = {"alscale_job": str(job.source), "alscale_output": str(spec["output"])}
    try:
        # A head that has just started answers "No available agent to submit job" until its
        # dashboard agent is up (seconds; a minute or more on a loaded machine); retry that,
        # and only that, for up to five minutes.
        deadline = time.monotonic() + 300
        while True:
            try:
                return _call(address, lambda c: c.submit_job(
                    entrypoint=entrypoint, runtime_env=runtime_env, submission_id=sid, metadata=metadata,
                    entrypoint_num_cpus=entrypoint_num_cpus))
            except AlscaleError as exc:
                if "No available agent" not in str(exc) or time.monotonic() > deadline:
                    raise
                logger.info("the Ray head has no job agent yet; retrying")
                time.sleep(2)
    finally:
        import shutil

        shutil.rmtree(workdir, ignore_errors=True)


def status(submission_id: str, *, address: str | None = None) -> dict[str, Any]:
    """``{"status": "RUNNING", "message": ..., "summary": ..., "entrypoint": ...}`` of a submitted
    job; ``summary`` is ``message`` in one line (see :func:`one_line`)."""
    info = _call(address, lambda c: c.get_job_info(submission_id))
    state = getattr(info.status, "value", str(info.status))
    message = info.message or ""
    return {"submission_id": submission_id, "status": state, "message": message, "summary": one_line(message),
            "entrypoint": info.entrypoint, "start_time": info.start_time, "end_time": info.end_time}


_EXIT_CODE = re.compile(r"exit code (-?\d+)")


def one_line(message: str) -> str:
    """Ray's status message in one line. A failed entrypoint's message is a header and the
    last 20,000 characters of its log; the driver's own verdict there — its last
    ``alscale: error:`` / ``alscale: failed:`` line, which names the cause and the fix — is
    kept with the exit code, the rest is left to ``alscale logs``."""
    lines = [ln.strip() for ln in message.splitlines() if ln.strip()]
    if len(lines) <= 1:
        return lines[0] if lines else ""
    verdict = next((ln for ln in reversed(lines[1:]) if ln.startswith("alscale: ")), None)
    code = _EXIT_CODE.search(lines[0])
    if verdict is not None:
        return (f"exit code {code.group(1)}: " if code else "") + verdict
    return f"{lines[0].rstrip(':')}; `alscale logs` shows the rest"


def logs(submission_id: str, *, address: str | None = None) -> str:
    return _call(address, lambda c: c.get_job_logs(submission_id))


def stop(submission_id: str, *, address: str | None = None) -> bool:
    return bool(_call(address, lambda c: c.stop_job(submission_id)))


def follow(submission_id: str, *, address: str | None = None, write: Callable[[str], Any] = print,
           poll_s: float = 1.0, timeout_s: float | None = None) -> str:
    """Print the job's log as it grows until it ends; returns the final status."""
    shown = 0
    start = time.monotonic()
    while True:
        state = status(submission_id, address=address)["status"]
        text = logs(submission_id, address=address)
        if len(text) > shown:
            write(text[shown:].rstrip("\n"))
            shown = len(text)
        if state in TERMINAL:
            return state
        if timeout_s is not None and time.monotonic() - start > timeout_s:
            raise AlscaleError(f"Ray job {submission_id} still {state} after {timeout_s:.0f} s; "
                               f"`alscale logs {submission_id} --follow` keeps watching")
        time.sleep(poll_s)


def exit_code(state: str) -> int:
    return EXIT_CODES.get(state, 1)

