"""Several models per server: the registry of loaded embedders, and the settings that say what to load.

Real TorchScript model files of two dimensions, loaded through the server's own ``build_models``.
"""

from __future__ import annotations

import argparse
import logging
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from lookalike.server.app import build_models, resolve_model, split_workers
from lookalike.server.config import ServerConfig
from lookalike.server.core.backends.api import describe_model, foreign_reason
from lookalike.server.core.embedding.model_identity import model_identity
from lookalike.server.core.embedding.models import ModelRegistry, model_name_for, valid_model_name
from lookalike.server.core.errors import ErrorKind, LookalikeError
from photos import encode, photo
from tiny_models import Pooled

from lookalike.modelfile import EmbedderMeta, save_embedder


@pytest.fixture(scope="module")
def files(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    torch.manual_seed(0)
    folder = tmp_path_factory.mktemp("models")
    alpha_meta = EmbedderMeta("alpha-net", 32, input_size=32, resize_size=32)
    alpha = save_embedder(Pooled(32).eval(), folder / "alpha.pt", alpha_meta)
    # "beta net" is no valid model name: a bare path to it is named by its file's stem.
    beta_meta = EmbedderMeta("beta net", 16, input_size=48, resize_size=48, resize_mode="letterbox")
    beta = save_embedder(Pooled(16).eval(), folder / "beta.pt", beta_meta)
    return {"alpha": alpha, "beta": beta}


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser()
    ServerConfig.add_arguments(p)
    return p


def load(argv: list[str], environ: dict[str, str] | None = None) -> ServerConfig:
    return ServerConfig.from_sources(parser().parse_args(argv), environ or {})


def build(config: ServerConfig, workers: int = 2) -> ModelRegistry:
    budget = {"model_workers": workers, "torch": 1, "preprocess": 2, "kernel": 1, "grpc": 4}
    return build_models(config, "cpu", budget)


# -- the registry -----------------------------------------------------------------------------------------------
def test_two_models_of_different_dimensions_serve_side_by_side(files: dict[str, Path]) -> None:
    models = build(load(["--model", f"a={files['alpha']}", "--model", f"b={files['beta']}", "--cpu-exec", "eager"]))
    try:
        assert models.names() == ["a", "b"] and list(models) == ["a", "b"] and len(models) == 2
        assert models.default == "a" and models.get() is models.get("a") and "b" in models and "c" not in models
        assert (models.get("a").dimension, models.get("b").dimension) == (32, 16)
        image = encode(photo("chelsea"))
        for name, dim in (("a", 32), ("b", 16)):
            vectors = models.get(name).embed([image, encode(photo("coffee"))])
            assert vectors.shape == (2, dim) and np.allclose(np.linalg.norm(vectors, axis=1), 1.0, atol=1e-5)
        assert [name for name, _ in models.items()] == ["a", "b"]
        # The identity each database stores, as the service computes it today.
        for name in ("a", "b"):
            embedder = models.get(name)
            assert models.identity(name) == model_identity(embedder.module, embedder.meta)
        assert models.identity() == models.identity("a")
    finally:
        models.close()
    assert all(e.batcher._closed for _, e in models.items())


def test_find_maps_a_databases_identity_to_its_model_by_the_backends_rule(files: dict[str, Path]) -> None:
    models = build(load(["--model", f"a={files['alpha']}", "--model", f"b={files['beta']}"]))
    try:
        for name in ("a", "b"):
            stored = models.identity(name)
            assert models.find(stored) == name
            assert models.find(stored, stored["dimension"]) == name
            assert foreign_reason("db", stored, stored["dimension"], models.identity(name), stored["dimension"]) is None
        stored = models.identity("b")
        assert models.find(stored, 32) is None  # same weights, another dimension: not this model's vectors
        assert models.find({**stored, "digest": "0" * 64}) is None  # a model this server has not loaded
        assert models.find({}) is None
        assert models.find({**stored, "name": "renamed"}) == "b"  # the digest decides, not the file's name
    finally:
        models.close()


def test_describe_says_what_list_models_shows(files: dict[str, Path]) -> None:
    models = build(load(["--model", f"a={files['alpha']}", "--model", f"b={files['beta']}"]))
    try:
        b = models.describe("b")
        assert b["name"] == "b" and b["model_name"] == "beta net" and b["default"] is False
        assert b["identity"] == describe_model(models.identity("b"))
        assert b["digest"] == models.identity("b")["digest"] and b["dimension"] == 16
        assert b["preprocessing"]["resize_mode"] == "letterbox" and b["preprocessing"]["input_size"] == 48
        assert b["preprocessing"]["precision"] == "fp32"
        assert (b["tiers"], b["calibration"]) == (None, None)
        a = models.describe()
        assert a["name"] == "a" and a["default"] is True and a["dimension"] == 32
    finally:
        models.close()


def test_an_unknown_model_name_is_refused_naming_the_loaded_ones(files: dict[str, Path]) -> None:
    models = build(load(["--model", f"a={files['alpha']}", "--model", f"b={files['beta']}"]))
    try:
        for call in (models.get, models.identity, models.describe, models.resolve):
            with pytest.raises(LookalikeError) as err:
                call("gamma")
            assert (err.value.kind, err.value.reason) == (ErrorKind.INVALID_ARGUMENT, "MODEL_NOT_FOUND")
            assert "'gamma'" in err.value.message and "a, b" in err.value.message
            assert err.value.metadata == {"model": "gamma", "loaded": "a,b"}
        assert models.resolve("") == "a" and models.resolve("b") == "b"
    finally:
        models.close()


def test_the_default_model_is_chosen_by_name(files: dict[str, Path]) -> None:
    models = build(load(["--model", f"a={files['alpha']}", "--model", f"b={files['beta']}", "--default-model", "b"]))
    try:
        assert models.default == "b" and models.get() is models.get("b") and models.describe("b")["default"]
    finally:
        models.close()
    config = load(["--model", f"a={files['alpha']}", "--model", f"b={files['beta']}"],
                  {"LOOKALIKE_DEFAULT_MODEL": "c"})  # fmt: skip
    with pytest.raises(ValueError, match=r"--default-model 'c' is not a loaded model; loaded: a, b"):
        build(config)


def test_a_bare_path_is_named_by_its_model_name_or_its_stem(files: dict[str, Path]) -> None:
    models = build(load(["--model", str(files["alpha"]), "--model", str(files["beta"])]))
    try:
        assert models.names() == ["alpha-net", "beta"] and models.default == "alpha-net"
    finally:
        models.close()
    assert model_name_for(Path("/m/x.pt"), "resnet50-moco") == "resnet50-moco"
    assert model_name_for(Path("/m/x.pt"), "a name with spaces") == "x"
    assert model_name_for(Path("/m/bad stem.pt"), "bad name") is None


def test_one_model_under_two_names_is_refused(files: dict[str, Path], tmp_path: Path) -> None:
    copy = shutil.copy(files["alpha"], tmp_path / "copy.pt")
    with pytest.raises(ValueError, match=r"models 'a' and 'b' are the same model \(alpha-net \(dimension 32"):
        build(load(["--model", f"a={files['alpha']}", "--model", f"b={copy}"]))
    with pytest.raises(ValueError, match="is given twice"):  # the same file: refused before anything loads
        load(["--model", f"a={files['alpha']}", "--model", f"b={files['alpha']}"]).model_sources()
    with pytest.raises(ValueError, match=r"two models are named 'alpha-net'"):  # two bare paths, one model name
        build(load(["--model", str(files["alpha"]), "--model", str(copy)]))


def test_a_registry_needs_valid_unique_names(files: dict[str, Path]) -> None:
    with pytest.raises(ValueError, match="no model loaded"):
        ModelRegistry([])
    models = build(load(["--model", str(files["beta"])]))
    try:
        beta = models.get()
        with pytest.raises(ValueError, match="model name 'a b' is not valid"):
            ModelRegistry({"a b": beta})
        with pytest.raises(ValueError, match="two models are named 'x'"):
            ModelRegistry([("x", beta), ("x", beta)])
        assert ModelRegistry({"solo": beta}).default == "solo"
    finally:
        models.close()
    assert all(valid_model_name(n) for n in ("a", "A-1_b.c", "x" * 64))
    assert not any(valid_model_name(n) for n in ("", "x" * 65, "a/b", "a b", "a=b", ".", "..", "é"))


# -- one model: as before --------------------------------------------------------------------------------------
def test_one_model_keeps_every_worker_and_logs_as_before(
    files: dict[str, Path], caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO)
    models = build(load(["--model", str(files["alpha"])]), workers=3)
    try:
        assert models.names() == ["alpha-net"] and models.get().batcher.workers == 3
        assert [r.getMessage() for r in caplog.records if r.getMessage().startswith("models: ")] == []
    finally:
        models.close()
    assert resolve_model(load(["--model", str(files["alpha"])])) == files["alpha"]


def test_several_models_share_the_model_workers(files: dict[str, Path], caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO)
    models = build(load(["--model", f"a={files['alpha']}", "--model", f"b={files['beta']}"]), workers=5)
    try:
        assert (models.get("a").batcher.workers, models.get("b").batcher.workers) == (3, 2)
        # A reindex's child process (idle priority) gets all five, one image a call as the workers take it.
        children = [(m.spec["model_workers"], m.spec["max_batch"]) for m in (models.get("a"), models.get("b"))]
        assert children == [(5, 1), (5, 1)]
        said = [r.getMessage() for r in caplog.records if r.getMessage().startswith("models: ")]
        assert said == ["models: a (dim 32, 3 model workers), b (dim 16, 2 model workers); default a"]
    finally:
        models.close()
    assert split_workers(8, 2) == [4, 4] and split_workers(5, 2) == [3, 2] and split_workers(1, 3) == [1, 1, 1]


# -- the settings -----------------------------------------------------------------------------------------------
def test_model_flags_repeat_and_the_variable_takes_a_comma_separated_list() -> None:
    config = load(["--model", "a=/m/x.pt", "--model", "b=/m/y.pt"])
    assert config.model == "a=/m/x.pt,b=/m/y.pt"
    assert config.model_specs() == [("a", "/m/x.pt"), ("b", "/m/y.pt")]
    assert load([], {"LOOKALIKE_MODEL": "a=/m/x.pt, b=/m/y.pt"}).model_specs() == [("a", "/m/x.pt"), ("b", "/m/y.pt")]
    flagged = load(["--model", "c=/m/z.pt"], {"LOOKALIKE_MODEL": "a=/m/x.pt,b=/m/y.pt"})
    assert flagged.model_specs() == [("c", "/m/z.pt")]  # the flag replaces the variable, as for every option
    # A bare path, and a path with '=' in it (a name never holds '/').
    assert load(["--model", "/m/x.pt"]).model_specs() == [("", "/m/x.pt")]
    assert load(["--model", "./run=3.pt"]).model_specs() == [("", "./run=3.pt")]
    assert load(["--model", "v2=./run=3.pt"]).model_specs() == [("v2", "./run=3.pt")]
    # Programmatic settings keep taking a Path, or a list of entries.
    assert ServerConfig(model=Path("/m/x.pt")).model == "/m/x.pt"
    assert ServerConfig(model=["a=/m/x.pt", Path("/m/y.pt")]).model_specs() == [("a", "/m/x.pt"), ("", "/m/y.pt")]
    assert ServerConfig().model_specs() == [] and ServerConfig().model_sources() == []


def test_models_dir_and_default_model_have_a_flag_and_a_variable(files: dict[str, Path]) -> None:
    folder = files["alpha"].parent
    by_env = load([], {"LOOKALIKE_MODELS_DIR": str(folder), "LOOKALIKE_DEFAULT_MODEL": "beta"})
    by_flag = load(["--models-dir", str(folder), "--default-model", "beta"])
    assert by_env == by_flag and by_flag.models_dir == folder and by_flag.default_model == "beta"
    assert [(s.name, s.path, s.origin) for s in by_flag.model_sources()] == [
        ("alpha", files["alpha"], "--models-dir"), ("beta", files["beta"], "--models-dir")]  # fmt: skip
    assert resolve_model(by_flag) == files["beta"]
    models = build(by_env)
    try:
        assert models.names() == ["alpha", "beta"] and models.default == "beta"
        assert models.describe("alpha")["model_name"] == "alpha-net"  # the stem names it, the file keeps its own
    finally:
        models.close()


def test_model_settings_are_refused_with_what_to_do(files: dict[str, Path], tmp_path: Path) -> None:
    def refused(argv: list[str], match: str, environ: dict[str, str] | None = None) -> None:
        with pytest.raises(ValueError, match=match):
            load(argv, environ).model_sources()

    refused(["--model", "a=/m/x.pt", "--model", "a=/m/y.pt"], r"--model names a more than once")
    refused(["--model", "a=/m/x.pt,,b=/m/y.pt"], r"--model has an empty entry")
    refused(["--model", "a="], r"--model has an empty entry")
    refused(["--default-model", "no/slash"], r"--default-model must be a model name \(letters, digits")
    refused(["--model", "/no/such.pt"], r"^--model /no/such.pt: no such model file /no/such.pt$")
    refused(["--model", "a=/no/such.pt"], r"^--model a=/no/such.pt: no such model file /no/such.pt$")
    refused(["--model", "bad name=/no/such.pt"], r"file bad name=/no/such.pt \(in NAME=PATH, NAME is letters, digits")
    refused(["--models-dir", str(tmp_path / "absent")], r"--models-dir .*absent is not a directory")
    empty = tmp_path / "empty"
    empty.mkdir()
    (empty / "notes.txt").write_text("no models here")
    refused(["--models-dir", str(empty)], r"--models-dir .*empty holds no \*\.pt model file")
    folder = files["alpha"].parent
    refused(["--models-dir", str(folder)], r"holds 2 models \(alpha, beta\): choose the default with --default-model")
    refused(["--models-dir", str(folder), "--model", f"beta={files['alpha']}"], r"two models are named beta")
    odd = tmp_path / "odd"
    odd.mkdir()
    shutil.copy(files["alpha"], odd / "my model.pt")
    refused(["--models-dir", str(odd)], r"rename my model\.pt: its stem names the model")


def test_model_beside_models_dir_loads_both_the_first_model_the_default(files: dict[str, Path], tmp_path: Path) -> None:
    shutil.copy(files["beta"], tmp_path / "b2.pt")
    models = build(load(["--model", f"first={files['alpha']}", "--models-dir", str(tmp_path)]))
    try:
        assert models.names() == ["first", "b2"] and models.default == "first"
    finally:
        models.close()


def test_the_registry_module_imports_nothing_heavy() -> None:
    code = ("import sys, lookalike.server.core.embedding.models; "
            "print(sorted({'torch', 'PIL', 'numpy'} & set(sys.modules)))")  # fmt: skip
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=60).stdout
    assert out.strip() == "[]"
