// The whole-chunk passes of passes.h. Arithmetic that could overflow on hostile input is
// done in uint32_t (wrapping, defined), and range checks are made on the wrapped values.
#include "cpu/passes.h"

#include "codec/chunk.h"
#include "codec/format.h"
#include "codec/huffman.h"

#include <algorithm>
#include <cstring>

#if ACTZIP_AVX2_PASSES
#include <cpuid.h>
#endif

namespace actzip {
namespace detail {

namespace {

// Bit gathering and scattering over the set bits of a mask, four bits at a time (BMI2's
// pext/pdep are slow on some x86-64 parts, and absent elsewhere).
struct NibbleTables {
  uint8_t count[16];        // set bits of a nibble
  uint8_t gather[16][16];   // gather[m][v]: the bits of v at m's set bits, packed low
  uint8_t scatter[16][16];  // scatter[m][v]: the low bits of v placed at m's set bits
  NibbleTables() {
    for (uint32_t m = 0; m < 16; ++m) {
      count[m] = uint8_t(__builtin_popcount(m));
      for (uint32_t v = 0; v < 16; ++v) {
        uint32_t g = 0, sc = 0, k = 0;
        for (uint32_t b = 0; b < 4; ++b) {
          if (!((m >> b) & 1u)) continue;
          g |= ((v >> b) & 1u) << k;
          sc |= ((v >> k) & 1u) << b;
          ++k;
        }
        gather[m][v] = uint8_t(g);
        scatter[m][v] = uint8_t(sc);
      }
    }
  }
};
const NibbleTables kNibbles;

// The bits of `value` at the set bits of `mask`, packed low.
inline uint32_t gather_bits(uint32_t value, uint32_t mask) {
  uint32_t out = 0, n = 0;
  for (uint32_t s = 0; s < 32; s += 4) {
    const uint32_t m = (mask >> s) & 15u;
    out |= uint32_t(kNibbles.gather[m][(value >> s) & 15u]) << n;
    n += kNibbles.count[m];
  }
  return out;
}
// The low bits of `value` placed at the set bits of `mask`, in order.
inline uint32_t scatter_bits(uint32_t value, uint32_t mask) {
  uint32_t out = 0;
  for (uint32_t s = 0; s < 32; s += 4) {
    const uint32_t m = (mask >> s) & 15u;
    out |= uint32_t(kNibbles.scatter[m][value & 15u]) << s;
    value >>= kNibbles.count[m];
  }
  return out;
}

#if ACTZIP_AVX2_PASSES
bool cpu_has_avx2() {
  static const bool yes = [] {
    __builtin_cpu_init();
    return __builtin_cpu_supports("avx2") && __builtin_cpu_supports("popcnt");
  }();
  return yes;
}
bool avx2_passes = cpu_has_avx2();  // cleared by force_portable_passes()

// BMI2's shlx/shrx/bzhi take any register as the shift count, which relieves the bit
// readers' and writers' register pressure.
bool cpu_has_bmi2() {
  static const bool yes = [] {
    __builtin_cpu_init();
    return __builtin_cpu_supports("bmi") && __builtin_cpu_supports("bmi2");
  }();
  return yes;
}
bool bmi2_passes = cpu_has_bmi2();

// F16C converts between binary16 and binary32 eight lanes at a time, with the IEEE rounding
// (to nearest even) of f32_to_f16().
bool cpu_has_f16c() {
  static const bool yes = [] {
    __builtin_cpu_init();
    unsigned a = 0, b = 0, c = 0, d = 0;
    return cpu_has_avx2() && __get_cpuid(1, &a, &b, &c, &d) && (c & bit_F16C) != 0;
  }();
  return yes;
}
bool f16c_passes = cpu_has_f16c();
#define ACTZIP_TARGET_F16C __attribute__((target("avx2,f16c,popcnt")))
#define ACTZIP_TARGET_BMI2 __attribute__((target("bmi,bmi2")))

// pext/pdep take a few cycles on Intel since Haswell and on AMD since Zen 3 (family 19h);
// earlier AMD parts (and Hygon's) microcode them in hundreds, where the nibble tables win.
bool cpu_has_fast_pext() {
  static const bool yes = [] {
    if (!cpu_has_bmi2()) return false;
    unsigned a = 0, b = 0, c = 0, d = 0;
    if (!__get_cpuid(0, &a, &b, &c, &d)) return false;
    const bool amd = b == 0x68747541u, hygon = b == 0x6f677948u;  // "AuthenticAMD", "HygonGenuine"
    if (hygon) return false;
    if (!amd) return true;
    if (!__get_cpuid(1, &a, &b, &c, &d)) return false;
    const unsigned family = ((a >> 8) & 0xFu) + ((a >> 20) & 0xFFu);
    return family >= 0x19u;
  }();
  return yes;
}
bool pext_passes = cpu_has_fast_pext();

// The sign passes gather (compress) and scatter (decompress) bits under a mask once every 32
// elements, with pext/pdep where they are fast and the nibble tables elsewhere.
ACTZIP_TARGET_BMI2 uint32_t gather_bits_pext(uint32_t value, uint32_t mask) { return _pext_u32(value, mask); }
ACTZIP_TARGET_BMI2 uint32_t scatter_bits_pdep(uint32_t value, uint32_t mask) { return _pdep_u32(value, mask); }
using BitsUnderMask = uint32_t (*)(uint32_t value, uint32_t mask);

// Lane permutations of eight 32-bit values: compress[m] moves the lanes of m's set bits to
// the front, in order; expand[m] does the inverse.
struct PermuteTables {
  alignas(32) uint32_t compress[256][8];
  alignas(32) uint32_t expand[256][8];
  PermuteTables() {
    for (uint32_t m = 0; m < 256; ++m) {
      uint32_t k = 0;
      for (uint32_t b = 0; b < 8; ++b) {
        compress[m][b] = 0;
        expand[m][b] = 0;
      }
      for (uint32_t b = 0; b < 8; ++b)
        if ((m >> b) & 1u) {
          compress[m][k] = b;
          expand[m][b] = k;
          ++k;
        }
    }
  }
};
const PermuteTables kPermute;

// Eight lanes of ~0 where bit b of `byte` is set.
ACTZIP_TARGET_AVX2 inline __m256i lanes_of_byte(uint32_t byte) {
  const __m256i bit = _mm256_setr_epi32(1, 2, 4, 8, 16, 32, 64, 128);
  return _mm256_cmpeq_epi32(_mm256_and_si256(_mm256_set1_epi32(int(byte)), bit), bit);
}
ACTZIP_TARGET_AVX2 inline uint32_t movemask32(__m256i v) {
  return uint32_t(_mm256_movemask_ps(_mm256_castsi256_ps(v)));
}
#endif

// zigzag() and unzigzag() without branches or signed overflow.
inline uint32_t zigzag_bits(int32_t d) { return (uint32_t(d) << 1) ^ uint32_t(d >> 31); }
inline uint32_t unzigzag_bits(uint32_t u) { return (u >> 1) ^ (0u - (u & 1u)); }
// True (1) when q, as wrapped 32-bit arithmetic left it, is outside [-kMaxQ, kMaxQ].
inline uint32_t out_of_range(uint32_t q) { return uint32_t(q + uint32_t(kMaxQ) > 2u * uint32_t(kMaxQ)); }
inline uint32_t is_coded_code(int32_t c) { return uint32_t(c != 0) & uint32_t(c != kOutlierCode); }

// The value coded without prediction, code_to_u(c), without branches (meaningless, but
// defined, for kOutlierCode).
inline uint32_t u_of_code(int32_t c) {
  const uint32_t neg = uint32_t(c) >> 31;
  const uint32_t mag = (uint32_t(c) ^ (0u - neg)) + neg;  // |c|, wrapping for kOutlierCode
  return 2u * (mag - 1u) + neg;
}

// Blocks of classification, each followed by the outputs derived from its codes while
// they are in L1; two loops, because GCC threads the counts' tests into the classifying
// loop's selects, and that loop then does not vectorize.
#if ACTZIP_AVX2_PASSES
// f32_to_bf16()'s round to nearest even of eight binary32 values that are not NaN: the
// bfloat16 in the upper 16 bits (the lower ones are left over).
ACTZIP_TARGET_AVX2 inline __m256i round_bf16_up(__m256i bits) {
  const __m256i lsb = _mm256_and_si256(_mm256_srli_epi32(bits, 16), _mm256_set1_epi32(1));
  return _mm256_add_epi32(_mm256_add_epi32(bits, _mm256_set1_epi32(0x7FFF)), lsb);
}

// classify_code<kDT>() of eight values at a time in binary32 arithmetic, where that
// gives the very codes of the definition, whose quotient |x| / step is a double: with
// 1 / step a normal float (relative error 2^-24) and one float product (2^-24 more), the
// float quotient y' is within |y| 2^-22.9 of the double one y, under 2^-9.9 while y' <
// 8192. So where y' < 8192 and y' is more than 2^-9 from a half-integer, y' and y round to
// the same integer m, and m sets the rest exactly as classify_code() does (the
// reconstructed magnitude, the error check, the sign), in the same float operations.
// Groups of eight with any other lane (a quotient near a tie, 8192 or more, NaN or Inf)
// compute the quotient and its rounding in double precision, as classify_code() does, four
// lanes at a time; after two such groups in a row (or with 1 / step not a normal float),
// the rest of the call does only that. float16 and bfloat16 widen to binary32 exactly, and
// the magnitude is rounded back as round_to_dtype() does: with F16C's round-to-nearest-even
// (float16; called only where f16c_passes), or f32_to_bf16()'s integer one. Returns how
// many elements it classified (a multiple of eight).
template <int kDT, class T>
ACTZIP_TARGET_F16C uint32_t classify_avx2(const T* __restrict x, uint32_t n, const Quantizer& qz,
                                          int32_t* __restrict codes) {
  const float inv = float(qz.inv_step);
  const __m256 vinv = _mm256_set1_ps(inv);
  const __m256d vinv_d = _mm256_set1_pd(qz.inv_step);
  const __m256d vmaxq = _mm256_set1_pd(double(kMaxQ)), vmaxq_half = _mm256_set1_pd(double(kMaxQ) + 0.5);
  const __m256d vmagic = _mm256_set1_pd(6755399441055744.0);  // 1.5 * 2^52: rounds to an integer
  const __m256 vstep = _mm256_set1_ps(qz.step);
  const __m256 vquarter = _mm256_set1_ps(qz.quarter_step);
  const __m256 vbound = _mm256_set1_ps(qz.error_bound_down);
  const __m256 vlimit = _mm256_set1_ps(8192.0f);
  const __m256 vsafe = _mm256_set1_ps(0.5f - 0.001953125f);  // 2^-9 from a tie
  const __m256 vabs = _mm256_castsi256_ps(_mm256_set1_epi32(0x7FFFFFFF));
  const __m256i vone = _mm256_set1_epi32(1);
  const __m256i vnegzero = _mm256_set1_epi32(int32_t(0x80000000u));
  const __m256i voutlier = _mm256_set1_epi32(kOutlierCode);
  const __m256 vzero = _mm256_setzero_ps();
  uint32_t i = 0;
  uint32_t misses = inv >= 1.17549435e-38f && inv <= 3.40282347e38f ? 0 : 2;  // a normal float, or no shortcut
  for (; i + 8 <= n; i += 8) {
    __m256i xb;
    if constexpr (kDT == 1) {
      xb = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(x + i));
    } else if constexpr (kDT == 2) {
      xb = _mm256_castps_si256(_mm256_cvtph_ps(_mm_loadu_si128(reinterpret_cast<const __m128i*>(x + i))));
    } else {
      const __m128i h = _mm_loadu_si128(reinterpret_cast<const __m128i*>(x + i));
      xb = _mm256_slli_epi32(_mm256_cvtepu16_epi32(h), 16);
    }
    const __m256 ax = _mm256_and_ps(_mm256_castsi256_ps(xb), vabs);
    __m256i m;          // the rounded quotient, as classify_code() has it
    __m256 in_range;    // its quotient is at most kMaxQ + 1/2
    bool fast = false;
    if (misses < 2) {
      const __m256 y = _mm256_mul_ps(ax, vinv);
      const __m256 r = _mm256_round_ps(y, _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
      const __m256 dist = _mm256_and_ps(_mm256_sub_ps(y, r), vabs);  // exact: y, r this close
      const __m256 safe = _mm256_and_ps(_mm256_cmp_ps(y, vlimit, _CMP_LT_OQ), _mm256_cmp_ps(dist, vsafe, _CMP_LT_OQ));
      if (_mm256_movemask_ps(safe) == 0xFF) {
        m = _mm256_cvtps_epi32(r);  // exact: r is an integer below 8192
        in_range = _mm256_castsi256_ps(_mm256_set1_epi32(-1));
        fast = true;
        misses = 0;
      } else {
        ++misses;
      }
    }
    if (!fast) {
      // classify_code()'s own double-precision quotient and rounding, four lanes at a time.
      const __m256d y_lo = _mm256_mul_pd(_mm256_cvtps_pd(_mm256_castps256_ps128(ax)), vinv_d);
      const __m256d y_hi = _mm256_mul_pd(_mm256_cvtps_pd(_mm256_extractf128_ps(ax, 1)), vinv_d);
      const uint32_t fits = uint32_t(_mm256_movemask_pd(_mm256_cmp_pd(y_lo, vmaxq_half, _CMP_LE_OQ))) |
                            uint32_t(_mm256_movemask_pd(_mm256_cmp_pd(y_hi, vmaxq_half, _CMP_LE_OQ))) << 4;
      in_range = _mm256_castsi256_ps(lanes_of_byte(fits));
      const __m256d ys_lo = _mm256_blendv_pd(vmaxq, y_lo, _mm256_cmp_pd(y_lo, vmaxq, _CMP_LT_OQ));  // NaN: kMaxQ
      const __m256d ys_hi = _mm256_blendv_pd(vmaxq, y_hi, _mm256_cmp_pd(y_hi, vmaxq, _CMP_LT_OQ));
      m = _mm256_set_m128i(_mm256_cvttpd_epi32(_mm256_sub_pd(_mm256_add_pd(ys_hi, vmagic), vmagic)),
                           _mm256_cvttpd_epi32(_mm256_sub_pd(_mm256_add_pd(ys_lo, vmagic), vmagic)));
    }
    const __m256 m_is_0 = _mm256_castsi256_ps(_mm256_cmpeq_epi32(m, _mm256_setzero_si256()));
    __m256 mag = _mm256_blendv_ps(_mm256_mul_ps(_mm256_cvtepi32_ps(m), vstep), vquarter, m_is_0);
    if constexpr (kDT == 2) {
      mag = _mm256_cvtph_ps(_mm256_cvtps_ph(mag, _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC));
    } else if constexpr (kDT == 3) {  // f32_to_bf16() and back: mag is positive and not NaN
      const __m256i rounded = round_bf16_up(_mm256_castps_si256(mag));
      mag = _mm256_castsi256_ps(_mm256_and_si256(rounded, _mm256_set1_epi32(int32_t(0xFFFF0000u))));
    }
    const __m256 err = _mm256_and_ps(_mm256_sub_ps(ax, mag), vabs);
    const __m256 ok = _mm256_and_ps(_mm256_and_ps(_mm256_cmp_ps(err, vbound, _CMP_LE_OQ), in_range),
                                    _mm256_cmp_ps(mag, vzero, _CMP_NEQ_OQ));
    const __m256i coded = _mm256_andnot_si256(_mm256_cmpeq_epi32(xb, vnegzero), _mm256_castps_si256(ok));
    // (m + 1) with x's sign; sign_epi32 gives 0 where x is +0.0, whose code is 0.
    const __m256i c = _mm256_sign_epi32(_mm256_add_epi32(m, vone), xb);
    const __m256i keep = _mm256_or_si256(coded, _mm256_cmpeq_epi32(xb, _mm256_setzero_si256()));
    _mm256_storeu_si256(reinterpret_cast<__m256i*>(codes + i), _mm256_blendv_epi8(voutlier, c, keep));
  }
  return i;
}
#endif

template <int kDT, bool kQ, bool kU, class T>
inline void classify_codes_loop(const T* __restrict x, uint32_t n, const Quantizer& quantizer,
                                int32_t* __restrict codes, int32_t* __restrict q_out, uint32_t* __restrict u_out,
                                uint32_t* zeros, uint32_t* outliers) {
  const Quantizer qz = quantizer;  // a local copy: no aliasing with the outputs
  constexpr uint32_t kBlock = 512;
  uint32_t z = 0, o = 0;
  for (uint32_t i0 = 0; i0 < n; i0 += kBlock) {
    const uint32_t end = std::min(n, i0 + kBlock);
    uint32_t from = i0;
#if ACTZIP_AVX2_PASSES
    if (kDT == 2 ? f16c_passes : avx2_passes) from += classify_avx2<kDT>(x + i0, end - i0, qz, codes + i0);
#endif
    for (uint32_t i = from; i < end; ++i) codes[i] = classify_code<kDT>(load_elem<kDT>(x, i), qz);
    for (uint32_t i = i0; i < end; ++i) {
      const int32_t c = codes[i];
      if (kQ) q_out[i] = c == kOutlierCode ? 0 : code_to_q(c);
      if (kU) u_out[i] = u_of_code(c);
      z += c == 0;
      o += c == kOutlierCode;
    }
  }
  *zeros = z;
  *outliers = o;
}

template <int kDT, class T>
inline void classify_codes_any(const T* x, uint32_t n, const Quantizer& qz, int32_t* codes, int32_t* q_out,
                               uint32_t* u_out, uint32_t* zeros, uint32_t* outliers) {
  if (q_out) classify_codes_loop<kDT, true, false>(x, n, qz, codes, q_out, nullptr, zeros, outliers);
  else if (u_out) classify_codes_loop<kDT, false, true>(x, n, qz, codes, nullptr, u_out, zeros, outliers);
  else classify_codes_loop<kDT, false, false>(x, n, qz, codes, nullptr, nullptr, zeros, outliers);
}

}  // namespace

void SampleTally::clear() { std::memset(this, 0, sizeof *this); }

namespace {
// fine_bin() in a form that vectorizes: floor_log2(u) of a u >= 2^kMaxDirectLog2 from the
// exponent of float(u >> 8), which is exact (u >> 8 < 2^24).
inline uint32_t fine_bin_lanes(uint32_t u) {
  const uint32_t log2 = (f32_bits(float(int32_t(u >> 8))) >> 23) - 127u + 8u;
  return u < (1u << kMaxDirectLog2) ? u : (1u << kMaxDirectLog2) + log2 - uint32_t(kMaxDirectLog2);
}
}  // namespace

namespace {
// gather_bits over 64 bits.
inline uint64_t gather_bits64(uint64_t value, uint64_t mask) {
  const BitsUnderMask gather = pext_passes ? gather_bits_pext : gather_bits;
  const uint32_t lo_mask = uint32_t(mask), hi_mask = uint32_t(mask >> 32);
  const uint64_t lo = gather(uint32_t(value), lo_mask);
  const uint64_t hi = gather(uint32_t(value >> 32), hi_mask);
  return lo | (hi << __builtin_popcount(lo_mask));
}
}  // namespace

static_assert(sizeof(SampleTally::run_bits) / sizeof(SampleTally::RunBits) == kSampleRuns, "a RunBits per run");

void sampled_zmap_bytes(const SampleTally& tally, uint32_t slot, uint64_t* hist) {
  // As chunk.h's ZeroMapBytes: eight coded values to a byte, a run's last byte as far as filled.
  for (uint32_t r = 0; r < tally.runs && r < kSampleRuns; ++r) {
    const uint64_t bits = tally.run_bits[r].nonzero[slot];
    const uint32_t coded = tally.run_bits[r].coded;
    for (uint32_t k = 0; k < coded; k += 8) ++hist[(bits >> k) & 0xFFu];
  }
}

ACTZIP_MULTIVERSION void sample_run_counts(const int32_t* __restrict codes, uint32_t context, uint32_t n,
                                           uint32_t first, uint32_t col0, uint32_t row, SampleTally* __restrict tally,
                                           uint64_t* __restrict mask_hist) {
  (void)first;  // the zeros before the window stand for the neighbours outside the chunk
  // Per run element: whether it is coded, its q, and its fine bin under each predictor
  // (kSampleTrashBin where it is not coded).
  uint32_t is_coded[kSampleRun], bin_none[kSampleRun], bin_lor[kSampleRun], bin_2d[kSampleRun];
  int32_t q[kSampleRun];
  const int32_t* run = codes + context;
  uint32_t sign_bits = 0, coded = 0;
  for (uint32_t j = 0; j < n; ++j) {
    const int32_t c = run[j];
    const uint32_t yes = is_coded_code(c);
    const int32_t qv = yes ? code_to_q(c) : 0;
    is_coded[j] = yes;
    q[j] = qv;
    bin_none[j] = yes ? fine_bin_lanes(u_of_code(c)) : kSampleTrashBin;
    sign_bits += yes & uint32_t(qv == 0);
    coded += yes;
  }
  // 1-D Lorenzo: the previous coded element's q predicts (the one serial step).
  int32_t prev = 0;
  for (uint32_t j = 0; j < n; ++j) {
    bin_lor[j] = uint32_t(q[j] - prev);
    prev = is_coded[j] ? q[j] : prev;
  }
  for (uint32_t j = 0; j < n; ++j)
    bin_lor[j] = is_coded[j] ? fine_bin_lanes(zigzag_bits(int32_t(bin_lor[j]))) : kSampleTrashBin;
  for (uint32_t j = 0; j < n; ++j) {
    ++tally->none[bin_none[j]];
    ++tally->lor[bin_lor[j]];
  }
  if (row) {
    // The window's q after row + 1 zeros: neighbours before the chunk (or above its first
    // row) read zeros, as absent ones count.
    constexpr uint32_t kPad = kMax2DRow + 1;
    int32_t grid[kPad + kSampleWindow];
    for (uint32_t i = 0; i < kPad; ++i) grid[i] = 0;
    for (uint32_t i = 0; i < context + n; ++i) grid[kPad + i] = codes[i] == kOutlierCode ? 0 : code_to_q(codes[i]);
    const int32_t* g = grid + kPad + context;  // g[j]: run element j
    for (uint32_t j = 0; j < n; ++j) {
      int32_t p = g[int64_t(j) - 1] + g[int64_t(j) - row] - g[int64_t(j) - row - 1];
      p = std::min(std::max(p, -kMaxQ), kMaxQ);
      bin_2d[j] = zigzag_bits(q[j] - p);
    }
    // The first element of a row has no left neighbour, hence no upper-left one either.
    for (uint32_t j = col0 == 0 ? 0 : row - col0; j < n; j += row) bin_2d[j] = zigzag_bits(q[j] - g[int64_t(j) - row]);
    for (uint32_t j = 0; j < n; ++j) bin_2d[j] = is_coded[j] ? fine_bin_lanes(bin_2d[j]) : kSampleTrashBin;
    for (uint32_t j = 0; j < n; ++j) ++tally->lor2d[bin_2d[j]];
  }
  for (uint32_t j0 = 0; j0 < n; j0 += 8) {
    const uint32_t m = std::min<uint32_t>(8, n - j0);
    uint32_t byte = 0;
    for (uint32_t b = 0; b < m; ++b) byte |= is_coded[j0 + b] << b;
    ++mask_hist[byte];
  }
  // Zero-map bits: under each predictor, which coded values are not 0, packed over the coded
  // elements (uncoded ones hold kSampleTrashBin, and are dropped by the gather).
  uint64_t coded_bits = 0, nonzero[3] = {0, 0, 0};
  for (uint32_t j = 0; j < n; ++j) {
    coded_bits |= uint64_t(is_coded[j]) << j;
    nonzero[0] |= uint64_t(bin_none[j] != 0) << j;
    nonzero[1] |= uint64_t(bin_lor[j] != 0) << j;
  }
  if (row)
    for (uint32_t j = 0; j < n; ++j) nonzero[2] |= uint64_t(bin_2d[j] != 0) << j;
  SampleTally::RunBits& rb = tally->run_bits[tally->runs++ % kSampleRuns];
  rb.coded = coded;
  for (uint32_t p = 0; p < 3; ++p) rb.nonzero[p] = gather_bits64(nonzero[p], coded_bits);
  tally->sign_bits += sign_bits;
  tally->coded += coded;
}

namespace {
#if ACTZIP_AVX2_PASSES
// Bit b set where hist[b] != 0, for 64 counters.
ACTZIP_TARGET_AVX2 uint64_t nonzero_bits64_avx2(const uint32_t* hist) {
  uint64_t zero = 0;
  for (uint32_t k = 0; k < 8; ++k) {
    const __m256i h = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(hist + 8 * k));
    zero |= uint64_t(movemask32(_mm256_cmpeq_epi32(h, _mm256_setzero_si256()))) << (8 * k);
  }
  return ~zero;
}
#endif

// Bit b set where hist[b] != 0, for m <= 64 counters.
inline uint64_t nonzero_bits(const uint32_t* hist, uint32_t m) {
#if ACTZIP_AVX2_PASSES
  if (m == 64 && avx2_passes) return nonzero_bits64_avx2(hist);
#endif
  uint64_t nonzero = 0;
  for (uint32_t b = 0; b < m; ++b) nonzero |= uint64_t(hist[b] != 0) << b;
  return nonzero;
}

// fine_cost_bits() over the bins that are not empty, in the same order: the same sum.
double sampled_cost_bits(const uint32_t* hist, uint32_t total, const float* nlog2n) {
  double bits = nlog2n[total];
  for (uint32_t w0 = 0; w0 < kFineAlphabet; w0 += 64) {
    uint64_t nonzero = nonzero_bits(hist + w0, std::min<uint32_t>(64, kFineAlphabet - w0));
    for (; nonzero; nonzero &= nonzero - 1) {
      const uint32_t b = w0 + uint32_t(__builtin_ctzll(nonzero));
      const uint32_t count = hist[b];
      bits -= nlog2n[count];
      if (b >= (1u << kMaxDirectLog2)) bits += double(count) * (b - (1u << kMaxDirectLog2) + kMaxDirectLog2);
    }
  }
  return bits;
}
}  // namespace

uint8_t choose_sampled_predictor(const SampleTally& tally, bool with_2d, const float* nlog2n,
                                 const uint32_t** chosen) {
  const uint32_t coded = tally.coded;
  return choose_cheapest(tally.none, tally.lor, tally.lor2d, tally.sign_bits, with_2d,
                         [=](const uint32_t* hist) { return sampled_cost_bits(hist, coded, nlog2n); }, chosen);
}

ACTZIP_MULTIVERSION_WIDE void classify_codes_f32(const float* x, uint32_t n, const Quantizer& qz, int32_t* codes,
                                                 int32_t* q_out, uint32_t* u_out, uint32_t* zeros, uint32_t* outliers) {
  classify_codes_any<1>(x, n, qz, codes, q_out, u_out, zeros, outliers);
}
ACTZIP_MULTIVERSION_WIDE void classify_codes_f16(const uint16_t* x, uint32_t n, const Quantizer& qz, int32_t* codes,
                                                 int32_t* q_out, uint32_t* u_out, uint32_t* zeros, uint32_t* outliers) {
  classify_codes_any<2>(x, n, qz, codes, q_out, u_out, zeros, outliers);
}
ACTZIP_MULTIVERSION_WIDE void classify_codes_bf16(const uint16_t* x, uint32_t n, const Quantizer& qz, int32_t* codes,
                                                 int32_t* q_out, uint32_t* u_out, uint32_t* zeros, uint32_t* outliers) {
  classify_codes_any<3>(x, n, qz, codes, q_out, u_out, zeros, outliers);
}

ACTZIP_MULTIVERSION void codes_to_u(const int32_t* codes, uint32_t n, uint32_t* u) {
  // May run in place (codes == u): each element is read before it is written.
  for (uint32_t i = 0; i < n; ++i) u[i] = u_of_code(codes[i]);
}

ACTZIP_MULTIVERSION void lorenzo1d_residuals(const int32_t* __restrict q, uint32_t n, uint32_t* __restrict u) {
  if (n == 0) return;
  u[0] = zigzag_bits(q[0]);
  for (uint32_t t = 1; t < n; ++t) u[t] = zigzag_bits(q[t] - q[t - 1]);  // |q| <= kMaxQ: no overflow
}

ACTZIP_MULTIVERSION void lorenzo2d_residuals(const int32_t* __restrict q, uint32_t n, uint32_t row, uint32_t col0,
                                             uint32_t* __restrict u) {
  // Every element as if it had all three neighbours: the zeros before q stand for the
  // neighbours outside the chunk.
  for (uint32_t i = 0; i < n; ++i) {
    int32_t p = q[int64_t(i) - 1] + q[int64_t(i) - row] - q[int64_t(i) - row - 1];
    p = std::min(std::max(p, -kMaxQ), kMaxQ);
    u[i] = zigzag_bits(q[i] - p);
  }
  // The first element of a row has no left neighbour, hence no upper-left one either: its
  // prediction is the upper neighbour (already in range).
  for (uint32_t i = col0 == 0 ? 0 : row - col0; i < n; i += row) u[i] = zigzag_bits(q[i] - q[int64_t(i) - row]);
}

namespace {
// Keeps values[i] where keys[i] passes Keep, in order, in place, and writes the kept bits
// (bit i % 8 of byte i / 8); returns the number kept. keys may be values itself: each group
// of eight is read before anything is written over it.
struct KeepCoded {  // keys are codes: neither 0 nor kOutlierCode
  static uint32_t one(uint32_t key) { return is_coded_code(int32_t(key)); }
#if ACTZIP_AVX2_PASSES
  ACTZIP_TARGET_AVX2 static uint32_t eight(__m256i k) {
    const __m256i uncoded = _mm256_or_si256(_mm256_cmpeq_epi32(k, _mm256_setzero_si256()),
                                            _mm256_cmpeq_epi32(k, _mm256_set1_epi32(kOutlierCode)));
    return ~movemask32(uncoded) & 0xFFu;
  }
#endif
};
struct KeepNonzero {  // keys are the values
  static uint32_t one(uint32_t key) { return uint32_t(key != 0); }
#if ACTZIP_AVX2_PASSES
  ACTZIP_TARGET_AVX2 static uint32_t eight(__m256i k) {
    return ~movemask32(_mm256_cmpeq_epi32(k, _mm256_setzero_si256())) & 0xFFu;
  }
#endif
};

#if ACTZIP_AVX2_PASSES
// Whole groups of eight; returns the values kept and sets *done.
template <class Keep>
ACTZIP_TARGET_AVX2 uint32_t compact_avx2(const uint32_t* keys, uint32_t n, uint32_t* values, uint8_t* bits,
                                         uint32_t* done) {
  uint32_t t = 0, i0 = 0;
  for (; i0 + 8 <= n; i0 += 8) {
    const uint32_t m = Keep::eight(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(keys + i0)));
    const __m256i v = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(values + i0));
    const __m256i perm = _mm256_load_si256(reinterpret_cast<const __m256i*>(kPermute.compress[m]));
    // Lanes past the kept ones land at t + popcount(m) .. t + 7 <= i0 + 7: this group's own
    // positions, already loaded, or earlier ones rewritten by the next groups.
    _mm256_storeu_si256(reinterpret_cast<__m256i*>(values + t), _mm256_permutevar8x32_epi32(v, perm));
    t += uint32_t(_mm_popcnt_u32(m));
    bits[i0 / 8] = uint8_t(m);
  }
  *done = i0;
  return t;
}
#endif

