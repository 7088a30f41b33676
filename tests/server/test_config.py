"""ServerConfig, the one settings object: flag over environment over default for every option, and nothing of
the server reading settings anywhere else.

The precedence tests are generated from the dataclass, so an option added later is covered without an edit
here (or fails ``two_values`` until it says how to make a valid value for it).
"""

from __future__ import annotations

import argparse
import dataclasses
import inspect
import re
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from lookalike.server import defaults
from lookalike.server.config import ServerConfig, _env, _flag, _kind

ROOT = Path(__file__).resolve().parents[2]
FIELDS = dataclasses.fields(ServerConfig)
FLAG_FIELDS = [f for f in FIELDS if "env_only" not in f.metadata]
ENV_ONLY_FIELDS = [f for f in FIELDS if "env_only" in f.metadata]
BOOL_FIELDS = [f for f in FLAG_FIELDS if _kind(f) is bool]

# Flags some options need to be valid at all (the cross-option rules of __post_init__).
COMPANIONS = {
    "index": ["--milvus-uri", "http://milvus:19530"],
    "tls_cert": ["--tls-key", "/pem/key.pem"],
    "tls_key": ["--tls-cert", "/pem/cert.pem"],
    "tls_client_ca": ["--tls-cert", "/pem/cert.pem", "--tls-key", "/pem/key.pem"],
}
# Options whose values have a shape of their own: (environment's value, flag's value).
SPECIAL = {
    "root": ("oss://env-bucket/a/", "oss://flag-bucket/b/"),
    "milvus_prefix": ("env_", "flag_"),
    "oss_allow": ("oss://env-bucket/a/", "oss://flag-bucket/b/,oss://c/"),
    "oss_endpoint_allow": ("https://oss.example.com", "http://127.0.0.1:9000,https://*.example.com"),
}


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser()
    ServerConfig.add_arguments(p)
    return p


def load(argv: list[str], environ: dict[str, str]) -> ServerConfig:
    return ServerConfig.from_sources(parser().parse_args(argv), environ)


def two_values(f: dataclasses.Field) -> tuple[Any, Any]:
    """Two valid values of ``f``: one for its variable, one for its flag; they differ from each other and the
    first from the default. A boolean's flag value is its default: an explicit flag must win even then."""
    if f.name in SPECIAL:
        return SPECIAL[f.name]
    meta, kind, default = f.metadata, _kind(f), f.default
    if kind is bool:
        return (not default), default
    if "choices" in meta:
        others = [c for c in meta["choices"] if c != default]
        return others[0], (others[1] if len(others) > 1 else default)
    if kind in (int, float):
        base = meta.get("min", 0) if default is None else default
        a, b = base + 1, base + 2
        if "max" in meta and b > meta["max"]:
            a, b = base - 1, base - 2
        return kind(a), kind(b)
    if kind is Path:
        return Path("/from/env"), Path("/from/flag")
    return "from-env", "from-flag"


def as_env(value: Any) -> str:
    if isinstance(value, bool):
        return "1" if value else "0"
    return str(value)


def as_flag(f: dataclasses.Field, value: Any) -> list[str]:
    if isinstance(value, bool):
        return [_flag(f) if value else "--no-" + _flag(f)[2:]]
    return [_flag(f), str(value)]


@pytest.mark.parametrize("f", FLAG_FIELDS, ids=lambda f: f.name)
def test_flag_beats_environment_beats_default(f: dataclasses.Field) -> None:
    env_value, flag_value = two_values(f)
    assert env_value != flag_value and env_value != f.default, f"{f.name}: the test values cannot tell sources apart"
    companions = COMPANIONS.get(f.name, [])
    environ = {_env(f): as_env(env_value)}
    assert getattr(load([*companions, *as_flag(f, flag_value)], environ), f.name) == flag_value
    assert getattr(load(companions, environ), f.name) == env_value
    assert getattr(load([], {}), f.name) == f.default
    assert getattr(load([], {_env(f): ""}), f.name) == f.default  # an empty variable is unset


@pytest.mark.parametrize("f", BOOL_FIELDS, ids=lambda f: f.name)
def test_both_forms_of_a_boolean_flag_beat_the_environment(f: dataclasses.Field) -> None:
    """``--no-oss-path-style`` with ``OSS_PATH_STYLE=1`` is off, and the reverse, for every on/off option."""
    off = "--no-" + _flag(f)[2:]
    assert getattr(load([off], {_env(f): "1"}), f.name) is False
    assert getattr(load([_flag(f)], {_env(f): "0"}), f.name) is True
    assert getattr(load([], {_env(f): "yes"}), f.name) is True
    assert getattr(load([], {_env(f): "off"}), f.name) is False
    with pytest.raises(ValueError, match=re.escape(f"{_env(f)}='maybe' is not a valid bool for {_flag(f)}")):
        load([], {_env(f): "maybe"})


