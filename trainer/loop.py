"""The training loop: one code path for one CPU process, one GPU, and torchrun (DDP) jobs.

Per step: views from ``method.crops`` -> ``method(views)["loss"]`` under autocast -> backward
(accumulated over ``optim.accumulate`` micro-batches, DDP gradient sync only on the last) ->
AdamW step at the scheduled learning rate -> ``method.on_after_step``. After each epoch the
main process writes ``last.pth`` and, every ``train.checkpoint_every`` epochs and at the end,
``epoch_{N}.pth`` and ``epoch_{N}_export.pt`` (the server's model file). Collectives go through
``lookalike.trainer.dist`` and are no-ops in a single process, so tests run this same loop.
"""

from __future__ import annotations

import contextlib
import copy
import json
import math
import os
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from lookalike.trainer import dist
from lookalike.trainer.center import CenterSet, center_export
from lookalike.trainer.checkpoint import (
    LAST,
    TrainState,
    epoch_checkpoint_name,
    epoch_export_name,
    load_checkpoint,
    restore,
    save_checkpoint,
)
from lookalike.trainer.config import Config
from lookalike.trainer.data.augment import AugmentOptions, MultiCropAugment
from lookalike.trainer.data.dataset import ViewsDataset, collate_views
from lookalike.trainer.data.skips import SkipLog
from lookalike.trainer.data.sources import ImageSource, SubsetSource, load_readable, open_source
from lookalike.trainer.selfcheck import (
    START_EXPORT,
    CheckSet,
    SelfCheckLog,
    holdout_indices,
    make_check_set,
    run_check,
)
from torch import nn
from torch.utils.data import DataLoader, DistributedSampler, Sampler


@dataclass
class TrainResult:
    output_dir: Path
    state: TrainState
    exports: list[Path] = field(default_factory=list)
    history: list[dict[str, Any]] = field(default_factory=list)
    selfcheck: SelfCheckLog | None = None
    stopped_by_time: bool = False


# ----------------------------------------------------------------------------- set-up helpers


def setup_distributed(backend: str) -> tuple[int, int, bool]:
    """Join the torchrun process group when ``WORLD_SIZE > 1``.

    Returns ``(world_size, local_rank, joined)``; ``joined`` is True when this call created the
    group (and so should destroy it at the end).
    """
    world = int(os.environ.get("WORLD_SIZE", "1"))
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    joined = False
    if world > 1 and not dist.is_distributed():
        if backend == "auto":
            backend = "nccl" if torch.cuda.is_available() else "gloo"
        if backend == "nccl":
            torch.cuda.set_device(local_rank)
        torch.distributed.init_process_group(backend=backend)
        joined = True
    return dist.world_size(), local_rank, joined


def pick_device(name: str, local_rank: int) -> torch.device:
    if name == "cuda" and not torch.cuda.is_available():
        raise ValueError("train.device=cuda but no CUDA device is visible; use train.device=auto or cpu")
    if name == "cpu" or not torch.cuda.is_available():
        return torch.device("cpu")
    return torch.device("cuda", local_rank)


def autocast_dtype(precision: str, device: torch.device) -> torch.dtype | None:
    """``None`` for fp32; bf16/fp16 where the device supports them, else ``ValueError``.

    ``auto`` is bf16 (fp16 without bf16) on a GPU, bf16 on a CPU with native bf16, and fp32 on
    other CPUs. On the project's 2-core AVX-512 BF16 machine, bf16 made a 224 px EfficientNet-Lite0
    forward and backward of 32 images 1.4x faster and the fine-tune's first 4 steps 1.8x (45 s
    instead of 83 s; trainer/CONFIG.md).
    """
    if precision == "auto":
        if device.type == "cuda":
            return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
        from lookalike.server.core.embedding.model_exec import native_bf16  # the server's own test, one for both

        return torch.bfloat16 if native_bf16() else None
    if precision == "fp32":
        return None
    if precision == "fp16" and device.type != "cuda":
        raise ValueError("train.precision=fp16 needs a CUDA device; on CPU use bf16 or fp32")
    if precision == "bf16" and device.type == "cuda" and not torch.cuda.is_bf16_supported():
        raise ValueError("this GPU has no bf16 support; use train.precision=fp16 or fp32")
    return torch.bfloat16 if precision == "bf16" else torch.float16


def lr_at(step: int, *, total: int, warmup: int, base: float, min_lr: float, schedule: str) -> float:
    """Linear warmup over ``warmup`` steps, then cosine decay to ``min_lr`` at ``total`` (or constant)."""
    if step < warmup:
        return base * (step + 1) / warmup
    if schedule == "constant":
        return base
    progress = min(1.0, (step - warmup) / max(1, total - warmup))
    return min_lr + (base - min_lr) * 0.5 * (1.0 + math.cos(math.pi * progress))


def param_groups(
    model: nn.Module, weight_decay: float, backbone: nn.Module | None = None, backbone_lr_scale: float = 1.0
) -> list[dict[str, Any]]:
    """AdamW groups: no weight decay on biases and norm parameters (1-d tensors), as in timm and MoBY;
    the exported ``backbone``'s parameters get ``lr_scale = backbone_lr_scale`` (fine-tuning).
    """
    in_backbone = {id(p) for p in backbone.parameters()} if backbone is not None else set()
    groups: dict[tuple[bool, bool], list[nn.Parameter]] = {}
    for p in model.parameters():
        if p.requires_grad:
            groups.setdefault((p.ndim <= 1, id(p) in in_backbone), []).append(p)
    return [
        {"params": params, "weight_decay": 0.0 if no_decay else weight_decay,
         "lr_scale": backbone_lr_scale if is_backbone else 1.0}
        for (no_decay, is_backbone), params in sorted(groups.items())
    ]  # fmt: skip