template <class Keep>
uint32_t compact(const uint32_t* keys, uint32_t n, uint32_t* values, uint8_t* __restrict bits) {
  uint32_t t = 0, i0 = 0;
#if ACTZIP_AVX2_PASSES
  if (avx2_passes) t = compact_avx2<Keep>(keys, n, values, bits, &i0);
#endif
  for (; i0 < n; i0 += 8) {
    const uint32_t m = std::min<uint32_t>(8, n - i0);
    uint32_t byte = 0;
    for (uint32_t b = 0; b < m; ++b) {
      const uint32_t kept = Keep::one(keys[i0 + b]);
      values[t] = values[i0 + b];  // t <= i0 + b: in place is safe
      t += kept;
      byte |= kept << b;
    }
    bits[i0 / 8] = uint8_t(byte);
  }
  return t;
}
}  // namespace

uint32_t compact_nonzero(uint32_t* values, uint32_t n, uint8_t* map_bytes) {
  return compact<KeepNonzero>(values, n, values, map_bytes);
}

uint32_t compact_coded(const int32_t* codes, uint32_t n, uint32_t* values, uint8_t* mask_bytes) {
  return compact<KeepCoded>(reinterpret_cast<const uint32_t*>(codes), n, values, mask_bytes);
}

namespace {
#if ACTZIP_AVX2_PASSES
// Whole groups of 32 elements: a bit mask of the outliers, then one store per outlier.
ACTZIP_TARGET_AVX2 uint32_t outlier_positions_avx2(const int32_t* codes, uint32_t n, uint16_t* pos, uint32_t* done) {
  const __m256i outlier = _mm256_set1_epi32(kOutlierCode);
  uint32_t o = 0, i0 = 0;
  for (; i0 + 32 <= n; i0 += 32) {
    uint32_t m = 0;
    for (uint32_t k = 0; k < 4; ++k) {
      const __m256i c = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(codes + i0 + 8 * k));
      m |= movemask32(_mm256_cmpeq_epi32(c, outlier)) << (8 * k);
    }
    for (; m; m &= m - 1) pos[o++] = uint16_t(i0 + uint32_t(__builtin_ctz(m)));
  }
  *done = i0;
  return o;
}
#endif
}  // namespace

