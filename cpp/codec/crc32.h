// CRC-32 (ISO-HDLC; the one zlib's crc32 computes), docs/FORMAT.md section 7.
#pragma once

#include <cstddef>
#include <cstdint>

namespace actzip {
namespace detail {

// Continues a CRC: crc32(crc32(0, a), b) == crc32 of a followed by b.
uint32_t crc32(uint32_t crc, const uint8_t* data, size_t size);

}  // namespace detail
}  // namespace actzip
