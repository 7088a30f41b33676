"""Where a request may make the server read, write and connect: the export root, oss:// prefixes, OSS endpoints.

As Elasticsearch confines snapshot repositories to ``path.repo``:

- a local export, import or PAI local root resolves under one directory, ``--export-root``
  (default ``<data-dir>/exports``); a relative location is taken relative to it. An absolute
  path outside it, a ``..`` part, or a symlink that leads out of it is refused with
  PERMISSION_DENIED / PATH_NOT_ALLOWED, in one message that never says whether the path exists
  (nothing outside the root is even looked at). Missing folders are created only under it.
- ``oss://`` locations and images are allowed only under the ``--oss-allow`` prefixes (default:
  the ``--root`` bucket and prefix, if any).
- an OSS endpoint a request names (PAI ``init``'s ``hosts``) must be the configured endpoint or
  match ``--oss-endpoint-allow``; an entry with a ``*`` host part matches only hosts whose every
  address is public (never loopback, link-local, private or reserved), so an address the operator
  did not write down is never reached.

Plain values and no wire: the service checks every location here before a backend sees it.
"""

from __future__ import annotations

import ipaddress
import os
import socket
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlsplit

from lookalike.server.core.errors import ErrorKind, LookalikeError, invalid

MAX_LOCATION_LEN = 1024  # a location or endpoint a request names

OSS = "oss://"


def path_not_allowed(field: str, root: Path | None) -> LookalikeError:
    where = "under the server's export root (--export-root); a relative path is taken relative to it"
    if root is None:
        where = "nowhere on this server's disk: it has no export root"
    return LookalikeError(
        ErrorKind.PERMISSION_DENIED, "PATH_NOT_ALLOWED",
        f"{field} is not allowed: local locations must lie {where}, without '..' or symlinks that lead out",
    )  # fmt: skip


def oss_not_allowed(field: str, allowed: tuple[tuple[str, str], ...]) -> LookalikeError:
    shown = ", ".join(f"{OSS}{b}/{p}" for b, p in allowed) or "none (set --oss-allow)"
    return LookalikeError(ErrorKind.PERMISSION_DENIED, "PATH_NOT_ALLOWED",
                          f"{field} is not under an allowed oss:// prefix; allowed: {shown}")  # fmt: skip


def split_oss_ref(ref: str, field: str) -> tuple[str, str]:
    """``oss://bucket[.host]/key`` -> (bucket, key), as ``lookalike.oss`` reads it; '.' and '..' parts refused."""
    host, _, key = ref[len(OSS) :].partition("/")
    bucket = host.split(".", 1)[0]
    if not bucket:
        raise invalid("DESTINATION_INVALID", f"{field} names no bucket; use oss://bucket/prefix/")
    if any(part in (".", "..") for part in key.split("/")):
        raise LookalikeError(ErrorKind.PERMISSION_DENIED, "PATH_NOT_ALLOWED",
                             f"{field} has a '.' or '..' part; name the object itself")  # fmt: skip
    return bucket, key


def parse_oss_prefixes(text: str | None) -> tuple[tuple[str, str], ...]:
    """``oss://b/p/,oss://c/`` -> (("b", "p/"), ("c", "")); ValueError naming a bad entry."""
    out = []
    for entry in (text or "").split(","):
        entry = entry.strip()
        if not entry:
            continue
        if not entry.startswith(OSS):
            raise ValueError(f"{entry!r} is not oss://bucket/prefix/")
        host, _, prefix = entry[len(OSS) :].partition("/")
        bucket = host.split(".", 1)[0]
        if not bucket or any(part in (".", "..") for part in prefix.split("/")[:-1]):
            raise ValueError(f"{entry!r} is not oss://bucket/prefix/")
        out.append((bucket, prefix if not prefix or prefix.endswith("/") else prefix + "/"))
    return tuple(out)