uint32_t outlier_positions(const int32_t* __restrict codes, uint32_t n, uint16_t* __restrict pos) {
  uint32_t o = 0, i = 0;
#if ACTZIP_AVX2_PASSES
  if (avx2_passes) o = outlier_positions_avx2(codes, n, pos, &i);
#endif
  for (; i < n; ++i) {
    pos[o] = uint16_t(i);
    o += codes[i] == kOutlierCode;
  }
  return o;
}

namespace {

// A bit stream being written 32 elements at a time: at most 7 bits wait in acc.
struct SignSink {
  uint64_t acc = 0;
  uint32_t fill = 0;
  uint8_t* p;
  // Appends `count` <= 32 bits.
  void append(uint32_t bits, uint32_t count) {
    acc |= uint64_t(bits) << fill;
    fill += count;
    std::memcpy(p, &acc, 8);  // little-endian hosts (bitio.h checks)
    p += fill >> 3;
    acc >>= fill & ~7u;
    fill &= 7;
  }
};

#if ACTZIP_AVX2_PASSES
template <BitsUnderMask kGather>
ACTZIP_TARGET_AVX2 uint32_t write_sign_blocks_avx2(const int32_t* codes, uint32_t n, SignSink* sink) {
  const __m256i one = _mm256_set1_epi32(1), minus_one = _mm256_set1_epi32(-1);
  uint32_t i0 = 0;
  for (; i0 + 32 <= n; i0 += 32) {
    uint32_t take = 0, negative = 0;
    for (uint32_t k = 0; k < 4; ++k) {
      const __m256i v = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(codes + i0 + 8 * k));
      take |= movemask32(_mm256_or_si256(_mm256_cmpeq_epi32(v, one), _mm256_cmpeq_epi32(v, minus_one))) << (8 * k);
      negative |= movemask32(v) << (8 * k);
    }
    if (take) sink->append(kGather(negative, take), uint32_t(_mm_popcnt_u32(take)));
  }
  return i0;
}
#endif

}  // namespace

