"""The training loop end to end: tiny config, skipped images, resume equivalence, torchrun (gloo)."""

from __future__ import annotations

import json
import math
import os
import shlex
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from imagefolder import write_image_folder
from lookalike.trainer.checkpoint import LAST, load_checkpoint
from lookalike.trainer.config import CONFIG_DIR, load_config
from lookalike.trainer.loop import autocast_dtype, lr_at, param_groups, train, without_sync_batchnorm
from lookalike.trainer.methods.registry import canonical_name, method_options
from lookalike.trainer.train_cli import main
from PIL import Image

from lookalike.modelfile import load_embedder, preprocess, quiet_torchscript

N_IMAGES = 48


@pytest.fixture(scope="module")
def folder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """48 real photo crops plus two unreadable .jpg files that training must skip and count."""
    root = tmp_path_factory.mktemp("imgs")
    paths = write_image_folder(root, N_IMAGES)
    (root / "zz_truncated.jpg").write_bytes(paths[0].read_bytes()[:150])
    (root / "zz_text.jpg").write_text("not a photo")
    return root


@pytest.fixture(scope="module")
def tiny_run(folder: Path, tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, float]:
    """``lookalike train --config tiny`` run once; returns (output dir, seconds)."""
    out = tmp_path_factory.mktemp("tiny") / "out"
    start = time.perf_counter()
    assert main(["--config", "tiny", "--data", str(folder), "--output", str(out)]) == 0
    return out, time.perf_counter() - start


# ----------------------------------------------------------------------------- configuration


def test_tiny_config_layers_on_the_pai_defaults() -> None:
    default, tiny = load_config(), load_config(["tiny"])
    assert (default.optim.name, default.optim.lr, default.train.batch_size) == ("adamw", 0.001, 64)
    assert (default.train.epochs, default.train.checkpoint_every, default.method.name) == (80, 10, "MOBY_TIMM")
    assert (tiny.method.name, tiny.train.batch_size, tiny.optim.lr) == ("mocov2", 8, 0.001)


def test_overrides_are_typed_and_checked() -> None:
    cfg = load_config(["tiny"], ["optim.lr=1e-3", "train.epochs=3", "method.options={K: 128}", "train.sync_bn=false"])
    assert cfg.optim.lr == 0.001 and isinstance(cfg.optim.lr, float)
    assert cfg.train.epochs == 3 and cfg.method.options == {"K": 128, "dim": 32}
    assert cfg.train.sync_bn == "false"
    with pytest.raises(ValueError, match=r"did you mean optim\.lr"):
        load_config(overrides=["optim.lrr=0.1"])
    with pytest.raises(ValueError, match="train.epochs must be an integer"):
        load_config(overrides=["train.epochs=many"])
    with pytest.raises(ValueError, match="section.key=value"):
        load_config(overrides=["epochs"])
    cfg = load_config(overrides=["data.source=x", "train.precision=fp8"])
    with pytest.raises(ValueError, match=r"train.precision must be one of \['auto', 'fp32', 'bf16', 'fp16'\]"):
        cfg.validate()


@pytest.mark.parametrize("name", sorted(p.stem for p in CONFIG_DIR.glob("*.yaml")))
def test_every_packaged_config_loads_with_valid_method_options(name: str) -> None:
    cfg = load_config([name])
    valid = method_options(canonical_name(cfg.method.name))
    assert set(cfg.method.options) <= set(valid), sorted(set(cfg.method.options) - set(valid))
    assert cfg.train.epochs > 0 and cfg.optim.lr > 0


def test_cli_reports_a_missing_data_source(capsys: pytest.CaptureFixture) -> None:
    assert main(["--config", "tiny"]) == 2
    assert "data.source is not set" in capsys.readouterr().err


def test_schedule_warms_up_linearly_then_follows_a_cosine() -> None:
    kw = {"total": 100, "warmup": 10, "base": 1e-3, "min_lr": 1e-5, "schedule": "cosine"}
    assert lr_at(0, **kw) == pytest.approx(1e-4)
    assert lr_at(9, **kw) == pytest.approx(1e-3)
    assert lr_at(55, **kw) == pytest.approx(1e-5 + (1e-3 - 1e-5) * 0.5 * (1 + math.cos(math.pi * 0.5)))
    assert lr_at(100, **kw) == pytest.approx(1e-5)
    assert lr_at(50, **{**kw, "schedule": "constant"}) == 1e-3


