"""A thin, typed wrapper over the generated stubs that turns rich gRPC errors into ClientError."""

from __future__ import annotations

import functools
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import KW_ONLY, dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import grpc
from google.rpc import error_details_pb2
from grpc_status import rpc_status
from lookalike.client.duplicates import DuplicateCalls, duplicate_check
from lookalike.v1 import database_service_pb2 as db_pb
from lookalike.v1 import database_service_pb2_grpc as db_grpc
from lookalike.v1 import match_service_pb2 as match_pb
from lookalike.v1 import match_service_pb2_grpc as match_grpc
from lookalike.v1 import operation_pb2 as op_pb
from lookalike.v1 import reindex_pb2 as reindex_pb
from lookalike.v1 import search_service_pb2 as search_pb
from lookalike.v1 import search_service_pb2_grpc as search_grpc
from lookalike.v1 import types_pb2

MAX_MESSAGE_BYTES = 64 << 20


@dataclass
class ClientError(Exception):
    """A failed call: the gRPC code name, the stable reason and the server's message."""

    code: str
    reason: str
    message: str
    metadata: dict[str, str] = field(default_factory=dict)

    def __str__(self) -> str:
        return f"{self.code} {self.reason}: {self.message}"

    @classmethod
    def from_rpc_error(
        cls, err: grpc.RpcError, address: str, *, tls: bool | None = None, client_cert: bool = False
    ) -> ClientError:
        """``tls``: whether the channel spoke TLS (None: unknown), so a TLS mismatch can be named."""
        code = err.code() if hasattr(err, "code") else grpc.StatusCode.UNKNOWN
        status = rpc_status.from_call(err) if hasattr(err, "trailing_metadata") else None
        if status is not None:
            for detail in status.details:
                if detail.Is(error_details_pb2.ErrorInfo.DESCRIPTOR):
                    info = error_details_pb2.ErrorInfo()
                    detail.Unpack(info)
                    return cls(code.name, info.reason, status.message, dict(info.metadata))
        details = (err.details() if hasattr(err, "details") else str(err)) or ""
        if code == grpc.StatusCode.UNAVAILABLE:
            mismatch = tls_mismatch(details, address, tls=tls, client_cert=client_cert)
            if mismatch is not None:
                return cls(code.name, *mismatch)
            return cls(
                code.name,
                "SERVER_UNREACHABLE",
                f"cannot reach a Lookalike server at {address}: start one with `lookalike serve`, "
                "or point --server / LOOKALIKE_SERVER at it",
            )
        if code == grpc.StatusCode.DEADLINE_EXCEEDED:
            return cls(code.name, "DEADLINE_EXCEEDED", f"the server at {address} did not answer in time")
        return cls(code.name, code.name, details or code.name)


# Reasons of a connection that failed before any call reached the server (the CLI exits 4 on these).
CONNECT_REASONS = frozenset({"SERVER_UNREACHABLE", "TLS_REQUIRED", "TLS_NOT_OFFERED", "TLS_UNTRUSTED",
                             "TLS_CLIENT_CERT_REQUIRED"})  # fmt: skip


