"""Token files: several tokens, rotated without a restart; the CLI's --token; probes open or closed by setting."""

from __future__ import annotations

import json
import os
import time
from concurrent import futures

import grpc
import pytest
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from lookalike.client import ClientError, LookalikeClient
from lookalike.server.transport.auth import RECHECK_S, TokenAuthInterceptor, TokenSet
from photos import encode


def write_tokens(path, *tokens: str) -> None:
    """Rewrite atomically (as a config manager would) and make sure the stamp moves even on coarse clocks."""
    tmp = path.with_suffix(".tmp")
    tmp.write_text("# rotated by the test\n" + "".join(f"{t}\n" for t in tokens))
    old = path.stat().st_mtime_ns if path.exists() else 0
    os.replace(tmp, path)
    if path.stat().st_mtime_ns == old:
        os.utime(path, ns=(old + 1_000_000, old + 1_000_000))


@pytest.fixture(scope="module")
def token_file(tmp_path_factory):
    path = tmp_path_factory.mktemp("tokens") / "tokens.txt"
    write_tokens(path, "alpha-0001", "beta-0002")
    return path


@pytest.fixture(scope="module")
def file_server(tmp_path_factory, token_file):
    from lookalike.server.app import create_server
    from lookalike.server.config import ServerConfig

    config = ServerConfig(port=0, data_dir=tmp_path_factory.mktemp("d"), persist=False, token="env-token-9",
                          token_file=token_file, http_port=0)  # fmt: skip
    running = create_server(config)
    yield running
    running.stop(0)


def accepted(address: str, token: str | None) -> bool:
    with LookalikeClient(address, token=token, timeout=30) as c:
        try:
            c.list_databases()
            return True
        except ClientError as err:
            assert (err.code, err.reason) == ("UNAUTHENTICATED", "TOKEN_INVALID")
            return False