def test_mixed_precision_is_used_only_where_supported(monkeypatch: pytest.MonkeyPatch) -> None:
    cpu = torch.device("cpu")
    from lookalike.server.core.embedding import model_exec

    monkeypatch.setattr(model_exec, "native_bf16", lambda: False)
    assert autocast_dtype("auto", cpu) is None  # emulated bf16 is slower than fp32
    monkeypatch.setattr(model_exec, "native_bf16", lambda: True)
    assert autocast_dtype("auto", cpu) == torch.bfloat16
    assert autocast_dtype("fp32", cpu) is None
    assert autocast_dtype("bf16", cpu) == torch.bfloat16
    with pytest.raises(ValueError, match="fp16 needs a CUDA device"):
        autocast_dtype("fp16", cpu)


def test_backbone_gets_its_own_lr_scale_and_norms_no_weight_decay() -> None:
    head, backbone = torch.nn.Linear(4, 2), torch.nn.Sequential(torch.nn.Linear(3, 4), torch.nn.LayerNorm(4))
    model = torch.nn.Sequential(backbone, head)
    groups = param_groups(model, 0.05, backbone, 0.1)
    by_id = {id(p): (g["weight_decay"], g["lr_scale"]) for g in groups for p in g["params"]}
    assert by_id[id(backbone[0].weight)] == (0.05, 0.1) and by_id[id(backbone[1].weight)] == (0.0, 0.1)
    assert by_id[id(head.weight)] == (0.05, 1.0) and by_id[id(head.bias)] == (0.0, 1.0)
    assert len(by_id) == len(list(model.parameters()))


def test_sync_batchnorm_is_reverted_for_export() -> None:
    import timm

    net = timm.create_model("resnet10t", pretrained=False, num_classes=0).eval()
    synced = torch.nn.SyncBatchNorm.convert_sync_batchnorm(net).eval()
    plain = without_sync_batchnorm(synced)
    assert not any(isinstance(m, torch.nn.SyncBatchNorm) for m in plain.modules())
    assert any(isinstance(m, torch.nn.SyncBatchNorm) for m in synced.modules()), "the original is untouched"
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad(), quiet_torchscript():
        assert torch.allclose(torch.jit.script(plain)(x), synced(x), atol=1e-6)


# ----------------------------------------------------------------------------- training runs


@pytest.mark.slow
def test_tiny_config_trains_fast_and_exports_a_loadable_model(tiny_run: tuple[Path, float], folder: Path) -> None:
    out, seconds = tiny_run
    assert seconds < 120, f"the tiny configuration took {seconds:.0f}s on this CPU"
    assert load_config([str(out / "config.yaml")]).data.source == str(folder)  # resolved config reloads
    log = [json.loads(line) for line in (out / "log.jsonl").read_text().splitlines()]
    assert [e["epoch"] for e in log] == [1, 2]
    assert all(np.isfinite(e["loss"]) and e["lr"] > 0 and e["images_per_s"] > 0 for e in log)
    assert all(e["skipped"] > 0 for e in log), "the two unreadable .jpg files are skipped and counted"
    for epoch in (1, 2):
        assert (out / f"epoch_{epoch}.pth").is_file()
    module, meta = load_embedder(out / "epoch_2_export.pt")  # what `lookalike serve --model` does
    assert (meta.input_size, meta.output_dim, meta.precision) == (32, 512, "fp32")
    img = Image.open(next(folder.glob("chelsea_*.jpg")))
    with torch.no_grad():
        vec = module(torch.from_numpy(preprocess(img, meta))[None])
    assert vec.shape == (1, 512) and torch.isfinite(vec).all()


@pytest.mark.slow
def test_resume_gives_the_same_state_as_an_uninterrupted_run(
    tiny_run: tuple[Path, float], folder: Path, tmp_path: Path
) -> None:
    straight, _ = tiny_run
    out = tmp_path / "interrupted"
    overrides = [f"data.source={folder}", f"train.output_dir={out}"]
    first = train(load_config(["tiny"], [*overrides, "train.stop_after_epoch=1"]))
    assert first.state.epoch == 1 and not (out / "epoch_2.pth").exists()
    second = train(load_config(["tiny"], overrides))  # resume: auto -> last.pth
    assert second.state.epoch == 2 and [h["epoch"] for h in second.history] == [2]

    a, b = load_checkpoint(straight / LAST), load_checkpoint(out / LAST)
    assert (a["epoch"], a["step"]) == (b["epoch"], b["step"])
    assert a["method"].keys() == b["method"].keys()
    for key in a["method"]:
        assert torch.equal(a["method"][key], b["method"][key]), key
    for pid, state in a["optimizer"]["state"].items():
        for name, value in state.items():
            assert torch.equal(value, b["optimizer"]["state"][pid][name]), (pid, name)
    assert torch.equal(a["rng"]["torch"], b["rng"]["torch"])


