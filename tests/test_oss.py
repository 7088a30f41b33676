"""oss2 through ``OssClient`` against a real S3-protocol server: transient 5xx answers are retried, others are not."""

from __future__ import annotations

import logging

import pytest
from moto_s3 import S3

from lookalike.oss import OssClient, OssCredentials

SECRET = "s3cr3t-never-in-a-message"


@pytest.fixture
def s3():
    s = S3("bkt", "ak", SECRET)
    s.client.put_object(Bucket="bkt", Key="obj", Body=b"payload")
    yield s
    s.stop()


def client(s3: S3, retries: int = 2) -> OssClient:
    return OssClient(s3.endpoint, OssCredentials("ak", SECRET), path_style=True, retries=retries, retry_backoff_s=0.01)


def test_transient_errors_are_retried_until_the_store_answers(s3, caplog) -> None:
    caplog.set_level(logging.WARNING)
    s3.fail_next(503, 500)
    assert client(s3).get("bkt", "obj") == b"payload"
    assert not s3.faults
    retries = [r.getMessage() for r in caplog.records if "retry" in r.getMessage()]
    assert len(retries) == 2 and "OSS answered 503, retry 1 of 2" in retries[0]
    s3.fail_next(502)
    client(s3).put("bkt", "new", b"written")  # writes of whole objects are retried too
    assert s3.client.get_object(Bucket="bkt", Key="new")["Body"].read() == b"written"


def test_retries_are_bounded_and_the_error_says_how_many_tries(s3, caplog) -> None:
    s3.fail_next(500, 500, 500, 500)
    with pytest.raises(OSError, match=r"reading oss://bkt/obj: OSS error 500 .*\(after 3 tries\)") as err:
        client(s3).get("bkt", "obj")
    assert len(s3.faults) == 1  # exactly 1 + retries requests were sent
    assert SECRET not in str(err.value) and SECRET not in caplog.text


def test_client_errors_are_not_retried(s3) -> None:
    s3.fail_next(403, 403)
    with pytest.raises(OSError, match="OSS error 403") as err:
        client(s3).get("bkt", "obj")
    assert "tries" not in str(err.value) and s3.faults == [403]
    s3.faults.clear()
    with pytest.raises(FileNotFoundError, match="oss://bkt/gone does not exist"):
        client(s3).get("bkt", "gone")


def test_retries_zero_sends_once_and_negative_settings_are_refused(s3) -> None:
    s3.fail_next(503, 503)
    with pytest.raises(OSError, match="OSS error 503"):
        client(s3, retries=0).get("bkt", "obj")
    assert s3.faults == [503]
    with pytest.raises(ValueError, match="must be >= 0"):
        OssClient("http://x", retries=-1)
