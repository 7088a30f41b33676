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
