"""TLS against a live server, with certificates made at test time: plain TLS, mutual TLS, wrong CAs refused."""

from __future__ import annotations

import datetime
import ipaddress
import ssl
import urllib.request
from dataclasses import dataclass
from pathlib import Path

import grpc
import pytest
from lookalike.client import ClientError, LookalikeClient
from photos import encode

cryptography = pytest.importorskip("cryptography")
from cryptography import x509  # noqa: E402
from cryptography.hazmat.primitives import hashes, serialization  # noqa: E402
from cryptography.hazmat.primitives.asymmetric import ec  # noqa: E402
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID  # noqa: E402


@dataclass
class Pem:
    cert: Path
    key: Path


def _name(common: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common)])


def _write(folder: Path, stem: str, cert: x509.Certificate, key: ec.EllipticCurvePrivateKey) -> Pem:
    out = Pem(folder / f"{stem}.crt", folder / f"{stem}.key")
    out.cert.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    out.key.write_bytes(
        key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
    )
    return out


def make_ca(folder: Path, common: str) -> tuple[Pem, x509.Certificate, ec.EllipticCurvePrivateKey]:
    key = ec.generate_private_key(ec.SECP256R1())
    now = datetime.datetime.now(datetime.timezone.utc)
    cert = (
        x509.CertificateBuilder()
        .subject_name(_name(common))
        .issuer_name(_name(common))
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .add_extension(x509.KeyUsage(True, False, False, False, False, True, True, False, False), critical=True)
        .sign(key, hashes.SHA256())
    )
    return _write(folder, common, cert, key), cert, key


def make_leaf(folder: Path, stem: str, ca: tuple[Pem, x509.Certificate, ec.EllipticCurvePrivateKey], *,
              server: bool) -> Pem:  # fmt: skip
    _, ca_cert, ca_key = ca
    key = ec.generate_private_key(ec.SECP256R1())
    now = datetime.datetime.now(datetime.timezone.utc)
    builder = (
        x509.CertificateBuilder()
        .subject_name(_name(stem))
        .issuer_name(ca_cert.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(
            x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH if server else ExtendedKeyUsageOID.CLIENT_AUTH]),
            critical=False,
        )
    )
    if server:
        builder = builder.add_extension(
            x509.SubjectAlternativeName([x509.DNSName("localhost"), x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]),
            critical=False,
        )
    return _write(folder, stem, builder.sign(ca_key, hashes.SHA256()), key)


@dataclass
class Pki:
    ca: Pem
    server: Pem
    client: Pem
    other_ca: Pem  # trusted by nobody
    rogue_client: Pem  # signed by other_ca


@pytest.fixture(scope="module")
def pki(tmp_path_factory) -> Pki:
    folder = tmp_path_factory.mktemp("pki")
    ca = make_ca(folder, "lookalike-test-ca")
    other = make_ca(folder, "someone-else-ca")
    return Pki(
        ca=ca[0],
        server=make_leaf(folder, "server", ca, server=True),
        client=make_leaf(folder, "client", ca, server=False),
        other_ca=other[0],
        rogue_client=make_leaf(folder, "rogue", other, server=False),
    )


def _serve(tmp_path_factory, pki: Pki, *, mutual: bool):
    from lookalike.server.app import create_server
    from lookalike.server.config import ServerConfig

    config = ServerConfig(
        port=0, data_dir=tmp_path_factory.mktemp("d"), persist=False, tls_cert=pki.server.cert, tls_key=pki.server.key,
        tls_client_ca=pki.ca.cert if mutual else None, metrics_port=0, http_port=0,
    )  # fmt: skip
    return create_server(config)


@pytest.fixture(scope="module")
def tls_server(tmp_path_factory, pki):
    running = _serve(tmp_path_factory, pki, mutual=False)
    yield running
    running.stop(0)


