"""The PAI-EAS compatible JSON API over HTTP, beside gRPC, on the same core and databases.

Existing PAI scripts (``requests.post(url, data=json.dumps({...}), headers={"Authorization":
token})``) work by changing the host and the token: ``POST /`` or ``/api/predict/<service>``
with ``{"imagea", "imageb"}`` (matching) or ``{"function_name", "function_params"}``
(retrieval). Every answer is the PAI envelope: ``request_id``, ``success``, ``status``,
``info``, ``error_code``, ``error_msg`` plus the function's fields. Bad requests get a 4xx
with a stable ``error_code`` and a message that says what to fix; never a 500 with internals.
The function names and the OpenAPI document (``/openapi.json``) come from ``pai_schema.py``.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import json
import logging
import threading
import time
import uuid
from collections import OrderedDict
from collections.abc import Callable
from typing import Any

from fastapi.responses import JSONResponse
from lookalike.server.core.errors import ErrorKind, LookalikeError, invalid
from lookalike.server.core.service import LookalikeService, Query
from lookalike.server.transport.auth import TokenSet, token_matches
from lookalike.server.transport.metrics import ServerMetrics
from lookalike.server.transport.pai_schema import FUNCTIONS

from lookalike.oss import OssClient, OssCredentials, is_oss

log = logging.getLogger(__name__)
request_log = logging.getLogger("lookalike.requests")  # the same logger and fields as the gRPC calls

HTTP_STATUS = {
    ErrorKind.INVALID_ARGUMENT: 400,
    ErrorKind.UNAUTHENTICATED: 401,
    ErrorKind.PERMISSION_DENIED: 403,
    ErrorKind.NOT_FOUND: 404,
    ErrorKind.ALREADY_EXISTS: 409,
    ErrorKind.FAILED_PRECONDITION: 412,
    ErrorKind.RESOURCE_EXHAUSTED: 429,
    ErrorKind.UNAVAILABLE: 503,
    ErrorKind.INTERNAL: 500,
}
STATUS_KIND = {status: kind for kind, status in HTTP_STATUS.items()}


MAX_PAI_SESSIONS = 1024  # tokens whose init is remembered; the least recently initialised is forgotten first


def caller_key(authorization: str | None) -> str:
    """A hash of the token the caller sent (raw or ``Bearer``): the key of its ``init``; the token is not kept."""
    sent = (authorization or "").strip()
    if sent.lower().startswith("bearer "):
        sent = sent[7:].strip()
    return hashlib.sha256(sent.encode("utf-8", "surrogateescape")).hexdigest()


def envelope(request_id: str, **fields: Any) -> dict[str, Any]:
    return {"request_id": request_id, "success": True, "status": 200, "info": "", "error_code": "", "error_msg": "",
            **fields}  # fmt: skip


def failure(request_id: str, err: LookalikeError) -> JSONResponse:
    status = 413 if err.reason == "MESSAGE_TOO_LARGE" else HTTP_STATUS[err.kind]
    body = {"request_id": request_id, "success": False, "status": status, "info": "", "error_code": err.reason,
            "error_msg": err.message}  # fmt: skip
    return JSONResponse(body, status_code=status)


class PaiGateway:
    """State of the PAI ``init`` call (OSS root and credentials, in memory only) and the handlers."""

    def __init__(
        self,
        service: LookalikeService,
        *,
        token: str | TokenSet | None,
        max_body_bytes: int,
        oss: OssClient,
        metrics: ServerMetrics | None = None,
        shared_init: bool = False,
    ) -> None:
        """``shared_init``: without tokens, one ``init`` applies to every client (single-tenant); with tokens,
        ``init``'s root and credentials belong to the caller's token, and other tokens never see them."""
        self.service = service
        self.metrics = metrics
        self.token = token
        self.max_body_bytes = max_body_bytes
        self.shared_init = shared_init
        self._oss = oss
        self._sessions: OrderedDict[str, tuple[str | None, OssClient]] = OrderedDict()  # caller -> (root, client)
        self._caller = threading.local()  # the hash of the token of the request this thread serves
        self._lock = threading.Lock()

    # -- parameters ------------------------------------------------------------------------
    @staticmethod
    def param(params: dict[str, Any], name: str, kind: type | tuple[type, ...], *, required: bool = True) -> Any:
        value = params.get(name)
        if value is None:
            if required:
                raise invalid("PARAM_MISSING", f"function_params.{name} is required")
            return None
        if isinstance(value, bool) and kind is not bool or not isinstance(value, kind):
            names = kind.__name__ if isinstance(kind, type) else " or ".join(k.__name__ for k in kind)
            raise invalid("PARAM_INVALID", f"function_params.{name} must be a {names}, not {type(value).__name__}")
        return value

    def image_bytes(self, value: Any, name: str) -> bytes:
        if not isinstance(value, str) or not value:
            raise invalid("PARAM_INVALID", f"{name} must be a base64 string or an oss:// path")
        if is_oss(value):  # never a local path or a URL: only allowed oss:// prefixes, through the service
            return self.service.read_oss(value, name, oss=self._session()[1])
        try:
            return base64.b64decode(value, validate=True)
        except (binascii.Error, ValueError):
            raise invalid("BASE64_INVALID", f"{name} is not valid base64; send base64.b64encode(file bytes)") from None

    @staticmethod
    def crop(value: Any, name: str) -> list[Any] | None:
        """A crop as sent, ``[x, y, width, height]`` (the core checks the numbers: CROP_INVALID), or None."""
        if value is not None and not isinstance(value, list):
            raise invalid("PARAM_INVALID", f"{name} must be a list [x, y, width, height] of fractions of the image, "
                          f"not {type(value).__name__}")  # fmt: skip
        return value

    # -- functions -------------------------------------------------------------------------
    def match(self, body: dict[str, Any]) -> dict[str, Any]:
        a = self.image_bytes(body.get("imagea"), "imagea")
        b = self.image_bytes(body.get("imageb"), "imageb")
        crop_a, crop_b = self.crop(body.get("crop_a"), "crop_a"), self.crop(body.get("crop_b"), "crop_b")
        similarity, cosine = self.service.match(a, b, crop_a=crop_a, crop_b=crop_b)
        return {"similarity": similarity, "cosine": cosine, "model": self.service.model_name}

    def retrieval(self, name: str, params: dict[str, Any]) -> dict[str, Any]:
        handler: Callable[[dict[str, Any]], dict[str, Any]] | None = getattr(self, f"fn_{name}", None)
        if name not in FUNCTIONS or handler is None:
            raise invalid("FUNCTION_UNKNOWN", f"function_name {name!r} is not one of {', '.join(FUNCTIONS)}")
        return handler(params)

    def fn_init(self, p: dict[str, Any]) -> dict[str, Any]:
        backend = self.param(p, "backend", str, required=False) or "local"
        root = self.param(p, "root_path", str, required=False)
        if backend not in ("oss", "local"):
            raise invalid("PARAM_INVALID", f"backend must be 'oss' or 'local', not {backend!r}")
        if self.token is None and not self.shared_init:
            raise LookalikeError(
                ErrorKind.FAILED_PRECONDITION, "INIT_NOT_SHARED",
                "init would set the OSS root and credentials of every client of this server, which has no token: "
                "start it with a token (LOOKALIKE_TOKEN or --token-file; init then applies to the caller's token), "
                "or with --pai-init-shared for a single-tenant server",
            )  # fmt: skip
        client = self._oss
        if backend == "oss":
            if not root or not is_oss(root):
                raise invalid("PARAM_INVALID", "backend 'oss' needs root_path oss://bucket/prefix/")
            cfg = self.param(p, "oss_io_config", dict, required=False) or {}
            key_id, secret, hosts = cfg.get("ak_id"), cfg.get("ak_secret"), cfg.get("hosts")
            if key_id and secret:
                endpoint = self._oss.endpoint
                if isinstance(hosts, str) and hosts:  # only an endpoint the operator allowed (never a scan)
                    endpoint = self.service.check_endpoint(hosts, "function_params.oss_io_config.hosts")
                client = OssClient(endpoint, OssCredentials(str(key_id), str(secret)), path_style=self._oss.path_style,
                                   retries=self._oss.retries)  # fmt: skip
        if root:
            root = self.service.location(root, "function_params.root_path", oss=client).rstrip("/") + "/"
        with self._lock:
            self._sessions[self._caller_key()] = (root or None, client)
            self._sessions.move_to_end(self._caller_key())
            while len(self._sessions) > MAX_PAI_SESSIONS:
                self._sessions.popitem(last=False)
        return {"info": "init db success."}

    def _caller_key(self) -> str:
        return getattr(self._caller, "key", "")

    def _session(self) -> tuple[str | None, OssClient]:
        """The caller's ``init``: (root, OSS client); before one, no root and the server's own client."""
        with self._lock:
            return self._sessions.get(self._caller_key(), (None, self._oss))

    def _location(self, db: str) -> str:
        root = self._session()[0]
        if root is None:
            raise LookalikeError(ErrorKind.FAILED_PRECONDITION, "NOT_INITIALIZED",
                                 "call init with a root_path first: save and load read and write there")  # fmt: skip
        return f"{root}{db}/"

    def fn_add(self, p: dict[str, Any]) -> dict[str, Any]:
        name = self.param(p, "database_name", str)
        dims = self.param(p, "feature_dim_dict", dict, required=False) or {}
        served = self.service.dimension
        for key, dim in dims.items():
            if dim != served:
                raise invalid(
                    "DIMENSION_MISMATCH",
                    f"feature_dim_dict[{key!r}] is {dim}, but the served model gives {served}-d features; "
                    f"use {{{key!r}: {served}}} or serve the model that matches",
                )
        for key, metric in (self.param(p, "feature_distance_dict", dict, required=False) or {}).items():
            if str(metric).lower() not in ("cosine", "inner_product", "ip"):
                raise invalid("PARAM_INVALID", f"feature_distance_dict[{key!r}]: only 'Cosine' is supported")
        self.service.create_database(name)
        return {"name": name, "info": f"add database {name} success."}

    def fn_delete(self, p: dict[str, Any]) -> dict[str, Any]:
        name = self.param(p, "database_name", str)
        self.service.delete_database(name)
        return {"info": f"delete database {name} success."}

    def fn_get(self, p: dict[str, Any]) -> dict[str, Any]:
        name = self.param(p, "database_name", str, required=False)
        dbs = [self.service.get_database(name)] if name else self.service.all_databases()
        return {"db_dict": {db.name: {"size": db.size, "groups": db.group_count, "dimension": db.dimension}
                            for db in dbs}}  # fmt: skip

    def _names(self, p: dict[str, Any]) -> list[str]:
        name = self.param(p, "database_name", str, required=False)
        return [name] if name else [db.name for db in self.service.all_databases()]

    def fn_save(self, p: dict[str, Any]) -> dict[str, Any]:
        saved = {}
        for name in self._names(p):
            info = self.service.export_database(name, self._location(name), oss=self._session()[1])
            saved[name] = info.image_count
        return {"saved": saved, "info": "save db success."}

    def fn_load(self, p: dict[str, Any]) -> dict[str, Any]:
        name = self.param(p, "database_name", str)
        # PAI's load replaces the served copy with the saved one: atomically, a failed load changes nothing
        db = self.service.load_database(name, self._location(name), oss=self._session()[1])
        return {"loaded": {name: db.size}, "info": "load db success."}

    def fn_db_set(self, p: dict[str, Any]) -> dict[str, Any]:
        name = self.param(p, "database_name", str)
        group_id = self.param(p, "group_id", (str, int))
        intra_id = self.param(p, "intra_id", int, required=False)
        image = self.image_bytes(p.get("image"), "function_params.image")
        attributes = {}
        for key in ("data", "savename"):  # PAI's free-form payload and saved file name come back with hits
            value = self.param(p, key, str, required=False)
            if value is not None:
                attributes[key] = value
        if isinstance(p.get("image"), str) and is_oss(p["image"]):
            attributes.setdefault("source", p["image"])
        result = self.service.set_image(name, str(group_id), intra_id, image, None, attributes=attributes)
        return {"group_id": result.key[0], "intra_id": result.key[1], "replaced": result.replaced}

    def fn_set(self, p: dict[str, Any]) -> dict[str, Any]:
        """The old-style bulk ``set``: an oss:// image list, ``path[,group_id[,intra_id]]`` per line.

        Only oss:// lists and images under allowed prefixes: a request never makes the server read its own
        files. Registered a chunk at a time as the images are read; a failed line is named by its number.
        """
        name = self.param(p, "database_name", str)
        filelist = self.param(p, "filelist", str)
        if not is_oss(filelist):
            raise invalid("PARAM_INVALID", "filelist must be an oss://bucket/path of an image list")
        done = self.service.register_list(name, filelist, oss=self._session()[1])
        failures = [{"line": f.line, "error_code": f.reason, "error_msg": f.message} for f in done.failures]
        return {"succeeded": done.result.succeeded, "failed": done.failed, "failures": failures,
                "keys": [{"group_id": g, "intra_id": i} for g, i in done.result.keys]}  # fmt: skip

    def fn_db_get(self, p: dict[str, Any]) -> dict[str, Any]:
        name = self.param(p, "database_name", str)
        group_id = str(self.param(p, "group_id", (str, int)))
        intra_id = self.param(p, "intra_id", int, required=False)
        if intra_id is not None:
            entries = [self.service.get_image(name, group_id, intra_id)]
        else:
            entries = self.service.group_images(name, group_id)
        return {"entries": [{"group_id": e.group_id, "intra_id": e.intra_id, "update_time": e.update_time}
                            for e in entries]}  # fmt: skip

    def fn_db_delete(self, p: dict[str, Any]) -> dict[str, Any]:
        name = self.param(p, "database_name", str)
        group_id = str(self.param(p, "group_id", (str, int)))
        intra_id = self.param(p, "intra_id", int, required=False)
        if intra_id is not None:
            self.service.delete_image(name, group_id, intra_id)
            return {"deleted": 1}
        return {"deleted": self.service.delete_group(name, group_id)}

    def fn_db_search(self, p: dict[str, Any]) -> dict[str, Any]:
        name = self.param(p, "database_name", str)
        top_k = self.param(p, "search_topk", int, required=False) or 10
        crop = self.param(p, "crop", list, required=False)
        image = self.image_bytes(p.get("image"), "function_params.image")
        hits, searched, _ = self.service.search(name, Query(image=image), top_k=top_k, crop=crop)
        results = [{"group_id": h.group_id, "intra_id": h.intra_id, "score": h.score, "attributes": h.attributes or {}}
                   for h in hits]  # fmt: skip
        return {"results": results, "searched": searched}

    def fn_db_clean(self, p: dict[str, Any]) -> dict[str, Any]:
        name = self.param(p, "database_name", str)
        return {"cleaned": self.service.clear_database(name)}

    # -- one request -----------------------------------------------------------------------
    def handle(self, raw: bytes, authorization: str | None, content_type: str | None) -> JSONResponse:
        """One POST: the response, plus the request's metrics and (at debug) its log line, as for gRPC calls."""
        request_id = uuid.uuid4().hex
        self._caller.key = caller_key(authorization) if self.token is not None else ""  # whose init applies
        started = time.perf_counter()
        method = ["pai"]  # named once the body says what it is: pai/match, pai/db_search, ...
        response = self._handle(raw, authorization, content_type, request_id, method)
        elapsed = time.perf_counter() - started
        code = self._code(response)
        name = "/".join(method)
        if self.metrics is not None:
            self.metrics.requests.labels(name, code).inc()
            self.metrics.latency.labels(name, code).observe(elapsed)
        if request_log.isEnabledFor(logging.DEBUG):
            ms = round(elapsed * 1000, 2)
            fields = {"request_id": request_id, "rpc": name, "status": code, "http_status": response.status_code,
                      "latency_ms": ms}  # fmt: skip
            request_log.debug("request id=%s method=%s code=%s http=%d ms=%.2f", request_id, name, code,
                              response.status_code, ms, extra=fields)  # fmt: skip
        return response

    @staticmethod
    def _code(response: JSONResponse) -> str:
        """The status as the gRPC calls name it (OK, INVALID_ARGUMENT, ...), from the HTTP status."""
        if response.status_code == 200:
            return "OK"
        if response.status_code == 413:
            return ErrorKind.RESOURCE_EXHAUSTED.value
        return STATUS_KIND.get(response.status_code, ErrorKind.INTERNAL).value

    def _handle(
        self, raw: bytes, authorization: str | None, content_type: str | None, request_id: str, method: list[str]
    ) -> JSONResponse:
        try:
            if self.token is not None and not token_matches(authorization, self.token):
                raise LookalikeError(ErrorKind.UNAUTHENTICATED, "TOKEN_INVALID",
                                     "missing or wrong token: send it in the Authorization header")  # fmt: skip
            if content_type and "json" not in content_type and "text/plain" not in content_type and \
                    "x-www-form-urlencoded" not in content_type:  # fmt: skip
                return failure(request_id, invalid("CONTENT_TYPE_INVALID", f"send a JSON body, not {content_type}"))
            if len(raw) > self.max_body_bytes:
                raise LookalikeError(
                    ErrorKind.RESOURCE_EXHAUSTED,
                    "MESSAGE_TOO_LARGE",
                    f"the body is {len(raw)} bytes, over the limit of {self.max_body_bytes}",
                )
            try:
                body = json.loads(raw)
            except (ValueError, RecursionError):
                raise invalid("JSON_INVALID", "the body is not JSON; send json.dumps({...})") from None
            if not isinstance(body, dict):
                raise invalid("JSON_INVALID", "the body must be a JSON object")
            if "function_name" in body:
                name = body["function_name"]
                params = body.get("function_params") or {}
                if not isinstance(name, str) or not isinstance(params, dict):
                    raise invalid("PARAM_INVALID", "function_name must be a string and function_params an object")
                method.append(name if name in FUNCTIONS else "unknown")  # the metric label stays bounded
                fields = self.retrieval(name, params)
            elif "imagea" in body or "imageb" in body:
                method.append("match")
                fields = self.match(body)
            else:
                raise invalid("REQUEST_INVALID", "send {imagea, imageb} to match, or {function_name, function_params}")
            return JSONResponse(envelope(request_id, **fields))
        except LookalikeError as err:
            return failure(request_id, err)
        except Exception:
            log.exception("unexpected error in the PAI gateway (request %s)", request_id)
            internal = LookalikeError(ErrorKind.INTERNAL, "INTERNAL", "internal error; see the server log")
            return failure(request_id, internal)


__all__ = ["PaiGateway"]
