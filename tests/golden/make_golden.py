"""Writes the golden streams of tests/golden and their MANIFEST.json.

    PYTHONPATH=python python tests/golden/make_golden.py

Golden streams (``*.azip``) are actzip streams of small deterministic inputs. The inputs
come from integer arithmetic only (a 64-bit linear congruential generator, exact scalings
by powers of two), so they are the same bytes on every machine and numpy version.
MANIFEST.json records, for each stream, how it was made and the sha256 of the input, of
the stream and of the decoded tensor. tests/python/test_codec_golden.py checks that every
stream still decodes to its hash and that compressing the input again gives the very same
bytes.

Must-fail streams (``bad_*.azip``) are golden streams with one rule of docs/FORMAT.md
broken (the header checksum recomputed where needed, so that the rule itself is what a
decoder meets); every decoder must reject them with FormatError.

Version-1 streams (``v1_*.azip``) are the golden streams of format version 1, kept as they
were written: this encoder writes version 2 and cannot make them again, so MANIFEST.json's
``version1`` section is carried over from the previous manifest. Every decoder must still
read them to the same decoded hashes.

Run this again only when the format changes (with a new format_version) or when the
encoder's choices change on purpose; the decoded hashes of old streams must not change.
"""

from __future__ import annotations

import hashlib
import json
import struct
import sys
import zlib
from pathlib import Path

import numpy as np
import torch

import actzip

HERE = Path(__file__).resolve().parent
CHUNK_ELEMS = 16384


# ---- deterministic inputs ------------------------------------------------------------------


def lcg(n: int, seed: int) -> np.ndarray:
    """n pseudo-random 64-bit integers (Knuth's MMIX LCG), as Python integers in a uint64 array."""
    out = np.empty(n, dtype=np.uint64)
    state = seed
    for i in range(n):
        state = (6364136223846793005 * state + 1442695040888963407) % 2**64
        out[i] = state
    return out


def small_ints(n: int, seed: int, half_range: int) -> np.ndarray:
    """Integers in [-half_range, half_range] from the generator's high bits."""
    r = lcg(n, seed) >> np.uint64(33)
    return (r % np.uint64(2 * half_range + 1)).astype(np.int64) - half_range


def input_f32_relu() -> torch.Tensor:
    # A slow ramp plus noise, clipped at zero: half exact zeros. Multiples of 2^-10.
    n = 3 * 50 * 120
    ramp = (np.arange(n, dtype=np.int64) % 600) - 300
    v = np.maximum(ramp + small_ints(n, 1, 200), 0).astype(np.float32) * np.float32(2.0**-10)
    return torch.from_numpy(v).reshape(3, 50, 120)


def input_f32_specials() -> torch.Tensor:
    v = small_ints(1000, 2, 5000).astype(np.float32) * np.float32(2.0**-8)
    special = np.array([np.nan, np.inf, -np.inf, -0.0, 0.0, 65504.0, -1e-3, 1e-40, -1e-45, 2.0**-149], dtype=np.float32)
    v[::7] = special[np.arange(0, 1000, 7) % special.size]
    return torch.from_numpy(v)


