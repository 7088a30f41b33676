"""The asyncio client against the live server: the same answers as the blocking client, concurrently."""

from __future__ import annotations

import asyncio

import numpy as np
import pytest
from lookalike.client import ClientError
from lookalike.client.aio import AsyncLookalikeClient
from photos import crop, encode, photo


def test_async_client_matches_the_blocking_client(grpc_server, client, db_name):
    rng = np.random.default_rng(4)
    vecs = rng.standard_normal((40, 1280)).astype(np.float32)

    async def scenario():
        async with AsyncLookalikeClient(grpc_server.address) as ac:

            async def items():
                for i, v in enumerate(vecs[:30]):
                    yield (f"g{i % 4}", None, v.tolist(), f"r{i}", {"n": str(i)})

            summary = await ac.bulk_set(db_name, items())
            keys = await asyncio.gather(*(ac.set_image(db_name, "single", vector=v.tolist()) for v in vecs[30:]))
            searches = await asyncio.gather(*(ac.search(db_name, vector=v.tolist(), top_k=5) for v in vecs[:8]))
            m = await ac.match(encode(photo("rocket")), encode(crop(photo("rocket"), 0.8)))
            with pytest.raises(ClientError) as err:
                await ac.get_database("no-such-db")
            return summary, keys, searches, m, err.value

    summary, keys, searches, m, err = asyncio.run(scenario())
    assert summary.succeeded_count == 30 and sorted(k.key.intra_id for k in keys) == list(range(10))
    for v, resp in zip(vecs[:8], searches, strict=True):  # concurrent async answers == blocking answers
        sync = client.search(db_name, vector=v.tolist(), top_k=5)
        assert [(h.key.group_id, h.key.intra_id, dict(h.attributes)) for h in resp.hits] == \
            [(h.key.group_id, h.key.intra_id, dict(h.attributes)) for h in sync.hits]  # fmt: skip
    assert m.similarity == pytest.approx(client.match(encode(photo("rocket")), encode(crop(photo("rocket"), 0.8)))
                                         .similarity, abs=1e-6)  # fmt: skip
    assert (err.code, err.reason) == ("NOT_FOUND", "DATABASE_NOT_FOUND")


def test_async_crops_match_the_blocking_client(grpc_server, client, db_name):
    """``crop=`` on search and ``crop_a`` / ``crop_b`` on match, awaited: the blocking client's answers."""
    rocket, coffee = encode(photo("rocket")), encode(photo("coffee"))
    client.set_image(db_name, "rocket", image=rocket)
    client.set_image(db_name, "coffee", image=coffee)
    box = (0.1, 0.2, 0.5, 0.6)

    async def scenario():
        async with AsyncLookalikeClient(grpc_server.address) as ac:
            found = await ac.search(db_name, image=rocket, top_k=2, crop=box)
            m = await ac.match(rocket, coffee, crop_a=box, crop_b=box)
            with pytest.raises(ClientError) as err:
                await ac.match(rocket, coffee, crop_b=(0.5, 0.0, 0.6, 1.0))
            return found, m, err.value

    found, m, err = asyncio.run(scenario())
    sync = client.search(db_name, image=rocket, top_k=2, crop=box)
    assert [h.key.group_id for h in found.hits] == [h.key.group_id for h in sync.hits]
    np.testing.assert_allclose([h.score for h in found.hits], [h.score for h in sync.hits], atol=1e-5)
    assert m.cosine == pytest.approx(client.match(rocket, coffee, crop_a=box, crop_b=box).cosine, abs=1e-5)
    assert m.cosine != pytest.approx(client.match(rocket, coffee).cosine, abs=1e-3)
    assert (err.code, err.reason) == ("INVALID_ARGUMENT", "CROP_INVALID")


def test_async_duplicates_match_the_blocking_client(grpc_server, client, db_name):
    """FindDuplicates, its operation and clusters, and the insert check, awaited: the blocking client's answers."""
    rng = np.random.default_rng(6)
    vecs = rng.standard_normal((30, 1280)).astype(np.float32)
    vecs[29] = vecs[4] + 0.01 * rng.standard_normal(1280).astype(np.float32)  # a copy of image 4
    for i, v in enumerate(vecs):
        client.set_image(db_name, f"i{i}", vector=v.tolist())

    async def scenario():
        async with AsyncLookalikeClient(grpc_server.address) as ac:
            op = await ac.find_duplicates(db_name, threshold=0.95)
            while not op.done:
                op = await ac.wait_operation(op.name, 5)
            clusters = [c async for c in ac.duplicate_clusters(op.name, page_size=1)]
            skipped = await ac.set_image(db_name, "again", vector=vecs[7].tolist(), if_duplicate="SKIP",
                                         duplicate_threshold=0.95)  # fmt: skip
            models = await ac.list_models()
            with pytest.raises(ClientError) as err:
                await ac.get_operation("operations/0000000000000000")
            return op, clusters, skipped, models, err.value

    op, clusters, skipped, models, err = asyncio.run(scenario())
    assert op.state == 2 and op.find_duplicates.cluster_count == 1
    assert [sorted(m.key.group_id for m in c.members) for c in clusters] == [["i29", "i4"]]
    assert [list(c.members) for c in clusters] == [list(c.members) for c in client.duplicate_clusters(op.name)]
    assert skipped.skipped_duplicate and skipped.key.group_id == "i7"
    assert [m.identity for m in models] == [m.identity for m in client.list_models()]
    assert (err.code, err.reason) == ("NOT_FOUND", "OPERATION_NOT_FOUND")


def test_async_kept_images_equal_the_blocking_client(grpc_server, client, db_name):
    """Kept bytes read back awaited, and a model named in Embed: the blocking client's answers."""
    sent = encode(photo("astronaut"))
    client.set_image(db_name, "kept", image=sent)
    name = client.get_database(db_name).model_name

    async def scenario():
        async with AsyncLookalikeClient(grpc_server.address) as ac:
            thumb = await ac.get_image_bytes(db_name, "kept", 0)
            embedded = await ac.embed([sent], model=name)
            with pytest.raises(ClientError) as err:
                await ac.embed([sent], model="no-such-model")
            with pytest.raises(ClientError) as same:
                await ac.reindex_database(db_name, name)
            return thumb, embedded, err.value, same.value

    thumb, embedded, err, same = asyncio.run(scenario())
    assert thumb == client.get_image_bytes(db_name, "kept", 0) and thumb[1] == "image/jpeg"
    assert embedded.model == name
    np.testing.assert_allclose(embedded.embeddings[0].values, client.embed([sent]).embeddings[0].values, atol=1e-6)
    assert err.reason == "MODEL_NOT_FOUND" and same.reason == "REINDEX_SAME_MODEL"
