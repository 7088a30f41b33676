"""Several models per server: the loaded embedders by name, one of them the default.

Each model file is loaded once (``--model NAME=PATH``, repeatable, or every ``*.pt`` of ``--models-dir``), under a
name of letters, digits, ``-``, ``_`` and ``.`` (at most 64). A database is bound to one model when it is
created, by its identity (``model_identity``: name, dimension, preprocessing, weights digest), and
:meth:`ModelRegistry.find` maps a database's stored identity back to the loaded model that serves it: the same
rule as ``foreign_reason`` in ``server/core/backends/api.py`` (equal digest and dimension).

Two names for one model (equal digests) are refused when the registry is built: a database's identity must lead
to one name, and one file loaded twice would hold its weights and workers twice. Load it once, under one name.

Importing this module pulls in neither torch nor numpy (``lookalike.server.config`` uses its name rule).
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from lookalike.server.core.errors import invalid

if TYPE_CHECKING:
    from lookalike.server.core.embedding.embedder import Embedder

__all__ = ["MODEL_NAME_RULE", "ModelRegistry", "ModelSource", "describe_identity", "model_name_for", "valid_model_name"]

MODEL_NAME_RULE = "letters, digits, '-', '_' or '.', 1 to 64 of them"
_NAME = re.compile(r"[A-Za-z0-9_.-]{1,64}")


def valid_model_name(name: str) -> bool:
    return bool(_NAME.fullmatch(name)) and name not in (".", "..")


def model_name_for(path: Path, model_name: str) -> str | None:
    """The name of a file given without one: the ``model_name`` inside it when valid, else the file's stem."""
    for candidate in (model_name, path.stem):
        if valid_model_name(candidate):
            return candidate
    return None


def describe_identity(identity: Mapping[str, Any]) -> str:
    """``name (dimension D, digest 123456789abc)``: the form ``describe_model`` of the backends' contract uses."""
    digest = str(identity.get("digest", "?"))[:12]
    return f"{identity.get('name', '?')} (dimension {identity.get('dimension', '?')}, digest {digest})"


@dataclass(frozen=True)
class ModelSource:
    """A model file to load: ``name`` empty means named when loaded (:func:`model_name_for`)."""

    path: Path
    name: str = ""
    origin: str = "--model"  # where it was given, for error messages


BUILTIN = "builtin"  # --model NAME=builtin: the embedded default model beside others (e.g. a fine-tuned one)


def parse_model_specs(text: str | None) -> list[tuple[str, str]]:
    """``--model`` entries, comma-separated (the repeated flag joined): ``(name, path)``, name "" for a bare PATH.

    An entry is NAME=PATH when the part before the first '=' is a valid model name, else a path: a path with '='
    in it stays a path when written with a directory (``./run=3.pt``), since '/' is never in a name.
    """
    specs = []
    for entry in [] if text is None else text.split(","):
        name, sep, path = entry.strip().partition("=")
        if not (sep and valid_model_name(name)):
            name, path = "", entry.strip()
        if not path:
            raise ValueError(f"--model has an empty entry in {text!r}: give PATH or NAME=PATH, comma-separated")
        specs.append((name, path))
    return specs


def model_sources(specs: list[tuple[str, str]], models_dir: Path | None, default: str | None) -> list[ModelSource]:
    """The files to load: each --model entry, then each ``*.pt`` of ``models_dir`` (sorted, named by stem).

    Raises ValueError naming the option: a missing file or directory, an empty directory, a name or a file given
    twice, several models in ``models_dir`` alone and no ``default`` to choose among them.
    """
    sources = [ModelSource(Path(path), name, "--model") for name, path in specs]
    for source, (name, path) in zip(sources, specs, strict=True):
        if path == BUILTIN:  # the embedded default model, converted once and cached (app.resolve_builtin)
            continue
        if not source.path.is_file():
            hint = f" (in NAME=PATH, NAME is {MODEL_NAME_RULE})" if "=" in path else ""
            raise ValueError(f"--model {name + '=' if name else ''}{path}: no such model file {path}{hint}")
    if models_dir is not None:
        if not models_dir.is_dir():
            raise ValueError(f"--models-dir {models_dir} is not a directory")
        files = sorted(p for p in models_dir.glob("*.pt") if p.is_file() and not p.name.startswith("."))
        if not files:
            raise ValueError(f"--models-dir {models_dir} holds no *.pt model file")
        for p in files:
            if not valid_model_name(p.stem):
                raise ValueError(f"--models-dir: rename {p.name}: its stem names the model ({MODEL_NAME_RULE})")
            sources.append(ModelSource(p, p.stem, "--models-dir"))
        if not specs and len(files) > 1 and default is None:
            raise ValueError(
                f"--models-dir {models_dir} holds {len(files)} models ({', '.join(p.stem for p in files)}): "
                "choose the default with --default-model NAME"
            )
    named = [s.name for s in sources if s.name]
    twice = sorted({n for n in named if named.count(n) > 1})
    if twice:
        raise ValueError(f"two models are named {', '.join(twice)} (--model, --models-dir): give each its own name")
    paths = [s.path.resolve() for s in sources]
    again = sorted({str(p) for p in paths if paths.count(p) > 1})
    if again:
        raise ValueError(f"model file {', '.join(again)} is given twice: load each file once, under one name")
    return sources


