"""Compress and decompress one tensor within a strict error bound.

The heavy lifting is in the C++ core (``actzip._core``); this module converts torch tensors
and numpy arrays to byte views, lets torch allocate every buffer, and checks arguments.
"""

from __future__ import annotations

import functools
import math
import numbers
from typing import Optional, Union

import numpy as np
import torch

from . import _core, _pipeline

__all__ = [
    "CompressedTensor",
    "FormatError",
    "backends",
    "compress",
    "compress_bound",
    "decompress",
    "get_num_threads",
    "set_num_threads",
]

#: Raised for a stream that breaks a rule of docs/FORMAT.md. A subclass of ValueError.
FormatError = _core.FormatError

_DTYPE_CODES = {torch.float32: 1, torch.float16: 2, torch.bfloat16: 3}
_CODE_DTYPES = {v: k for k, v in _DTYPE_CODES.items()}
_BITS_VIEW = {torch.float32: torch.int32, torch.float16: torch.int16, torch.bfloat16: torch.int16}
_NUMPY_DTYPES = {np.dtype(np.float32): torch.float32, np.dtype(np.float16): torch.float16}
_MODES = ("abs", "rel")

_num_threads = max(1, int(_core.max_threads()))


def set_num_threads(n: int) -> None:
    """Sets how many threads compress and decompress use (default: every processor)."""
    global _num_threads
    if isinstance(n, bool) or not isinstance(n, numbers.Integral):
        raise TypeError(f"set_num_threads: n must be an int, not {type(n).__name__}")
    if n < 1:
        raise ValueError(f"set_num_threads: n must be at least 1, got {n}")
    _num_threads = int(n)


def get_num_threads() -> int:
    """How many threads compress and decompress use."""
    return _num_threads


@functools.lru_cache(maxsize=None)
def _cuda_usable() -> bool:
    """Whether the CUDA backend is built and a GPU is there (asked once per process)."""
    return bool(_core.pipeline_cuda_compiled()) and torch.cuda.is_available() and _core.pipeline_cuda_device_count() > 0


def backends() -> list:
    """The backends compiled into this build and usable on this machine: ``"cpu"``, and
    ``"cuda"`` when the CUDA backend was built and torch and the CUDA runtime see a GPU.

    Without ``"cuda"``, CUDA tensors still work: they are compressed on the CPU (a copy to
    the host and back), and their streams live in host memory.
    """
    return ["cpu", "cuda"] if _cuda_usable() else ["cpu"]


def compress_bound(numel: int, dtype: torch.dtype, ndim: int = 1) -> int:
    """The largest stream that compressing ``numel`` elements of ``dtype`` can produce."""
    if dtype not in _DTYPE_CODES:
        raise TypeError(f"compress_bound: dtype must be float32, float16 or bfloat16, not {dtype}")
    return int(_core.compress_bound(int(numel), _DTYPE_CODES[dtype], int(ndim)))


def _byte_view(t: torch.Tensor) -> np.ndarray:
    """A numpy view of a contiguous CPU tensor's bytes (numpy has no bfloat16)."""
    return t.view(_BITS_VIEW[t.dtype]).numpy()


