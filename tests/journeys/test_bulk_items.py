"""``bulk_set`` takes items with named fields (``BulkItem``), in the blocking and the asyncio client.

Before, an item was a positional tuple ``(group_id, intra_id, content, client_ref, attributes,
request_id)``: easy to get the order wrong, and nothing said which slot was which.
"""

from __future__ import annotations

import asyncio

import pytest
from lookalike.client import BulkItem, LookalikeClient
from lookalike.client.aio import AsyncLookalikeClient
from photos import encode, photo


def test_bulk_items_by_name_register_images_vectors_and_report_failures_by_client_ref(grpc_server, db_name):
    coffee, rocket = encode(photo("coffee")), encode(photo("rocket"))
    with LookalikeClient(grpc_server.address) as c:
        vector = list(c.embed([rocket]).embeddings[0].values)
        summary = c.bulk_set(db_name, [
            BulkItem("cups", image=coffee, client_ref="coffee.jpg", attributes={"source": "coffee.jpg"},
                     request_id="bulk-items-1"),
            BulkItem("space", vector=vector, intra_id=7, client_ref="rocket.vec"),
            BulkItem("broken", image=b"not an image", client_ref="junk.jpg"),
            ("cups", None, coffee, "old-tuple.jpg", {"source": "old-tuple.jpg"}),  # the older form still works
        ])  # fmt: skip
        assert summary.succeeded_count == 3 and summary.failed_count == 1
        assert summary.failures[0].client_ref == "junk.jpg"
        assert [(k.group_id, k.intra_id) for k in summary.keys] == [("cups", 0), ("space", 7), ("cups", 1)]
        assert c.get_image(db_name, "cups", 0).attributes["source"] == "coffee.jpg"
        again = c.bulk_set(db_name, [BulkItem("cups", image=coffee, request_id="bulk-items-1")])
        assert again.replayed_count == 1 and c.get_database(db_name).image_count == 3  # request_id reached the server


def test_the_asyncio_client_takes_bulk_items_too(grpc_server, db_name):
    async def go() -> int:
        async with AsyncLookalikeClient(grpc_server.address) as c:
            r = await c.bulk_set(db_name, [BulkItem("g", image=encode(photo("chelsea")), client_ref="c.jpg")])
            return r.succeeded_count

    assert asyncio.run(go()) == 1


def test_a_bulk_item_needs_exactly_one_of_image_or_vector():
    with pytest.raises(ValueError, match="exactly one of image= .* or vector="):
        BulkItem("g")
    with pytest.raises(ValueError, match="exactly one"):
        BulkItem("g", image=b"x", vector=[0.1])
