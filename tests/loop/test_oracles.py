"""Oracles: a program on stdin/stdout, a loopback HTTP service, people (through the ledger),
and hybrid routing by uncertainty."""

from __future__ import annotations

import json
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, HTTPServer

import numpy as np
import pytest

from alscale.errors import AlscaleError
from alscale.loop.ledger import Ledger
from alscale.loop.oracle import CommandOracle, HttpOracle, HumanOracle, HybridOracle

LABELLER = """
import json, sys
mode = sys.argv[1]
for line in sys.stdin:
    rec = json.loads(line)
    if mode == "skip" and rec["row_id"] == 5:
        continue
    label = 99 if mode == "big" else rec["row_id"] % 10
    print(json.dumps({"row_id": rec["row_id"], "label": label}))
if mode == "fail":
    print("model not loaded", file=sys.stderr); sys.exit(3)
"""


@pytest.fixture
def labeller(tmp_path):
    path = tmp_path / "labeller.py"
    path.write_text(LABELLER)
    return lambda mode: [sys.executable, str(path), mode]


def test_command_oracle_labels_through_stdin_and_stdout(labeller):
    oracle = CommandOracle(labeller("ok"), n_classes=10, describe=lambda ids: [{"path": f"img/{i}.png"} for i in ids])
    assert oracle.label(np.array([13, 5, 27])).tolist() == [3, 5, 7] and oracle.queries == 3


@pytest.mark.parametrize("mode, message", [
    ("skip", "gave no label for row_id 5"),
    ("big", "labelled row_id 13 99; labels are class indices 0..9"),
    ("fail", "exited with code 3: model not loaded"),
])
def test_command_oracle_failures_are_clear(labeller, mode, message):
    with pytest.raises(AlscaleError, match=message):
        CommandOracle(labeller(mode), n_classes=10).label(np.array([13, 5]))


def test_command_oracle_never_goes_through_a_shell():
    with pytest.raises(AlscaleError, match="give the program as a list of arguments"):
        CommandOracle("python labeller.py; rm -rf /")  # a string is refused, not split or run
    with pytest.raises(AlscaleError, match="no such program"):
        CommandOracle(["/nonexistent/labeller"]).label(np.array([1]))


def test_http_oracle_on_loopback_only():
    class Handler(BaseHTTPRequestHandler):
        def do_POST(self):  # noqa: N802
            rows = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
            body = json.dumps([{"row_id": r["row_id"], "label": r["row_id"] % 3} for r in rows]).encode()
            self.send_response(200)
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args):
            pass

    server = HTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        oracle = HttpOracle(f"http://127.0.0.1:{server.server_port}/label", n_classes=3)
        assert oracle.label(np.array([4, 8, 9])).tolist() == [1, 2, 0]
    finally:
        server.shutdown()
    with pytest.raises(AlscaleError, match="only a service on this machine"):
        HttpOracle("http://labels.example.com/label")
    with pytest.raises(AlscaleError, match="no answer"):
        HttpOracle("http://127.0.0.1:1/label", timeout_s=2).label(np.array([1]))


def test_human_oracle_waits_for_the_import(tmp_path):
    oracle = HumanOracle(tmp_path / "inbox", tmp_path / "ledger", poll_s=0.05, timeout_s=30)

    def annotator():  # reads the batch, labels it a moment later
        deadline = time.monotonic() + 10
        while not (tmp_path / "inbox" / "pending-00000.jsonl").exists() and time.monotonic() < deadline:
            time.sleep(0.02)
        ids = [json.loads(x)["row_id"] for x in (tmp_path / "inbox" / "pending-00000.jsonl").read_text().splitlines()]
        time.sleep(0.2)
        Ledger(tmp_path / "ledger").append(np.array(ids), np.array(ids) % 4, 0, "people")

    t = threading.Thread(target=annotator)
    t.start()
    assert oracle.label(np.array([7, 2, 11])).tolist() == [3, 2, 3]
    t.join()
    with pytest.raises(AlscaleError, match="were not imported into"):
        HumanOracle(tmp_path / "inbox2", tmp_path / "ledger2", poll_s=0.05, timeout_s=0.2).label(np.array([1]))


def test_hybrid_routing_is_recorded(labeller, tmp_path):
    people = HumanOracle(tmp_path / "inbox", tmp_path / "ledger", poll_s=0.05, timeout_s=30)
    Ledger(tmp_path / "ledger").append(np.array([2, 9]), np.array([1, 1]), 0, "people")  # already answered
    hybrid = HybridOracle(CommandOracle(labeller("ok"), n_classes=10), people, threshold=0.5)
    labels = hybrid.label_scored(np.array([13, 2, 27, 9]), np.array([0.1, 0.9, 0.2, 0.7]))
    assert labels.tolist() == [3, 1, 7, 1]
    assert hybrid.routes == [(13, "command", 0.1), (2, "human", 0.9), (27, "command", 0.2), (9, "human", 0.7)]
