"""The wheel installs in a clean venv at the lowest versions its metadata allows, and the client
works there without torch: the pins match the generated code."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
UV = [sys.executable, "-m", "uv"]


@pytest.mark.slow
def test_client_only_wheel_at_the_lowest_allowed_versions(tmp_path, grpc_server):
    dist = tmp_path / "dist"
    build = subprocess.run([*UV, "build", "--wheel", "--out-dir", str(dist), str(ROOT)], capture_output=True,
                           text=True, timeout=1200)  # fmt: skip
    assert build.returncode == 0, build.stderr[-3000:]
    (wheel,) = dist.glob("lookalike-*.whl")
    venv = tmp_path / "venv"
    subprocess.run([*UV, "venv", "--quiet", "--python", sys.executable, str(venv)], check=True, timeout=120)
    py = venv / "bin" / "python"
    import re

    import tomllib

    deps = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["dependencies"]
    lowest = [re.sub(r">=([^,]+).*", r"==\1", d) for d in deps]  # every declared dependency at its lower bound
    (tmp_path / "lowest.txt").write_text("\n".join(lowest) + "\n")
    install = subprocess.run([*UV, "pip", "install", "--quiet", "--python", str(py), "-c", str(tmp_path / "lowest.txt"),
                              str(wheel)], capture_output=True, text=True, timeout=600)  # fmt: skip
    assert install.returncode == 0, install.stderr[-3000:]
    probe = (
        "import importlib.metadata as m, sys\n"
        "import lookalike.client as c\n"
        "print(m.version('grpcio'), m.version('protobuf'))\n"
        "assert 'torch' not in sys.modules\n"
        f"with c.LookalikeClient('{grpc_server.address}') as cl:\n"
        "    print(len(cl.list_databases()) >= 0)\n"
    )
    run = subprocess.run([str(py), "-c", probe], capture_output=True, text=True, timeout=120, cwd=tmp_path)
    assert run.returncode == 0, run.stderr[-3000:]
    versions, ok = run.stdout.split("\n")[:2]
    assert versions == "1.85.1 7.35.1" and ok == "True"  # the lowest allowed, and a real call works
    with pytest.raises(subprocess.CalledProcessError):
        subprocess.run([str(py), "-c", "import torch"], check=True, capture_output=True, timeout=60)
