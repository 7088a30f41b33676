"""A real S3-protocol server (moto) on a loopback port, for oss2 in path-style: shared by the OSS tests."""

from __future__ import annotations

from typing import Any

import pytest


class S3:
    """moto on 127.0.0.1; ``client`` is boto3 for setting up buckets and objects."""

    def __init__(self, bucket: str, key_id: str = "ak", secret: str = "sk") -> None:
        self._moto = pytest.importorskip("moto.server")
        boto3 = pytest.importorskip("boto3")
        self.server = self._moto.ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
        self.server.start()
        host, self.port = self.server.get_host_and_port()
        self.endpoint = f"http://{host}:{self.port}"
        self.client: Any = boto3.client("s3", endpoint_url=self.endpoint, aws_access_key_id=key_id,
                                        aws_secret_access_key=secret, region_name="us-east-1")  # fmt: skip
        self.client.create_bucket(Bucket=bucket)

    def stop(self) -> None:
        self.server.stop()

    def restart(self) -> None:
        """The same port again; moto keeps its objects in this process, so they are still there."""
        self.server = self._moto.ThreadedMotoServer(ip_address="127.0.0.1", port=self.port, verbose=False)
        self.server.start()