uint64_t write_sign_stream(const int32_t* __restrict codes, uint32_t n, uint8_t* __restrict out) {
  SignSink sink;
  sink.p = out;
  uint32_t i0 = 0;
#if ACTZIP_AVX2_PASSES
  if (avx2_passes)
    i0 = pext_passes ? write_sign_blocks_avx2<gather_bits_pext>(codes, n, &sink)
                     : write_sign_blocks_avx2<gather_bits>(codes, n, &sink);
#endif
  uint64_t& acc = sink.acc;
  uint32_t& fill = sink.fill;
  uint8_t*& p = sink.p;
  for (; i0 < n; i0 += 32) {
    const uint32_t m = std::min<uint32_t>(32, n - i0);
    for (uint32_t j = 0; j < m; ++j) {
      const int32_t c = codes[i0 + j];
      const uint32_t take = uint32_t(c == 1) | uint32_t(c == -1);
      acc |= uint64_t(take & (uint32_t(c) >> 31)) << fill;
      fill += take;
    }
    std::memcpy(p, &acc, 8);  // little-endian hosts (bitio.h checks)
    p += fill >> 3;
    acc >>= fill & ~7u;
    fill &= 7;
  }
  std::memcpy(p, &acc, 8);
  return uint64_t(p - out) + (fill > 0 ? 1 : 0);
}

void build_code_tables(const HuffmanEncoder& code, int k, uint32_t* code_len, uint32_t* small) {
  for (size_t s = 0; s < code.len.size(); ++s) code_len[s] = code.code[s] | (uint32_t(code.len[s]) << 16);
  for (uint32_t v = 0; v < kSmallValues; ++v) {
    int eb = 0;
    const uint32_t sym = u_to_symbol(v, k, &eb);
    const uint32_t extra = eb ? v - (1u << eb) : 0;
    const uint32_t len = code.len[sym];
    small[v] = (uint32_t(code.code[sym]) | (extra << len)) | ((len + uint32_t(eb)) << 24);
  }
}

