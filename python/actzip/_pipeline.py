"""The chunk pipeline driven from Python: the CUDA backend, and its host emulation.

The C++ stages (``include/actzip/pipeline.h``) only enqueue work on buffers they are given;
this module allocates every buffer with torch (so torch's caching allocator owns every
byte of device memory) on the tensor's device, runs each stage on torch's current stream,
and copies to the host the small results the host steps need:

* compression: the two range keys (``rel`` mode only), the sampled histograms (10 KiB) and
  the chunk layouts (64 bytes a chunk), so two synchronizations (three in ``rel`` mode);
* decompression: the status word, one synchronization, which turns a corrupt stream into
  :class:`~actzip.FormatError`.

``device=None`` in :class:`Exec` runs the same stages on host threads: that is how the
tests exercise this module, and the stages, on a machine without a GPU.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass
from typing import Optional, Tuple

import numpy as np
import torch

from . import _core

_HIST_COUNTERS = int(_core.PIPELINE_HIST_COUNTERS)
_LAYOUT_BYTES = int(_core.PIPELINE_LAYOUT_BYTES)
_TABLES_BYTES = int(_core.PIPELINE_DECODE_TABLES_BYTES)


@dataclass(frozen=True)
class Exec:
    """Where the stages run: a CUDA device (on torch's current stream), or host threads."""

    device: Optional[torch.device]  # a CUDA device, or None for host threads
    threads: int = 1

    @classmethod
    def for_device(cls, device: torch.device, threads: int = 1) -> "Exec":
        return cls(torch.device(device) if device.type == "cuda" else None, threads)

    @property
    def torch_device(self) -> torch.device:
        return self.device if self.device is not None else torch.device("cpu")

    def args(self) -> Tuple[int, int, int]:
        """(device index, stream handle, threads) as the C++ stages take them."""
        if self.device is None:
            return (-1, 0, self.threads)
        index = self.device.index if self.device.index is not None else torch.cuda.current_device()
        return (index, torch.cuda.current_stream(index).cuda_stream, 1)

    def scope(self):
        return torch.cuda.device(self.device) if self.device is not None else contextlib.nullcontext()


def _host(t: torch.Tensor) -> np.ndarray:
    """A host copy of a small result (waits for the device work that produces it)."""
    return t.cpu().numpy()


def compress(
    t: torch.Tensor, dtype_code: int, bound: float, mode: str, checksum: bool, ex: Exec
) -> Tuple[torch.Tensor, float, dict, object]:
    """Compresses the contiguous tensor ``t`` where ``ex`` says.

    Returns the stream (a uint8 tensor on ``t``'s device), the absolute bound used, the
    encoder statistics and the stream's decode plan.
    """
    dev = ex.torch_device
    shape = [int(d) for d in t.shape]
    chunks = int(_core.pipeline_num_chunks(t.numel()))
    ptr = t.data_ptr()
    with ex.scope():
        run = ex.args()
        abs_bound = bound
        if mode == "rel":
            keys = torch.empty(2, dtype=torch.int32, device=dev)
            _core.pipeline_finite_range(*run, ptr, dtype_code, shape, keys.data_ptr())
            lo, hi = (int(k) for k in _host(keys))
            abs_bound = float(_core.pipeline_rel_abs_bound(lo, hi, bound))
        predictors = torch.empty(max(chunks, 1), dtype=torch.uint8, device=dev)
        hist = torch.empty(_HIST_COUNTERS, dtype=torch.int64, device=dev)
        _core.pipeline_sample(*run, ptr, dtype_code, shape, abs_bound, predictors.data_ptr(), hist.data_ptr())
        books = _core.pipeline_build_books(_host(hist))
        packed = torch.frombuffer(bytearray(books.packed), dtype=torch.uint8).to(dev)
        layouts = torch.empty(max(chunks, 1) * _LAYOUT_BYTES, dtype=torch.uint8, device=dev)
        _core.pipeline_measure(
            *run, ptr, dtype_code, shape, abs_bound, predictors.data_ptr(), packed.data_ptr(),
            books.direct_log2, layouts.data_ptr()
        )
        header, stream_bytes, stats = _core.pipeline_assemble(
            _host(layouts), dtype_code, shape, mode, bound, abs_bound, checksum, books
        )
        header_np = np.frombuffer(header, dtype=np.uint8)
        out = torch.empty(int(stream_bytes), dtype=torch.uint8, device=dev)
        out[: len(header)].copy_(torch.from_numpy(header_np.copy()))
        _core.pipeline_write(
            *run, ptr, dtype_code, shape, abs_bound, predictors.data_ptr(), packed.data_ptr(),
            books.direct_log2, layouts.data_ptr(), out.data_ptr(), len(header)
        )
        if checksum:
            payload = _host(out[len(header) : int(stream_bytes) - 4])
            crc = int(_core.crc32(payload))
            out[-4:].copy_(torch.tensor(list(crc.to_bytes(4, "little")), dtype=torch.uint8))
    plan = _core.pipeline_plan_decode(header_np, int(stream_bytes))
    return out, abs_bound, stats, plan


def plan_for(stream_head: np.ndarray, stream_bytes: int):
    """The decode plan of a stream from a host copy of (at least) its header."""
    return _core.pipeline_plan_decode(stream_head, int(stream_bytes))


def decompress(data: torch.Tensor, plan, out: torch.Tensor, ex: Exec) -> None:
    """Decodes the stream ``data`` (on ``ex``'s device) into the contiguous tensor ``out``.

    Raises FormatError, after waiting for the device, if the stream is corrupt. A stream
    with a payload checksum is checked on the host first (a copy of the whole stream).
    """
    info = plan.info
    if info["payload_checksum"]:
        _core.validate(_host(data))
    dev = ex.torch_device
    with ex.scope():
        run = ex.args()
        tables = torch.empty(_TABLES_BYTES, dtype=torch.uint8, device=dev)
        status = torch.empty(1, dtype=torch.int64, device=dev)
        _core.pipeline_decode(*run, data.data_ptr(), plan, tables.data_ptr(), out.data_ptr(), status.data_ptr())
        code = int(_host(status).view(np.uint64)[0])
    if code != 0:
        raise _core.FormatError(_core.pipeline_status_message(code))
