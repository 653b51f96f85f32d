"""A NumPy reference of the actzip stream format, written from docs/FORMAT.md alone.

It knows nothing of the C++ code: it quantizes and classifies elements (section 3), maps
codes to prediction values (the three predictors and the sign stream) and symbols (sections
3 and 4), and reads and decodes a whole stream (sections 1, 2, 5 and 7, the code section's
zero map, lanes and sign stream included) with plain, slow Python. The tests compare
actzip's streams and decoded tensors with it bit for bit.

It reads both versions of the format: version 2, and version 1, which has no zero-map
codebook in its header and no zero maps in its chunks (section 1, *Version 1*).

Elements are handled as their bit patterns (``uint32`` for float32, ``uint16`` for float16
and bfloat16), because numpy has no bfloat16 and comparisons must be bit-exact.
"""

from __future__ import annotations

import math
import struct
import zlib
from dataclasses import dataclass, field
from fractions import Fraction
from typing import Dict, List, Tuple

import numpy as np

FLOAT32, FLOAT16, BFLOAT16 = 1, 2, 3
ELEM_SIZE = {FLOAT32: 4, FLOAT16: 2, BFLOAT16: 2}
BITS_DTYPE = {FLOAT32: np.uint32, FLOAT16: np.uint16, BFLOAT16: np.uint16}
SIGN_BIT = {FLOAT32: 1 << 31, FLOAT16: 1 << 15, BFLOAT16: 1 << 15}

MAGIC = b"AZIP"
FORMAT_VERSION = 2        # the version this document describes (and actzip writes)
FORMAT_VERSIONS = (1, 2)  # the versions a decoder reads
CHUNK_ELEMS = 16384
MAX_Q = 2**23 - 2     # largest |q| the encoder codes
MAX_CODE = 2**23 - 1  # largest |c| a decoder accepts
MAX_CODE_LEN = 12
LANES = 4  # the code section's interleaved bit streams
CODE_TABLE_BYTES = 4 * LANES + 8  # lane lengths, sign_bytes, zmap_bytes (0 in version 1)
MIN_2D_ROW, MAX_2D_ROW = 2, 128  # the last extents for which 2-D Lorenzo is allowed

# chunk_flags bits (section 2); FLAG_ZMAP only in version 2
FLAG_LORENZO, FLAG_MASK, FLAG_LORENZO2D, FLAG_ZMAP = 1, 2, 4, 8

ZERO, CODED, OUTLIER = 0, 1, 2
KIND_RAW, KIND_CODED, KIND_ZERO = 0, 1, 2


class FormatError(ValueError):
    """The stream breaks a rule of docs/FORMAT.md."""


def pad8(n: int) -> int:
    return (n + 7) // 8 * 8


# ---- section 3: quantization ---------------------------------------------------------------


def quant_step_for(error_bound: float) -> float:
    """The largest binary32 value M * 2^E (M an integer in [1, 255], E >= -149) not above
    2 * error_bound; 2^-149 if none is (section 3). Searched over every E in exact rational
    arithmetic; "binary32 value" keeps M * 2^E below 2^128."""
    twice = 2 * Fraction(error_bound)  # exact, even where 2 * error_bound overflows a float
    best = Fraction(0)
    for e in range(-149, 128):
        fits = math.floor(twice / Fraction(2) ** e)
        if fits < 1:
            break  # 2^E > 2e: no larger E fits either
        best = max(best, min(255, fits, 2 ** (128 - e) - 1) * Fraction(2) ** e)
    if best == 0:
        best = Fraction(2) ** -149
    step = float(best)  # exact: 8 significant bits within binary32's range
    assert Fraction(step) == best and Fraction(float(np.float32(step))) == best
    return step


def to_float64(bits: np.ndarray, dtype: int) -> np.ndarray:
    """The elements' values, widened exactly to binary64 (a signalling NaN comes out quiet)."""
    with np.errstate(invalid="ignore"):
        if dtype == FLOAT32:
            return bits.astype(np.uint32).view(np.float32).astype(np.float64)
        if dtype == FLOAT16:
            return bits.astype(np.uint16).view(np.float16).astype(np.float64)
        return (bits.astype(np.uint32) << np.uint32(16)).view(np.float32).astype(np.float64)


