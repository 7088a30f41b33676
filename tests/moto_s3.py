"""A real S3-protocol server (moto) on a loopback port, for oss2 in path-style: shared by the OSS tests.

moto picks the AWS service of a request by parsing its Authorization header as SigV4
(``AWS4-HMAC-SHA256 Credential=id/date/region/service/...``). oss2 signs ``OSS id:base64``; when
that base64 signature happens to hold exactly four ``/`` (about 1 request in 1,200) moto reads
two of its pieces as region and service, finds no such service and answers 500. This server
only speaks S3, so every request goes to moto's S3 backend.
"""

from __future__ import annotations

from typing import Any

import pytest

S3_HOST = "s3.us-east-1.amazonaws.com"


def s3_only_server(ip_address: str = "127.0.0.1", port: int = 0, faults: list[int] | None = None,
                   seen: list[tuple[str, str]] | None = None) -> Any:  # fmt: skip
    """moto's threaded server, with every request routed to S3 whatever its signature looks like.

    While ``faults`` holds statuses, each request takes the first one as its answer instead of
    being served (an overloaded store's 503, a 500). ``seen`` gets (method, path) of every request.
    """
    from moto.moto_server.threaded_moto_server import ThreadedMotoServer
    from moto.moto_server.werkzeug_app import DomainDispatcherApplication, MotoRequestHandler, create_backend_app
    from werkzeug.serving import make_server

    pending = faults if faults is not None else []

    class S3Dispatcher(DomainDispatcherApplication):
        def infer_service_region_host(self, environ: dict[str, Any], path: str) -> str:
            return S3_HOST

        def __call__(self, environ: dict[str, Any], start_response: Any) -> Any:
            if seen is not None:
                seen.append((environ["REQUEST_METHOD"], environ.get("PATH_INFO", "")))
            if pending:
                status = pending.pop(0)
                environ["wsgi.input"].read(int(environ.get("CONTENT_LENGTH") or 0))
                start_response(f"{status} Injected", [("Content-Type", "application/xml")])
                return [f"<Error><Code>Injected{status}</Code><Message>test fault</Message></Error>".encode()]
            return super().__call__(environ, start_response)

    class S3Server(ThreadedMotoServer):
        def _server_entry(self) -> None:
            app = S3Dispatcher(create_backend_app)
            self._server = make_server(self._ip_address, self._port, app, True, request_handler=MotoRequestHandler)
            self._server_ready_event.set()
            self._server.serve_forever()

    return S3Server(ip_address=ip_address, port=port, verbose=False)


class S3:
    """moto on 127.0.0.1; ``client`` is boto3 for setting up buckets and objects."""

    def __init__(self, bucket: str, key_id: str = "ak", secret: str = "sk") -> None:
        pytest.importorskip("moto.server")
        boto3 = pytest.importorskip("boto3")
        self.faults: list[int] = []
        self.requests: list[tuple[str, str]] = []  # (method, path) of every request served or failed
        self.server = s3_only_server(faults=self.faults, seen=self.requests)
        self.server.start()
        host, self.port = self.server.get_host_and_port()
        self.endpoint = f"http://{host}:{self.port}"
        self.client: Any = boto3.client("s3", endpoint_url=self.endpoint, aws_access_key_id=key_id,
                                        aws_secret_access_key=secret, region_name="us-east-1")  # fmt: skip
        self.client.create_bucket(Bucket=bucket)

    def fail_next(self, *statuses: int) -> None:
        """The next requests are answered with these statuses, one each, before moto serves again."""
        self.faults.extend(statuses)

    def stop(self) -> None:
        self.server.stop()

    def restart(self) -> None:
        """The same port again; moto keeps its objects in this process, so they are still there."""
        self.server = s3_only_server(port=self.port, faults=self.faults, seen=self.requests)
        self.server.start()