namespace {

// Appends the code of any value (the general case of huffman_encode_lanes): at most 12
// bits of code and 24 extra bits.
__attribute__((always_inline)) inline void put_value(FastBitWriter& w, uint32_t v, const uint32_t* code_len, int k) {
  const uint32_t direct = 1u << k;
  const int b = floor_log2(v | 1u);
  const bool is_class = v >= direct;
  const uint32_t sym = is_class ? direct + uint32_t(b - k) : v;
  const int eb = is_class ? b : 0;
  const uint64_t extra = is_class ? uint64_t(v - (1u << b)) : 0;
  const uint32_t cl = code_len[sym];  // code | length << 16
  const int len = int(cl >> 16);
  w.put(uint64_t(cl & 0xFFFFu) | (extra << len), uint32_t(len + eb));
}

// Values v[0..8) into the four lanes, two each, one code at a time (the general case).
__attribute__((always_inline)) inline void put_eight(FastBitWriter& w0, FastBitWriter& w1, FastBitWriter& w2,
                                                     FastBitWriter& w3, const uint32_t* v, const uint32_t* code_len,
                                                     int k) {
  put_value(w0, v[0], code_len, k);
  put_value(w1, v[1], code_len, k);
  put_value(w2, v[2], code_len, k);
  put_value(w3, v[3], code_len, k);
  put_value(w0, v[4], code_len, k);
  put_value(w1, v[5], code_len, k);
  put_value(w2, v[6], code_len, k);
  put_value(w3, v[7], code_len, k);
}

// Values u[t..n) (fewer than 8) into their lanes, then each lane's byte count.
__attribute__((always_inline)) inline void finish_lanes(FastBitWriter& w0, FastBitWriter& w1, FastBitWriter& w2,
                                                        FastBitWriter& w3, const uint32_t* u, uint32_t t, uint32_t n,
                                                        const uint32_t* code_len, int k, uint64_t* lane_bytes) {
  FastBitWriter* w[kCodeLanes] = {&w0, &w1, &w2, &w3};
  for (; t < n; ++t) put_value(*w[t % kCodeLanes], u[t], code_len, k);
  for (uint32_t l = 0; l < kCodeLanes; ++l) lane_bytes[l] = w[l]->flush();
}

__attribute__((always_inline)) inline void encode_lanes_body(const uint32_t* __restrict u, uint32_t n,
                                                             const uint32_t* __restrict small,
                                                             const uint32_t* __restrict code_len, int k,
                                                             uint8_t* lanes, uint64_t lane_stride,
                                                             uint64_t* lane_bytes) {
  static_assert(kCodeLanes == 4, "the loop below writes four lanes");
  FastBitWriter w0(lanes), w1(lanes + lane_stride), w2(lanes + 2 * lane_stride), w3(lanes + 3 * lane_stride);
  // Values t and t + 4 go to the same lane: while both are small their codes (at most 23
  // bits each) are joined and written with one put.
  auto put_pair = [&](FastBitWriter& w, uint32_t v0, uint32_t v1) {
    const uint32_t e0 = small[v0], e1 = small[v1];
    const uint32_t n0 = e0 >> 24;
    w.put(uint64_t(e0 & 0xFFFFFFu) | (uint64_t(e1 & 0xFFFFFFu) << n0), n0 + (e1 >> 24));
  };
  uint32_t t = 0;
  for (; t + 8 <= n; t += 8) {
    const uint32_t* v = u + t;
    if ((v[0] | v[1] | v[2] | v[3] | v[4] | v[5] | v[6] | v[7]) < kSmallValues) {
      put_pair(w0, v[0], v[4]);
      put_pair(w1, v[1], v[5]);
      put_pair(w2, v[2], v[6]);
      put_pair(w3, v[3], v[7]);
    } else {
      put_eight(w0, w1, w2, w3, v, code_len, k);
    }
  }
  finish_lanes(w0, w1, w2, w3, u, t, n, code_len, k, lane_bytes);
}

#if ACTZIP_AVX2_PASSES
ACTZIP_TARGET_BMI2 void encode_lanes_bmi2(const uint32_t* u, uint32_t n, const uint32_t* small,
                                          const uint32_t* code_len, int k, uint8_t* lanes, uint64_t lane_stride,
                                          uint64_t* lane_bytes) {
  encode_lanes_body(u, n, small, code_len, k, lanes, lane_stride, lane_bytes);
}

// encode_lanes_body with the pairs' codes joined by AVX2 ahead of the writers, a block at
// a time: the serial loop is then two loads and a put per pair.
__attribute__((target("avx2,popcnt,bmi,bmi2"))) void encode_lanes_avx2(const uint32_t* u, uint32_t n,
                                                                       const uint32_t* small, const uint32_t* code_len,
                                                                       int k, uint8_t* lanes, uint64_t lane_stride,
                                                                       uint64_t* lane_bytes) {
  constexpr uint32_t kGroups = 64;  // groups of 8 values (4 pairs) a block
  alignas(32) uint64_t pair_bits[4 * kGroups];
  alignas(16) uint32_t pair_len[4 * kGroups];
  uint32_t all_small[kGroups];
  FastBitWriter w0(lanes), w1(lanes + lane_stride), w2(lanes + 2 * lane_stride), w3(lanes + 3 * lane_stride);
  const __m256i largest = _mm256_set1_epi32(int(kSmallValues - 1)), code_bits = _mm256_set1_epi32(0xFFFFFF);
  uint32_t t = 0;
  while (t + 8 <= n) {
    const uint32_t groups = std::min<uint32_t>(kGroups, (n - t) / 8);
    for (uint32_t g = 0; g < groups; ++g) {
      const __m256i v = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(u + t + 8 * g));
      // Values are below 2^26 (zigzagged residuals of 24-bit q): signed compares are safe.
      all_small[g] = movemask32(_mm256_cmpgt_epi32(v, largest)) == 0;
      const __m256i e = _mm256_i32gather_epi32(reinterpret_cast<const int*>(small), _mm256_min_epu32(v, largest), 4);
      const __m256i code = _mm256_and_si256(e, code_bits), len = _mm256_srli_epi32(e, 24);
      const __m256i first = _mm256_cvtepu32_epi64(_mm256_castsi256_si128(code));
      const __m256i second = _mm256_cvtepu32_epi64(_mm256_extracti128_si256(code, 1));
      const __m256i shift = _mm256_cvtepu32_epi64(_mm256_castsi256_si128(len));
      _mm256_store_si256(reinterpret_cast<__m256i*>(pair_bits + 4 * g),
                         _mm256_or_si256(first, _mm256_sllv_epi64(second, shift)));
      _mm_store_si128(reinterpret_cast<__m128i*>(pair_len + 4 * g),
                      _mm_add_epi32(_mm256_castsi256_si128(len), _mm256_extracti128_si256(len, 1)));
    }
    for (uint32_t g = 0; g < groups; ++g, t += 8) {
      if (all_small[g]) {
        w0.put(pair_bits[4 * g], pair_len[4 * g]);
        w1.put(pair_bits[4 * g + 1], pair_len[4 * g + 1]);
        w2.put(pair_bits[4 * g + 2], pair_len[4 * g + 2]);
        w3.put(pair_bits[4 * g + 3], pair_len[4 * g + 3]);
      } else {
        const uint32_t* v = u + t;
        put_eight(w0, w1, w2, w3, v, code_len, k);
      }
    }
  }
  finish_lanes(w0, w1, w2, w3, u, t, n, code_len, k, lane_bytes);
}
#endif

}  // namespace

void huffman_encode_lanes(const uint32_t* u, uint32_t n, const uint32_t* small, const uint32_t* code_len, int k,
                          uint8_t* lanes, uint64_t lane_stride, uint64_t* lane_bytes) {
#if ACTZIP_AVX2_PASSES
  if (avx2_passes && bmi2_passes) return encode_lanes_avx2(u, n, small, code_len, k, lanes, lane_stride, lane_bytes);
  if (bmi2_passes) return encode_lanes_bmi2(u, n, small, code_len, k, lanes, lane_stride, lane_bytes);
#endif
  encode_lanes_body(u, n, small, code_len, k, lanes, lane_stride, lane_bytes);
}

namespace {
#if ACTZIP_AVX2_PASSES
// Whole groups of eight elements; returns the values used and sets *done. `fill` goes where
// the bit is clear.
ACTZIP_TARGET_AVX2 uint32_t expand_avx2(const uint32_t* values, const uint8_t* mask, uint32_t n, uint32_t* grid,
                                        uint32_t fill, uint32_t* done) {
  uint32_t t = 0, i0 = 0;
  const __m256i fills = _mm256_set1_epi32(int32_t(fill));
  for (; i0 + 8 <= n; i0 += 8) {
    const uint32_t byte = mask[i0 / 8];
    const __m256i v = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(values + t));
    const __m256i perm = _mm256_load_si256(reinterpret_cast<const __m256i*>(kPermute.expand[byte]));
    const __m256i set = lanes_of_byte(byte);  // all ones in the lanes whose bit is set
    _mm256_storeu_si256(reinterpret_cast<__m256i*>(grid + i0),
                        _mm256_blendv_epi8(fills, _mm256_permutevar8x32_epi32(v, perm), set));
    t += uint32_t(_mm_popcnt_u32(byte));
  }
  *done = i0;
  return t;
}
#endif

void expand_body(const uint32_t* __restrict values, const uint8_t* __restrict mask, uint32_t n,
                 uint32_t* __restrict grid, uint32_t fill) {
  uint32_t t = 0, start = 0;
#if ACTZIP_AVX2_PASSES
  if (avx2_passes) t = expand_avx2(values, mask, n, grid, fill, &start);
#endif
  for (uint32_t i0 = start; i0 < n; i0 += 8) {
    const uint32_t byte = mask[i0 / 8];
    const uint32_t m = std::min<uint32_t>(8, n - i0);
    if (byte == 0) {
      for (uint32_t b = 0; b < m; ++b) grid[i0 + b] = fill;
      continue;
    }
    for (uint32_t b = 0; b < m; ++b) {
      const uint32_t bit = (byte >> b) & 1u;
      grid[i0 + b] = bit ? values[t] : fill;  // values[t] exists: t <= i0 + b < n
      t += bit;
    }
  }
}
}  // namespace

void expand_coded(const uint32_t* values, const uint8_t* mask, uint32_t n, uint32_t* grid) {
  expand_body(values, mask, n, grid, kUncodedValue);
}

void expand_nonzero(const uint32_t* values, const uint8_t* map, uint32_t n, uint32_t* out) {
  expand_body(values, map, n, out, 0u);
}

ACTZIP_MULTIVERSION bool any_invalid_u(const uint32_t* u, uint32_t n) {
  const uint32_t limit = 2u * uint32_t(kMaxCode - 1) + 1u;
  uint32_t bad = 0;
  for (uint32_t i = 0; i < n; ++i) bad |= uint32_t(u[i] > limit);
  return bad != 0;
}

namespace {

template <int kDT, class T>
inline void reconstruct_loop(const uint32_t* __restrict w, uint32_t n, float step, float quarter_step,
                             T* __restrict out) {
  for (uint32_t i = 0; i < n; ++i) {
    const uint32_t v = w[i];
    const int32_t m = int32_t(v >> 1);  // |c| - 1, below 2^31
    const float mag = m == 0 ? quarter_step : float(m) * step;
    const float r = (v & 1u) ? -mag : mag;
    uint32_t bits;
    if constexpr (kDT == 1) bits = f32_bits(r);
    else if constexpr (kDT == 2) bits = f32_to_f16(r);
    else bits = f32_to_bf16(r);
    out[i] = T(v == kUncodedValue ? 0u : bits);
  }
}

}  // namespace

