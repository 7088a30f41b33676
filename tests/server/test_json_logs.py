"""``lookalike serve --log-format json --log-level debug``: every line is JSON, one per request, no secrets.

The real CLI in a child process (its stderr is the log), driven over gRPC and the PAI JSON port with
a token, OSS keys (in the environment and in an ``init`` call) and image bytes; then every captured
line must parse as JSON and none may hold the token, a wrong token, the keys or the image's bytes in
any spelling (raw, hex, base64).
"""

from __future__ import annotations

import base64
import json
import urllib.error
import urllib.request
from pathlib import Path

import pytest
from lookalike.client import ClientError, LookalikeClient
from photos import encode, photo
from served import serving

TOKEN = "tok-9f2c61d0e4b84a7bb1c3"
WRONG = "wrong-5e0a7c93d2f14b68"
AK_ID = "LTAI5tKeyIdAbcdef0123"
AK_SECRET = "oss-secret-Zx81Qw93Lm27Pd46"
ENV_SECRET = "env-secret-Hy64Tr15Nb08Vc"


def _secrets_and_image_forms(image: bytes) -> list[str]:
    chunk = image[200:248]
    forms = [TOKEN, WRONG, AK_ID, AK_SECRET, ENV_SECRET, base64.b64encode(chunk).decode()[:32], chunk.hex()[:32]]
    forms.append(repr(chunk)[2:34])  # how bytes print in a message
    forms.append(base64.b64encode(image).decode()[100:140])  # a slice of the whole base64 body (HTTP)
    return forms


def _pai(port: int, token: str, body: dict[str, object]) -> int:
    req = urllib.request.Request(
        f"http://127.0.0.1:{port}/api/predict/svc", data=json.dumps(body).encode(), method="POST"
    )
    req.add_header("Authorization", token)
    try:
        return urllib.request.urlopen(req, timeout=60).status
    except urllib.error.HTTPError as err:
        return err.code


@pytest.fixture(scope="module")
def logged(tmp_path_factory: pytest.TempPathFactory) -> tuple[list[str], bytes]:
    tmp = tmp_path_factory.mktemp("jsonlogs")
    env = {"OSS_ACCESS_KEY_ID": AK_ID, "OSS_ACCESS_KEY_SECRET": ENV_SECRET, "LOOKALIKE_LOG_FORMAT": "json"}
    extra = ("--log-level", "debug", "--oss-allow", "oss://b/prefix/", "--oss-endpoint-allow", "127.0.0.1:9")
    image = encode(photo("astronaut"), quality=90)
    other = encode(photo("coffee"), quality=90)
    # Every port is the server's own pick (port 0, read from its output): a port chosen here and freed
    # before the server binds it can be taken by another process in between.
    with serving(tmp, *extra, token=TOKEN, env=env) as served:
        address, http_port = served.grpc, served.http_port
        with LookalikeClient(address, token=f"Bearer {TOKEN}", timeout=60) as c:
            c.match(image, other)
            c.create_database("logs")
            c.set_image("logs", "g1", image=image)
            c.search("logs", image=image, top_k=3)
            with pytest.raises(ClientError):
                c.match(image[:300], other)  # truncated JPEG: an error that must not echo the bytes
        with LookalikeClient(address, token=WRONG, timeout=30) as bad, pytest.raises(ClientError):
            bad.match(image, other)
        oss = {"ak_id": AK_ID, "ak_secret": AK_SECRET, "hosts": "127.0.0.1:9", "buckets": "b"}
        _pai(http_port, TOKEN, {"function_name": "init", "function_params": {
            "backend": "oss", "root_path": "oss://b/prefix/", "oss_io_config": oss}})  # fmt: skip
        _pai(
            http_port,
            TOKEN,
            {"imagea": base64.b64encode(image).decode(), "imageb": base64.b64encode(other).decode()},
        )
        assert _pai(http_port, WRONG, {"function_name": "get"}) == 401
    log_path = served.log
    return Path(log_path).read_text().splitlines(), image


def test_every_line_is_a_json_object_with_the_common_fields(logged: tuple[list[str], bytes]) -> None:
    lines, _ = logged
    assert len(lines) > 5
    for line in lines:
        obj = json.loads(line)  # fails on any line that is not JSON (a stray print, a traceback)
        assert {"timestamp", "level", "logger", "message"} <= obj.keys(), line
        assert obj["timestamp"].endswith("+00:00") and obj["level"] in ("debug", "info", "warning", "error")


def test_one_line_per_request_with_id_rpc_status_and_latency(logged: tuple[list[str], bytes]) -> None:
    requests = [r for r in map(json.loads, logged[0]) if "rpc" in r]
    calls = [(r["rpc"], r["status"]) for r in requests]
    assert calls.count(("MatchService/Match", "OK")) == 1, calls
    assert ("MatchService/Match", "INVALID_ARGUMENT") in calls and ("MatchService/Match", "UNAUTHENTICATED") in calls
    assert ("DatabaseService/SetImage", "OK") in calls and ("SearchService/Search", "OK") in calls
    for r in requests:
        assert r["level"] == "debug" and r["logger"] == "lookalike.requests"
        assert isinstance(r["latency_ms"], float) and r["latency_ms"] >= 0
        assert len(r["request_id"]) >= 8
    assert len({r["request_id"] for r in requests}) == len(requests)  # one line per call, each its own id
    pai = [(r["rpc"], r["status"], r["http_status"]) for r in requests if r["rpc"].startswith("pai")]
    assert ("pai/match", "OK", 200) in pai, pai
    assert [p for p in pai if p[0] == "pai/init"] == [("pai/init", "OK", 200)], pai
    assert ("pai", "UNAUTHENTICATED", 401) in pai, pai  # refused before the body is read


def test_no_token_key_or_image_bytes_in_any_line(logged: tuple[list[str], bytes]) -> None:
    lines, image = logged
    text = "\n".join(lines)
    for form in _secrets_and_image_forms(image):
        assert form not in text, f"{form[:12]}... leaked into the logs"
    assert "Bearer tok" not in text


def test_the_redaction_guard_masks_credentials_in_both_formats() -> None:
    """Second line of defence: a careless message with a credential is masked, in text and in JSON."""
    import io
    import logging

    from lookalike.server.logging_setup import configure_logging

    for fmt in ("text", "json"):
        out = io.StringIO()
        handler = configure_logging("info", fmt, stream=out)
        try:
            logging.getLogger("lookalike.test").warning(
                "header Authorization: Bearer %s; ak_secret=%s", TOKEN, AK_SECRET
            )
        finally:
            logging.getLogger().removeHandler(handler)
        written = out.getvalue()
        assert TOKEN not in written and AK_SECRET not in written and "Bearer ***" in written, written
        if fmt == "json":
            assert json.loads(written)["level"] == "warning"
