"""The metrics port: a silent client blocks no one under TLS, and it needs the token when one is set.

Before: the TLS handshake ran in the accept loop, so one TCP connection that never spoke blocked
``/metrics`` for everyone; and ``/metrics`` (database names and sizes) answered without a token
even when the server had one, unless ``--no-open-metrics``.
"""

from __future__ import annotations

import base64
import datetime
import ipaddress
import socket
import ssl
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

TOKEN = "metrics-t0ken"


def self_signed(folder: Path) -> tuple[Path, Path]:
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "127.0.0.1")])
    now = datetime.datetime.now(datetime.timezone.utc)
    cert = (
        x509.CertificateBuilder().subject_name(name).issuer_name(name).public_key(key.public_key())
        .serial_number(x509.random_serial_number()).not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]), False)
        .sign(key, hashes.SHA256())
    )  # fmt: skip
    cert_path, key_path = folder / "server.crt", folder / "server.key"
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                           serialization.NoEncryption()))  # fmt: skip
    return cert_path, key_path


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    from lookalike.server.app import create_server
    from lookalike.server.config import ServerConfig

    folder = tmp_path_factory.mktemp("metrics-port")
    cert, key = self_signed(folder)
    running = create_server(ServerConfig(port=0, data_dir=folder / "d", persist=False, token=TOKEN, tls_cert=cert,
                                         tls_key=key, metrics_port=0))  # fmt: skip
    running.cert = cert
    yield running
    running.stop(0)


def scrape(server, authorization: str | None, timeout: float = 3.0) -> int:
    request = urllib.request.Request(f"https://127.0.0.1:{server.metrics_endpoint.port}/metrics")
    if authorization:
        request.add_header("Authorization", authorization)
    context = ssl.create_default_context(cafile=str(server.cert))
    try:
        return urllib.request.urlopen(request, context=context, timeout=timeout).status
    except urllib.error.HTTPError as err:
        return err.code


def test_silent_connections_do_not_block_scrapes_under_tls(server):
    silent = [socket.create_connection(("127.0.0.1", server.metrics_endpoint.port)) for _ in range(5)]
    try:
        time.sleep(0.3)
        for _ in range(3):
            started = time.monotonic()
            assert scrape(server, f"Bearer {TOKEN}") == 200
            assert time.monotonic() - started < 2.0
    finally:
        for s in silent:
            s.close()


def test_metrics_need_the_token_by_default_when_one_is_set(server):
    assert scrape(server, None) == 401
    assert scrape(server, "Bearer wrong-token") == 401
    assert scrape(server, f"Bearer {TOKEN}") == 200
    basic = base64.b64encode(f"prometheus:{TOKEN}".encode()).decode()
    assert scrape(server, f"Basic {basic}") == 200  # Prometheus basic_auth: the token is the password


def test_open_metrics_is_an_explicit_choice():
    from lookalike.server.config import ServerConfig

    assert ServerConfig().open_metrics is False
    assert ServerConfig.from_sources(environ={"LOOKALIKE_OPEN_METRICS": "1"}).open_metrics is True
