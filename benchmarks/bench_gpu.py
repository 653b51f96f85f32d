#!/usr/bin/env python
"""actzip on a GPU: codec speed and bound, CPU<->GPU cross-decoding, GPU peers, training.

Four parts, each printed as a markdown table as soon as it is measured (and written to
``--out``, rewritten after every table, so that what was measured survives a kill):

1. **Codec.** Activation-like tensors made on the device, deterministically: Gaussian
   noise at half resolution, upsampled (bilinear) so that neighbours are correlated,
   through a random 3x3 convolution and a per-channel batch-norm-like normalization
   ("dense"), and the ReLU of that ("post-ReLU"); float32 and bfloat16 (cast from the
   float32 values), 64 MiB and 1 GiB each. Each is compressed at relative bounds 1e-2
   and 1e-3 (``mode="rel"``: a fraction of the tensor's value range, max - min). Columns:
   ratio, compress and decompress GB/s (raw bytes / wall seconds of one call, median),
   ``copy_`` GB/s of the same tensor (device-to-device, the ceiling), max error / bound,
   zeros kept exact, and the cross-decoding checks below.
2. **Cross-decoding.** The GPU stream decoded on the CPU (``c.to("cpu")`` and
   ``CompressedTensor.from_bytes(c.to_bytes())``) must give the values the GPU decoded,
   bit for bit; the stream the CPU makes from the same tensor, moved to the GPU
   (``c.to("cuda")``), must decode there to the values the CPU decoded. Whether the two
   streams are byte-identical is reported too (the format promises it: a fixed chunk
   size, never the thread count or the device, decides the bytes).
3. **Peers on the same GPU**, side by side on the same tensors: ``torch copy_`` (the
   ceiling), CuPy's ``cupy.asarray(x).copy()`` (the trivial baseline), nvCOMP's lossless
   codecs (LZ4, Snappy, GDeflate, Zstd, ANS, Cascaded, Bitcomp) and Bitcomp's lossy mode
   at the same absolute bounds as actzip (``delta = 2 x bound``: nvCOMP documents an
   error of at most delta/2 after rounding delta down to a power of two; fp16/fp32/fp64
   only, so not on bfloat16). Every peer is optional: one that is missing or fails gets
   a line saying why and the run goes on.
4. **Training step**: a ResNet-50 (torchvision's if importable, else the bottleneck
   ResNet-50 defined here) at batch 128 on 224x224 random images with SGD, and a GPT-like
   transformer (6 blocks, d=512, 8 heads, sequence 512, batch 32, vocabulary 8192,
   ``scaled_dot_product_attention``, AdamW) on random tokens; each as baseline, with
   actzip (``compressed_activations(model, schedule=1e-2, mode="rel")``) and with
   ``torch.utils.checkpoint`` around each stage / block (``use_reentrant=False``). Step
   time: median wall time of the measured steps after warm-up (synchronize +
   perf_counter); memory: ``torch.cuda.max_memory_allocated`` over the measured steps,
   reset before them, and that peak minus what was allocated before the first measured
   step (weights and optimizer state).

Timing: every GPU call is timed as wall time between two ``torch.cuda.synchronize()``
calls (device-wide, so that work on other streams, nvCOMP's or CuPy's, is counted);
copies are timed as a burst of calls between two synchronizations, since one 64 MiB copy
takes less time than a synchronization. GB/s are 1e9 bytes of raw (uncompressed) data per
second.

The run exits 1 when a check fails (a bound exceeded, a cross-decoding mismatch, actzip
raising), 2 when it cannot run as asked (``--device cuda`` without a GPU or without
actzip's CUDA backend), else 0. ``--budget-s`` bounds the whole run: a part that would
start after its share of the budget is skipped with a note.

Usage::

    python benchmarks/bench_gpu.py --device cuda --out out/gpu_check.md
    PYTHONPATH=python python benchmarks/bench_gpu.py --device cpu --quick   # a smoke check
"""

from __future__ import annotations

import argparse
import contextlib
import datetime
import gc
import importlib.metadata
import math
import os
import platform
import statistics
import sys
import time
import traceback
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional, Tuple

import torch
import torch.nn.functional as F
from torch import nn

try:
    import actzip
except ImportError:  # run from a checkout without PYTHONPATH=python
    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "python"))
    import actzip

RELATIVE_BOUNDS = (1e-2, 1e-3)
GIB = 1 << 30
MIB = 1 << 20
_BITS = {torch.float32: torch.int32, torch.float16: torch.int16, torch.bfloat16: torch.int16}
_SHORT_DTYPE = {torch.float32: "f32", torch.float16: "f16", torch.bfloat16: "bf16"}
_EARLIER = "failed on an earlier tensor of this dtype: "


# ---------------------------------------------------------------------------------------
# Time, budget and the report
# ---------------------------------------------------------------------------------------

def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def timed(function: Callable[[], Any], reps: int, device: torch.device, warmup: int = 1) -> Tuple[Any, float]:
    """Run ``function`` ``warmup`` times untimed, then ``reps`` times, each between two
    device synchronizations; return the last result and the median wall seconds."""
    result = None
    for _ in range(warmup):
        result = None  # free the previous output before the next call
        result = function()
    seconds = []
    for _ in range(max(1, reps)):
        result = None
        synchronize(device)
        start = time.perf_counter()
        result = function()
        synchronize(device)
        seconds.append(time.perf_counter() - start)
    return result, statistics.median(seconds)


def timed_burst(function: Callable[[], Any], calls: int, device: torch.device) -> float:
    """Mean wall seconds of one call over a burst of ``calls`` calls between two
    synchronizations: for operations shorter than a synchronization (a copy)."""
    function()
    synchronize(device)
    start = time.perf_counter()
    for _ in range(calls):
        function()
    synchronize(device)
    return (time.perf_counter() - start) / calls


class Budget:
    """A wall-clock budget for the run; parts ask for a share of what is left."""

    def __init__(self, seconds: Optional[float]) -> None:
        self.start = time.perf_counter()
        self.end = math.inf if not seconds else self.start + seconds

    def left(self) -> float:
        return self.end - time.perf_counter()

    def share(self, fraction: float) -> float:
        """A deadline (perf_counter time) ``fraction`` of the remaining budget from now."""
        if math.isinf(self.end):
            return math.inf
        return time.perf_counter() + max(0.0, self.left()) * fraction

    def elapsed(self) -> float:
        return time.perf_counter() - self.start


class Report:
    """Markdown sections printed as they come and written, whole, to ``path`` each time."""

    def __init__(self, path: Optional[str], append: bool) -> None:
        self.path = Path(path) if path else None
        self.prefix = ""
        if self.path is not None:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            if append and self.path.exists():
                self.prefix = self.path.read_text()
                if self.prefix and not self.prefix.endswith("\n\n"):
                    self.prefix += "\n" if self.prefix.endswith("\n") else "\n\n"
        self.sections: List[str] = []

    def add(self, text: str) -> None:
        print(text + "\n", flush=True)
        self.sections.append(text)
        self.flush()

    def flush(self) -> None:
        if self.path is not None:
            self.path.write_text(self.prefix + "\n\n".join(self.sections) + "\n")


def log(message: str) -> None:
    print(message, flush=True)


