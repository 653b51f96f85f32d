// Two-valued masks packed to one bit an element (include/actzip/actzip.h).
#include <algorithm>
#include <atomic>
#include <cstring>

#include "actzip/actzip.h"
#include "cpu/passes.h"
#include "cpu/thread_pool.h"

namespace actzip {
namespace {

#if ACTZIP_AVX2_PASSES
// 32-bit masks, 32 elements at a time; both return the elements done (a multiple of 32).
// Lanes reversed before the movemask put the first element in the high bit.
ACTZIP_TARGET_AVX2 uint64_t pack32_avx2(const uint32_t* in, uint64_t n, uint32_t value, uint8_t* out, bool* ok) {
  const __m256i zero = _mm256_setzero_si256(), v = _mm256_set1_epi32(int(value));
  const __m256i reverse = _mm256_setr_epi32(7, 6, 5, 4, 3, 2, 1, 0);
  __m256i known = _mm256_set1_epi32(-1);  // lanes that held +0.0 or `value` only
  uint64_t i = 0;
  for (; i + 32 <= n; i += 32) {
    uint32_t bytes = 0;
    for (int k = 0; k < 4; ++k) {
      const __m256i x = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(in + i + 8 * k));
      const __m256i is_zero = _mm256_cmpeq_epi32(x, zero);
      known = _mm256_and_si256(known, _mm256_or_si256(is_zero, _mm256_cmpeq_epi32(x, v)));
      // movemask of is_zero, lanes reversed, complemented: bit 7 - j set where x[j] != 0.
      bytes |= (~uint32_t(_mm256_movemask_ps(_mm256_castsi256_ps(_mm256_permutevar8x32_epi32(is_zero, reverse)))) &
                0xFFu) << (8 * k);
    }
    std::memcpy(out + i / 8, &bytes, 4);
  }
  *ok = _mm256_movemask_epi8(known) == -1;
  return i;
}

ACTZIP_TARGET_AVX2 uint64_t unpack32_avx2(const uint8_t* bits, uint64_t n, uint32_t value, uint32_t* out) {
  const __m256i select = _mm256_setr_epi32(128, 64, 32, 16, 8, 4, 2, 1), v = _mm256_set1_epi32(int(value));
  uint64_t i = 0;
  for (; i + 32 <= n; i += 32) {
    for (int k = 0; k < 4; ++k) {
      const __m256i b = _mm256_and_si256(_mm256_set1_epi32(bits[i / 8 + k]), select);
      _mm256_storeu_si256(reinterpret_cast<__m256i*>(out + i + 8 * k),
                          _mm256_and_si256(_mm256_cmpeq_epi32(b, select), v));
    }
  }
  return i;
}
#endif

// Elements a job packs: whole bytes, enough to pay for handing the job to a thread.
constexpr uint64_t kMaskBlock = uint64_t(1) << 18;

template <class Bits>
Bits load_bits(const uint8_t* p) {
  Bits b;
  std::memcpy(&b, p, sizeof b);
  return b;
}

// Packs elements [begin, end) (begin a multiple of 8). Returns false on an element that is
// neither +0.0 nor `value`; `value` is the first non-zero bit pattern seen when *value is 0.
template <class Bits>
bool pack_range(const uint8_t* data, uint64_t begin, uint64_t end, Bits value, uint8_t* out) {
  const Bits* in = reinterpret_cast<const Bits*>(data);
#if ACTZIP_AVX2_PASSES
  if (sizeof(Bits) == 4 && detail::avx2_passes_on()) {
    bool ok = true;
    begin += pack32_avx2(reinterpret_cast<const uint32_t*>(in) + begin, end - begin, uint32_t(value), out + begin / 8, &ok);
    if (!ok) return false;
  }
#endif
  for (uint64_t i = begin; i < end; i += 8) {
    const uint64_t m = std::min<uint64_t>(8, end - i);
    unsigned byte = 0;
    bool ok = true;
    for (uint64_t b = 0; b < m; ++b) {
      Bits x;
      std::memcpy(&x, in + i + b, sizeof x);
      ok &= (x == 0) | (x == value);
      byte |= unsigned(x != 0) << (7 - b);  // first element in the high bit, as numpy.packbits
    }
    if (!ok) return false;
    out[i / 8] = uint8_t(byte);
  }
  return true;
}

template <class Bits>
void unpack_range(const uint8_t* bits, uint64_t begin, uint64_t end, Bits value, uint8_t* out) {
  Bits* o = reinterpret_cast<Bits*>(out);
#if ACTZIP_AVX2_PASSES
  if (sizeof(Bits) == 4 && detail::avx2_passes_on())
    begin += unpack32_avx2(bits + begin / 8, end - begin, uint32_t(value), reinterpret_cast<uint32_t*>(o) + begin);
#endif
  for (uint64_t i = begin; i < end; ++i) {
    const Bits x = ((bits[i / 8] >> (7 - i % 8)) & 1) ? value : Bits(0);
    std::memcpy(o + i, &x, sizeof x);
  }
}

// The first non-zero bit pattern, or 0.
template <class Bits>
Bits first_nonzero(const uint8_t* data, uint64_t n) {
  const Bits* in = reinterpret_cast<const Bits*>(data);
  for (uint64_t i = 0; i < n; ++i) {
    Bits x;
    std::memcpy(&x, in + i, sizeof x);
    if (x != 0) return x;
  }
  return 0;
}

bool is_finite_bits(DType dtype, uint32_t bits) {
  switch (dtype) {
    case DType::kFloat32: return (bits & 0x7F800000u) != 0x7F800000u;
    case DType::kFloat16: return (bits & 0x7C00u) != 0x7C00u;
    default: return (bits & 0x7F80u) != 0x7F80u;
  }
}

template <class Bits>
bool pack_all(const uint8_t* data, uint64_t n, Bits value, uint8_t* out, int threads) {
  const uint64_t blocks = (n + kMaskBlock - 1) / kMaskBlock;
  std::atomic<bool> ok{true};
  detail::parallel_for(int64_t(blocks), std::min<int64_t>(threads, int64_t(blocks)), [&](int64_t k, int) {
    const uint64_t begin = uint64_t(k) * kMaskBlock, end = std::min(n, begin + kMaskBlock);
    if (ok.load(std::memory_order_relaxed) && !pack_range<Bits>(data, begin, end, value, out))
      ok.store(false, std::memory_order_relaxed);
  });
  return ok.load();
}

template <class Bits>
void unpack_all(const uint8_t* bits, uint64_t n, Bits value, uint8_t* out, int threads) {
  const uint64_t blocks = (n + kMaskBlock - 1) / kMaskBlock;
  detail::parallel_for(int64_t(blocks), std::min<int64_t>(threads, int64_t(blocks)), [&](int64_t k, int) {
    const uint64_t begin = uint64_t(k) * kMaskBlock;
    unpack_range<Bits>(bits, begin, std::min(n, begin + kMaskBlock), value, out);
  });
}

Status check_dtype(DType dtype) {
  if (element_size(dtype) == 0) return Status{StatusCode::kInvalidArgument, "unknown dtype"};
  return Status::Ok();
}

}  // namespace

