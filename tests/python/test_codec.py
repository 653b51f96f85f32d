"""actzip.compress / actzip.decompress: round trips, the bound's promises as properties,
CompressedTensor's attributes, and where compression must (or cannot) win."""

import math
import pickle

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

import actzip
from codec_util import (DEVICES, DTYPES, as_float64, bits_of, check_bound, from_bits, relu_like, row_plus_column_field,
                        smooth_image, specials)

# Rows of 33 and 97 over two chunks: the second chunk starts mid-row (2-D Lorenzo's edge).
SHAPES = [(), (0,), (4, 0, 3), (1,), (7,), (13, 17), (3, 5, 7), (2, 3, 5, 7), (2, 3, 1, 5, 11), (16385,), (3, 11003),
          (521, 33), (171, 97)]
MODES = ["abs", "rel"]


def _sample(shape, dtype, seed=0, scale=10.0):
    """Normal values with exact zeros and one of each special value where there is room."""
    g = torch.Generator().manual_seed(seed)
    n = math.prod(shape)
    x = torch.randn(n, generator=g, dtype=torch.float64) * scale
    x[::5] = 0.0
    sp = specials(torch.float64)
    if n >= 3 * sp.numel():
        x[1 : 1 + 3 * sp.numel() : 3] = sp
    return x.to(dtype).reshape(shape)


def expected_bound(x, bound, mode):
    """The absolute bound the stream must honour: the bound itself, or bound x the range of
    the finite values (for a constant tensor its magnitude, with none finite and non-zero: 1)."""
    if mode == "abs":
        return bound
    v = as_float64(x)
    v = v[np.isfinite(v)]
    rng = float(v.max() - v.min()) if v.size else 0.0
    if rng == 0:
        rng = float(np.abs(v).max()) if v.size else 0.0
    if rng == 0:
        rng = 1.0
    return bound * rng


# ---- round trips ---------------------------------------------------------------------------


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("shape", SHAPES, ids=str)
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
def test_round_trip_keeps_shape_dtype_and_the_bound(dtype, shape, mode):
    x = _sample(shape, dtype, seed=len(shape))
    ct = actzip.compress(x, 1e-3, mode=mode)
    y = actzip.decompress(ct)
    assert isinstance(y, torch.Tensor) and y.shape == x.shape and y.dtype == dtype and y.device == x.device
    assert ct.shape == x.shape and ct.dtype == dtype and ct.numel == x.numel()
    assert ct.error_bound == pytest.approx(expected_bound(x, 1e-3, mode), rel=1e-15)
    check_bound(x, y, ct.error_bound)


@pytest.mark.parametrize("shape", [(), (0,), (7,), (5, 3), (16385,)], ids=str)
@pytest.mark.parametrize("np_dtype", [np.float32, np.float16])
def test_numpy_array_in_gives_numpy_array_out(np_dtype, shape):
    x = _sample(shape, torch.float32, seed=3).numpy().astype(np_dtype)
    ct = actzip.compress(x, 1e-2)
    y = actzip.decompress(ct)
    assert isinstance(y, np.ndarray) and y.dtype == np_dtype and y.shape == x.shape
    check_bound(x, y, 1e-2)


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
def test_non_contiguous_input_is_copied_and_compressed(dtype):
    base = _sample((40, 60), dtype, seed=4)
    for view in (base.t(), base[:, ::3], base[::2, 1::2], base.t()[5:, :7]):
        assert not view.is_contiguous()
        y = actzip.decompress(actzip.compress(view, 1e-3))
        assert y.shape == view.shape
        check_bound(view, y, 1e-3)
    arr = _sample((40, 60), torch.float32, seed=5).numpy()
    for view in (arr.T, arr[:, ::3], arr[::-1]):
        y = actzip.decompress(actzip.compress(view, 1e-3))
        assert isinstance(y, np.ndarray) and y.shape == view.shape
        check_bound(view, y, 1e-3)


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
def test_decompress_into_out_fills_and_returns_it(dtype):
    x = _sample((30, 70), dtype, seed=6)
    ct = actzip.compress(x, 1e-2)
    out = torch.full((30, 70), 7.0, dtype=dtype)
    assert actzip.decompress(ct, out=out) is out
    assert torch.equal(bits_as_tensor(out), bits_as_tensor(actzip.decompress(ct)))
    check_bound(x, out, 1e-2)
    # A non-contiguous out is filled through a copy.
    strided = torch.zeros(70, 30, dtype=dtype).t()
    assert actzip.decompress(ct, out=strided) is strided
    check_bound(x, strided, 1e-2)