class EpochSampler(Sampler[tuple[int, int]]):
    """Yields ``(epoch, index)`` so persistent DataLoader workers know the epoch of each sample."""

    def __init__(self, inner: DistributedSampler) -> None:
        self.inner = inner
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch
        self.inner.set_epoch(epoch)

    def __iter__(self) -> Iterator[tuple[int, int]]:
        return ((self.epoch, i) for i in self.inner)

    def __len__(self) -> int:
        return len(self.inner)


def build_method_from_config(cfg: Config) -> nn.Module:
    from lookalike.trainer.methods.registry import build_method

    m = cfg.method
    return build_method(m.name, backbone=m.backbone, pretrained=m.pretrained, image_size=m.image_size, **m.options)


def backbone_name(cfg: Config) -> str:
    from lookalike.trainer.methods.registry import METHODS, canonical_name

    return cfg.method.backbone or METHODS[canonical_name(cfg.method.name)][1]


def available_cores() -> int:
    """CPU cores this process may run on (the affinity mask, e.g. a container's share), at least 1."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # not on Linux
        return max(1, os.cpu_count() or 1)


def loader_workers(cfg: Config) -> int:
    """``data.num_workers``, or (null) the cores available to this process, at most 8."""
    if cfg.data.num_workers is not None:
        return cfg.data.num_workers
    return min(available_cores(), 8)


def split_source(cfg: Config) -> tuple[ImageSource, ImageSource, list[int]]:
    """``(whole source, training part, held-out indices)``: the self-check's slice never trains."""
    source = open_source(cfg.data.source or "", root=cfg.data.root, split=cfg.data.split)
    sc = cfg.selfcheck
    held = holdout_indices(len(source), sc.holdout, sc.min_images, sc.max_images, cfg.train.seed).tolist()
    if not held:
        return source, source, []
    keep = sorted(set(range(len(source))) - set(held))
    return source, SubsetSource(source, keep), held


def adapt_to_dataset(cfg: Config, n_train: int, world: int) -> list[str]:
    """Fit ``cfg`` to a training set of ``n_train`` images in place; returns what was changed and why.

    - batch per process <= n_train / (2 x world x accumulate): at least two steps an epoch;
    - a MoCo / MoBY queue holds at most ``n_train - global batch`` keys (MoCo's own condition, so an
      image is not its own negative), a multiple of the global batch; MoCo with room for fewer than
      4 batches of keys uses in-batch negatives instead (``K=0``, MoCo v3);
    - with ``train.steps``, epochs follow from the steps, and about 10 checkpoints are spread over them.
    """
    from lookalike.trainer.methods.registry import canonical_name

    notes: list[str] = []
    t, acc = cfg.train, cfg.optim.accumulate
    limit = n_train // (2 * world * acc)
    if limit < 2:
        limit = n_train // (world * acc)
    if limit < 1:
        return notes  # build_loader raises with the numbers
    if t.batch_size > limit:
        notes.append(f"train.batch_size {t.batch_size} -> {limit} ({n_train} training images, {world} process(es))")
        t.batch_size = limit
    name = canonical_name(cfg.method.name)
    if name in ("mocov2", "moco_timm", "moby"):
        from lookalike.trainer.methods.registry import method_options

        K = int(cfg.method.options.get("K", method_options(name)["K"]))
        global_batch = t.batch_size * world
        cap = (n_train - global_batch) // global_batch * global_batch
        new_K = K
        if name != "moby" and K > 0 and cap < 4 * global_batch:
            new_K = 0
        elif K > cap:
            new_K = max(cap, global_batch)
        if new_K != K:
            why = "in-batch negatives (MoCo v3)" if new_K == 0 else f"<= {n_train} images - batch {global_batch}"
            notes.append(f"method.options.K {K} -> {new_K} ({why}: an image is never its own negative)")
            cfg.method.options = {**cfg.method.options, "K": new_K}
    return notes


def build_loader(
    cfg: Config, method: nn.Module, world: int, source: ImageSource | None = None
) -> tuple[DataLoader, EpochSampler]:
    if source is None:
        source = open_source(cfg.data.source or "", root=cfg.data.root, split=cfg.data.split)
    d = cfg.data
    workers = loader_workers(cfg)
    options = AugmentOptions(d.jitter, d.jitter_p, d.grayscale_p, d.blur_p, d.flip_p)
    augment = MultiCropAugment(method.crops, method.default_mean, method.default_std, options)
    dataset = ViewsDataset(source, augment, seed=cfg.train.seed, with_index=getattr(method, "accepts_index", False))
    inner = DistributedSampler(
        dataset, num_replicas=world, rank=dist.rank(), shuffle=True, seed=cfg.train.seed, drop_last=True
    )
    sampler = EpochSampler(inner)
    if len(inner) < cfg.train.batch_size:
        raise ValueError(
            f"{len(source)} images cannot fill one batch of {cfg.train.batch_size} per process x {world} "
            f"process(es); lower train.batch_size below {max(1, len(source) // world)} or add images"
        )
    loader = DataLoader(
        dataset,
        batch_size=cfg.train.batch_size,
        sampler=sampler,
        num_workers=workers,
        collate_fn=collate_views,
        drop_last=True,
        pin_memory=torch.cuda.is_available(),
        persistent_workers=workers > 0,
        multiprocessing_context="spawn" if workers > 0 else None,
    )
    return loader, sampler


