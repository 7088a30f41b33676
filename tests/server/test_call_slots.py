"""``--max-inflight`` is one count for the whole server, not one per port.

Before, the gRPC and HTTP ports each admitted ``--max-inflight`` calls, so the server ran twice
the limit it was given. Here every slot is taken (as calls in progress would): both ports refuse
at once, gRPC with RESOURCE_EXHAUSTED and HTTP with 429; one slot given back serves either.
"""

from __future__ import annotations

import json
import urllib.error
import urllib.request

import pytest
from durability_helpers import start
from lookalike.client import ClientError, LookalikeClient


def post(port: int, body: dict) -> tuple[int, dict]:
    req = urllib.request.Request(f"http://127.0.0.1:{port}/", data=json.dumps(body).encode(),
                                 headers={"Content-Type": "application/json"})  # fmt: skip
    try:
        with urllib.request.urlopen(req, timeout=30) as r:
            return r.status, json.loads(r.read())
    except urllib.error.HTTPError as err:
        return err.code, json.loads(err.read())


def test_the_grpc_and_http_ports_share_one_inflight_limit(tmp_path):
    server = start(tmp_path / "data", http_port=0, max_inflight=2)
    try:
        server.wait_ready(60)
        listing = {"function_name": "db_get", "function_params": {"db_name": "nope"}}
        slots = server.grpc.slots
        assert slots.take() and slots.take()  # two calls in progress, on whichever port
        with LookalikeClient(server.address) as c:
            with pytest.raises(ClientError) as err:
                c.list_databases()
            assert (err.value.code, err.value.reason) == ("RESOURCE_EXHAUSTED", "TOO_MANY_REQUESTS")
            status, body = post(server.http_port, listing)
            assert (status, body["error_code"]) == (429, "TOO_MANY_REQUESTS")
            slots.give_back()
            assert c.list_databases() == []  # one free slot: gRPC gets it...
            status, body = post(server.http_port, listing)
            assert (status, body["error_code"]) == (400, "PARAM_MISSING")  # ...and then HTTP reads the call
            slots.give_back()
    finally:
        server.stop(0)