class CompressedTensor:
    """One tensor's compressed stream and what it says about the tensor.

    The stream lives in a 1-D ``torch.uint8`` tensor (:attr:`data`) allocated by torch, so
    torch's allocator accounts for it: in host memory, or on the GPU for a CUDA tensor
    compressed by the CUDA backend. ``nbytes`` counts every byte of it.
    """

    __slots__ = ("_data", "_info", "_device", "_numpy", "_stats", "_plan")

    def __init__(self, data: torch.Tensor, info: dict, device: torch.device, numpy_out: bool, stats=None, plan=None):
        self._data = data
        self._info = info
        self._device = torch.device(device)
        self._numpy = numpy_out
        self._stats = stats
        # The decode plan of a stream decoded by the chunk pipeline (a stream on a GPU, or
        # one the tests made with the pipeline's host emulation); None for the CPU backend.
        self._plan = plan

    @property
    def data(self) -> torch.Tensor:
        """The stream, as a 1-D uint8 tensor (docs/FORMAT.md)."""
        return self._data

    @property
    def nbytes(self) -> int:
        """Bytes held: the whole stream, header included."""
        return int(self._data.numel())

    @property
    def shape(self) -> torch.Size:
        return torch.Size(self._info["shape"])

    @property
    def dtype(self) -> torch.dtype:
        return _CODE_DTYPES[self._info["dtype"]]

    @property
    def numel(self) -> int:
        return int(self._info["numel"])

    @property
    def raw_nbytes(self) -> int:
        """Bytes of the uncompressed tensor."""
        return self.numel * self.dtype.itemsize

    @property
    def ratio(self) -> float:
        """raw_nbytes / nbytes."""
        return self.raw_nbytes / self.nbytes

    @property
    def error_bound(self) -> float:
        """The absolute bound every decoded finite element honours."""
        return float(self._info["error_bound"])

    @property
    def requested_bound(self) -> float:
        """The bound as passed to :func:`compress` (a fraction of the range for ``rel``)."""
        return float(self._info["requested_bound"])

    @property
    def mode(self) -> str:
        return self._info["mode"]

    @property
    def device(self) -> torch.device:
        """Where :func:`decompress` puts the tensor by default."""
        return self._device

    @property
    def stats(self) -> Optional[dict]:
        """Encoder statistics (zeros, coded, outliers, chunk kinds); None after from_bytes."""
        return None if self._stats is None else dict(self._stats)

    @property
    def stream_device(self) -> torch.device:
        """Where the stream itself lives (and where :func:`decompress` decodes it)."""
        return self._data.device

    def to(self, device: Union[str, torch.device]) -> "CompressedTensor":
        """The same stream moved to ``device`` (``"cpu"`` or a CUDA device), which also
        becomes where :func:`decompress` puts the tensor by default. A stream on a GPU is
        decoded there by the CUDA backend; moving one needs that backend."""
        device = torch.device(device)
        if device.type == "cuda":
            if not _cuda_usable():
                raise RuntimeError("CompressedTensor.to: the CUDA backend is not available (see actzip.backends())")
            if device.index is None:
                device = torch.device("cuda", torch.cuda.current_device())
            host = self._data.cpu().numpy()
            plan = _pipeline.plan_for(host[: int(self._info_full()["header_bytes"])], host.size)
            return CompressedTensor(self._data.to(device), self._info, device, False, self._stats, plan)
        if device.type != "cpu":
            raise ValueError(f"CompressedTensor.to: device must be 'cpu' or a CUDA device, got {device}")
        return CompressedTensor(self._data.cpu(), self._info, device, self._numpy, self._stats)

    def _info_full(self) -> dict:
        """Everything the header says (read from the stream, on the host)."""
        if self._plan is not None:
            return self._plan.info
        return _core.read_info(self._data.numpy())

    def to_bytes(self) -> bytes:
        return self._data.cpu().numpy().tobytes()

    @classmethod
    def from_bytes(cls, b) -> "CompressedTensor":
        """Parses and validates a stream (header, chunk table, every chunk header, checksums).

        Raises FormatError for anything that is not a valid actzip stream.
        """
        if not isinstance(b, (bytes, bytearray, memoryview)):
            raise TypeError(f"from_bytes: expected bytes, bytearray or memoryview, not {type(b).__name__}")
        arr = np.frombuffer(bytes(b), dtype=np.uint8)
        info = _core.validate(arr)
        data = torch.from_numpy(arr.copy())
        return cls(data, info, torch.device("cpu"), False)

    def __repr__(self) -> str:
        return (
            f"CompressedTensor(shape={tuple(self.shape)}, dtype={self.dtype}, nbytes={self.nbytes}, "
            f"ratio={self.ratio:.2f}, error_bound={self.error_bound:.3g})"
        )

    def __getstate__(self):
        return {"stream": self.to_bytes(), "device": str(self._device), "numpy": self._numpy}

    def __setstate__(self, state):
        other = CompressedTensor.from_bytes(state["stream"])
        self._data, self._info, self._stats, self._plan = other._data, other._info, None, None
        self._device = torch.device(state["device"])
        self._numpy = state["numpy"]


def _check_bound(error_bound) -> float:
    if isinstance(error_bound, bool) or not isinstance(error_bound, numbers.Real):
        raise TypeError(f"error_bound must be a real number, not {type(error_bound).__name__}")
    value = float(error_bound)
    if not math.isfinite(value) or value <= 0:
        raise ValueError(f"error_bound must be positive and finite, got {error_bound!r}")
    return value


