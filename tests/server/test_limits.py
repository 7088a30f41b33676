"""Limits and overload: idle streams cannot starve the server, calls over a limit are refused at
once with a reason, input that used to end as INTERNAL is INVALID_ARGUMENT, and the settings
object validates every option from flags and the environment."""

from __future__ import annotations

import os
import subprocess
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import grpc
import numpy as np
import pytest
from durability_helpers import unit_vectors
from grpc_health.v1 import health_pb2, health_pb2_grpc
from lookalike.client import ClientError, LookalikeClient
from lookalike.v1 import database_service_pb2 as pb
from lookalike.v1 import database_service_pb2_grpc as pb_grpc
from photos import encode, photo


@pytest.fixture(scope="module")
def tight(tmp_path_factory):
    """A server with small limits, so they can be reached in a test."""
    from lookalike.server.app import create_server
    from lookalike.server.config import ServerConfig

    server = create_server(ServerConfig(
        port=0, data_dir=tmp_path_factory.mktemp("tight"), max_streams=4, stream_idle_s=2.0, max_inflight=2,
        max_message_bytes=1 << 20, max_top_k=50, snapshot_interval_s=0,
    ))  # fmt: skip
    with LookalikeClient(server.address) as c:
        c.create_database("t")
        c.set_image("t", "g", vector=unit_vectors(1, 1)[0].tolist())
    yield server
    server.stop(0)


def info(err: grpc.RpcError) -> tuple[grpc.StatusCode, str]:
    return err.code(), ClientError.from_rpc_error(err, "").reason


def test_idle_streams_cannot_starve_health_match_or_search(tight):
    release = threading.Event()

    def idle():
        yield pb.BulkSetImagesRequest(database="t", group_id="s")
        release.wait(30)  # a client that holds its stream open and sends nothing

    with grpc.insecure_channel(tight.address) as ch:
        stub = pb_grpc.DatabaseServiceStub(ch)
        streams = [stub.BulkSetImages.future(idle()) for _ in range(16)]
        time.sleep(0.5)
        refused = [f for f in streams if f.done() and f.exception() is not None]
        health = health_pb2_grpc.HealthStub(ch)
        with LookalikeClient(tight.address) as c:
            for _ in range(5):  # everyone else keeps being served while 16 streams hang
                started = time.monotonic()
                assert health.Check(health_pb2.HealthCheckRequest(), timeout=5).status == 1
                assert c.search("t", vector=unit_vectors(1, 1)[0].tolist(), top_k=1).hits[0].score > 0.99
                assert time.monotonic() - started < 2.0
            assert c.match(encode(photo("coffee")), encode(photo("coffee"))).similarity > 0.99
        assert len(refused) == 12  # over --max-streams 4: refused at once, not queued
        assert {info(f.exception()) for f in refused} == {(grpc.StatusCode.RESOURCE_EXHAUSTED, "TOO_MANY_STREAMS")}
        admitted = [f for f in streams if f not in refused]
        for f in admitted:  # the idle ones are cancelled after --stream-idle-s (2 s), freeing capacity
            assert f.exception(timeout=15).code() == grpc.StatusCode.CANCELLED
        release.set()
        item = pb.BulkSetImagesRequest(database="t", group_id="s", vector={"values": [1.0] * 1280})
        summary = stub.BulkSetImages(iter([item]), timeout=10)
        assert summary.succeeded_count == 1


def test_calls_over_the_inflight_limit_are_refused_at_once(tight):
    image = encode(photo("astronaut"))

    def one(_):
        try:
            with LookalikeClient(tight.address) as c:
                c.match(image, image)
            return "OK"
        except ClientError as e:
            return f"{e.code}/{e.reason}"

    with ThreadPoolExecutor(12) as pool:
        outcomes = list(pool.map(one, range(24)))
    assert set(outcomes) <= {"OK", "RESOURCE_EXHAUSTED/TOO_MANY_REQUESTS"}, outcomes
    assert "OK" in outcomes and "RESOURCE_EXHAUSTED/TOO_MANY_REQUESTS" in outcomes


def raw_call(address: str, method: str, payload: bytes) -> grpc.RpcError:
    with grpc.insecure_channel(address, options=[("grpc.max_send_message_length", 64 << 20)]) as ch:
        call = ch.unary_unary(method, request_serializer=None, response_deserializer=None)
        with pytest.raises(grpc.RpcError) as err:
            call(payload, timeout=30)
    return err.value


def test_a_name_that_is_not_utf8_is_invalid_argument_not_internal(tight):
    payload = b"\x0a\x04\xff\xfe\xfd\xfc"  # CreateDatabaseRequest.name with bytes that are not UTF-8
    err = raw_call(tight.address, "/lookalike.v1.DatabaseService/CreateDatabase", payload)
    assert info(err) == (grpc.StatusCode.INVALID_ARGUMENT, "REQUEST_UNDECODABLE")