def without_sync_batchnorm(module: nn.Module) -> nn.Module:
    """``module`` itself, or a copy with every ``SyncBatchNorm`` turned back into ``BatchNorm2d``.

    The served model runs in one process; SyncBN would only get in the way of TorchScript.
    """
    if not any(isinstance(m, nn.SyncBatchNorm) for m in module.modules()):
        return module

    def revert(m: nn.Module) -> nn.Module:
        if isinstance(m, nn.SyncBatchNorm):
            bn = nn.BatchNorm2d(m.num_features, m.eps, m.momentum, m.affine, m.track_running_stats)
            bn.load_state_dict(m.state_dict())
            return bn.train(m.training)
        for name, child in m.named_children():
            setattr(m, name, revert(child))
        return m

    return revert(copy.deepcopy(module))


def _log(line: str) -> None:
    if dist.rank() == 0:
        print(line, flush=True)


# ----------------------------------------------------------------------------- the loop


def train(cfg: Config) -> TrainResult:
    """Run (or continue) the training described by ``cfg``; see the module docstring."""
    cfg.validate()
    world, local_rank, joined = setup_distributed(cfg.train.dist_backend)
    try:
        result = _train(cfg, world, local_rank)
        if joined:
            dist.barrier()  # no process leaves while rank 0 still writes the last export
        return result
    finally:
        if joined:
            torch.distributed.destroy_process_group()