def compress(x, error_bound: float, *, mode: str = "abs", checksum: bool = False) -> CompressedTensor:
    """Compresses a float32, float16 or bfloat16 tensor (or a float32/float16 numpy array).

    Every finite element comes back within ``error_bound`` (``mode="abs"``) or within
    ``error_bound * (max - min)`` of the finite elements (``mode="rel"``); zeros come back
    as zeros, non-zero values keep their sign, and NaN, +Inf, -Inf and -0.0 come back exactly.
    A non-contiguous tensor is copied once. ``checksum=True`` adds a CRC-32 of the payload.

    In ``rel`` mode, a tensor whose finite values are all equal takes the bound relative to
    their magnitude (``error_bound * |value|``), and one with no non-zero finite value
    relative to 1; :attr:`CompressedTensor.error_bound` always says the absolute bound used.
    """
    bound = _check_bound(error_bound)
    if mode not in _MODES:
        raise ValueError(f"mode must be 'abs' or 'rel', got {mode!r}")
    if not isinstance(checksum, bool):
        raise TypeError(f"checksum must be a bool, not {type(checksum).__name__}")
    numpy_in = isinstance(x, np.ndarray)
    if numpy_in:
        if x.dtype not in _NUMPY_DTYPES:
            raise TypeError(f"x: numpy arrays of dtype float32 or float16 are supported, not {x.dtype}")
        dtype = _NUMPY_DTYPES[x.dtype]
        # ascontiguousarray would turn a 0-d array into 1-d; read-only arrays are fine.
        arr = x if x.flags.c_contiguous else np.ascontiguousarray(x).reshape(x.shape)
        bits = arr.view(np.int32 if dtype == torch.float32 else np.int16)
        shape = tuple(arr.shape)
        device = torch.device("cpu")
    elif isinstance(x, torch.Tensor):
        if x.dtype not in _DTYPE_CODES:
            raise TypeError(f"x: dtype must be float32, float16 or bfloat16, not {x.dtype}")
        device = x.device
        if device.type == "cuda" and x.dim() <= 8 and _cuda_usable():
            return _compress_pipeline(x, bound, mode, checksum, _pipeline.Exec.for_device(device))
        t = x.detach()
        if t.device.type != "cpu":
            t = t.to("cpu")
        t = t.contiguous()
        dtype = t.dtype
        bits = _byte_view(t)
        shape = tuple(t.shape)
    else:
        raise TypeError(f"x must be a torch.Tensor or numpy.ndarray, not {type(x).__name__}")
    if len(shape) > 8:
        raise ValueError(f"x: tensors of at most 8 dimensions are supported, got {len(shape)}")
    return _encode_cpu(bits, dtype, shape, bound, mode, checksum, device, numpy_in, None)[0]


def _encode_cpu(bits, dtype: torch.dtype, shape: tuple, bound: float, mode: str, checksum: bool,
                device: torch.device, numpy_in: bool, reuse):
    """The CPU backend's compression of ``bits`` (a contiguous byte view of the values):
    the CompressedTensor and the choices it was coded with (``reuse``, an earlier one's
    choices of the same shape and dtype, or sampled from these values when None)."""
    threads = _num_threads
    plan = _core.plan_compress(bits, _DTYPE_CODES[dtype], list(shape), bound, mode, checksum, threads, reuse)
    out = torch.empty(plan.compressed_bytes, dtype=torch.uint8)
    plan.encode(out.numpy(), threads)
    info = {
        "dtype": _DTYPE_CODES[dtype],
        "shape": shape,
        "numel": math.prod(shape),
        "mode": mode,
        "requested_bound": bound,
        "error_bound": plan.error_bound,
    }
    return CompressedTensor(out, info, device, numpy_in, plan.stats), plan.choices


def _compress_cpu_reusing(x: torch.Tensor, bound: float, mode: str, reuse):
    """compress() of a CPU tensor with the predictors and codebooks of an earlier tensor
    of the same shape and dtype (``reuse``, from this function; None samples ``x``), which
    skips the sampling pass. Returns the CompressedTensor and the choices it used."""
    t = x.detach().contiguous()
    return _encode_cpu(_byte_view(t), t.dtype, tuple(t.shape), bound, mode, False, t.device, False, reuse)