@pytest.fixture(scope="module")
def mtls_server(tmp_path_factory, pki):
    running = _serve(tmp_path_factory, pki, mutual=True)
    yield running
    running.stop(0)


def refused(make_client) -> ClientError:
    with make_client() as c:
        with pytest.raises(ClientError) as info:
            c.list_databases()
    return info.value


def test_tls_server_answers_clients_that_trust_its_ca(tls_server, pki, photos):
    img = encode(photos["coffee"])
    with LookalikeClient(tls_server.address, tls_ca=pki.ca.cert, timeout=30) as c:
        assert c.match(img, img).cosine == pytest.approx(1.0, abs=1e-5)
    with LookalikeClient(f"localhost:{tls_server.port}", tls_ca=pki.ca.cert, timeout=30) as c:  # by name too
        assert c.list_databases() == []


def test_tls_server_refuses_plaintext_and_untrusted_clients(tls_server, pki):
    err = refused(lambda: LookalikeClient(tls_server.address, timeout=5))  # plaintext to a TLS port
    assert err.code == "UNAVAILABLE"
    err = refused(lambda: LookalikeClient(tls_server.address, tls_ca=pki.other_ca.cert, timeout=5))
    assert err.code == "UNAVAILABLE"  # the server's certificate is not signed by the CA this client trusts


def test_mutual_tls_requires_a_client_certificate_from_the_right_ca(mtls_server, pki, photos):
    img = encode(photos["coffee"])
    with LookalikeClient(mtls_server.address, tls_ca=pki.ca.cert, tls_cert=pki.client.cert, tls_key=pki.client.key,
                         timeout=30) as c:  # fmt: skip
        assert c.match(img, img).cosine == pytest.approx(1.0, abs=1e-5)
    assert refused(lambda: LookalikeClient(mtls_server.address, tls_ca=pki.ca.cert, timeout=5)).code == "UNAVAILABLE"
    rogue = refused(
        lambda: LookalikeClient(
            mtls_server.address,
            tls_ca=pki.ca.cert,
            tls_cert=pki.rogue_client.cert,
            tls_key=pki.rogue_client.key,
            timeout=5,
        )  # fmt: skip
    )
    assert rogue.code == "UNAVAILABLE"
    with grpc.insecure_channel(mtls_server.address) as ch:  # no TLS at all
        with pytest.raises(grpc.FutureTimeoutError):
            grpc.channel_ready_future(ch).result(timeout=2)


def test_metrics_endpoint_follows_the_tls_policy(tls_server, mtls_server, pki):
    context = ssl.create_default_context(cafile=str(pki.ca.cert))
    url = f"https://127.0.0.1:{tls_server.metrics_endpoint.port}/metrics"
    assert b"lookalike_requests_total" in urllib.request.urlopen(url, context=context, timeout=10).read()
    with pytest.raises(OSError):  # plain HTTP to the TLS port gets no answer it can parse
        urllib.request.urlopen(f"http://127.0.0.1:{tls_server.metrics_endpoint.port}/metrics", timeout=5).read()
    mutual_url = f"https://127.0.0.1:{mtls_server.metrics_endpoint.port}/metrics"
    with pytest.raises(OSError):  # no client certificate
        urllib.request.urlopen(mutual_url, context=context, timeout=5).read()
    context.load_cert_chain(str(pki.client.cert), str(pki.client.key))
    assert b"process_resident_memory_bytes" in urllib.request.urlopen(mutual_url, context=context, timeout=10).read()


def test_cli_flags_reach_a_mutual_tls_server(mtls_server, pki, capsys):
    from lookalike.client.commands import run_client_command

    from lookalike.cli import build_parser

    common = ["--server", mtls_server.address, "--json", "--tls-ca", str(pki.ca.cert)]
    args = build_parser().parse_args(["db", "list", *common, "--tls-cert", str(pki.client.cert),
                                      "--tls-key", str(pki.client.key)])  # fmt: skip
    assert run_client_command(args) == 0
    assert capsys.readouterr().out.strip() == "[]"