def float32_to_dtype_bits(r: np.ndarray, dtype: int) -> np.ndarray:
    """Rounds binary32 values to the dtype with round-to-nearest-even; returns the bits."""
    r = np.asarray(r, dtype=np.float32)
    if dtype == FLOAT32:
        return r.view(np.uint32).copy()
    if dtype == FLOAT16:
        with np.errstate(over="ignore"):
            return r.astype(np.float16).view(np.uint16)  # numpy's conversion is IEEE RNE
    # bfloat16 is binary32 cut to its top 16 bits: the two neighbours of r are the cut value
    # and the next one up in magnitude; the cut-off 16 bits say which is nearer.
    bits = r.view(np.uint32)
    lower = bits >> np.uint32(16)
    rest = bits & np.uint32(0xFFFF)
    up = (rest > 0x8000) | ((rest == 0x8000) & ((lower & np.uint32(1)) == 1))
    return (lower + up.astype(np.uint32)).astype(np.uint16)


def reconstruct(codes: np.ndarray, quant_step: float, dtype: int) -> np.ndarray:
    """The dtype bits a decoder produces for signed codes c != 0 (section 3, word for word:
    binary32 multiplies, then rounding to the dtype)."""
    codes = np.asarray(codes, dtype=np.int64)
    step = np.float32(quant_step)  # exact: the stream's binary32 step
    m = np.abs(codes) - 1
    with np.errstate(all="ignore"):  # the product may overflow or underflow, by design
        r = np.where(m == 0, step * np.float32(0.25), m.astype(np.float32) * step).astype(np.float32)
        r = np.where(codes < 0, -r, r).astype(np.float32)
    return float32_to_dtype_bits(r, dtype)


@dataclass
class Classified:
    cls: np.ndarray        # ZERO, CODED or OUTLIER per element
    codes: np.ndarray      # signed code c of coded elements (0 elsewhere)
    recon: np.ndarray      # dtype bits of the reconstruction of coded elements (0 elsewhere)
    tie: np.ndarray        # x / step lies exactly halfway between two integers (exact arithmetic)
    alt_cls: np.ndarray    # the same three with the other nearest integer at a tie (the
    alt_codes: np.ndarray  # format allows either); equal to cls, codes, recon elsewhere
    alt_recon: np.ndarray


def _check_codes(x, bits, dtype, error_bound, quant_step, q):
    """Class, code and reconstruction of each element for the integers q (section 3)."""
    finite = np.isfinite(x)
    negative = (bits & SIGN_BIT[dtype]) != 0
    in_range = finite & (np.abs(q) <= MAX_Q)
    c = np.where(x > 0, q + 1, q - 1)
    c = np.where(in_range & (x != 0), c, 1).astype(np.int64)
    recon = reconstruct(c, quant_step, dtype)
    xh = to_float64(recon, dtype)
    recon_negative = (recon.astype(np.uint64) & SIGN_BIT[dtype]) != 0
    with np.errstate(invalid="ignore"):
        passes = (
            in_range
            & np.isfinite(xh)
            & (np.abs(x - xh) <= error_bound)
            & (xh != 0)
            & (recon_negative == negative)
            & (x != 0)
        )
    cls = np.full(bits.shape, OUTLIER, dtype=np.int8)
    cls[passes] = CODED
    cls[bits == 0] = ZERO  # only +0.0; -0.0 is an outlier
    coded = cls == CODED
    return cls, np.where(coded, c, 0), np.where(coded, recon, 0).astype(BITS_DTYPE[dtype])


FAR_Q = 2**40  # stands for every |x| / step beyond 2^40, far out of the codable range


