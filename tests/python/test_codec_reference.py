"""actzip's streams against the NumPy reference of docs/FORMAT.md (reference.py).

For each input the reference reads the stream with its own parser, classifies the input
with its own quantizer, and the two must agree exactly: which elements are zeros, coded or
outliers, every code (so every prediction value), every outlier's bits, and every decoded
value, bit for bit.
"""

import math

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import actzip
import reference as ref
from codec_util import DTYPE_CODE, bits_of, from_bits, relu_like


def check_stream_against_reference(x, bound: float, mode: str = "abs") -> ref.Header:
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
    assert h.step_exp == ref.step_exp_for(h.error_bound)
    if mode == "abs":
        assert h.error_bound == bound

    cl = ref.classify(bits, code, h.error_bound, h.step_exp)
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
            u = ref.u_lorenzo(got) if ch.flags & 1 else ref.u_none(got)
            assert np.array_equal(np.array(ch.u, dtype=np.int64), u), f"chunk {c}: prediction values differ"
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
    return h


def _normal(n, seed, dtype=torch.float32, scale=1.0):
    g = torch.Generator().manual_seed(seed)
    return (torch.randn(n, generator=g, dtype=torch.float64) * scale).to(dtype)


CASES = {
    "f32 relu abs, 2 chunks": (lambda: relu_like(21000, 1).reshape(3, 7000), 1e-2, "abs"),
    "f32 normal rel": (lambda: _normal(20000, 2), 1e-3, "rel"),
    "f16 numpy abs": (lambda: _normal(5000, 3, torch.float16).numpy(), 1e-3, "abs"),
    "f32 numpy rel": (lambda: _normal(3000, 4).numpy().reshape(30, 100), 5e-2, "rel"),
    "bf16 abs": (lambda: _normal(40000, 5, torch.bfloat16, 3.0), 1e-2, "abs"),
    "bf16 relu rel": (lambda: relu_like(17000, 6, torch.bfloat16), 1e-3, "rel"),
    "f32 smooth ramp (Lorenzo)": (lambda: torch.linspace(-3, 5, 30000, dtype=torch.float32), 1e-4, "abs"),
    "f16 smooth ramp (Lorenzo)": (lambda: torch.linspace(-30, 50, 20000).to(torch.float16), 1e-3, "abs"),
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


def test_ties_use_a_nearest_integer_that_passes_the_check():
    # Values exactly halfway between two multiples of the step (step 2^-6 for bound 1e-2).
    step = 2.0**-6
    k = np.arange(1, 3000, dtype=np.float64)
    x = torch.tensor(np.concatenate([(k + 0.5) * step, -(k + 0.5) * step, k * step]), dtype=torch.float32)
    h = check_stream_against_reference(x, 1e-2)
    assert h.step_exp == -6


def test_smooth_data_is_coded_with_lorenzo_prediction():
    x = torch.linspace(-3, 5, 30000, dtype=torch.float32)
    ct = actzip.compress(x, 1e-4)
    _, chunks = ref.read_stream(ct.to_bytes())
    assert any(ch.kind == ref.KIND_CODED and ch.flags & 1 for ch in chunks)


def test_huge_bound_gets_the_clamped_step_of_the_format():
    # floor(log2(2 * 1e308)) is 1024: the step is clamped to 2^127 (2 * bound overflows a double).
    ct = actzip.compress(torch.ones(10), 1e308)
    h = ref.parse_header(ct.to_bytes())
    assert h.step_exp == 127


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
