"""How the model runs: eager, frozen TorchScript, channels_last, bf16 on CPU; fp16 + pinned memory on CUDA.

Chosen by measurement (``bench/model_exec.py``; README "CPU model execution"). On the 2-core
AVX-512 BF16 machine of issue 11, EfficientNet-Lite0 at 224 px and batch 4 ran about 2x faster
as ``bf16`` than as the file loaded as is (``frozen`` fp32: 1.4x), with cosine >= 0.999 against
fp32 on real photos. ``bf16`` is the TorchScript graph frozen in fp32 (batch norm folded into the
convolutions at full precision), its first quarter of convolutions kept in fp32 and every later
float constant rounded once to bfloat16; channels_last input. All layers in bf16 was 1.5x faster
still but missed 0.999 on ordinary photos. bfloat16 is only fast where the CPU computes it natively
(AVX-512 BF16 or AMX); elsewhere it is emulated and slower, so ``auto`` picks it only there and
``frozen`` fp32 otherwise.

Every mode but ``eager`` is checked once at load time against the eager fp32 output on a probe
batch; below ``MIN_COSINE`` the runner falls back to eager fp32 and logs why, so an unusual model
never serves degraded vectors.
"""

from __future__ import annotations

import copy
import logging
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from lookalike.server.defaults import CPU_EXEC_CHOICES

from lookalike.modelfile import quiet_torchscript

log = logging.getLogger(__name__)

EXEC_CHOICES = CPU_EXEC_CHOICES  # "auto", then every mode (the --cpu-exec setting's choices)
CPU_MODES = tuple(m for m in EXEC_CHOICES if m != "auto")
MIN_COSINE = 0.999
_BF16_FLAGS = ("avx512_bf16", "amx_bf16")


def cpu_flags() -> set[str]:
    """The CPU's feature flags from /proc/cpuinfo (empty where there is none)."""
    try:
        with open("/proc/cpuinfo", encoding="ascii", errors="replace") as fh:
            for line in fh:
                if line.startswith("flags"):
                    return set(line.partition(":")[2].split())
    except OSError:
        pass
    return set()


def native_bf16() -> bool:
    """True where bfloat16 matrix maths runs in hardware (AVX-512 BF16 or AMX), not emulated.

    Read from the CPU alone; to serve without bf16 on such a CPU, the setting is ``--cpu-exec frozen``
    (tests of the fallback patch this function or ``cpu_flags``)."""
    if torch.backends.cpu.get_cpu_capability() not in ("AVX512", "AVX512_BF16", "AMX"):  # e.g. "AVX2", "DEFAULT"
        return False
    return bool(cpu_flags() & set(_BF16_FLAGS))


def resolve_cpu_mode(requested: str) -> str:
    """``auto`` -> the measured best for this CPU; a bf16 mode on a CPU without native bf16 -> ``frozen``."""
    if requested not in EXEC_CHOICES:
        raise ValueError(f"cpu execution must be one of {', '.join(EXEC_CHOICES)}, not {requested!r}")
    bf16 = native_bf16()
    if requested == "auto":
        return "bf16" if bf16 else "frozen"
    if requested.startswith("bf16") and not bf16:
        log.warning("--cpu-exec %s: this CPU has no native bfloat16 (AVX-512 BF16 / AMX); using frozen fp32", requested)
        return "frozen"
    return requested


def _freeze(module: Any) -> Any:
    """Frozen TorchScript: weights become constants, batch norm is folded into convolutions (in fp32)."""
    with quiet_torchscript():
        return torch.jit.freeze(module.eval())


_CONV_KINDS = ("aten::conv2d", "aten::_convolution", "aten::convolution", "aten::linear")
_BFLOAT16 = 15  # c10::ScalarType::BFloat16, as TorchScript graphs spell dtypes
# Convolutions kept in fp32 at the start of the network: the high-resolution early layers, where
# rounding activations to bf16 costs the most accuracy (EfficientNet-Lite0 on the test photos: all
# bf16 gave cosine 0.9987 against fp32, the first quarter in fp32 0.9996+) and bf16 gains the least.
FP32_LEADING_FRACTION = 0.25


def to_mixed_bf16(frozen: Any, fp32_fraction: float = FP32_LEADING_FRACTION) -> int:
    """Make a frozen fp32 graph run its leading convolutions in fp32 and the rest in bf16, in place.

    Freezing already folded batch norm into the convolutions in fp32; every fp32 tensor constant used
    after the split is rounded once to bf16, and every tensor crossing the split is cast once. Returns
    how many convolutions stay fp32. The graph's output is bf16 (the runner widens it).
    """
    graph = frozen.graph
    nodes = list(graph.nodes())
    convs = [i for i, n in enumerate(nodes) if n.kind() in _CONV_KINDS]
    keep = min(len(convs), round(len(convs) * fp32_fraction))
    if keep >= len(convs):
        return keep
    split = nodes[convs[keep]]
    earlier = set(nodes[: convs[keep]])
    graph.setInsertPoint(split)  # new constants and casts go just before the first bf16 convolution
    replaced: dict[Any, Any] = {}
    for node in nodes[convs[keep] :]:
        for i, value in enumerate(list(node.inputs())):
            producer = value.node()
            if producer.kind() == "prim::Constant":
                if not (producer.hasAttribute("value") and producer.kindOf("value") == "t"):
                    continue
                if producer.t("value").dtype != torch.float32:
                    continue
                if value not in replaced:
                    replaced[value] = graph.insertConstant(producer.t("value").to(torch.bfloat16))
            elif producer in earlier or producer.kind() == "prim::Param":
                if value.type().kind() != "TensorType":
                    continue
                if value not in replaced:
                    args = [value, graph.insertConstant(_BFLOAT16), graph.insertConstant(False),
                            graph.insertConstant(False), graph.insertConstant(None)]  # fmt: skip
                    cast = graph.create("aten::to", args)
                    cast.insertBefore(split)
                    cast.output().setType(value.type())
                    replaced[value] = cast.output()
            else:
                continue
            node.replaceInput(i, replaced[value])
    torch._C._jit_pass_lint(graph)
    return keep