class ModelRegistry:
    """The loaded models by name, in the order given; immutable once built, so safe to read from any thread."""

    def __init__(self, embedders: Mapping[str, Embedder] | Iterable[tuple[str, Embedder]], default: str = "") -> None:
        pairs = list(embedders.items() if isinstance(embedders, Mapping) else embedders)
        if not pairs:
            raise ValueError("no model loaded: give --model PATH, --model NAME=PATH or --models-dir DIR")
        self._embedders: dict[str, Embedder] = {}
        for name, embedder in pairs:
            if not valid_model_name(name):
                raise ValueError(f"model name {name!r} is not valid: use {MODEL_NAME_RULE}")
            if name in self._embedders:
                raise ValueError(f"two models are named {name!r}: give each its own name with --model NAME=PATH")
            self._embedders[name] = embedder
        from lookalike.server.core.embedding.model_identity import model_identity

        self._identities = {name: model_identity(e.module, e.meta) for name, e in self._embedders.items()}
        seen: dict[str, str] = {}
        for name, identity in self._identities.items():
            twin = seen.setdefault(identity["digest"], name)
            if twin != name:
                raise ValueError(
                    f"models {twin!r} and {name!r} are the same model ({describe_identity(identity)}): load each "
                    "model file once, under one name"
                )
        self._default = default or pairs[0][0]
        if self._default not in self._embedders:
            raise ValueError(
                f"--default-model {self._default!r} is not a loaded model; loaded: {', '.join(self._embedders)}"
            )

    @classmethod
    def load(
        cls, sources: Iterable[ModelSource], make: Callable[[ModelSource, int], Embedder], default: str = ""
    ) -> ModelRegistry:
        """Load every source with ``make(source, position)`` and name it; a failure closes what was loaded."""
        loaded: list[tuple[str, Embedder]] = []
        try:
            for position, source in enumerate(sources):
                embedder = make(source, position)
                loaded.append((source.name or model_name_for(source.path, embedder.model_name) or "", embedder))
                if not loaded[-1][0]:
                    raise ValueError(
                        f"{source.origin} {source.path}: neither its model name {embedder.model_name!r} nor its file "
                        f"name is a valid model name ({MODEL_NAME_RULE}); give one with --model NAME={source.path}"
                    )
                names = [n for n, _ in loaded]
                if names.count(loaded[-1][0]) > 1:
                    raise ValueError(
                        f"two models are named {loaded[-1][0]!r} ({source.origin} {source.path} is the second): "
                        "name them apart with --model NAME=PATH"
                    )
            return cls(loaded, default)
        except BaseException:
            for _, embedder in loaded:
                embedder.close()
            raise

    # -- lookups ------------------------------------------------------------------------------------
    @property
    def default(self) -> str:
        """The default model's name: new databases and calls that name no model use it."""
        return self._default

    def resolve(self, name: str = "") -> str:
        """``name``, or the default's for ""; INVALID_ARGUMENT / MODEL_NOT_FOUND naming the loaded models."""
        if not name:
            return self._default
        if name not in self._embedders:
            raise invalid(
                "MODEL_NOT_FOUND",
                f"model {name!r} is not loaded on this server; loaded: {', '.join(self._embedders)} "
                f"(default {self._default}). Leave the model empty for the default",
                model=name,
                loaded=",".join(self._embedders),
            )
        return name

    def get(self, name: str = "") -> Embedder:
        return self._embedders[self.resolve(name)]

    def identity(self, name: str = "") -> dict[str, Any]:
        """The model's identity as databases store it (a copy: callers may keep it)."""
        identity = self._identities[self.resolve(name)]
        return {**identity, "preprocessing": dict(identity["preprocessing"])}

    def find(self, identity: Mapping[str, Any], dimension: int | None = None) -> str | None:
        """The loaded model whose vectors a database of stored ``identity`` (and ``dimension``) holds, or None.

        The backends' rule (``foreign_reason``): the same weights digest and the same dimension. None means the
        database's model is not loaded: list it with that state, and refuse its searches and writes.
        """
        dimension = identity.get("dimension") if dimension is None else dimension
        for name, mine in self._identities.items():
            if mine["digest"] == identity.get("digest") and (dimension is None or int(dimension) == mine["dimension"]):
                return name
        return None

    def names(self) -> list[str]:
        return list(self._embedders)

    def items(self) -> list[tuple[str, Embedder]]:
        return list(self._embedders.items())

    def __len__(self) -> int:
        return len(self._embedders)

    def __contains__(self, name: object) -> bool:
        return name in self._embedders

    def __iter__(self) -> Iterator[str]:
        return iter(list(self._embedders))

    def describe(self, name: str = "") -> dict[str, Any]:
        """What ListModels shows of a model, less the databases using it (the service knows those)."""
        from lookalike.modelfile import preprocessing_identity

        name = self.resolve(name)
        embedder = self._embedders[name]
        meta = embedder.meta
        identity = self._identities[name]
        return {
            "name": name,
            "model_name": meta.model_name,  # the name inside the file, which the identity records
            "identity": describe_identity(identity),
            "digest": identity["digest"],
            "dimension": int(meta.output_dim),
            "preprocessing": {**preprocessing_identity(meta), "precision": meta.precision},
            "tiers": getattr(meta, "tiers", None),
            "calibration": getattr(meta, "calibration", None),
            "default": name == self._default,
            "device": str(getattr(embedder, "device", "")),
            "execution": str(getattr(embedder, "execution", "")),
        }

    def close(self) -> None:
        for embedder in self._embedders.values():
            embedder.close()

    def __repr__(self) -> str:
        return f"ModelRegistry({', '.join(self._embedders)}; default {self._default})"