def _train(cfg: Config, world: int, local_rank: int) -> TrainResult:
    run_start = time.monotonic()  # --max-minutes counts from here, set-up and the first self-check included
    device = pick_device(cfg.train.device, local_rank)
    amp_dtype = autocast_dtype(cfg.train.precision, device)
    torch.manual_seed(cfg.train.seed)
    out = Path(cfg.train.output_dir)
    is_main = dist.rank() == 0
    if is_main:
        out.mkdir(parents=True, exist_ok=True)
        (out / "config.yaml").write_text(cfg.to_yaml(), encoding="utf-8")

    source, train_source, held = split_source(cfg)
    if cfg.train.adapt:
        for note in adapt_to_dataset(cfg, len(train_source), world):
            _log(f"adapted to the dataset: {note}")
    method = build_method_from_config(cfg)
    if cfg.train.trainable_stages is not None:
        from lookalike.trainer.models.backbones import freeze_early_stages

        frozen, trainable = freeze_early_stages(method.embedder(), cfg.train.trainable_stages)
        _log(
            f"train.trainable_stages={cfg.train.trainable_stages}: the backbone's stem and earlier stages are "
            f"frozen ({frozen / 1e6:.2f}M parameters), {trainable / 1e6:.2f}M of it train"
        )
    loader, sampler = build_loader(cfg, method, world, train_source)
    if is_main:
        (out / "config.yaml").write_text(cfg.to_yaml(), encoding="utf-8")  # the values actually used
    check = _check_set(cfg, source, held) if is_main else None
    centre = CenterSet.draw(train_source, cfg.export.center_images, cfg.train.seed) if is_main else None
    method.to(device)
    sync_bn = cfg.train.sync_bn == "true" or (
        cfg.train.sync_bn == "auto" and device.type == "cuda" and not getattr(method, "shuffle_bn", False)
    )
    if world > 1 and sync_bn:
        method = nn.SyncBatchNorm.convert_sync_batchnorm(method)
    model: nn.Module = method
    if world > 1:
        model = nn.parallel.DistributedDataParallel(
            method,
            device_ids=[device.index] if device.type == "cuda" else None,
            find_unused_parameters=method.name == "swav",  # prototypes are frozen for the first steps
        )
    optimizer = torch.optim.AdamW(
        param_groups(method, cfg.optim.weight_decay, method.embedder(), cfg.optim.backbone_lr_scale),
        lr=cfg.optim.lr,
        betas=tuple(cfg.optim.betas),
    )
    scaler = torch.amp.GradScaler(device.type) if amp_dtype == torch.float16 else None

    state = TrainState()
    resume = _resume_path(cfg, out)
    if resume is not None:
        state = restore(load_checkpoint(resume), method=method, optimizer=optimizer, scaler=scaler)
        _log(f"resumed from {resume}: {state.epoch} epoch(s), {state.step} step(s) done")

    accumulate = cfg.optim.accumulate
    steps_per_epoch = len(loader) // accumulate
    if cfg.train.steps_per_epoch is not None:
        steps_per_epoch = min(steps_per_epoch, cfg.train.steps_per_epoch)
    if steps_per_epoch == 0:
        raise ValueError(
            f"one epoch has {len(loader)} batch(es), fewer than optim.accumulate={accumulate}; "
            "lower optim.accumulate or train.batch_size"
        )
    plan = _plan_schedule(cfg, steps_per_epoch)
    budget = cfg.train.max_minutes is not None and state.step < plan.total_steps
    probe = _probe_step_seconds(cfg, method, loader, device, amp_dtype) if budget else 0.0

    result = TrainResult(out, state)
    if is_main and check is not None:
        result.selfcheck = SelfCheckLog.load(out, cfg.selfcheck.tolerance_se, cfg.selfcheck.min_gain)
        start = result.selfcheck.start
        if start is None:
            began = time.monotonic()
            path = _export(cfg, method, out / START_EXPORT, state, "start", centre, check)
            metrics = run_check(path, check)
            plan.check_seconds = time.monotonic() - began
            result.selfcheck.add(0, 0, path, {**metrics, "seconds": round(plan.check_seconds, 3)})
            _log(f"self-check at the start: {_fmt_check(metrics)} ({plan.check_seconds:.0f}s)")
        else:  # resumed: the start's check is logged, with its time (runs of older versions: unknown)
            plan.check_seconds = float(start.get("seconds", 0.0))
    seconds_per_step = 0.0
    if cfg.train.max_minutes is not None:
        plan.deadline = run_start + 60 * cfg.train.max_minutes
        measured = torch.tensor([plan.check_seconds, probe, time.monotonic() - run_start], dtype=torch.float64)
        if not is_main:
            measured.zero_()
        dist.all_reduce_sum(measured)  # every process plans with rank 0's measurements
        plan.check_seconds, probe, elapsed = (float(v) for v in measured.tolist())
        if budget:
            seconds_per_step = probe * PROBE_MARGIN
            _refuse_short_budget(cfg, plan, state.step, seconds_per_step, elapsed)
            plan.fit_to_budget(state.step, seconds_per_step)
            plan.sync_from_rank0()
    capped = (
        f"; capped by --max-minutes {cfg.train.max_minutes:g} from {plan.configured_steps}"
        if plan.total_steps < plan.configured_steps
        else ""
    )
    eta = f", ETA {_duration(plan.eta(state.step, seconds_per_step))}" if seconds_per_step > 0 else ""
    _log(
        f"training {method.name} ({backbone_name(cfg)}) on {len(loader.dataset)} images "
        f"({len(held)} held out for the self-check), {world} process(es) on {device}, "
        f"batch {cfg.train.batch_size}x{accumulate}x{world}, {plan.steps_per_epoch} steps/epoch x {plan.epochs} "
        f"epochs = {plan.total_steps} steps (warmup {plan.warmup_steps}{capped}), {loader.num_workers} loader "
        f"worker(s), precision {_PRECISION_NAMES[amp_dtype]}"
        + (f", each export centred on {len(centre.indices)} of the images (export.center_images)" if centre else "")
        + eta
    )
    if seconds_per_step > 0:
        _log(
            f"time budget: {probe:.2f}s/step timed on one batch (+{PROBE_MARGIN - 1:.0%} spare), "
            f"{plan.check_seconds:.0f}s per self-check x {plan.checks} (a checkpoint every {plan.checkpoint_every} "
            "epoch(s)); re-fitted on the first steps if they differ"
        )
    stop = cfg.train.stop_after_epoch
    timed_from: tuple[float, int] | None = None  # (clock, step) at the end of the run's first epoch
    checking = 0.0  # seconds of checkpoints' exports and self-checks since then (budgeted apart)
    while state.epoch < plan.epochs and (stop is None or state.epoch < stop):
        sampler.set_epoch(state.epoch)
        stats = _run_epoch(cfg, model, method, loader, optimizer, scaler, state, device, amp_dtype, plan)
        state.epoch += 1
        result.history.append(stats)
        timed_out = _time_up(plan)
        if plan.deadline is not None and not timed_out:
            if timed_from is None:  # the first epoch pays the loader's start-up and first-call set-up
                timed_from = (time.monotonic(), state.step)
            elif state.step > timed_from[1]:
                rate = (time.monotonic() - timed_from[0] - checking) / (state.step - timed_from[1])
                note = plan.shorten_to_fit(state.step, state.epoch, rate)
                plan.sync_from_rank0()
                if note is not None:
                    _log(note)
        if is_main:
            checking += _after_epoch(cfg, method, optimizer, scaler, state, stats, out, result, plan, check, centre,
                                     final=timed_out)  # fmt: skip
        if timed_out:
            result.stopped_by_time = state.step < plan.total_steps  # else the plan ended right on the clock
            break
    if result.stopped_by_time:
        _log(
            f"stopped at the time budget (train.max_minutes={cfg.train.max_minutes}) after epoch {state.epoch}, "
            f"step {state.step} of {plan.total_steps}; checkpoint and export written"
        )
    elif state.epoch >= plan.epochs:
        _log(f"done: {state.epoch} epoch(s), {state.step} step(s); outputs in {out}")
    else:
        _log(f"stopped after epoch {state.epoch} (train.stop_after_epoch); resume with the same command")
    if result.selfcheck is not None:
        _log(result.selfcheck.verdict())
    return result


# The probe times one batch; the plan keeps this much spare for what it cannot see (the loader's
# start-up, the per-epoch last.pth, a busier machine): a step estimated at 1 s is planned at 1.1 s.
PROBE_MARGIN = 1.1