def tls_mismatch(details: str, address: str, *, tls: bool | None, client_cert: bool = False) -> tuple[str, str] | None:
    """(reason, message) when gRPC's connect error shows the two ends disagree about TLS, else None.

    gRPC reports all of these as UNAVAILABLE "failed to connect to all addresses", which the CLI
    used to print as "no server there"; the server is there, the client just needs other flags.
    """
    text = details.lower()
    if tls is None or not any(m in text for m in ("failed to connect", "handshake", "socket closed")):
        return None
    if tls and "wrong_version_number" in text:  # our TLS hello was answered in plaintext HTTP/2
        return "TLS_NOT_OFFERED", (
            f"the server at {address} does not use TLS, but this client does: drop --tls / --tls-ca "
            "(and LOOKALIKE_TLS / LOOKALIKE_TLS_CA), or start the server with --tls-cert and --tls-key"
        )
    if tls and "certificate_verify_failed" in text:
        return "TLS_UNTRUSTED", (
            f"the server at {address} uses TLS with a certificate this client does not trust: pass --tls-ca "
            "with the PEM of the CA that signed it"
        )
    if tls and not client_cert and "socket closed" in text:  # the handshake went through, then it hung up
        return "TLS_CLIENT_CERT_REQUIRED", (
            f"the server at {address} closed the TLS connection: it may require a client certificate; "
            "pass --tls-cert and --tls-key"
        )
    if not tls and "socket closed" in text:  # a TLS server drops a plaintext client's HTTP/2 preface
        return "TLS_REQUIRED", (
            f"the server at {address} closed the connection at once, as a TLS server does with a plaintext "
            "client: add --tls-ca CA.pem (the CA that signed its certificate), or --tls to trust the system CAs"
        )
    return None


T = TypeVar("T")


def _rpc(method: Callable[..., T]) -> Callable[..., T]:
    @functools.wraps(method)
    def wrapper(self: LookalikeClient, *args: Any, **kwargs: Any) -> T:
        try:
            return method(self, *args, **kwargs)
        except grpc.RpcError as err:
            raise ClientError.from_rpc_error(err, self.address, tls=self.tls, client_cert=self.client_cert) from None

    return wrapper


def _image(data: bytes) -> types_pb2.Image:
    return types_pb2.Image(content=data)


def set_image_request(
    database: str,
    group_id: str,
    *,
    image: bytes | None = None,
    vector: Sequence[float] | None = None,
    intra_id: int | None = None,
    request_id: str = "",
    attributes: dict[str, str] | None = None,
    duplicates: db_pb.DuplicateCheck | None = None,
) -> db_pb.SetImageRequest:
    """The request of SetImage (shared by the blocking and the asyncio client)."""
    req = db_pb.SetImageRequest(
        database=database, group_id=group_id, intra_id=intra_id, request_id=request_id, attributes=attributes,
        duplicates=duplicates,
    )  # fmt: skip
    if image is not None:
        req.image.content = image
    elif vector is not None:
        req.vector.values.extend(vector)
    return req


@dataclass(frozen=True)
class BulkItem:
    """One image of a ``bulk_set`` stream, with named fields: ``image`` (encoded bytes) or ``vector``.

    ``client_ref`` comes back in the summary's failures, so a failure can be traced to its input;
    ``request_id`` makes a retried stream store the item once.
    """

    group_id: str
    _: KW_ONLY
    image: bytes | None = None
    vector: Sequence[float] | None = None
    intra_id: int | None = None
    client_ref: str = ""
    attributes: dict[str, str] | None = None
    request_id: str = ""
    duplicates: db_pb.DuplicateCheck | None = None  # client.duplicate_check("SKIP"): skip it if already stored

    def __post_init__(self) -> None:
        if (self.image is None) == (self.vector is None):
            raise ValueError(f"BulkItem {self.group_id!r}: give exactly one of image= (encoded bytes) or vector=")

    @classmethod
    def from_tuple(cls, item: tuple[Any, ...]) -> BulkItem:
        """The older form ``(group_id, intra_id, image bytes or vector, client_ref[, attributes[, request_id]])``."""
        group_id, intra_id, content, ref, *rest = item
        content_kw: dict[str, Any] = {"image": content} if isinstance(content, bytes) else {"vector": content}
        return cls(group_id, intra_id=intra_id, client_ref=ref, attributes=rest[0] if rest else None,
                   request_id=rest[1] if len(rest) > 1 else "", **content_kw)  # fmt: skip


