"""Semantics both backends must share, pinned on the backends themselves (``backends/api.py``).

The retry window: a retried request id returns the first result, ``replaced`` flag included,
and changes nothing; the newest ``retry_window`` ids per database are remembered; an id is
forgotten when the image it wrote is deleted (image, group, clear) or its database is. And a
load: a complete copy under a temporary name takes the live name in one step.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator

import numpy as np
import pytest
from lookalike.server.core.backends.api import (
    Entry,
    SetRequest,
    content_digest,
    request_fingerprint,
)
from lookalike.server.core.backends.exports import ExportedDatabase
from lookalike.server.core.errors import LookalikeError

DIM = 16
MODEL = {"name": "contract", "digest": "c0ffee"}


def vec(seed: int) -> np.ndarray:
    v = np.random.default_rng(seed).standard_normal((1, DIM)).astype(np.float32)
    return v / np.linalg.norm(v)


@pytest.fixture
def make(backend: str, request: pytest.FixtureRequest) -> Iterator[object]:
    """Builds a backend of the kind under test with a given retry window."""
    made = []

    def build(window: int = 100) -> object:
        if backend == "builtin":
            from lookalike.server.core.backends.builtin.catalog import Catalog

            catalog = Catalog(DIM, MODEL, retry_window=window)
        else:
            from lookalike.server.core.backends.milvus.catalog import MilvusCatalog, MilvusIndexSettings
            from lookalike.server.storage.milvus_store import MilvusStore

            milvus = request.getfixturevalue("milvus")
            store = MilvusStore(milvus.uri, prefix=f"c{uuid.uuid4().hex[:8]}_")
            catalog = MilvusCatalog(DIM, MODEL, store, index=MilvusIndexSettings(index_type="FLAT"),
                                    retry_window=window)  # fmt: skip
            catalog.recover()
        made.append(catalog)
        return catalog

    yield build
    for catalog in made:
        catalog.close(snapshot=False)


def request(group: str, intra: int | None, request_id: str, seed: int) -> SetRequest:
    """A write of vector ``seed``; its fingerprint stands for (group, intra, content) as the service makes it."""
    return SetRequest(
        group, intra, request_id, None, request_fingerprint(group, intra, content_digest(vec(seed).tobytes()))
    )


def put(catalog, db: str, group: str, intra: int | None, request_id: str, seed: int):
    (result,) = catalog.set_images(db, [request(group, intra, request_id, seed)], vec(seed))
    if isinstance(result, LookalikeError):
        raise result
    return result


def test_a_retry_returns_the_first_result_with_its_replaced_flag(make):
    catalog = make()
    catalog.create("d")
    assert put(catalog, "d", "g", 0, "first", 1).replaced is False
    second = put(catalog, "d", "g", 0, "second", 2)
    assert (second.key, second.replaced) == (("g", 0), True)
    assert second.replayed is False
    retried = put(catalog, "d", "g", 0, "second", 2)  # the answer was lost; the client sends it again
    assert (retried.key, retried.replaced, retried.replayed) == (("g", 0), True, True)
    put(catalog, "d", "g", 1, "third", 5)  # a write in between must not disturb the retry
    assert put(catalog, "d", "g", 0, "second", 2).replayed
    stored = catalog.get("d").get("g", 0).vector
    assert np.allclose(stored, vec(2)[0], atol=1e-6)  # the retries changed nothing
    auto = put(catalog, "d", "g", None, "auto", 4)
    again = put(catalog, "d", "g", None, "auto", 4)
    assert (again.key, again.replayed) == (auto.key, True)
    assert catalog.get("d").size == 3


@pytest.mark.parametrize(
    ("other", "named"),
    [(("g", 0, 2), "content"), (("h", 0, 1), "group_id"), (("g", 1, 1), "intra_id"), (("g", None, 1), "intra_id")],
)
def test_a_request_id_reused_for_another_request_is_refused(make, other, named):
    catalog = make()
    catalog.create("d")
    put(catalog, "d", "g", 0, "rid", 1)
    group, intra, seed = other
    with pytest.raises(LookalikeError) as err:
        put(catalog, "d", group, intra, "rid", seed)
    assert (err.value.reason, err.value.kind.value) == ("REQUEST_ID_REUSED", "ALREADY_EXISTS")
    assert named in err.value.message and "'rid'" in err.value.message
    assert catalog.get("d").size == 1  # nothing stored
    assert np.allclose(catalog.get("d").get("g", 0).vector, vec(1)[0], atol=1e-6)
    assert put(catalog, "d", "g", 0, "rid", 1).replayed  # the first request itself is still a retry


def test_a_request_id_repeated_in_one_call_is_written_once(make):
    catalog = make()
    catalog.create("d")
    items = [request("g", None, "a", 1), request("g", None, "a", 1), request("g", None, "b", 2),
             request("g", None, "b", 3)]  # fmt: skip
    vectors = np.concatenate([vec(1), vec(1), vec(2), vec(3)])
    first, repeat, other, reused = catalog.set_images("d", items, vectors)
    assert (first.key, first.replayed) == (("g", 0), False)
    assert (repeat.key, repeat.replayed) == (("g", 0), True)
    assert other.key == ("g", 1)
    assert isinstance(reused, LookalikeError) and reused.reason == "REQUEST_ID_REUSED"
    assert catalog.get("d").size == 2


def test_the_window_keeps_the_newest_ids(make):
    catalog = make(window=3)
    catalog.create("d")
    for i in range(5):
        put(catalog, "d", f"g{i}", None, f"r{i}", i)
    assert put(catalog, "d", "g4", None, "r4", 4).key == ("g4", 0)  # still in the window
    again = put(catalog, "d", "g0", None, "r0", 0)  # fell out of it: a new write
    assert again.key == ("g0", 1)
    assert catalog.get("d").size == 6


@pytest.mark.parametrize("how", ["image", "group", "clear", "database"])
def test_a_delete_ends_the_window_of_what_it_deleted(make, how):
    catalog = make()
    catalog.create("d")
    put(catalog, "d", "keep", 0, "kept", 9)
    first = put(catalog, "d", "g", None, "rid", 1)
    if how == "image":
        catalog.delete_image("d", *first.key)
    elif how == "group":
        catalog.delete_group("d", "g")
    elif how == "clear":
        catalog.clear("d")
    else:
        catalog.delete("d")
        catalog.create("d")
    again = put(catalog, "d", "g", None, "rid", 1)  # a re-add after the delete is stored, not taken for a retry
    catalog.get("d").get(*again.key)
    if how == "image":  # ids of images that were not deleted stay
        assert put(catalog, "d", "keep", 0, "kept", 9).replayed
        assert np.allclose(catalog.get("d").get("keep", 0).vector, vec(9)[0], atol=1e-6)


def test_a_loaded_copy_takes_the_name_in_one_step(make):
    catalog = make()
    catalog.create("live")
    put(catalog, "live", "old", 0, "", 1)
    rows = [Entry("new", i, 100.0 + i, vec(20 + i)[0], {"source": f"n{i}"}) for i in range(3)]
    exported = ExportedDatabase(MODEL, DIM, 5.0, "f32", 3, lambda: iter([rows]))
    staging = "~load-0123abcd-live"
    catalog.import_(staging, exported)
    assert catalog.get("live").size == 1  # nothing visible changes before the swap
    catalog.replace("live", staging)
    live = catalog.get("live")
    assert live.size == 3
    assert live.get("new", 2).attributes == {"source": "n2"}
    with pytest.raises(Exception) as gone:
        live.get("old", 0)
    assert getattr(gone.value, "reason", "") == "IMAGE_NOT_FOUND"
    assert [db.name for db in catalog.list()] == ["live"]
    hits, _, _ = catalog.get("live").search_tier(vec(21)[0], 1)
    assert (hits[0].group_id, hits[0].intra_id) == ("new", 1)
    catalog.delete("live")
    assert catalog.list() == []


def test_automatic_intra_ids_stop_at_the_largest_id_the_api_accepts(make):
    catalog = make()
    catalog.create("d")
    last = 2**53 - 1
    assert put(catalog, "d", "g", last, "", 1).key == ("g", last)
    with pytest.raises(Exception) as err:
        put(catalog, "d", "g", None, "", 2)  # 2**53 would be refused by GetImage and DeleteImage
    assert (getattr(err.value, "reason", ""), err.value.kind.value) == ("INTRA_ID_EXHAUSTED", "FAILED_PRECONDITION")
    assert catalog.get("d").size == 1
    assert put(catalog, "d", "other", None, "", 3).key == ("other", 0)  # other groups go on
