// Per-element logic (cpp/codec/element.h) against docs/FORMAT.md sections 3 and 4:
// float16/bfloat16 conversions against straightforward reference conversions, the quantizer
// over dense sweeps of values and bounds, and the mapping of codes to symbols.
//
// The references here are written from the format document with plain binary64 arithmetic
// (frexp, ldexp, nearbyint) and exact integer arithmetic, not from the bit tricks of the
// implementation; the reference step, ref_quant_step(), is in streams.h.
#include <algorithm>
#include <cfenv>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <limits>
#include <random>
#include <vector>

#include "codec/element.h"
#include "codec/format.h"
#include "harness.h"
#include "streams.h"

namespace {

using namespace actzip::detail;
using actzip_test::ref_quant_step;

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

// The largest step, 255 * 2^120: quant_step_for() of every bound from 255 * 2^119 up.
constexpr float kLargestStep = 0x1.fep127f;

// Number of significant bits of a positive finite binary32 value, from its highest set bit to
// its lowest (a subnormal counts from its highest set bit).
int significant_bits(float v) {
  int e = 0;
  const double f = std::frexp(double(v), &e);  // v = f * 2^e, f in [0.5, 1): exact
  uint64_t m = uint64_t(std::ldexp(f, 24));    // v has at most 24 significant bits
  int bits = 24;
  while (m % 2 == 0) {
    m /= 2;
    --bits;
  }
  return bits;
}

// Bounds for quant_step_for(): every e whose 2e is exactly M * 2^E (the step is 2e itself)
// for M in [1, 255] and many E, with their binary64 neighbours (where M changes); 2e with 9
// significant bits, (M + 1/2) * 2^E; powers of two over binary64's whole range (subnormals up
// to DBL_MAX) with their neighbours; the cap and the smallest step; random bounds.
std::vector<double> step_sweep_bounds() {
  std::vector<double> b;
  auto with_neighbours = [&](double v) {
    b.push_back(v);
    b.push_back(std::nextafter(v, 0.0));
    if (v < std::numeric_limits<double>::max()) b.push_back(std::nextafter(v, HUGE_VAL));
  };
  for (int exp = -152; exp <= 123; ++exp) {
    if (!(exp < -128 || exp > 115 || (exp >= -30 && exp <= 30) || exp % 4 == 0)) continue;
    for (int mant = 1; mant <= 255; ++mant) {
      with_neighbours(std::ldexp(double(mant), exp - 1));  // 2e = M * 2^E
      b.push_back(std::ldexp(2.0 * mant + 1, exp - 2));    // 2e = (M + 1/2) * 2^E
    }
  }
  for (int k = -1074; k <= 1023; ++k) with_neighbours(std::ldexp(1.0, k));
  for (double v : {std::numeric_limits<double>::max(), std::numeric_limits<double>::min(),
                   3 * std::numeric_limits<double>::denorm_min(), 0x1.fep126 /* 2e = the cap */, 0x1p127, 0x1p-150,
                   0x1p-151, 0x1.fep-143 /* 2e = 255 * 2^-149 */, 0x1p-142, 0x1p-141, 1e-45, 1e-40, 1e-3, 0.1, 1e38,
                   3.4e38, 1e300})
    with_neighbours(v);
  std::mt19937_64 rng(17);
  for (int i = 0; i < 100000; ++i) {
    // Any positive finite binary64 value (most of them clamp at one end or the other) ...
    double any = 0;
    const uint64_t u = rng() % 0x7FEFFFFFFFFFFFFFull + 1;  // denorm_min .. DBL_MAX
    std::memcpy(&any, &u, 8);
    b.push_back(any);
    // ... and log-uniform over the exponents where the step varies.
    b.push_back(std::ldexp(1.0 + double(rng() >> 11) * 0x1p-53, int(rng() % 290) - 160));
  }
  return b;
}

ACTZIP_TEST(quant_step_for_is_the_largest_8_bit_binary32_value_not_above_twice_the_bound) {
  std::vector<double> bounds = step_sweep_bounds();
  for (double e : bounds) {
    const float got = quant_step_for(e);
    const float want = ref_quant_step(e);
    ACTZIP_CHECK(bits_of(got) == bits_of(want), "bound %a: step %a, the format says %a", e, double(got),
                 double(want));
    // What the definition implies, checked on the result itself: at most 8 significant bits,
    // not above 2e (unless 2e is below the smallest step), at most the cap.
    ACTZIP_CHECK(std::isfinite(got) && got > 0 && significant_bits(got) <= 8, "bound %a: step %a", e, double(got));
    ACTZIP_CHECK(double(got) / 2 <= e || got == std::numeric_limits<float>::denorm_min(),
                 "bound %a: step %a above twice the bound", e, double(got));
    ACTZIP_CHECK(got <= kLargestStep, "bound %a: step %a above the cap", e, double(got));
    if (actzip_test::failures_in_current_test() > 50) return;
  }
  // Monotone: a larger bound never gets a smaller step.
  std::sort(bounds.begin(), bounds.end());
  for (size_t i = 1; i < bounds.size(); ++i)
    ACTZIP_CHECK(quant_step_for(bounds[i - 1]) <= quant_step_for(bounds[i]), "bounds %a < %a: steps %a > %a",
                 bounds[i - 1], bounds[i], double(quant_step_for(bounds[i - 1])), double(quant_step_for(bounds[i])));
  // Values worked by hand. 2e = 0.02 = 163.84 * 2^-13: step 163 * 2^-13. 2e = 0.002 =
  // 131.072 * 2^-16: step 131 * 2^-16. 2e = 0.6 = 153.6 * 2^-8: step 153 * 2^-8. 2e = 1: step 1.
  // 2e = 2^-149 * 255.5: step 255 * 2^-149. 2e below 2^-149: the smallest step, 2^-149.
  // 2e = 2^128 and beyond (2e may not even be a binary64 value): the cap, 255 * 2^120.
  const struct {
    double bound;
    float step;
  } by_hand[] = {{1e-2, 163 * 0x1p-13f},   {1e-3, 131 * 0x1p-16f},  {0.3, 153 * 0x1p-8f},
                 {0.5, 1.0f},              {0x1.ffp-143, 0x1.fep-142f}, {0x1p-151, 0x1p-149f},
                 {0x1p127, kLargestStep},  {std::numeric_limits<double>::max(), kLargestStep},
                 {std::numeric_limits<double>::denorm_min(), 0x1p-149f}};
  for (const auto& h : by_hand)
    ACTZIP_CHECK(bits_of(quant_step_for(h.bound)) == bits_of(h.step) && bits_of(ref_quant_step(h.bound)) == bits_of(h.step),
                 "bound %a: step %a (reference %a), by hand %a", h.bound, double(quant_step_for(h.bound)),
                 double(ref_quant_step(h.bound)), double(h.step));
}

// The point of an 8-bit step: it uses the bound. For 2e from 2^-142 (where M * 2^E with
// E >= -149 first reaches 128 * 2^E) up to 2^128 (the cap), 2e (1 - 1/128) < step <= 2e,
// so the largest rounding error, step / 2, is above 99% of the bound; below, the step falls
// short of 2e by less than 2^-149, and from 2^128 on it is the cap.
ACTZIP_TEST(quant_step_is_within_one_part_in_128_below_twice_the_bound) {
  uint64_t tight = 0;
  for (double e : step_sweep_bounds()) {
    const double step = quant_step_for(e);
    if (e >= 0x1p-143 && e < 0x1p127) {
      // 2e (1 - 1/128) < step <= 2e, as (e - step/2) * 128 < e: step/2 >= e/2 is checked
      // first, so e - step/2 is exact (Sterbenz) and so is its product by 128.
      const double half = step / 2;
      ACTZIP_CHECK(half <= e && half >= e / 2 && (e - half) * 128 < e, "bound %a: step %a not within 1/128 of 2e",
                   e, step);
      ++tight;
    } else if (e < 0x1p-143) {
      // 2e - step < 2^-149, as e - step/2 < 2^-150 (exact: both are multiples of 2^-1074).
      ACTZIP_CHECK(step == 0x1p-149 ? e < 0x1p-149 : (step / 2 <= e && e - step / 2 < 0x1p-150),
                   "bound %a: subnormal step %a", e, step);
    } else {
      ACTZIP_CHECK(step == double(kLargestStep), "bound %a: step %a is not the cap", e, step);
    }
    if (actzip_test::failures_in_current_test() > 50) return;
  }
  ACTZIP_CHECK(tight > 100000, "only %llu bounds in the normal range", (unsigned long long)tight);
}

// The error bounds of the quantizer sweeps: decades from 1e-30 to 1e10, powers of two and
// their neighbours, bounds whose 2e is exactly a step (so a value halfway between two
// multiples of the step is off by exactly e), and the extremes: the smallest step and the cap.
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
  for (int k : {-148, -140, -130, -120, -60, -12, -7, -1, 0, 9, 40, 100, 119}) {
    for (double mant : {255.0, 129.0, 163.0, 255.5})
      b.push_back(std::ldexp(mant, k - 1));  // 2e = M * 2^k (255.5: 9 bits, rounded down)
    b.push_back(std::nextafter(std::ldexp(255.0, k - 1), 0.0));  // just below: step 254 * 2^k
  }
  for (double x : {1e-300, 1e-60, 1e-45, 0x1p-151, 0x1p-150, 0x1p-149, 0x1p-148, 1e-40, 1e-38, 0x1p-126, 0x1p-125,
                   0.1, 0.3, 1.0 / 3.0, 1e-3, 5e-4, 1e-2, 1e4, 65504.0, 1e30, 1e38, 0x1p126, 0x1p127, 3.4e38, 1e300, 1e308})
    b.push_back(x);
  return b;
}