def nearest_integers(ax: np.ndarray, quant_step: float) -> Tuple[np.ndarray, np.ndarray]:
    """(floor of the nearest integers, tie) of ax / quant_step for finite ax >= 0, exactly.

    Dividing in binary64 rounds the quotient, and a quotient rounded onto or off a
    half-integer names the wrong neighbour; so the division is done on integers:
    ax = X * 2^a with X < 2^24 (a binary32 value) and step = M * 2^E with M < 2^8, hence
    ax / step = X * 2^(a - E) / M. Where the quotient exceeds 2^40 the result is FAR_Q.
    Returns q and tie: the nearest integer is q, or q and q + 1 where tie is set.
    """
    step_frac, step_e = math.frexp(quant_step)
    step_mant, step_exp = int(step_frac * 256), step_e - 8
    assert step_mant == step_frac * 256, "a step has 8 significant bits"
    frac, ex = np.frexp(np.asarray(ax, dtype=np.float64))  # ax = frac * 2^ex, frac in [0.5, 1) or 0
    mant = np.ldexp(frac, 24).astype(np.int64)  # exact: at most 24 significant bits
    shift = ex.astype(np.int64) - 24 - step_exp
    far = shift > 24     # ax / step >= 2^23 * 2^25 / 255 > 2^40
    tiny = shift < -40   # ax / step < 2^24 / 2^40: 0 is the only nearest integer
    s = np.clip(shift, -40, 24)
    num = np.left_shift(mant, np.maximum(s, 0))                               # < 2^48
    den = np.left_shift(np.int64(step_mant), np.maximum(-s, 0)).astype(np.int64)  # < 2^48
    fl, rem = np.divmod(num, den)
    q = np.where(2 * rem > den, fl + 1, fl)
    tie = 2 * rem == den
    q = np.where(tiny, 0, np.where(far, FAR_Q, q))
    tie &= ~tiny & ~far
    return q.astype(np.int64), tie


def classify(bits: np.ndarray, dtype: int, error_bound: float, quant_step: float) -> Classified:
    """Classifies elements (given as bits) into zero, coded and outlier, with their codes.

    q is x / step rounded to the nearest integer, ties to even; the ``alt_`` fields give
    the outcome with the other nearest integer at a tie.
    """
    bits = np.asarray(bits).astype(np.uint64)
    x = to_float64(bits, dtype)
    finite = np.isfinite(x)
    low, tie = nearest_integers(np.where(finite, np.abs(x), 0.0), quant_step)
    tie &= finite
    even = np.where(tie & (low % 2 == 1), low + 1, low)  # at a tie: the even neighbour first
    other = np.where(tie, np.where(even == low, low + 1, low), even)
    sign = np.where(x < 0, -1, 1)
    q, q_alt = sign * even, sign * other
    cls, codes, recon = _check_codes(x, bits, dtype, error_bound, quant_step, q)
    alt_cls, alt_codes, alt_recon = _check_codes(x, bits, dtype, error_bound, quant_step, q_alt)
    return Classified(cls, codes, recon, tie, alt_cls, alt_codes, alt_recon)


# ---- sections 3 and 4: prediction values and symbols ----------------------------------------


def u_none(codes: np.ndarray) -> np.ndarray:
    """No prediction: u = 2(|c| - 1) + (c < 0)."""
    codes = np.asarray(codes, dtype=np.int64)
    return 2 * (np.abs(codes) - 1) + (codes < 0)


def zigzag(d: np.ndarray) -> np.ndarray:
    d = np.asarray(d, dtype=np.int64)
    return np.where(d >= 0, 2 * d, -2 * d - 1)


def code_to_q(codes: np.ndarray) -> np.ndarray:
    """The rounded value q of signed codes c != 0: c = q + 1 for x > 0, q - 1 for x < 0."""
    codes = np.asarray(codes, dtype=np.int64)
    return codes - np.sign(codes)


def q_to_code(q: int, negative: bool) -> int:
    """The signed code of q; the sign bit decides only where q is 0 (section 3)."""
    if q != 0:
        return q + 1 if q > 0 else q - 1
    return -1 if negative else 1


def u_lorenzo(codes: np.ndarray) -> np.ndarray:
    """Lorenzo over the coded elements: u = zigzag(q - q_prev), q_prev = 0 at the chunk start."""
    q = code_to_q(codes)
    return zigzag(np.diff(q, prepend=0))