@pytest.mark.slow
def test_frozen_bn_statistics_stay_pretrained_while_weights_train(folder: Path, tmp_path: Path) -> None:
    from lookalike.trainer.loop import build_method_from_config

    cfg = load_config(["tiny"], [f"data.source={folder}", f"train.output_dir={tmp_path}", "train.epochs=1",
                                 "train.steps_per_epoch=2", "train.freeze_bn_stats=true"])  # fmt: skip
    torch.manual_seed(cfg.train.seed)
    start = build_method_from_config(cfg).embedder().state_dict()
    train(cfg)
    after = load_checkpoint(tmp_path / LAST)["method"]
    prefix = "encoder_q.backbone."
    stats = [k for k in start if k.endswith(("running_mean", "running_var"))]
    assert stats and all(torch.equal(start[k], after[prefix + k]) for k in stats)
    assert not torch.equal(start["conv1.0.weight"], after[prefix + "conv1.0.weight"])


@pytest.mark.slow
def test_two_process_torchrun_on_cpu_completes(folder: Path, tmp_path: Path) -> None:
    """DDP with gloo, shuffle-BN and the queue across 2 processes, accumulation with no_sync, fp16 export."""
    out = tmp_path / "ddp"
    with socket.socket() as sock:  # a free port for the rendezvous
        sock.bind(("127.0.0.1", 0))
        port = str(sock.getsockname()[1])
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port", port,
           "-m", "lookalike.trainer.train_cli", "--config", "tiny", "--data", str(folder), "--output", str(out),
           "train.epochs=1", "optim.accumulate=2", "export.fp16=true",
           "train.adapt=false", "selfcheck.holdout=0"]  # fmt: skip
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.Popen(cmd, cwd=tmp_path, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            start_new_session=True)  # fmt: skip
    try:
        stdout, stderr = proc.communicate(timeout=240)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)  # the launcher and both workers
        stdout, stderr = proc.communicate()
        pytest.fail(f"torchrun did not finish in 240s:\n{stdout[-2000:]}\n{stderr[-2000:]}")
    assert proc.returncode == 0, stdout[-3000:] + stderr[-3000:]
    assert "2 process(es)" in stdout and "batch 8x2x2" in stdout
    log = [json.loads(line) for line in (out / "log.jsonl").read_text().splitlines()]
    assert len(log) == 1 and log[0]["step"] == 1  # 50 images / 2 ranks / 8 per batch = 3 batches -> 1 step
    module, meta = load_embedder(out / "epoch_1_export.pt")
    assert (meta.output_dim, meta.precision) == (512, "fp16")  # PAI: half-precision export


def _readme_train_command() -> list[str]:
    """The ``lookalike train`` line of the README's three-command block, as argv."""
    readme = (Path(__file__).resolve().parents[2] / "README.md").read_text(encoding="utf-8")
    lines = [ln for ln in readme.splitlines() if ln.startswith("lookalike train ")]
    assert lines, "README lost its `lookalike train` command"
    return shlex.split(lines[0].split("#")[0])[2:]


@pytest.mark.slow
def test_readme_finetune_command_adapts_the_packaged_model(folder: Path, tmp_path: Path) -> None:
    """The README's fine-tune command (shrunk to two steps) starts from the served default weights."""
    from lookalike.server.core.embedding.default_model import default_model_path

    argv = _readme_train_command()
    assert "--config" in argv, argv
    argv[argv.index("--data") + 1] = str(folder)
    argv[argv.index("--output") + 1] = str(tmp_path)
    small = ["method.image_size=64", "method.options={K: 64}", "train.batch_size=8", "train.steps=2",
             "train.checkpoint_every=1", "data.num_workers=0"]  # fmt: skip
    assert main([*argv, *small]) == 0
    tuned, meta = load_embedder(tmp_path / "epoch_1_export.pt")
    base, base_meta = load_embedder(default_model_path())
    assert (meta.output_dim, meta.input_size) == (base_meta.output_dim, 64) == (1280, 64)
    images = [Image.open(p).convert("RGB") for p in sorted(folder.glob("[!z]*.jpg"))[:8]]
    assert len(images) == 8
    batch = torch.from_numpy(np.stack([preprocess(img, meta) for img in images]))
    with torch.no_grad():
        a, b = tuned(batch), base(batch)
    cos = torch.nn.functional.cosine_similarity(a, b).min().item()
    assert 0.9 < cos < 1.0 - 1e-6, f"fine-tuned vs pretrained cosine {cos}: not a pretrained start, or untrained"