ACTZIP_MULTIVERSION void reconstruct_f32(const uint32_t* w, uint32_t n, float step, float quarter_step, uint32_t* out) {
  reconstruct_loop<1>(w, n, step, quarter_step, out);
}
#if ACTZIP_AVX2_PASSES
namespace {
// reconstruct_loop's binary32 values of eight w (meaningless where w is kUncodedValue).
ACTZIP_TARGET_AVX2 inline __m256 reconstruct8(__m256i v, __m256 step, __m256 quarter_step) {
  const __m256i m = _mm256_srli_epi32(v, 1);
  const __m256 mag = _mm256_blendv_ps(_mm256_mul_ps(_mm256_cvtepi32_ps(m), step), quarter_step,
                                      _mm256_castsi256_ps(_mm256_cmpeq_epi32(m, _mm256_setzero_si256())));
  return _mm256_or_ps(mag, _mm256_castsi256_ps(_mm256_slli_epi32(_mm256_and_si256(v, _mm256_set1_epi32(1)), 31)));
}

// 16-bit storage of eight binary32 values by reconstruct_loop<kDT> (2: F16C's round to
// nearest even, as f32_to_f16(); 3: round_bf16_up()), 0 where w is kUncodedValue. Returns
// how many it wrote.
template <int kDT>
ACTZIP_TARGET_F16C uint32_t reconstruct16_avx2(const uint32_t* __restrict w, uint32_t n, float step,
                                               float quarter_step, uint16_t* __restrict out) {
  const __m256 vstep = _mm256_set1_ps(step), vquarter = _mm256_set1_ps(quarter_step);
  const __m256i uncoded_value = _mm256_set1_epi32(-1);
  uint32_t i = 0;
  for (; i + 8 <= n; i += 8) {
    const __m256i v = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(w + i));
    const __m256 r = reconstruct8(v, vstep, vquarter);
    const __m256i uncoded = _mm256_cmpeq_epi32(v, uncoded_value);
    const __m128i uncoded16 = _mm_packs_epi32(_mm256_castsi256_si128(uncoded), _mm256_extracti128_si256(uncoded, 1));
    __m128i h;
    if constexpr (kDT == 2) {
      h = _mm256_cvtps_ph(r, _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
    } else {
      const __m256i b16 = _mm256_srli_epi32(round_bf16_up(_mm256_castps_si256(r)), 16);
      h = _mm_packus_epi32(_mm256_castsi256_si128(b16), _mm256_extracti128_si256(b16, 1));
    }
    _mm_storeu_si128(reinterpret_cast<__m128i*>(out + i), _mm_andnot_si128(uncoded16, h));
  }
  return i;
}

ACTZIP_TARGET_F16C uint32_t widen_f16_f16c(const uint16_t* __restrict x, uint32_t n, float* __restrict out) {
  uint32_t i = 0;
  for (; i + 8 <= n; i += 8)
    _mm256_storeu_ps(out + i, _mm256_cvtph_ps(_mm_loadu_si128(reinterpret_cast<const __m128i*>(x + i))));
  return i;
}
}  // namespace
#endif

void widen_f16(const uint16_t* x, uint32_t n, float* out) {
  uint32_t i = 0;
#if ACTZIP_AVX2_PASSES
  if (f16c_passes) i = widen_f16_f16c(x, n, out);
#endif
  for (; i < n; ++i) out[i] = f16_to_f32(x[i]);
}

ACTZIP_MULTIVERSION void reconstruct_f16(const uint32_t* w, uint32_t n, float step, float quarter_step, uint16_t* out) {
  uint32_t done = 0;
#if ACTZIP_AVX2_PASSES
  if (f16c_passes) done = reconstruct16_avx2<2>(w, n, step, quarter_step, out);
#endif
  reconstruct_loop<2>(w + done, n - done, step, quarter_step, out + done);
}
ACTZIP_MULTIVERSION void reconstruct_bf16(const uint32_t* w, uint32_t n, float step, float quarter_step,
                                          uint16_t* out) {
  uint32_t done = 0;
#if ACTZIP_AVX2_PASSES
  if (f16c_passes) done = reconstruct16_avx2<3>(w, n, step, quarter_step, out);
#endif
  reconstruct_loop<3>(w + done, n - done, step, quarter_step, out + done);
}

namespace {

template <bool kAllCoded>
inline uint64_t q_to_w_loop(const int32_t* q, const uint32_t* coded_if, uint32_t n, BitReader& signs, uint32_t* w) {
  uint64_t used = 0;
  for (uint32_t i0 = 0; i0 < n; i0 += 32) {
    if (signs.available() < 32) signs.refill();  // a block takes at most 32 bits
    const uint32_t m = std::min<uint32_t>(32, n - i0);
    for (uint32_t j = 0; j < m; ++j) {
      const uint32_t i = i0 + j;
      const uint32_t coded = kAllCoded ? 1u : uint32_t(coded_if[i] != kUncodedValue);
      const int32_t qv = q[i];
      const uint32_t take = coded & uint32_t(qv == 0);
      const uint32_t negative = uint32_t(signs.peek()) & take;
      signs.consume(int(take));
      used += take;
      const uint32_t mag = qv < 0 ? 0u - uint32_t(qv) : uint32_t(qv);
      const uint32_t v = (mag << 1) | (uint32_t(qv) >> 31) | negative;
      w[i] = coded ? v : kUncodedValue;
    }
  }
  return used;
}

#if ACTZIP_AVX2_PASSES
// Whole blocks of 32 elements; returns the elements done.
template <bool kAllCoded, BitsUnderMask kScatter>
ACTZIP_TARGET_AVX2 uint32_t q_to_w_avx2(const int32_t* q, const uint32_t* coded_if, uint32_t n, BitReader& signs,
                                        uint32_t* w, uint64_t* used) {
  const __m256i zero = _mm256_setzero_si256(), uncoded_value = _mm256_set1_epi32(-1);
  const __m256i lane = _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7), one = _mm256_set1_epi32(1);
  uint32_t i0 = 0;
  uint64_t taken = 0;
  for (; i0 + 32 <= n; i0 += 32) {
    __m256i qv[4], uncoded[4];
    uint32_t take = 0;
    for (uint32_t k = 0; k < 4; ++k) {
      qv[k] = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(q + i0 + 8 * k));
      const __m256i* coded_at = reinterpret_cast<const __m256i*>(coded_if + i0 + 8 * k);
      uncoded[k] = kAllCoded ? zero : _mm256_cmpeq_epi32(_mm256_loadu_si256(coded_at), uncoded_value);
      take |= movemask32(_mm256_andnot_si256(uncoded[k], _mm256_cmpeq_epi32(qv[k], zero))) << (8 * k);
    }
    uint32_t negative = 0;
    if (take) {
      if (signs.available() < 32) signs.refill();
      const uint32_t count = uint32_t(_mm_popcnt_u32(take));
      negative = kScatter(uint32_t(signs.peek() & ((uint64_t(1) << count) - 1u)), take);
      signs.consume(int(count));
      taken += count;
    }
    const __m256i neg_bits = _mm256_set1_epi32(int(negative));
    for (uint32_t k = 0; k < 4; ++k) {
      const __m256i sign_bit = _mm256_and_si256(
          _mm256_srlv_epi32(neg_bits, _mm256_add_epi32(lane, _mm256_set1_epi32(int(8 * k)))), one);
      __m256i v = _mm256_slli_epi32(_mm256_abs_epi32(qv[k]), 1);
      v = _mm256_or_si256(v, _mm256_or_si256(_mm256_srli_epi32(qv[k], 31), sign_bit));
      v = _mm256_or_si256(v, uncoded[k]);
      _mm256_storeu_si256(reinterpret_cast<__m256i*>(w + i0 + 8 * k), v);
    }
  }
  *used += taken;
  return i0;
}
#endif

}  // namespace

uint64_t q_to_w(const int32_t* q, const uint32_t* coded_if, uint32_t n, BitReader& signs, uint32_t* w) {
  uint64_t used = 0;
  uint32_t done = 0;
#if ACTZIP_AVX2_PASSES
  if (avx2_passes && pext_passes)
    done = coded_if ? q_to_w_avx2<false, scatter_bits_pdep>(q, coded_if, n, signs, w, &used)
                    : q_to_w_avx2<true, scatter_bits_pdep>(q, nullptr, n, signs, w, &used);
  else if (avx2_passes)
    done = coded_if ? q_to_w_avx2<false, scatter_bits>(q, coded_if, n, signs, w, &used)
                    : q_to_w_avx2<true, scatter_bits>(q, nullptr, n, signs, w, &used);
#endif
  if (done < n) {
    used += coded_if ? q_to_w_loop<false>(q + done, coded_if + done, n - done, signs, w + done)
                     : q_to_w_loop<true>(q + done, nullptr, n - done, signs, w + done);
  }
  return used;
}

namespace {

#if ACTZIP_AVX2_PASSES
// Inclusive prefix sums of eight 32-bit lanes (wrapping), plus `carry` (all lanes equal).
ACTZIP_TARGET_AVX2 inline __m256i prefix_sum8(__m256i x, __m256i carry) {
  x = _mm256_add_epi32(x, _mm256_slli_si256(x, 4));  // within each 128-bit half
  x = _mm256_add_epi32(x, _mm256_slli_si256(x, 8));
  const __m256i low_total = _mm256_shuffle_epi32(x, 0xFF);  // each half's last lane
  x = _mm256_add_epi32(x, _mm256_permute2x128_si256(low_total, low_total, 0x08));  // low half's into the high
  return _mm256_add_epi32(x, carry);
}
ACTZIP_TARGET_AVX2 inline __m256i last_lane(__m256i x) { return _mm256_permutevar8x32_epi32(x, _mm256_set1_epi32(7)); }
ACTZIP_TARGET_AVX2 inline __m256i unzigzag8(__m256i v) {
  const __m256i negative = _mm256_sub_epi32(_mm256_setzero_si256(), _mm256_and_si256(v, _mm256_set1_epi32(1)));
  return _mm256_xor_si256(_mm256_srli_epi32(v, 1), negative);
}
// Lanes whose wrapped q lies outside [-kMaxQ, kMaxQ] set.
ACTZIP_TARGET_AVX2 inline __m256i out_of_range8(__m256i q) {
  const __m256i limit = _mm256_set1_epi32(int(2u * uint32_t(kMaxQ)));
  const __m256i biased = _mm256_add_epi32(q, _mm256_set1_epi32(kMaxQ));
  return _mm256_xor_si256(_mm256_cmpeq_epi32(_mm256_max_epu32(biased, limit), limit), _mm256_set1_epi32(-1));
}

// Whole groups of eight; returns the elements done, *prev the last q and *bad whether any
// q was out of range.
ACTZIP_TARGET_AVX2 uint32_t lorenzo1d_inverse_avx2(const uint32_t* u, uint32_t n, int32_t* q, uint32_t* prev,
                                                   uint32_t* bad) {
  __m256i carry = _mm256_setzero_si256(), out = _mm256_setzero_si256();
  uint32_t t = 0;
  for (; t + 8 <= n; t += 8) {
    const __m256i x =
        prefix_sum8(unzigzag8(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(u + t))), carry);
    _mm256_storeu_si256(reinterpret_cast<__m256i*>(q + t), x);
    out = _mm256_or_si256(out, out_of_range8(x));
    carry = last_lane(x);
  }
  *prev = uint32_t(_mm256_extract_epi32(carry, 0));
  *bad = uint32_t(!_mm256_testz_si256(out, out));
  return t;
}
#endif

}  // namespace

