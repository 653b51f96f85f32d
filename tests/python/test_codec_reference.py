"""actzip's streams against the NumPy reference of docs/FORMAT.md (reference.py).

For each input the reference reads the stream with its own parser, classifies the input
with its own quantizer, and the two must agree exactly: which elements are zeros, coded or
outliers, every code (so every prediction value), every outlier's bits, and every decoded
value, bit for bit.

actzip writes format version 2 (chunks may carry a zero map); version-1 streams (the
golden ``tests/golden/v1_*.azip``) must still decode, and streams that break a zero-map
rule must be rejected (the tests at the end of this file).
"""

import functools
import math
import struct
import zlib
from fractions import Fraction
from pathlib import Path
from typing import Dict, List, NamedTuple, Optional, Tuple

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import actzip
import reference as ref
from codec_util import DTYPE_CODE, DTYPES, bits_of, from_bits, relu_like, row_plus_column_field, smooth_image


class Checked(NamedTuple):
    header: ref.Header
    chunks: List[ref.Chunk]  # as the reference read them
    ct: actzip.CompressedTensor


def check_stream_against_reference(x, bound: float, mode: str = "abs") -> Checked:
    """Compresses x with actzip and checks the stream and its decoding against the reference."""
    ct = actzip.compress(x, bound, mode=mode)
    stream = ct.to_bytes()
    h, chunks = ref.read_stream(stream)  # raises reference.FormatError on any broken rule
    dtype = x.dtype if isinstance(x, torch.Tensor) else {np.dtype(np.float32): torch.float32,
                                                          np.dtype(np.float16): torch.float16}[x.dtype]
    code = DTYPE_CODE[dtype]
    bits = bits_of(x)

    # The header says what was asked.
    assert h.dtype == code and h.shape == tuple(x.shape) and h.numel == bits.size
    assert h.bound_mode == (0 if mode == "abs" else 1)
    assert h.requested_bound == bound and h.error_bound == ct.error_bound
    assert h.quant_step == ref.quant_step_for(h.error_bound)
    if mode == "abs":
        assert h.error_bound == bound

    cl = ref.classify(bits, code, h.error_bound, h.quant_step)
    # What the stream says of every element: its class and code (raw chunks say nothing).
    got_cls = np.full(bits.size, -1, dtype=np.int8)
    got_codes = np.zeros(bits.size, dtype=np.int64)
    for c, ch in enumerate(chunks):
        sl = slice(c * ref.CHUNK_ELEMS, c * ref.CHUNK_ELEMS + ch.count)
        if ch.kind == ref.KIND_ZERO:
            got_cls[sl] = ref.ZERO
        elif ch.kind == ref.KIND_RAW:
            assert (ch.raw_bits == bits[sl]).all(), f"raw chunk {c} is not the input"
        else:
            view_cls, view_codes = got_cls[sl], got_codes[sl]
            view_cls[:] = ref.ZERO
            view_cls[ch.coded_mask] = ref.CODED
            view_codes[ch.coded_mask] = ch.codes
            view_cls[ch.outlier_pos] = ref.OUTLIER
            assert ch.outlier_bits == bits[sl][ch.outlier_pos].astype(np.int64).tolist(), f"chunk {c}: outlier bits"
            got = np.array(ch.codes, dtype=np.int64)
            # The prediction values, from the codes by the reference's encoder side.
            if ch.flags & ref.FLAG_LORENZO2D:
                u = ref.u_lorenzo2d(got, ch.coded_mask, c * ref.CHUNK_ELEMS, ref.row_2d(h.shape))
            elif ch.flags & ref.FLAG_LORENZO:
                u = ref.u_lorenzo(got)
            else:
                u = ref.u_none(got)
            assert np.array_equal(np.array(ch.u, dtype=np.int64), u), f"chunk {c}: prediction values differ"
            # The sign stream: a bit for each coded q = 0 under a Lorenzo predictor, none otherwise.
            if ch.flags & (ref.FLAG_LORENZO | ref.FLAG_LORENZO2D):
                assert ch.signs == ref.sign_bits(got), f"chunk {c}: sign stream"
                assert ch.sign_bytes == ref.pad8((len(ch.signs) + 7) // 8), f"chunk {c}: sign stream length"
            else:
                assert ch.signs == [] and ch.sign_bytes == 0, f"chunk {c}: a sign stream without a Lorenzo predictor"
            # A section holds its symbols and zero padding to the next multiple of 8 bytes.
            assert ch.mask_bytes == ref.pad8((ch.mask_bits_used + 7) // 8)
    # Classes and codes as the reference quantizer has them; at an exact tie the encoder may
    # have used the other nearest integer (the format allows either), with its outcome.
    known = got_cls >= 0
    same = (got_cls == cl.cls) & (got_codes == cl.codes)
    same_alt = cl.tie & (got_cls == cl.alt_cls) & (got_codes == cl.alt_codes)
    bad = np.nonzero(known & ~same & ~same_alt)[0]
    assert bad.size == 0, (
        f"classes/codes differ from the reference at {bad[:8]}: stream {got_cls[bad[:8]]}/{got_codes[bad[:8]]}, "
        f"reference {cl.cls[bad[:8]]}/{cl.codes[bad[:8]]}"
    )
    # A chunk of zeros only and a raw chunk are the encoder's choices for its content.
    for c, ch in enumerate(chunks):
        sl = slice(c * ref.CHUNK_ELEMS, c * ref.CHUNK_ELEMS + ch.count)
        if ch.kind == ref.KIND_ZERO:
            assert (bits[sl] == 0).all()

    # Decoding: actzip's decoder, the reference decoder and the reference quantizer agree.
    decoded = bits_of(actzip.decompress(ct, device="cpu"))
    _, ref_decoded = ref.decode(stream)
    assert np.array_equal(decoded, ref_decoded), "actzip and the reference decode differently"
    recon = np.where(same, cl.recon, cl.alt_recon)
    zero, coded, outlier = got_cls == ref.ZERO, got_cls == ref.CODED, got_cls == ref.OUTLIER
    assert (decoded[zero] == 0).all(), "zeros are not +0.0"
    assert np.array_equal(decoded[outlier], bits[outlier]), "outliers are not exact"
    assert np.array_equal(decoded[coded], recon[coded]), "coded values differ from the reference's"
    assert np.array_equal(decoded[~known], bits[~known]), "raw chunks are not exact"
    # The encoder's statistics count what it classified (raw chunks included).
    final_cls = np.where(known, got_cls, cl.cls)
    stats = ct.stats
    counts = tuple(int((final_cls == k).sum()) for k in (ref.ZERO, ref.CODED, ref.OUTLIER))
    if not (cl.tie & ~known).any():
        assert (stats["zeros"], stats["coded"], stats["outliers"]) == counts
    # ... and the predictors its chunks say they use.
    coded_chunks = [ch for ch in chunks if ch.kind == ref.KIND_CODED]
    assert stats["lorenzo_chunks"] == sum(1 for ch in coded_chunks if ch.flags & ref.FLAG_LORENZO)
    assert stats["lorenzo2d_chunks"] == sum(1 for ch in coded_chunks if ch.flags & ref.FLAG_LORENZO2D)
    return Checked(h, chunks, ct)


def _normal(n, seed, dtype=torch.float32, scale=1.0):
    g = torch.Generator().manual_seed(seed)
    return (torch.randn(n, generator=g, dtype=torch.float64) * scale).to(dtype)


def _with_nans(x, every):
    x = x.clone()
    x.view(-1)[::every] = float("nan")
    return x


def _zero_crossing_wave(n, bound, dtype=torch.float32):
    """A slow wave of amplitude 20 steps: around each of its zero crossings some 16 values
    quantize to q = 0, half of them positive, half negative (the sign stream's elements)."""
    step = ref.quant_step_for(bound)
    i = torch.arange(n, dtype=torch.float64)
    return (20 * step * torch.sin(i * (2 * math.pi / 2000))).to(dtype)


CASES = {
    "f32 relu abs, 2 chunks": (lambda: relu_like(21000, 1).reshape(3, 7000), 1e-2, "abs"),
    "f32 normal rel": (lambda: _normal(20000, 2), 1e-3, "rel"),
    "f16 numpy abs": (lambda: _normal(5000, 3, torch.float16).numpy(), 1e-3, "abs"),
    "f32 numpy rel": (lambda: _normal(3000, 4).numpy().reshape(30, 100), 5e-2, "rel"),
    "bf16 abs": (lambda: _normal(40000, 5, torch.bfloat16, 3.0), 1e-2, "abs"),
    "bf16 relu rel": (lambda: relu_like(17000, 6, torch.bfloat16), 1e-3, "rel"),
    "f32 smooth ramp (Lorenzo)": (lambda: torch.linspace(-3, 5, 30000, dtype=torch.float32), 1e-4, "abs"),
    "f16 smooth ramp (Lorenzo)": (lambda: torch.linspace(-30, 50, 20000).to(torch.float16), 1e-3, "abs"),
    "f32 noise (no prediction)": (lambda: _normal(20000, 11), 1e-2, "abs"),
    "f32 images (4, 8, 32, 32) (2-D Lorenzo)": (lambda: smooth_image((4, 8, 32, 32), 12), 1e-3, "abs"),
    "bf16 images after ReLU, NaNs, rel (2-D Lorenzo, masks, outliers)": (
        lambda: _with_nans(torch.relu(smooth_image((2, 8, 32, 32), 13)), 97).to(torch.bfloat16),
        1e-2,
        "rel",
    ),
    "f16 rows of 100, 3 chunks starting mid-row (2-D Lorenzo)": (
        lambda: row_plus_column_field(400, 100, 14, torch.float16),
        1e-2,
        "abs",
    ),
    "f32 rows of 48 after ReLU, 2 chunks starting mid-row": (
        lambda: torch.relu(row_plus_column_field(500, 48, 15) - 2),
        1e-2,
        "abs",
    ),
    "f32 wave crossing zero (Lorenzo, sign stream)": (lambda: _zero_crossing_wave(30000, 1e-2), 1e-2, "abs"),
    "f32 subnormals, tiny bound": (lambda: _normal(4000, 7) * 1e-39, 1e-44, "abs"),
    "f32 huge values": (lambda: _normal(4000, 8) * 1e37, 1e34, "abs"),
    "f16 near the overflow threshold": (lambda: torch.linspace(60000, 65504, 2000).to(torch.float16), 100.0, "abs"),
    "bf16 near its maximum": (lambda: torch.linspace(3.0e38, 3.38e38, 2000).to(torch.bfloat16), 1e36, "abs"),
    "f32 huge bound": (lambda: _normal(1000, 9), 1e308, "abs"),
    "f32 zeros and NaNs only (mask, outliers, no codes)": (
        lambda: torch.where(torch.arange(20000) % 10 == 0, torch.tensor(float("nan")), torch.tensor(0.0)),
        1e-3,
        "abs",
    ),
    "bf16 zeros and -0.0 only": (lambda: torch.where(torch.arange(3000) % 3 == 0, -0.0, 0.0).to(torch.bfloat16), 1e-3, "rel"),
    "f32 random bit patterns": (
        lambda: from_bits(np.random.default_rng(10).integers(0, 2**32, 20000, dtype=np.uint64).astype(np.uint32),
                          torch.float32),
        1e-3,
        "abs",
    ),
    "f16 every bit pattern": (lambda: from_bits(np.arange(65536, dtype=np.uint16), torch.float16), 0.01, "abs"),
    "bf16 every bit pattern": (lambda: from_bits(np.arange(65536, dtype=np.uint16), torch.bfloat16), 1e-20, "abs"),
}


@pytest.mark.parametrize("name", list(CASES))
def test_stream_matches_reference_quantizer_predictor_and_decoder(name):
    make, bound, mode = CASES[name]
    check_stream_against_reference(make(), bound, mode)


# Bound 1e-2: 2e = 0.02 = 163.84 * 2^-13, so the step is 163 * 2^-13. Bound 163 * 2^-14:
# the same step, now exactly 2e, so a value halfway between two multiples of it is off by
# exactly the bound either way and must still be coded.
@pytest.mark.parametrize("bound", [1e-2, 163 * 2.0**-14])
def test_ties_use_a_nearest_integer_that_passes_the_check(bound):
    # Values exactly halfway between two multiples of the step ((2k + 1) * 163 * 2^-14 has at
    # most 20 significant bits: exact in float32), and the multiples themselves.
    step = 163 * 2.0**-13
    k = np.arange(1, 3000, dtype=np.float64)
    x = torch.tensor(np.concatenate([(k + 0.5) * step, -(k + 0.5) * step, k * step]), dtype=torch.float32)
    assert np.array_equal(x.numpy().astype(np.float64)[: k.size], (k + 0.5) * step)
    h = check_stream_against_reference(x, bound).header
    assert h.quant_step == step
    if bound == step / 2:
        ct = actzip.compress(x, bound)
        assert ct.stats["outliers"] == 0, "a tie off by exactly the bound is within it"


def test_values_just_above_the_largest_q_round_down_to_it_and_are_coded():
    # Section 3 bounds the rounded q, not x / step: x / step in (2^23 - 2, 2^23 - 1.5) has
    # q = 2^23 - 2, the largest that is coded. By hand, bound 0.625 gives step 1.25 (2e = 1.25
    # = 160 * 2^-7) and x = 10485758 is 8388606.4 steps: coded, its binary32 reconstruction
    # 8388606 * 1.25 = 10485757.5 rounds (a tie) to the even 10485758, x itself. Around it,
    # for several steps, every float32 value near (2^23 - 2 + f) * step for f in [0, 1).
    x = torch.tensor([10485758.0, -10485758.0, 10485759.0] * 1000, dtype=torch.float32)
    ct = actzip.compress(x, 0.625)
    assert ref.parse_header(ct.to_bytes()).quant_step == 1.25
    assert (ct.stats["coded"], ct.stats["outliers"]) == (2000, 1000)  # 10485759: q = 2^23 - 1, too large
    check_stream_against_reference(x, 0.625)
    for bound in [0.625, 1e-2, 3e-3, 0.1 / 3, 7.0]:
        step = ref.quant_step_for(bound)
        f = np.linspace(0.0, 1.0, 4000, endpoint=False)
        v = ((ref.MAX_Q + f) * step).astype(np.float32)
        check_stream_against_reference(torch.from_numpy(np.concatenate([v, -v])), bound)


def test_smooth_data_is_coded_with_lorenzo_prediction():
    x = torch.linspace(-3, 5, 30000, dtype=torch.float32)
    ct = actzip.compress(x, 1e-4)
    _, chunks = ref.read_stream(ct.to_bytes())
    assert any(ch.kind == ref.KIND_CODED and ch.flags & 1 for ch in chunks)


def _predictor_chunks(chunks: List[ref.Chunk], flag: int) -> int:
    return sum(1 for ch in chunks if ch.kind == ref.KIND_CODED and ch.flags & flag)


@pytest.mark.parametrize("width", [96, 48, 12, 3, 2])
def test_2d_stream_reshaped_so_chunks_start_mid_row_decodes_like_the_reference(width):
    # A stream made with rows of 32 (every chunk starts at column 0), its shape changed to rows
    # that do not divide 16384: still a valid stream, whose second chunk now starts mid-row.
    # actzip and the reference decode it alike (or both reject a q out of range).
    x = row_plus_column_field(768, 32, seed=24)
    ct = actzip.compress(x, 1e-2)
    assert ct.stats["lorenzo2d_chunks"] == 2
    stream = bytearray(ct.to_bytes())
    struct.pack_into("<QQ", stream, 40, x.numel() // width, width)
    hb = struct.unpack_from("<I", stream, 8)[0]
    struct.pack_into("<I", stream, hb - 8, zlib.crc32(bytes(stream[:hb - 8])))
    stream = bytes(stream)
    try:
        _, want = ref.decode(stream)
    except ref.FormatError:
        with pytest.raises(actzip.FormatError):
            actzip.decompress(actzip.CompressedTensor.from_bytes(stream))
        return
    got = actzip.decompress(actzip.CompressedTensor.from_bytes(stream))
    assert got.shape == (x.numel() // width, width)
    assert np.array_equal(bits_of(got), want)


def test_noise_is_coded_without_prediction():
    x = _normal(40000, 16)
    ct = actzip.compress(x, 1e-2)
    _, chunks = ref.read_stream(ct.to_bytes())
    assert len(chunks) == 3 and all(ch.kind == ref.KIND_CODED for ch in chunks)
    assert all(ch.flags & (ref.FLAG_LORENZO | ref.FLAG_LORENZO2D) == 0 for ch in chunks)
    assert ct.stats["lorenzo_chunks"] == ct.stats["lorenzo2d_chunks"] == 0


def test_smooth_images_are_coded_with_2d_lorenzo_prediction():
    # Image-like activations (N, C, 32, 32): the stats and the stream say the 2-D predictor
    # codes the chunks, and it beats prediction along the flattened order.
    x = smooth_image((4, 16, 32, 32), 17)
    ct = actzip.compress(x, 1e-3)
    chunks = -(-x.numel() // ref.CHUNK_ELEMS)
    assert ct.stats["lorenzo2d_chunks"] == chunks and ct.stats["lorenzo_chunks"] == 0
    # The same values in rows of 1024 (above 128: no 2-D prediction) cost more.
    flat = actzip.compress(x.reshape(-1, 1024), 1e-3)
    assert flat.stats["lorenzo2d_chunks"] == 0 and flat.stats["lorenzo_chunks"] == chunks
    assert ct.nbytes < flat.nbytes
    # (check_stream_against_reference checks that the stats count what the chunk flags say.)
    assert _predictor_chunks(check_stream_against_reference(x[:1], 1e-3).chunks, ref.FLAG_LORENZO2D) == 1


@pytest.mark.parametrize("width", [2, 3, 5, 17, 32, 33, 100, 127, 128])
def test_rows_of_every_allowed_width_use_2d_lorenzo_and_match_the_reference(width):
    # Two chunks or more; for widths that do not divide 16384 the second chunk starts mid-row.
    x = row_plus_column_field(-(-20000 // width), width, seed=width)
    assert _predictor_chunks(check_stream_against_reference(x, 1e-2).chunks, ref.FLAG_LORENZO2D) == 2


@pytest.mark.parametrize("shape", [(20000, 1), (160, 129), (20, 1000), (20000,), ()], ids=str)
def test_tensors_whose_last_extent_is_not_2_to_128_never_use_2d_lorenzo(shape):
    n = math.prod(shape)
    x = row_plus_column_field(max(n // shape[-1], 1), shape[-1], seed=18).reshape(shape) if shape else torch.tensor(2.5)
    checked = check_stream_against_reference(x, 1e-2)
    assert checked.ct.stats["lorenzo2d_chunks"] == 0 == _predictor_chunks(checked.chunks, ref.FLAG_LORENZO2D)


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("predictor", ["lorenzo", "lorenzo2d"])
def test_values_rounding_to_q_zero_keep_their_sign_through_the_sign_stream(dtype, predictor):
    # Smooth data crossing zero, so that a Lorenzo predictor codes it, with planted values of
    # both signs that round to q = 0 (|x| < step / 2): each decodes to +-step / 4 with its own
    # sign, the sign coming from the chunk's sign stream.
    bound = 1e-2
    step = ref.quant_step_for(bound)
    if predictor == "lorenzo":
        x = _zero_crossing_wave(30000, bound, torch.float64)
        flag = ref.FLAG_LORENZO
    else:
        x = smooth_image((2, 16, 32, 32), 19, torch.float64)
        flag = ref.FLAG_LORENZO2D
    flat = x.view(-1)
    planted = torch.arange(101, flat.numel(), 397)
    fractions = torch.tensor([0.01, 0.25, 0.49, -0.01, -0.25, -0.49], dtype=torch.float64)
    flat[planted] = fractions[torch.arange(planted.numel()) % fractions.numel()] * step
    x = x.to(dtype)
    checked = check_stream_against_reference(x, bound)
    chunks = checked.chunks
    assert all(ch.kind == ref.KIND_CODED and ch.flags & flag for ch in chunks), [ch.flags for ch in chunks]
    signs = [b for ch in chunks for b in ch.signs]
    assert len(signs) > 2 * planted.numel() // 3 and 0 < sum(signs) < len(signs), "sign bits of both values"
    assert all(ch.sign_bytes == ref.pad8((len(ch.signs) + 7) // 8) for ch in chunks)
    # The planted values come back as +-step / 4 (rounded to the dtype), with their signs.
    y = actzip.decompress(checked.ct)
    want = ref.reconstruct(np.where(flat[planted].numpy() < 0, -1, 1), step, DTYPE_CODE[dtype])
    assert np.array_equal(bits_of(y)[planted.numpy()], want)
    assert np.array_equal(np.signbit(y.double().view(-1)[planted].numpy()), np.signbit(flat[planted].numpy()))


def test_huge_bound_gets_the_largest_step_of_the_format():
    # 2 * 1e308 overflows a double; the step is capped at the largest M * 2^E with M <= 255
    # that is a binary32 value: 255 * 2^120 (255 * 2^121 and 128 * 2^121 = 2^128 overflow).
    stream = actzip.compress(torch.ones(10), 1e308).to_bytes()
    h = ref.parse_header(stream)
    assert h.quant_step == 255 * 2.0**120
    assert stream[32:36] == struct.pack("<I", 0x7F7F0000)  # binary32 bits of 1.9921875 * 2^127


@pytest.mark.parametrize(
    "bound, step",
    [
        # Worked by hand from section 3: step = the largest M * 2^E <= 2e, M in [1, 255].
        (0.5, 1.0),                       # 2e = 1 = 128 * 2^-7
        (1e-3, 131 * 2.0**-16),           # 2e = 0.002 = 131.072 * 2^-16
        (0.3, 153 * 2.0**-8),             # 2e = 0.6 = 153.6 * 2^-8
        (100.0, 200.0),                   # 2e = 200 = 200 * 2^0
        (1e-44, 14 * 2.0**-149),          # 2e = 14.27 * 2^-149: a subnormal step
        (2.0**-151, 2.0**-149),           # 2e = 2^-150: below every M * 2^E; the smallest step
        (255 * 2.0**119, 255 * 2.0**120),  # 2e is the cap itself
    ],
)
def test_quant_step_for_gives_the_steps_worked_by_hand(bound, step):
    assert ref.quant_step_for(bound) == step
    stream = actzip.compress(torch.ones(4), bound).to_bytes()
    assert ref.parse_header(stream).quant_step == step
    arr = np.frombuffer(stream, dtype=np.uint8)
    assert actzip._core.read_info(arr)["quant_step"] == step == actzip._core.validate(arr)["quant_step"]


def test_quant_step_keeps_the_bound_tight():
    # For 2e from 2^-142 to 2^128, 2e (1 - 1/128) < step <= 2e (exact rational arithmetic),
    # over random bounds and bounds whose 2e is exactly, or just off, an 8-bit value.
    rng = np.random.default_rng(12)
    bounds = [math.ldexp(1.0 + rng.random(), int(rng.integers(-142, 127))) for _ in range(3000)]
    for mant in (128, 129, 200, 255):
        for e in range(-142, 121, 11):
            exact = math.ldexp(mant, e - 1)
            bounds += [exact, math.nextafter(exact, 0.0), math.nextafter(exact, math.inf)]
    for bound in bounds:
        twice, step = 2 * Fraction(bound), Fraction(ref.quant_step_for(bound))
        if Fraction(2) ** -142 <= twice < Fraction(2) ** 128:
            assert twice * Fraction(127, 128) < step <= twice, bound


def test_round_trips_use_more_than_95_percent_of_the_bound():
    # The largest error of a large random tensor comes within 5% of the bound: the step is
    # within 1/128 below 2e (a power-of-two step would leave up to half the bound unused).
    g = torch.Generator().manual_seed(4)
    for dtype, bound in [(torch.float32, 1e-2), (torch.float32, 0.7), (torch.float16, 3e-2), (torch.bfloat16, 0.2)]:
        x = torch.randn(1 << 17, generator=g).to(dtype)
        y = actzip.decompress(actzip.compress(x, bound))
        err = (x.to(torch.float64) - y.to(torch.float64)).abs().max().item()
        assert 0.95 * bound < err <= bound, (dtype, bound, err / bound)


@st.composite
def _bit_arrays(draw):
    dtype = draw(st.sampled_from([torch.float32, torch.float16, torch.bfloat16]))
    n = draw(st.integers(0, 300))
    width = 32 if dtype == torch.float32 else 16
    raw = draw(st.lists(st.integers(0, 2**width - 1), min_size=n, max_size=n))
    bits = np.array(raw, dtype=np.uint64).astype(np.uint32 if width == 32 else np.uint16)
    return from_bits(bits, dtype)


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    x=st.one_of(
        _bit_arrays(),
        st.lists(st.floats(-1e4, 1e4, width=32), min_size=1, max_size=400).map(
            lambda v: torch.tensor(v, dtype=torch.float32)
        ),
    ),
    log_bound=st.floats(-40, 10),
    mode=st.sampled_from(["abs", "rel"]),
)
def test_any_input_matches_the_reference(x, log_bound, mode):
    check_stream_against_reference(x, math.pow(10.0, log_bound), mode)


@st.composite
def _row_column_fields(draw):
    """Rows of 1 to 130 values: x[i, j] = (a(i) + b(j)) * scale with a a slow random walk and
    b arbitrary, so that 2-D Lorenzo often pays; some elements replaced by zeros, NaN, Inf,
    -0.0 and values far below the bound (q = 0, in the sign stream)."""
    dtype = draw(st.sampled_from([torch.float32, torch.float16, torch.bfloat16]))
    width = draw(st.integers(1, 130))
    height = draw(st.integers(1, 40))
    walk = np.cumsum(draw(st.lists(st.integers(-2, 2), min_size=height, max_size=height)))
    cols = np.array(draw(st.lists(st.integers(-300, 300), min_size=width, max_size=width)))
    scale = draw(st.sampled_from([2.0**-10, 1e-3, 0.37, 1.0]))
    x = (walk[:, None] + cols[None, :]).astype(np.float64) * scale
    specials = st.sampled_from([0.0, -0.0, math.nan, math.inf, -math.inf, 1e-3 * scale, -1e-3 * scale])
    for index, value in draw(st.lists(st.tuples(st.integers(0, x.size - 1), specials), max_size=12)):
        x.flat[index] = value
    return torch.from_numpy(x).to(dtype), scale


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(field=_row_column_fields(), bound_to_scale=st.floats(0.05, 3.0), mode=st.sampled_from(["abs", "rel"]))
def test_any_image_like_input_matches_the_reference(field, bound_to_scale, mode):
    x, scale = field
    bound = bound_to_scale * scale if mode == "abs" else bound_to_scale * 1e-3
    check_stream_against_reference(x, bound, mode)


# ---- zero maps (format version 2) and version-1 streams -------------------------------------

def _smooth_field() -> torch.Tensor:
    """sin(a b) for a and b on [0, 1], in rows of 128: smooth along both axes, so that most
    prediction residuals are 0 (a zero map pays), and 8 chunks, the fewest the encoder maps."""
    return torch.outer(torch.linspace(0, 1, 1024), torch.linspace(0, 1, 128)).sin().reshape(8, 128, 128)


def _mapped(chunks: List[ref.Chunk]) -> List[int]:
    """The chunks whose code section holds a zero map (chunk_flags bit 3)."""
    return [c for c, ch in enumerate(chunks) if ch.kind == ref.KIND_CODED and ch.flags & ref.FLAG_ZMAP]


@functools.lru_cache(maxsize=None)
def _zmap_stream() -> bytes:
    """A version-2 stream of actzip's with zero maps (the base of the hostile inputs below)."""
    stream = actzip.compress(_smooth_field(), 1e-2, mode="rel").to_bytes()
    h, chunks = ref.read_stream(stream)
    assert h.version == 2, "actzip wrote a version-1 stream"
    assert _mapped(chunks), "no chunk with a zero map"
    return stream


def _rejected(stream: bytes) -> None:
    """Both the reference and actzip reject the stream with FormatError."""
    with pytest.raises(ref.FormatError):
        ref.read_stream(stream)
    with pytest.raises(actzip.FormatError):
        actzip.decompress(actzip.CompressedTensor.from_bytes(stream))


def _decodes_to(stream: bytes, want: np.ndarray) -> None:
    """Both the reference and actzip decode the stream to the bits want."""
    _, got = ref.decode(stream)
    assert np.array_equal(got, want), "the reference decodes differently"
    assert np.array_equal(bits_of(actzip.decompress(actzip.CompressedTensor.from_bytes(stream))), want), (
        "actzip decodes differently"
    )


def _chunk_at(h: ref.Header, c: int) -> int:
    return h.header_bytes + (h.chunk_end[c - 1] if c else 0)


def _fix_checksums(s: bytearray) -> bytes:
    """The header checksum, and the payload checksum where flag bit 0 says there is one,
    recomputed over the bytes as they now are."""
    hb = struct.unpack_from("<I", s, 8)[0]
    struct.pack_into("<I", s, hb - 8, zlib.crc32(bytes(s[:hb - 8])))
    if struct.unpack_from("<H", s, 6)[0] & 1:
        struct.pack_into("<I", s, len(s) - 4, zlib.crc32(bytes(s[hb:len(s) - 4])))
    return bytes(s)


def _replace_chunk(stream: bytes, c: int, new: bytes) -> bytes:
    """The stream with chunk c's bytes replaced by new (a multiple of 8 bytes long), the chunk
    table and checksums made to match."""
    assert len(new) % 8 == 0
    h = ref.parse_header(stream)
    start, end = _chunk_at(h, c), h.header_bytes + h.chunk_end[c]
    delta = len(new) - (end - start)
    s = bytearray(stream[:start] + new + stream[end:])
    table = h.header_bytes - 8 - 8 * len(h.chunk_end)
    for k in range(c, len(h.chunk_end)):
        struct.pack_into("<Q", s, table + 8 * k, h.chunk_end[k] + delta)
    return _fix_checksums(s)


def _as_version_1(stream: bytes) -> bytes:
    """A version-2 stream with its header rewritten as version 1 (no zmap_symbols and
    zmap_lengths, padding, header_bytes and header checksum to match); the payload as it was."""
    h = ref.parse_header(stream)
    assert h.version == 2
    pos = 40 + 8 * len(h.shape) + 2 + (len(h.mask_lengths) + 1) // 2 + 2 + (len(h.code_lengths) + 1) // 2
    table = h.header_bytes - 8 - 8 * len(h.chunk_end)
    s = bytearray(stream[:pos])
    s += bytes(ref.pad8(pos) - pos) + stream[table:h.header_bytes - 8] + bytes(8)
    struct.pack_into("<H", s, 4, 1)
    struct.pack_into("<I", s, 8, len(s))
    return _fix_checksums(s + stream[h.header_bytes:])


def _codes(lengths: List[int]) -> Dict[int, Tuple[int, int]]:
    """symbol -> (length, code) of a canonical codebook (section 5)."""
    return {s: key for key, s in ref.canonical_codes(lengths).items()}


def _pack(bits: List[int]) -> bytes:
    """A bit stream of these bits, least significant first: pad8(ceil(B / 8)) bytes (section 5)."""
    nbytes = ref.pad8((len(bits) + 7) // 8)
    padded = np.array(bits + [0] * (8 * nbytes - len(bits)), dtype=np.uint8)
    return np.packbits(padded, bitorder="little").tobytes()


def _huffman_bits(symbol: int, codes: Dict[int, Tuple[int, int]]) -> List[int]:
    n, code = codes[symbol]
    return [(code >> (n - 1 - i)) & 1 for i in range(n)]  # a code's first bit is its most significant


def _code_section(h: ref.Header, ch: ref.Chunk, zmap: Optional[List[int]]) -> bytes:
    """Chunk ch's code section written again from its values (section 2), with the zero map
    zmap (its bits, one per coded element and maybe a few more in the last byte) or without a
    map (None); the sign stream as it was."""
    n = len(ch.u)
    if zmap is None:
        carried, zmap_section = list(range(n)), b""
    else:
        bits = zmap + [0] * (-len(zmap) % 8)
        assert len(bits) == 8 * ((n + 7) // 8)
        carried = [e for e in range(n) if zmap[e]]
        assert all(ch.u[e] == 0 for e in range(n) if not zmap[e]), "an element left out of the map is not 0"
        books = _codes(h.zmap_lengths)
        map_bytes = np.packbits(np.array(bits, dtype=np.uint8), bitorder="little").tolist()
        zmap_section = _pack([b for byte in map_bytes for b in _huffman_bits(byte, books)])
    books = _codes(h.code_lengths)
    lanes = []
    for lane in range(ref.LANES):
        bits = []
        for t in range(lane, len(carried), ref.LANES):  # carried value t goes to lane t mod 4
            u = ch.u[carried[t]]
            symbol, extra = ref.symbol_of(u, h.direct_log2)
            bits += _huffman_bits(symbol, books) + [((u - (1 << extra)) >> i) & 1 for i in range(extra)]
        lanes.append(_pack(bits))
    signs = _pack(ch.signs)
    table = struct.pack("<6I", *[len(lane) for lane in lanes], len(signs), len(zmap_section))
    return table + zmap_section + b"".join(lanes) + signs


def _rewrite_chunk(stream: bytes, c: int, zmap: Optional[List[int]]) -> bytes:
    """The stream with coded chunk c's code section written again by _code_section, chunk_flags
    bit 3 set or cleared to match."""
    h, chunks = ref.read_stream(stream)
    ch = chunks[c]
    old = stream[_chunk_at(h, c):h.header_bytes + h.chunk_end[c]]
    section = _code_section(h, ch, zmap)
    head = bytearray(old[:16])
    head[1] = ch.flags & ~ref.FLAG_ZMAP | (ref.FLAG_ZMAP if zmap is not None else 0)
    struct.pack_into("<I", head, 12, len(section))
    mask_end = 16 + ch.mask_bytes
    return _replace_chunk(stream, c, bytes(head) + old[16:mask_end] + section + old[mask_end + ch.code_bytes:])


def test_smooth_field_is_coded_with_zero_maps_and_decodes_like_the_reference():
    x = _smooth_field()
    checked = check_stream_against_reference(x, 1e-2, "rel")  # the reference decodes it as actzip does
    assert checked.header.version == ref.FORMAT_VERSION == 2
    mapped = _mapped(checked.chunks)
    assert mapped, f"no chunk with a zero map: chunk flags {[ch.flags for ch in checked.chunks]}"
    for c in mapped:
        ch = checked.chunks[c]
        # A map bit for each coded element: 1 where its value is carried in the lanes, and this
        # encoder carries exactly the values that are not 0.
        assert len(ch.zmap) == len(ch.u) > 0
        assert ch.zmap == [int(u != 0) for u in ch.u], f"chunk {c}: the zero map is not (u != 0)"
        assert ch.zmap_bytes == ref.pad8((ch.zmap_bits_used + 7) // 8)
    for ch in checked.chunks:
        if not ch.flags & ref.FLAG_ZMAP:
            assert ch.zmap is None and ch.zmap_bytes == 0
    # Bit for bit, explicitly.
    stream = checked.ct.to_bytes()
    _, want = ref.decode(stream)
    assert np.array_equal(bits_of(actzip.decompress(checked.ct, device="cpu")), want)
    assert np.array_equal(bits_of(actzip.decompress(actzip.CompressedTensor.from_bytes(stream))), want)


def test_stream_rewritten_without_zero_maps_decodes_alike_in_both_versions():
    # Every map dropped (all values carried, bit 3 clear, zmap_bytes 0): a valid version-2
    # stream, and with its header rewritten as version 1 a valid version-1 stream, both
    # decoding to the same values. (So _as_version_1 makes valid streams, for the test below.)
    stream = _zmap_stream()
    _, want = ref.decode(stream)
    for c in _mapped(ref.read_stream(stream)[1]):
        stream = _rewrite_chunk(stream, c, None)
    h, chunks = ref.read_stream(stream)
    assert not _mapped(chunks) and h.version == 2
    _decodes_to(stream, want)
    v1 = _as_version_1(stream)
    assert ref.parse_header(v1).version == 1
    _decodes_to(v1, want)


def test_zero_map_may_carry_zero_values():
    # Written again from its values, a mapped chunk comes out byte for byte as actzip wrote it
    # (the writer below follows the format); then with map bits set for some elements whose
    # value is 0, which the lanes now carry: still valid, the same values.
    stream = _zmap_stream()
    h, chunks = ref.read_stream(stream)
    _, want = ref.decode(stream)
    c = _mapped(chunks)[0]
    ch = chunks[c]
    assert _rewrite_chunk(stream, c, ch.zmap) == stream
    zeros = [e for e, bit in enumerate(ch.zmap) if not bit]
    assert zeros, "a mapped chunk with no value 0"
    zmap = list(ch.zmap)
    for e in zeros[::3]:
        zmap[e] = 1
    changed = _rewrite_chunk(stream, c, zmap)
    assert changed != stream
    assert ref.read_stream(changed)[1][c].zmap == zmap
    _decodes_to(changed, want)


def test_zero_map_in_a_version_1_stream_is_rejected():
    # The header rewritten as version 1 (see the test above), the chunks' zero maps left in.
    _rejected(_as_version_1(_zmap_stream()))


def test_zmap_bytes_in_a_chunk_without_the_zero_map_flag_is_rejected():
    stream = _zmap_stream()
    h, chunks = ref.read_stream(stream)
    c = _mapped(chunks)[0]
    assert chunks[c].zmap_bytes > 0
    s = bytearray(stream)
    s[_chunk_at(h, c) + 1] &= ~ref.FLAG_ZMAP
    _rejected(_fix_checksums(s))


def test_zero_map_bits_past_the_last_coded_element_are_rejected():
    # A mapped chunk whose coded count is not a multiple of 8; its map written again with a
    # bit set past the last coded element, in a map byte the zero-map codebook has a code for.
    # (The chunks of the smooth field have zeros in their first column: masks, so the count
    # varies; the mapped chunks of other smooth inputs serve too.)
    candidates = [
        _zmap_stream(),
        actzip.compress(_smooth_field().reshape(-1)[:50000].reshape(400, 125), 1e-2, mode="rel").to_bytes(),
        actzip.compress(torch.linspace(-3, 5, 30005, dtype=torch.float32), 1e-2).to_bytes(),
    ]
    for stream in candidates:
        h, chunks = ref.read_stream(stream)
        for c in _mapped(chunks):
            n = len(chunks[c].u)
            last = (n - 1) // 8  # the last map byte
            for extra in range(n % 8 if n % 8 else 8, 8):
                zmap = chunks[c].zmap + [0] * (extra - n % 8) + [1]
                byte = sum(bit << i for i, bit in enumerate(zmap[8 * last:]))
                if byte < len(h.zmap_lengths) and h.zmap_lengths[byte]:
                    assert _rewrite_chunk(stream, c, chunks[c].zmap) == stream
                    _rejected(_rewrite_chunk(stream, c, zmap))
                    return
    pytest.fail("no mapped chunk with a coded count that is not a multiple of 8 (and a code for the byte)")


def test_zero_map_with_more_padding_than_its_bits_need_is_rejected():
    stream = _zmap_stream()
    h, chunks = ref.read_stream(stream)
    c = _mapped(chunks)[0]
    ch = chunks[c]
    start = _chunk_at(h, c)
    code = start + 16 + ch.mask_bytes
    s = bytearray(stream)
    s[code + 24 + ch.zmap_bytes:code + 24 + ch.zmap_bytes] = bytes(8)  # 8 more zero bytes of map
    struct.pack_into("<I", s, code + 20, ch.zmap_bytes + 8)
    struct.pack_into("<I", s, start + 12, ch.code_bytes + 8)
    _rejected(_replace_chunk(stream, c, bytes(s[start:h.header_bytes + h.chunk_end[c] + 8])))


def test_zero_map_in_a_chunk_without_coded_elements_is_rejected():
    x = torch.where(torch.arange(20000) % 10 == 0, torch.tensor(float("nan")), torch.tensor(0.0))
    stream = actzip.compress(x, 1e-3, checksum=True).to_bytes()
    h, chunks = ref.read_stream(stream)
    assert h.version == 2
    assert chunks[0].kind == ref.KIND_CODED and not chunks[0].codes and chunks[0].code_bytes == 0
    s = bytearray(stream)
    s[_chunk_at(h, 0) + 1] |= ref.FLAG_ZMAP
    _rejected(_fix_checksums(s))  # the payload checksum made to match


def test_zero_map_codebook_breaking_krafts_inequality_is_rejected():
    stream = _zmap_stream()
    h = ref.parse_header(stream)
    assert len(h.zmap_lengths) >= 4
    pos = 40 + 8 * len(h.shape) + 2 + (len(h.mask_lengths) + 1) // 2 + 2 + (len(h.code_lengths) + 1) // 2
    assert struct.unpack_from("<H", stream, pos)[0] == len(h.zmap_lengths)
    s = bytearray(stream)
    for j in range(len(h.zmap_lengths) // 2):
        s[pos + 2 + j] = 0x11  # every pair of symbols given codes of length 1
    _rejected(_fix_checksums(s))
