"""The seed document's own PAI client scripts, run unchanged except for the host and the token.

They are cut out of ``../shared/seed/000_72046c2b39878cfd.txt``, run as real processes with
``requests``, against a server that serves a 384-d model (the scripts' ``feature_dim_dict``
says 384, PAI's MoBY/DeiT-S size).
"""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest
from photos import crop, encode, photo

SEED = Path(__file__).resolve().parents[4] / "shared" / "seed" / "000_72046c2b39878cfd.txt"
TOKEN = "test-token-for-the-seed-scripts"


def scripts() -> dict[str, str]:
    """Each ``import requests`` block of the seed, by the script name that precedes it."""
    lines = SEED.read_text(encoding="utf-8").splitlines()
    out: dict[str, str] = {}
    for i, line in enumerate(lines):
        if line.strip() == "import requests":
            name = re.findall(r"([A-Za-z0-9_]+\.py)", "\n".join(lines[max(0, i - 3) : i]))[-1]
            indent = len(line) - len(line.lstrip())
            body = []
            for follow in lines[i:]:
                if follow.strip() and len(follow) - len(follow.lstrip()) < indent:
                    break
                body.append(follow[indent:])
                if follow.strip() == 'print("test ending")':  # every script of the seed ends so
                    break
            out[name] = "\n".join(body)
    return out


@pytest.fixture(scope="module")
def served_384(tmp_path_factory):
    import torch
    from lookalike.server.app import create_server
    from lookalike.server.config import ServerConfig

    from lookalike.modelfile import EmbedderMeta, save_embedder

    class Pooled(torch.nn.Module):  # a small real model with PAI's 384-d output
        def __init__(self) -> None:
            super().__init__()
            self.conv = torch.nn.Conv2d(3, 64, 7, stride=4)
            self.proj = torch.nn.Linear(64 * 4, 384)
            torch.manual_seed(0)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            f = torch.nn.functional.adaptive_avg_pool2d(torch.relu(self.conv(x)), 2)
            return self.proj(f.flatten(1))

    tmp = tmp_path_factory.mktemp("seed")
    torch.manual_seed(0)
    model = save_embedder(torch.jit.script(Pooled().eval()), tmp / "moby384.pt",
                          EmbedderMeta(model_name="pooled-384", output_dim=384))  # fmt: skip
    # The operator allows the bucket and the endpoint the migrating user's init names (nothing is fetched here).
    server = create_server(ServerConfig(port=0, http_port=0, token=TOKEN, model=model, data_dir=tmp / "data",
                                        snapshot_interval_s=0, oss_allow="oss://tongxin-lly/img_retrieval/",
                                        oss_endpoint_allow="oss-cn-hangzhou-internal.aliyuncs.com"))  # fmt: skip
    yield server
    server.stop(0)


@pytest.mark.skipif(not SEED.is_file(), reason="the seed document (shared/) is not beside this checkout")
def test_the_seed_scripts_run_with_only_host_and_token_changed(served_384, tmp_path):
    found = scripts()
    assert {"img_match.py", "retrieval_init.py", "retrieval_add.py", "retrieval_db_set.py",
            "retrieval_db_search.py"} <= set(found)  # fmt: skip
    for name, img in (("001.jpg", "chelsea"), ("002.jpg", "chelsea"), ("010.jpg", "coffee"), ("test.jpg", "coffee")):
        arr = photo(img) if name != "002.jpg" else crop(photo(img), 0.85)
        (tmp_path / name).write_bytes(encode(arr))
    port = served_384.http_port
    outputs = {}
    for name in ("img_match.py", "retrieval_init.py", "retrieval_add.py", "retrieval_db_set.py",
                 "retrieval_db_search.py"):  # fmt: skip
        text = found[name]
        # The two changes a migrating user makes: the host (keeping PAI's URL path) and the token.
        text = re.sub(r"hosts = 'http://[^/']+", f"hosts = 'http://127.0.0.1:{port}", text)
        text = re.sub(r'"Authorization":"[^"]*"', f'"Authorization":"{TOKEN}"', text)
        (tmp_path / name).write_text(text, encoding="utf-8")
        proc = subprocess.run([sys.executable, name], cwd=tmp_path, capture_output=True, text=True, timeout=120)
        assert proc.returncode == 0, proc.stderr
        assert "test ending" in proc.stdout
        outputs[name] = proc.stdout
    assert '"success":true' in outputs["img_match.py"] and '"similarity"' in outputs["img_match.py"]
    assert "init db success." in outputs["retrieval_init.py"]
    assert '"name":"tongxin_demo"' in outputs["retrieval_add.py"]
    assert '"group_id":"888","intra_id":10' in outputs["retrieval_db_set.py"]
    assert '"results":[{"group_id":"888","intra_id":10' in outputs["retrieval_db_search.py"]
