"""The PAI-EAS compatible JSON API over HTTP, beside gRPC, on the same core and databases.

Existing PAI scripts (``requests.post(url, data=json.dumps({...}), headers={"Authorization":
token})``) work by changing the host and the token: ``POST /`` or ``/api/predict/<service>``
with ``{"imagea", "imageb"}`` (matching) or ``{"function_name", "function_params"}``
(retrieval). Every answer is the PAI envelope: ``request_id``, ``success``, ``status``,
``info``, ``error_code``, ``error_msg`` plus the function's fields. Bad requests get a 4xx
with a stable ``error_code`` and a message that says what to fix; never a 500 with internals.
"""

from __future__ import annotations

import base64
import binascii
import json
import logging
import threading
import time
import uuid
from collections.abc import Callable
from typing import Any

from fastapi import FastAPI, Request
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import JSONResponse
from lookalike.server.core.errors import ErrorKind, LookalikeError, invalid
from lookalike.server.core.service import BulkItem, LookalikeService, Query
from lookalike.server.transport.auth import TokenSet, token_matches
from lookalike.server.transport.metrics import ServerMetrics

from lookalike.oss import OssClient, OssCredentials, is_oss

log = logging.getLogger(__name__)
request_log = logging.getLogger("lookalike.requests")  # the same logger and fields as the gRPC calls

HTTP_STATUS = {
    ErrorKind.INVALID_ARGUMENT: 400,
    ErrorKind.UNAUTHENTICATED: 401,
    ErrorKind.NOT_FOUND: 404,
    ErrorKind.ALREADY_EXISTS: 409,
    ErrorKind.FAILED_PRECONDITION: 412,
    ErrorKind.RESOURCE_EXHAUSTED: 429,
    ErrorKind.UNAVAILABLE: 503,
    ErrorKind.INTERNAL: 500,
}
STATUS_KIND = {status: kind for kind, status in HTTP_STATUS.items()}
FUNCTIONS = (
    "init", "add", "delete", "get", "save", "load", "set", "db_set", "db_get", "db_delete", "db_search", "db_clean",
)  # fmt: skip
REQUEST_SCHEMA = {
    "oneOf": [
        {
            "type": "object",
            "title": "Image matching",
            "required": ["imagea", "imageb"],
            "properties": {
                "imagea": {"type": "string", "format": "byte"},
                "imageb": {"type": "string", "format": "byte"},
            },
        },
        {
            "type": "object",
            "title": "Retrieval",
            "required": ["function_name"],
            "properties": {
                "function_name": {"type": "string", "enum": list(FUNCTIONS)},
                "function_params": {"type": "object"},
            },
        },
    ]
}


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
    ) -> None:
        self.service = service
        self.metrics = metrics
        self.token = token
        self.max_body_bytes = max_body_bytes
        self._oss = oss
        self._root: str | None = None
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
        if is_oss(value):
            try:
                return self._oss.read(value)
            except FileNotFoundError:
                raise invalid("IMAGE_NOT_FOUND", f"{name}: {value} does not exist") from None
            except (OSError, ValueError) as exc:
                raise LookalikeError(ErrorKind.UNAVAILABLE, "OSS_UNAVAILABLE", f"{name}: {exc}") from None
        try:
            return base64.b64decode(value, validate=True)
        except (binascii.Error, ValueError):
            raise invalid("BASE64_INVALID", f"{name} is not valid base64; send base64.b64encode(file bytes)") from None

    # -- functions -------------------------------------------------------------------------
    def match(self, body: dict[str, Any]) -> dict[str, Any]:
        a = self.image_bytes(body.get("imagea"), "imagea")
        b = self.image_bytes(body.get("imageb"), "imageb")
        similarity, cosine = self.service.match(a, b)
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
        if backend == "oss":
            if not root or not is_oss(root):
                raise invalid("PARAM_INVALID", "backend 'oss' needs root_path oss://bucket/prefix/")
            cfg = self.param(p, "oss_io_config", dict, required=False) or {}
            key_id, secret, hosts = cfg.get("ak_id"), cfg.get("ak_secret"), cfg.get("hosts")
            if key_id and secret:
                endpoint = hosts if isinstance(hosts, str) else None
                if endpoint and "://" not in endpoint:
                    endpoint = "https://" + endpoint
                self._oss = OssClient(endpoint or self._oss.endpoint, OssCredentials(str(key_id), str(secret)),
                                      path_style=self._oss.path_style, retries=self._oss.retries)  # fmt: skip
        with self._lock:
            self._root = (root.rstrip("/") + "/") if root else None
        return {"info": "init db success."}

    def _location(self, db: str) -> str:
        if self._root is None:
            raise LookalikeError(ErrorKind.FAILED_PRECONDITION, "NOT_INITIALIZED",
                                 "call init with a root_path first: save and load read and write there")  # fmt: skip
        return f"{self._root}{db}/"

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
            info = self.service.export_database(name, self._location(name), oss=self._oss)
            saved[name] = info.image_count
        return {"saved": saved, "info": "save db success."}

    def fn_load(self, p: dict[str, Any]) -> dict[str, Any]:
        name = self.param(p, "database_name", str)
        # PAI's load replaces the served copy with the saved one: atomically, a failed load changes nothing
        db = self.service.load_database(name, self._location(name), oss=self._oss)
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
        (group, intra), replaced = self.service.set_image(name, str(group_id), intra_id, image, None,
                                                          attributes=attributes)  # fmt: skip
        return {"group_id": group, "intra_id": intra, "replaced": replaced}

    def fn_set(self, p: dict[str, Any]) -> dict[str, Any]:
        """The old-style bulk ``set``: an oss:// image list, ``path[,group_id[,intra_id]]`` per line.

        Only oss:// lists and images: a request never makes the server read its own files.
        """
        name = self.param(p, "database_name", str)
        filelist = self.param(p, "filelist", str)
        if not is_oss(filelist):
            raise invalid("PARAM_INVALID", "filelist must be an oss://bucket/path of an image list")
        try:
            text = self._oss.read(filelist).decode("utf-8")
        except FileNotFoundError:
            raise LookalikeError(ErrorKind.NOT_FOUND, "FILELIST_NOT_FOUND", f"{filelist} does not exist") from None
        except (OSError, ValueError, UnicodeDecodeError) as exc:
            raise LookalikeError(ErrorKind.UNAVAILABLE, "OSS_UNAVAILABLE", f"filelist: {exc}") from None
        base = filelist.rsplit("/", 1)[0] + "/"
        items: list[BulkItem] = []
        failures = []
        for number, line in enumerate(text.splitlines(), start=1):
            line = line.strip()
            if not line or line.startswith("#"):
                continue
            parts = [x.strip() for x in line.replace("\t", ",").split(",")]
            path = parts[0] if is_oss(parts[0]) else base + parts[0].lstrip("/")
            group = parts[1] if len(parts) > 1 and parts[1] else path.rsplit("/", 1)[-1].rsplit(".", 1)[0]
            try:
                intra = int(parts[2]) if len(parts) > 2 and parts[2] else None
                image = self._oss.read(path)
            except ValueError:
                failures.append({"line": number, "source": path, "error_code": "INTRA_ID_INVALID"})
                continue
            except OSError:
                failures.append({"line": number, "source": path, "error_code": "IMAGE_NOT_FOUND"})
                continue
            items.append(BulkItem(group, intra, image=image, client_ref=path, attributes={"source": path}))
        result = self.service.bulk_set(name, items) if items else None
        if result is not None:
            failures += [{"source": f.client_ref, "error_code": f.reason, "error_msg": f.message}
                         for f in result.failures]  # fmt: skip
        return {"succeeded": result.succeeded if result else 0, "failed": len(failures), "failures": failures,
                "keys": [{"group_id": g, "intra_id": i} for g, i in (result.keys if result else [])]}  # fmt: skip

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
        image = self.image_bytes(p.get("image"), "function_params.image")
        hits, searched, _ = self.service.search(name, Query(image=image), top_k=top_k)
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


