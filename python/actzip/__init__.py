"""actzip: error-bounded lossy compression of the activations PyTorch saves for backward."""

from ._core import __version__ as _core_version
from .codec import (
    CompressedTensor,
    FormatError,
    backends,
    compress,
    compress_bound,
    decompress,
    get_num_threads,
    set_num_threads,
)

__version__ = "0.1.0"

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
