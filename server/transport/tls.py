"""TLS for the gRPC port (and the metrics endpoint): PEM files in, credentials out, clear errors.

With ``--tls-client-ca`` the server requires a client certificate signed by that CA (mutual
TLS); without it any client that trusts the server's certificate may connect (and the token,
when set, still decides who may call).
"""

from __future__ import annotations

import ssl
from pathlib import Path

import grpc


def _read(path: Path, what: str) -> bytes:
    try:
        data = Path(path).read_bytes()
    except OSError as exc:
        raise ValueError(f"{what} {path}: cannot read it ({exc.strerror})") from None
    if b"-----BEGIN" not in data:
        raise ValueError(f"{what} {path} is not a PEM file (no '-----BEGIN' line)")
    return data


def server_credentials(cert: Path, key: Path, client_ca: Path | None = None) -> grpc.ServerCredentials:
    """gRPC server credentials; with ``client_ca`` client certificates are required and checked."""
    chain = _read(cert, "--tls-cert")
    private_key = _read(key, "--tls-key")
    if b"PRIVATE KEY" not in private_key:
        raise ValueError(f"--tls-key {key} holds no private key")
    roots = _read(client_ca, "--tls-client-ca") if client_ca is not None else None
    return grpc.ssl_server_credentials(
        [(private_key, chain)], root_certificates=roots, require_client_auth=roots is not None
    )


def server_ssl_context(cert: Path, key: Path, client_ca: Path | None = None) -> ssl.SSLContext:
    """The same policy for an HTTP listener (metrics): TLS 1.2+, client certificates when ``client_ca``."""
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    try:
        context.load_cert_chain(str(cert), str(key))
        if client_ca is not None:
            context.load_verify_locations(str(client_ca))
            context.verify_mode = ssl.CERT_REQUIRED
    except (OSError, ssl.SSLError) as exc:
        raise ValueError(f"TLS files --tls-cert {cert} / --tls-key {key} could not be loaded: {exc}") from None
    return context