def wait_for(predicate, timeout: float = 10.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(RECHECK_S / 2)
    return predicate()


def test_every_token_of_the_file_and_the_variable_is_accepted(file_server):
    for token in ("alpha-0001", "Bearer beta-0002", "bearer alpha-0001", "env-token-9"):
        assert accepted(file_server.address, token), token
    for token in (None, "", "alpha", "alpha-0001x", "Bearer", "# rotated by the test", "alpha-0001 beta-0002"):
        assert not accepted(file_server.address, token), token


def test_unauthenticated_calls_get_no_data(file_server, photos):
    with LookalikeClient(file_server.address, token="env-token-9") as ok:
        ok.create_database("secret-db")
    ch = grpc.insecure_channel(file_server.address)
    from lookalike.v1 import database_service_pb2 as db_pb
    from lookalike.v1 import database_service_pb2_grpc as db_grpc

    stub = db_grpc.DatabaseServiceStub(ch)
    with pytest.raises(grpc.RpcError) as info:
        stub.ListDatabases(db_pb.ListDatabasesRequest(), metadata=(("authorization", "wrong"),), timeout=10)
    assert info.value.code() == grpc.StatusCode.UNAUTHENTICATED
    assert "secret-db" not in (info.value.details() or "")
    assert all(b"secret-db" not in (v if isinstance(v, bytes) else v.encode())
               for _, v in info.value.trailing_metadata() or ())  # fmt: skip
    ch.close()


def test_rotation_without_restart(file_server, token_file):
    assert accepted(file_server.address, "alpha-0001")
    write_tokens(token_file, "beta-0002", "gamma-0003")  # alpha retired, gamma added
    assert wait_for(lambda: accepted(file_server.address, "gamma-0003"))
    assert not accepted(file_server.address, "alpha-0001")
    assert accepted(file_server.address, "beta-0002") and accepted(file_server.address, "env-token-9")
    # A broken rewrite (a token with a space) keeps the last good set rather than locking everyone out.
    write_tokens(token_file, "delta 0004")
    time.sleep(RECHECK_S * 3)
    assert accepted(file_server.address, "gamma-0003") and not accepted(file_server.address, "delta 0004")
    # Emptying the file leaves only the variable's token: the file's tokens are all revoked.
    write_tokens(token_file)
    assert wait_for(lambda: not accepted(file_server.address, "gamma-0003"))
    assert accepted(file_server.address, "env-token-9")
    write_tokens(token_file, "alpha-0001", "beta-0002")


def test_cli_token_flag_and_token_file(file_server, tmp_path, capsys, monkeypatch):
    from lookalike.client.commands import run_client_command

    from lookalike.cli import build_parser

    monkeypatch.delenv("LOOKALIKE_TOKEN", raising=False)
    assert wait_for(lambda: accepted(file_server.address, "alpha-0001"))

    def cli(*argv: str) -> int:
        return run_client_command(build_parser().parse_args([*argv, "--server", file_server.address, "--json"]))

    assert cli("db", "list") == 2
    assert json.loads(capsys.readouterr().out)["error"]["reason"] == "TOKEN_INVALID"
    assert cli("db", "list", "--token", "alpha-0001") == 0
    assert isinstance(json.loads(capsys.readouterr().out), list)
    mine = tmp_path / "my-token"
    mine.write_text("beta-0002\n")
    assert cli("db", "list", "--token-file", str(mine)) == 0
    capsys.readouterr()
    monkeypatch.setenv("LOOKALIKE_TOKEN", "env-token-9")
    assert cli("db", "list") == 0


def test_token_file_problems_stop_start_up(tmp_path):
    with pytest.raises(ValueError, match="cannot|No such file"):
        TokenSet(None, tmp_path / "missing")
    empty = tmp_path / "empty"
    empty.write_text("# nothing yet\n\n")
    with pytest.raises(ValueError, match="holds no token"):
        TokenSet(None, empty)
    spaced = tmp_path / "spaced"
    spaced.write_text("two words\n")
    with pytest.raises(ValueError, match="line 1"):
        TokenSet(None, spaced)
    assert not TokenSet(None, None).enabled and TokenSet(None, None).tokens() == ()


@pytest.mark.parametrize("open_health", [True, False])
def test_health_openness_is_a_setting(open_health):
    """A bare gRPC server with the auth interceptor: probes pass without a token only when open."""
    server = grpc.server(
        futures.ThreadPoolExecutor(2), interceptors=[TokenAuthInterceptor("t0k", open_health=open_health)]
    )
    servicer = health.HealthServicer()
    health_pb2_grpc.add_HealthServicer_to_server(servicer, server)
    servicer.set("", health_pb2.HealthCheckResponse.SERVING)
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    try:
        with grpc.insecure_channel(f"127.0.0.1:{port}") as ch:
            stub = health_pb2_grpc.HealthStub(ch)
            if open_health:
                assert stub.Check(health_pb2.HealthCheckRequest(), timeout=10).status == 1
            else:
                with pytest.raises(grpc.RpcError) as info:
                    stub.Check(health_pb2.HealthCheckRequest(), timeout=10)
                assert info.value.code() == grpc.StatusCode.UNAUTHENTICATED
                with pytest.raises(grpc.RpcError) as info:  # the streaming Watch is closed too
                    next(stub.Watch(health_pb2.HealthCheckRequest(), timeout=10))
                assert info.value.code() == grpc.StatusCode.UNAUTHENTICATED
                ok = stub.Check(
                    health_pb2.HealthCheckRequest(), metadata=(("authorization", "Bearer t0k"),), timeout=10
                )
                assert ok.status == 1
    finally:
        server.stop(0)


def test_image_calls_refused_without_token(file_server, photos):
    img = encode(photos["coffee"])
    with LookalikeClient(file_server.address, token="nope") as c:
        with pytest.raises(ClientError) as info:
            c.bulk_set("secret-db", [("g", None, img, "r")])
        assert info.value.code == "UNAUTHENTICATED"


def test_the_http_gateway_takes_the_same_tokens(file_server, token_file):
    """The PAI-compatible JSON port checks the token set too (file tokens included, rotation included)."""
    import json
    import urllib.error
    import urllib.request

    url = f"http://127.0.0.1:{file_server.http_port}/api/predict/svc"

    def status(token: str | None) -> int:
        req = urllib.request.Request(url, data=json.dumps({"function_name": "get"}).encode(), method="POST")
        if token is not None:
            req.add_header("Authorization", token)
        try:
            return urllib.request.urlopen(req, timeout=30).status
        except urllib.error.HTTPError as err:
            return err.code

    assert wait_for(lambda: accepted(file_server.address, "alpha-0001"))
    assert status("alpha-0001") == 200 and status("Bearer env-token-9") == 200
    assert status(None) == 401 and status("nope") == 401
