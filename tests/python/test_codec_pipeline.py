"""The chunk pipeline, the CUDA backend's code path, driven from Python.

On any machine, the pipeline's host emulation runs the very stages the CUDA kernels run
(cpp/codec/chunk.h) through the same Python driver (actzip._pipeline): it must write the
CPU backend's bytes and decode like it. Tests marked ``cuda`` run the real thing on a GPU.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

import actzip
from actzip import _pipeline, codec
from codec_util import DTYPES, bits_of, check_bound, relu_like, smooth_image, specials

HAS_CUDA = "cuda" in actzip.backends()
cuda = pytest.mark.cuda


def host_pipeline(x, bound, mode="abs", checksum=False, threads=1):
    return codec._compress_pipeline(x, bound, mode, checksum, _pipeline.Exec(None, threads))


def inputs():
    g = torch.Generator().manual_seed(5)
    mixed = torch.randn(3 * 16384 + 7, generator=g)
    mixed[16384 : 2 * 16384] = 0
    mixed[2 * 16384 : 2 * 16384 + 100] = float("nan")
    return {
        "relu": relu_like(70000, seed=1),
        "image": smooth_image((4, 3, 40, 60), seed=2),
        "normal": torch.randn(33, 1000, generator=g),
        "specials": specials().repeat(300),
        "mixed": mixed,
        "scalar": torch.tensor(2.5),
        "empty": torch.empty(0, 3),
        "zeros": torch.zeros(20000),
    }


@pytest.mark.parametrize("name", list(inputs()))
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("mode,bound", [("abs", 1e-2), ("rel", 1e-3), ("rel", 1e-6)])
def test_host_pipeline_writes_the_cpu_backends_bytes_and_decodes_like_it(name, dtype, mode, bound):
    x = inputs()[name].to(dtype)
    c = host_pipeline(x, bound, mode, checksum=(bound == 1e-3), threads=2)
    ref = actzip.compress(x, bound, mode=mode, checksum=(bound == 1e-3))
    assert c.to_bytes() == ref.to_bytes()
    assert c.stats == ref.stats and c.error_bound == ref.error_bound and c.nbytes == ref.nbytes
    y = actzip.decompress(c)
    assert y.shape == x.shape and y.dtype == x.dtype
    assert np.array_equal(bits_of(y), bits_of(actzip.decompress(ref)))
    check_bound(x, y, c.error_bound)


@settings(max_examples=60, deadline=None)
@given(
    data=st.lists(st.floats(width=32, allow_nan=True, allow_infinity=True), min_size=1, max_size=3000),
    width=st.integers(1, 130),
    bound=st.sampled_from([1e-1, 1e-3, 1e-5]),
    mode=st.sampled_from(["abs", "rel"]),
)
def test_property_host_pipeline_bytes_equal_the_cpu_backends(data, width, bound, mode):
    x = torch.tensor(data, dtype=torch.float32)
    n = (x.numel() // width) * width or x.numel()
    x = x[:n].reshape(-1, width) if n % width == 0 and n else x
    assert host_pipeline(x, bound, mode).to_bytes() == actzip.compress(x, bound, mode=mode).to_bytes()


def test_host_pipeline_refuses_damaged_streams_like_the_cpu_backend():
    x = relu_like(40000, seed=3)
    c = host_pipeline(x, 1e-2, "rel")
    good = c.data.clone()
    header_bytes = c._plan.info["header_bytes"]
    rng = np.random.default_rng(0)
    outcomes = set()
    for _ in range(300):
        d = good.clone()
        for at in rng.integers(header_bytes, d.numel(), size=int(rng.integers(1, 4))):
            d[int(at)] = int(rng.integers(0, 256))
        damaged = codec.CompressedTensor(d, c._info, c.device, False, None, c._plan)
        try:
            got = bits_of(actzip.decompress(damaged))
        except actzip.FormatError:
            got = None
        try:
            want = bits_of(actzip.decompress(actzip.CompressedTensor.from_bytes(d.numpy().tobytes())))
        except actzip.FormatError:
            want = None
        assert (got is None) == (want is None)
        if got is not None:
            assert np.array_equal(got, want)
        outcomes.add(got is None)
    assert outcomes == {True, False}, "the damage must give both refused and accepted streams"


def test_codebooks_of_another_tensor_code_a_valid_stream_with_the_same_values():
    donor = smooth_image((2, 4, 32, 32), seed=9)
    _, books = codec._compress_pipeline_books(donor, 1e-2, "rel", False, _pipeline.Exec(None, 1), None)
    for name, x in inputs().items():
        c, own = codec._compress_pipeline_books(x, 1e-3, "rel", False, _pipeline.Exec(None, 2), books)
        fresh = actzip.compress(x, 1e-3, mode="rel")
        assert own is not None
        y = actzip.decompress(c)
        assert np.array_equal(bits_of(y), bits_of(actzip.decompress(actzip.CompressedTensor.from_bytes(c.to_bytes()))))
        # Each element is the fresh stream's value, or exact where a chunk went raw.
        want, exact = bits_of(actzip.decompress(fresh)), bits_of(x)
        got = bits_of(y)
        assert np.all((got == want) | (got == exact)), name
        check_bound(x, y, c.error_bound)


def test_host_pipeline_decodes_into_out_and_to_a_device():
    x = smooth_image((2, 8, 32, 32), seed=4)
    c = host_pipeline(x, 1e-3, "rel")
    out = torch.full_like(x, 7.0)
    assert actzip.decompress(c, out=out) is out
    assert np.array_equal(bits_of(out), bits_of(actzip.decompress(c)))
    strided = torch.empty(x.shape[::-1]).permute(3, 2, 1, 0)
    actzip.decompress(c, out=strided)
    assert torch.equal(strided, out)
    with pytest.raises(ValueError, match="out must have shape"):
        actzip.decompress(c, out=torch.empty(3))


def test_streams_move_between_devices_only_with_the_cuda_backend():
    c = actzip.compress(relu_like(1000), 1e-2)
    assert c.stream_device == torch.device("cpu")
    assert c.to("cpu").to_bytes() == c.to_bytes()
    with pytest.raises(ValueError, match="device must be"):
        c.to("meta")
    if not HAS_CUDA:
        assert actzip.backends() == ["cpu"]
        with pytest.raises(RuntimeError, match="CUDA backend is not available"):
            c.to("cuda")


# --- on a GPU --------------------------------------------------------------------------

needs_cuda = pytest.mark.skipif(not HAS_CUDA, reason="the CUDA backend or a GPU is not available")


@cuda
@needs_cuda
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("mode,bound", [("abs", 1e-2), ("rel", 1e-3), ("rel", 1e-6)])
@pytest.mark.parametrize("name", list(inputs()))
def test_cuda_writes_the_cpu_backends_bytes_and_decodes_like_it(name, dtype, mode, bound):
    x = inputs()[name].to(dtype)
    ref = actzip.compress(x, bound, mode=mode, checksum=(bound == 1e-3))
    c = actzip.compress(x.cuda(), bound, mode=mode, checksum=(bound == 1e-3))
    assert c.data.is_cuda and c.stream_device.type == "cuda"
    assert c.to_bytes() == ref.to_bytes()
    y = actzip.decompress(c)
    assert y.is_cuda and y.shape == x.shape and y.dtype == x.dtype
    assert np.array_equal(bits_of(y), bits_of(actzip.decompress(ref)))
    check_bound(x, y.cpu(), c.error_bound)


@cuda
@needs_cuda
def test_cuda_and_cpu_decode_each_others_streams():
    x = smooth_image((8, 16, 64, 64), seed=6).relu()
    gpu = actzip.compress(x.cuda(), 1e-3, mode="rel")
    cpu = actzip.compress(x, 1e-3, mode="rel")
    on_cpu = actzip.decompress(gpu.to("cpu"))
    on_gpu = actzip.decompress(cpu.to("cuda"))
    assert not on_cpu.is_cuda and on_gpu.is_cuda
    assert np.array_equal(bits_of(on_cpu), bits_of(on_gpu))
    from_bytes = actzip.CompressedTensor.from_bytes(gpu.to_bytes())
    assert np.array_equal(bits_of(actzip.decompress(from_bytes)), bits_of(on_cpu))


@cuda
@needs_cuda
def test_cuda_refuses_damaged_streams_with_a_format_error():
    x = relu_like(200000, seed=7).cuda()
    c = actzip.compress(x, 1e-2, mode="rel")
    damaged = c.data.clone()
    damaged[c._plan.info["header_bytes"] : c._plan.info["header_bytes"] + 64] = 0xFF
    bad = codec.CompressedTensor(damaged, c._info, c.device, False, None, c._plan)
    with pytest.raises(actzip.FormatError, match="chunk 0"):
        actzip.decompress(bad)
    # The device is still usable afterwards.
    assert torch.equal(actzip.decompress(c).cpu(), actzip.decompress(c.to("cpu")))


@cuda
@needs_cuda
def test_cuda_buffers_come_from_torchs_allocator_and_run_on_its_current_stream():
    x = relu_like(1 << 22, seed=8).cuda()
    torch.cuda.synchronize()
    before = torch.cuda.memory_allocated()
    torch.cuda.reset_peak_memory_stats()
    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side):
        c = actzip.compress(x, 1e-2, mode="rel")
        y = actzip.decompress(c)
    side.synchronize()

    def block(n):  # torch's caching allocator hands out multiples of 512 bytes
        return (n + 511) // 512 * 512

    # What is left is exactly the stream and the decoded tensor: every other buffer was
    # torch's and went back to it.
    assert torch.cuda.memory_allocated() - before == block(c.nbytes) + block(y.numel() * y.element_size())
    # At the peak: the stream, the output, and the pipeline's small buffers.
    chunks = -(-x.numel() // 16384)
    small = block(chunks * 64) + block(chunks) + 5 * (1 << 15)
    assert torch.cuda.max_memory_allocated() - before <= block(c.nbytes) + block(y.numel() * 4) + small
    check_bound(x.cpu(), y.cpu(), c.error_bound)


@cuda
@needs_cuda
def test_training_on_cuda_keeps_compressed_activations_on_the_gpu():
    torch.manual_seed(0)
    model = torch.nn.Sequential(
        torch.nn.Conv2d(3, 16, 3, padding=1), torch.nn.BatchNorm2d(16), torch.nn.ReLU(),
        torch.nn.Conv2d(16, 16, 3, padding=1), torch.nn.ReLU(), torch.nn.AdaptiveAvgPool2d(1), torch.nn.Flatten(),
        torch.nn.Linear(16, 10),
    ).cuda()
    x = torch.randn(32, 3, 32, 32, device="cuda")
    target = torch.randint(0, 10, (32,), device="cuda")
    loss_fn = torch.nn.CrossEntropyLoss()
    loss_fn(model(x), target).backward()
    reference = [p.grad.clone() for p in model.parameters()]
    model.zero_grad()
    az = actzip.compressed_activations(model, schedule=1e-4, mode="rel", min_bytes=4096)
    with az:
        loss_fn(model(x), target).backward()
    az.step()
    assert az.history[0]["tensors_compressed"] >= 3 and az.history[0]["failures"] == 0
    for p, g in zip(model.parameters(), reference):
        assert torch.allclose(p.grad, g, rtol=1e-2, atol=1e-3)
