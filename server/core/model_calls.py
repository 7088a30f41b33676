"""The service's models: which loaded model serves a database, their tiers, and ListModels.

Mixed into ``LookalikeService``. A database is bound to a model by identity when it is created
(``CreateDatabase.model``); ``embedder_of`` finds that model among the loaded ones, so searches
and writes embed with it, and a database whose model is not loaded is described, never hidden.
"""

from __future__ import annotations

from typing import Any

from lookalike.server.core.backends.api import DatabaseHandle, describe_model, model_mismatch
from lookalike.server.core.embedding.embedder import Embedder


class ModelCalls:
    """``self`` is the service: ``models`` (the registry), ``embedder`` (the default) and ``catalog``."""

    def model_names(self) -> list[str]:
        """The loaded models' names, the default first."""
        return [self.models.default] + [n for n in self.models.names() if n != self.models.default]

    def resolve_model(self, model: str = "") -> tuple[str, int]:
        """(name, dimension) of a loaded model ("" = the default); MODEL_NOT_FOUND otherwise."""
        name = self.models.resolve(model)
        return name, self.models.get(name).dimension

    def bound_model(self, db: DatabaseHandle) -> str:
        """The name of the loaded model a database is bound to, or "" when that model is not loaded."""
        return self.models.find(db.model, db.dimension) or ""

    def embedder_of(self, db: DatabaseHandle) -> Embedder:
        """The loaded model a database's vectors come from (MODEL_MISMATCH when it is not loaded)."""
        db.check_usable()
        name = self.models.find(db.model, db.dimension)
        if name is None:
            raise model_mismatch(f"database {db.name!r} holds vectors of model {describe_model(db.model)}, which "
                                 "this server does not run; start it with that model (--model NAME=PATH)")  # fmt: skip
        return self.models.get(name)

    @property
    def dimension(self) -> int:
        return self.embedder.dimension

    def model_tiers(self, database: str = "") -> tuple[dict[str, float] | None, str]:
        """The calibrated similarity tiers (None when its file has none) and the name of the database's model
        (no database: the default model's)."""
        embedder = self.embedder_of(self.catalog.get(database)) if database else self.embedder
        return getattr(embedder.meta, "tiers", None), embedder.model_name

    def list_models(self) -> list[dict[str, Any]]:
        """Each loaded model (name, identity, digest, dimension, preprocessing, tiers, default) with the databases
        holding its vectors; then one entry per model databases hold that is not loaded (``loaded`` False)."""
        by_model: dict[str, list[str]] = {}
        unloaded: dict[str, tuple[dict[str, Any], int]] = {}
        for db in self.all_databases():
            name = self.models.find(db.model, db.dimension)
            key = name if name is not None else f"{db.model.get('digest', '')}/{db.dimension}"
            by_model.setdefault(key, []).append(db.name)
            if name is None:
                unloaded[key] = (db.model, db.dimension)
        out = [{**self.models.describe(n), "identity": describe_model(self.models.identity(n)), "loaded": True,
                "databases": by_model.get(n, [])} for n in self.model_names()]  # fmt: skip
        for key, (identity, dimension) in sorted(unloaded.items()):
            out.append({"name": str(identity.get("name", "")), "identity": describe_model(identity), "loaded": False,
                        "digest": str(identity.get("digest", "")), "dimension": dimension, "default": False,
                        "preprocessing": identity.get("preprocessing", {}), "tiers": None, "calibration": None,
                        "databases": by_model[key], "device": "", "execution": ""})  # fmt: skip
        return out