def bits_as_tensor(t):
    return torch.from_numpy(bits_of(t).astype(np.int64))


@pytest.mark.parametrize("device", DEVICES)
def test_decompress_places_the_tensor_on_the_requested_device(device):
    x = _sample((100,), torch.float32, seed=7)
    ct = actzip.compress(x, 1e-3)
    y = actzip.decompress(ct, device=device)
    assert y.device.type == device
    check_bound(x, y.cpu(), 1e-3)
    # A numpy array decodes to a tensor when a device is asked for.
    y = actzip.decompress(actzip.compress(x.numpy(), 1e-3), device=torch.device(device))
    assert isinstance(y, torch.Tensor) and y.device.type == device


@pytest.mark.parametrize("device", DEVICES)
def test_tensor_decodes_on_the_device_it_came_from(device):
    x = _sample((1000,), torch.float16, seed=8).to(device)
    ct = actzip.compress(x, 1e-2)
    assert ct.device.type == device
    y = actzip.decompress(ct)
    assert y.device.type == device
    check_bound(x.cpu(), y.cpu(), 1e-2)


# ---- CompressedTensor's attributes ---------------------------------------------------------


def test_compressed_tensor_attributes_describe_the_stream():
    x = relu_like(40000, seed=9).reshape(8, 5000)
    ct = actzip.compress(x, 1e-2, mode="rel", checksum=True)
    stream = ct.to_bytes()
    assert ct.nbytes == len(stream) == ct.data.numel()
    assert ct.data.dtype == torch.uint8 and ct.data.dim() == 1
    assert ct.raw_nbytes == x.numel() * 4
    assert ct.ratio == ct.raw_nbytes / ct.nbytes
    assert ct.shape == torch.Size([8, 5000]) and isinstance(ct.shape, torch.Size)
    assert ct.dtype == torch.float32 and ct.mode == "rel" and ct.requested_bound == 1e-2
    assert ct.error_bound == 1e-2 * (float(x.max()) - float(x.min()))
    assert sum(ct.stats[k] for k in ("zeros", "coded", "outliers")) == x.numel()
    assert "CompressedTensor(" in repr(ct)
    parsed = actzip.CompressedTensor.from_bytes(stream)
    assert parsed.shape == ct.shape and parsed.error_bound == ct.error_bound and parsed.stats is None
    assert parsed.mode == "rel" and parsed.requested_bound == 1e-2
    abs_ct = actzip.compress(x, 0.25)
    assert abs_ct.error_bound == 0.25 and abs_ct.mode == "abs"


@pytest.mark.parametrize("numpy_in", [False, True])
def test_pickled_compressed_tensor_round_trips(numpy_in):
    x = _sample((33, 21), torch.float32, seed=10)
    ct = actzip.compress(x.numpy() if numpy_in else x, 1e-3)
    back = pickle.loads(pickle.dumps(ct))
    assert back.to_bytes() == ct.to_bytes()
    assert back.shape == ct.shape and back.dtype == ct.dtype and back.error_bound == ct.error_bound
    assert back.device == ct.device
    y0, y1 = actzip.decompress(ct), actzip.decompress(back)
    assert type(y0) is type(y1)
    assert np.array_equal(bits_of(y0), bits_of(y1))


# ---- the bound's promises as properties ----------------------------------------------------

