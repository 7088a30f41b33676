"""Prometheus metrics scraped from a live server move with real calls; request logs carry no secrets."""

from __future__ import annotations

import logging
import urllib.error
import urllib.request
from concurrent.futures import ThreadPoolExecutor

import grpc
import pytest
from lookalike.client import ClientError, LookalikeClient
from photos import encode
from prometheus_client.parser import text_string_to_metric_families

TOKEN = "metrics-t0ken-SECRET"
MATCH = "MatchService/Match"


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    from lookalike.server.app import create_server
    from lookalike.server.config import ServerConfig

    config = ServerConfig(port=0, data_dir=tmp_path_factory.mktemp("d"), persist=False, token=TOKEN, metrics_port=0,
                          open_metrics=False, batch_wait_ms=20.0, max_batch=4, model_workers=1,
                          http_port=0)  # fmt: skip
    running = create_server(config)
    yield running
    running.stop(0)


@pytest.fixture(scope="module")
def client(server):
    with LookalikeClient(server.address, token=TOKEN, timeout=60) as c:
        yield c


def scrape(server, token: str | None = TOKEN) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    req = urllib.request.Request(f"http://127.0.0.1:{server.metrics_endpoint.port}/metrics")
    if token is not None:
        req.add_header("Authorization", f"Bearer {token}")
    text = urllib.request.urlopen(req, timeout=10).read().decode()
    out = {}
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            out[(s.name, tuple(sorted(s.labels.items())))] = s.value
    return out


def value(samples, name: str, **labels: str) -> float:
    return samples.get((name, tuple(sorted(labels.items()))), 0.0)


def test_match_calls_move_request_latency_decode_and_batch_series(server, client, photos):
    img = encode(photos["coffee"])
    before = scrape(server)
    for _ in range(3):
        client.match(img, img)
    after = scrape(server)
    delta = lambda name, **kw: value(after, name, **kw) - value(before, name, **kw)  # noqa: E731
    assert delta("lookalike_requests_total", method=MATCH, code="OK") == 3
    assert delta("lookalike_request_seconds_count", method=MATCH, code="OK") == 3
    assert delta("lookalike_request_seconds_sum", method=MATCH, code="OK") > 0
    assert delta("lookalike_images_decoded_total") == 6
    assert delta("lookalike_batch_images_sum") == 6  # each Match embeds its two images in one model call
    assert delta("lookalike_batch_images_count") == 3
    assert value(after, "lookalike_requests_in_flight", method=MATCH) == 0
    assert value(after, "lookalike_batch_queue_images") == 0
    assert value(after, "process_resident_memory_bytes") > 50e6
    modes = [labels for (name, labels) in after if name == "lookalike_model_execution"]
    assert modes == [(("device", "cpu"), ("mode", server.service.embedder.execution))], modes


def test_concurrent_calls_show_up_as_shared_batches(server, client, photos):
    img = encode(photos["coffee"])
    before = scrape(server)
    with ThreadPoolExecutor(8) as pool:
        list(pool.map(lambda _: client.match(img, img), range(8)))
    after = scrape(server)
    calls = value(after, "lookalike_batch_images_count") - value(before, "lookalike_batch_images_count")
    requests = value(after, "lookalike_batch_requests_sum") - value(before, "lookalike_batch_requests_sum")
    assert requests == 8 and 1 <= calls < 8, f"8 concurrent Match calls took {calls} model calls"


def test_refusals_are_counted_by_reason_and_code(server, client, photos):
    before = scrape(server)
    with pytest.raises(ClientError) as info:
        client.match(b"this is not an image at all", encode(photos["coffee"]))
    assert info.value.reason == "IMAGE_UNDECODABLE"
    with pytest.raises(ClientError):
        client.match(b"", b"")
    with LookalikeClient(server.address, token="wrong") as anonymous, pytest.raises(ClientError):
        anonymous.list_databases()
    after = scrape(server)
    delta = lambda name, **kw: value(after, name, **kw) - value(before, name, **kw)  # noqa: E731
    assert delta("lookalike_images_rejected_total", reason="IMAGE_UNDECODABLE") == 1
    assert delta("lookalike_images_rejected_total", reason="IMAGE_MISSING") == 1
    assert delta("lookalike_requests_total", method=MATCH, code="INVALID_ARGUMENT") == 2
    assert delta("lookalike_requests_total", method="DatabaseService/ListDatabases", code="UNAUTHENTICATED") == 1


def test_database_sizes(server, client, photos):
    client.create_database("sized")
    imgs = [encode(photos[n]) for n in ("coffee", "astronaut", "chelsea")]
    for i, im in enumerate(imgs):
        client.set_image("sized", f"g{i % 2}", image=im)
    samples = scrape(server)
    assert value(samples, "lookalike_database_images", database="sized") == 3
    assert value(samples, "lookalike_database_groups", database="sized") == 2
    assert value(samples, "lookalike_requests_total", method="DatabaseService/SetImage", code="OK") == 3
    client.delete_database("sized")
    assert ("lookalike_database_images", (("database", "sized"),)) not in scrape(server)