@dataclass(frozen=True)
class Endpoint:
    scheme: str
    host: str  # lowercase; "*" or "*.suffix" in an allow-list entry
    port: int

    @property
    def url(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"{self.scheme}://{host}:{self.port}"

    @classmethod
    def parse(cls, text: str, *, pattern: bool = False) -> Endpoint:
        """``https://oss-cn-hangzhou.aliyuncs.com``, ``host:port`` (https) or ``http://127.0.0.1:9000``."""
        raw = text.strip()
        if "://" not in raw:
            raw = "https://" + raw
        if pattern:
            raw = raw.replace("://*", "://wildcard--", 1)  # urlsplit does not take '*' in a host
        parts = urlsplit(raw)
        try:
            port = parts.port
        except ValueError:
            raise ValueError(f"{text!r} has a bad port") from None
        host = (parts.hostname or "").lower()
        if parts.scheme not in ("http", "https") or not host or parts.username or parts.password:
            raise ValueError(f"{text!r} is not an http(s)://host[:port] endpoint")
        if parts.path not in ("", "/") or parts.query or parts.fragment:
            raise ValueError(f"{text!r} has a path; an endpoint is http(s)://host[:port]")
        if pattern and host.startswith("wildcard--"):
            host = "*" + host[len("wildcard--") :]
        return cls(parts.scheme, host, port or (443 if parts.scheme == "https" else 80))

    def matches(self, other: Endpoint) -> bool | None:
        """True: listed exactly; None: matched by a wildcard (its addresses must be public); False: no."""
        if (self.scheme, self.port) != (other.scheme, other.port):
            return False
        if self.host == other.host:
            return True
        if self.host == "*" or (self.host.startswith("*.") and other.host.endswith(self.host[1:])):
            return None
        return False


def public_only(host: str, port: int) -> bool:
    """Every address ``host`` resolves to is a public one (no loopback, link-local, private, reserved)."""
    infos = socket.getaddrinfo(host, port, proto=socket.IPPROTO_TCP)
    if not infos:
        return False
    for info in infos:
        address = ipaddress.ip_address(str(info[4][0]).split("%", 1)[0])
        if not address.is_global or address.is_multicast:
            return False
    return True


@dataclass(frozen=True)
class Boundaries:
    """The operator's limits on what a request may name (``--export-root``, ``--oss-allow``, endpoints)."""

    export_root: Path | None = None  # None: no local location is allowed
    oss_allow: tuple[tuple[str, str], ...] = ()
    endpoint: str | None = None  # the configured OSS endpoint, always allowed
    endpoint_allow: tuple[Endpoint, ...] = ()

    @classmethod
    def build(
        cls, export_root: Path | None, oss_allow: str | None, endpoint: str | None, endpoint_allow: str | None
    ) -> Boundaries:
        """From the settings' text; ValueError naming a bad entry."""
        allow = tuple(Endpoint.parse(e, pattern=True) for e in (endpoint_allow or "").split(",") if e.strip())
        root = Path(os.path.abspath(export_root)) if export_root is not None else None
        return cls(root, parse_oss_prefixes(oss_allow), endpoint, allow)

    # -- locations -------------------------------------------------------------------------
    def location(self, location: str, field: str, *, create: bool = False) -> str:
        """A checked location: ``oss://bucket/prefix/`` under an allowed prefix, or an absolute path under the root.

        ``create`` makes the missing folders of a local location (under the root only).
        """
        if not isinstance(location, str) or not location or not location.isprintable() or \
                len(location) > MAX_LOCATION_LEN:  # fmt: skip
            raise invalid(
                "DESTINATION_INVALID",
                f"{field} must be a directory under the server's export root or oss://bucket/prefix/ "
                f"(at most {MAX_LOCATION_LEN} printable characters)",
            )
        if location.startswith(OSS):
            bucket, key = split_oss_ref(location, field)
            prefix = key if not key or key.endswith("/") else key + "/"
            self.check_oss(bucket, prefix, field)
            return f"{OSS}{bucket}/{prefix}"
        return str(self.local(location, field, create=create))

    def check_oss(self, bucket: str, key: str, field: str) -> None:
        if not any(bucket == b and key.startswith(p) for b, p in self.oss_allow):
            raise oss_not_allowed(field, self.oss_allow)

    def oss_object(self, ref: str, field: str) -> str:
        """An ``oss://bucket/key`` image or list, under an allowed prefix."""
        bucket, key = split_oss_ref(ref, field)
        if not key or key.endswith("/"):
            raise invalid("PARAM_INVALID", f"{field} must name an object: oss://bucket/path/to/object")
        self.check_oss(bucket, key, field)
        return ref

    def local(self, location: str, field: str, *, create: bool = False) -> Path:
        root = self.export_root
        if root is None or "\\" in location or ".." in Path(location).parts:
            raise path_not_allowed(field, root)
        base = Path(os.path.abspath(root))
        candidate = Path(os.path.normpath(base / location))  # an absolute location replaces base
        if not _under(candidate, base):  # decided on the text alone: nothing outside the root is looked at
            raise path_not_allowed(field, root)
        real_base = Path(os.path.realpath(base))
        real = Path(os.path.realpath(candidate))  # symlinks inside the root, followed
        if not _under(real, real_base):
            raise path_not_allowed(field, root)
        if create:
            try:
                real_base.mkdir(parents=True, exist_ok=True)
                real.mkdir(parents=True, exist_ok=True)
            except FileExistsError:
                raise not_a_directory(field) from None
            except OSError as exc:
                raise LookalikeError(ErrorKind.FAILED_PRECONDITION, "DESTINATION_INVALID",
                                     f"{field}: the folder cannot be made ({exc.strerror})") from None  # fmt: skip
            if Path(os.path.realpath(real)) != real:  # a symlink appeared while the folders were made
                raise path_not_allowed(field, root)
        if real.exists() and not real.is_dir():
            raise not_a_directory(field)
        return real

    # -- endpoints -------------------------------------------------------------------------
    def check_endpoint(self, text: str, field: str) -> str:
        """The URL of an endpoint a request names, if the operator allowed it."""
        if not isinstance(text, str) or not text.isprintable() or len(text) > MAX_LOCATION_LEN:
            raise invalid("ENDPOINT_INVALID", f"{field} must be an http(s)://host[:port] endpoint")
        try:
            wanted = Endpoint.parse(text)
        except ValueError as exc:
            raise invalid("ENDPOINT_INVALID", f"{field}: {exc}") from None
        listed = list(self.endpoint_allow)
        if self.endpoint:
            try:
                listed.append(Endpoint.parse(self.endpoint))
            except ValueError:
                pass
        verdicts = [entry.matches(wanted) for entry in listed]
        if True in verdicts:
            return wanted.url
        if None in verdicts:
            try:
                public = public_only(wanted.host, wanted.port)
            except (OSError, UnicodeError, ValueError):
                raise LookalikeError(ErrorKind.UNAVAILABLE, "OSS_UNREACHABLE",
                                     f"{field}: the endpoint's host name does not resolve") from None  # fmt: skip
            if public:
                return wanted.url
        raise LookalikeError(
            ErrorKind.PERMISSION_DENIED, "ENDPOINT_NOT_ALLOWED",
            f"{field} is not an OSS endpoint this server may reach: use the configured endpoint or one listed in "
            "--oss-endpoint-allow (loopback, link-local and private addresses only when listed exactly)",
        )  # fmt: skip


def not_a_directory(field: str) -> LookalikeError:
    return LookalikeError(ErrorKind.FAILED_PRECONDITION, "DESTINATION_NOT_DIRECTORY",
                          f"{field} is a file under the export root, not a directory; name a directory")  # fmt: skip


def _under(path: Path, base: Path) -> bool:
    return path == base or base in path.parents


def oss_failure(exc: BaseException, field: str) -> LookalikeError:
    """An outbound OSS call's failure, classed (permanent: 4xx codes; transient: UNAVAILABLE), never the remote body."""
    status = getattr(exc, "status", None)
    if isinstance(exc, ValueError) and not isinstance(exc, UnicodeError):
        return oss_not_configured(field)
    if isinstance(status, int) and 400 <= status < 500:
        return LookalikeError(ErrorKind.FAILED_PRECONDITION, "OSS_REFUSED",
                              f"{field}: OSS refused the request (HTTP {status}); check the credentials, the bucket "
                              "and the endpoint")  # fmt: skip
    return LookalikeError(ErrorKind.UNAVAILABLE, "OSS_UNREACHABLE",
                          f"{field}: the OSS endpoint could not be reached or failed; try again later")  # fmt: skip


def oss_not_configured(field: str) -> LookalikeError:
    return LookalikeError(
        ErrorKind.FAILED_PRECONDITION, "OSS_NOT_CONFIGURED",
        f"{field} is an oss:// location, but this server has no OSS access: start it with --oss-endpoint and "
        "OSS_ACCESS_KEY_ID / OSS_ACCESS_KEY_SECRET (or --oss-credentials-file)",
    )  # fmt: skip
