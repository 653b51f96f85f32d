// Little-endian field helpers (also for the GPU: any alignment, byte by byte) and LSB-first
// bit streams (docs/FORMAT.md section 5).
#pragma once

#include <cstdint>
#include <cstring>

#include "codec/hd.h"

namespace actzip {
namespace detail {

ACTZIP_HD void put_u8(uint8_t* p, uint8_t v) { p[0] = v; }
ACTZIP_HD void put_u16(uint8_t* p, uint16_t v) {
  p[0] = uint8_t(v);
  p[1] = uint8_t(v >> 8);
}
ACTZIP_HD void put_u32(uint8_t* p, uint32_t v) {
  for (int i = 0; i < 4; ++i) p[i] = uint8_t(v >> (8 * i));
}
ACTZIP_HD void put_u64(uint8_t* p, uint64_t v) {
  for (int i = 0; i < 8; ++i) p[i] = uint8_t(v >> (8 * i));
}
ACTZIP_HD uint16_t get_u16(const uint8_t* p) { return uint16_t(p[0] | (p[1] << 8)); }
ACTZIP_HD uint32_t get_u32(const uint8_t* p) {
  return uint32_t(p[0]) | (uint32_t(p[1]) << 8) | (uint32_t(p[2]) << 16) | (uint32_t(p[3]) << 24);
}
ACTZIP_HD uint64_t get_u64(const uint8_t* p) {
  return uint64_t(get_u32(p)) | (uint64_t(get_u32(p + 4)) << 32);
}
inline void put_f64(uint8_t* p, double v) {
  uint64_t u;
  std::memcpy(&u, &v, 8);
  put_u64(p, u);
}
inline double get_f64(const uint8_t* p) {
  const uint64_t u = get_u64(p);
  double v;
  std::memcpy(&v, &u, 8);
  return v;
}

// Unaligned little-endian 64-bit load for the hot paths (x86 and little-endian ARM).
ACTZIP_HD uint64_t load_le64(const uint8_t* p) {
  uint64_t v;
  std::memcpy(&v, p, 8);
#if defined(__BYTE_ORDER__) && __BYTE_ORDER__ == __ORDER_BIG_ENDIAN__
  v = __builtin_bswap64(v);
#endif
  return v;
}
inline void store_le32(uint8_t* p, uint32_t v) {
#if defined(__BYTE_ORDER__) && __BYTE_ORDER__ == __ORDER_BIG_ENDIAN__
  v = __builtin_bswap32(v);
#endif
  std::memcpy(p, &v, 4);
}

ACTZIP_HD constexpr uint64_t pad8(uint64_t n) { return (n + 7) & ~uint64_t(7); }

// Branch-free bit writer for the hot loops: every put() stores 8 bytes, so the buffer must
// have 8 bytes of slack past the longest stream written into it (callers size it so).
// Puts of at most 56 bits never fill the 64-bit accumulator, so a put is one store and
// three shifts, with no case for a full one.
class FastBitWriter {
 public:
  explicit FastBitWriter(uint8_t* begin) : begin_(begin), p_(begin) {}
  // Appends the low `nbits` bits of `value` (value < 2^nbits, nbits <= 56).
  void put(uint64_t value, uint32_t nbits) {
    acc_ |= value << fill_;
    fill_ += nbits;
    std::memcpy(p_, &acc_, 8);  // little-endian hosts (checked at compile time below)
    p_ += fill_ >> 3;
    acc_ >>= fill_ & 56u;
    fill_ &= 7u;
  }
  // Writes the last partial byte; returns the bytes written.
  uint64_t flush() {
    std::memcpy(p_, &acc_, 8);
    return uint64_t(p_ - begin_) + (fill_ > 0 ? 1 : 0);
  }

 private:
  uint8_t* begin_;
  uint8_t* p_;
  uint64_t acc_ = 0;
  uint32_t fill_ = 0;  // bits waiting in acc_, below 8 between puts
};
#if defined(__BYTE_ORDER__) && __BYTE_ORDER__ == __ORDER_BIG_ENDIAN__
#error "FastBitWriter assumes a little-endian host"
#endif

// Reads bits LSB first from [begin, end). Past the end it supplies zero bits and counts
// them, so a hostile stream can never make it read outside the section; overran() tells.
// Used by the CPU backend and, through cpp/codec/chunk.h, by the CUDA kernels.
class BitReader {
 public:
  ACTZIP_HD BitReader() : begin_(nullptr), p_(nullptr), end_(nullptr) {}  // an empty section
  ACTZIP_HD BitReader(const uint8_t* begin, const uint8_t* end) : begin_(begin), p_(begin), end_(end) {}

  // Ensures at least 56 bits are buffered.
  ACTZIP_HD void refill() {
    if (end_ - p_ >= 8) {
      buf_ |= load_le64(p_) << fill_;
      p_ += (63 - fill_) >> 3;
      fill_ |= 56;
      return;
    }
    while (fill_ <= 56) {
      uint64_t byte = 0;
      if (p_ < end_) {
        byte = *p_++;
      } else {
        ++virtual_bytes_;
      }
      buf_ |= byte << fill_;
      fill_ += 8;
    }
  }
  // refill() for a reader with at least 8 bytes left (bytes_left() >= 8); advances at most 7.
  ACTZIP_HD void refill_unchecked() {
    buf_ |= load_le64(p_) << fill_;
    p_ += (63 - fill_) >> 3;
    fill_ |= 56;
  }
  ACTZIP_HD uint64_t bytes_left() const { return uint64_t(end_ - p_); }
  ACTZIP_HD uint64_t peek() const { return buf_; }
  ACTZIP_HD int available() const { return int(fill_); }
  ACTZIP_HD void consume(int nbits) { consume(uint32_t(nbits)); }
  ACTZIP_HD void consume(uint32_t nbits) {
    buf_ >>= nbits;
    fill_ -= nbits;
  }
  ACTZIP_HD uint32_t take(int nbits) {  // nbits <= 32, requires available() >= nbits
    const uint32_t v = nbits == 0 ? 0u : uint32_t(buf_ & ((uint64_t(1) << nbits) - 1));
    consume(nbits);
    return v;
  }
  // True when the bits consumed so far run past the end of the section.
  ACTZIP_HD bool overran() const { return uint64_t(virtual_bytes_) * 8 > fill_; }
  // Bits consumed since construction (the supplied zero bits past the end included), so
  // that hot loops need not count them.
  ACTZIP_HD uint64_t consumed_bits() const { return (uint64_t(p_ - begin_) + virtual_bytes_) * 8 - fill_; }
  // The bits consumed fill a section of `section_bytes` exactly up to its zero padding
  // (docs/FORMAT.md section 5), and none was read past its end.
  ACTZIP_HD bool fits(uint64_t section_bytes) const {
    return !overran() && pad8((consumed_bits() + 7) / 8) == section_bytes;
  }

 private:
  const uint8_t* begin_;
  const uint8_t* p_;
  const uint8_t* end_;
  uint64_t buf_ = 0;
  uint64_t fill_ = 0;  // unsigned and full width: no sign extension in the hot loops
  uint64_t virtual_bytes_ = 0;
};

}  // namespace detail
}  // namespace actzip
