// Per-element logic (cpp/codec/element.h) against docs/FORMAT.md sections 3 and 4:
// float16/bfloat16 conversions against straightforward reference conversions, the quantizer
// over dense sweeps of values and bounds, and the mapping of codes to symbols.
//
// The references here are written from the format document with plain binary64 arithmetic
// (frexp, ldexp, nearbyint), not from the bit tricks of the implementation.
#include <cfenv>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <limits>
#include <vector>

#include "codec/element.h"
#include "codec/format.h"
#include "harness.h"

namespace {

using namespace actzip::detail;

constexpr int kF32 = 1, kF16 = 2, kBF16 = 3;

uint32_t bits_of(float f) {
  uint32_t u;
  std::memcpy(&u, &f, 4);
  return u;
}
float float_of(uint32_t u) {
  float f;
  std::memcpy(&f, &u, 4);
  return f;
}

// ---- reference conversions ----------------------------------------------------------------

// binary16: 1 sign bit, 5 exponent bits (bias 15), 10 mantissa bits.
float ref_f16_to_f32(uint16_t h) {
  const bool neg = h & 0x8000u;
  const int exp = (h >> 10) & 0x1F;
  const int man = h & 0x3FF;
  double v;
  if (exp == 0x1F) v = man ? std::numeric_limits<double>::quiet_NaN() : HUGE_VAL;
  else if (exp == 0) v = std::ldexp(double(man), -24);
  else v = std::ldexp(1024.0 + man, exp - 25);
  return float(neg ? -v : v);
}

// bfloat16: 1 sign bit, 8 exponent bits (bias 127), 7 mantissa bits.
float ref_bf16_to_f32(uint16_t b) {
  const bool neg = b & 0x8000u;
  const int exp = (b >> 7) & 0xFF;
  const int man = b & 0x7F;
  double v;
  if (exp == 0xFF) v = man ? std::numeric_limits<double>::quiet_NaN() : HUGE_VAL;
  else if (exp == 0) v = std::ldexp(double(man), -133);
  else v = std::ldexp(128.0 + man, exp - 134);
  return float(neg ? -v : v);
}

// Rounds |f| to a multiple of the target format's spacing at |f| (ties to even, the default
// rounding mode) and returns that multiple r, with the spacing in *ulp.
double ref_round_to_grid(double a, int mantissa_bits, int min_normal_exp, double* ulp) {
  if (a < std::ldexp(1.0, min_normal_exp)) {
    *ulp = std::ldexp(1.0, min_normal_exp - mantissa_bits);
  } else {
    int e = 0;
    std::frexp(a, &e);  // a = m * 2^e, m in [0.5, 1)
    *ulp = std::ldexp(1.0, e - 1 - mantissa_bits);
  }
  return std::nearbyint(a / *ulp);  // a / ulp is exact: a power-of-two scaling
}

// float32 -> binary16 with round to nearest even. NaN gives the canonical quiet NaN (the
// tests compare only NaN-ness and sign for NaNs).
uint16_t ref_f32_to_f16(float f) {
  const uint16_t sign = std::signbit(f) ? 0x8000u : 0u;
  if (std::isnan(f)) return uint16_t(sign | 0x7E00u);
  if (std::isinf(f)) return uint16_t(sign | 0x7C00u);
  double ulp = 0;
  const double r = ref_round_to_grid(std::fabs(double(f)), 10, -14, &ulp);
  const double v = r * ulp;
  if (v >= 65536.0) return uint16_t(sign | 0x7C00u);           // past the largest half: Inf
  if (v < std::ldexp(1.0, -14)) return uint16_t(sign | uint16_t(r));  // subnormal: mantissa = r
  int e = 0;
  const double m = std::frexp(v, &e);  // v = m * 2^e
  const int exp = e - 1 + 15;
  const int man = int(m * 2048.0) - 1024;
  return uint16_t(sign | (exp << 10) | man);
}

uint16_t ref_f32_to_bf16(float f) {
  const uint16_t sign = std::signbit(f) ? 0x8000u : 0u;
  if (std::isnan(f)) return uint16_t(sign | 0x7FC0u);
  if (std::isinf(f)) return uint16_t(sign | 0x7F80u);
  double ulp = 0;
  const double r = ref_round_to_grid(std::fabs(double(f)), 7, -126, &ulp);
  const double v = r * ulp;
  if (v >= std::ldexp(1.0, 128)) return uint16_t(sign | 0x7F80u);
  // v is a bfloat16 value, hence exactly a binary32 value whose low 16 bits are zero.
  return uint16_t(sign | (bits_of(float(v)) >> 16));
}

float ref_round_to_dtype(float r, int dtype) {
  if (dtype == kF16) return ref_f16_to_f32(ref_f32_to_f16(r));
  if (dtype == kBF16) return ref_bf16_to_f32(ref_f32_to_bf16(r));
  return r;
}

bool same_half(uint16_t got, uint16_t want, bool bf16) {
  const uint16_t exp_mask = bf16 ? 0x7F80u : 0x7C00u;
  const uint16_t man_mask = bf16 ? 0x007Fu : 0x03FFu;
  const bool want_nan = (want & exp_mask) == exp_mask && (want & man_mask);
  if (want_nan) return (got & exp_mask) == exp_mask && (got & man_mask) && ((got ^ want) & 0x8000u) == 0;
  return got == want;
}

bool same_float(float got, float want) {
  if (std::isnan(want)) return std::isnan(got) && std::signbit(got) == std::signbit(want);
  return bits_of(got) == bits_of(want);
}

// ---- conversions ---------------------------------------------------------------------------

ACTZIP_TEST(f16_to_f32_matches_reference_for_all_65536_patterns) {
  for (uint32_t h = 0; h < 65536; ++h) {
    const float got = f16_to_f32(uint16_t(h));
    const float want = ref_f16_to_f32(uint16_t(h));
    ACTZIP_CHECK(same_float(got, want), "h=0x%04x got %a want %a", h, double(got), double(want));
  }
}

ACTZIP_TEST(f16_round_trips_through_f32_for_all_65536_patterns) {
  for (uint32_t h = 0; h < 65536; ++h) {
    const uint16_t back = f32_to_f16(f16_to_f32(uint16_t(h)));
    ACTZIP_CHECK(same_half(back, uint16_t(h), false), "h=0x%04x came back as 0x%04x", h, back);
    ACTZIP_CHECK(round_to_dtype<kF16>(f16_to_f32(uint16_t(h))) == f16_to_f32(uint16_t(h)) ||
                     std::isnan(f16_to_f32(uint16_t(h))),
                 "round_to_dtype<f16> moved the half value 0x%04x", h);
  }
}

ACTZIP_TEST(bf16_to_f32_matches_reference_for_all_65536_patterns) {
  for (uint32_t b = 0; b < 65536; ++b) {
    const float got = bf16_to_f32(uint16_t(b));
    const float want = ref_bf16_to_f32(uint16_t(b));
    ACTZIP_CHECK(same_float(got, want), "b=0x%04x got %a want %a", b, double(got), double(want));
  }
}

ACTZIP_TEST(bf16_round_trips_through_f32_for_all_65536_patterns) {
  for (uint32_t b = 0; b < 65536; ++b) {
    const uint16_t back = f32_to_bf16(bf16_to_f32(uint16_t(b)));
    ACTZIP_CHECK(same_half(back, uint16_t(b), true), "b=0x%04x came back as 0x%04x", b, back);
  }
}

// float32 values worth converting: a strided sweep over every bit pattern plus, for every
// 16-bit value, the float32 values at and around the midpoint to its successor (the ties).
template <class Visit>
void for_conversion_samples(bool bf16, Visit visit) {
  for (uint64_t u = 0; u < (uint64_t(1) << 32); u += 613) visit(float_of(uint32_t(u)));
  for (uint32_t h = 0; h < 0x8000u; ++h) {
    const float lo = bf16 ? bf16_to_f32(uint16_t(h)) : f16_to_f32(uint16_t(h));
    const float hi = bf16 ? bf16_to_f32(uint16_t(h + 1)) : f16_to_f32(uint16_t(h + 1));
    if (!std::isfinite(lo) || std::isnan(hi)) continue;
    // Halfway between two neighbours is exact in binary32; past the largest finite value
    // the "neighbour" is the next power of two, where rounding overflows to Inf.
    const float below = bf16 ? bf16_to_f32(uint16_t(h - 1)) : f16_to_f32(uint16_t(h - 1));
    const double gap = std::isinf(hi) ? double(lo) - double(below) : double(hi) - double(lo);
    const float mid = float(double(lo) + gap / 2.0);
    float v = mid;
    for (int i = 0; i < 3; ++i) v = std::nextafter(v, 0.0f);
    for (int i = 0; i < 7; ++i, v = std::nextafter(v, HUGE_VALF)) {
      visit(v);
      visit(-v);
    }
    visit(lo);
    visit(std::nextafter(lo, HUGE_VALF));
  }
}

ACTZIP_TEST(f32_to_f16_rounds_to_nearest_even_like_the_reference) {
  uint64_t n = 0;
  for_conversion_samples(false, [&](float f) {
    ++n;
    const uint16_t got = f32_to_f16(f);
    const uint16_t want = ref_f32_to_f16(f);
    ACTZIP_CHECK(same_half(got, want, false), "f=%a (0x%08x) got 0x%04x want 0x%04x", double(f), bits_of(f),
                 got, want);
  });
  ACTZIP_CHECK(n > 7000000, "only %llu samples", (unsigned long long)n);
}

ACTZIP_TEST(f32_to_bf16_rounds_to_nearest_even_like_the_reference) {
  for_conversion_samples(true, [&](float f) {
    const uint16_t got = f32_to_bf16(f);
    const uint16_t want = ref_f32_to_bf16(f);
    ACTZIP_CHECK(same_half(got, want, true), "f=%a (0x%08x) got 0x%04x want 0x%04x", double(f), bits_of(f), got,
                 want);
  });
}

ACTZIP_TEST(store_and_load_elem_round_trip_every_dtype) {
  uint8_t buf[8] = {0};
  for (uint32_t h = 0; h < 65536; ++h) {
    const float f16 = f16_to_f32(uint16_t(h));
    store_elem<kF16>(buf, 1, f16);
    ACTZIP_CHECK(same_float(load_elem<kF16>(buf, 1), f16), "f16 0x%04x", h);
    const float bf = bf16_to_f32(uint16_t(h));
    store_elem<kBF16>(buf, 2, bf);
    ACTZIP_CHECK(same_float(load_elem<kBF16>(buf, 2), bf), "bf16 0x%04x", h);
  }
  for (uint64_t u = 0; u < (uint64_t(1) << 32); u += 65521) {
    store_elem<kF32>(buf, 1, float_of(uint32_t(u)));
    uint32_t back;
    std::memcpy(&back, buf + 4, 4);
    ACTZIP_CHECK(back == uint32_t(u), "f32 0x%08x stored as 0x%08x", uint32_t(u), back);
  }
}

// ---- quantizer -----------------------------------------------------------------------------

// clamp(floor(log2(2 * error_bound)), -149, 127), computed with ilogb (exact for any double).
int ref_step_exp(double error_bound) {
  int e = std::ilogb(2.0 * error_bound);
  if (std::isinf(2.0 * error_bound)) e = 1024;
  return e < -149 ? -149 : (e > 127 ? 127 : e);
}

// The error bounds of the sweeps: decades from 1e-30 to 1e10, powers of two and their
// neighbours (where floor(log2(2e)) changes), and the extremes that clamp the step.
std::vector<double> sweep_bounds() {
  std::vector<double> b;
  for (int d = -30; d <= 10; ++d) b.push_back(std::pow(10.0, d));
  for (int k = -100; k <= 33; k += 3) {
    const double p = std::ldexp(1.0, k);
    b.push_back(p);
    b.push_back(std::nextafter(p, 0.0));
    b.push_back(std::nextafter(p, HUGE_VAL));
    b.push_back(p * 0.75);
  }
  for (double x : {1e-300, 1e-60, 1e-45, 0x1p-151, 0x1p-150, 0x1p-149, 0x1p-148, 1e-40, 1e-38, 0x1p-126, 0x1p-125,
                   0.1, 0.3, 1.0 / 3.0, 1e-3, 5e-4, 1e-2, 1e4, 65504.0, 1e30, 1e38, 0x1p126, 0x1p127, 3.4e38, 1e300, 1e308})
    b.push_back(x);
  return b;
}

// What the format says about element x of a stream with this bound: the set of nearest
// integers q of x / step (two at a tie), and whether the code c = q +- 1 passes the check.
struct SpecQuantizer {
  double error_bound;
  int step_exp;
  int dtype;
  float step;

