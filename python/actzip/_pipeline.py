"""The chunk pipeline driven from Python: the CUDA backend, and its host emulation.

The C++ stages (``include/actzip/pipeline.h``) only enqueue work on buffers they are given;
this module allocates every buffer with torch (so torch's caching allocator owns every
byte of device memory) on the tensor's device, runs each stage on torch's current stream,
and copies to the host the small results the host steps need:

* compression: the sampled histograms (12 KiB), from which the host builds the codebooks,
  and the chunk layouts (64 bytes a chunk), from which it writes the header and sizes the
  stream: two synchronizations, or one when the caller passes codebooks from an earlier
  tensor (the training integration reuses each layer's from the previous step). The bound
  of a ``rel`` request is computed on the device and never waited for;
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
_BOUND_BYTES = int(_core.PIPELINE_BOUND_BYTES)


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


@dataclass
class Books:
    """Codebooks for the pipeline: the host's description and its packed copy where the
    stages run. A layer's books from one step can code the next step's tensor."""

    books: object  # _core.PipelineBooks
    packed: torch.Tensor  # uint32 codes, on the device the stages run on


def _upload_books(books, dev: torch.device) -> Books:
    return Books(books, torch.frombuffer(bytearray(books.packed), dtype=torch.uint8).to(dev))


def compress(
    t: torch.Tensor, dtype_code: int, bound: float, mode: str, checksum: bool, ex: Exec, books: Optional[Books] = None
) -> Tuple[torch.Tensor, float, dict, object, Books]:
    """Compresses the contiguous tensor ``t`` where ``ex`` says.

    With ``books`` (from an earlier call, on the same device), codes with them instead of
    the tensor's own: the host then waits for the device once (for the chunk layouts)
    instead of twice, and the stream differs from the CPU backend's in its codebooks only
    (chunks those books would code worse than raw are stored raw).

    Returns the stream (a uint8 tensor on ``t``'s device), the absolute bound used, the
    encoder statistics, the stream's decode plan, and the tensor's own books.
    """
    dev = ex.torch_device
    shape = [int(d) for d in t.shape]
    chunks = int(_core.pipeline_num_chunks(t.numel()))
    ptr = t.data_ptr()
    hist_bytes = _HIST_COUNTERS * 8
    with ex.scope():
        run = ex.args()
        # One workspace, so that one copy brings back all the host needs:
        # [histograms | absolute bound, step | a layout per chunk].
        ws = torch.empty(hist_bytes + _BOUND_BYTES + chunks * _LAYOUT_BYTES, dtype=torch.uint8, device=dev)
        hist, bound_buf, layouts = ws[:hist_bytes], ws[hist_bytes : hist_bytes + _BOUND_BYTES], ws[hist_bytes + _BOUND_BYTES :]
        keys = 0
        if mode == "rel":
            key_buf = torch.empty(2, dtype=torch.int32, device=dev)
            _core.pipeline_finite_range(*run, ptr, dtype_code, shape, key_buf.data_ptr())
            keys = key_buf.data_ptr()
        _core.pipeline_resolve_bound(*run, mode, bound, keys, bound_buf.data_ptr())
        predictors = torch.empty(max(chunks, 1), dtype=torch.uint8, device=dev)
        _core.pipeline_sample(*run, ptr, dtype_code, shape, bound_buf.data_ptr(), predictors.data_ptr(), hist.data_ptr())
        own = None
        if books is None:
            own = _upload_books(_core.pipeline_build_books(_host(hist)), dev)
            books = own
        _core.pipeline_measure(
            *run, ptr, dtype_code, shape, bound_buf.data_ptr(), predictors.data_ptr(), books.packed.data_ptr(),
            books.books.direct_log2, layouts.data_ptr()
        )
        back = _host(ws)  # the one wait when books were given
        abs_bound = float(back[hist_bytes : hist_bytes + 8].view(np.float64)[0])
        if own is None:
            # The tensor's own books, for the next tensor of its layer. Uploaded now, while
            # the stream is drained anyway: after write() is queued, a copy from pageable
            # memory would wait for it.
            own = _upload_books(_core.pipeline_build_books(back[:hist_bytes]), dev)
        header, stream_bytes, stats = _core.pipeline_assemble(
            back[hist_bytes + _BOUND_BYTES :], dtype_code, shape, mode, bound, abs_bound, checksum, books.books
        )
        header_np = np.frombuffer(header, dtype=np.uint8)
        out = torch.empty(int(stream_bytes), dtype=torch.uint8, device=dev)
        out[: len(header)].copy_(torch.from_numpy(header_np.copy()))
        _core.pipeline_write(
            *run, ptr, dtype_code, shape, bound_buf.data_ptr(), books.packed.data_ptr(), books.books.direct_log2,
            layouts.data_ptr(), out.data_ptr(), len(header)
        )
        if checksum:
            payload = _host(out[len(header) : int(stream_bytes) - 4])
            crc = int(_core.crc32(payload))
            out[-4:].copy_(torch.tensor(list(crc.to_bytes(4, "little")), dtype=torch.uint8))
    plan = _core.pipeline_plan_decode(header_np, int(stream_bytes))
    return out, abs_bound, stats, plan, own


def plan_for(stream_head: np.ndarray, stream_bytes: int):
    """The decode plan of a stream from a host copy of (at least) its header."""
    return _core.pipeline_plan_decode(stream_head, int(stream_bytes))


def decompress(data: torch.Tensor, plan, out: torch.Tensor, ex: Exec, check: bool = True) -> Optional[torch.Tensor]:
    """Decodes the stream ``data`` (on ``ex``'s device) into the contiguous tensor ``out``.

    With ``check``, waits for the device and raises FormatError if the stream is corrupt.
    Without, waits for nothing and returns the status word (an int64 tensor where the
    stages ran: 0, or what :func:`status_error` explains), for the caller to check later.
    A stream with a payload checksum is checked on the host first (a copy of the stream).
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
    if not check:
        return status
    raise_for_status(status)
    return None


def raise_for_status(status: torch.Tensor) -> None:
    """Raises FormatError for the first failed decode among status words (waits for them)."""
    codes = _host(status.reshape(-1)).view(np.uint64)
    bad = codes[codes != 0]
    if bad.size:
        raise _core.FormatError(_core.pipeline_status_message(int(bad[0])))
