"""actzip: error-bounded lossy compression of the activations PyTorch saves for backward."""

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

from . import schedule
from .telemetry import plot
from .training import ActivationCompressor, compressed_activations

__version__ = "0.1.0"

__all__ = [
    "ActivationCompressor",
    "CompressedTensor",
    "FormatError",
    "backends",
    "compress",
    "compress_bound",
    "compressed_activations",
    "decompress",
    "get_num_threads",
    "plot",
    "schedule",
    "set_num_threads",
]
