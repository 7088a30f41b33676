"""A client and a server that disagree about TLS are told so, with the flag that fixes it.

Before, a plaintext ``lookalike`` against a TLS server (or the reverse) printed "cannot reach a
Lookalike server ... start one with `lookalike serve`" although one was running; and the server's
start-up line gave no hint that clients need TLS.
"""

from __future__ import annotations

import subprocess
from collections.abc import Iterator

import pytest
from cli import LOOKALIKE, run, serving

pytest.importorskip("cryptography")
from pki import make_pki


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> dict:
    return make_pki(tmp_path_factory.mktemp("pki"))


@pytest.fixture(scope="module")
def tls_address(tmp_path_factory, pki) -> Iterator[str]:
    flags = ("--tls-cert", str(pki["server"]), "--tls-key", str(pki["key"]))
    with serving(tmp_path_factory.mktemp("tls"), *flags) as (_, address):
        yield address


def last_line(stderr: str) -> str:
    """The one line on stderr (gRPC's own handshake log lines are kept off it)."""
    lines = stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("lookalike: "), stderr
    return lines[0]


def test_the_start_up_line_says_https_when_the_server_uses_tls(tmp_path, pki):
    proc = subprocess.Popen([*LOOKALIKE, "serve", "--port", "0", "--data-dir", str(tmp_path / "d"),
                             "--tls-cert", str(pki["server"]), "--tls-key", str(pki["key"])],
                            stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)  # fmt: skip
    try:
        line = proc.stdout.readline() if proc.stdout else ""
        assert line.startswith("lookalike: listening on https://127.0.0.1:"), line
    finally:
        proc.kill()
        proc.wait(30)


def test_a_plaintext_client_against_a_tls_server_is_told_to_use_tls(tls_address, pki):
    proc = run("db", "list", "--server", tls_address, "--timeout", "10")
    assert proc.returncode == 4
    line = last_line(proc.stderr)
    assert "TLS_REQUIRED" in line and "--tls-ca" in line and "--tls" in line
    assert "cannot reach" not in line and "start one with" not in line
    # The address as the server prints it works as it is, and so does --tls-ca.
    assert run("db", "list", "--server", f"https://{tls_address}", "--tls-ca", str(pki["ca"])).returncode == 0
    assert run("db", "list", "--server", tls_address, "--tls-ca", str(pki["ca"])).returncode == 0


def test_a_tls_client_that_does_not_trust_the_certificate_is_told_to_pass_its_ca(tls_address):
    proc = run("db", "list", "--server", tls_address, "--tls", "--timeout", "10")
    assert proc.returncode == 4
    line = last_line(proc.stderr)
    assert "TLS_UNTRUSTED" in line and "--tls-ca" in line and "cannot reach" not in line


def test_a_tls_client_against_a_plaintext_server_is_told_to_drop_tls(tmp_path, pki):
    with serving(tmp_path / "plain") as (_, address):
        proc = run("db", "list", "--server", address, "--tls-ca", str(pki["ca"]), "--timeout", "10")
        assert proc.returncode == 4
        line = last_line(proc.stderr)
        assert "TLS_NOT_OFFERED" in line and "does not use TLS" in line and "--tls" in line
        assert "cannot reach" not in line
        assert run("db", "list", "--server", address).returncode == 0