SPECIAL_VALUES = [0.0, -0.0, math.nan, math.inf, -math.inf, 1e-45, -1e-45, 1e-40, 1e-38, 3.4e38, -3.4e38, 65504.0,
                  6e-8, 1.0]


@st.composite
def tensors(draw, max_side=7):
    dtype = draw(st.sampled_from(DTYPES))
    shape = draw(hnp.array_shapes(min_dims=0, max_dims=5, min_side=0, max_side=max_side))
    scale = draw(st.sampled_from([1e-40, 1e-30, 1e-8, 1e-3, 1.0, 1e3, 1e8, 1e30, 1e37]))
    elements = st.one_of(
        st.floats(-1.0, 1.0, width=32).map(lambda v: v * scale),
        st.sampled_from(SPECIAL_VALUES),
        st.floats(width=32),
    )
    arr = draw(hnp.arrays(np.float64, shape, elements=elements))
    with np.errstate(over="ignore"):
        return torch.from_numpy(arr).to(dtype)


bounds = st.floats(-30, 10).map(lambda e: math.pow(10.0, e))


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(x=tensors(), bound=bounds, mode=st.sampled_from(MODES), checksum=st.booleans())
def test_property_bound_zeros_signs_and_specials_hold(x, bound, mode, checksum):
    ct = actzip.compress(x, bound, mode=mode, checksum=checksum)
    y = actzip.decompress(ct)
    assert y.shape == x.shape and y.dtype == x.dtype
    assert ct.error_bound == pytest.approx(expected_bound(x, bound, mode), rel=1e-15) or not math.isfinite(
        expected_bound(x, bound, mode)
    )
    check_bound(x, y, ct.error_bound)
    assert ct.nbytes <= actzip.compress_bound(x.numel(), x.dtype, x.dim())
    assert actzip.CompressedTensor.from_bytes(ct.to_bytes()).to_bytes() == ct.to_bytes()


@settings(max_examples=15, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    dtype=st.sampled_from(DTYPES),
    n=st.integers(16385, 60000),
    seed=st.integers(0, 2**31),
    bound=bounds,
    mode=st.sampled_from(MODES),
)
def test_property_bytes_do_not_depend_on_the_thread_count(dtype, n, seed, bound, mode):
    x = _sample((n,), dtype, seed=seed)
    streams, decoded = [], []
    saved = actzip.get_num_threads()
    try:
        for threads in (1, 2, 3):
            actzip.set_num_threads(threads)
            ct = actzip.compress(x, bound, mode=mode)
            streams.append(ct.to_bytes())
            decoded.append(bits_of(actzip.decompress(ct)))
    finally:
        actzip.set_num_threads(saved)
    assert streams[0] == streams[1] == streams[2]
    assert np.array_equal(decoded[0], decoded[1]) and np.array_equal(decoded[0], decoded[2])


@pytest.mark.parametrize(
    "make",
    [
        lambda: smooth_image((3, 8, 32, 32), 20),
        lambda: torch.relu(row_plus_column_field(700, 33, 21)),  # chunks start mid-row; zeros
        lambda: row_plus_column_field(400, 100, 22, torch.bfloat16),
        lambda: smooth_image((40, 3, 7, 128), 23, torch.float16),
    ],
    ids=["f32-32x32", "f32-relu-rows-of-33", "bf16-rows-of-100", "f16-rows-of-128"],
)
def test_images_give_the_same_bytes_on_any_thread_count_and_keep_the_bound(make):
    # Inputs the 2-D predictor codes, over several chunks.
    x = make()
    planted = x.view(-1)[7::1001]
    planted.copy_(torch.tensor([math.nan, -0.0, math.inf, 1e-30, -1e-30], dtype=x.dtype).repeat(planted.numel())[
        : planted.numel()])
    streams = []
    saved = actzip.get_num_threads()
    try:
        for threads in (1, 2, 3):
            actzip.set_num_threads(threads)
            ct = actzip.compress(x, 1e-2)
            streams.append(ct.to_bytes())
    finally:
        actzip.set_num_threads(saved)
    assert streams[0] == streams[1] == streams[2]
    assert ct.stats["lorenzo2d_chunks"] > 0
    check_bound(x, actzip.decompress(ct), 1e-2)