  SpecQuantizer(double e, int dt) : error_bound(e), step_exp(ref_step_exp(e)), dtype(dt) {
    step = std::ldexp(1.0f, step_exp);  // exact: 2^-149 .. 2^127
  }

  // The dtype value a decoder produces for code c (section 3, word for word).
  float reconstruct(int32_t c) const {
    const uint32_t m = uint32_t(c < 0 ? -int64_t(c) : int64_t(c)) - 1u;
    const float r = m == 0 ? step / 4.0f : float(m) * step;
    return ref_round_to_dtype(c < 0 ? -r : r, dtype);
  }

  bool accepts(float x, int32_t c) const {
    const float xh = reconstruct(c);
    return std::isfinite(xh) && std::fabs(double(x) - double(xh)) <= error_bound && xh != 0.0f &&
           std::signbit(xh) == std::signbit(x);
  }

  // Nearest integers of x / step; empty when they are far out of the codable range.
  int nearest(float x, int64_t q[2]) const {
    const double y = std::ldexp(double(x), -step_exp);  // exact
    if (!(std::fabs(y) < 0x1p40)) return 0;
    const double fl = std::floor(y);
    const double frac = y - fl;
    if (frac < 0.5) {
      q[0] = int64_t(fl);
      return 1;
    }
    if (frac > 0.5) {
      q[0] = int64_t(fl) + 1;
      return 1;
    }
    q[0] = int64_t(fl);
    q[1] = int64_t(fl) + 1;
    return 2;
  }

