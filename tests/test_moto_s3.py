"""The test S3 server answers oss2-signed requests whatever their signature's characters."""

from __future__ import annotations

import urllib.error
import urllib.request

import pytest
from moto_s3 import S3


def test_an_oss_signature_with_four_slashes_still_reaches_s3() -> None:
    s3 = S3("bkt")
    try:
        s3.client.put_object(Bucket="bkt", Key="k", Body=b"payload")
        # moto's stock dispatcher reads "zz/LL/aa/bb/cc" as a SigV4 scope (service "bb") and answers 500.
        for auth in ("OSS ak:c2lnbmF0dXJl", "OSS ak:zz/LL/aa/bb/cc"):
            request = urllib.request.Request(f"{s3.endpoint}/bkt/k", headers={"Authorization": auth})
            with urllib.request.urlopen(request, timeout=10) as response:
                assert response.read() == b"payload", auth
    finally:
        s3.stop()


def test_injected_faults_answer_the_next_requests_then_moto_serves_again() -> None:
    s3 = S3("bkt")
    try:
        s3.client.put_object(Bucket="bkt", Key="k", Body=b"payload")
        s3.fail_next(503)
        with pytest.raises(urllib.error.HTTPError) as err:
            urllib.request.urlopen(f"{s3.endpoint}/bkt/k", timeout=10)
        assert err.value.code == 503
        signed = urllib.request.Request(f"{s3.endpoint}/bkt/k", headers={"Authorization": "OSS ak:c2lnbmF0dXJl"})
        with urllib.request.urlopen(signed, timeout=10) as response:
            assert response.read() == b"payload"
    finally:
        s3.stop()
