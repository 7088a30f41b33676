"""The asyncio flavour of the client (``lookalike.client.aio``), over ``grpc.aio``.

Same methods, arguments, requests and errors (:class:`ClientError`) as
:class:`lookalike.client.LookalikeClient`, awaited; ``bulk_set`` also takes an async iterable.
"""

from __future__ import annotations

import functools
from collections.abc import AsyncIterable, AsyncIterator, Awaitable, Callable, Iterable, Sequence
from pathlib import Path
from typing import Any, TypeVar

import grpc
from lookalike.client.client import (
    BulkItem,
    ClientError,
    _image,
    bulk_request,
    channel_options,
    match_request,
    search_request,
    set_image_request,
    tls_credentials,
)
from lookalike.client.duplicates import duplicate_check, stubs
from lookalike.v1 import database_service_pb2 as db_pb
from lookalike.v1 import database_service_pb2_grpc as db_grpc
from lookalike.v1 import duplicate_pb2 as dup_pb
from lookalike.v1 import duplicate_service_pb2 as dup_svc
from lookalike.v1 import match_service_pb2 as match_pb
from lookalike.v1 import match_service_pb2_grpc as match_grpc
from lookalike.v1 import model_service_pb2 as model_pb
from lookalike.v1 import operation_pb2 as op_pb
from lookalike.v1 import operation_service_pb2 as op_svc
from lookalike.v1 import reindex_pb2 as reindex_pb
from lookalike.v1 import search_service_pb2 as search_pb
from lookalike.v1 import search_service_pb2_grpc as search_grpc
from lookalike.v1 import types_pb2

T = TypeVar("T")


def _rpc(method: Callable[..., Awaitable[T]]) -> Callable[..., Awaitable[T]]:
    @functools.wraps(method)
    async def wrapper(self: AsyncLookalikeClient, *args: Any, **kwargs: Any) -> T:
        try:
            return await method(self, *args, **kwargs)
        except grpc.aio.AioRpcError as err:
            raise ClientError.from_rpc_error(err, self.address, tls=self.tls, client_cert=self.client_cert) from None

    return wrapper