def test_bad_tls_settings_are_refused_with_the_option_named(tmp_path, pki):
    from lookalike.server.config import ServerConfig
    from lookalike.server.transport.tls import server_credentials

    with pytest.raises(ValueError, match="--tls-cert and --tls-key"):
        ServerConfig(tls_cert=pki.server.cert)
    with pytest.raises(ValueError, match="--tls-client-ca needs"):
        ServerConfig(tls_client_ca=pki.ca.cert)
    not_pem = tmp_path / "x.crt"
    not_pem.write_text("hello")
    with pytest.raises(ValueError, match="not a PEM"):
        server_credentials(not_pem, pki.server.key)
    with pytest.raises(ValueError, match="no private key"):
        server_credentials(pki.server.cert, pki.server.cert)


def test_the_pai_http_port_follows_the_tls_policy(tls_server, mtls_server, pki):
    import json

    body = json.dumps({"function_name": "get"}).encode()
    context = ssl.create_default_context(cafile=str(pki.ca.cert))
    url = f"https://127.0.0.1:{tls_server.http_port}/api/predict/x"
    post = urllib.request.Request
    reply = json.loads(urllib.request.urlopen(post(url, data=body), context=context, timeout=10).read())
    assert reply["success"] is True and "db_dict" in reply
    with pytest.raises(OSError):  # plain HTTP to the TLS port
        urllib.request.urlopen(post(f"http://127.0.0.1:{tls_server.http_port}/", data=body), timeout=5)
    mutual = f"https://127.0.0.1:{mtls_server.http_port}/"
    with pytest.raises(OSError):  # no client certificate
        urllib.request.urlopen(urllib.request.Request(mutual, data=body), context=context, timeout=5)
    context.load_cert_chain(str(pki.client.cert), str(pki.client.key))
    assert json.loads(urllib.request.urlopen(urllib.request.Request(mutual, data=body), context=context,
                                             timeout=10).read())["success"] is True  # fmt: skip


def test_the_web_console_over_tls_keeps_its_cookies_secure(tmp_path_factory, pki):
    """The console is on the HTTP port, so it has TLS when the server has: its session and CSRF cookies are then
    Secure (and still HttpOnly, SameSite=Strict), and it answers nothing over plain HTTP."""
    import requests
    from lookalike.server.app import create_server
    from lookalike.server.config import ServerConfig

    token = "console-tls-token-0123456789abcdef"
    config = ServerConfig(port=0, http_port=0, token=token, persist=False, tls_cert=pki.server.cert,
                          tls_key=pki.server.key, data_dir=tmp_path_factory.mktemp("console-tls"))  # fmt: skip
    running = create_server(config)
    try:
        base, ca = f"https://127.0.0.1:{running.http_port}/ui", str(pki.ca.cert)
        s = requests.Session()
        assert s.get(base + "/signin", verify=ca, timeout=30).status_code == 200
        csrf = s.cookies.get("lookalike_csrf")
        r = s.post(base + "/signin", data={"token": token, "csrf": csrf}, allow_redirects=False, verify=ca, timeout=30)
        assert r.status_code == 303 and r.headers["location"] == "/ui/databases"
        cookies = {c.name: c for c in s.cookies}
        assert set(cookies) == {"lookalike_console", "lookalike_csrf"}
        for c in cookies.values():
            assert c.secure and c.path == "/ui" and c.has_nonstandard_attr("HttpOnly"), c.name
            assert c.get_nonstandard_attr("SameSite").lower() == "strict", c.name
        assert s.get(base + "/databases", allow_redirects=False, verify=ca, timeout=30).status_code == 200
        with pytest.raises(OSError):  # plain HTTP to the console's TLS port
            requests.get(f"http://127.0.0.1:{running.http_port}/ui/signin", timeout=5)
    finally:
        running.stop(0)