@dataclass
class Runner:
    """A prepared model: ``run(batch)`` maps float32 ``[N, 3, S, S]`` (numpy) to a float32 ``[N, D]`` tensor."""

    mode: str
    device: str
    fn: Callable[[np.ndarray], torch.Tensor]

    def run(self, batch: np.ndarray) -> torch.Tensor:
        with torch.inference_mode():
            y = self.fn(batch)
        if isinstance(y, (tuple, list)):
            y = y[0]
        return y.float().reshape(len(batch), -1)


def _first(y: Any) -> torch.Tensor:
    return y[0] if isinstance(y, (tuple, list)) else y


def make_cpu_runner(module: Any, mode: str) -> Runner:
    """Prepare ``module`` (an eval-mode fp32 ScriptModule or nn.Module) for one CPU mode."""
    if mode == "eager":
        return Runner(mode, "cpu", lambda b: _first(module(torch.from_numpy(b))))
    if mode == "channels_last":
        return Runner(mode, "cpu", lambda b: _first(module(torch.from_numpy(b).to(memory_format=torch.channels_last))))
    if mode == "bf16_autocast":

        def autocast(b: np.ndarray) -> torch.Tensor:
            with torch.autocast("cpu", dtype=torch.bfloat16):
                return _first(module(torch.from_numpy(b).to(memory_format=torch.channels_last)))

        return Runner(mode, "cpu", autocast)
    if not isinstance(module, torch.jit.ScriptModule):
        module = torch.jit.script(module)
    if mode == "frozen":
        with quiet_torchscript():
            frozen = torch.jit.optimize_for_inference(_freeze(module))
        return Runner(mode, "cpu", lambda b: _first(frozen(torch.from_numpy(b))))
    if mode in ("bf16", "bf16_all"):  # bf16_all: every layer in bf16 (for bench/model_exec.py; fails numerics)
        mixed = _freeze(module)
        to_mixed_bf16(mixed, FP32_LEADING_FRACTION if mode == "bf16" else 0.0)
        return Runner(mode, "cpu", lambda b: _first(mixed(torch.from_numpy(b).to(memory_format=torch.channels_last))))
    raise ValueError(f"unknown CPU execution mode {mode!r}; one of {', '.join(CPU_MODES)}")


def make_cuda_runner(module: Any, device: str, half: bool = True) -> Runner:
    """fp16 weights and pinned-memory, non-blocking host-to-device copies (untested without a GPU)."""
    module = module.to(device)
    dtype = torch.float16 if half else torch.float32
    if half:
        module = module.half()

    def run(b: np.ndarray) -> torch.Tensor:
        x = torch.from_numpy(b).pin_memory().to(device, dtype, non_blocking=True)
        return _first(module(x)).float().cpu()

    return Runner("fp16" if half else "fp32", device, run)


def probe_batch(size: int, n: int = 4, seed: int = 0) -> np.ndarray:
    """Smooth, photo-like inputs (gradients plus texture) already normalised: for load-time numerics checks."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float32) / size
    out = np.empty((n, 3, size, size), np.float32)
    for i in range(n):
        for c in range(3):
            a, b, f = rng.uniform(-1, 1, 3)
            out[i, c] = (
                a * xx + b * yy + 0.3 * np.sin((6 + 10 * f) * (xx + yy)) + 0.05 * rng.standard_normal((size, size))
            )
    return out


def cosine_rows(a: torch.Tensor, b: torch.Tensor) -> np.ndarray:
    a, b = a.float(), b.float()
    return torch.nn.functional.cosine_similarity(a, b, dim=1).numpy()


def prepare(module: Any, device: str, cpu_exec: str, input_size: int) -> Runner:
    """The runner the embedder uses: the requested mode, checked against eager fp32 on a probe batch.

    On CUDA: fp16 with pinned-memory copies (untested here: no GPU on the benchmark machine).
    """
    if device.startswith("cuda"):
        module = module.to(device).float()
        reference = make_cuda_runner(module, device, half=False)

        def candidate() -> Runner:
            return make_cuda_runner(copy.deepcopy(module), device, half=True)  # .half() would change the reference
    else:
        module = module.float()  # an fp16 file's half convolutions are slow or missing on CPU
        reference = make_cpu_runner(module, "eager")
        mode = resolve_cpu_mode(cpu_exec)
        if mode == "eager":
            log.info("model execution: eager fp32 on cpu")
            return reference

        def candidate() -> Runner:
            return make_cpu_runner(module, mode)

    batch = probe_batch(input_size)
    try:
        runner = candidate()
        worst = float(cosine_rows(runner.run(batch), reference.run(batch)).min())
    except Exception as exc:  # a mode this model cannot run in (mixed dtypes inside it, ...)
        log.warning("model execution: the fast mode failed on a probe batch (%s); using eager fp32", exc)
        return reference
    if not worst >= MIN_COSINE:
        log.warning("model execution %s: cosine %.5f against fp32 on a probe batch, under %s; using eager fp32",
                    runner.mode, worst, MIN_COSINE)  # fmt: skip
        return reference
    log.info("model execution: %s on %s (probe cosine against fp32 %.5f)", runner.mode, device, worst)
    return runner