def bulk_request(database: str, index: int, item: BulkItem | tuple[Any, ...]) -> db_pb.BulkSetImagesRequest:
    """One stream message from a :class:`BulkItem` (or its older tuple form); the database is named in the first
    message only."""
    if not isinstance(item, BulkItem):
        item = BulkItem.from_tuple(tuple(item))
    req = db_pb.BulkSetImagesRequest(
        database=database if index == 0 else "", group_id=item.group_id, intra_id=item.intra_id,
        client_ref=item.client_ref, attributes=item.attributes, request_id=item.request_id,
        duplicates=item.duplicates,
    )  # fmt: skip
    if item.image is not None:
        req.image.content = item.image
    elif item.vector is not None:
        req.vector.values.extend(item.vector)
    return req


def crop_message(crop: Sequence[float] | None) -> types_pb2.Crop | None:
    """``(x, y, width, height)``, fractions of the upright image, as the request's Crop; None: the whole image.
    The server checks the numbers (CROP_INVALID says what to fix)."""
    if crop is None:
        return None
    values = tuple(crop)
    if len(values) != 4:
        why = f"crop has {len(values)} numbers; give 4: (x, y, width, height), fractions of the image"
        raise ClientError("INVALID_ARGUMENT", "CROP_INVALID", why)
    return types_pb2.Crop(x=values[0], y=values[1], width=values[2], height=values[3])


def match_request(image_a: bytes, image_b: bytes, model: str = "", *, crop_a: Sequence[float] | None = None,
                  crop_b: Sequence[float] | None = None) -> match_pb.MatchRequest:  # fmt: skip
    return match_pb.MatchRequest(image_a=_image(image_a), image_b=_image(image_b), model=model,
                                 crop_a=crop_message(crop_a), crop_b=crop_message(crop_b))  # fmt: skip


def search_request(
    database: str,
    *,
    image: bytes | None = None,
    vector: Sequence[float] | None = None,
    registered: tuple[str, int] | None = None,
    top_k: int = 10,
    one_per_group: bool = False,
    min_score: float | None = None,
    filter: dict[str, str] | None = None,
    group_id_prefix: str = "",
    omit_attributes: bool = False,
    min_tier: str = "",
    crop: Sequence[float] | None = None,
) -> search_pb.SearchRequest:
    req = search_pb.SearchRequest(
        database=database, top_k=top_k, one_per_group=one_per_group, min_score=min_score, filter=filter,
        group_id_prefix=group_id_prefix, omit_attributes=omit_attributes, min_tier=min_tier, crop=crop_message(crop),
    )  # fmt: skip
    if image is not None:
        req.image.content = image
    elif vector is not None:
        req.vector.values.extend(vector)
    elif registered is not None:
        req.registered.group_id, req.registered.intra_id = registered
    return req


def _pem(path: str | Path, what: str) -> bytes:
    try:
        return Path(path).read_bytes()
    except OSError as exc:
        raise ClientError("INVALID_ARGUMENT", "TLS_FILE_UNREADABLE", f"{what} {path}: {exc.strerror}") from None


def tls_credentials(
    ca: str | Path | None = None, cert: str | Path | None = None, key: str | Path | None = None
) -> grpc.ChannelCredentials:
    """Trust ``ca`` (default: the system roots); present ``cert``/``key`` when the server wants client certificates."""
    if (cert is None) != (key is None):
        raise ClientError("INVALID_ARGUMENT", "TLS_FILES_INCOMPLETE", "--tls-cert and --tls-key go together")
    return grpc.ssl_channel_credentials(
        root_certificates=_pem(ca, "--tls-ca") if ca is not None else None,
        private_key=_pem(key, "--tls-key") if key is not None else None,
        certificate_chain=_pem(cert, "--tls-cert") if cert is not None else None,
    )


BALANCED_SCHEMES = ("dns:", "ipv4:", "ipv6:")