Status pack_mask(const void* data, DType dtype, uint64_t numel, uint8_t* out, uint64_t out_bytes, bool* packed,
                 uint32_t* value_bits, int num_threads) {
  Status s = check_dtype(dtype);
  if (!s.ok()) return s;
  if (out_bytes < (numel + 7) / 8)
    return Status{StatusCode::kBufferTooSmall, "pack_mask: the output needs one byte per 8 elements"};
  const auto* bytes = static_cast<const uint8_t*>(data);
  const bool wide = dtype == DType::kFloat32;
  const uint32_t value = wide ? first_nonzero<uint32_t>(bytes, numel) : first_nonzero<uint16_t>(bytes, numel);
  *value_bits = value;
  // -0.0 and NaN or infinite values are not a mask's: the caller compresses those.
  const uint32_t sign = wide ? 0x80000000u : 0x8000u;
  if (value == sign || !is_finite_bits(dtype, value)) {
    *packed = false;
    return Status::Ok();
  }
  const int threads = std::max(1, num_threads);
  *packed = wide ? pack_all<uint32_t>(bytes, numel, value, out, threads)
                 : pack_all<uint16_t>(bytes, numel, uint16_t(value), out, threads);
  return Status::Ok();
}

Status unpack_mask(const uint8_t* bits, uint64_t bits_bytes, DType dtype, uint64_t numel, uint32_t value_bits,
                   void* out, uint64_t out_bytes, int num_threads) {
  Status s = check_dtype(dtype);
  if (!s.ok()) return s;
  if (bits_bytes < (numel + 7) / 8)
    return Status{StatusCode::kInvalidArgument, "unpack_mask: fewer mask bytes than the elements need"};
  if (out_bytes < numel * element_size(dtype))
    return Status{StatusCode::kBufferTooSmall, "unpack_mask: the output is smaller than numel elements"};
  if (dtype != DType::kFloat32 && value_bits > 0xFFFFu)
    return Status{StatusCode::kInvalidArgument, "unpack_mask: a 16-bit value must fit in 16 bits"};
  const int threads = std::max(1, num_threads);
  auto* o = static_cast<uint8_t*>(out);
  if (dtype == DType::kFloat32) unpack_all<uint32_t>(bits, numel, value_bits, o, threads);
  else unpack_all<uint16_t>(bits, numel, uint16_t(value_bits), o, threads);
  return Status::Ok();
}

}  // namespace actzip