def test_an_oversized_message_says_the_limit_with_a_reason(tight):
    req = pb.SetImageRequest(database="t", group_id="g")
    req.image.content = os.urandom(2 << 20)  # over --max-message-bytes 1 MiB
    err = raw_call(tight.address, "/lookalike.v1.DatabaseService/SetImage", req.SerializeToString())
    assert info(err) == (grpc.StatusCode.RESOURCE_EXHAUSTED, "MESSAGE_TOO_LARGE")
    assert "1048576" in err.details()


def test_inputs_that_used_to_be_internal_or_wrong(tight):
    with LookalikeClient(tight.address) as c:
        with pytest.raises(ClientError) as e:
            import base64

            token = base64.urlsafe_b64encode(b"[" * 100_000).decode()
            try:
                c.db_stub.ListImages(pb.ListImagesRequest(database="t", page_token=token))
            except grpc.RpcError as rpc:
                raise ClientError.from_rpc_error(rpc, "") from None
        assert (e.value.code, e.value.reason) == ("INVALID_ARGUMENT", "PAGE_TOKEN_INVALID")
        with pytest.raises(ClientError) as e:
            c.get_image("t", "g", -1)
        assert (e.value.code, e.value.reason) == ("INVALID_ARGUMENT", "INTRA_ID_INVALID")
        with pytest.raises(ClientError) as e:
            c.get_image("t", "", 0)
        assert (e.value.code, e.value.reason) == ("INVALID_ARGUMENT", "GROUP_ID_INVALID")
        tiny = np.zeros(1280)
        tiny[:3] = [1e-30, 2e-30, -2e-30]  # tiny but with a direction
        key = c.set_image("t", "tiny", vector=tiny.tolist()).key
        stored = np.asarray(c.get_image("t", key.group_id, key.intra_id, include_vector=True).vector.values)
        np.testing.assert_allclose(stored[:3], [1 / 3, 2 / 3, -2 / 3], rtol=1e-5)
        with pytest.raises(ClientError) as e:
            c.search("t", vector=unit_vectors(1, 2)[0].tolist(), top_k=51)
        assert e.value.reason == "TOP_K_INVALID" and "1-50" in e.value.message


def test_settings_flags_over_environment_over_defaults():
    import argparse

    from lookalike.server.config import ServerConfig

    parser = argparse.ArgumentParser()
    ServerConfig.add_arguments(parser)
    env = {"LOOKALIKE_PORT": "6000", "LOOKALIKE_FSYNC": "always", "LOOKALIKE_MAX_TOP_K": "77",
           "LOOKALIKE_TOKEN": "tok-SECRET-1"}  # fmt: skip
    cfg = ServerConfig.from_sources(parser.parse_args(["--port", "7000", "--no-persist"]), env)
    assert (cfg.port, cfg.fsync, cfg.max_top_k, cfg.persist, cfg.token) == (7000, "always", 77, False, "tok-SECRET-1")
    assert ServerConfig.from_sources(parser.parse_args([]), {}).port == 50051
    with pytest.raises(ValueError, match="LOOKALIKE_PORT='abc' is not a valid int for --port"):
        ServerConfig.from_sources(parser.parse_args([]), {"LOOKALIKE_PORT": "abc"})
    with pytest.raises(ValueError, match="--fsync must be one of always, batch, never"):
        ServerConfig.from_sources(parser.parse_args(["--fsync", "sometimes"]), {})
    with pytest.raises(ValueError, match="--max-inflight must be at least 1"):
        ServerConfig.from_sources(parser.parse_args(["--max-inflight", "0"]), {})
    assert "tok-SECRET-1" not in repr(cfg)  # the token is never shown


def test_cli_reports_bad_settings_in_one_line_and_client_commands_ignore_server_settings():
    env = {**os.environ, "LOOKALIKE_PORT": "abc"}
    lookalike = [sys.executable, "-m", "lookalike"]
    client = subprocess.run([*lookalike, "db", "list", "--server", "127.0.0.1:1"], env=env, capture_output=True,
                            text=True, timeout=60)  # fmt: skip
    assert client.returncode == 4 and "Traceback" not in client.stderr  # unreachable, not a crash
    serve = subprocess.run([*lookalike, "serve"], env=env, capture_output=True, text=True, timeout=60)
    assert serve.returncode == 64 and serve.stderr.strip().count("\n") == 0  # a usage error (EX_USAGE)
    assert "LOOKALIKE_PORT='abc' is not a valid int for --port" in serve.stderr
    helptext = subprocess.run([*lookalike, "serve", "--help"], capture_output=True, text=True, timeout=60).stdout
    import dataclasses

    from lookalike.server.config import ServerConfig, _env, _flag

    for f in dataclasses.fields(ServerConfig):
        if "env_only" in f.metadata:  # secrets (the token, OSS keys): no flag, but --help names the variable
            assert f.metadata["env_only"] in helptext, f.name
        else:  # every option is documented with its flag and its variable
            assert _flag(f) in helptext and _env(f) in helptext, f.name


def test_embed_errors_name_the_index_the_proto_promises(client):
    good = encode(photo("coffee"))
    with pytest.raises(ClientError) as e:
        client.embed([good, good, good, b"junk", good])
    assert (e.value.reason, e.value.metadata.get("index"), e.value.metadata.get("field")) == (
        "IMAGE_UNDECODABLE",
        "3",
        "images",
    )