def _order0_bits(symbols: np.ndarray) -> float:
    _, counts = np.unique(symbols, return_counts=True)
    p = counts / counts.sum()
    return float(-(counts * np.log2(p)).sum())


@pytest.mark.parametrize("bound", [1e-2, 1e-3])
def test_sampling_finds_the_2d_predictor_on_planes_that_divide_the_chunk(bound):
    # Channel planes of 32x32 (a conv activation's layout): 16 planes to a chunk, so a
    # sample taken at a fixed stride of 1024 would always read the first rows of a plane,
    # where the 2-D predictor has no upper neighbour, and pick the 1-D one.
    x = smooth_image((16, 32, 32, 32), 7)
    ct = actzip.compress(x, bound, mode="rel")
    # The premise: over whole chunks, 2-D residuals of the codes take fewer bits.
    q = np.rint(x.numpy().astype(np.float64) / (2 * ct.error_bound)).astype(np.int64).reshape(-1, 16384)
    grid = q.reshape(q.shape[0], -1, 32)
    pred2d = np.zeros_like(grid)
    pred2d[:, :, 1:] += grid[:, :, :-1]
    pred2d[:, 1:, :] += grid[:, :-1, :]
    pred2d[:, 1:, 1:] -= grid[:, :-1, :-1]
    for chunk in range(q.shape[0]):
        lor1 = _order0_bits(np.diff(q[chunk], prepend=0))
        lor2 = _order0_bits((grid[chunk] - pred2d[chunk]).reshape(-1))
        assert lor2 < 0.8 * lor1
    assert ct.stats["lorenzo2d_chunks"] >= 0.9 * q.shape[0], ct.stats
    check_bound(x, actzip.decompress(ct), ct.error_bound)


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize(
    "scale,bound",
    [(1e38, 1e30), (1e30, 1e-3), (1e-38, 1e-45), (1e-45, 1e-50), (1e-40, 1e-42), (1.0, 1e-30), (1e3, 1e10)],
)
def test_huge_and_tiny_magnitudes_and_subnormals_keep_the_bound(dtype, scale, bound):
    x = (torch.randn(5000, generator=torch.Generator().manual_seed(11), dtype=torch.float64) * scale).to(dtype)
    ct = actzip.compress(x, bound)
    check_bound(x, actzip.decompress(ct), bound)


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
def test_every_16_bit_pattern_and_a_float32_sweep_keep_the_bound(dtype):
    width = 32 if dtype == torch.float32 else 16
    if width == 16:
        bits = np.arange(65536, dtype=np.uint16)
    else:
        bits = (np.arange(0, 2**32, 65537, dtype=np.uint64)).astype(np.uint32)
    x = from_bits(bits, dtype)
    for bound in (1e-30, 1e-6, 1e-2, 1.0, 1e4, 1e30):
        ct = actzip.compress(x, bound)
        check_bound(x, actzip.decompress(ct), bound)


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("mode", MODES)
def test_all_zeros_come_back_exact_and_tiny(dtype, mode):
    x = torch.zeros(50000, dtype=dtype)
    ct = actzip.compress(x, 1e-3, mode=mode)
    y = actzip.decompress(ct)
    assert np.array_equal(bits_of(y), bits_of(x))
    assert ct.nbytes < 200  # zero chunks: a header and 16 bytes a chunk
    assert ct.error_bound > 0 and math.isfinite(ct.error_bound)


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("value", [1.5, -3.0, 1e-20, 6e4])
def test_constant_tensor_keeps_the_bound_and_compresses(dtype, value):
    x = torch.full((20000,), value, dtype=dtype)
    for mode in MODES:
        ct = actzip.compress(x, 1e-3, mode=mode)
        y = actzip.decompress(ct)
        # rel: the range of a constant tensor is 0, so the bound is taken relative to |value|.
        assert ct.error_bound == pytest.approx(expected_bound(x, 1e-3, mode), rel=1e-15)
        check_bound(x, y, ct.error_bound)
        if mode == "rel" or abs(value) < 1e3:  # else |value| / step exceeds the codes' range
            assert ct.ratio > 10


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
def test_rel_mode_with_no_finite_values_round_trips_bit_exact(dtype):
    for fill in (math.nan, math.inf, -math.inf):
        x = torch.full((1000,), fill, dtype=dtype)
        ct = actzip.compress(x, 1e-2, mode="rel")
        assert ct.error_bound > 0 and math.isfinite(ct.error_bound)
        assert np.array_equal(bits_of(actzip.decompress(ct)), bits_of(x))
    mixed = torch.tensor([math.nan, math.inf, -math.inf, -0.0, 0.0] * 100, dtype=dtype)
    ct = actzip.compress(mixed, 1e-2, mode="rel")
    assert np.array_equal(bits_of(actzip.decompress(ct)), bits_of(mixed))


