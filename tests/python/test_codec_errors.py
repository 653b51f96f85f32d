"""Every bad argument of the codec API raises the right exception, with a message that names
the argument."""

import math
import struct
import zlib

import numpy as np
import pytest
import torch

import actzip

X = torch.linspace(-1, 1, 100)


@pytest.mark.parametrize("bound", [0, 0.0, -1e-3, -math.inf, math.inf, math.nan, np.float64("nan")])
def test_non_positive_or_non_finite_bound_raises_value_error(bound):
    with pytest.raises(ValueError, match="error_bound"):
        actzip.compress(X, bound)


@pytest.mark.parametrize("bound", [True, False, "1e-3", None, [1e-3], torch.tensor(1e-3), 1e-3j])
def test_bound_of_the_wrong_type_raises_type_error(bound):
    with pytest.raises(TypeError, match="error_bound"):
        actzip.compress(X, bound)


def test_numpy_and_integer_bounds_are_accepted():
    assert actzip.compress(X, np.float32(0.5)).error_bound == 0.5
    assert actzip.compress(X, 1).error_bound == 1.0


@pytest.mark.parametrize("mode", ["ABS", "relative", "", None, 0])
def test_unknown_mode_raises_value_error(mode):
    with pytest.raises(ValueError, match="mode"):
        actzip.compress(X, 1e-3, mode=mode)


@pytest.mark.parametrize("checksum", [1, "yes", None])
def test_non_bool_checksum_raises_type_error(checksum):
    with pytest.raises(TypeError, match="checksum"):
        actzip.compress(X, 1e-3, checksum=checksum)


@pytest.mark.parametrize(
    "x",
    [
        torch.arange(10),
        torch.arange(10, dtype=torch.int32),
        torch.ones(10, dtype=torch.bool),
        torch.ones(10, dtype=torch.float64),
        torch.ones(10, dtype=torch.complex64),
        torch.ones(10, dtype=torch.uint8),
    ],
    ids=lambda t: str(t.dtype),
)
def test_tensor_of_an_unsupported_dtype_raises_type_error(x):
    with pytest.raises(TypeError, match="x"):
        actzip.compress(x, 1e-3)


@pytest.mark.parametrize(
    "x",
    [np.arange(10), np.ones(10, dtype=bool), np.ones(10, dtype=np.float64), np.ones(10, dtype=np.complex64),
     np.array(["a", "b"])],
    ids=lambda a: str(a.dtype),
)
def test_numpy_array_of_an_unsupported_dtype_raises_type_error(x):
    with pytest.raises(TypeError, match="x"):
        actzip.compress(x, 1e-3)


@pytest.mark.parametrize("x", [[1.0, 2.0], 1.5, None, "tensor", b"\0\0\0\0", memoryview(b"\0" * 8)],
                         ids=["list", "float", "None", "str", "bytes", "memoryview"])
def test_x_of_the_wrong_type_raises_type_error(x):
    with pytest.raises(TypeError, match="x"):
        actzip.compress(x, 1e-3)


def test_more_than_eight_dimensions_raises_value_error():
    with pytest.raises(ValueError, match="x"):
        actzip.compress(torch.zeros((1,) * 9), 1e-3)
    assert actzip.decompress(actzip.compress(torch.zeros((1,) * 8), 1e-3)).shape == (1,) * 8


@pytest.mark.parametrize(
    "out",
    [torch.empty(99), torch.empty(10, 10), torch.empty(100, dtype=torch.float16), torch.empty(100, dtype=torch.float64),
     torch.empty(100, dtype=torch.int32), torch.empty(1, 100)],
    ids=["short", "reshaped", "float16", "float64", "int32", "extra-dim"],
)
def test_out_of_the_wrong_shape_or_dtype_raises_value_error(out):
    ct = actzip.compress(X, 1e-3)
    with pytest.raises(ValueError, match="out"):
        actzip.decompress(ct, out=out)


@pytest.mark.parametrize("out", [np.empty(100, dtype=np.float32), [0.0] * 100, "out"], ids=["ndarray", "list", "str"])
def test_out_of_the_wrong_type_raises_type_error(out):
    ct = actzip.compress(X, 1e-3)
    with pytest.raises(TypeError, match="out"):
        actzip.decompress(ct, out=out)


@pytest.mark.parametrize("c", [X, X.numpy(), b"AZIP", None, "c"], ids=["tensor", "ndarray", "bytes", "None", "str"])
def test_decompress_of_something_else_raises_type_error(c):
    with pytest.raises(TypeError, match="c"):
        actzip.decompress(c)


@pytest.mark.parametrize("device", ["nowhere", 3.5])
def test_decompress_to_an_unknown_device_raises(device):
    ct = actzip.compress(X, 1e-3)
    with pytest.raises((RuntimeError, TypeError, ValueError)):
        actzip.decompress(ct, device=device)


@pytest.mark.parametrize("n", [0, -1, -100])
def test_set_num_threads_below_one_raises_value_error(n):
    saved = actzip.get_num_threads()
    with pytest.raises(ValueError, match="n"):
        actzip.set_num_threads(n)
    assert actzip.get_num_threads() == saved


@pytest.mark.parametrize("n", [1.0, 2.5, "2", None, True])
def test_set_num_threads_of_the_wrong_type_raises_type_error(n):
    with pytest.raises(TypeError, match="n"):
        actzip.set_num_threads(n)


@pytest.mark.parametrize("dtype", [torch.float64, torch.int32, np.float32, "float32"])
def test_compress_bound_of_an_unsupported_dtype_raises_type_error(dtype):
    with pytest.raises(TypeError, match="dtype"):
        actzip.compress_bound(100, dtype, 1)


@pytest.mark.parametrize("b", ["AZIP", None, [65, 90], np.zeros(8, dtype=np.uint8)], ids=["str", "None", "list", "ndarray"])
def test_from_bytes_of_the_wrong_type_raises_type_error(b):
    with pytest.raises(TypeError):
        actzip.CompressedTensor.from_bytes(b)


def test_from_bytes_accepts_bytes_bytearray_and_memoryview():
    stream = actzip.compress(X, 1e-3).to_bytes()
    for b in (stream, bytearray(stream), memoryview(stream)):
        assert actzip.CompressedTensor.from_bytes(b).to_bytes() == stream


def test_a_header_describing_more_elements_than_its_chunks_raises_format_error():
    # 2^47 more elements than the 2 chunks the stream holds: a 32-bit chunk count would wrap
    # back to 2, and decompress would allocate 562 TB, or return memory it never wrote.
    stream = bytearray(actzip.compress(torch.zeros(17000), 1e-3).to_bytes())
    assert struct.unpack_from("<Q", stream, 40)[0] == 17000
    struct.pack_into("<Q", stream, 40, 17000 + 2**47)
    header_bytes = struct.unpack_from("<I", stream, 8)[0]
    struct.pack_into("<I", stream, header_bytes - 8, zlib.crc32(bytes(stream[: header_bytes - 8])))
    with pytest.raises(actzip.FormatError, match="2\\^45"):
        actzip.CompressedTensor.from_bytes(bytes(stream))