def input_f16_ramp() -> torch.Tensor:
    # A smooth ramp: Lorenzo prediction pays. Multiples of 2^-8 below 2^7: exact in float16.
    n = 64 * 300
    v = (np.arange(n, dtype=np.int64) - n // 2).astype(np.float32) * np.float32(2.0**-8)
    return torch.from_numpy(v.astype(np.float16)).reshape(64, 300)


def input_bf16_noise_5d() -> torch.Tensor:
    # Multiples of 2^-6 below 4: 8 significant bits, exact in bfloat16.
    v = small_ints(2 * 3 * 4 * 5 * 7, 3, 255).astype(np.float32) * np.float32(2.0**-6)
    return torch.from_numpy(v).to(torch.bfloat16).reshape(2, 3, 4, 5, 7)


def input_f32_images_2d() -> torch.Tensor:
    # Image-like (N, C, H, W) = (2, 4, 32, 32): per (n, c) a quadratic surface
    # a (h - ch)^2 + b (w - cw)^2 + d h w with small integer coefficients, a saddle or a bowl
    # that crosses zero: smooth along both axes, so 2-D Lorenzo pays, and the values near its
    # zero curves round to q = 0 with either sign (sign-stream bits). Multiples of 2^-12 below 2^11.
    n, c, h, w = 2, 4, 32, 32
    coef = small_ints(n * c * 5, 5, 15).reshape(n * c, 5)
    hh = np.arange(h, dtype=np.int64).reshape(h, 1)
    ww = np.arange(w, dtype=np.int64).reshape(1, w)
    planes = []
    for a, b, d, ch, cw in coef:
        planes.append(a * (hh - 16 - ch) ** 2 + b * (ww - 16 - cw) ** 2 + d * hh * ww + 7 * (a + b) * 4)
    v = np.stack(planes).astype(np.float32) * np.float32(2.0**-12)
    return torch.from_numpy(v).reshape(n, c, h, w)


def input_f32_smooth_maps() -> torch.Tensor:
    # Gentler surfaces of the same kind, (16, 8, 32, 32): 8 chunks, the fewest that zero maps
    # are used in, where most 2-D residuals are 0 at the golden bound. Multiples of 2^-12.
    n, c, h, w = 16, 8, 32, 32
    coef = small_ints(n * c * 3, 6, 3).reshape(n * c, 3)
    hh = np.arange(h, dtype=np.int64).reshape(h, 1)
    ww = np.arange(w, dtype=np.int64).reshape(1, w)
    planes = [a * (hh - 16) ** 2 + b * (ww - 16) ** 2 + d * hh * ww for a, b, d in coef]
    v = np.stack(planes).astype(np.float32) * np.float32(2.0**-12)
    return torch.from_numpy(v).reshape(n, c, h, w)


def input_f32_wave_signs() -> torch.Tensor:
    # A triangle wave of period 1280 between -320 and 320 units of 2^-10 (20 steps of 2^-6
    # each way): Lorenzo pays, and around each crossing the values -7..7 units round to
    # q = 0 (sign-stream bits of both signs) while 0 itself is an exact zero (a mask).
    i = np.arange(2 * CHUNK_ELEMS + 3000, dtype=np.int64)
    phase = i % 1280
    t = np.where(phase < 640, phase - 320, 960 - phase)
    return torch.from_numpy(t.astype(np.float32) * np.float32(2.0**-10))


def input_f32_zeros() -> torch.Tensor:
    return torch.zeros(20000, dtype=torch.float32)


def input_f32_random_bits() -> torch.Tensor:
    # Arbitrary bit patterns (NaNs included) at a tiny bound: stored raw.
    bits = (lcg(5000, 4) >> np.uint64(32)).astype(np.uint32)
    return torch.from_numpy(bits.view(np.int32).copy()).view(torch.float32)


def input_f32_scalar() -> torch.Tensor:
    return torch.tensor(1.5, dtype=torch.float32)


def input_f16_empty() -> torch.Tensor:
    return torch.zeros(0, 3, dtype=torch.float16)


# name -> (input function, bound, mode, payload checksum)
GOLDEN = {
    "f32_relu_abs_checksum": (input_f32_relu, 1e-2, "abs", True),
    "f32_specials_rel": (input_f32_specials, 1e-3, "rel", False),
    "f16_ramp_abs": (input_f16_ramp, 1e-3, "abs", False),
    "bf16_noise_5d_abs_checksum": (input_bf16_noise_5d, 0.05, "abs", True),
    "f32_zeros": (input_f32_zeros, 1e-3, "abs", False),
    "f32_random_bits_raw": (input_f32_random_bits, 1e-30, "abs", False),
    "f32_scalar": (input_f32_scalar, 0.1, "abs", False),
    "f16_empty": (input_f16_empty, 1e-3, "abs", True),
    "f32_images_2d_abs": (input_f32_images_2d, 2.0**-7, "abs", False),
    "f32_smooth_maps_abs": (input_f32_smooth_maps, 2.0**-5, "abs", False),
    "f32_wave_signs_abs": (input_f32_wave_signs, 2.0**-7, "abs", False),
}


def tensor_bytes(t: torch.Tensor) -> bytes:
    bits = {torch.float32: torch.int32, torch.float16: torch.int16, torch.bfloat16: torch.int16}[t.dtype]
    return t.contiguous().view(bits).numpy().tobytes()


def sha256(b: bytes) -> str:
    return hashlib.sha256(b).hexdigest()


def compress_golden(name: str) -> bytes:
    make, bound, mode, checksum = GOLDEN[name]
    return actzip.compress(make(), bound, mode=mode, checksum=checksum).to_bytes()


# ---- must-fail streams ---------------------------------------------------------------------


def header_bytes(s: bytes) -> int:
    return struct.unpack_from("<I", s, 8)[0]


def fix_crc(s: bytearray) -> bytearray:
    hb = header_bytes(s)
    struct.pack_into("<I", s, hb - 8, zlib.crc32(bytes(s[:hb - 8])))
    return s


def chunk_table(s: bytes):
    """(offset of the chunk table, number of chunks)."""
    ndim = s[13]
    numel = 1
    for i in range(ndim):
        numel *= struct.unpack_from("<Q", s, 40 + 8 * i)[0]
    chunks = -(-numel // CHUNK_ELEMS)
    return header_bytes(s) - 8 - 8 * chunks, chunks


def chunk_start(s: bytes, c: int) -> int:
    table, _ = chunk_table(s)
    return header_bytes(s) + (struct.unpack_from("<Q", s, table + 8 * (c - 1))[0] if c else 0)


def chunk_flags(s: bytes, c: int) -> int:
    return s[chunk_start(s, c) + 1]


def code_section(s: bytes, c: int) -> int:
    """Offset of chunk c's code section (its table: 4 lane lengths, sign_bytes, reserved)."""
    start = chunk_start(s, c)
    return start + 16 + struct.unpack_from("<I", s, start + 8)[0]


def sign_stream(s: bytes, c: int):
    """(offset, length) of chunk c's sign stream, the last part of its code section."""
    code = code_section(s, c)
    code_bytes = struct.unpack_from("<I", s, chunk_start(s, c) + 12)[0]
    sign_bytes = struct.unpack_from("<I", s, code + 16)[0]
    return code + code_bytes - sign_bytes, sign_bytes


def resize_sign_stream(s: bytearray, c: int, delta: int) -> None:
    """Grows (zero bytes) or shrinks chunk c's sign stream by delta bytes, keeping sign_bytes,
    code_bytes and the chunk table consistent with it."""
    at, length = sign_stream(s, c)
    start, code = chunk_start(s, c), code_section(s, c)
    end = at + length
    if delta >= 0:
        s[end:end] = bytes(delta)
    else:
        del s[end + delta:end]
    struct.pack_into("<I", s, code + 16, length + delta)
    struct.pack_into("<I", s, start + 12, struct.unpack_from("<I", s, start + 12)[0] + delta)
    table, chunks = chunk_table(s)
    for k in range(c, chunks):
        struct.pack_into("<Q", s, table + 8 * k, struct.unpack_from("<Q", s, table + 8 * k)[0] + delta)


def set_shape(s: bytearray, shape) -> None:
    """Another shape of the same rank and element count."""
    assert s[13] == len(shape)
    for i, extent in enumerate(shape):
        struct.pack_into("<Q", s, 40 + 8 * i, extent)


def code_lengths_offset(s: bytes) -> int:
    """Offset of the code_symbols field."""
    pos = 40 + 8 * s[13]
    mask_symbols = struct.unpack_from("<H", s, pos)[0]
    return pos + 2 + (mask_symbols + 1) // 2


def must_fail(streams: dict) -> dict:
    """name -> (bytes, the rule it breaks)."""
    good = streams["f32_relu_abs_checksum"]      # 2 coded chunks, payload checksum
    plain = streams["f32_specials_rel"]          # 1 coded chunk with outliers, no checksum
    image = streams["f32_images_2d_abs"]         # (2, 4, 32, 32): 1 chunk, 2-D Lorenzo, sign bits
    wave = streams["f32_wave_signs_abs"]         # 3 chunks, Lorenzo, masks, sign bits
    smooth = streams["f32_smooth_maps_abs"]      # 8 chunks, 2-D Lorenzo, zero maps
    assert chunk_flags(plain, 0) == 2 and chunk_flags(image, 0) == 6 and chunk_flags(wave, 0) == 3
    assert chunk_flags(smooth, 0) & 8 and struct.unpack_from("<I", smooth, code_section(smooth, 0) + 20)[0] > 0
    assert sign_stream(image, 0)[1] == 8 and sign_stream(wave, 0)[1] > 8 and sign_stream(wave, 1)[1] > 8
    out = {}

    def edit(name, base, rule, fn, crc=True):
        s = bytearray(base)
        fn(s)
        out[name] = (bytes(fix_crc(s) if crc else s), rule)

    edit("bad_magic", good, "magic must be AZIP", lambda s: s.__setitem__(0, ord("X")), crc=False)
    edit("bad_version", good, "format_version must be 1 or 2", lambda s: struct.pack_into("<H", s, 4, 3))
    edit("bad_flags", good, "flag bits other than bit 0 must be 0", lambda s: struct.pack_into("<H", s, 6, 3))
    edit("bad_header_crc", good, "header_crc must match", lambda s: s.__setitem__(header_bytes(s) - 8, s[header_bytes(s) - 8] ^ 1), crc=False)
    edit("bad_header_padding", good, "the 4 bytes after header_crc must be 0", lambda s: s.__setitem__(header_bytes(s) - 1, 1), crc=False)
    edit("bad_header_bytes", good, "header_bytes must be a multiple of 8 and match the header", lambda s: struct.pack_into("<I", s, 8, header_bytes(s) + 8))
    edit("bad_dtype", good, "dtype must be 1, 2 or 3", lambda s: s.__setitem__(12, 4))
    edit("bad_ndim", good, "ndim must be at most 8", lambda s: s.__setitem__(13, 9))
    edit("bad_bound_mode", good, "bound_mode must be 0 or 1", lambda s: s.__setitem__(14, 2))
    edit("bad_direct_log2", good, "direct_log2 must be at most 10", lambda s: s.__setitem__(15, 11))
    edit("bad_error_bound_nan", good, "error_bound must be finite and positive", lambda s: struct.pack_into("<d", s, 24, float("nan")))
    edit("bad_requested_bound_zero", good, "requested_bound must be finite and positive", lambda s: struct.pack_into("<d", s, 16, 0.0))
    # One ulp above the right step (its binary32 bits plus one).
    edit("bad_quant_step", good, "quant_step must equal quant_step_for(error_bound), bit for bit",
         lambda s: struct.pack_into("<I", s, 32, struct.unpack_from("<I", s, 32)[0] + 1))
    edit("bad_chunk_elems", good, "chunk_elems must be 16384", lambda s: struct.pack_into("<I", s, 36, 8192))
    edit("bad_shape_too_large", good, "the element count must be below 2^45", lambda s: struct.pack_into("<Q", s, 40, 2**40))
    # 2^46 more elements: 2^32 more chunks, which a 32-bit chunk count would not see.
    edit("bad_shape_chunk_count_wraps", good, "the element count must be below 2^45",
         lambda s: struct.pack_into("<Q", s, 40, struct.unpack_from("<Q", s, 40)[0] + 2**46))

    def kraft(s):  # every code length 1: Kraft sum far above 1
        pos = code_lengths_offset(s)
        count = struct.unpack_from("<H", s, pos)[0]
        for i in range((count + 1) // 2):
            s[pos + 2 + i] = 0x11 if 2 * i + 1 < count else 0x01

    edit("bad_codebook_kraft", good, "code lengths must satisfy Kraft's inequality", kraft)
    edit("bad_codebook_length", good, "code lengths must be at most 12",
         lambda s: s.__setitem__(code_lengths_offset(s) + 2, (s[code_lengths_offset(s) + 2] & 0xF0) | 0xD))

    def table_past_end(s):
        table, _ = chunk_table(s)
        struct.pack_into("<Q", s, table, 1 << 40)

    def table_decreasing(s):
        table, chunks = chunk_table(s)
        assert chunks >= 2
        struct.pack_into("<Q", s, table + 8, struct.unpack_from("<Q", s, table)[0] - 8)

    edit("bad_chunk_table_past_end", good, "chunks must lie within the stream", table_past_end)
    edit("bad_chunk_table_decreasing", good, "chunk_end must be non-decreasing", table_decreasing)
    out["bad_truncated"] = (good[:-5], "the stream length must add up")
    out["bad_truncated_header"] = (good[:30], "the stream must hold the fixed header")
    out["bad_empty"] = (b"", "the stream must hold the fixed header")
    out["bad_trailing_byte"] = (good + b"\0", "the stream length must add up")
    edit("bad_payload_crc", good, "the payload checksum must match",
         lambda s: s.__setitem__(header_bytes(s) + 20, s[header_bytes(s) + 20] ^ 0x10), crc=False)
    # Chunk-level damage in a stream without payload checksum: the decoder meets it.
    edit("bad_chunk_kind", plain, "chunk kind must be 0, 1 or 2", lambda s: s.__setitem__(chunk_start(s, 0), 3), crc=False)
    edit("bad_chunk_reserved", plain, "the chunk header's reserved field must be 0",
         lambda s: s.__setitem__(chunk_start(s, 0) + 2, 1), crc=False)
    edit("bad_chunk_flags", plain, "unknown chunk flag bits must be 0",
         lambda s: s.__setitem__(chunk_start(s, 0) + 1, s[chunk_start(s, 0) + 1] | 16), crc=False)
    edit("bad_chunk_two_predictors", wave, "chunk flag bits 0 and 2 must not both be set",
         lambda s: s.__setitem__(chunk_start(s, 1) + 1, s[chunk_start(s, 1) + 1] | 4), crc=False)
    # The shape changed (same element count, header checksum fixed): the 2-D chunk is left
    # in a tensor whose rows it may not use.
    edit("bad_2d_rows_longer_than_128", image, "2-D Lorenzo only where the last extent is 2 to 128",
         lambda s: set_shape(s, (2, 4, 4, 256)))
    edit("bad_2d_rows_of_one", image, "2-D Lorenzo only where the last extent is 2 to 128",
         lambda s: set_shape(s, (2, 4, 1024, 1)))
    # The same for a chunk of no-prediction noise given the 2-D flag in a 1-D tensor of 1000.
    edit("bad_2d_flag_in_rows_of_1000", plain, "2-D Lorenzo only where the last extent is 2 to 128",
         lambda s: s.__setitem__(chunk_start(s, 0) + 1, s[chunk_start(s, 0) + 1] | 4), crc=False)
    edit("bad_code_table_reserved", image, "zmap_bytes must be 0 in a chunk without a zero map",
         lambda s: struct.pack_into("<I", s, code_section(s, 0) + 20, 8), crc=False)
    # The zero-map flag cleared: the chunk's zero map is left, which its flags no longer allow.
    edit("bad_zmap_bytes_without_zero_map", smooth, "zmap_bytes must be 0 in a chunk without a zero map",
         lambda s: s.__setitem__(chunk_start(s, 0) + 1, s[chunk_start(s, 0) + 1] & ~8), crc=False)
    edit("bad_zmap_bytes_sum", smooth, "24 + zmap_bytes + the lane lengths + sign_bytes must equal code_bytes",
         lambda s: struct.pack_into("<I", s, code_section(s, 0) + 20,
                                    struct.unpack_from("<I", s, code_section(s, 0) + 20)[0] + 8), crc=False)
    edit("bad_sign_bytes_sum", wave, "24 + the lane lengths + sign_bytes must equal code_bytes",
         lambda s: struct.pack_into("<I", s, code_section(s, 0) + 16, sign_stream(s, 0)[1] + 8), crc=False)
    edit("bad_sign_stream_without_predictor", plain, "a sign stream only with a Lorenzo predictor",
         lambda s: resize_sign_stream(s, 0, 8))
    edit("bad_sign_stream_too_long", wave, "the sign stream has no more padding than its bits need",
         lambda s: resize_sign_stream(s, 1, 8))
    edit("bad_sign_stream_too_short", wave, "the sign stream holds a bit for every coded q = 0",
         lambda s: resize_sign_stream(s, 0, -8))
    edit("bad_sign_stream_missing", image, "the sign stream holds a bit for every coded q = 0",
         lambda s: resize_sign_stream(s, 0, -8))

    def lane_table(s):  # lane 0 claims 8 more bytes: the lanes no longer add up
        start = chunk_start(s, 0)
        lanes = start + 16 + struct.unpack_from("<I", s, start + 8)[0]
        struct.pack_into("<I", s, lanes, struct.unpack_from("<I", s, lanes)[0] + 8)

    edit("bad_lane_lengths", plain, "24 + the lane lengths + sign_bytes must equal code_bytes",
         lane_table, crc=False)

    def outlier_order(s):
        start = chunk_start(s, 0)
        outliers, mask_bytes, code_bytes = struct.unpack_from("<III", s, start + 4)
        assert outliers >= 2
        pos = start + 16 + mask_bytes + code_bytes
        first, second = struct.unpack_from("<HH", s, pos)
        struct.pack_into("<HH", s, pos, second, first)

    edit("bad_outlier_order", plain, "outlier positions must be strictly increasing", outlier_order, crc=False)
    return out


def main() -> int:
    previous = json.loads((HERE / "MANIFEST.json").read_text()) if (HERE / "MANIFEST.json").exists() else {}
    streams = {}
    manifest = {"format_version": int(actzip._core.FORMAT_VERSION), "golden": {}, "must_fail": {},
                "version1": previous.get("version1", {})}
    for name, (make, bound, mode, checksum) in GOLDEN.items():
        x = make()
        ct = actzip.compress(x, bound, mode=mode, checksum=checksum)
        stream = ct.to_bytes()
        decoded = actzip.decompress(actzip.CompressedTensor.from_bytes(stream))
        streams[name] = stream
        (HERE / f"{name}.azip").write_bytes(stream)
        manifest["golden"][name] = {
            "file": f"{name}.azip",
            "input": make.__name__,
            "dtype": str(x.dtype).replace("torch.", ""),
            "shape": list(x.shape),
            "bound": bound,
            "mode": mode,
            "checksum": checksum,
            "input_sha256": sha256(tensor_bytes(x)),
            "stream_sha256": sha256(stream),
            "decoded_sha256": sha256(tensor_bytes(decoded)),
            "stream_bytes": len(stream),
        }
    for name, (data, rule) in must_fail(streams).items():
        (HERE / f"{name}.azip").write_bytes(data)
        manifest["must_fail"][name] = {"file": f"{name}.azip", "breaks": rule}
    (HERE / "MANIFEST.json").write_text(json.dumps(manifest, indent=2, sort_keys=True) + "\n")
    print(f"wrote {len(manifest['golden'])} golden and {len(manifest['must_fail'])} must-fail streams to {HERE}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