class AsyncLookalikeClient:
    def __init__(
        self,
        address: str,
        *,
        token: str | None = None,
        timeout: float = 120.0,
        tls_ca: str | Path | None = None,
        tls_cert: str | Path | None = None,
        tls_key: str | Path | None = None,
    ) -> None:
        self.address = address
        self.timeout = timeout
        self._metadata = (("authorization", token),) if token else ()
        options = channel_options(address)
        self.tls = tls_ca is not None or tls_cert is not None
        self.client_cert = tls_cert is not None
        if self.tls:
            self._channel = grpc.aio.secure_channel(address, tls_credentials(tls_ca, tls_cert, tls_key), options)
        else:
            self._channel = grpc.aio.insecure_channel(address, options=options)
        self.match_stub = match_grpc.MatchServiceStub(self._channel)
        self.db_stub = db_grpc.DatabaseServiceStub(self._channel)
        self.search_stub = search_grpc.SearchServiceStub(self._channel)

    async def close(self) -> None:
        await self._channel.close()

    async def __aenter__(self) -> AsyncLookalikeClient:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    def _kw(self) -> dict[str, Any]:
        return {"timeout": self.timeout, "metadata": self._metadata}

    @_rpc
    async def match(
        self, image_a: bytes, image_b: bytes, model: str = "", *, crop_a: Sequence[float] | None = None,
        crop_b: Sequence[float] | None = None,
    ) -> match_pb.MatchResponse:  # fmt: skip
        """As the blocking client's ``match`` (``crop_a`` / ``crop_b``: only that region of each image)."""
        req = match_request(image_a, image_b, model, crop_a=crop_a, crop_b=crop_b)
        return await self.match_stub.Match(req, **self._kw())

    @_rpc
    async def embed(self, images: Sequence[bytes], model: str = "") -> match_pb.EmbedResponse:
        req = match_pb.EmbedRequest(images=[_image(i) for i in images], model=model)
        return await self.match_stub.Embed(req, **self._kw())

    @_rpc
    async def create_database(self, name: str, storage: str = "", keep: str = "", model: str = "") -> db_pb.Database:
        req = db_pb.CreateDatabaseRequest(name=name, storage=storage, keep=keep, model=model)
        return (await self.db_stub.CreateDatabase(req, **self._kw())).database

    @_rpc
    async def get_database(self, name: str) -> db_pb.Database:
        return (await self.db_stub.GetDatabase(db_pb.GetDatabaseRequest(name=name), **self._kw())).database

    @_rpc
    async def list_databases(self, page_size: int = 0) -> list[db_pb.Database]:
        out: list[db_pb.Database] = []
        token = ""
        while True:
            page = await self.db_stub.ListDatabases(
                db_pb.ListDatabasesRequest(page_size=page_size, page_token=token), **self._kw()
            )
            out.extend(page.databases)
            token = page.next_page_token
            if not token:
                return out

    @_rpc
    async def delete_database(self, name: str) -> None:
        await self.db_stub.DeleteDatabase(db_pb.DeleteDatabaseRequest(name=name), **self._kw())

    @_rpc
    async def set_image(
        self, database: str, group_id: str, *, if_duplicate: str = "ALLOW", duplicate_tier: str = "",
        duplicate_threshold: float | None = None, **kwargs: Any,
    ) -> db_pb.SetImageResponse:  # fmt: skip
        """As the blocking client's ``set_image`` (image / vector / intra_id / request_id / attributes /
        if_duplicate with duplicate_tier or duplicate_threshold)."""
        check = duplicate_check(if_duplicate, duplicate_tier, duplicate_threshold)
        req = set_image_request(database, group_id, duplicates=check, **kwargs)
        return await self.db_stub.SetImage(req, **self._kw())

    @_rpc
    async def bulk_set(
        self,
        database: str,
        items: Iterable[BulkItem | tuple[Any, ...]] | AsyncIterable[BulkItem | tuple[Any, ...]],
    ) -> db_pb.BulkSetImagesResponse:
        """As the blocking client's ``bulk_set``: :class:`BulkItem` s (or the older tuples), also from an async
        iterable."""

        async def requests() -> AsyncIterator[db_pb.BulkSetImagesRequest]:
            i = 0
            if isinstance(items, AsyncIterable):
                async for item in items:
                    yield bulk_request(database, i, item)
                    i += 1
            else:
                for item in items:
                    yield bulk_request(database, i, item)
                    i += 1

        return await self.db_stub.BulkSetImages(requests(), **self._kw())

    @_rpc
    async def get_image(self, database: str, group_id: str, intra_id: int, *, include_vector: bool = False
                        ) -> db_pb.RegisteredImage:  # fmt: skip
        req = db_pb.GetImageRequest(database=database, key=types_pb2.ImageKey(group_id=group_id, intra_id=intra_id),
                                    include_vector=include_vector)  # fmt: skip
        return (await self.db_stub.GetImage(req, **self._kw())).image

    @_rpc
    async def get_image_bytes(self, database: str, group_id: str, intra_id: int, view: str = "thumbnail"
                              ) -> tuple[bytes, str]:  # fmt: skip
        """The kept bytes of an image (``view`` "thumbnail" or "original") and their media type."""
        req = db_pb.GetImageRequest(database=database, key=types_pb2.ImageKey(group_id=group_id, intra_id=intra_id),
                                    view=db_pb.ImageView.Value(f"IMAGE_VIEW_{view.upper()}"))  # fmt: skip
        resp = await self.db_stub.GetImage(req, **self._kw())
        return resp.image_data, resp.media_type

    @_rpc
    async def reindex_database(self, name: str, model: str = "", *, allow_missing: bool = False) -> op_pb.Operation:
        req = reindex_pb.ReindexDatabaseRequest(name=name, model=model, allow_missing=allow_missing)
        return (await self.db_stub.ReindexDatabase(req, **self._kw())).operation

    @_rpc
    async def rollback_database(self, name: str) -> db_pb.RollbackDatabaseResponse:
        return await self.db_stub.RollbackDatabase(db_pb.RollbackDatabaseRequest(name=name), **self._kw())

    @_rpc
    async def delete_image(self, database: str, group_id: str, intra_id: int) -> None:
        key = types_pb2.ImageKey(group_id=group_id, intra_id=intra_id)
        await self.db_stub.DeleteImage(db_pb.DeleteImageRequest(database=database, key=key), **self._kw())

    @_rpc
    async def delete_group(self, database: str, group_id: str) -> int:
        req = db_pb.DeleteGroupRequest(database=database, group_id=group_id)
        return (await self.db_stub.DeleteGroup(req, **self._kw())).deleted_count

    @_rpc
    async def search(self, database: str, **kwargs: Any) -> search_pb.SearchResponse:
        """As the blocking client's ``search`` (image / vector / registered, top_k, filter, crop, ...)."""
        return await self.search_stub.Search(search_request(database, **kwargs), **self._kw())

    # -- duplicates, operations, models ----------------------------------------------------
    def _ops_stubs(self) -> tuple[Any, Any, Any]:
        if not hasattr(self, "_dup_stubs"):
            self._dup_stubs = stubs(self._channel)
        return self._dup_stubs

    @_rpc
    async def find_duplicates(self, database: str, **options: Any) -> op_pb.Operation:
        """As the blocking client's (tier / threshold / no_chaining / keeper / method): the running operation."""
        req = dup_pb.FindDuplicatesRequest(database=database, **options)
        return (await self._ops_stubs()[0].FindDuplicates(req, **self._kw())).operation

    @_rpc
    async def get_operation(self, name: str) -> op_pb.Operation:
        return (await self._ops_stubs()[1].GetOperation(op_svc.GetOperationRequest(name=name), **self._kw())).operation

    @_rpc
    async def wait_operation(self, name: str, timeout_seconds: float = 0.0) -> op_pb.Operation:
        req = op_svc.WaitOperationRequest(name=name, timeout_seconds=timeout_seconds)
        return (await self._ops_stubs()[1].WaitOperation(req, **self._kw())).operation

    @_rpc
    async def cancel_operation(self, name: str) -> op_pb.Operation:
        req = op_svc.CancelOperationRequest(name=name)
        return (await self._ops_stubs()[1].CancelOperation(req, **self._kw())).operation

    async def duplicate_clusters(self, operation: str, page_size: int = 0) -> AsyncIterator[dup_pb.DuplicateCluster]:
        """Every cluster of a finished FindDuplicates operation, a page at a time."""
        token = ""
        while True:
            req = dup_svc.ListDuplicateClustersRequest(operation=operation, page_size=page_size, page_token=token)
            try:
                resp = await self._ops_stubs()[0].ListDuplicateClusters(req, **self._kw())
            except grpc.aio.AioRpcError as err:
                raise ClientError.from_rpc_error(
                    err, self.address, tls=self.tls, client_cert=self.client_cert
                ) from None
            for cluster in resp.clusters:
                yield cluster
            token = resp.next_page_token
            if not token:
                return

    @_rpc
    async def list_models(self) -> list[model_pb.Model]:
        return list((await self._ops_stubs()[2].ListModels(model_pb.ListModelsRequest(), **self._kw())).models)


__all__ = ["AsyncLookalikeClient", "BulkItem", "ClientError"]