@pytest.mark.parametrize("f", ENV_ONLY_FIELDS, ids=lambda f: f.name)
def test_secrets_come_from_the_environment_only(f: dataclasses.Field) -> None:
    variable = f.metadata["env_only"]
    assert getattr(load([], {variable: "s3cr3t-value"}), f.name) == "s3cr3t-value"
    assert getattr(load([], {}), f.name) is None
    assert "s3cr3t-value" not in repr(load([], {variable: "s3cr3t-value"}))
    assert f.name not in {action.dest for action in parser()._actions}, "a secret must have no flag"
    assert variable in parser().format_help(), "--help names every variable, the environment-only ones too"


def test_every_option_has_its_own_variable() -> None:
    names = [_env(f) for f in FLAG_FIELDS] + [f.metadata["env_only"] for f in ENV_ONLY_FIELDS]
    assert len(names) == len(set(names)), "two options read one variable"
    assert {"LOOKALIKE_CACHE_DIR", "OSS_ENDPOINT", "OSS_PATH_STYLE", "OSS_ACCESS_KEY_ID"} <= set(names)


# -- values go down explicitly -------------------------------------------------------------------
@pytest.fixture
def oss_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    """Variables a server must not read behind its settings' back."""
    for name, value in {"OSS_PATH_STYLE": "1", "OSS_ENDPOINT": "http://env-endpoint", "OSS_ACCESS_KEY_ID": "env-id",
                        "OSS_ACCESS_KEY_SECRET": "env-secret"}.items():  # fmt: skip
        monkeypatch.setenv(name, value)


def test_the_servers_oss_client_takes_its_settings_not_the_environment(oss_environment: None, tmp_path: Path) -> None:
    from lookalike.server.app import make_oss

    client = make_oss(load(["--no-oss-path-style"], {"OSS_PATH_STYLE": "1"}))
    assert client.path_style is False  # the flag wins, even over OSS_PATH_STYLE in the process environment
    bare = make_oss(ServerConfig())
    assert (bare.endpoint, bare.path_style, bare._credentials) == (None, False, None)
    assert make_oss(ServerConfig(oss_retries=5)).retries == 5
    environ = {"OSS_ENDPOINT": "http://cfg", "OSS_PATH_STYLE": "1", "OSS_ACCESS_KEY_ID": "id",
               "OSS_ACCESS_KEY_SECRET": "sk"}  # fmt: skip
    configured = make_oss(load(["--oss-endpoint", "http://flag"], environ))
    assert (configured.endpoint, configured.path_style) == ("http://flag", True)
    assert (configured._credentials.key_id, configured._credentials.secret) == ("id", "sk")
    keys = tmp_path / "oss-keys"
    keys.write_text("OSS_ACCESS_KEY_ID = file-id\nOSS_ACCESS_KEY_SECRET = file-sk\n")
    from_file = make_oss(ServerConfig(oss_credentials_file=keys))
    assert (from_file._credentials.key_id, from_file._credentials.secret) == ("file-id", "file-sk")


def test_oss_client_reads_the_environment_only_through_from_env(oss_environment: None) -> None:
    from lookalike.oss import OssClient

    plain = OssClient()
    assert (plain.endpoint, plain.path_style, plain._credentials) == (None, False, None)
    with pytest.raises(ValueError, match="OSS_ACCESS_KEY_ID"):
        plain.bucket("b")
    cli = OssClient.from_env()
    assert (cli.endpoint, cli.path_style, cli._credentials.key_id) == ("http://env-endpoint", True, "env-id")
    assert OssClient.from_env(path_style=False, environ={"OSS_PATH_STYLE": "1"}).path_style is False