def test_nan_payloads_and_signs_come_back_bit_exact():
    bits = np.array([0x7FC00000, 0xFFC00000, 0x7F800001, 0xFFBFFFFF, 0x7FC12345, 0x80000000, 0x7F800000, 0xFF800000],
                    dtype=np.uint32)
    x = from_bits(np.tile(bits, 300), torch.float32)
    for mode in MODES:
        assert np.array_equal(bits_of(actzip.decompress(actzip.compress(x, 1e-3, mode=mode))), bits_of(x))
    half = np.array([0x7E00, 0xFE00, 0x7C01, 0xFDFF, 0x8000, 0x7C00, 0xFC00], dtype=np.uint16)
    for dtype in (torch.float16, torch.bfloat16):
        x = from_bits(np.tile(half, 300), dtype)
        assert np.array_equal(bits_of(actzip.decompress(actzip.compress(x, 1e-3))), bits_of(x))


# ---- size ----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "make",
    [
        lambda: relu_like(1 << 20, seed=12).reshape(16, 256, 256),  # smooth, then clipped
        lambda: torch.relu(torch.randn(16, 64, 32, 32, generator=torch.Generator().manual_seed(13))),  # i.i.d.
    ],
    ids=["smooth", "iid"],
)
def test_post_relu_activations_compress_more_than_six_times_at_rel_1e_2(make):
    x = make()
    assert 0.4 < float((x == 0).float().mean()) < 0.6
    ct = actzip.compress(x, 1e-2, mode="rel")
    assert ct.ratio > 6, f"ratio {ct.ratio:.2f}"
    check_bound(x, actzip.decompress(ct), ct.error_bound)


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("n", [1, 100, 16384, 16385, 70000])
def test_incompressible_data_stays_within_compress_bound(dtype, n):
    width = 32 if dtype == torch.float32 else 16
    bits = np.random.default_rng(n).integers(0, 2**width, n, dtype=np.uint64)
    x = from_bits(bits.astype(np.uint32 if width == 32 else np.uint16), dtype)
    for ndim_shape in [(n,), (1, 1, n, 1, 1, 1, 1, 1)]:
        xs = x.reshape(ndim_shape)
        ct = actzip.compress(xs, 1e-30, checksum=True)
        assert ct.nbytes <= actzip.compress_bound(n, dtype, xs.dim())
        assert np.array_equal(bits_of(actzip.decompress(ct)), bits_of(xs))