// What the format says about element x of a stream with this bound: the set of nearest
// integers q of |x| / step (two at a tie), and whether the code c = +-(q + 1) passes the check.
struct SpecQuantizer {
  double error_bound;
  int dtype;
  float step;          // ref_quant_step(error_bound)
  uint64_t step_mant;  // step = step_mant * 2^step_exp, step_mant < 2^8
  int step_exp;

  SpecQuantizer(double e, int dt) : error_bound(e), dtype(dt), step(ref_quant_step(e)) {
    int ex = 0;
    const double f = std::frexp(double(step), &ex);  // step = f * 2^ex, f in [0.5, 1)
    step_mant = uint64_t(std::ldexp(f, 8));          // exact: the step has 8 significant bits
    step_exp = ex - 8;
  }

  // The dtype value a decoder produces for code c (section 3, word for word: binary32
  // multiplies, then rounding to the dtype).
  float reconstruct(int32_t c) const {
    const uint32_t m = uint32_t(c < 0 ? -int64_t(c) : int64_t(c)) - 1u;
    const float r = m == 0 ? step * 0.25f : float(m) * step;
    return ref_round_to_dtype(c < 0 ? -r : r, dtype);
  }

  bool accepts(float x, int32_t c) const {
    const float xh = reconstruct(c);
    return std::isfinite(xh) && std::fabs(double(x) - double(xh)) <= error_bound && xh != 0.0f &&
           std::signbit(xh) == std::signbit(x);
  }

