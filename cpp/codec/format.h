// Reading, writing and validating stream headers and chunk headers (docs/FORMAT.md).
#pragma once

#include <cstdint>
#include <vector>

#include "actzip/actzip.h"

namespace actzip {
namespace detail {

inline constexpr uint8_t kMagic[4] = {'A', 'Z', 'I', 'P'};
inline constexpr uint16_t kFlagPayloadChecksum = 1;
inline constexpr uint32_t kChunkHeaderBytes = 16;
inline constexpr uint32_t kFixedHeaderBytes = 40;
inline constexpr uint32_t kCodeLanes = 4;          // interleaved bit streams of a code section
// The code section's table: each lane's length, the sign stream's length, the zero map's length.
inline constexpr uint32_t kLaneTableBytes = 4 * kCodeLanes + 8;

enum ChunkKind : uint8_t { kChunkRaw = 0, kChunkCoded = 1, kChunkZero = 2 };
inline constexpr uint8_t kChunkLorenzo = 1;
inline constexpr uint8_t kChunkHasMask = 2;
inline constexpr uint8_t kChunkLorenzo2D = 4;  // the 2-D predictor over rows of shape[-1]
inline constexpr uint8_t kChunkZeroMap = 8;    // the code section maps the values that are 0 (version 2)
inline constexpr uint16_t kFirstZeroMapVersion = 2;
// 2-D prediction is considered for rows of at most this many elements (the sample then
// needs a row of context before each run).
inline constexpr uint32_t kMax2DRow = 128;

struct Header {
  uint16_t version = kFormatVersion;  // written as kFormatVersion; parsed: 1 or 2
  uint16_t flags = 0;
  DType dtype = DType::kFloat32;
  BoundMode mode = BoundMode::kAbs;
  int direct_log2 = 0;
  double requested_bound = 0;
  double error_bound = 0;
  float quant_step = 0;  // the quantization step
  std::vector<uint64_t> shape;
  uint64_t numel = 0;
  uint32_t num_chunks = 0;
  std::vector<uint8_t> mask_lengths;  // one per mask symbol present in the codebook
  std::vector<uint8_t> code_lengths;
  std::vector<uint8_t> zmap_lengths;  // zero-map bytes' code lengths (version 2)
  std::vector<uint64_t> chunk_end;    // relative to the payload start
  uint64_t header_bytes = 0;
};

struct ChunkHeader {
  uint8_t kind = kChunkZero;
  uint8_t flags = 0;
  uint32_t outliers = 0;
  uint32_t mask_bytes = 0;
  uint32_t code_bytes = 0;
};

// The quantization step for an absolute bound (docs/FORMAT.md section 3): the largest
// binary32 value of at most 8 significant bits, M * 2^E with M < 256 and E >= -149, that
// does not exceed 2 * error_bound (2^-149 when 2 * error_bound is smaller still).
float quant_step_for(double error_bound);

// The product of `ndim` extents in *numel; false (*numel unset) when it is kMaxElements or
// more. Every shape the codec takes or reads passes through here.
bool count_elements(const uint64_t* extents, size_t ndim, uint64_t* numel);

uint32_t chunk_count(uint64_t numel);
uint32_t chunk_elem_count(uint64_t numel, uint32_t chunk);

// Bytes the header occupies (a multiple of 8), chunk table and checksum included.
uint64_t header_size(size_t ndim, size_t mask_symbols, size_t code_symbols, size_t zmap_symbols, uint32_t num_chunks);

// Writes the header (h.header_bytes must be header_size(...)) including its CRC.
void write_header(const Header& h, uint8_t* out);

// Parses and validates a stream's header against its total length.
Status parse_header(const uint8_t* stream, uint64_t stream_bytes, Header* h);

// Length in bytes of a chunk with this header and element count.
uint64_t chunk_length(const ChunkHeader& ch, uint32_t elems, size_t elem_size);
void write_chunk_header(const ChunkHeader& ch, uint8_t* out);
// Parses a chunk header of a stream of format `version` and checks it against the chunk's
// span in the chunk table.
Status parse_chunk_header(const uint8_t* chunk, uint64_t span, uint32_t elems, size_t elem_size, uint16_t version,
                          ChunkHeader* ch);

Status format_error(const char* fmt, ...);

}  // namespace detail
}  // namespace actzip