def test_compress_bound_follows_the_format_document():
    # docs/FORMAT.md section 6.
    def pad8(v):
        return (v + 7) // 8 * 8

    for dtype, size in ((torch.float32, 4), (torch.float16, 2), (torch.bfloat16, 2)):
        for n in (0, 1, 3, 16384, 16385, 10**6):
            for ndim in (0, 1, 3, 8):
                chunks = -(-n // 16384)
                counts = [min(16384, n - 16384 * c) for c in range(chunks)]
                want = pad8(40 + 8 * ndim + 2 + 128 + 2 + 520 + 2 + 128) + 8 * chunks + 8
                want += sum(16 + pad8(size * count) for count in counts) + 4
                assert actzip.compress_bound(n, dtype, ndim) == want


# ---- choices from an earlier tensor (what training reuses from step to step) ----------------


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("shape", [(16385,), (171, 97), (16, 64, 32, 32)], ids=str)
def test_a_tensors_own_choices_give_its_bytes_without_sampling(dtype, shape):
    x = relu_like(math.prod(shape), seed=5).reshape(shape).to(dtype)
    fresh, choices = actzip.codec._compress_cpu_reusing(x, 1e-2, "rel", None)
    again, same = actzip.codec._compress_cpu_reusing(x, 1e-2, "rel", choices)
    assert again.to_bytes() == fresh.to_bytes() == actzip.compress(x, 1e-2, mode="rel").to_bytes()
    chunks = -(-x.numel() // actzip.codec._core.CHUNK_ELEMS)
    assert fresh.stats["sampled_chunks"] == chunks and again.stats["sampled_chunks"] == 0
    assert tuple(choices.shape) == shape and same.quant_step == choices.quant_step


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    dtype=st.sampled_from(DTYPES),
    shape=st.sampled_from([(40000,), (3, 11003), (171, 97), (9, 128, 128)]),
    seeds=st.tuples(st.integers(0, 2**31), st.integers(0, 2**31)),
    scales=st.tuples(st.floats(-20, 20), st.floats(-20, 20)).map(lambda e: (10.0 ** e[0], 10.0 ** e[1])),
    bounds=st.tuples(bounds, bounds),
    mode=st.sampled_from(MODES),
    relu=st.booleans(),
)
def test_property_choices_from_other_values_and_bounds_keep_the_bound(dtype, shape, seeds, scales, bounds, mode, relu):
    # Whatever the choices were sampled from, they only steer the coding: the stream holds
    # the bound it reports, every zero, sign and special value.
    source = _sample(shape, dtype, seed=seeds[0], scale=scales[0])
    if relu:
        source = torch.relu(source)
    x = _sample(shape, dtype, seed=seeds[1], scale=scales[1])
    _, choices = actzip.codec._compress_cpu_reusing(source, bounds[0], mode, None)
    ct, _ = actzip.codec._compress_cpu_reusing(x, bounds[1], mode, choices)
    assert ct.stats["sampled_chunks"] == 0
    assert ct.error_bound == pytest.approx(expected_bound(x, bounds[1], mode), rel=1e-15) or not math.isfinite(
        expected_bound(x, bounds[1], mode)
    )
    got = actzip.decompress(ct)
    check_bound(x, got, ct.error_bound)
    assert ct.nbytes <= actzip.compress_bound(x.numel(), x.dtype, x.dim())
    # The choices steer the coding, never the values: where the stream decodes otherwise
    # than the freshly sampled one, one of them stored the chunk raw (exact values).
    fresh = actzip.decompress(actzip.compress(x, bounds[1], mode=mode))
    got_bits, fresh_bits, x_bits = bits_of(got), bits_of(fresh), bits_of(x)
    differ = got_bits != fresh_bits
    assert np.all((got_bits == x_bits) | (fresh_bits == x_bits) | ~differ)


def test_choices_of_another_shape_or_dtype_are_refused():
    x = torch.randn(200, 250)
    _, choices = actzip.codec._compress_cpu_reusing(x, 1e-2, "abs", None)
    for other in (torch.randn(250, 200), torch.randn(50000), torch.randn(200, 251), torch.randn(200, 250).half()):
        with pytest.raises(ValueError, match="another shape or dtype"):
            actzip.codec._compress_cpu_reusing(other, 1e-2, "abs", choices)