@dataclass
class SchedulePlan:
    """Steps per epoch, epochs and the lr schedule's length; fitted to a time budget once a step is timed.

    ``configured_*`` keep the schedule the config asked for: a fit never goes beyond it, and a later,
    better measurement may lengthen a fit back towards it.
    """

    steps_per_epoch: int
    epochs: int
    total_steps: int
    warmup_steps: int
    checkpoint_every: int = 1
    adapt_checkpoints: bool = False  # respread checkpoints (about 10) when the schedule is shortened
    deadline: float | None = None
    check_seconds: float = 0.0  # one checkpoint's export + self-check, measured at the start
    fitted: bool = False  # refitted on the run's own measured steps (once)
    checks: int = 0  # self-checked checkpoints the fit planned for (0: not fitted)
    configured_steps: int = 0
    configured_epochs: int = 0
    configured_warmup: int = 0
    configured_every: int = 0

    def __post_init__(self) -> None:
        self.configured_steps = self.configured_steps or self.total_steps
        self.configured_epochs = self.configured_epochs or self.epochs
        self.configured_warmup = self.configured_warmup or self.warmup_steps
        self.configured_every = self.configured_every or self.checkpoint_every

    def out_of_time(self) -> bool:
        """Time to stop stepping: the budget less the closing checkpoint's export and self-check."""
        return self.deadline is not None and time.monotonic() >= self.deadline - self.check_seconds

    def sync_from_rank0(self) -> None:
        """Under torchrun every process follows rank 0's fitted schedule (same steps, same epochs)."""
        if dist.world_size() == 1 or self.deadline is None:
            return
        values = torch.tensor([self.total_steps, self.epochs, self.warmup_steps, self.checkpoint_every, self.checks])
        dist.broadcast(values, src=0)
        self.total_steps, self.epochs, self.warmup_steps, self.checkpoint_every, self.checks = (
            int(v) for v in values.tolist()
        )

    def checkpoints_in(self, epochs: int) -> int:
        if self.adapt_checkpoints:
            return max(1, min(epochs, 10))
        return max(1, math.ceil(epochs / self.configured_every))

    def affordable(self, left: float, done: int, seconds_per_step: float) -> tuple[int, int]:
        """``(steps in all, self-checks)`` that ``left`` seconds allow after ``done`` steps, at most the config's.

        The checkpoints' self-checks come out of the time first (at most a quarter of it when they are
        respread); the steps may be ``done`` itself when not one more fits.
        """
        steps = done + max(0, int(left / seconds_per_step))
        checks = self.checkpoints_in(max(1, math.ceil(min(steps, self.configured_steps) / self.steps_per_epoch)))
        if self.adapt_checkpoints and self.check_seconds > 0:  # self-checks take at most a quarter of the time left
            checks = max(1, min(checks, int(0.25 * left / self.check_seconds)))
        steps = done + max(0, int((left - self.check_seconds * checks) / seconds_per_step))
        return min(steps, self.configured_steps), checks

    def eta(self, done: int, seconds_per_step: float) -> float:
        """Seconds left for the steps after ``done`` and the planned self-checks."""
        return max(0, self.total_steps - done) * seconds_per_step + self.check_seconds * self.checks

    def shorten_to_fit(self, done: int, done_epochs: int, seconds_per_step: float) -> str | None:
        """At an epoch's end: when the rest of the plan no longer fits the deadline at the rate the run's
        steps actually took (per-epoch writes included), shorten it so the printed plan stays the one that
        runs, instead of being cut off by the clock. Returns a note when it did."""
        if self.deadline is None or done >= self.total_steps or seconds_per_step <= 0:
            return None
        per = seconds_per_step * PROBE_MARGIN
        checks = sum(1 for e in range(done_epochs + 1, self.epochs + 1) if e % self.checkpoint_every == 0)
        checks += self.epochs % self.checkpoint_every != 0  # the last epoch always gets one
        left = self.deadline - time.monotonic()
        if (self.total_steps - done) * per + checks * self.check_seconds <= left:
            return None
        steps = done + max(0, int((left - checks * self.check_seconds) / per))
        self.total_steps = min(steps, self.total_steps)
        self.epochs = done_epochs + math.ceil((self.total_steps - done) / self.steps_per_epoch)
        self.warmup_steps = min(self.warmup_steps, self.total_steps)
        self.checks = checks
        return (
            f"time budget: the steps took {seconds_per_step:.2f}s each (epochs' writes included), more than planned; "
            f"schedule shortened to {self.total_steps} steps ({self.epochs} epochs), ETA "
            f"{_duration(self.eta(done, per))}"
        )

    def fit_to_budget(self, done: int, seconds_per_step: float) -> str | None:
        """Fit the schedule (cosine included) so it ends by the deadline at ``seconds_per_step``.

        Called before training with a timed probe's estimate and again on the run's own steps; the
        second call may shorten or lengthen the first (never past the config's schedule). Returns a
        note when the plan changed.
        """
        if self.deadline is None or seconds_per_step <= 0:
            return None
        steps, checks = self.affordable(self.deadline - time.monotonic(), done, seconds_per_step)
        steps = max(steps, done + 1)
        if steps >= self.configured_steps:
            new = (self.configured_steps, self.configured_epochs, self.configured_warmup, self.configured_every)
        else:
            epochs = max(1, math.ceil(steps / self.steps_per_epoch))
            every = max(1, math.ceil(epochs / checks)) if self.adapt_checkpoints else self.configured_every
            new = (steps, epochs, min(self.configured_warmup, max(1, steps // 10)), every)
        self.checks = math.ceil(new[1] / new[3])  # every `every` epochs, and the last
        if new == (self.total_steps, self.epochs, self.warmup_steps, self.checkpoint_every):
            return None
        self.total_steps, self.epochs, self.warmup_steps, self.checkpoint_every = new
        capped = "" if steps >= self.configured_steps else f" of the {self.configured_steps} configured"
        return (
            f"time budget: {seconds_per_step:.2f}s/step leaves room for {self.total_steps} steps{capped}; "
            f"schedule fitted to {self.total_steps} steps ({self.epochs} epochs, warmup {self.warmup_steps}, "
            f"a checkpoint every {self.checkpoint_every} epoch(s)), ETA {_duration(self.eta(done, seconds_per_step))}"
        )


def _time_up(plan: SchedulePlan) -> bool:
    """Past the deadline on any process (all processes stop at the same step under torchrun)."""
    if plan.deadline is None:
        return False
    flag = torch.tensor([1.0 if plan.out_of_time() else 0.0], dtype=torch.float64)
    dist.all_reduce_sum(flag)
    return bool(flag.item() > 0)


class BudgetTooShort(ValueError):
    """``--max-minutes`` fits fewer than ``train.min_steps`` steps (``lookalike train`` exits 2)."""


def _probe_step_seconds(
    cfg: Config, method: nn.Module, loader: DataLoader, device: torch.device, amp_dtype: torch.dtype | None
) -> float:
    """Seconds of one optimizer step, timed on a copy of the model before training starts.

    A copy, so the probe changes neither the weights, the queue, the BatchNorm statistics nor the
    random state: a refused budget leaves the model untouched, and an accepted one trains exactly as
    without a budget. One forward and backward of a real batch (the first pass includes one-time
    set-up, so it errs long; a cheap one is timed twice) plus the time to load and augment it, divided
    over the loader's workers as they overlap the compute. On this 2-core CPU the first pass of the tiny
    config took 2.0 s and the second 0.4 s, as the run's own steps.
    """
    dataset = loader.dataset
    began = time.perf_counter()
    samples = [dataset[(0, i % len(dataset))] for i in range(cfg.train.batch_size)]
    batch = collate_views(samples)
    load = time.perf_counter() - began
    probe = copy.deepcopy(method).train()
    devices = (
        [device.index if device.index is not None else torch.cuda.current_device()] if device.type == "cuda" else []
    )

    def once(probe: nn.Module) -> float:
        start = time.perf_counter()
        views = [v.to(device, non_blocking=True) for v in batch[0]]
        kwargs = {"index": batch[2].to(device)} if len(batch) == 3 else {}
        with torch.autocast(device.type, dtype=amp_dtype or torch.float32, enabled=amp_dtype is not None):
            loss = probe(views, **kwargs)["loss"]
        loss.backward()
        probe.zero_grad(set_to_none=True)
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        return time.perf_counter() - start

    with torch.random.fork_rng(devices=devices):
        compute = once(probe)
        if compute < max(5.0, 0.02 * 60 * (cfg.train.max_minutes or 0)):  # cheap: again, past the set-up
            compute = once(probe)
    del probe
    workers = loader.num_workers
    micro = compute + load if workers == 0 else max(compute, load / workers)
    return micro * cfg.optim.accumulate


def min_useful_steps(cfg: Config, plan: SchedulePlan) -> int:
    """``train.min_steps``, or (null) the schedule's warmup: before it ends the lr never reaches ``optim.lr``."""
    steps = cfg.train.min_steps if cfg.train.min_steps is not None else plan.configured_warmup
    return min(max(1, steps), plan.configured_steps)


def budget_minutes(plan: SchedulePlan, done: int, needed: int, seconds_per_step: float, elapsed: float) -> int:
    """The fewest whole minutes (10% spare) in which ``needed`` more steps and their self-checks fit.

    ``elapsed``: the set-up before the first step (model, data, the start's self-check).
    """
    for minutes in range(1, 60 * 24 * 366):
        left = minutes * 60 - elapsed
        if left > 0 and plan.affordable(left, done, seconds_per_step)[0] - done >= needed:
            return math.ceil(minutes * 1.1)
    return 60 * 24 * 366


def _refuse_short_budget(cfg: Config, plan: SchedulePlan, done: int, seconds_per_step: float, elapsed: float) -> None:
    """Raise :class:`BudgetTooShort` (or, with ``train.allow_short``, warn) when the budget fits too few steps."""
    needed = min_useful_steps(cfg, plan) - done
    if needed <= 0 or plan.deadline is None:
        return
    left = 60 * (cfg.train.max_minutes or 0) - elapsed
    fit = max(0, plan.affordable(left, done, seconds_per_step)[0] - done)
    if fit >= needed:
        return
    if cfg.train.min_steps is not None:
        rule = "train.min_steps"
    else:
        rule = f"the warmup, optim.warmup_{'steps' if cfg.optim.warmup_steps is not None else 'epochs'}; "
        rule += "train.min_steps=N changes it"
    minutes = budget_minutes(plan, done, needed, seconds_per_step, elapsed)
    text = (
        f"--max-minutes {cfg.train.max_minutes:g} is too short for a useful run: {fit} training step(s) fit, and "
        f"at least {needed} are needed ({rule}). Estimated {seconds_per_step:.2f}s per step (one batch timed on "
        f"a copy of the model, +{PROBE_MARGIN - 1:.0%} spare), {plan.check_seconds:.0f}s per self-check, "
        f"{elapsed:.0f}s of set-up. "
        f"--max-minutes {minutes} would be enough"
    )
    if not cfg.train.allow_short:
        raise BudgetTooShort(f"{text}: run again with it, or add --allow-short to train this short anyway")
    _log(f"warning: {text}; training anyway (--allow-short)")


def _plan_schedule(cfg: Config, steps_per_epoch: int) -> SchedulePlan:
    t = cfg.train
    if t.steps is not None:
        steps_per_epoch = min(steps_per_epoch, t.steps)
        epochs = math.ceil(t.steps / steps_per_epoch)
        total = t.steps
    else:
        epochs = t.epochs
        total = steps_per_epoch * epochs
    if cfg.optim.warmup_steps is not None:
        warmup = cfg.optim.warmup_steps
    else:
        warmup = round(cfg.optim.warmup_epochs * steps_per_epoch)
    every = t.checkpoint_every
    adapt = t.steps is not None and t.adapt
    if adapt:
        warmup = min(warmup, max(1, total // 10))
        every = max(1, round(epochs / 10))
        if every != t.checkpoint_every and t.max_minutes is None:  # with a budget: once fitted
            _log(f"adapted to the dataset: a checkpoint every {every} epoch(s) ({epochs} epochs)")
    return SchedulePlan(steps_per_epoch, epochs, total, min(warmup, total), every, adapt)


def _check_set(cfg: Config, source: ImageSource, held: list[int]) -> CheckSet | None:
    """The held-out images (unreadable ones skipped) and their altered copies, or None."""
    images = load_readable(source, held)
    if len(images) < 2:
        return None
    return make_check_set(images, cfg.selfcheck.views, seed=cfg.train.seed)


def _fmt_check(m: dict[str, float]) -> str:
    return (
        f"recall@1 {m['recall@1']:.3f} mAP {m['mAP']:.3f} alignment {m['alignment']:.3f} "
        f"uniformity {m['uniformity']:.3f} score {m['score']:.3f}"
    )


def _export(
    cfg: Config,
    method: nn.Module,
    path: Path,
    state: TrainState,
    tag: str,
    centre: CenterSet | None = None,
    check: CheckSet | None = None,
) -> Path:
    """The embedder file of ``method`` now; with ``centre``, its domain centre stored in it (trainer/center.py);
    then its similarity tiers, measured on the self-check's held-out originals (trainer/tiers.py)."""
    from lookalike.trainer.export import calibrate_export, export_embedder

    input_size = cfg.export.input_size or cfg.method.image_size
    path = export_embedder(
        without_sync_batchnorm(method.embedder()),
        path,
        input_size=input_size,
        resize_size=cfg.export.resize_size,
        mean=method.default_mean,
        std=method.default_std,
        model_name=f"{method.name}-{backbone_name(cfg)}-{tag}",
        fp16=cfg.export.fp16,
        extra={"method": method.name, "backbone": backbone_name(cfg), "epoch": state.epoch, "step": state.step},
    )
    if centre is not None:
        center_export(path, centre)
    device = next(method.parameters()).device
    calibrate_export(path, check.originals if check is not None else None, seed=cfg.train.seed,
                     device="cuda" if device.type == "cuda" else "cpu")  # fmt: skip
    return path


def _resume_path(cfg: Config, out: Path) -> Path | None:
    mode = cfg.train.resume
    if mode == "never":
        return None
    if mode == "auto":
        last = out / LAST
        return last if last.is_file() else None
    return Path(mode)


def _run_epoch(
    cfg: Config,
    model: nn.Module,
    method: nn.Module,
    loader: DataLoader,
    optimizer: torch.optim.Optimizer,
    scaler: torch.amp.GradScaler | None,
    state: TrainState,
    device: torch.device,
    amp_dtype: torch.dtype | None,
    plan: SchedulePlan,
) -> dict[str, Any]:
    from tqdm import tqdm

    model.train()
    for m in method.embedder().modules():
        if isinstance(m, nn.modules.batchnorm._BatchNorm):
            frozen = m.affine and not any(p.requires_grad for p in m.parameters())  # train.trainable_stages
            if cfg.train.freeze_bn_stats or frozen:
                m.eval()  # keep the pretrained running statistics; the affine weights still train (unless frozen)
    accumulate = cfg.optim.accumulate
    skipped = SkipLog()
    sums: dict[str, float] = {}
    images = 0
    start = time.perf_counter()
    steps_per_epoch = plan.steps_per_epoch
    if plan.total_steps - state.step < steps_per_epoch:  # the last epoch of a step-sized schedule
        steps_per_epoch = max(1, plan.total_steps - state.step)
    bar = tqdm(
        total=steps_per_epoch,
        desc=f"epoch {state.epoch + 1}/{plan.epochs}",
        unit="step",
        disable=not (cfg.train.progress and dist.rank() == 0),
        leave=False,
    )
    batches = iter(loader)
    lr = 0.0
    done = 0
    first_done = start
    for done in range(1, steps_per_epoch + 1):
        if done > 1 and (state.step >= plan.total_steps or _time_up(plan)):  # schedule shortened, or out of time
            done -= 1
            break
        lr = lr_at(
            state.step, total=plan.total_steps, warmup=plan.warmup_steps, base=cfg.optim.lr,
            min_lr=cfg.optim.min_lr, schedule=cfg.optim.schedule,
        )  # fmt: skip
        for group in optimizer.param_groups:
            group["lr"] = lr * group.get("lr_scale", 1.0)
        for micro in range(accumulate):
            batch = next(batches)
            views, bad = batch[0], batch[1]
            kwargs = {"index": batch[2].to(device)} if len(batch) == 3 else {}
            skipped.extend(bad)
            views = [v.to(device, non_blocking=True) for v in views]
            sync = micro == accumulate - 1 or not isinstance(model, nn.parallel.DistributedDataParallel)
            with (
                contextlib.nullcontext() if sync else model.no_sync(),
                torch.autocast(device.type, dtype=amp_dtype or torch.float32, enabled=amp_dtype is not None),
            ):
                outputs = model(views, **kwargs)
                loss = outputs["loss"] / accumulate
            if not torch.isfinite(loss):
                raise FloatingPointError(
                    f"loss is {loss.item()} at step {state.step}; lower optim.lr, set optim.clip_grad, "
                    "or use train.precision=fp32"
                )
            (scaler.scale(loss) if scaler is not None else loss).backward()
            for key, value in outputs.items():
                sums[key] = sums.get(key, 0.0) + float(value.detach()) / accumulate
            images += views[0].shape[0]
        if scaler is not None:
            scaler.unscale_(optimizer)
        if cfg.optim.clip_grad is not None:
            nn.utils.clip_grad_norm_(method.parameters(), cfg.optim.clip_grad)
        if scaler is not None:
            scaler.step(optimizer)
            scaler.update()
        else:
            optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        method.on_after_step(state.step, plan.total_steps)
        state.step += 1
        now = time.perf_counter()
        per_step = (now - start) / done
        if done == 1:
            first_done = now
        if done == min(3, steps_per_epoch) and not plan.fitted:  # steady state, past the loader's start-up
            plan.fitted = True
            measured = (now - first_done) / (done - 1) if done > 1 else per_step
            note = plan.fit_to_budget(state.step, measured * PROBE_MARGIN)  # spare for the epochs' writes
            plan.sync_from_rank0()
            if note is not None:
                _log(note.replace("time budget:", "time budget, measured on the first steps:"))
        bar.update(1)
        eta = _duration(per_step * max(0, plan.total_steps - state.step))
        bar.set_postfix(loss=f"{sums['loss'] / done:.4f}", lr=f"{lr:.2e}", eta=eta)
    bar.close()
    elapsed = time.perf_counter() - start
    steps_per_epoch = max(1, done)

    # Averages over all processes; skipped images and throughput summed.
    keys = sorted(sums)
    totals = torch.tensor([sums[k] for k in keys] + [float(skipped.count), float(images)], dtype=torch.float64)
    dist.all_reduce_sum(totals)
    world = dist.world_size()
    stats: dict[str, Any] = {k: float(totals[i]) / (steps_per_epoch * world) for i, k in enumerate(keys)}
    state.skipped += int(totals[-2])
    stats.update(
        epoch=state.epoch + 1,
        step=state.step + 0,
        steps=steps_per_epoch,
        lr=lr,
        images_per_s=float(totals[-1]) / elapsed,
        seconds=elapsed,
        skipped=int(totals[-2]),
    )
    if skipped.count:
        _log(f"epoch {state.epoch + 1}: {skipped.summary()} (main process; all processes: see the epoch line)")
    return stats


def _duration(seconds: float) -> str:
    seconds = int(seconds)
    return f"{seconds // 3600}:{seconds // 60 % 60:02d}:{seconds % 60:02d}"


def _after_epoch(
    cfg: Config,
    method: nn.Module,
    optimizer: torch.optim.Optimizer,
    scaler: torch.amp.GradScaler | None,
    state: TrainState,
    stats: dict[str, Any],
    out: Path,
    result: TrainResult,
    plan: SchedulePlan,
    check: CheckSet | None,
    centre: CenterSet | None,
    final: bool = False,
) -> float:
    """Main process only: log line, ``last.pth``, and the periodic checkpoint + export + self-check.

    Returns the seconds the periodic part took (the time budget counts it apart from the steps).
    """
    extras = " ".join(f"{k} {v:.4f}" for k, v in stats.items() if k not in _STAT_KEYS)
    eta = _duration(stats["seconds"] / max(1, stats["steps"]) * max(0, plan.total_steps - state.step))
    _log(
        f"epoch {state.epoch}/{plan.epochs} eta {eta} loss {stats['loss']:.4f} {extras} lr {stats['lr']:.3e} "
        f"{stats['images_per_s']:.1f} img/s {stats['seconds']:.1f}s skipped {stats['skipped']}".replace("  ", " ")
    )
    with (out / "log.jsonl").open("a", encoding="utf-8") as fh:
        fh.write(json.dumps(stats) + "\n")
    config = cfg.to_dict()
    save_checkpoint(out / LAST, method=method, optimizer=optimizer, scaler=scaler, state=state, config=config)
    if final or state.epoch % plan.checkpoint_every == 0 or state.epoch == plan.epochs:
        began = time.monotonic()
        save_checkpoint(
            out / epoch_checkpoint_name(state.epoch),
            method=method, optimizer=optimizer, scaler=scaler, state=state, config=config,
        )  # fmt: skip
        path = _export(cfg, method, out / epoch_export_name(state.epoch), state, f"epoch_{state.epoch}", centre,
                       check)  # fmt: skip
        result.exports.append(path)
        _log(f"saved {epoch_checkpoint_name(state.epoch)} and {path.name}")
        if check is not None and result.selfcheck is not None:
            metrics = run_check(path, check)
            best = result.selfcheck.add(state.epoch, state.step, path, metrics)
            start = result.selfcheck.start
            noise = result.selfcheck.noise(result.selfcheck.entries[-1])
            delta = "" if start is None else f" ({metrics['score'] - start['score']:+.3f} vs start, noise ±{noise:.3f})"
            _log(f"self-check epoch {state.epoch}: {_fmt_check(metrics)}{delta}{' best so far' if best else ''}")
        return time.monotonic() - began
    return 0.0


_PRECISION_NAMES = {None: "fp32", torch.bfloat16: "bf16", torch.float16: "fp16"}
_STAT_KEYS = {"loss", "epoch", "step", "steps", "lr", "images_per_s", "seconds", "skipped"}