def row_2d(shape: Tuple[int, ...]) -> int:
    """W, the row length 2-D Lorenzo works on, or 0 where the format does not allow it."""
    if not shape or not MIN_2D_ROW <= shape[-1] <= MAX_2D_ROW:
        return 0
    return shape[-1]


def predict_2d(g, i: int, chunk_start: int, row: int) -> int:
    """The 2-D Lorenzo prediction of chunk position i from g (q of the coded elements of the
    chunk, 0 for zeros and outliers), section 3: a left neighbour where the column is not 0,
    an upper one from the second row of the chunk on, the upper-left one where both are; a
    neighbour outside the chunk is absent (a chunk never refers to another), counting as 0."""
    left = (chunk_start + i) % row != 0 and i >= 1
    up = i >= row
    upper_left = left and up and i - row - 1 >= 0
    p = (g[i - 1] if left else 0) + (g[i - row] if up else 0) - (g[i - row - 1] if upper_left else 0)
    return max(-MAX_Q, min(MAX_Q, p))


def u_lorenzo2d(codes: np.ndarray, coded_mask: np.ndarray, chunk_start: int, row: int) -> np.ndarray:
    """2-D Lorenzo: u = zigzag(q - prediction) for the coded elements of one chunk, in order.
    codes are the coded elements' signed codes; coded_mask says which positions they fill."""
    coded_mask = np.asarray(coded_mask, dtype=bool)
    g = np.zeros(coded_mask.size, dtype=np.int64)
    g[coded_mask] = code_to_q(codes)
    prediction = np.array([predict_2d(g, int(i), chunk_start, row) for i in np.nonzero(coded_mask)[0]], dtype=np.int64)
    return zigzag(g[coded_mask] - prediction)


def sign_bits(codes: np.ndarray) -> List[int]:
    """The sign stream of a Lorenzo chunk: 1 (negative) or 0 for each coded element with q = 0."""
    codes = np.asarray(codes, dtype=np.int64)
    return [int(c < 0) for c in codes if abs(c) == 1]


def symbol_of(u: int, k: int) -> Tuple[int, int]:
    """(symbol, number of extra bits) of value u for direct_log2 = k."""
    if u < (1 << k):
        return u, 0
    b = u.bit_length() - 1
    return (1 << k) + (b - k), b


# ---- sections 1, 2, 5, 7: reading a stream ---------------------------------------------------


@dataclass
class Header:
    version: int
    flags: int
    dtype: int
    shape: Tuple[int, ...]
    numel: int
    bound_mode: int
    direct_log2: int
    requested_bound: float
    error_bound: float
    quant_step: float  # the binary32 step, widened to a Python float
    mask_lengths: List[int]
    code_lengths: List[int]
    zmap_lengths: List[int]  # empty in version 1 (no zero-map codebook)
    chunk_end: List[int]
    header_bytes: int


@dataclass
class Chunk:
    kind: int
    flags: int = 0
    count: int = 0
    coded_mask: np.ndarray = None                        # True where the element is coded
    codes: List[int] = field(default_factory=list)       # signed codes of the coded elements
    q: List[int] = field(default_factory=list)           # their rounded values
    u: List[int] = field(default_factory=list)           # their prediction values
    signs: List[int] = field(default_factory=list)       # the sign stream's bits, in order
    outlier_pos: List[int] = field(default_factory=list)
    outlier_bits: List[int] = field(default_factory=list)
    raw_bits: np.ndarray = None
    mask_bytes: int = 0
    code_bytes: int = 0
    mask_bits_used: int = 0                              # bits the mask symbols took
    code_bits_used: int = 0                              # bits of all lanes together
    lane_bytes: List[int] = field(default_factory=list)
    sign_bytes: int = 0
    zmap_bytes: int = 0
    zmap_bits_used: int = 0                              # bits the zero map's symbols took
    zmap: List[int] = None                               # with a zero map: its bit for each coded element


def _u16(b, o):
    return struct.unpack_from("<H", b, o)[0]


def _u32(b, o):
    return struct.unpack_from("<I", b, o)[0]


def _u64(b, o):
    return struct.unpack_from("<Q", b, o)[0]