  static int32_t code_of(float x, int64_t q) { return int32_t(x > 0 ? q + 1 : q - 1); }
};

struct SweepCounts {
  uint64_t coded = 0, outliers = 0, zeros = 0;
};

// Checks classify() on x against the format: zeros and specials by rule; a coded element's
// code comes from a nearest integer and its reconstruction is within the bound, non-zero and
// same-signed (and equal to the reference reconstruction); an outlier is one that the format
// would not code.
template <int kDT>
void check_element(float x, const SpecQuantizer& spec, const Quantizer& qz, SweepCounts* counts) {
  int32_t c = 0;
  const int cls = classify<kDT>(x, qz, &c);
  const uint32_t xb = bits_of(x);
  const double e = spec.error_bound;
  if (xb == 0) {
    ACTZIP_CHECK(cls == kZero, "+0.0 classified %d (bound %a)", cls, e);
    ++counts->zeros;
    return;
  }
  if (!std::isfinite(x) || xb == 0x80000000u) {
    ACTZIP_CHECK(cls == kOutlier, "special 0x%08x classified %d (bound %a)", xb, cls, e);
    ++counts->outliers;
    return;
  }
  ACTZIP_CHECK(cls != kZero, "non-zero 0x%08x classified zero (bound %a)", xb, e);
  int64_t q[2];
  const int nq = spec.nearest(x, q);
  if (cls == kCoded) {
    ++counts->coded;
    // The strict guarantee, checked with the implementation's own reconstruction.
    const float xh = round_to_dtype<kDT>(reconstruct(c, qz));
    const double err = std::fabs(double(x) - double(xh));
    ACTZIP_CHECK(std::isfinite(xh) && err <= e && xh != 0.0f && std::signbit(xh) == std::signbit(x),
                 "x=%a (dtype %d) coded %d reconstructs to %a: error %a > bound %a or zero/sign broken", double(x),
                 kDT, c, double(xh), err, e);
    // Same value as the format's reconstruction, bit for bit.
    ACTZIP_CHECK(bits_of(xh) == bits_of(spec.reconstruct(c)), "x=%a code %d: library %a, format %a", double(x), c,
                 double(xh), double(spec.reconstruct(c)));
    const int64_t qi = x > 0 ? int64_t(c) - 1 : int64_t(c) + 1;
    ACTZIP_CHECK((x > 0) == (c > 0), "x=%a got code %d of the wrong sign", double(x), c);
    ACTZIP_CHECK(nq >= 1 && (qi == q[0] || (nq == 2 && qi == q[1])),
                 "x=%a step 2^%d: code %d is not from a nearest integer of x/step", double(x), spec.step_exp, c);
    ACTZIP_CHECK(qi <= kMaxQ && qi >= -kMaxQ, "x=%a: |q| = %lld above 2^23-2", double(x), (long long)qi);
  } else {
    ++counts->outliers;
    bool format_rejects = nq == 0;
    for (int i = 0; i < nq; ++i)
      format_rejects |= q[i] > kMaxQ || q[i] < -kMaxQ || !spec.accepts(x, SpecQuantizer::code_of(x, q[i]));
    ACTZIP_CHECK(format_rejects, "x=%a (dtype %d, bound %a, step 2^%d) is an outlier although code %d passes",
                 double(x), kDT, e, spec.step_exp, nq ? SpecQuantizer::code_of(x, q[0]) : 0);
  }
}

// Values at and around the bin edges of the step: k*step, (k+1/2)*step, (k+1/4)*step for
// small k and k near the largest coded |q|, a few ulps either side, both signs.
template <class Visit>
void for_bin_edges(float step, Visit visit) {
  const double ks[] = {0, 1, 2, 3, 7, 100, 1 << 12, 1 << 20, kMaxQ - 2, kMaxQ - 1, kMaxQ, kMaxQ + 1, kMaxQ + 2,
                       1 << 23};
  for (double k : ks) {
    for (double frac : {0.0, 0.25, 0.5, 0.75}) {
      const double target = (k + frac) * double(step);
      if (target == 0 || target > 3.4e38) continue;
      float v = float(target);
      for (int i = 0; i < 3; ++i) v = std::nextafter(v, 0.0f);
      for (int i = 0; i < 7; ++i, v = std::nextafter(v, HUGE_VALF)) {
        visit(v);
        visit(-v);
      }
    }
  }
}

ACTZIP_TEST(step_exp_for_is_clamped_floor_log2_of_twice_the_bound) {
  for (double e : sweep_bounds()) {
    const int got = step_exp_for(e);
    ACTZIP_CHECK(got == ref_step_exp(e), "bound %a: step 2^%d, want 2^%d", e, got, ref_step_exp(e));
    if (got > -149 && got < 127)
      ACTZIP_CHECK(std::ldexp(1.0, got) <= 2 * e && 2 * e < std::ldexp(1.0, got + 1), "bound %a step 2^%d", e, got);
    const Quantizer qz = make_quantizer(e, got);
    ACTZIP_CHECK(qz.step == std::ldexp(1.0f, got), "step of 2^%d is %a", got, double(qz.step));
    ACTZIP_CHECK(qz.inv_step == std::ldexp(1.0, -got), "inv_step of 2^%d is %a", got, qz.inv_step);
    ACTZIP_CHECK(qz.quarter_step == qz.step / 4.0f, "quarter step of 2^%d is %a", got, double(qz.quarter_step));
  }
  for (double e : {std::numeric_limits<double>::max(), std::numeric_limits<double>::denorm_min(),
                   std::numeric_limits<double>::min()})
    ACTZIP_CHECK(step_exp_for(e) == ref_step_exp(e), "bound %a", e);
}

ACTZIP_TEST(float32_quantizer_is_strict_over_a_sweep_of_bit_patterns_and_bounds) {
  const std::vector<double> bounds = sweep_bounds();
  SweepCounts counts;
  for (size_t bi = 0; bi < bounds.size(); ++bi) {
    const SpecQuantizer spec(bounds[bi], kF32);
    // The step from the format's formula: step_exp_for() has its own test above.
    const Quantizer qz = make_quantizer(bounds[bi], spec.step_exp);
    // Every bit pattern, strided (a different offset per bound).
    for (uint64_t u = (bi * 7919) % 65537; u < (uint64_t(1) << 32); u += 65537)
      check_element<kF32>(float_of(uint32_t(u)), spec, qz, &counts);
    // Densely around the scale of the step, where quantization happens.
    const uint32_t lo = bits_of(std::max(spec.step / 8.0f, std::numeric_limits<float>::denorm_min()));
    const double hi_d = std::min(double(spec.step) * 0x1p25, 3.4e38);
    const uint32_t hi = bits_of(float(hi_d));
    const uint32_t stride = std::max<uint32_t>(1, (hi - lo) / 65536);
    for (uint32_t u = lo; u < hi; u += stride) {
      check_element<kF32>(float_of(u), spec, qz, &counts);
      check_element<kF32>(-float_of(u), spec, qz, &counts);
    }
    for_bin_edges(spec.step, [&](float x) { check_element<kF32>(x, spec, qz, &counts); });
    if (actzip_test::failures_in_current_test() > 100) return;
  }
  // Most values around the step's scale are coded: the sweep is not vacuous.
  ACTZIP_CHECK(counts.coded > counts.outliers / 4, "coded %llu, outliers %llu", (unsigned long long)counts.coded,
               (unsigned long long)counts.outliers);
}

template <int kDT>
void sweep_16bit_dtype() {
  SweepCounts counts;
  std::vector<double> bounds = sweep_bounds();
  for (int k = -30; k <= 20; ++k) bounds.push_back(std::ldexp(1.3, k));
  for (double e : bounds) {
    const SpecQuantizer spec(e, kDT);
    const Quantizer qz = make_quantizer(e, spec.step_exp);
    for (uint32_t h = 0; h < 65536; ++h) {
      const float x = kDT == kF16 ? f16_to_f32(uint16_t(h)) : bf16_to_f32(uint16_t(h));
      check_element<kDT>(x, spec, qz, &counts);
    }
    if (actzip_test::failures_in_current_test() > 100) return;
  }
  ACTZIP_CHECK(counts.coded > 1000000, "only %llu coded", (unsigned long long)counts.coded);
}

ACTZIP_TEST(float16_quantizer_is_strict_for_every_half_and_a_sweep_of_bounds) { sweep_16bit_dtype<kF16>(); }

ACTZIP_TEST(bfloat16_quantizer_is_strict_for_every_bfloat16_and_a_sweep_of_bounds) { sweep_16bit_dtype<kBF16>(); }

ACTZIP_TEST(quantizer_codes_values_within_range_and_rejects_the_rest) {
  // A plain case worked by hand: bound 0.5 gives step 1.
  const Quantizer qz = make_quantizer(0.5, step_exp_for(0.5));
  ACTZIP_REQUIRE(qz.step == 1.0f, "step %a", double(qz.step));
  int32_t c = 0;
  ACTZIP_CHECK(classify<kF32>(3.2f, qz, &c) == kCoded && c == 4, "3.2 -> %d", c);
  ACTZIP_CHECK(classify<kF32>(-3.2f, qz, &c) == kCoded && c == -4, "-3.2 -> %d", c);
  ACTZIP_CHECK(classify<kF32>(0.3f, qz, &c) == kCoded && c == 1, "0.3 -> %d", c);
  ACTZIP_CHECK(reconstruct(1, qz) == 0.25f && reconstruct(-1, qz) == -0.25f, "quarter step");
  ACTZIP_CHECK(classify<kF32>(float(kMaxQ), qz, &c) == kCoded && c == kMaxQ + 1, "largest q -> %d", c);
  ACTZIP_CHECK(classify<kF32>(float(kMaxQ + 1), qz, &c) == kOutlier, "q above 2^23-2 must be an outlier");
  ACTZIP_CHECK(classify<kF32>(-0.0f, qz, &c) == kOutlier, "-0.0 must be an outlier");
  ACTZIP_CHECK(classify<kF32>(0.0f, qz, &c) == kZero, "+0.0 must be a zero");
  ACTZIP_CHECK(classify<kF32>(std::numeric_limits<float>::quiet_NaN(), qz, &c) == kOutlier, "NaN");
  ACTZIP_CHECK(classify<kF32>(-HUGE_VALF, qz, &c) == kOutlier, "-Inf");
  // The tiniest step cannot represent step/4: values that would need code +-1 are outliers.
  const Quantizer tiny = make_quantizer(1e-50, step_exp_for(1e-50));
  ACTZIP_CHECK(tiny.step == std::numeric_limits<float>::denorm_min() && tiny.quarter_step == 0.0f, "tiny step");
  ACTZIP_CHECK(classify<kF32>(std::numeric_limits<float>::denorm_min(), tiny, &c) == kCoded && c == 2,
               "denorm_min at step denorm_min -> %d", c);
}

// ---- code values and symbols (section 4) ---------------------------------------------------

ACTZIP_TEST(code_to_u_and_zigzag_follow_the_format_and_invert) {
  for (int32_t c = -kMaxCode; c <= kMaxCode; c += (c > -300 && c < 300) ? 1 : 97) {
    if (c == 0) continue;
    const uint32_t want = 2u * uint32_t(std::abs(c) - 1) + (c < 0 ? 1u : 0u);
    ACTZIP_CHECK(code_to_u(c) == want, "code_to_u(%d) = %u, want %u", c, code_to_u(c), want);
    ACTZIP_CHECK(u_to_code(code_to_u(c)) == c, "u_to_code(code_to_u(%d)) = %d", c, u_to_code(code_to_u(c)));
  }
  for (uint32_t u = 0; u < (1u << 24); u += (u < 100000 ? 1 : 31)) {
    ACTZIP_CHECK(code_to_u(u_to_code(u)) == u, "u=%u", u);
    ACTZIP_CHECK(u_to_code(u) != 0, "u=%u decodes to code 0", u);
  }
  // Lorenzo differences span twice the code range.
  const int32_t dmax = 2 * kMaxCode;
  for (int32_t d = -dmax; d <= dmax; d += (d > -300 && d < 300) ? 1 : 101) {
    const uint32_t want = d >= 0 ? 2u * uint32_t(d) : uint32_t(-2 * int64_t(d) - 1);
    ACTZIP_CHECK(zigzag(d) == want, "zigzag(%d) = %u, want %u", d, zigzag(d), want);
    ACTZIP_CHECK(unzigzag(zigzag(d)) == d, "unzigzag(zigzag(%d))", d);
    ACTZIP_CHECK(zigzag(d) < (1u << 25), "zigzag(%d) = %u leaves 25 bits", d, zigzag(d));
  }
  ACTZIP_CHECK(zigzag(-dmax) == zigzag(dmax) - 1, "extremes");
}

ACTZIP_TEST(u_to_symbol_follows_the_format_for_every_direct_log2) {
  std::vector<uint32_t> values;
  for (uint32_t u = 0; u < 70000; ++u) values.push_back(u);
  for (int b = 0; b < 25; ++b) {
    const uint32_t p = 1u << b;
    for (uint32_t u : {p - 1, p, p + 1, p + p / 2, 2 * p - 1}) values.push_back(u);
  }
  for (uint32_t u = 70000; u < (1u << 25); u += 4099) values.push_back(u);
  for (int k = 0; k <= kMaxDirectLog2; ++k) {
    ACTZIP_CHECK(code_alphabet(k) == (1u << k) + 25u - uint32_t(k), "alphabet of k=%d", k);
    for (uint32_t u : values) {
      if (u >= (1u << 25)) continue;
      int extra = -1, extra_fine = -1;
      const uint32_t sym = u_to_symbol(u, k, &extra);
      uint32_t want_sym;
      int want_extra;
      if (u < (1u << k)) {
        want_sym = u;
        want_extra = 0;
      } else {
        const int b = std::ilogb(double(u));
        want_sym = (1u << k) + uint32_t(b - k);
        want_extra = b;
      }
      ACTZIP_CHECK(sym == want_sym && extra == want_extra, "k=%d u=%u: symbol %u+%d bits, want %u+%d", k, u, sym,
                   extra, want_sym, want_extra);
      ACTZIP_CHECK(sym < code_alphabet(k), "k=%d u=%u: symbol %u outside the alphabet", k, u, sym);
      const uint32_t fine_sym = fine_bin_to_symbol(fine_bin(u), k, &extra_fine);
      ACTZIP_CHECK(fine_sym == sym && extra_fine == extra, "k=%d u=%u: via the fine bin %u+%d", k, u, fine_sym,
                   extra_fine);
      ACTZIP_CHECK(fine_bin(u) < kFineAlphabet, "u=%u fine bin %u", u, fine_bin(u));
    }
  }
}

}  // namespace