bool lorenzo1d_inverse(const uint32_t* __restrict u, uint32_t n, int32_t* __restrict q) {
  uint32_t prev = 0, bad = 0, t = 0;
#if ACTZIP_AVX2_PASSES
  if (avx2_passes) t = lorenzo1d_inverse_avx2(u, n, q, &prev, &bad);
#endif
  for (; t < n; ++t) {
    prev += unzigzag_bits(u[t]);
    q[t] = int32_t(prev);
    bad |= out_of_range(prev);
  }
  return bad == 0;
}

namespace {

// q of one stretch of a row, [i, end), whose first element has no left neighbour: the
// prediction, unclamped, in wrapping arithmetic (lorenzo2d_inverse checks afterwards).
template <bool kAllCoded>
inline void lorenzo2d_stretch(const uint32_t* __restrict u, uint32_t i, uint32_t end, uint32_t row,
                              int32_t* __restrict q) {
  uint32_t left = 0;  // the first element's prediction is its upper neighbour alone
  for (uint32_t j = i; j < end; ++j) {
    const uint32_t v = u[j];
    const uint32_t up = uint32_t(q[int64_t(j) - row]);
    const uint32_t up_left = j == i ? 0u : uint32_t(q[int64_t(j) - row - 1]);
    const uint32_t qv = left + (up - up_left + unzigzag_bits(v));
    left = kAllCoded || v != kUncodedValue ? qv : 0u;
    q[j] = int32_t(left);
  }
}

template <bool kAllCoded>
void lorenzo2d_rows(const uint32_t* __restrict u, uint32_t n, uint32_t row, uint32_t col0, int32_t* __restrict q) {
  uint32_t i = 0, col = col0;
  while (i < n) {
    const uint32_t end = std::min<uint32_t>(n, i + (row - col));
    lorenzo2d_stretch<kAllCoded>(u, i, end, row, q);
    i = end;
    col = 0;
  }
}

#if ACTZIP_AVX2_PASSES
// Lanes of `x` moved up by `by` (1, 2 or 4), `fill` in the lanes left free.
ACTZIP_TARGET_AVX2 inline __m256i lanes_up(__m256i x, int by, __m256i fill) {
  const __m256i lane = _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7);
  const __m256i from = _mm256_sub_epi32(lane, _mm256_set1_epi32(by));
  const __m256i moved = _mm256_permutevar8x32_epi32(x, _mm256_max_epi32(from, _mm256_setzero_si256()));
  return _mm256_blendv_epi8(moved, fill, _mm256_cmpgt_epi32(_mm256_setzero_si256(), from));
}

// lorenzo2d_rows for rows of at least 8 elements, eight at a time (the upper row is
// complete, and at least 8 back, before a group reads it). Along a stretch of a row, q is
// the running sum of e = up - up_left + residual, restarted at 0 after each uncoded
// element: the sum S over the group minus the latest S at an uncoded element (or minus
// the stretch's running q before the group), spread forward in three doubling steps.
// (The masked loop is compiled for the unmasked case too, where it is dead code.)
template <bool kAllCoded>
ACTZIP_TARGET_AVX2 void lorenzo2d_rows_avx2(const uint32_t* u, uint32_t n, uint32_t row, uint32_t col0, int32_t* q) {
  const __m256i not_first = _mm256_setr_epi32(0, -1, -1, -1, -1, -1, -1, -1), zero = _mm256_setzero_si256();
  const __m256i uncoded_value = _mm256_set1_epi32(-1), first = _mm256_setr_epi32(-1, 0, 0, 0, 0, 0, 0, 0);
  uint32_t i = 0, col = col0;
  while (i < n) {
    const uint32_t end = std::min<uint32_t>(n, i + (row - col));
    __m256i carry = zero;  // q of the element before the group, in every lane
    __m256i keep_up_left = not_first;  // the stretch's first element has no upper-left neighbour
    uint32_t j = i;
    for (; j + 8 <= end; j += 8) {
      const __m256i v = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(u + j));
      const __m256i up = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(q + int64_t(j) - row));
      const __m256i up_left = _mm256_and_si256(
          _mm256_loadu_si256(reinterpret_cast<const __m256i*>(q + int64_t(j) - row - 1)), keep_up_left);
      const __m256i e = _mm256_add_epi32(_mm256_sub_epi32(up, up_left), unzigzag8(v));
      __m256i x;
      if (kAllCoded) {
        x = prefix_sum8(e, carry);
      } else {
        const __m256i uncoded = _mm256_cmpeq_epi32(v, uncoded_value);
        const __m256i sum = prefix_sum8(_mm256_andnot_si256(uncoded, e), zero);
        // Lane 0 starts from the element before the group unless it is uncoded itself; the
        // doubling steps then reach every lane from lane 0 or a nearer uncoded one.
        const __m256i before = _mm256_sub_epi32(zero, carry);  // so that sum - base = sum + carry
        const __m256i start_before = _mm256_andnot_si256(uncoded, first);
        __m256i base = _mm256_blendv_epi8(_mm256_and_si256(sum, uncoded), before, start_before);
        __m256i have = _mm256_or_si256(uncoded, first);
        for (int by : {1, 2, 4}) {
          const __m256i moved = lanes_up(base, by, before), moved_have = lanes_up(have, by, uncoded_value);
          base = _mm256_blendv_epi8(moved, base, have);
          have = _mm256_or_si256(have, moved_have);
        }
        x = _mm256_sub_epi32(sum, base);
      }
      _mm256_storeu_si256(reinterpret_cast<__m256i*>(q + j), x);
      carry = last_lane(x);
      keep_up_left = _mm256_set1_epi32(-1);
    }
    uint32_t left = uint32_t(_mm256_extract_epi32(carry, 0));
    for (; j < end; ++j) {
      const uint32_t value = u[j];
      const uint32_t up_left = j == i ? 0u : uint32_t(q[int64_t(j) - row - 1]);
      const uint32_t qv = left + (uint32_t(q[int64_t(j) - row]) - up_left + unzigzag_bits(value));
      left = kAllCoded || value != kUncodedValue ? qv : 0u;
      q[j] = int32_t(left);
    }
    i = end;
    col = 0;
  }
}
#endif

// 1 when some q, or some prediction q[i-1] + q[i-row] - q[i-row-1], is out of range. Checking
// the full three-term prediction everywhere, even where an element lacks a left neighbour,
// is stricter than needed, which only sends more chunks to the exact decoder.
ACTZIP_MULTIVERSION uint32_t lorenzo2d_out_of_range(const int32_t* q, uint32_t n, uint32_t row) {
  uint32_t bad = 0;
  for (uint32_t i = 0; i < n; ++i) {
    const uint32_t p = uint32_t(q[int64_t(i) - 1]) + uint32_t(q[int64_t(i) - row]) - uint32_t(q[int64_t(i) - row - 1]);
    bad |= out_of_range(uint32_t(q[i])) | out_of_range(p);
  }
  return bad;
}

}  // namespace

bool lorenzo2d_inverse(const uint32_t* u, uint32_t n, uint32_t row, uint32_t col0, bool all_coded, int32_t* q) {
  for (uint32_t j = 1; j <= row + 1; ++j) q[-int64_t(j)] = 0;  // neighbours outside the chunk
#if ACTZIP_AVX2_PASSES
  if (row >= 8 && avx2_passes) {
    if (all_coded) lorenzo2d_rows_avx2<true>(u, n, row, col0, q);
    else lorenzo2d_rows_avx2<false>(u, n, row, col0, q);
  } else
#endif
  if (all_coded) lorenzo2d_rows<true>(u, n, row, col0, q);
  else lorenzo2d_rows<false>(u, n, row, col0, q);
  // With every q and every prediction in range, the wrapping arithmetic above was exact
  // and no prediction needed clamping: q is what docs/FORMAT.md defines.
  return lorenzo2d_out_of_range(q, n, row) == 0;
}

