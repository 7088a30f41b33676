"""The Go client module: stubs generated with buf and local plugins, examples built with
`go build`, then run against a real server with the default model."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import uuid
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pytest
from photos import crop, encode, photo

pytestmark = pytest.mark.go

ROOT = Path(__file__).resolve().parents[2]
GO_DIR = ROOT / "clients" / "go"
COMMANDS = ("lookalike-match", "lookalike-search")


def run(
    cmd: Sequence[str | Path], *, cwd: Path = ROOT, timeout: float = 600, **env: str
) -> subprocess.CompletedProcess[str]:
    """Run a command; env entries override the environment, and LOOKALIKE_TOKEN is cleared."""
    full_env = {k: v for k, v in os.environ.items() if k != "LOOKALIKE_TOKEN"} | env
    return subprocess.run([str(c) for c in cmd], cwd=cwd, env=full_env, capture_output=True, text=True, timeout=timeout)


def run_ok(cmd: Sequence[str | Path], **kwargs: Any) -> subprocess.CompletedProcess[str]:
    proc = run(cmd, **kwargs)
    if proc.returncode != 0:
        pytest.fail(
            f"{' '.join(map(str, cmd))} exited {proc.returncode}\nstdout:\n{proc.stdout}\nstderr:\n{proc.stderr}"
        )
    return proc


@pytest.fixture(scope="module")
def go_commands(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """Build the example commands from the committed stubs, as a user after `go get` would (no generator)."""
    if shutil.which("go") is None:
        pytest.skip("the Go toolchain ('go') is not on PATH; install Go 1.26+ to test clients/go")
    run_ok(["go", "vet", "./..."], cwd=GO_DIR, GOFLAGS="-mod=readonly", GOWORK="off")
    out = tmp_path_factory.mktemp("go-bin")
    built = {}
    for name in COMMANDS:
        run_ok(["go", "build", "-o", out / name, f"./cmd/{name}"], cwd=GO_DIR, GOFLAGS="-mod=readonly", GOWORK="off")
        built[name] = out / name
    return built


@pytest.fixture(scope="module")
def images(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    folder = tmp_path_factory.mktemp("go-images")
    files = {
        "chelsea": encode(photo("chelsea")),
        "chelsea_crop": encode(crop(photo("chelsea"), 0.7, 0.15), quality=80),
        "coffee": encode(photo("coffee")),
        "astronaut": encode(photo("astronaut")),
    }
    paths = {}
    for name, data in files.items():
        paths[name] = folder / f"{name}.jpg"
        paths[name].write_bytes(data)
    paths["not_an_image"] = folder / "not_an_image.jpg"
    paths["not_an_image"].write_text("this is text, not a JPEG\n")
    return paths


def match(go_commands: dict[str, Path], server: str, a: Path, b: Path) -> dict[str, Any]:
    proc = run_ok([go_commands["lookalike-match"], "-server", server, a, b], timeout=120)
    return json.loads(proc.stdout)


def test_match_crop_is_closer_than_another_photo(go_commands, grpc_server, images):
    same = match(go_commands, grpc_server.address, images["chelsea"], images["chelsea_crop"])
    different = match(go_commands, grpc_server.address, images["chelsea"], images["coffee"])
    for result in (same, different):
        assert set(result) == {"similarity", "cosine", "model"}
        assert 0.0 <= result["similarity"] <= 1.0
        assert -1.0 <= result["cosine"] <= 1.0
        assert result["model"]
    assert same["similarity"] > different["similarity"], (same, different)


def test_match_undecodable_image_prints_code_and_reason(go_commands, grpc_server, images):
    proc = run(
        [go_commands["lookalike-match"], "-server", grpc_server.address, images["chelsea"], images["not_an_image"]],
        timeout=120,
    )
    assert proc.returncode != 0
    assert proc.stdout == ""
    assert "INVALID_ARGUMENT" in proc.stderr and "IMAGE_UNDECODABLE" in proc.stderr, proc.stderr
    error = json.loads(proc.stderr.strip().splitlines()[-1])["error"]
    assert error["code"] == "INVALID_ARGUMENT"
    assert error["reason"] == "IMAGE_UNDECODABLE"
    assert error["domain"] == "lookalike"


def test_match_usage_errors_exit_2(go_commands):
    proc = run([go_commands["lookalike-match"], "only-one.jpg"], timeout=30)
    assert proc.returncode == 2
    assert "need exactly two image files" in proc.stderr


def test_match_missing_file_is_reported_before_any_call(go_commands, tmp_path):
    missing = tmp_path / "missing.jpg"
    proc = run([go_commands["lookalike-match"], "-server", "127.0.0.1:1", missing, missing], timeout=30)
    assert proc.returncode == 1
    assert "cannot read image" in proc.stderr and "missing.jpg" in proc.stderr


def test_search_registers_groups_and_finds_the_crop(go_commands, grpc_server, images):
    db = f"go-search-{uuid.uuid4().hex[:8]}"
    cmd = [go_commands["lookalike-search"], "-server", grpc_server.address, "-db", db]
    proc = run_ok(
        [
            *cmd,
            "-query",
            images["chelsea_crop"],
            "-k",
            "3",
            f"cat={images['chelsea']}",
            f"coffee={images['coffee']}",
            f"astronaut={images['astronaut']}",
            f"cat={images['chelsea_crop']}",
        ],
        timeout=120,
    )
    out = json.loads(proc.stdout)
    assert out["database"] == db and out["created"] is True
    assert [(r["group_id"], r["intra_id"]) for r in out["registered"]] == [
        ("cat", 0),
        ("coffee", 0),
        ("astronaut", 0),
        ("cat", 1),
    ]
    assert out["searched_count"] == 4
    assert len(out["hits"]) == 3
    assert out["hits"][0]["group_id"] == "cat"
    scores = [h["score"] for h in out["hits"]]
    assert scores == sorted(scores, reverse=True)

    # The database exists now: reused, nothing registered, one hit per group.
    again = json.loads(run_ok([*cmd, "-query", images["chelsea"], "-one-per-group"], timeout=120).stdout)
    assert again["created"] is False and again["registered"] == []
    assert [h["group_id"] for h in again["hits"]][0] == "cat"
    assert len({h["group_id"] for h in again["hits"]}) == len(again["hits"]) == 3


def test_search_rejected_registration_fails_with_reason(go_commands, grpc_server, images):
    db = f"go-bad-{uuid.uuid4().hex[:8]}"
    proc = run(
        [
            go_commands["lookalike-search"],
            "-server",
            grpc_server.address,
            "-db",
            db,
            "-query",
            images["chelsea"],
            f"cat={images['chelsea']}",
            f"junk={images['not_an_image']}",
        ],
        timeout=120,
    )
    assert proc.returncode == 1
    assert proc.stdout == ""
    assert "IMAGE_UNDECODABLE" in proc.stderr and "not_an_image.jpg" in proc.stderr, proc.stderr


def test_search_database_name_invalid(go_commands, grpc_server, images):
    proc = run(
        [
            go_commands["lookalike-search"],
            "-server",
            grpc_server.address,
            "-db",
            "no spaces allowed",
            "-query",
            images["chelsea"],
        ],
        timeout=120,
    )
    assert proc.returncode == 1
    assert "INVALID_ARGUMENT" in proc.stderr and "DATABASE_NAME_INVALID" in proc.stderr, proc.stderr


def test_the_readme_go_example_compiles_against_the_module(tmp_path):
    """The Go snippet of the README, in a module of its own that requires clients/go."""
    if shutil.which("go") is None:
        pytest.skip("the Go toolchain ('go') is not on PATH")
    import re

    readme = (ROOT / "README.md").read_text()
    section = readme[readme.index("### Go") :]
    (code,) = re.findall(r"```go\n(.*?)```", section, flags=re.S)[:1]
    (tmp_path / "main.go").write_text(code)
    module = "github.com/lookalike-dev/lookalike/clients/go"
    go_mod = (GO_DIR / "go.mod").read_text()
    go_version = re.search(r"^go (\S+)", go_mod, flags=re.M).group(1)
    (tmp_path / "go.mod").write_text(f"module example.com/readme\n\ngo {go_version}\n\nrequire {module} v0.0.0\n\n"
                                     f"replace {module} => {GO_DIR}\n")  # fmt: skip
    (tmp_path / "go.sum").write_text((GO_DIR / "go.sum").read_text())
    run_ok(["go", "mod", "tidy"], cwd=tmp_path, GOWORK="off", GOFLAGS="-mod=mod")
    run_ok(["go", "build", "-o", str(tmp_path / "readme-example"), "."], cwd=tmp_path, GOWORK="off")
    assert (tmp_path / "readme-example").is_file()