def _compress_pipeline(x: torch.Tensor, bound: float, mode: str, checksum: bool, ex) -> CompressedTensor:
    """Compresses a tensor with the chunk pipeline where ``ex`` says (the CUDA backend, or
    its host emulation in tests); the stream stays on the tensor's device."""
    return _compress_pipeline_books(x, bound, mode, checksum, ex, None)[0]


def _compress_pipeline_books(x: torch.Tensor, bound: float, mode: str, checksum: bool, ex, books):
    """_compress_pipeline() coding with ``books`` from an earlier tensor when given (one
    wait for the device instead of two); also returns the tensor's own books, for the next."""
    t = x.detach().contiguous()
    code = _DTYPE_CODES[t.dtype]
    data, abs_bound, stats, plan, own = _pipeline.compress(t, code, bound, mode, checksum, ex, books)
    info = {
        "dtype": code,
        "shape": tuple(t.shape),
        "numel": t.numel(),
        "mode": mode,
        "requested_bound": bound,
        "error_bound": abs_bound,
    }
    return CompressedTensor(data, info, x.device, False, stats, plan), own


def _decode_pipeline(c: CompressedTensor, out: torch.Tensor) -> None:
    ex = _pipeline.Exec.for_device(c.stream_device, _num_threads)
    _pipeline.decompress(c.data, c._plan, out, ex)


def _decompress_unchecked(c: CompressedTensor):
    """For a stream the chunk pipeline decodes, where it lives: the tensor and its status
    word, without waiting for the device (check it later with _pipeline.raise_for_status).
    None for other streams."""
    if c._plan is None:
        return None
    result = torch.empty(c.shape, dtype=c.dtype, device=c.stream_device)
    ex = _pipeline.Exec.for_device(c.stream_device, _num_threads)
    status = _pipeline.decompress(c.data, c._plan, result, ex, check=False)
    return result, status


def decompress(
    c: CompressedTensor,
    *,
    device: Union[str, torch.device, None] = None,
    out: Optional[torch.Tensor] = None,
) -> Union[torch.Tensor, np.ndarray]:
    """Decodes ``c`` to a tensor of its original shape and dtype.

    The tensor goes to ``device`` if given, else where the input lived. A stream made from
    a numpy array decodes to a numpy array unless ``device`` or ``out`` is given. With
    ``out``, decodes into that tensor (same shape and dtype) and returns it.
    Raises FormatError if the stream is corrupt.
    """
    if not isinstance(c, CompressedTensor):
        raise TypeError(f"c must be a CompressedTensor, not {type(c).__name__}")
    if out is not None:
        if not isinstance(out, torch.Tensor):
            raise TypeError(f"out must be a torch.Tensor, not {type(out).__name__}")
        if out.dtype != c.dtype or out.shape != c.shape:
            raise ValueError(
                f"out must have shape {tuple(c.shape)} and dtype {c.dtype}, "
                f"got {tuple(out.shape)} and {out.dtype}"
            )
    if c._plan is not None:
        return _decompress_pipeline(c, device, out)
    stream = c.data.numpy()
    if out is not None:
        if out.device.type == "cpu" and out.is_contiguous():
            _core.decompress(stream, _byte_view(out), _num_threads)
        else:
            out.copy_(decompress(c, device="cpu"))
        return out
    result = torch.empty(c.shape, dtype=c.dtype)
    _core.decompress(stream, _byte_view(result), _num_threads)
    if device is None:
        if c._numpy:
            return result.numpy()
        device = c.device
    device = torch.device(device)
    return result if device.type == "cpu" else result.to(device)


def _decompress_pipeline(c: CompressedTensor, device, out: Optional[torch.Tensor]):
    """decompress() of a stream the chunk pipeline decodes, where the stream lives
    (``out``, if given, is already checked)."""
    where = c.stream_device
    if out is not None:
        if out.device == where and out.is_contiguous():
            _decode_pipeline(c, out)
        else:
            out.copy_(_decompress_pipeline(c, None, None))
        return out
    result = torch.empty(c.shape, dtype=c.dtype, device=where)
    _decode_pipeline(c, result)
    device = c.device if device is None else torch.device(device)
    return result if device == where else result.to(device)