def channel_options(address: str, tls_server_name: str | None = None) -> list[tuple[str, Any]]:
    """gRPC channel options of every Lookalike client.

    A target that names several replicas (``dns:///lookalike-headless:50051`` for a headless
    Kubernetes Service, or ``ipv4:10.0.0.1:50051,10.0.0.2:50051``) gets round-robin balancing:
    each call goes to the next ready replica, instead of every call pinned to the first one.
    """
    options: list[tuple[str, Any]] = [
        ("grpc.max_receive_message_length", MAX_MESSAGE_BYTES),
        ("grpc.max_send_message_length", MAX_MESSAGE_BYTES),
    ]
    if address.startswith(BALANCED_SCHEMES):
        options.append(("grpc.lb_policy_name", "round_robin"))
    if tls_server_name:
        options.append(("grpc.ssl_target_name_override", tls_server_name))
    return options


class LookalikeClient(DuplicateCalls):
    """A connection to one server, or to several replicas with a ``dns:///`` or ``ipv4:`` target.

    TLS when ``tls`` is set or any of ``tls_ca``/``tls_cert``/``tls_key`` is given.
    """

    def __init__(
        self,
        address: str,
        *,
        token: str | None = None,
        timeout: float = 120.0,
        tls: bool = False,
        tls_ca: str | Path | None = None,
        tls_cert: str | Path | None = None,
        tls_key: str | Path | None = None,
        tls_server_name: str | None = None,
    ) -> None:
        self.address = address
        self.timeout = timeout
        self._metadata = (("authorization", token),) if token else ()
        options = channel_options(address, tls_server_name)
        self.tls = bool(tls or tls_ca is not None or tls_cert is not None)
        self.client_cert = tls_cert is not None
        if self.tls:
            self._channel = grpc.secure_channel(address, tls_credentials(tls_ca, tls_cert, tls_key), options=options)
        else:
            self._channel = grpc.insecure_channel(address, options=options)
        self.match_stub = match_grpc.MatchServiceStub(self._channel)
        self.db_stub = db_grpc.DatabaseServiceStub(self._channel)
        self.search_stub = search_grpc.SearchServiceStub(self._channel)

    def close(self) -> None:
        self._channel.close()

    def __enter__(self) -> LookalikeClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _kw(self) -> dict[str, Any]:
        return {"timeout": self.timeout, "metadata": self._metadata}

    # -- match -----------------------------------------------------------------------------
    @_rpc
    def match(
        self, image_a: bytes, image_b: bytes, *, crop_a: Sequence[float] | None = None,
        crop_b: Sequence[float] | None = None,
    ) -> match_pb.MatchResponse:  # fmt: skip
        """How alike two images are; ``crop_a`` / ``crop_b`` (x, y, width, height): only that region of each."""
        return self.match_stub.Match(match_request(image_a, image_b, crop_a=crop_a, crop_b=crop_b), **self._kw())

    @_rpc
    def embed(self, images: Sequence[bytes]) -> match_pb.EmbedResponse:
        return self.match_stub.Embed(match_pb.EmbedRequest(images=[_image(i) for i in images]), **self._kw())

    # -- databases -------------------------------------------------------------------------
    @_rpc
    def create_database(self, name: str, storage: str = "", keep: str = "", model: str = "") -> db_pb.Database:
        """``storage``: "f32", "f16" or "bf16" (half the memory), "i8" (a quarter, exact re-rank from disk);
        ``keep``: "none", "thumbnail" or "original" ("" = the server's --keep); ``model``: a loaded model's name
        ("" = the server's default)."""
        req = db_pb.CreateDatabaseRequest(name=name, storage=storage, keep=keep, model=model)
        return self.db_stub.CreateDatabase(req, **self._kw()).database

    @_rpc
    def get_database(self, name: str) -> db_pb.Database:
        return self.db_stub.GetDatabase(db_pb.GetDatabaseRequest(name=name), **self._kw()).database

    @_rpc
    def list_databases(self, page_size: int = 0) -> list[db_pb.Database]:
        out: list[db_pb.Database] = []
        token = ""
        while True:
            resp = self.db_stub.ListDatabases(
                db_pb.ListDatabasesRequest(page_size=page_size, page_token=token), **self._kw()
            )
            out.extend(resp.databases)
            token = resp.next_page_token
            if not token:
                return out

    @_rpc
    def delete_database(self, name: str) -> None:
        self.db_stub.DeleteDatabase(db_pb.DeleteDatabaseRequest(name=name), **self._kw())

    # -- images ----------------------------------------------------------------------------
    @_rpc
    def set_image(
        self,
        database: str,
        group_id: str,
        *,
        image: bytes | None = None,
        vector: Sequence[float] | None = None,
        intra_id: int | None = None,
        request_id: str = "",
        attributes: dict[str, str] | None = None,
        if_duplicate: str = "ALLOW",
        duplicate_tier: str = "",
        duplicate_threshold: float | None = None,
    ) -> db_pb.SetImageResponse:
        """Upsert one image; pass a ``request_id`` (e.g. a UUID) to make retries of this call safe.
        ``if_duplicate`` "SKIP" returns a stored duplicate's key instead of storing (``skipped_duplicate``),
        "REJECT" raises ALREADY_EXISTS / DUPLICATE_IMAGE."""
        check = duplicate_check(if_duplicate, duplicate_tier, duplicate_threshold)
        req = set_image_request(database, group_id, image=image, vector=vector, intra_id=intra_id,
                                request_id=request_id, attributes=attributes, duplicates=check)  # fmt: skip
        return self.db_stub.SetImage(req, **self._kw())

    @_rpc
    def bulk_set(self, database: str, items: Iterable[BulkItem | tuple[Any, ...]]) -> db_pb.BulkSetImagesResponse:
        """Stream :class:`BulkItem` s (``BulkItem("sku-1", image=data, client_ref=path)``); the older tuples
        ``(group_id, intra_id, image bytes or vector, client_ref[, attributes[, request_id]])`` still work."""

        def requests() -> Iterator[db_pb.BulkSetImagesRequest]:
            for i, item in enumerate(items):
                yield bulk_request(database, i, item)

        return self.db_stub.BulkSetImages(requests(), **self._kw())

    @_rpc
    def snapshot_database(self, name: str) -> db_pb.SnapshotDatabaseResponse:
        """Snapshot now; returns when it is durable (on the server's disk and, with an OSS root, in OSS)."""
        return self.db_stub.SnapshotDatabase(db_pb.SnapshotDatabaseRequest(name=name), **self._kw())

    @_rpc
    def export_database(self, name: str, destination: str) -> db_pb.ExportDatabaseResponse:
        """Write a checksummed copy to a directory on the server or ``oss://bucket/prefix/``."""
        req = db_pb.ExportDatabaseRequest(name=name, destination=destination)
        return self.db_stub.ExportDatabase(req, **self._kw())

    @_rpc
    def import_database(self, name: str, source: str) -> db_pb.Database:
        """Create database ``name`` from an export at ``source``."""
        req = db_pb.ImportDatabaseRequest(name=name, source=source)
        return self.db_stub.ImportDatabase(req, **self._kw()).database

    @_rpc
    def get_image(
        self, database: str, group_id: str, intra_id: int, *, include_vector: bool = False
    ) -> db_pb.RegisteredImage:
        return self.db_stub.GetImage(
            db_pb.GetImageRequest(
                database=database,
                key=types_pb2.ImageKey(group_id=group_id, intra_id=intra_id),
                include_vector=include_vector,
            ),
            **self._kw(),
        ).image

    @_rpc
    def reindex_database(self, name: str, model: str = "", *, allow_missing: bool = False,
                         sample_queries: int = 0) -> op_pb.Operation:  # fmt: skip
        """Start re-embedding a database with another loaded model; returns the operation (wait_done it)."""
        req = reindex_pb.ReindexDatabaseRequest(name=name, model=model, allow_missing=allow_missing,
                                                sample_queries=sample_queries)  # fmt: skip
        return self.db_stub.ReindexDatabase(req, **self._kw()).operation

    @_rpc
    def rollback_database(self, name: str) -> db_pb.RollbackDatabaseResponse:
        """Swap a database and the copy its last reindex kept (NAME@previous)."""
        return self.db_stub.RollbackDatabase(db_pb.RollbackDatabaseRequest(name=name), **self._kw())

    @_rpc
    def get_image_bytes(
        self, database: str, group_id: str, intra_id: int, view: str = "thumbnail"
    ) -> tuple[bytes, str]:
        """The kept bytes of an image (``view`` "thumbnail" or "original") and their media type."""
        resp = self.db_stub.GetImage(
            db_pb.GetImageRequest(database=database, key=types_pb2.ImageKey(group_id=group_id, intra_id=intra_id),
                                  view=db_pb.ImageView.Value(f"IMAGE_VIEW_{view.upper()}")),
            **self._kw(),
        )  # fmt: skip
        return resp.image_data, resp.media_type

    @_rpc
    def list_images(self, database: str, *, group_id: str = "", page_size: int = 0) -> list[db_pb.RegisteredImage]:
        out: list[db_pb.RegisteredImage] = []
        token = ""
        while True:
            resp = self.db_stub.ListImages(
                db_pb.ListImagesRequest(database=database, group_id=group_id, page_size=page_size, page_token=token),
                **self._kw(),
            )
            out.extend(resp.images)
            token = resp.next_page_token
            if not token:
                return out

    @_rpc
    def delete_image(self, database: str, group_id: str, intra_id: int) -> None:
        self.db_stub.DeleteImage(
            db_pb.DeleteImageRequest(database=database, key=types_pb2.ImageKey(group_id=group_id, intra_id=intra_id)),
            **self._kw(),
        )

    @_rpc
    def delete_group(self, database: str, group_id: str) -> int:
        req = db_pb.DeleteGroupRequest(database=database, group_id=group_id)
        return self.db_stub.DeleteGroup(req, **self._kw()).deleted_count

    # -- search ----------------------------------------------------------------------------
    @_rpc
    def search(
        self,
        database: str,
        *,
        image: bytes | None = None,
        vector: Sequence[float] | None = None,
        registered: tuple[str, int] | None = None,
        top_k: int = 10,
        one_per_group: bool = False,
        min_score: float | None = None,
        filter: dict[str, str] | None = None,
        group_id_prefix: str = "",
        omit_attributes: bool = False,
        min_tier: str = "",
        crop: Sequence[float] | None = None,
    ) -> search_pb.SearchResponse:
        """Top-k by image, vector or registered image; ``filter`` keeps images whose attributes equal it;
        ``min_tier`` ("duplicate", "near", "similar") drops hits below the model's calibrated tier;
        ``crop`` (x, y, width, height as fractions of the upright image): search with that region of the image."""
        req = search_request(
            database, image=image, vector=vector, registered=registered, top_k=top_k, one_per_group=one_per_group,
            min_score=min_score, filter=filter, group_id_prefix=group_id_prefix, omit_attributes=omit_attributes,
            min_tier=min_tier, crop=crop,
        )  # fmt: skip
        return self.search_stub.Search(req, **self._kw())


def _rpc_iter(method: Callable[..., Iterator[T]]) -> Callable[..., Iterator[T]]:
    @functools.wraps(method)
    def wrapper(self: LookalikeClient, *args: Any, **kwargs: Any) -> Iterator[T]:
        try:
            yield from method(self, *args, **kwargs)
        except grpc.RpcError as err:
            raise ClientError.from_rpc_error(err, self.address, tls=self.tls, client_cert=self.client_cert) from None

    return wrapper


# The duplicate, operation and model calls (client/duplicates.py) turn gRPC errors into ClientError too.
for _name in ("find_duplicates", "get_operation", "wait_operation", "cancel_operation", "delete_operation",
              "list_operations", "list_models"):  # fmt: skip
    setattr(LookalikeClient, _name, _rpc(getattr(DuplicateCalls, _name)))
LookalikeClient.duplicate_clusters = _rpc_iter(DuplicateCalls.duplicate_clusters)  # type: ignore[method-assign]