def test_metrics_need_the_token_when_not_open(server):
    for token in (None, "wrong"):
        with pytest.raises(urllib.error.HTTPError) as info:
            scrape(server, token)
        assert info.value.code == 401
        assert TOKEN not in info.value.read().decode()
    basic = urllib.request.Request(f"http://127.0.0.1:{server.metrics_endpoint.port}/metrics")
    import base64

    basic.add_header("Authorization", "Basic " + base64.b64encode(f"prometheus:{TOKEN}".encode()).decode())
    assert urllib.request.urlopen(basic, timeout=10).status == 200


def test_one_debug_line_per_request_with_an_id_and_no_secrets(server, client, photos, caplog):
    marker = b"\xff\xd8\xffSECRET-PIXELS-0123456789"  # looks like a JPEG start, then bytes that must never be logged
    img = encode(photos["coffee"])
    caplog.set_level(logging.DEBUG)
    client.match(img, img)
    with pytest.raises(ClientError):
        client.match(marker, img)
    with LookalikeClient(server.address, token="Bearer wrong-" + TOKEN) as c, pytest.raises(ClientError):
        c.list_databases()
    with grpc.insecure_channel(server.address) as ch:  # a client-chosen request id is kept (when short and safe)
        from lookalike.v1 import database_service_pb2 as db_pb
        from lookalike.v1 import database_service_pb2_grpc as db_grpc

        stub = db_grpc.DatabaseServiceStub(ch)
        _, call = stub.ListDatabases.with_call(
            db_pb.ListDatabasesRequest(), metadata=(("authorization", TOKEN), ("x-request-id", "trace-42")), timeout=10
        )
        assert ("x-request-id", "trace-42") in call.initial_metadata()
    lines = [r.getMessage() for r in caplog.records if r.name == "lookalike.requests"]
    assert len(lines) == 4, lines
    assert sum(f"method={MATCH} code=OK" in ln for ln in lines) == 1
    assert sum(f"method={MATCH} code=INVALID_ARGUMENT" in ln for ln in lines) == 1
    assert any("code=UNAUTHENTICATED" in ln for ln in lines)
    assert any("id=trace-42 " in ln for ln in lines)
    ids = [ln.split("id=")[1].split()[0] for ln in lines]
    assert len(set(ids)) == 4
    everything = "\n".join(f"{r.name} {r.getMessage()} {r.args!r} {r.exc_text or ''}" for r in caplog.records)
    for secret in (TOKEN, "SECRET-PIXELS", "wrong-"):
        assert secret not in everything
    assert "authorization" not in everything.lower()


def test_pai_json_calls_are_counted_per_function_and_status(server, photos):
    import base64
    import json

    def post(body: dict[str, object], token: str = TOKEN) -> int:
        req = urllib.request.Request(f"http://127.0.0.1:{server.http_port}/api/predict/svc",
                                     data=json.dumps(body).encode(), headers={"Authorization": token})  # fmt: skip
        try:
            return urllib.request.urlopen(req, timeout=60).status
        except urllib.error.HTTPError as err:
            return err.code

    img = base64.b64encode(encode(photos["coffee"])).decode()
    before = scrape(server)
    assert post({"imagea": img, "imageb": img}) == 200
    assert post({"function_name": "db_search", "function_params": {"database_name": "nope", "image": img}}) == 404
    assert post({"function_name": "get"}, token="wrong") == 401
    after = scrape(server)
    delta = lambda name, **kw: value(after, name, **kw) - value(before, name, **kw)  # noqa: E731
    assert delta("lookalike_requests_total", method="pai/match", code="OK") == 1
    assert delta("lookalike_requests_total", method="pai/db_search", code="NOT_FOUND") == 1
    assert delta("lookalike_requests_total", method="pai", code="UNAUTHENTICATED") == 1
    assert delta("lookalike_request_seconds_count", method="pai/match", code="OK") == 1


def test_the_queue_gauge_counts_every_models_queue():
    """With several models (``--model``), each has a batcher: the gauge read only the last one watched."""
    from lookalike.server.transport.metrics import ServerMetrics
    from prometheus_client import generate_latest

    class Waiting:  # what the gauge reads of an embedder: its batcher's queue, device and execution
        def __init__(self, depth: int) -> None:
            self.batcher = type("B", (), {"observers": [], "queue_depth": depth})()
            self.device, self.execution = "cpu", "eager"

        def prepare(self, data: bytes, **_: object) -> None:
            return None

    m = ServerMetrics()
    for depth in (3, 5):
        m.watch_embedder(Waiting(depth))
    text = generate_latest(m.registry).decode()
    gauge = {s.name: s.value for f in text_string_to_metric_families(text) for s in f.samples}
    assert gauge["lookalike_batch_queue_images"] == 8
