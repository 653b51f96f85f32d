// Per-element logic of the codec: dtype conversions, quantization, reconstruction and the
// mapping of codes to symbols (docs/FORMAT.md sections 3 and 4).
//
// Written once for every backend: functions are ACTZIP_HD so that the CUDA kernels use the
// very code the CPU tests exercise. Everything here is pure and branch-light.
#pragma once

#include <cmath>
#include <climits>
#include <cstdint>
#include <cstring>

#include "codec/hd.h"


namespace actzip {
namespace detail {

inline constexpr int32_t kMaxQ = (int32_t(1) << 23) - 2;     // largest |q| that is coded
inline constexpr int32_t kMaxCode = (int32_t(1) << 23) - 1;  // largest |c| a decoder accepts
inline constexpr int kMaxDirectLog2 = 10;
inline constexpr int kMaxExtraBits = 24;

// Number of code symbols for direct_log2 = k: 2^k direct ones, then classes b = k..24.
ACTZIP_HD constexpr uint32_t code_alphabet(int k) { return (uint32_t(1) << k) + 25u - uint32_t(k); }
inline constexpr uint32_t kFineAlphabet = (1u << kMaxDirectLog2) + 25u - kMaxDirectLog2;  // 1039

ACTZIP_HD uint32_t f32_bits(float f) {
  uint32_t u;
  std::memcpy(&u, &f, 4);
  return u;
}
ACTZIP_HD float bits_f32(uint32_t u) {
  float f;
  std::memcpy(&f, &u, 4);
  return f;
}

ACTZIP_HD float f16_to_f32(uint16_t h) {
  const uint32_t sign = uint32_t(h & 0x8000u) << 16;
  const uint32_t exp = (h >> 10) & 0x1Fu;
  const uint32_t man = h & 0x3FFu;
  if (exp == 0x1F) return bits_f32(sign | 0x7F800000u | (man << 13));  // Inf / NaN
  if (exp != 0) return bits_f32(sign | ((exp + 112u) << 23) | (man << 13));
  // zero or subnormal: man * 2^-24, exact in binary32
  const float mag = float(man) * 5.9604644775390625e-08f;
  return sign ? -mag : mag;
}

// binary32 -> binary16, round to nearest even. NaN stays NaN (quieted).
ACTZIP_HD uint16_t f32_to_f16(float f) {
  uint32_t x = f32_bits(f);
  const uint16_t sign = uint16_t((x >> 16) & 0x8000u);
  x &= 0x7FFFFFFFu;
  if (x >= 0x7F800000u) return uint16_t(sign | (x > 0x7F800000u ? 0x7E00u : 0x7C00u));
  if (x >= 0x477FF000u) return uint16_t(sign | 0x7C00u);  // >= 65520 rounds to Inf
  if (x < 0x38800000u) {                                  // below 2^-14: subnormal half
    if (x <= 0x33000000u) return sign;                    // <= 2^-25 rounds to 0
    const uint32_t e = x >> 23;
    const uint32_t m = (x & 0x7FFFFFu) | 0x800000u;
    const uint32_t s = 126u - e;  // 14..24
    uint32_t h = m >> s;
    const uint32_t rem = m & ((1u << s) - 1u);
    const uint32_t half = 1u << (s - 1u);
    if (rem > half || (rem == half && (h & 1u))) ++h;
    return uint16_t(sign | h);
  }
  const uint32_t r = (x + 0xC8000FFFu + ((x >> 13) & 1u)) >> 13;  // rebias 127->15 and round
  return uint16_t(sign | r);
}

ACTZIP_HD float bf16_to_f32(uint16_t b) { return bits_f32(uint32_t(b) << 16); }

// binary32 -> bfloat16, round to nearest even. NaN stays NaN (quieted).
ACTZIP_HD uint16_t f32_to_bf16(float f) {
  const uint32_t x = f32_bits(f);
  if ((x & 0x7FFFFFFFu) > 0x7F800000u) return uint16_t((x >> 16) | 0x40u);
  return uint16_t((x + 0x7FFFu + ((x >> 16) & 1u)) >> 16);
}

// Rounds a binary32 value to the storage dtype and back (identity for float32).
template <int kDType>
ACTZIP_HD float round_to_dtype(float r) {
  if constexpr (kDType == 2) return f16_to_f32(f32_to_f16(r));
  else if constexpr (kDType == 3) return bf16_to_f32(f32_to_bf16(r));
  else return r;
}

template <int kDType>
ACTZIP_HD float load_elem(const void* base, uint64_t i) {
#if defined(__CUDA_ARCH__)
  // On the GPU, tensors are aligned to their element size (torch's allocations are): one
  // typed load through the read-only cache, not a byte-wise copy.
  if constexpr (kDType == 1) {
    return __ldg(static_cast<const float*>(base) + i);
  } else {
    const uint16_t h = __ldg(static_cast<const unsigned short*>(base) + i);
    if constexpr (kDType == 2) return f16_to_f32(h);
    else return bf16_to_f32(h);
  }
#endif
  if constexpr (kDType == 1) {
    float f;
    std::memcpy(&f, static_cast<const uint8_t*>(base) + 4 * i, 4);
    return f;
  } else {
    uint16_t h;
    std::memcpy(&h, static_cast<const uint8_t*>(base) + 2 * i, 2);
    if constexpr (kDType == 2) return f16_to_f32(h);
    else return bf16_to_f32(h);
  }
}

// Stores a binary32 value in the dtype's representation (with RNE for the 16-bit types).
template <int kDType>
ACTZIP_HD void store_elem(void* base, uint64_t i, float v) {
  if constexpr (kDType == 1) {
    std::memcpy(static_cast<uint8_t*>(base) + 4 * i, &v, 4);
  } else {
    const uint16_t h = (kDType == 2) ? f32_to_f16(v) : f32_to_bf16(v);
    std::memcpy(static_cast<uint8_t*>(base) + 2 * i, &h, 2);
  }
}

// quant_step_for(e) of docs/FORMAT.md section 3: the largest binary32 value of at most 8
// significant bits, M * 2^E with M < 256 and E >= -149, that does not exceed 2e (2^-149 when
// 2e is smaller still). 8 significant bits keep float32(m) * step exact for every |q| < 2^16
// and cost at most 1/128 (0.8%) of the step; a power of two, the simplest exact choice,
// costs up to half the step. Only exact operations: every backend gets the same bits.
ACTZIP_HD float quant_step_hd(double error_bound) {
  const double kLargest = 255.0 * ::ldexp(1.0, 120);  // the largest M * 2^E below FLT_MAX
  const double twice = 2.0 * (kLargest < error_bound ? kLargest : error_bound);
  if (twice >= kLargest) return float(kLargest);
  int ex = 0;
  ::frexp(twice, &ex);  // twice = f * 2^ex with f in [0.5, 1)
  const int e = ex - 8 > -149 ? ex - 8 : -149;
  const double m = ::floor(::ldexp(twice, -e));  // exact: a power-of-two scaling
  if (m < 1) return ::ldexpf(1.0f, -149);
  return float(::ldexp(m, e));  // exact in binary32
}

// The absolute bound of a relative request, from the finite minimum and maximum (lo > hi
// when there is no finite element): `requested` times the range; a constant tensor takes
// the bound relative to its magnitude, and one with no non-zero finite value relative to
// 1. Kept positive and finite. Only exact operations, as above.
ACTZIP_HD double rel_abs_bound_hd(double lo, double hi, double requested) {
  double range = hi >= lo ? hi - lo : 0.0;
  if (range == 0) {
    const double a = ::fabs(lo), b = ::fabs(hi);
    range = hi >= lo ? (a < b ? b : a) : 0.0;
  }
  if (range == 0) range = 1.0;
  double bound = requested * range;
  if (!(bound > 0)) bound = 4.9406564584124654e-324;                 // the smallest subnormal
  if (!(bound <= 1.7976931348623157e308)) bound = 1.7976931348623157e308;  // the largest double
  return bound;
}

// The quantizer's constants for one stream.
struct Quantizer {
  double error_bound;  // absolute
  double inv_step;     // 1 / step, rounded; the check in classify_code() covers its error
  float step;          // at most 8 significant bits, so float(m) * step is exact for m < 2^16
  float quarter_step;  // reconstruction of |q| = 0; may be 0 for tiny steps (then never coded)
  float error_bound_down;  // the largest binary32 value <= error_bound
};

// The largest binary32 value that is not above v (v >= 0, not NaN).
ACTZIP_HD float float_at_most(double v) {
  if (v >= 3.4028234663852886e38) return 3.4028234663852886e38f;  // FLT_MAX (also for +Inf)
  float f = float(v);  // rounded to nearest, possibly up
  if (double(f) > v) f = bits_f32(f32_bits(f) - 1u);
  return f;
}

ACTZIP_HD Quantizer make_quantizer(double error_bound, float step) {
  Quantizer qz;
  qz.error_bound = error_bound;
  qz.error_bound_down = float_at_most(error_bound);
  qz.inv_step = 1.0 / double(step);
  qz.step = step;
  qz.quarter_step = step * 0.25f;
  return qz;
}

// Reconstruction of signed code c != 0, in binary32 (docs/FORMAT.md section 3): one IEEE
// multiply, so every backend computes the same bits.
ACTZIP_HD float reconstruct(int32_t c, const Quantizer& qz) {
  const uint32_t m = uint32_t(c < 0 ? -c : c) - 1u;
  const float mag = m == 0 ? qz.quarter_step : float(m) * qz.step;
  return c < 0 ? -mag : mag;
}

enum ElemClass : int { kZero = 0, kCoded = 1, kOutlier = 2 };

inline constexpr int32_t kOutlierCode = INT32_MIN;

// Classifies one element: its signed code if it is coded, 0 for +0.0, kOutlierCode for an
// outlier. It checks exactly what a decoder will produce (|x| is rounded to the nearest
// multiple of the step; rounding is symmetric, so the sign is applied afterwards), so the
// bound, the zero rule and the sign rule hold by construction. Branch-free: loops over it
// vectorize (built with -fno-trapping-math).
template <int kDType>
ACTZIP_HD int32_t classify_code(float x, const Quantizer& qz) {
  const uint32_t xb = f32_bits(x);
  const float ax = bits_f32(xb & 0x7FFFFFFFu);
  const double y = double(ax) * qz.inv_step;  // NaN stays NaN
  // round(y) <= kMaxQ (kMaxQ is even, so a tie at kMaxQ + 0.5 rounds down); false for NaN, Inf.
  const bool in_range = y <= double(kMaxQ) + 0.5;
  const double ys = y < double(kMaxQ) ? y : double(kMaxQ);
  // Round to nearest (ties to even) without a libm call: valid for 0 <= ys < 2^51.
  const int32_t m = int32_t((ys + 6755399441055744.0) - 6755399441055744.0);
  const float mag = round_to_dtype<kDType>(m == 0 ? qz.quarter_step : float(m) * qz.step);
  // |x - x^| in binary32, exactly. For m >= 1, m is a nearest integer of |x| / step, so
  // mag / 2 <= |x| <= 2 mag (a float32 |x| below step / 2 would have rounded to m = 0), and
  // the subtraction is exact (Sterbenz); float16 and bfloat16 values of exponents that
  // close differ by a number of at most 14 significant bits, exact too. For m = 0,
  // |x - x^| < mag <= e, whatever the rounding. An exact float is <= e exactly when it is <=
  // the largest float not above e; Inf and NaN fail the test, as they should.
  const float err = bits_f32(f32_bits(ax - mag) & 0x7FFFFFFFu);
  const bool coded = in_range & (err <= qz.error_bound_down) & (mag != 0.0f) & (xb != 0x80000000u);
  const int32_t c = (m + 1) * (1 - 2 * int32_t(xb >> 31));
  return xb == 0 ? 0 : (coded ? c : kOutlierCode);
}

// classify_code() split into the element's class and, for a coded element, its code.
template <int kDType>
ACTZIP_HD int classify(float x, const Quantizer& qz, int32_t* code) {
  const int32_t c = classify_code<kDType>(x, qz);
  if (c == 0) return kZero;
  if (c == kOutlierCode) return kOutlier;
  *code = c;
  return kCoded;
}

// Value coded without prediction: 2(|c| - 1) + sign.
ACTZIP_HD uint32_t code_to_u(int32_t c) {
  return c > 0 ? 2u * uint32_t(c - 1) : 2u * uint32_t(-c - 1) + 1u;
}
ACTZIP_HD int32_t u_to_code(uint32_t u) {
  const int32_t m = int32_t(u >> 1) + 1;
  return (u & 1u) ? -m : m;
}
ACTZIP_HD uint32_t zigzag(int32_t d) { return d >= 0 ? 2u * uint32_t(d) : 2u * uint32_t(-d) - 1u; }
ACTZIP_HD int32_t unzigzag(uint32_t u) { return (u & 1u) ? -int32_t(u >> 1) - 1 : int32_t(u >> 1); }

ACTZIP_HD int floor_log2(uint32_t u) {
#if defined(__CUDA_ARCH__)
  return 31 - __clz(u);
#else
  return 31 - __builtin_clz(u);
#endif
}

// The 2-D Lorenzo prediction of the element at chunk position i, in column `col` of rows
// of `row` elements (the tensor's last extent), from the quantized values q of the chunk's
// earlier elements on the grid (`grid`: 0 for zeros and outliers). Neighbours outside the
// chunk or the row count as absent (docs/FORMAT.md section 3). Clamped to |q| <= kMaxQ.
ACTZIP_HD int32_t lorenzo2d_predict(const int32_t* grid, uint32_t i, uint32_t col, uint32_t row) {
  const bool left = col != 0 && i >= 1;
  const bool up = i >= row;
  const int32_t l = left ? grid[i - 1] : 0;
  const int32_t a = up ? grid[i - row] : 0;
  const int32_t al = (left && i >= row + 1) ? grid[i - row - 1] : 0;  // inside the chunk
  const int32_t p = l + a - al;  // |p| < 3 * 2^23: no overflow
  return p > kMaxQ ? kMaxQ : (p < -kMaxQ ? -kMaxQ : p);
}

// The quantized value q of a signed code c (c = q + 1 for x > 0, q - 1 for x < 0).
ACTZIP_HD int32_t code_to_q(int32_t c) { return c - int32_t(c > 0) + int32_t(c < 0); }
// The code of quantized value q; `negative` decides the sign when q is 0.
ACTZIP_HD int32_t q_to_code(int32_t q, bool negative) { return q > 0 ? q + 1 : (q < 0 ? q - 1 : (negative ? -1 : 1)); }

// Symbol of value u for D = 2^k, and how many extra bits follow it (section 4).
ACTZIP_HD uint32_t u_to_symbol(uint32_t u, int k, int* extra_bits) {
  if (u < (1u << k)) {
    *extra_bits = 0;
    return u;
  }
  const int b = floor_log2(u);
  *extra_bits = b;
  return (1u << k) + uint32_t(b - k);
}

// The fine histogram bin of u: the symbol for k = kMaxDirectLog2. Any coarser k's symbol
// and extra-bit count are a function of this bin (see fine_bin_to_symbol).
ACTZIP_HD uint32_t fine_bin(uint32_t u) {
  if (u < (1u << kMaxDirectLog2)) return u;
  return (1u << kMaxDirectLog2) + uint32_t(floor_log2(u) - kMaxDirectLog2);
}

ACTZIP_HD uint32_t fine_bin_to_symbol(uint32_t bin, int k, int* extra_bits) {
  if (bin < (1u << kMaxDirectLog2)) return u_to_symbol(bin, k, extra_bits);
  const int b = int(bin - (1u << kMaxDirectLog2)) + kMaxDirectLog2;
  *extra_bits = b;
  return (1u << k) + uint32_t(b - k);
}

}  // namespace detail
}  // namespace actzip