  // Nearest integers of |x| / step, in exact integer arithmetic: with |x| = X * 2^a (X < 2^24)
  // and step = M * 2^E (M < 2^8), |x| / step = N / D with N = X * 2^(a-E), D = M when
  // a >= E, and N = X, D = M * 2^(E-a) otherwise; the remainder of N / D says which integers
  // are nearest, ties exactly. (Dividing in floating point would round the quotient, and a
  // quotient rounded onto or off a half-integer names the wrong neighbour.) Returns 0 when
  // |x| / step is above 2^40, far out of the codable range; x must be finite and non-zero.
  int nearest(float x, uint64_t q[2]) const {
    int ex = 0;
    const double f = std::frexp(std::fabs(double(x)), &ex);
    const uint64_t mant = uint64_t(std::ldexp(f, 24));  // in [2^23, 2^24), exact: 24 bits at most
    const int shift = (ex - 24) - step_exp;
    if (shift > 24) return 0;  // |x| / step >= 2^23 * 2^25 / 255 > 2^40
    if (shift < -40) {         // |x| / step < 2^24 / 2^40: 0 is the only nearest integer
      q[0] = 0;
      return 1;
    }
    const uint64_t num = shift >= 0 ? mant << shift : mant;                    // < 2^48
    const uint64_t den = shift >= 0 ? step_mant : step_mant << (-shift);      // < 2^48
    const uint64_t fl = num / den, rem = num % den;
    if (2 * rem < den) {
      q[0] = fl;
      return 1;
    }
    if (2 * rem > den) {
      q[0] = fl + 1;
      return 1;
    }
    q[0] = fl;
    q[1] = fl + 1;
    return 2;
  }