def _f64(b, o):
    return struct.unpack_from("<d", b, o)[0]


def _need(buf: bytes, pos: int, n: int, what: str):
    if pos + n > len(buf):
        raise FormatError(f"stream too short for {what}")


def _read_lengths(buf: bytes, pos: int, count: int, what: str) -> List[int]:
    _need(buf, pos, (count + 1) // 2, what)
    lengths = []
    for s in range(count):
        byte = buf[pos + s // 2]
        lengths.append(byte & 0xF if s % 2 == 0 else byte >> 4)
    if any(n > MAX_CODE_LEN for n in lengths):
        raise FormatError(f"{what}: code length above {MAX_CODE_LEN}")
    if sum(2.0 ** -n for n in lengths if n) > 1.0:
        raise FormatError(f"{what}: lengths break Kraft's inequality")
    return lengths


def _read_book(buf: bytes, pos: int, name: str, limit: int) -> Tuple[List[int], int]:
    """A codebook's symbol count (at most limit) and nibble-packed lengths at pos; returns
    the lengths and the position after them."""
    _need(buf, pos, 2, f"{name}_symbols")
    count = _u16(buf, pos)
    pos += 2
    if count > limit:
        raise FormatError(f"more than {limit} {name} symbols")
    return _read_lengths(buf, pos, count, f"{name} codebook"), pos + (count + 1) // 2


def parse_header(buf: bytes) -> Header:
    buf = bytes(buf)
    _need(buf, 0, 40, "the fixed header")
    if buf[0:4] != MAGIC:
        raise FormatError("bad magic")
    version = _u16(buf, 4)
    if version not in FORMAT_VERSIONS:
        raise FormatError("unknown format version")
    flags = _u16(buf, 6)
    if flags & ~1:
        raise FormatError("unknown flag bits")
    header_bytes = _u32(buf, 8)
    if header_bytes % 8:
        raise FormatError("header_bytes not a multiple of 8")
    dtype, ndim, mode, k = buf[12], buf[13], buf[14], buf[15]
    if dtype not in (FLOAT32, FLOAT16, BFLOAT16):
        raise FormatError("unknown dtype")
    if ndim > 8:
        raise FormatError("ndim above 8")
    if mode > 1:
        raise FormatError("unknown bound mode")
    if k > 10:
        raise FormatError("direct_log2 above 10")
    requested, error_bound = _f64(buf, 16), _f64(buf, 24)
    for v in (requested, error_bound):
        if not (math.isfinite(v) and v > 0):
            raise FormatError("bound not finite and positive")
    quant_step = struct.unpack_from("<f", buf, 32)[0]
    if buf[32:36] != struct.pack("<f", quant_step_for(error_bound)):  # bit for bit
        raise FormatError("quant_step is not quant_step_for(error_bound)")
    if _u32(buf, 36) != CHUNK_ELEMS:
        raise FormatError("chunk_elems is not 16384")
    pos = 40
    _need(buf, pos, 8 * ndim, "the shape")
    shape = tuple(_u64(buf, pos + 8 * i) for i in range(ndim))
    pos += 8 * ndim
    numel = math.prod(shape)
    if numel >= 2**45:
        raise FormatError("2^45 elements or more")
    mask_lengths, pos = _read_book(buf, pos, "mask", 256)
    code_lengths, pos = _read_book(buf, pos, "code", (1 << k) + 25 - k)
    zmap_lengths = []
    if version >= 2:  # version 1 has no zero-map codebook: the padding follows
        zmap_lengths, pos = _read_book(buf, pos, "zmap", 256)
    _need(buf, pos, pad8(pos) - pos, "padding")
    if any(buf[pos:pad8(pos)]):
        raise FormatError("non-zero header padding")
    pos = pad8(pos)
    num_chunks = -(-numel // CHUNK_ELEMS)
    _need(buf, pos, 8 * num_chunks + 8, "the chunk table")
    chunk_end = [_u64(buf, pos + 8 * c) for c in range(num_chunks)]
    pos += 8 * num_chunks
    prev = 0
    for end in chunk_end:
        if end % 8 or end < prev:
            raise FormatError("bad chunk_end")
        prev = end
    if _u32(buf, pos) != zlib.crc32(buf[:pos]):
        raise FormatError("header checksum mismatch")
    if _u32(buf, pos + 4) != 0:
        raise FormatError("non-zero padding after the header checksum")
    if header_bytes != pos + 8:
        raise FormatError("header_bytes does not match the header")
    payload = chunk_end[-1] if chunk_end else 0
    if len(buf) != header_bytes + payload + (4 if flags & 1 else 0):
        raise FormatError("stream length does not add up")
    if flags & 1 and _u32(buf, header_bytes + payload) != zlib.crc32(buf[header_bytes:header_bytes + payload]):
        raise FormatError("payload checksum mismatch")
    return Header(version, flags, dtype, shape, numel, mode, k, requested, error_bound, quant_step, mask_lengths,
                  code_lengths, zmap_lengths, chunk_end, header_bytes)


def canonical_codes(lengths: List[int]) -> Dict[Tuple[int, int], int]:
    """(length, code) -> symbol for the canonical code of section 5."""
    order = sorted((n, s) for s, n in enumerate(lengths) if n)
    table = {}
    code, prev_len = 0, 0
    for i, (n, s) in enumerate(order):
        code = 0 if i == 0 else (code + 1) << (n - prev_len)
        table[(n, code)] = s
        prev_len = n
    return table


class BitReader:
    """Bits of a section, least significant bit of each byte first."""

    def __init__(self, section: bytes):
        self.bits = np.unpackbits(np.frombuffer(section, dtype=np.uint8), bitorder="little").tolist()
        self.pos = 0

    def bit(self) -> int:
        if self.pos >= len(self.bits):
            raise FormatError("symbols run past the section")
        b = self.bits[self.pos]
        self.pos += 1
        return b

    def symbol(self, table: Dict[Tuple[int, int], int]) -> int:
        code = 0
        for n in range(1, MAX_CODE_LEN + 1):
            code = (code << 1) | self.bit()  # a code's first bit is its most significant
            if (n, code) in table:
                return table[(n, code)]
        raise FormatError("bit pattern matches no code")

    def integer(self, nbits: int) -> int:
        return sum(self.bit() << i for i in range(nbits))

    def check_padding(self):
        """A stream of B bits occupies exactly pad8(ceil(B / 8)) bytes (section 5)."""
        if pad8((self.pos + 7) // 8) != len(self.bits) // 8:
            raise FormatError("a bit stream with more padding than its symbols need")


def _chunk(buf: bytes, h: Header, c: int, mask_table, code_table, zmap_table) -> Chunk:
    """Chunk c, read and checked (section 2), its values decoded (section 3)."""
    es = ELEM_SIZE[h.dtype]
    start = h.header_bytes + (h.chunk_end[c - 1] if c else 0)
    span = h.header_bytes + h.chunk_end[c] - start
    count = min(CHUNK_ELEMS, h.numel - c * CHUNK_ELEMS)
    if span < 16:
        raise FormatError("chunk shorter than its header")
    kind, flags = buf[start], buf[start + 1]
    reserved, outliers = _u16(buf, start + 2), _u32(buf, start + 4)
    mask_bytes, code_bytes = _u32(buf, start + 8), _u32(buf, start + 12)
    if reserved:
        raise FormatError("non-zero reserved field")
    body = start + 16
    if kind == KIND_ZERO or kind == KIND_RAW:
        if flags or outliers or mask_bytes or code_bytes:
            raise FormatError("raw or zero chunk with non-zero fields")
        if kind == KIND_ZERO:
            if span != 16:
                raise FormatError("zero chunk length")
            return Chunk(KIND_ZERO, count=count)
        if span != 16 + pad8(es * count):
            raise FormatError("raw chunk length")
        raw = np.frombuffer(buf, dtype=BITS_DTYPE[h.dtype], count=count, offset=body)
        return Chunk(KIND_RAW, count=count, raw_bits=raw.copy())
    if kind != KIND_CODED:
        raise FormatError("unknown chunk kind")
    known_flags = FLAG_LORENZO | FLAG_MASK | FLAG_LORENZO2D | (FLAG_ZMAP if h.version >= 2 else 0)
    if flags & ~known_flags:
        raise FormatError("unknown chunk flags")
    has_mask, lorenzo, lorenzo2d = bool(flags & FLAG_MASK), bool(flags & FLAG_LORENZO), bool(flags & FLAG_LORENZO2D)
    has_zmap = bool(flags & FLAG_ZMAP)
    if lorenzo and lorenzo2d:
        raise FormatError("chunk flags bits 0 and 2 both set")
    row = row_2d(h.shape)
    if lorenzo2d and not row:
        raise FormatError("2-D Lorenzo in a tensor whose last extent is not between 2 and 128")
    if outliers > count or mask_bytes % 8 or code_bytes % 8:
        raise FormatError("chunk header fields out of range")
    if not has_mask and (mask_bytes or outliers):
        raise FormatError("chunk without a mask has a mask section or outliers")
    if span != 16 + mask_bytes + code_bytes + pad8(2 * outliers) + pad8(es * outliers):
        raise FormatError("chunk length does not match the chunk table")
    ch = Chunk(KIND_CODED, flags=flags, count=count, mask_bytes=mask_bytes, code_bytes=code_bytes)
    if has_mask:
        r = BitReader(buf[body:body + mask_bytes])
        mask = bytes(r.symbol(mask_table) for _ in range((count + 7) // 8))
        r.check_padding()
        ch.mask_bits_used = r.pos
        coded = np.unpackbits(np.frombuffer(mask, dtype=np.uint8), bitorder="little").astype(bool)
        if coded[count:].any():
            raise FormatError("mask bits set past the last element")
        coded = coded[:count]
    else:
        coded = np.ones(count, dtype=bool)
    ch.coded_mask = coded
    n_coded = int(coded.sum())
    section = buf[body + mask_bytes:body + mask_bytes + code_bytes]
    u_values = [0] * n_coded
    sign_stream = None
    if n_coded == 0:
        if has_zmap:
            raise FormatError("a zero map in a chunk without coded elements")
        if code_bytes:
            raise FormatError("code section present without coded elements")
    else:
        if code_bytes < CODE_TABLE_BYTES:
            raise FormatError("code section shorter than its table")
        lane_bytes = [_u32(section, 4 * lane) for lane in range(LANES)]
        sign_bytes = _u32(section, 4 * LANES)
        zmap_bytes = _u32(section, 4 * LANES + 4)  # in version 1 a reserved field, 0
        if zmap_bytes and h.version < 2:
            raise FormatError("non-zero reserved field in the code section's table (version 1)")
        if zmap_bytes and not has_zmap:
            raise FormatError("zmap_bytes is not 0 in a chunk without a zero map")
        if any(n % 8 for n in lane_bytes) or sign_bytes % 8 or zmap_bytes % 8:
            raise FormatError("the zero map, a lane or the sign stream is not a multiple of 8 bytes")
        if CODE_TABLE_BYTES + zmap_bytes + sum(lane_bytes) + sign_bytes != code_bytes:
            raise FormatError("the zero map, lanes and sign stream do not add up to the code section")
        if sign_bytes and not (lorenzo or lorenzo2d):
            raise FormatError("a sign stream without a Lorenzo predictor")
        ch.lane_bytes, ch.sign_bytes, ch.zmap_bytes = lane_bytes, sign_bytes, zmap_bytes
        at = CODE_TABLE_BYTES
        # Which coded elements' values are carried in the lanes: all of them without a zero
        # map; with one, those whose map bit is 1 (the others are 0).
        if has_zmap:
            r = BitReader(section[at:at + zmap_bytes])
            zmap = bytes(r.symbol(zmap_table) for _ in range((n_coded + 7) // 8))
            r.check_padding()
            ch.zmap_bits_used = r.pos
            at += zmap_bytes
            carried_bits = np.unpackbits(np.frombuffer(zmap, dtype=np.uint8), bitorder="little")
            if carried_bits[n_coded:].any():
                raise FormatError("zero map bits set past the last coded element")
            ch.zmap = carried_bits[:n_coded].tolist()
            carried = [e for e in range(n_coded) if ch.zmap[e]]
        else:
            carried = list(range(n_coded))
        k = h.direct_log2
        for lane in range(LANES):
            r = BitReader(section[at:at + lane_bytes[lane]])
            at += lane_bytes[lane]
            for t in range(lane, len(carried), LANES):  # carried value t is in lane t mod 4
                sym = r.symbol(code_table)
                if sym < (1 << k):
                    u = sym
                else:
                    b = sym - (1 << k) + k
                    u = (1 << b) + r.integer(b)
                u_values[carried[t]] = u  # (a carried value may be 0 too)
            r.check_padding()
            ch.code_bits_used += r.pos
        sign_stream = BitReader(section[at:at + sign_bytes])
    ch.u = list(u_values)

    def unzigzag(u: int) -> int:
        return u >> 1 if u % 2 == 0 else -(u >> 1) - 1

    if lorenzo or lorenzo2d:
        if lorenzo:
            q_prev = 0
            for u in u_values:
                q_prev += unzigzag(u)
                if abs(q_prev) > MAX_Q:
                    raise FormatError("decoded q out of range")
                ch.q.append(q_prev)
        else:
            g = [0] * count  # q of the coded elements, 0 for zeros and outliers
            start = c * CHUNK_ELEMS
            t = 0
            for i in np.nonzero(coded)[0].tolist():
                q = predict_2d(g, i, start, row) + unzigzag(u_values[t])
                if abs(q) > MAX_Q:
                    raise FormatError("decoded q out of range")
                g[i] = q
                ch.q.append(q)
                t += 1
        # The sign stream: one bit for each coded element whose q is 0, in element order.
        for q in ch.q:
            negative = False
            if q == 0:
                negative = bool(sign_stream.bit())
                ch.signs.append(int(negative))
            ch.codes.append(q_to_code(q, negative))
        if sign_stream is not None:
            sign_stream.check_padding()
    else:
        for u in u_values:
            cv = (u >> 1) + 1
            cv = -cv if u % 2 else cv
            if abs(cv) > MAX_CODE:
                raise FormatError("decoded code out of range")
            ch.codes.append(cv)
            ch.q.append(cv - 1 if cv > 0 else cv + 1)
    pos_at = body + mask_bytes + code_bytes
    val_at = pos_at + pad8(2 * outliers)
    last = -1
    for o in range(outliers):
        i = _u16(buf, pos_at + 2 * o)
        if i <= last or i >= count or coded[i]:
            raise FormatError("bad outlier position")
        last = i
        ch.outlier_pos.append(i)
        ch.outlier_bits.append(int.from_bytes(buf[val_at + es * o:val_at + es * (o + 1)], "little"))
    return ch


def read_stream(buf: bytes) -> Tuple[Header, List[Chunk]]:
    """Parses and checks a whole stream; raises FormatError on any broken rule."""
    buf = bytes(buf)
    h = parse_header(buf)
    mask_table = canonical_codes(h.mask_lengths)
    code_table = canonical_codes(h.code_lengths)
    zmap_table = canonical_codes(h.zmap_lengths)  # empty in version 1, where no chunk has a map
    chunks = [_chunk(buf, h, c, mask_table, code_table, zmap_table) for c in range(len(h.chunk_end))]
    return h, chunks


def decode(buf: bytes) -> Tuple[Header, np.ndarray]:
    """Decodes a stream to the elements' bits (flat, C order)."""
    h, chunks = read_stream(buf)
    out = np.zeros(h.numel, dtype=BITS_DTYPE[h.dtype])
    for c, ch in enumerate(chunks):
        view = out[c * CHUNK_ELEMS:c * CHUNK_ELEMS + ch.count]
        if ch.kind == KIND_RAW:
            view[:] = ch.raw_bits
        elif ch.kind == KIND_CODED:
            view[ch.coded_mask] = reconstruct(np.array(ch.codes, dtype=np.int64), h.quant_step, h.dtype)
            view[ch.outlier_pos] = np.array(ch.outlier_bits, dtype=BITS_DTYPE[h.dtype])
    return h, out