namespace {

// One value of one lane: the table entry gives the code's length, the extra bits'
// count and their sum, and either the value (a direct symbol) or the class flag whose
// 1 << extra bits starts the value.
// kAlways false: refills only when fewer than `need` bits (as many as a value may take)
// wait, which after a refill is rare: the refill's load then leaves the chain of
// dependent steps, on a branch that is easy to predict.
template <bool kChecked, bool kAlways = true>
__attribute__((always_inline)) inline void decode_step(const uint32_t* table, BitReader& rd, uint32_t* out,
                                                       uint32_t need = 0) {
  if (!kAlways) {
    if (uint32_t(rd.available()) < need) rd.refill_unchecked();
  } else if (kChecked) {
    rd.refill();
  } else {
    rd.refill_unchecked();
  }
  const uint64_t bits = rd.peek();
  const uint32_t e = table[bits & (kDecodeTableSize - 1)];
  const uint32_t len = (e >> 12) & 15u, eb = (e >> 16) & 31u, total = (e >> 21) & 63u;
  rd.consume(total);
  const uint32_t extra = uint32_t(bits >> len) & ((1u << eb) - 1u);
  *out = (e & (1u << 27)) ? (1u << eb) + extra : (e & 0xFFFu);
}

// One step of one lane with the pair table: one or two values, lane positions pos and
// pos + 4 (the caller guarantees both exist).
template <bool kAlways = true>  // as decode_step's
__attribute__((always_inline)) inline void decode_pair_step(const uint32_t* pairs, BitReader& rd, uint32_t* u,
                                                            uint32_t& pos, uint32_t need = 0) {
  if (kAlways || uint32_t(rd.available()) < need) rd.refill_unchecked();
  const uint64_t bits = rd.peek();
  const uint32_t e = pairs[bits & (kDecodeTableSize - 1)];
  rd.consume(e & 63u);
  if (e & kPairClass) {
    const uint32_t eb = (e >> 8) & 31u, len = (e >> 13) & 15u;
    u[pos] = (1u << eb) + (uint32_t(bits >> len) & ((1u << eb) - 1u));
    pos += 4;
  } else {
    u[pos] = (e >> 8) & 1023u;
    u[pos + 4] = (e >> 18) & 1023u;
    pos += 4 + ((e >> 4) & 4u);  // bit 6: two values
  }
}

// One value a step: for codes too long to pair often. `need`: the most bits a step takes.
__attribute__((always_inline)) inline void decode_singles(const uint32_t* table, BitReader& r0, BitReader& r1,
                                                          BitReader& r2, BitReader& r3, uint32_t n, uint32_t* u,
                                                          uint32_t need) {
  uint32_t t = 0;
  while (t + 4 <= n) {
    // Groups of four whose refills need no bounds check: each refill advances at most 7
    // bytes and needs 8 readable.
    uint64_t safe = (n - t) / 4;
    for (const BitReader* r : {&r0, &r1, &r2, &r3})
      safe = std::min<uint64_t>(safe, r->bytes_left() >= 8 ? (r->bytes_left() - 8) / 7 + 1 : 0);
    if (safe == 0) {
      decode_step<true>(table, r0, u + t);
      decode_step<true>(table, r1, u + t + 1);
      decode_step<true>(table, r2, u + t + 2);
      decode_step<true>(table, r3, u + t + 3);
      t += 4;
      continue;
    }
    const uint32_t end = t + 4 * uint32_t(safe);
    for (; t + 8 <= end; t += 8) {  // four independent chains; the second steps mostly skip the refill
      decode_step<false>(table, r0, u + t);
      decode_step<false>(table, r1, u + t + 1);
      decode_step<false>(table, r2, u + t + 2);
      decode_step<false>(table, r3, u + t + 3);
      decode_step<false, false>(table, r0, u + t + 4, need);
      decode_step<false, false>(table, r1, u + t + 5, need);
      decode_step<false, false>(table, r2, u + t + 6, need);
      decode_step<false, false>(table, r3, u + t + 7, need);
    }
    for (; t < end; t += 4) {  // four independent chains
      decode_step<false>(table, r0, u + t);
      decode_step<false>(table, r1, u + t + 1);
      decode_step<false>(table, r2, u + t + 2);
      decode_step<false>(table, r3, u + t + 3);
    }
  }
  if (t < n) decode_step<true>(table, r0, u + t), ++t;
  if (t < n) decode_step<true>(table, r1, u + t), ++t;
  if (t < n) decode_step<true>(table, r2, u + t), ++t;
}

// One or two values a step. `need`: the most bits a step takes.
__attribute__((always_inline)) inline void decode_pairs(const uint32_t* table, const uint32_t* pairs, BitReader& r0,
                                                        BitReader& r1, BitReader& r2, BitReader& r3, uint32_t n,
                                                        uint32_t* u, uint32_t need) {
  // Lane l decodes the values l, l + 4, l + 8, ...; pos_l is its next one. The lanes
  // advance by one or two values a step, so they drift apart a little; each finishes on
  // its own.
  uint32_t pos0 = 0, pos1 = 1, pos2 = 2, pos3 = 3;
  auto left = [n](uint32_t pos) { return pos < n ? (n - pos + 3) / 4 : 0u; };
  for (;;) {
    // Steps that can run unchecked: every lane keeps two values to go, and its refills
    // (at most 7 bytes each, 8 readable) stay inside its section.
    uint64_t steps = std::min({left(pos0), left(pos1), left(pos2), left(pos3)}) / 2;
    for (const BitReader* r : {&r0, &r1, &r2, &r3})
      steps = std::min<uint64_t>(steps, r->bytes_left() >= 8 ? (r->bytes_left() - 8) / 7 + 1 : 0);
    if (steps == 0) break;
    uint64_t s = 0;
    for (; s + 2 <= steps; s += 2) {  // four independent chains; the second steps mostly skip the refill
      decode_pair_step(pairs, r0, u, pos0);
      decode_pair_step(pairs, r1, u, pos1);
      decode_pair_step(pairs, r2, u, pos2);
      decode_pair_step(pairs, r3, u, pos3);
      decode_pair_step<false>(pairs, r0, u, pos0, need);
      decode_pair_step<false>(pairs, r1, u, pos1, need);
      decode_pair_step<false>(pairs, r2, u, pos2, need);
      decode_pair_step<false>(pairs, r3, u, pos3, need);
    }
    for (; s < steps; ++s) {  // four independent chains
      decode_pair_step(pairs, r0, u, pos0);
      decode_pair_step(pairs, r1, u, pos1);
      decode_pair_step(pairs, r2, u, pos2);
      decode_pair_step(pairs, r3, u, pos3);
    }
  }
  for (; pos0 < n; pos0 += 4) decode_step<true>(table, r0, u + pos0);
  for (; pos1 < n; pos1 += 4) decode_step<true>(table, r1, u + pos1);
  for (; pos2 < n; pos2 += 4) decode_step<true>(table, r2, u + pos2);
  for (; pos3 < n; pos3 += 4) decode_step<true>(table, r3, u + pos3);
}

__attribute__((always_inline)) inline bool decode_lanes_body(const uint32_t* table, const uint32_t* pairs,
                                                             uint32_t need, BitReader* lanes, uint32_t n,
                                                             uint32_t* u) {
  static_assert(kCodeLanes == 4, "the loops read four lanes");
  // Locals, not the array, so that the readers live in registers.
  BitReader r0 = lanes[0], r1 = lanes[1], r2 = lanes[2], r3 = lanes[3];
  if (pairs) decode_pairs(table, pairs, r0, r1, r2, r3, n, u, need);
  else decode_singles(table, r0, r1, r2, r3, n, u, need);
  lanes[0] = r0;
  lanes[1] = r1;
  lanes[2] = r2;
  lanes[3] = r3;
  // An invalid code decodes to 2^31 or more, which no valid value reaches (2^25 at most).
  uint32_t bad = 0;
  for (uint32_t i = 0; i < n; ++i) bad |= u[i] >> 31;
  return bad == 0;
}

#if ACTZIP_AVX2_PASSES
ACTZIP_TARGET_BMI2 bool decode_lanes_bmi2(const uint32_t* table, const uint32_t* pairs, uint32_t need,
                                          BitReader* lanes, uint32_t n, uint32_t* u) {
  return decode_lanes_body(table, pairs, need, lanes, n, u);
}
#endif

}  // namespace

void build_value_table(const HuffmanDecoder& code, int k, uint32_t* table) {
  const uint32_t direct = 1u << k;
  for (uint32_t j = 0; j < kDecodeTableSize; ++j) {
    const uint32_t e = code.table[j];
    const uint32_t len = e >> 12, sym = e & 0xFFFu;
    if (len == 0) {
      table[j] = (31u << 16) | (1u << 27);
      continue;
    }
    const bool is_class = sym >= direct;
    const uint32_t eb = is_class ? sym - direct + uint32_t(k) : 0;
    table[j] = (is_class ? 0u : sym) | (len << 12) | (eb << 16) | ((len + eb) << 21) | (uint32_t(is_class) << 27);
  }
}

uint32_t build_pair_table(const uint32_t* table, uint32_t* pairs) {
  uint32_t two = 0;
  for (uint32_t j = 0; j < kDecodeTableSize; ++j) {
    const uint32_t e = table[j];
    const uint32_t len = (e >> 12) & 15u, eb = (e >> 16) & 31u, total = (e >> 21) & 63u;
    if (e & (1u << 27)) {  // a class (or no code: 31 extra bits, nothing consumed)
      pairs[j] = total | kPairClass | (eb << 8) | (len << 13);
      continue;
    }
    uint32_t entry = len | ((e & 0xFFFu) << 8);
    // The bits after the first code decide a second one if its code fits in them.
    const uint32_t e2 = table[j >> len];
    const uint32_t len2 = (e2 >> 12) & 15u;
    if (!(e2 & (1u << 27)) && len2 != 0 && len + len2 <= kMaxCodeLen)
      entry = (len + len2) | (1u << 6) | ((e & 0xFFFu) << 8) | ((e2 & 0xFFFu) << 18);
    pairs[j] = entry;
    two += (entry >> 6) & 1u;
  }
  return two;
}

uint32_t max_value_bits(const uint32_t* table) {
  uint32_t most = 0;
  for (uint32_t j = 0; j < kDecodeTableSize; ++j) most = std::max(most, (table[j] >> 21) & 63u);
  return most;
}

bool huffman_decode_lanes(const uint32_t* table, const uint32_t* pairs, uint32_t max_bits, BitReader* lanes,
                          uint32_t n, uint32_t* u) {
  // A step takes at most max_bits (a pair step that yields two values at most
  // kMaxCodeLen); a refill leaves at least 56.
  const uint32_t need = std::min<uint32_t>(std::max<uint32_t>(max_bits, kMaxCodeLen), 56);
#if ACTZIP_AVX2_PASSES
  if (bmi2_passes) return decode_lanes_bmi2(table, pairs, need, lanes, n, u);
#endif
  return decode_lanes_body(table, pairs, need, lanes, n, u);
}

bool avx2_passes_on() {
#if ACTZIP_AVX2_PASSES
  return avx2_passes;
#else
  return false;
#endif
}

void force_portable_passes(bool on) {
#if ACTZIP_AVX2_PASSES
  avx2_passes = !on && cpu_has_avx2();
  f16c_passes = !on && cpu_has_f16c();
  bmi2_passes = !on && cpu_has_bmi2();
  pext_passes = !on && cpu_has_fast_pext();
#else
  (void)on;
#endif
}

void force_table_bits(bool on) {
#if ACTZIP_AVX2_PASSES
  pext_passes = !on && avx2_passes && cpu_has_fast_pext();
#else
  (void)on;
#endif
}

}  // namespace detail
}  // namespace actzip