  static int32_t code_of(float x, uint64_t q) { return int32_t(x > 0 ? int64_t(q) + 1 : -int64_t(q) - 1); }
};

struct SweepCounts {
  uint64_t coded = 0, outliers = 0, zeros = 0;
};

// Checks classify() on x against the format: zeros and specials by rule; a coded element's
// code comes from a nearest integer of x / step (judged exactly, see nearest()) and its
// reconstruction is within the bound, non-zero and same-signed (and equal to the reference
// reconstruction); an outlier is one that the format would not code with some nearest integer.
//
// The encoder multiplies by a rounded 1 / step, so its quotient is within (|x| / step) * 2^-51
// of the exact one (two roundings). That never names a farther integer: |x| / step = N / D
// (see nearest()) is either a half-integer or at least 1 / (2D) away from one, which is at
// least 1/510 when D = M, and at least (|x| / step) * 2^-25 when N = X < 2^24; both are far
// more than that error for every quotient below 2^24. At an exact tie either neighbour is a
// nearest integer, and the checks below accept both.
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
  uint64_t q[2];
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
    ACTZIP_CHECK((x > 0) == (c > 0), "x=%a got code %d of the wrong sign", double(x), c);
    const uint64_t qi = uint64_t(c < 0 ? -int64_t(c) : int64_t(c)) - 1;
    ACTZIP_CHECK(nq >= 1 && (qi == q[0] || (nq == 2 && qi == q[1])),
                 "x=%a step %a: code %d is not from a nearest integer of x/step", double(x), double(spec.step), c);
    ACTZIP_CHECK(qi <= uint64_t(kMaxQ), "x=%a: |q| = %llu above 2^23-2", double(x), (unsigned long long)qi);
  } else {
    ++counts->outliers;
    bool format_rejects = nq == 0;
    for (int i = 0; i < nq; ++i)
      format_rejects |= q[i] > uint64_t(kMaxQ) || !spec.accepts(x, SpecQuantizer::code_of(x, q[i]));
    ACTZIP_CHECK(format_rejects, "x=%a (dtype %d, bound %a, step %a) is an outlier although code %d passes",
                 double(x), kDT, e, double(spec.step), nq ? SpecQuantizer::code_of(x, q[0]) : 0);
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

ACTZIP_TEST(make_quantizer_holds_the_step_its_reciprocal_and_its_quarter) {
  for (double e : sweep_bounds()) {
    const float step = quant_step_for(e);
    const Quantizer qz = make_quantizer(e, step);
    ACTZIP_CHECK(qz.error_bound == e && bits_of(qz.step) == bits_of(step), "bound %a: step %a, want %a", e,
                 double(qz.step), double(step));
    // Every backend must multiply by this very value (the correctly rounded 1 / step) for the
    // bytes not to depend on the backend.
    ACTZIP_CHECK(qz.inv_step == 1.0 / double(step), "bound %a: inv_step %a", e, qz.inv_step);
    ACTZIP_CHECK(bits_of(qz.quarter_step) == bits_of(step * 0.25f), "bound %a: quarter step %a", e,
                 double(qz.quarter_step));
    ACTZIP_CHECK(bits_of(qz.error_bound_down) == bits_of(float_at_most(e)), "bound %a: float bound %a", e,
                 double(qz.error_bound_down));
  }
}

ACTZIP_TEST(float_at_most_is_the_largest_float_not_above_the_bound) {
  std::mt19937_64 rng(17);
  std::vector<double> values = {0.0, 1e-320, 1e-50, 0x1p-149, 0x1p-150, 0x1.8p-149, 1.0, 0.1, 1e-3, 3.0e38,
                                3.4028234663852886e38, 3.5e38, 1e300, 1.7976931348623157e308};
  for (int i = 0; i < 100000; ++i) values.push_back(std::ldexp(std::uniform_real_distribution<double>(0.5, 1.0)(rng),
                                                              int(rng() % 300) - 160));
  for (double v : values) {
    const float f = float_at_most(v);
    const float next = std::nextafter(f, HUGE_VALF);
    ACTZIP_CHECK(std::isfinite(f) && double(f) <= v && (double(next) > v || !std::isfinite(next)),
                 "float_at_most(%a) = %a", v, double(f));
  }
}

ACTZIP_TEST(float32_quantizer_is_strict_over_a_sweep_of_bit_patterns_and_bounds) {
  const std::vector<double> bounds = sweep_bounds();
  SweepCounts counts;
  for (size_t bi = 0; bi < bounds.size(); ++bi) {
    const SpecQuantizer spec(bounds[bi], kF32);
    // The step from the format's definition: quant_step_for() has its own test above.
    const Quantizer qz = make_quantizer(bounds[bi], spec.step);
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
    const Quantizer qz = make_quantizer(e, spec.step);
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
  const Quantizer qz = make_quantizer(0.5, quant_step_for(0.5));
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
  // A step that is not a power of two, by hand: bound 1e-2 gives step 163 * 2^-13
  // (0.0198974609375); 1.0 / step = 50.26, so 1.0 gets q = 50 (code 51) and comes back as
  // 50 * step = 0.994873046875, off by 0.0051 <= 0.01; 0.25 / step = 12.56: q = 13, back as
  // 0.2586669921875.
  const Quantizer q163 = make_quantizer(1e-2, quant_step_for(1e-2));
  ACTZIP_REQUIRE(q163.step == 163 * 0x1p-13f, "step %a", double(q163.step));
  ACTZIP_CHECK(classify<kF32>(1.0f, q163, &c) == kCoded && c == 51 && reconstruct(c, q163) == 0.994873046875f,
               "1.0 -> %d", c);
  ACTZIP_CHECK(classify<kF32>(-0.25f, q163, &c) == kCoded && c == -14 && reconstruct(c, q163) == -0.2586669921875f,
               "-0.25 -> %d", c);
  ACTZIP_CHECK(reconstruct(1, q163) == 163 * 0x1p-15f, "quarter step %a", double(reconstruct(1, q163)));
  // The tiniest step cannot represent step/4: values that would need code +-1 are outliers.
  const Quantizer tiny = make_quantizer(1e-50, quant_step_for(1e-50));
  ACTZIP_CHECK(tiny.step == std::numeric_limits<float>::denorm_min() && tiny.quarter_step == 0.0f, "tiny step");
  ACTZIP_CHECK(classify<kF32>(std::numeric_limits<float>::denorm_min(), tiny, &c) == kCoded && c == 2,
               "denorm_min at step denorm_min -> %d", c);
}

ACTZIP_TEST(values_rounding_down_to_the_largest_q_are_coded) {
  // Section 3 bounds q = round(x / step), not x / step: a value just above (2^23 - 2) * step
  // rounds down to the largest q and is coded if its reconstruction passes. With a step of 8
  // significant bits such values exist in binary32 (with a power of two they did not). By
  // hand: bound 0.625 gives step 1.25; x = 10485758 is 8388606.4 steps, so q = 2^23 - 2; the
  // binary32 product 8388606 * 1.25 = 10485757.5 is a tie that rounds to the even 10485758:
  // the reconstruction is x itself.
  const Quantizer qz = make_quantizer(0.625, quant_step_for(0.625));
  ACTZIP_REQUIRE(qz.step == 1.25f, "step %a", double(qz.step));
  ACTZIP_REQUIRE(reconstruct(kMaxQ + 1, qz) == 10485758.0f, "reconstruction %a", double(reconstruct(kMaxQ + 1, qz)));
  int32_t c = 0;
  ACTZIP_CHECK(classify<kF32>(10485758.0f, qz, &c) == kCoded && c == kMaxQ + 1, "10485758 at step 1.25: class %d",
               classify<kF32>(10485758.0f, qz, &c));
  ACTZIP_CHECK(classify<kF32>(-10485758.0f, qz, &c) == kCoded && c == -kMaxQ - 1, "-10485758 at step 1.25: class %d",
               classify<kF32>(-10485758.0f, qz, &c));
  // 10485759 is 8388607.2 steps: q = 2^23 - 1 is too large, an outlier.
  ACTZIP_CHECK(classify<kF32>(10485759.0f, qz, &c) == kOutlier, "10485759 at step 1.25 must be an outlier");
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

// ---- q, the sign and the 2-D predictor (section 3) -------------------------------------------

ACTZIP_TEST(code_to_q_and_q_to_code_follow_the_format_and_invert) {
  // c = q + 1 for x > 0, q - 1 for x < 0: |q| = |c| - 1, and q = 0 for both c = 1 and c = -1,
  // so that q_to_code needs the sign exactly there.
  for (int32_t c = -kMaxCode; c <= kMaxCode; c += (c > -300 && c < 300) ? 1 : 89) {
    if (c == 0) continue;
    const int32_t want = c > 0 ? c - 1 : c + 1;
    ACTZIP_CHECK(code_to_q(c) == want, "code_to_q(%d) = %d, want %d", c, code_to_q(c), want);
    ACTZIP_CHECK(q_to_code(code_to_q(c), c < 0) == c, "q_to_code(code_to_q(%d)) = %d", c,
                 q_to_code(code_to_q(c), c < 0));
    // No prediction codes 2|q| plus the sign bit.
    ACTZIP_CHECK(code_to_u(c) == 2u * uint32_t(std::abs(code_to_q(c))) + (c < 0 ? 1u : 0u), "code_to_u(%d)", c);
  }
  for (int32_t q = -kMaxQ; q <= kMaxQ; q += (q > -300 && q < 300) ? 1 : 97)
    for (bool negative : {false, true}) {
      const int32_t c = q_to_code(q, negative);
      ACTZIP_CHECK(code_to_q(c) == q, "code_to_q(q_to_code(%d, %d)) = %d", q, int(negative), code_to_q(c));
      // The sign bit decides only for q = 0; elsewhere the sign is q's.
      const bool want_negative = q == 0 ? negative : q < 0;
      ACTZIP_CHECK(c != 0 && (c < 0) == want_negative && std::abs(c) == std::abs(q) + 1, "q_to_code(%d, %d) = %d", q,
                   int(negative), c);
    }
  ACTZIP_CHECK(q_to_code(0, false) == 1 && q_to_code(0, true) == -1, "q = 0");
  ACTZIP_CHECK(q_to_code(kMaxQ, true) == kMaxCode && q_to_code(-kMaxQ, false) == -kMaxCode, "extremes");
  ACTZIP_CHECK(code_to_q(kMaxCode) == kMaxQ && code_to_q(-kMaxCode) == -kMaxQ, "extremes");
}

// The 2-D prediction as section 3 states it, on signed positions: a left neighbour where the
// column is not 0, an upper one where i >= W, the upper-left one where both are; a neighbour
// outside the chunk (position below 0) is absent, like any absent neighbour 0.
int64_t ref_predict_2d(const std::vector<int32_t>& g, int64_t i, int64_t chunk_start, int64_t row) {
  auto at = [&](int64_t j) -> int64_t { return j >= 0 ? g[size_t(j)] : 0; };
  const bool left = (chunk_start + i) % row != 0;
  const bool up = i >= row;
  const int64_t p = (left ? at(i - 1) : 0) + (up ? at(i - row) : 0) - (left && up ? at(i - row - 1) : 0);
  return std::max<int64_t>(-kMaxQ, std::min<int64_t>(kMaxQ, p));
}

// Calls lorenzo2d_predict on a copy of g placed in a buffer whose every other element is a
// sentinel, so that a read outside the chunk's grid shows in the result.
int32_t predict_in_fence(const std::vector<int32_t>& g, uint32_t i, uint32_t col, uint32_t row) {
  std::vector<int32_t> fenced(g.size() + 2 * 256, 1000003);
  std::copy(g.begin(), g.end(), fenced.begin() + 256);
  return lorenzo2d_predict(fenced.data() + 256, i, col, row);
}

ACTZIP_TEST(lorenzo2d_predict_uses_the_neighbours_section_3_names) {
  // A 4-wide grid whose values say where they are: g[i] = 10^(i % 4) * (1 + i / 4).
  const uint32_t row = 4;
  std::vector<int32_t> g(16);
  for (uint32_t i = 0; i < 16; ++i) g[i] = int32_t(std::pow(10, i % 4)) * int32_t(1 + i / 4);
  // A chunk that starts at column 0.
  ACTZIP_CHECK(predict_in_fence(g, 0, 0, row) == 0, "chunk start: no neighbours");
  ACTZIP_CHECK(predict_in_fence(g, 1, 1, row) == g[0], "first row: the left neighbour only");
  ACTZIP_CHECK(predict_in_fence(g, 3, 3, row) == g[2], "first row, last column");
  ACTZIP_CHECK(predict_in_fence(g, 4, 0, row) == g[0], "row start: the upper neighbour only");
  ACTZIP_CHECK(predict_in_fence(g, 5, 1, row) == g[4] + g[1] - g[0], "inside: left + up - upper-left");
  ACTZIP_CHECK(predict_in_fence(g, 11, 3, row) == g[10] + g[7] - g[6], "inside, last column");
  ACTZIP_CHECK(predict_in_fence(g, 12, 0, row) == g[8], "row start again");
  // A chunk that starts mid-row, at column 2 (a chunk never refers to another).
  ACTZIP_CHECK(predict_in_fence(g, 0, 2, row) == 0, "mid-row chunk start: no left neighbour before the chunk");
  ACTZIP_CHECK(predict_in_fence(g, 1, 3, row) == g[0], "mid-row start, first row");
  ACTZIP_CHECK(predict_in_fence(g, 2, 0, row) == 0, "mid-row start: column 0 of the first row has no neighbour");
  ACTZIP_CHECK(predict_in_fence(g, 3, 1, row) == g[2], "mid-row start: left only");
  // i = W with a column that is not 0: left and up, but the upper-left g[-1] is outside the chunk.
  ACTZIP_CHECK(predict_in_fence(g, 4, 2, row) == g[3] + g[0], "i = W, column 2: left + up, no upper-left: %d",
               predict_in_fence(g, 4, 2, row));
  ACTZIP_CHECK(predict_in_fence(g, 5, 3, row) == g[4] + g[1] - g[0], "i = W + 1: all three");
  ACTZIP_CHECK(predict_in_fence(g, 6, 0, row) == g[2], "column 0: up only");
  // Two elements per row: the smallest width the format allows.
  ACTZIP_CHECK(predict_in_fence(g, 2, 1, 2) == g[1] + g[0], "W = 2, i = 2, column 1: no upper-left");
  ACTZIP_CHECK(predict_in_fence(g, 3, 1, 2) == g[2] + g[1] - g[0], "W = 2, i = 3, column 1");
  ACTZIP_CHECK(predict_in_fence(g, 3, 0, 2) == g[1], "W = 2, i = 3, column 0");
}

ACTZIP_TEST(lorenzo2d_predict_clamps_to_the_largest_q) {
  const uint32_t row = 3;
  std::vector<int32_t> g(8, 0);
  // g[3] left of g[4], g[1] above it, g[0] upper-left.
  auto with = [&](int32_t left, int32_t up, int32_t upper_left) {
    g[3] = left;
    g[1] = up;
    g[0] = upper_left;
    return predict_in_fence(g, 4, 1, row);
  };
  ACTZIP_CHECK(with(kMaxQ, kMaxQ, -kMaxQ) == kMaxQ, "3 kMaxQ clamps to kMaxQ");
  ACTZIP_CHECK(with(-kMaxQ, -kMaxQ, kMaxQ) == -kMaxQ, "-3 kMaxQ clamps to -kMaxQ");
  ACTZIP_CHECK(with(kMaxQ, 1, 0) == kMaxQ && with(kMaxQ, 0, -1) == kMaxQ, "kMaxQ + 1 clamps");
  ACTZIP_CHECK(with(kMaxQ, 0, 0) == kMaxQ && with(kMaxQ - 1, 1, 0) == kMaxQ, "kMaxQ itself is kept");
  ACTZIP_CHECK(with(-kMaxQ, -1, 0) == -kMaxQ && with(-kMaxQ, 0, 0) == -kMaxQ, "-kMaxQ");
  ACTZIP_CHECK(with(kMaxQ, kMaxQ, kMaxQ) == kMaxQ && with(kMaxQ, -kMaxQ, kMaxQ) == -kMaxQ, "in range");
  ACTZIP_CHECK(with(5, 7, 20) == -8, "a negative prediction from positive neighbours");
}

ACTZIP_TEST(lorenzo2d_predict_matches_the_format_for_every_width_and_chunk_start) {
  // Every width the format allows, chunks starting at every column, random grids with values
  // up to the largest q (so that the clamp is reached), over the first rows of the chunk.
  std::mt19937_64 rng(41);
  for (uint32_t row = 2; row <= actzip::detail::kMax2DRow; ++row) {
    const uint32_t n = 3 * row + 5;
    std::vector<int32_t> g(n);
    for (auto& v : g) {
      const uint64_t r = rng();
      v = r % 4 == 0 ? int32_t(r >> 40) % 7 - 3 : (r % 4 == 1 ? (r & 256 ? kMaxQ : -kMaxQ) : int32_t(r >> 8) % kMaxQ);
    }
    for (uint32_t start_col = 0; start_col < row; start_col += (row > 20 ? 7 : 1)) {
      uint32_t col = start_col;
      for (uint32_t i = 0; i < n; ++i) {
        const int64_t want = ref_predict_2d(g, i, start_col, row);
        const int32_t got = predict_in_fence(g, i, col, row);
        ACTZIP_CHECK(got == want, "W %u, chunk starting at column %u, i %u: %d, want %lld", row, start_col, i, got,
                     (long long)want);
        if (++col == row) col = 0;
      }
      if (actzip_test::failures_in_current_test() > 20) return;
    }
  }
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
