"""The set of databases a server holds."""

from __future__ import annotations

import threading

from lookalike.server.core.database import Database
from lookalike.server.core.errors import ErrorKind, LookalikeError, not_found
from lookalike.server.core.validation import check_database_name


class DatabaseRegistry:
    def __init__(self, dimension: int) -> None:
        self.dimension = dimension
        self._lock = threading.Lock()
        self._databases: dict[str, Database] = {}

    def create(self, name: str) -> Database:
        check_database_name(name)
        with self._lock:
            if name in self._databases:
                raise LookalikeError(ErrorKind.ALREADY_EXISTS, "DATABASE_EXISTS", f"database {name!r} already exists")
            db = Database(name, self.dimension)
            self._databases[name] = db
            return db

    def get(self, name: str) -> Database:
        check_database_name(name)
        with self._lock:
            db = self._databases.get(name)
        if db is None:
            raise not_found("DATABASE_NOT_FOUND", f"database {name!r} does not exist; create it first (CreateDatabase)")
        return db

    def list(self) -> list[Database]:
        with self._lock:
            return [self._databases[n] for n in sorted(self._databases)]

    def delete(self, name: str) -> None:
        check_database_name(name)
        with self._lock:
            if self._databases.pop(name, None) is None:
                raise not_found("DATABASE_NOT_FOUND", f"database {name!r} does not exist")