def markdown_table(header: List[str], rows: List[List[str]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    lines += ["| " + " | ".join(row) + " |" for row in rows]
    return "\n".join(lines)


def fmt(value: Optional[float], digits: int = 3) -> str:
    if value is None or not math.isfinite(value):
        return "–"
    if abs(value) >= 100:
        return f"{value:.0f}"
    return f"{value:.{digits}g}"


def fmt_bytes(n: Optional[float]) -> str:
    if n is None:
        return "–"
    if n >= GIB:
        return f"{n / GIB:.2f} GiB"
    if n >= MIB:
        return f"{n / MIB:.1f} MiB"
    return f"{n / 1024:.1f} KiB"


def short_error(exc: BaseException, limit: int = 120) -> str:
    text = f"{type(exc).__name__}: {exc}".replace("\n", " ").replace("|", "/")
    return text if len(text) <= limit else text[: limit - 1] + "…"


# ---------------------------------------------------------------------------------------
# Activation-like tensors
# ---------------------------------------------------------------------------------------

@dataclass
class TensorSpec:
    kind: str            # "post-ReLU" or "dense"
    dtype: torch.dtype
    shape: Tuple[int, int, int, int]  # N, C, H, W
    size: str            # "small" (64 MiB) or "large" (1 GiB)

    @property
    def nbytes(self) -> int:
        return math.prod(self.shape) * self.dtype.itemsize

    @property
    def label(self) -> str:
        size = f"{self.nbytes // GIB} GiB" if self.nbytes >= GIB else (
            f"{self.nbytes // MIB} MiB" if self.nbytes >= MIB else f"{self.nbytes // 1024} KiB")
        return f"{_SHORT_DTYPE[self.dtype]} {self.kind} {size}"


def tensor_specs(quick: bool) -> List[TensorSpec]:
    """64 MiB and 1 GiB (quick: 128 KiB and 1 MiB), float32 and bfloat16, both kinds; the
    bfloat16 tensors have twice the batch, so that both dtypes have the same bytes."""
    channels, height, width = (16, 32, 32) if quick else (256, 64, 64)
    per_sample = channels * height * width * 4  # float32 bytes
    specs = []
    for size, total in zip(("small", "large"), (128 << 10, 1 << 20) if quick else (64 * MIB, GIB)):
        for dtype in (torch.float32, torch.bfloat16):
            batch = total // per_sample * (4 // dtype.itemsize)
            for kind in ("post-ReLU", "dense"):
                specs.append(TensorSpec(kind, dtype, (batch, channels, height, width), size))
    return specs


def make_activation(spec: TensorSpec, device: torch.device, seed: int) -> torch.Tensor:
    """Conv-like activations: smooth noise -> random 3x3 conv -> per-channel normalization
    (a batch norm with random scale and shift) [-> ReLU], made slice by slice on ``device``."""
    batch, channels, height, width = spec.shape
    in_channels = 8
    generator = torch.Generator(device=device).manual_seed(seed)
    weight = torch.randn(channels, in_channels, 3, 3, generator=generator, device=device) / math.sqrt(in_channels * 9)
    scale = 0.5 + torch.rand(channels, generator=generator, device=device)
    shift = 0.4 * torch.randn(channels, generator=generator, device=device)
    out = torch.empty(spec.shape, dtype=spec.dtype, device=device)
    slice_batch = max(1, (256 * MIB) // (channels * height * width * 4))
    mean = std = None
    for start in range(0, batch, slice_batch):
        count = min(slice_batch, batch - start)
        noise = torch.randn(count, in_channels, max(1, height // 2), max(1, width // 2),
                            generator=generator, device=device)
        smooth = F.interpolate(noise, size=(height, width), mode="bilinear", align_corners=False)
        y = F.conv2d(smooth, weight, padding=1)
        if mean is None:  # the first slice's statistics normalize every slice
            mean = y.mean(dim=(0, 2, 3), keepdim=True)
            std = y.std(dim=(0, 2, 3), keepdim=True) + 1e-5
        y = (y - mean) / std * scale.view(1, -1, 1, 1) + shift.view(1, -1, 1, 1)
        if spec.kind == "post-ReLU":
            y = torch.relu(y)
        out[start:start + count].copy_(y)
        del noise, smooth, y
    return out


def value_range(x: torch.Tensor) -> float:
    return float(x.max().double() - x.min().double())


def max_abs_error(x: torch.Tensor, y: torch.Tensor) -> float:
    """max |x - y| in float64, in slices so that a 1 GiB tensor needs no 2 GiB temporary."""
    flat_x, flat_y = x.reshape(-1), y.reshape(-1).to(x.device)
    step = 32 * MIB
    worst = torch.zeros((), dtype=torch.float64, device=x.device)
    for start in range(0, flat_x.numel(), step):
        difference = (flat_x[start:start + step].double() - flat_y[start:start + step].double()).abs().max()
        worst = torch.maximum(worst, difference)
    return float(worst)


def same_bits(a: torch.Tensor, b: torch.Tensor) -> bool:
    """Bit-for-bit equal values (and shape and dtype); compared on ``a``'s device."""
    if a.shape != b.shape or a.dtype != b.dtype:
        return False
    bits = _BITS.get(a.dtype)
    b = b.to(a.device)
    if bits is None:
        return torch.equal(a, b)
    return torch.equal(a.contiguous().view(bits), b.contiguous().view(bits))


def zeros_kept(x: torch.Tensor, y: torch.Tensor) -> Optional[float]:
    zero = x == 0
    count = int(zero.sum())
    if count == 0:
        return None
    return int((zero & (y.to(x.device) == 0)).sum()) / count


# ---------------------------------------------------------------------------------------
# actzip: speed, bound, cross-decoding
# ---------------------------------------------------------------------------------------

def move_stream(c: "actzip.CompressedTensor", device: torch.device) -> "actzip.CompressedTensor":
    """``c.to(device)``; before that method existed, the CPU copy via to_bytes/from_bytes."""
    if hasattr(c, "to"):
        return c.to(device)
    if torch.device(device).type == "cpu":
        return actzip.CompressedTensor.from_bytes(c.to_bytes())
    raise RuntimeError("CompressedTensor.to is missing: a stream cannot be moved to the GPU")


@dataclass
class CodecRow:
    spec: TensorSpec
    relative_bound: float
    error_bound: Optional[float] = None
    stream_bytes: Optional[int] = None
    compress_s: Optional[float] = None
    decompress_s: Optional[float] = None
    copy_s: Optional[float] = None
    max_error: Optional[float] = None
    zeros_kept: Optional[float] = None
    device_on_cpu: Optional[str] = None   # "pass" / "FAIL: why" / None (not run)
    cpu_on_device: Optional[str] = None
    same_bytes: Optional[bool] = None
    error: Optional[str] = None

    @property
    def ratio(self) -> Optional[float]:
        return None if not self.stream_bytes else self.spec.nbytes / self.stream_bytes


def cross_decode(x_cpu: torch.Tensor, c_device, decoded_device: torch.Tensor, relative_bound: float,
                 device: torch.device, problems: List[str], name: str) -> Tuple[str, str, Optional[bool]]:
    """The two cross-decoding checks and whether both backends wrote the same bytes.

    ``x_cpu`` is the tensor copied to the CPU, ``c_device`` its stream made on ``device``
    and ``decoded_device`` what ``device`` decoded from it."""
    # The device's stream, decoded on the CPU (two ways: moved, and through bytes).
    try:
        reasons = []
        via_to = move_stream(c_device, torch.device("cpu"))
        decoded_cpu = actzip.decompress(via_to)
        if decoded_cpu.device.type != "cpu":
            reasons.append(f"decompress(c.to('cpu')) returned a {decoded_cpu.device.type} tensor")
        elif not same_bits(decoded_cpu, decoded_device.cpu()):
            reasons.append("c.to('cpu') decodes to other values")
        via_bytes = actzip.decompress(actzip.CompressedTensor.from_bytes(c_device.to_bytes()))
        if not same_bits(via_bytes.cpu(), decoded_device.cpu()):
            reasons.append("from_bytes(to_bytes()) decodes to other values")
        device_on_cpu = "pass" if not reasons else "FAIL: " + "; ".join(reasons)
        del via_to, decoded_cpu, via_bytes
    except Exception as exc:  # noqa: BLE001 - reported, the run goes on
        device_on_cpu = "FAIL: " + short_error(exc)
    # The CPU's stream of the same tensor, decoded on the device.
    same_bytes = None
    try:
        c_cpu = actzip.compress(x_cpu, relative_bound, mode="rel")
        decoded_cpu = actzip.decompress(c_cpu)
        moved = move_stream(c_cpu, device)
        decoded_there = actzip.decompress(moved)
        if decoded_there.device.type != device.type:
            cpu_on_device = f"FAIL: decoded on {decoded_there.device.type}, not {device.type}"
        elif not same_bits(decoded_there.cpu(), decoded_cpu):
            cpu_on_device = "FAIL: decodes to other values"
        else:
            cpu_on_device = "pass"
        stream_cpu, stream_device = c_cpu.data, c_device.data.cpu()
        same_bytes = stream_cpu.numel() == stream_device.numel() and torch.equal(stream_cpu, stream_device)
        del c_cpu, decoded_cpu, moved, decoded_there
    except Exception as exc:  # noqa: BLE001
        cpu_on_device = "FAIL: " + short_error(exc)
    for what, verdict in (("GPU stream decoded on the CPU", device_on_cpu),
                          ("CPU stream decoded on the GPU", cpu_on_device)):
        if verdict != "pass":
            problems.append(f"{name}: {what}: {verdict}")
    return device_on_cpu, cpu_on_device, same_bytes


def measure_actzip(x: torch.Tensor, x_cpu: Optional[torch.Tensor], spec: TensorSpec, relative_bound: float,
                   reps: int, device: torch.device, copy_s: float, problems: List[str]) -> CodecRow:
    """Speed, ratio and bound of actzip on ``x``; the cross-decoding checks when ``x_cpu``
    (``x`` on the CPU) is given."""
    row = CodecRow(spec, relative_bound, copy_s=copy_s)
    name = f"actzip {spec.label} rel {relative_bound:g}"
    try:
        c, row.compress_s = timed(lambda: actzip.compress(x, relative_bound, mode="rel"), reps, device)
        decoded, row.decompress_s = timed(lambda: actzip.decompress(c), reps, device)
    except Exception as exc:  # noqa: BLE001
        row.error = short_error(exc)
        problems.append(f"{name}: {short_error(exc, 400)}")
        return row
    row.error_bound, row.stream_bytes = c.error_bound, c.nbytes
    if c.data.device.type != device.type:
        problems.append(f"{name}: the stream is on {c.data.device.type}, not on {device.type}")
    if decoded.device != x.device or decoded.dtype != x.dtype or decoded.shape != x.shape:
        problems.append(f"{name}: decoded {decoded.dtype}{tuple(decoded.shape)} on {decoded.device}, "
                        f"expected {x.dtype}{tuple(x.shape)} on {x.device}")
    else:
        row.max_error = max_abs_error(x, decoded)
        row.zeros_kept = zeros_kept(x, decoded)
        if not row.max_error <= c.error_bound:
            problems.append(f"{name}: max error {row.max_error:.6g} > bound {c.error_bound:.6g}")
        if row.zeros_kept is not None and row.zeros_kept < 1:
            problems.append(f"{name}: {100 * (1 - row.zeros_kept):.3f}% of exact zeros did not decode as zero")
        if x_cpu is not None:
            row.device_on_cpu, row.cpu_on_device, row.same_bytes = cross_decode(
                x_cpu, c, decoded, relative_bound, device, problems, name)
    return row


def codec_table(rows: List[CodecRow], device: torch.device) -> str:
    other = "GPU" if device.type == "cuda" else device.type
    header = ["tensor", "rel. bound", "ratio", "compress GB/s", "decompress GB/s", "copy_ GB/s",
              "max err / bound", "zeros kept", f"{other} stream → CPU decode", f"CPU stream → {other} decode",
              "same bytes"]
    table_rows = []
    for r in rows:
        gbs = (lambda s: fmt(r.spec.nbytes / s / 1e9) if s else "–")
        if r.error:
            table_rows.append([r.spec.label, f"{r.relative_bound:g}", f"error: {r.error}"] + ["–"] * 8)
            continue
        table_rows.append([
            r.spec.label, f"{r.relative_bound:g}", fmt(r.ratio), gbs(r.compress_s), gbs(r.decompress_s),
            gbs(r.copy_s),
            "–" if r.max_error is None or not r.error_bound else f"{r.max_error / r.error_bound:.4f}",
            "–" if r.zeros_kept is None else f"{100 * r.zeros_kept:.2f}%",
            r.device_on_cpu or "not run", r.cpu_on_device or "not run",
            "–" if r.same_bytes is None else ("yes" if r.same_bytes else "NO"),
        ])
    return markdown_table(header, table_rows)


# ---------------------------------------------------------------------------------------
# Peers on the same device
# ---------------------------------------------------------------------------------------

@dataclass
class PeerResult:
    method: str
    spec: TensorSpec
    stream_bytes: Optional[int] = None
    compress_s: Optional[float] = None
    decompress_s: Optional[float] = None
    fidelity: str = "–"   # "exact", "NOT EXACT", or max error / bound
    note: Optional[str] = None

    @property
    def ratio(self) -> Optional[float]:
        return None if not self.stream_bytes else self.spec.nbytes / self.stream_bytes


class Peer:
    """One peer method: ``run(x, bound) -> PeerResult``. ``unavailable`` says why it is skipped."""

    name = ""
    unavailable: Optional[str] = None

    def run(self, x: torch.Tensor, spec: TensorSpec, error_bound: float, reps: int,
            device: torch.device) -> PeerResult:
        raise NotImplementedError

    def release(self) -> None:
        """Hands cached device memory back, once ``run``'s buffers are gone."""


def _flat_view(x: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    return x.reshape(-1).view(dtype)


class CupyCopy(Peer):
    """``cupy.asarray(x).copy()`` and the same back: what a codec must beat to be worth it."""

    name = "CuPy asarray().copy()"

    def __init__(self, device: torch.device) -> None:
        self.cupy = None
        if device.type != "cuda":
            self.unavailable = "no GPU"
            return
        try:
            import cupy
            self.cupy = cupy
        except Exception as exc:  # noqa: BLE001 - ImportError, or a CUDA mismatch on import
            self.unavailable = f"CuPy not importable ({short_error(exc)})"

    def run(self, x, spec, error_bound, reps, device):
        cupy = self.cupy
        # CuPy has no bfloat16: the bits travel as int16, which a copy does not mind.
        source = cupy.asarray(_flat_view(x, _BITS[x.dtype]))
        copied, compress_s = timed(lambda: cupy.asarray(source).copy(), reps, device)
        back, decompress_s = timed(lambda: cupy.asarray(copied).copy(), reps, device)
        restored = torch.as_tensor(back, device=device).view(x.dtype).reshape(x.shape)
        return PeerResult(self.name, spec, int(copied.nbytes), compress_s, decompress_s,
                          "exact" if same_bits(restored, x) else "NOT EXACT")

    def release(self) -> None:
        self.cupy.get_default_memory_pool().free_all_blocks()


def _nvcomp_to_torch(array, device: torch.device) -> torch.Tensor:
    try:
        return torch.from_dlpack(array)
    except Exception:  # noqa: BLE001 - older DLPack protocol: go through the CUDA array interface
        return torch.as_tensor(array, device=device)


def _first_that_runs(calls: List[Tuple[str, Callable[[], Any]]], reps: int, device: torch.device,
                     notes: List[str]) -> Tuple[Any, float]:
    """``timed`` of the first of the (label, function) pairs that does not raise; each one
    that raised is noted. Raises the last error if none runs."""
    error: Optional[BaseException] = None
    for label, function in calls:
        try:
            return timed(function, reps, device)
        except Exception as exc:  # noqa: BLE001 - the next form of the call is tried
            notes.append(f"{label} raised {short_error(exc, 80)}")
            error = exc
    assert error is not None
    raise error


class Nvcomp(Peer):
    """One nvCOMP codec through its Python API (``nvidia.nvcomp.Codec``), on torch's stream.

    ``typed`` codecs get the elements as integers (Cascaded) or floats (Bitcomp), the
    others the raw bytes. ``lossy_fraction`` (Bitcomp only) makes it the lossy mode with
    ``delta = 2 x error_bound``: nvCOMP documents a maximum error of delta/2 with delta
    rounded down to a power of two, so the bound holds."""

    def __init__(self, nvcomp, algorithm: str, device: torch.device, *, typed: bool = False,
                 lossy: bool = False, relative_bound: Optional[float] = None,
                 unavailable: Optional[str] = None) -> None:
        self.nvcomp = nvcomp
        self.algorithm = algorithm
        self.typed = typed
        self.lossy = lossy
        self.relative_bound = relative_bound
        self.name = f"nvCOMP {algorithm}" + (f" lossy rel {relative_bound:g}" if lossy else "")
        self.unavailable = unavailable
        self.device = device

    def _element_view(self, x: torch.Tensor) -> Tuple[torch.Tensor, str]:
        """The flat tensor handed to nvCOMP and its array-protocol type string."""
        if self.lossy:
            if x.dtype != torch.float32 and x.dtype != torch.float16:
                raise TypeError("Bitcomp's lossy mode takes fp16/fp32/fp64 data, not bfloat16")
            return x.reshape(-1), "<f4" if x.dtype == torch.float32 else "<f2"
        if not self.typed:
            return _flat_view(x, torch.uint8), "|u1"
        if self.algorithm == "Bitcomp" and x.dtype == torch.float32:
            return x.reshape(-1), "<f4"
        # Cascaded takes integer types only; a bfloat16 is coded as its 16 bits.
        bits = _BITS[x.dtype]
        return _flat_view(x, bits), "<i4" if bits == torch.int32 else "<i2"

    def _codec(self, data_type: str, error_bound: float):
        options: Dict[str, Any] = {"algorithm": self.algorithm}
        if self.device.type == "cuda":  # torch's device and stream, so that the work is ordered with torch's
            options["device_id"] = self.device.index if self.device.index is not None else torch.cuda.current_device()
            options["cuda_stream"] = torch.cuda.current_stream(self.device).cuda_stream
        if self.typed or self.lossy:
            options["data_type"] = data_type
        if self.lossy:
            options["mode"] = self.nvcomp.BitcompMode.BITCOMP_LOSSY_FP_TO_SIGNED
            options["delta"] = 2.0 * error_bound
        return self.nvcomp.Codec(**options)

    def run(self, x, spec, error_bound, reps, device):
        flat, data_type = self._element_view(x)
        codec = self._codec(data_type, error_bound)
        source = self.nvcomp.as_array(flat)
        notes: List[str] = []
        # Configurations made once, outside the timing, as the Python API recommends for
        # repeated calls (they spare a configure step and a synchronization per call); the
        # plain call is the fallback.
        encoders = [("encode", lambda: codec.encode(source))]
        with contextlib.suppress(Exception):
            compress_config = codec.compression_config(flat.numel() * flat.element_size())
            encoders.insert(0, ("encode(compression_config=)",
                                lambda: codec.encode(source, compression_config=compress_config)))
        encoded, compress_s = _first_that_runs(encoders, reps, device, notes)
        stream_bytes = int(encoded.buffer_size)
        decoders = [("decode", lambda: codec.decode(encoded, data_type=data_type))]
        with contextlib.suppress(Exception):
            decompress_config = codec.decompression_config(encoded)
            decoders.insert(0, ("decode(decompression_config=)", lambda: codec.decode(
                encoded, data_type=data_type, decompression_config=decompress_config)))
        decoded_array, decompress_s = _first_that_runs(decoders, reps, device, notes)
        decoded = _nvcomp_to_torch(decoded_array, device).reshape(-1)
        if decoded.numel() * decoded.element_size() != flat.numel() * flat.element_size():
            fidelity = f"NOT EXACT (decoded {decoded.numel() * decoded.element_size()} bytes)"
        elif self.lossy:
            fidelity = f"{max_abs_error(flat, decoded.view(flat.dtype)) / error_bound:.4f}"
        else:
            fidelity = "exact" if torch.equal(decoded.view(torch.uint8), flat.view(torch.uint8)) else "NOT EXACT"
        return PeerResult(self.name, spec, stream_bytes, compress_s, decompress_s, fidelity,
                          "; ".join(notes) or None)


def make_peers(device: torch.device) -> Tuple[List[Peer], List[str], Dict[str, str]]:
    """The peers, notes about missing ones, and the versions found."""
    peers: List[Peer] = [CupyCopy(device)]
    versions: Dict[str, str] = {}
    notes: List[str] = []
    if peers[0].cupy is not None:
        versions["CuPy"] = peers[0].cupy.__version__
    nvcomp, why = None, None
    if device.type != "cuda":
        why = "no GPU"
    else:
        try:
            from nvidia import nvcomp
            versions["nvCOMP"] = f"{nvcomp.__version__} (CUDA {nvcomp.__cuda_version__})"
        except Exception as exc:  # noqa: BLE001
            why = ("not installed (pip package nvidia-nvcomp-cu13; gpu_check.sh installs it from .whl/)"
                   if isinstance(exc, ImportError) else f"import failed: {short_error(exc)}")
    for algorithm, typed in (("LZ4", False), ("Snappy", False), ("GDeflate", False), ("Zstd", False),
                             ("ANS", False), ("Cascaded", True), ("Bitcomp", True)):
        peers.append(Nvcomp(nvcomp, algorithm, device, typed=typed, unavailable=why))
    for relative_bound in RELATIVE_BOUNDS:
        peers.append(Nvcomp(nvcomp, "Bitcomp", device, lossy=True, relative_bound=relative_bound, unavailable=why))
    if why:
        notes.append(f"nvCOMP: {why}")
    if peers[0].unavailable:
        notes.append(f"CuPy: {peers[0].unavailable}")
    return peers, notes, versions


def grouped_notes(results: List[PeerResult]) -> List[str]:
    """One line per peer, dtype and reason, however many tensors it concerns."""
    groups: Dict[Tuple[str, str, str], List[str]] = {}
    for r in results:
        if r.note:
            reason = r.note.replace(_EARLIER, "")
            groups.setdefault((r.method, _SHORT_DTYPE[r.spec.dtype], reason), []).append(r.spec.label)
    return [f"- {method}, {dtype} ({len(labels)} tensor{'s' if len(labels) > 1 else ''}): {reason}"
            for (method, dtype, reason), labels in groups.items()]


def peer_tables(specs: List[TensorSpec], copy_rows: Dict[str, float], codec_rows: List[CodecRow],
                results: List[PeerResult], peers: List[Peer]) -> str:
    """Methods down, tensors across: ratio, compress and decompress GB/s, fidelity."""
    labels = [spec.label for spec in specs]
    cell: Dict[Tuple[str, str], PeerResult] = {(r.method, r.spec.label): r for r in results}
    methods = ["torch copy_ (ceiling)"] + [peer.name for peer in peers] + [
        f"actzip rel {b:g}" for b in RELATIVE_BOUNDS]
    for spec in specs:
        if spec.label in copy_rows:
            seconds = copy_rows[spec.label]
            cell[("torch copy_ (ceiling)", spec.label)] = PeerResult(
                "torch copy_ (ceiling)", spec, spec.nbytes, seconds, seconds, "exact")
    for row in codec_rows:
        if row.error is None:
            fidelity = "–" if row.max_error is None or not row.error_bound else f"{row.max_error / row.error_bound:.4f}"
            cell[(f"actzip rel {row.relative_bound:g}", row.spec.label)] = PeerResult(
                f"actzip rel {row.relative_bound:g}", row.spec, row.stream_bytes, row.compress_s,
                row.decompress_s, fidelity)

    def matrix(title: str, value: Callable[[PeerResult], str]) -> str:
        rows = []
        for method in methods:
            line = [method]
            for spec, label in zip(specs, labels):
                result = cell.get((method, label))
                line.append("–" if result is None else (value(result) if result.note is None or
                                                         result.stream_bytes else "skip"))
            rows.append(line)
        return f"#### {title}\n\n" + markdown_table(["method"] + labels, rows)

    def gbs(seconds_of: Callable[[PeerResult], Optional[float]]) -> Callable[[PeerResult], str]:
        return lambda r: fmt(r.spec.nbytes / seconds_of(r) / 1e9) if seconds_of(r) else "–"

    return "\n\n".join([
        matrix("Compression ratio (raw bytes / stream bytes)", lambda r: fmt(r.ratio)),
        matrix("Compress GB/s (raw bytes / wall seconds, median)", gbs(lambda r: r.compress_s)),
        matrix("Decompress GB/s", gbs(lambda r: r.decompress_s)),
        matrix("Fidelity (lossless: exact; lossy: max error / bound, must be ≤ 1)", lambda r: r.fidelity),
    ])


# ---------------------------------------------------------------------------------------
# Training step
# ---------------------------------------------------------------------------------------

class Bottleneck(nn.Module):
    """ResNet-50's block: 1x1 reduce, 3x3 (stride here), 1x1 expand x4, projection shortcut."""

    def __init__(self, in_channels: int, width: int, stride: int) -> None:
        super().__init__()
        out_channels = width * 4
        self.conv1 = nn.Conv2d(in_channels, width, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(width)
        self.conv2 = nn.Conv2d(width, width, 3, stride=stride, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(width)
        self.conv3 = nn.Conv2d(width, out_channels, 1, bias=False)
        self.bn3 = nn.BatchNorm2d(out_channels)
        self.relu = nn.ReLU(inplace=True)
        self.downsample = None
        if stride != 1 or in_channels != out_channels:
            self.downsample = nn.Sequential(nn.Conv2d(in_channels, out_channels, 1, stride=stride, bias=False),
                                            nn.BatchNorm2d(out_channels))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        identity = x if self.downsample is None else self.downsample(x)
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.relu(self.bn2(self.conv2(out)))
        out = self.bn3(self.conv3(out))
        return self.relu(out + identity)


class ResNet50(nn.Module):
    """The bottleneck ResNet-50 (3, 4, 6, 3 blocks), with torchvision's attribute names."""

    def __init__(self, num_classes: int = 1000) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(3, 64, 7, stride=2, padding=3, bias=False)
        self.bn1 = nn.BatchNorm2d(64)
        self.relu = nn.ReLU(inplace=True)
        self.maxpool = nn.MaxPool2d(3, stride=2, padding=1)
        stages, in_channels = [], 64
        for width, blocks, stride in ((64, 3, 1), (128, 4, 2), (256, 6, 2), (512, 3, 2)):
            layers = []
            for index in range(blocks):
                layers.append(Bottleneck(in_channels, width, stride if index == 0 else 1))
                in_channels = width * 4
            stages.append(nn.Sequential(*layers))
        self.layer1, self.layer2, self.layer3, self.layer4 = stages
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(in_channels, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.maxpool(self.relu(self.bn1(self.conv1(x))))
        x = self.layer4(self.layer3(self.layer2(self.layer1(x))))
        return self.fc(torch.flatten(self.avgpool(x), 1))


def resnet50() -> Tuple[nn.Module, str]:
    try:
        import torchvision
        return torchvision.models.resnet50(weights=None), f"torchvision {torchvision.__version__} resnet50"
    except Exception:  # noqa: BLE001 - not installed, or built for another torch
        return ResNet50(), "bottleneck ResNet-50 of bench_gpu.py (torchvision not importable)"


def resnet_checkpointed(model: nn.Module, x: torch.Tensor) -> torch.Tensor:
    x = model.maxpool(model.relu(model.bn1(model.conv1(x))))
    for stage in (model.layer1, model.layer2, model.layer3, model.layer4):
        x = torch.utils.checkpoint.checkpoint(stage, x, use_reentrant=False)
    return model.fc(torch.flatten(model.avgpool(x), 1))


class Block(nn.Module):
    """Pre-norm transformer block: causal self-attention (SDPA) and a 4x GELU MLP."""

    def __init__(self, d_model: int, n_heads: int) -> None:
        super().__init__()
        self.n_heads = n_heads
        self.ln1 = nn.LayerNorm(d_model)
        self.qkv = nn.Linear(d_model, 3 * d_model)
        self.proj = nn.Linear(d_model, d_model)
        self.ln2 = nn.LayerNorm(d_model)
        self.mlp = nn.Sequential(nn.Linear(d_model, 4 * d_model), nn.GELU(), nn.Linear(4 * d_model, d_model))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        batch, length, d_model = x.shape
        q, k, v = self.qkv(self.ln1(x)).split(d_model, dim=-1)
        q, k, v = (t.view(batch, length, self.n_heads, -1).transpose(1, 2) for t in (q, k, v))
        attended = F.scaled_dot_product_attention(q, k, v, is_causal=True)
        x = x + self.proj(attended.transpose(1, 2).reshape(batch, length, d_model))
        return x + self.mlp(self.ln2(x))


class GPT(nn.Module):
    def __init__(self, vocab: int, d_model: int, n_heads: int, n_layers: int, seq_len: int) -> None:
        super().__init__()
        self.token_embedding = nn.Embedding(vocab, d_model)
        self.position_embedding = nn.Embedding(seq_len, d_model)
        self.blocks = nn.ModuleList(Block(d_model, n_heads) for _ in range(n_layers))
        self.ln_final = nn.LayerNorm(d_model)
        self.head = nn.Linear(d_model, vocab, bias=False)

    def embed(self, tokens: torch.Tensor) -> torch.Tensor:
        positions = torch.arange(tokens.shape[1], device=tokens.device)
        return self.token_embedding(tokens) + self.position_embedding(positions)

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        x = self.embed(tokens)
        for block in self.blocks:
            x = block(x)
        return self.head(self.ln_final(x))


def gpt_checkpointed(model: nn.Module, tokens: torch.Tensor) -> torch.Tensor:
    x = model.embed(tokens)
    for block in model.blocks:
        x = torch.utils.checkpoint.checkpoint(block, x, use_reentrant=False)
    return model.head(model.ln_final(x))


@dataclass
class Task:
    name: str
    description: str
    make_model: Callable[[], nn.Module]
    make_optimizer: Callable[[nn.Module], torch.optim.Optimizer]
    make_batch: Callable[[torch.device], Tuple[torch.Tensor, torch.Tensor]]
    loss_fn: Callable[[torch.Tensor, torch.Tensor], torch.Tensor]
    checkpointed: Callable[[nn.Module, torch.Tensor], torch.Tensor]


def training_tasks(quick: bool, seed: int) -> List[Task]:
    batch_cnn, image = (2, 64) if quick else (128, 224)
    _, resnet_name = resnet50()

    def cnn_batch(device):
        generator = torch.Generator(device=device).manual_seed(seed)
        images = torch.randn(batch_cnn, 3, image, image, generator=generator, device=device)
        labels = torch.randint(0, 1000, (batch_cnn,), generator=generator, device=device)
        return images, labels

    vocab, d_model, heads, layers, seq_len, batch_lm = (
        (256, 64, 4, 2, 32, 2) if quick else (8192, 512, 8, 6, 512, 32))

    def lm_batch(device):
        generator = torch.Generator(device=device).manual_seed(seed + 1)
        tokens = torch.randint(0, vocab, (batch_lm, seq_len + 1), generator=generator, device=device)
        return tokens[:, :-1].contiguous(), tokens[:, 1:].contiguous()

    return [
        Task("ResNet-50", f"{resnet_name}, batch {batch_cnn}, {image}x{image} random images, "
                          "SGD (lr 0.01, momentum 0.9), cross-entropy over 1000 classes",
             lambda: resnet50()[0],
             lambda m: torch.optim.SGD(m.parameters(), lr=0.01, momentum=0.9),
             cnn_batch, F.cross_entropy, resnet_checkpointed),
        Task("GPT", f"GPT-like, {layers} blocks, d={d_model}, {heads} heads, sequence {seq_len}, "
                    f"batch {batch_lm}, vocabulary {vocab}, scaled_dot_product_attention (causal), "
                    "AdamW (lr 3e-4), random tokens",
             lambda: GPT(vocab, d_model, heads, layers, seq_len),
             lambda m: torch.optim.AdamW(m.parameters(), lr=3e-4),
             lm_batch, lambda logits, y: F.cross_entropy(logits.reshape(-1, logits.shape[-1]), y.reshape(-1)),
             gpt_checkpointed),
    ]


@dataclass
class TrainResult:
    task: str
    precision: str
    variant: str
    step_seconds: List[float] = field(default_factory=list)
    peak_bytes: Optional[int] = None
    static_bytes: Optional[int] = None
    last_loss: Optional[float] = None
    saved_raw: Optional[int] = None
    saved_held: Optional[int] = None
    codec_seconds: Optional[float] = None
    failures: Optional[int] = None
    error: Optional[str] = None
    note: Optional[str] = None

    @property
    def step(self) -> Optional[float]:
        return statistics.median(self.step_seconds) if self.step_seconds else None


def run_variant(task: Task, variant: str, precision: str, warmup: int, steps: int, bound: float,
                device: torch.device, seed: int, deadline: float) -> TrainResult:
    result = TrainResult(task.name, precision, variant)
    try:
        torch.manual_seed(seed)
        model = task.make_model().to(device)
        model.train()
        optimizer = task.make_optimizer(model)
        inputs, targets = task.make_batch(device)
        forward = (lambda x: task.checkpointed(model, x)) if variant == "checkpoint" else model
        compressor = None
        if variant == "actzip":
            compressor = actzip.compressed_activations(model, schedule=bound, mode="rel")
        autocast = (lambda: torch.autocast(device.type, dtype=torch.bfloat16)) if precision == "bf16" \
            else contextlib.nullcontext
        with compressor if compressor is not None else contextlib.nullcontext():
            for index in range(warmup + steps):
                if index == warmup:
                    synchronize(device)
                    if device.type == "cuda":
                        result.static_bytes = torch.cuda.memory_allocated(device)
                        torch.cuda.reset_peak_memory_stats(device)
                synchronize(device)
                start = time.perf_counter()
                with autocast():
                    loss = task.loss_fn(forward(inputs), targets)
                loss.backward()
                optimizer.step()
                optimizer.zero_grad(set_to_none=True)
                if compressor is not None:
                    compressor.step(loss=loss.detach())
                synchronize(device)
                if index >= warmup:
                    result.step_seconds.append(time.perf_counter() - start)
                    if time.perf_counter() > deadline and index + 1 < warmup + steps:
                        result.note = f"{len(result.step_seconds)} of {steps} steps (time budget)"
                        break
                result.last_loss = float(loss.detach())
                del loss
        if device.type == "cuda":
            result.peak_bytes = torch.cuda.max_memory_allocated(device)
        if compressor is not None:
            history = compressor.history[warmup:] or compressor.history
            final = history[-1]
            result.saved_raw, result.saved_held = final["peak_raw_bytes"], final["peak_compressed_bytes"]
            result.codec_seconds = statistics.median(r["compress_seconds"] + r["decompress_seconds"] for r in history)
            result.failures = sum(r["failures"] for r in compressor.history)
    except Exception as exc:  # noqa: BLE001 - out of memory, or actzip failing: reported
        result.error = short_error(exc, 300)
        traceback.print_exc()
    return result


def training_table(results: List[TrainResult], device: torch.device) -> str:
    header = ["model", "precision", "variant", "step (median)", "× baseline", "peak allocated",
              "peak − weights/optimizer", "× baseline", "saved for backward: raw → held (actzip)",
              "loss (last step)", "note"]
    rows = []
    baselines = {(r.task, r.precision): r for r in results if r.variant == "baseline" and r.error is None}
    for r in results:
        base = baselines.get((r.task, r.precision))
        if r.error:
            rows.append([r.task, r.precision, r.variant, f"error: {r.error}"] + ["–"] * 7)
            continue
        above = None if r.peak_bytes is None or r.static_bytes is None else r.peak_bytes - r.static_bytes
        base_above = None if base is None or base.peak_bytes is None or base.static_bytes is None \
            else base.peak_bytes - base.static_bytes
        saved = "–"
        if r.saved_raw is not None:
            saved = f"{fmt_bytes(r.saved_raw)} → {fmt_bytes(r.saved_held)}"
            if r.saved_held:
                saved += f" ({r.saved_raw / r.saved_held:.1f}×)"
        notes = [n for n in (r.note, None if not r.failures else f"{r.failures} tensors failed to compress",
                             None if r.codec_seconds is None else f"codec {r.codec_seconds * 1e3:.0f} ms/step "
                             "(actzip's own count)") if n]
        rows.append([
            r.task, r.precision, r.variant,
            "–" if r.step is None else f"{r.step * 1e3:.1f} ms ({len(r.step_seconds)} steps)",
            "–" if base is None or not base.step or r.step is None else f"{r.step / base.step:.2f}",
            fmt_bytes(r.peak_bytes) if r.peak_bytes is not None else ("n/a on CPU" if device.type == "cpu" else "–"),
            fmt_bytes(above) if above is not None else "–",
            "–" if above is None or not base_above else f"{above / base_above:.2f}",
            saved,
            fmt(r.last_loss, 5),
            "; ".join(notes),
        ])
    return markdown_table(header, rows)


# ---------------------------------------------------------------------------------------

def versions_line() -> Dict[str, str]:
    versions = {"python": platform.python_version(), "torch": torch.__version__,
                "CUDA (torch)": str(torch.version.cuda), "actzip": getattr(actzip, "__version__", "?")}
    if torch.backends.cudnn.is_available():
        versions["cuDNN"] = str(torch.backends.cudnn.version())
    for distribution in ("torchvision",):
        try:
            versions[distribution] = importlib.metadata.version(distribution)
        except importlib.metadata.PackageNotFoundError:
            versions[distribution] = "not installed"
    return versions


def main(argv: Optional[List[str]] = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--device", default=None, help="cuda or cpu (default: cuda when present)")
    parser.add_argument("--quick", action="store_true",
                        help="tiny tensors and models, a step or two: a smoke check of the script")
    parser.add_argument("--out", metavar="PATH", help="also write the markdown tables to this file")
    parser.add_argument("--append", action="store_true", help="append to --out instead of replacing it")
    parser.add_argument("--parts", default="codec,peers,training",
                        help="comma-separated, from codec, peers, training (default all)")
    parser.add_argument("--reps-small", type=int, default=None, help="timed calls per 64 MiB tensor (default 5)")
    parser.add_argument("--reps-large", type=int, default=None, help="timed calls per 1 GiB tensor (default 2)")
    parser.add_argument("--sizes", default="small,large", help="tensor sizes to run: small (64 MiB), large (1 GiB)")
    parser.add_argument("--no-cross", action="store_true", help="skip the CPU<->GPU cross-decoding checks")
    parser.add_argument("--train-steps", type=int, default=None, help="measured steps per variant (default 5)")
    parser.add_argument("--train-warmup", type=int, default=None, help="warm-up steps per variant (default 2)")
    parser.add_argument("--precisions", default=None,
                        help="training precisions: fp32, bf16 (autocast) (default fp32,bf16 on CUDA, fp32 on CPU)")
    parser.add_argument("--train-bound", type=float, default=1e-2, help="actzip's relative bound in training")
    parser.add_argument("--budget-s", type=float, default=None,
                        help="wall-clock budget of the whole run; parts past their share are skipped")
    parser.add_argument("--allow-missing-cuda-backend", action="store_true",
                        help="run on a GPU even if actzip.backends() has no 'cuda' (to try the script)")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)

    device = torch.device(args.device or ("cuda" if torch.cuda.is_available() else "cpu"))
    if device.type == "cuda" and not torch.cuda.is_available():
        log("error: --device cuda but torch sees no CUDA device")
        return 2
    if device.type == "cuda" and device.index is None:
        device = torch.device("cuda", torch.cuda.current_device())
    backends = list(actzip.backends())
    if device.type == "cuda" and "cuda" not in backends and not args.allow_missing_cuda_backend:
        log(f"error: actzip.backends() is {backends}: this build of actzip ({actzip.__file__}) has no CUDA "
            "backend, so GPU tensors would go through the CPU. Build with -DACTZIP_CUDA=ON.")
        return 2
    parts = {p.strip() for p in args.parts.split(",") if p.strip()}
    unknown = parts - {"codec", "peers", "training"}
    if unknown:
        parser.error(f"unknown parts: {', '.join(sorted(unknown))}")
    quick = args.quick
    reps_small = args.reps_small or (2 if quick else 5)
    reps_large = args.reps_large or (2 if quick else 2)
    train_steps = args.train_steps or (2 if quick else 5)
    train_warmup = args.train_warmup if args.train_warmup is not None else (1 if quick else 2)
    precisions = [p.strip() for p in (args.precisions or ("fp32,bf16" if device.type == "cuda" else "fp32"))
                  .split(",") if p.strip()]
    if set(precisions) - {"fp32", "bf16"}:
        parser.error("--precisions takes fp32 and/or bf16")
    budget = Budget(args.budget_s)
    report = Report(args.out, args.append)
    problems: List[str] = []

    peers, peer_notes, peer_versions = make_peers(device) if "peers" in parts else ([], [], {})
    versions = {**versions_line(), **peer_versions}
    command = " ".join(["python", os.path.relpath(sys.argv[0]) if sys.argv[0] else "bench_gpu.py"]
                       + (argv if argv is not None else sys.argv[1:]))
    if device.type == "cuda":
        properties = torch.cuda.get_device_properties(device)
        hardware = (f"{properties.name} (sm_{properties.major}{properties.minor}, "
                    f"{properties.total_memory / GIB:.1f} GiB, {properties.multi_processor_count} SMs)")
    else:
        hardware = f"no GPU: CPU run ({platform.processor() or platform.machine()})"
    lines = [
        "## actzip GPU benchmark" + (" (quick smoke run: tiny sizes, numbers mean nothing)" if quick else ""),
        "",
        f"- date: {datetime.datetime.now(datetime.timezone.utc).strftime('%Y-%m-%d %H:%M:%S UTC')}",
        f"- command: `{command}`",
        f"- device: {hardware}; {os.cpu_count()} CPUs, actzip CPU threads {actzip.get_num_threads()}",
        f"- TF32: matmul {torch.backends.cuda.matmul.allow_tf32}, cuDNN {torch.backends.cudnn.allow_tf32} "
        "(torch's defaults)",
        "- versions: " + ", ".join(f"{k} {v}" for k, v in versions.items()),
        f"- actzip.backends(): {backends}" + ("" if device.type == "cpu" or "cuda" in backends
                                             else " — NO CUDA BACKEND: GPU rows measure the CPU fallback"),
        "- timing: wall time between two device synchronizations, median of the timed calls after one "
        f"warm-up call ({reps_small} calls per small tensor, {reps_large} per large); GB/s = 1e9 raw bytes/s",
    ]
    lines += [f"- {note}" for note in peer_notes]
    report.add("\n".join(lines))

    # --- codec, cross-decoding and peers, one tensor at a time -----------------------------
    sizes = {z.strip() for z in args.sizes.split(",") if z.strip()}
    if sizes - {"small", "large"}:
        parser.error("--sizes takes small and/or large")
    specs = [s for s in tensor_specs(quick) if s.size in sizes]
    codec_rows: List[CodecRow] = []
    peer_results: List[PeerResult] = []
    copy_seconds: Dict[str, float] = {}
    failed_peers: Dict[Tuple[str, torch.dtype], str] = {}
    skipped: List[str] = []
    actzip_trained = False
    if parts & {"codec", "peers"}:
        deadline = budget.share(0.55 if "training" in parts else 1.0)
        for index, spec in enumerate(specs):
            if time.perf_counter() > deadline:
                log(f"skipped {spec.label}: time budget")
                skipped.append(spec.label)
                continue
            started = time.perf_counter()
            reps = reps_small if spec.size == "small" else reps_large
            x = make_activation(spec, device, seed=args.seed + index)
            synchronize(device)
            target = torch.empty_like(x)
            copy_s = timed_burst(lambda: target.copy_(x), max(2, 4 * reps), device)
            copy_seconds[spec.label] = copy_s
            del target
            error_bounds = {}
            if "codec" in parts:
                x_cpu = None if args.no_cross else x.cpu()
                for relative_bound in RELATIVE_BOUNDS:
                    row = measure_actzip(x, x_cpu, spec, relative_bound, reps, device, copy_s, problems)
                    codec_rows.append(row)
                    error_bounds[relative_bound] = row.error_bound
                del x_cpu
            if "peers" in parts:
                span = value_range(x)
                for peer in peers:
                    if peer.unavailable:
                        continue
                    if (peer.name, spec.dtype) in failed_peers:
                        peer_results.append(PeerResult(peer.name, spec, note=failed_peers[(peer.name, spec.dtype)]))
                        continue
                    if time.perf_counter() > deadline:
                        peer_results.append(PeerResult(peer.name, spec, note="time budget"))
                        continue
                    relative_bound = getattr(peer, "relative_bound", None) or RELATIVE_BOUNDS[0]
                    error_bound = error_bounds.get(relative_bound) or relative_bound * span
                    try:
                        peer_results.append(peer.run(x, spec, error_bound, reps, device))
                    except Exception as exc:  # noqa: BLE001 - a peer never stops the run
                        reason = short_error(exc)
                        log(f"  {peer.name} on {spec.label}: {reason}")
                        peer_results.append(PeerResult(peer.name, spec, note=reason))
                        # One failure per peer and dtype: the next tensors of that dtype skip it.
                        failed_peers[(peer.name, spec.dtype)] = _EARLIER + reason
                    finally:
                        gc.collect()
                        peer.release()
                        if device.type == "cuda":
                            torch.cuda.empty_cache()
            del x
            gc.collect()
            if device.type == "cuda":
                torch.cuda.empty_cache()
            log(f"measured {spec.label} ({index + 1}/{len(specs)}) in {time.perf_counter() - started:.1f} s, "
                f"{budget.elapsed():.0f} s so far")
        if "codec" in parts:
            report.add("### actzip codec on " + ("the GPU" if device.type == "cuda" else "the CPU")
                       + " (relative bounds: a fraction of each tensor's max − min)\n\n"
                       + codec_table(codec_rows, device)
                       + "\n\nCross-decoding: 'pass' means bit-identical values; 'same bytes': the "
                         "GPU's and the CPU's streams of the tensor are byte-identical."
                       + (f"\n\nNot measured (time budget): {', '.join(skipped)}" if skipped else ""))
        if "peers" in parts:
            peer_notes_lines = grouped_notes(peer_results)
            report.add("### Peers on the same device, same tensors (lossy peers at actzip's absolute bound)\n\n"
                       + peer_tables(specs, copy_seconds, codec_rows, peer_results,
                                     [p for p in peers if not p.unavailable])
                       + ("\n\nNotes:\n" + "\n".join(peer_notes_lines) if peer_notes_lines else "")
                       + ("\n\nNot run: " + "; ".join(peer_notes) if peer_notes else ""))
        for r in peer_results:
            if r.fidelity.startswith("NOT EXACT") or (r.fidelity[:1].isdigit() and float(r.fidelity) > 1):
                log(f"note: {r.method} on {r.spec.label}: fidelity {r.fidelity} (a peer's problem, not a failure)")

    # --- training ------------------------------------------------------------------------------
    if "training" in parts:
        results: List[TrainResult] = []
        tasks = training_tasks(quick, args.seed)
        for precision in precisions:
            for task in tasks:
                for variant in ("baseline", "checkpoint", "actzip"):
                    if budget.left() <= 0:
                        results.append(TrainResult(task.name, precision, variant, note="skipped: time budget"))
                        continue
                    started = time.perf_counter()
                    result = run_variant(task, variant, precision, train_warmup, train_steps, args.train_bound,
                                         device, args.seed, deadline=budget.end)
                    gc.collect()  # the variant's model, optimizer and graph, before the next one
                    if device.type == "cuda":
                        torch.cuda.empty_cache()
                    results.append(result)
                    actzip_trained |= variant == "actzip" and bool(result.step_seconds)
                    if result.error and variant == "actzip":
                        problems.append(f"training {task.name} {precision} actzip: {result.error}")
                    if result.failures:
                        problems.append(f"training {task.name} {precision} actzip: {result.failures} tensors "
                                        "failed to compress and were kept")
                    log(f"  {task.name} {precision} {variant}: "
                        + (f"error {result.error}" if result.error else
                           f"step {fmt((result.step or 0) * 1e3)} ms, peak {fmt_bytes(result.peak_bytes)}")
                        + f" ({time.perf_counter() - started:.0f} s)")
        descriptions = "\n".join(f"- {task.name}: {task.description}" for task in tasks)
        report.add("### Training step: baseline vs actzip vs torch.utils.checkpoint\n\n"
                   f"{descriptions}\n- actzip: compressed_activations(model, schedule={args.train_bound:g}, "
                   "mode=\"rel\"); checkpoint: each ResNet stage / transformer block, use_reentrant=False; "
                   f"bf16 = torch.autocast(bfloat16); {train_warmup} warm-up + {train_steps} measured steps\n\n"
                   + training_table(results, device))

    if problems:
        verdict = f"**{len(problems)} CHECK(S) FAILED:**\n" + "\n".join(f"- {p}" for p in problems)
    else:
        passed = []
        if "codec" in parts:
            passed.append("every actzip bound held and zeros stayed zeros")
            if not args.no_cross:
                passed.append("cross-decoding gave bit-identical values both ways")
        if actzip_trained:
            passed.append("training with actzip raised nothing and kept no tensor uncompressed by failure")
        verdict = "checks passed: " + "; ".join(passed or ["nothing checked"])
    report.add(f"{verdict}\n\ntotal time {budget.elapsed():.0f} s")
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