def test_the_default_model_is_cached_in_the_cache_dir_setting(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    from lookalike.server.app import resolve_model
    from lookalike.server.core.embedding import default_model

    asked: list[Path | None] = []
    monkeypatch.setattr(default_model, "default_model_path", lambda cache_dir=None: asked.append(cache_dir) or tmp_path)
    resolve_model(load([], {"LOOKALIKE_CACHE_DIR": "/opt/lookalike/cache"}))
    resolve_model(load(["--cache-dir", str(tmp_path)], {"LOOKALIKE_CACHE_DIR": "/opt/lookalike/cache"}))
    assert resolve_model(load(["--model", "/m.pt"], {})) == Path("/m.pt")
    assert asked == [Path("/opt/lookalike/cache"), tmp_path]
    monkeypatch.setenv("LOOKALIKE_CACHE_DIR", "/not/read/here")  # only ServerConfig reads it
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    assert default_model.default_cache_dir() == tmp_path / "lookalike"


# Environment reads the server may make outside server/config.py, each with its reason.
ALLOWED_ENV_READS = {
    # The cache directory's fallback when none is given (the trainer's eval, tests): the platform's
    # convention, like HOME; the server passes --cache-dir / LOOKALIKE_CACHE_DIR down.
    "server/core/embedding/default_model.py": {"XDG_CACHE_HOME"},
    # The background embedder's child process inherits the server's environment, less the secrets (below).
    "server/core/embedding/background.py": {""},
}


def test_the_background_embedder_passes_on_no_secret() -> None:
    from lookalike.server.core.embedding.background import SECRET_ENV

    secrets = {f.metadata["env_only"] for f in dataclasses.fields(ServerConfig) if "env_only" in f.metadata}
    assert secrets and secrets == set(SECRET_ENV)


def test_no_server_module_but_the_settings_reads_the_environment() -> None:
    read = re.compile(r"\bos\.(?:environ|getenv)\b(?:\.get)?\(?\s*\[?\s*\"?([A-Z_]*)")
    found = {}
    for path in sorted((ROOT / "server").rglob("*.py")):
        name = path.relative_to(ROOT).as_posix()
        if name == "server/config.py":
            continue
        variables = set(read.findall(path.read_text()))
        if variables:
            found[name] = variables
    assert found == ALLOWED_ENV_READS


# -- every default once -------------------------------------------------------------------------
def default_of(fn: Callable[..., Any], parameter: str) -> Any:
    return inspect.signature(fn).parameters[parameter].default


def test_the_cores_defaults_are_the_settings_defaults() -> None:
    """The core's constructors, used without a ServerConfig by tests and benchmarks, default as the server does."""
    from lookalike.server.core.backends.builtin.hnsw import HnswSettings
    from lookalike.server.core.backends.milvus.catalog import MilvusIndexSettings
    from lookalike.server.core.embedding.batcher import MicroBatcher
    from lookalike.server.core.embedding.embedder import Embedder
    from lookalike.server.core.embedding.images import decode_image
    from lookalike.server.core.service import Limits

    from lookalike.oss import OssClient

    config = ServerConfig()
    hnsw = HnswSettings()
    assert (hnsw.threshold, hnsw.connectivity, hnsw.expansion_add, hnsw.expansion_search, hnsw.rerank_factor,
            hnsw.dtype) == (config.hnsw_threshold, config.hnsw_connectivity, config.hnsw_expansion_add,
                            config.hnsw_expansion_search, config.hnsw_rerank, config.hnsw_dtype)  # fmt: skip
    milvus = MilvusIndexSettings()
    assert (milvus.index_type, milvus.metric, milvus.connectivity, milvus.expansion_add, milvus.expansion_search) == (
        config.milvus_index, config.milvus_metric, config.milvus_hnsw_m, config.hnsw_expansion_add,
        config.hnsw_expansion_search)  # fmt: skip
    for parameter, setting in (("max_image_bytes", "max_image_bytes"), ("max_image_pixels", "max_image_pixels"),
                               ("max_aspect_ratio", "max_aspect_ratio"), ("cpu_exec", "cpu_exec"),
                               ("decode_budget_pixels", "decode_budget_pixels")):  # fmt: skip
        assert default_of(Embedder, parameter) == getattr(config, setting), parameter
    assert default_of(Embedder, "max_batch") == config.model_batch("cuda") == defaults.GPU_MAX_BATCH
    assert default_of(Embedder, "max_wait_s") == config.batch_wait_s
    assert default_of(Embedder, "background") == config.reindex_worker == "process"
    assert default_of(Embedder, "background_idle_s") == config.reindex_worker_idle_s
    assert default_of(decode_image, "max_aspect_ratio") == config.max_aspect_ratio
    assert default_of(OssClient, "retries") == config.oss_retries
    limits = Limits()
    assert (limits.max_top_k, limits.max_embed_images, limits.max_stream_items) == (
        config.max_top_k, config.max_embed_images, config.max_stream_items)  # fmt: skip
    assert (default_of(MicroBatcher, "max_batch"), default_of(MicroBatcher, "max_wait_s")) == (
        defaults.GPU_MAX_BATCH, config.batch_wait_s)  # fmt: skip


def test_the_settings_import_nothing_heavy() -> None:
    """Every `lookalike` command builds the serve parser, so the settings must not pull in torch or Pillow."""
    import subprocess
    import sys

    code = "import sys, lookalike.server.config; print(sorted({'torch', 'PIL', 'usearch', 'numpy'} & set(sys.modules)))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=60).stdout
    assert out.strip() == "[]"