def create_app(gateway: PaiGateway) -> FastAPI:
    app = FastAPI(title="Lookalike PAI-EAS compatible API", version="1",
                  description="Image matching and retrieval, compatible with the PAI-EAS JSON scripts.")  # fmt: skip

    async def predict(request: Request) -> JSONResponse:
        raw = await request.body()
        return await run_in_threadpool(
            gateway.handle, raw, request.headers.get("authorization"), request.headers.get("content-type")
        )

    async def healthz() -> JSONResponse:
        """For load balancers: 200 once the databases are loaded (or the index backend answers), else 503."""
        ready = gateway.service.ready
        return JSONResponse({"status": "SERVING" if ready else "NOT_SERVING"}, status_code=200 if ready else 503)

    extra = {"requestBody": {"content": {"application/json": {"schema": REQUEST_SCHEMA}}, "required": True}}
    app.add_api_route("/healthz", healthz, methods=["GET"], summary="Readiness (200 serving, 503 not yet)")
    app.add_api_route("/", predict, methods=["POST"], openapi_extra=extra, summary="Match or retrieval")
    app.add_api_route("/api/predict/{service_name}", predict, methods=["POST"], openapi_extra=extra,
                      summary="Match or retrieval (the PAI-EAS URL path)")  # fmt: skip
    return app


class HttpServer:
    """uvicorn in a thread of the serving process; HTTPS (and client certificates) with the gRPC TLS files."""

    def __init__(
        self,
        app: FastAPI,
        host: str,
        port: int,
        *,
        tls_cert: str | None = None,
        tls_key: str | None = None,
        tls_client_ca: str | None = None,
    ) -> None:
        import socket

        import uvicorn

        self._sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self._sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self._sock.bind((host, port))
        self._sock.listen(1024)  # connections queue from now on, before uvicorn's loop is up
        self.port = self._sock.getsockname()[1]
        tls: dict[str, Any] = {}
        if tls_cert is not None:
            import ssl

            tls = {"ssl_certfile": tls_cert, "ssl_keyfile": tls_key}
            if tls_client_ca is not None:
                tls |= {"ssl_ca_certs": tls_client_ca, "ssl_cert_reqs": ssl.CERT_REQUIRED}
        self._server = uvicorn.Server(uvicorn.Config(app, log_level="warning", access_log=False, **tls))
        self._thread = threading.Thread(target=self._server.run, kwargs={"sockets": [self._sock]}, daemon=True,
                                        name="http")  # fmt: skip

    def start(self, timeout: float = 30.0) -> None:
        import time

        self._thread.start()
        deadline = time.monotonic() + timeout
        while not self._server.started and self._thread.is_alive() and time.monotonic() < deadline:
            time.sleep(0.01)

    def stop(self) -> None:
        self._server.should_exit = True
        self._thread.join(10)
        self._sock.close()


__all__ = ["HttpServer", "PaiGateway", "create_app"]
