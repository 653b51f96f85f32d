#include "codec/format.h"

#include <algorithm>
#include <cmath>
#include <cstdarg>
#include <cstdio>
#include <cstring>

#include "codec/bitio.h"
#include "codec/crc32.h"
#include "codec/element.h"
#include "codec/huffman.h"

namespace actzip {
namespace detail {

Status format_error(const char* fmt, ...) {
  char buf[256];
  va_list args;
  va_start(args, fmt);
  std::vsnprintf(buf, sizeof buf, fmt, args);
  va_end(args);
  return Status{StatusCode::kFormatError, buf};
}

float quant_step_for(double error_bound) { return quant_step_hd(error_bound); }

bool count_elements(const uint64_t* extents, size_t ndim, uint64_t* numel) {
  uint64_t n = 1;
  for (size_t d = 0; d < ndim; ++d) {
    const uint64_t extent = extents[d];
    if (extent >= kMaxElements || (extent != 0 && n > (kMaxElements - 1) / extent)) return false;
    n *= extent;
  }
  *numel = n;
  return true;
}

static_assert((kMaxElements - 1) / kChunkElems + 1 <= UINT32_MAX, "chunk counts must fit 32 bits");
uint32_t chunk_count(uint64_t numel) { return uint32_t((numel + kChunkElems - 1) / kChunkElems); }

uint32_t chunk_elem_count(uint64_t numel, uint32_t chunk) {
  const uint64_t begin = uint64_t(chunk) * kChunkElems;
  const uint64_t left = numel - begin;
  return left < kChunkElems ? uint32_t(left) : kChunkElems;
}

uint64_t header_size(size_t ndim, size_t mask_symbols, size_t code_symbols, size_t zmap_symbols, uint32_t num_chunks) {
  const uint64_t books = 2 + (mask_symbols + 1) / 2 + 2 + (code_symbols + 1) / 2 + 2 + (zmap_symbols + 1) / 2;
  return pad8(kFixedHeaderBytes + 8 * ndim + books) + 8 * uint64_t(num_chunks) + 8;
}

namespace {
void put_nibbles(uint8_t* p, const std::vector<uint8_t>& lengths) {
  for (size_t i = 0; i < lengths.size(); i += 2) {
    const uint8_t lo = lengths[i];
    const uint8_t hi = i + 1 < lengths.size() ? lengths[i + 1] : 0;
    p[i / 2] = uint8_t(lo | (hi << 4));
  }
}
}  // namespace

void write_header(const Header& h, uint8_t* out) {
  uint32_t step_bits = 0;
  std::memset(out, 0, h.header_bytes);
  std::memcpy(out, kMagic, 4);
  put_u16(out + 4, kFormatVersion);
  put_u16(out + 6, h.flags);
  put_u32(out + 8, uint32_t(h.header_bytes));
  put_u8(out + 12, uint8_t(h.dtype));
  put_u8(out + 13, uint8_t(h.shape.size()));
  put_u8(out + 14, uint8_t(h.mode));
  put_u8(out + 15, uint8_t(h.direct_log2));
  put_f64(out + 16, h.requested_bound);
  put_f64(out + 24, h.error_bound);
  std::memcpy(&step_bits, &h.quant_step, 4);
  put_u32(out + 32, step_bits);
  put_u32(out + 36, kChunkElems);
  uint8_t* p = out + kFixedHeaderBytes;
  for (uint64_t d : h.shape) {
    put_u64(p, d);
    p += 8;
  }
  put_u16(p, uint16_t(h.mask_lengths.size()));
  put_nibbles(p + 2, h.mask_lengths);
  p += 2 + (h.mask_lengths.size() + 1) / 2;
  put_u16(p, uint16_t(h.code_lengths.size()));
  put_nibbles(p + 2, h.code_lengths);
  p += 2 + (h.code_lengths.size() + 1) / 2;
  put_u16(p, uint16_t(h.zmap_lengths.size()));
  put_nibbles(p + 2, h.zmap_lengths);
  p += 2 + (h.zmap_lengths.size() + 1) / 2;
  p = out + pad8(uint64_t(p - out));
  for (uint64_t end : h.chunk_end) {
    put_u64(p, end);
    p += 8;
  }
  put_u32(p, crc32(0, out, size_t(p - out)));
}

Status parse_header(const uint8_t* s, uint64_t size, Header* h) {
  if (size < kFixedHeaderBytes)
    return format_error("stream of %llu bytes is shorter than the %u-byte fixed header",
                        (unsigned long long)size, kFixedHeaderBytes);
  if (std::memcmp(s, kMagic, 4) != 0) return format_error("not an actzip stream (bad magic)");
  const uint16_t version = get_u16(s + 4);
  if (version < 1 || version > kFormatVersion)
    return format_error("unsupported format version %u (this build reads 1 to %u)", version, kFormatVersion);
  h->version = version;
  h->flags = get_u16(s + 6);
  if (h->flags & ~kFlagPayloadChecksum) return format_error("unknown flag bits 0x%04x", h->flags);
  h->header_bytes = get_u32(s + 8);
  if (h->header_bytes % 8 != 0 || h->header_bytes > size)
    return format_error("header length %llu is not a multiple of 8 within the %llu-byte stream",
                        (unsigned long long)h->header_bytes, (unsigned long long)size);
  const uint8_t dtype = s[12];
  if (dtype < 1 || dtype > 3) return format_error("unknown dtype code %u", dtype);
  h->dtype = DType(dtype);
  const uint8_t ndim = s[13];
  if (ndim > kMaxDims) return format_error("ndim %u exceeds %d", ndim, kMaxDims);
  if (s[14] > 1) return format_error("unknown bound mode %u", s[14]);
  h->mode = BoundMode(s[14]);
  h->direct_log2 = s[15];
  if (h->direct_log2 > kMaxDirectLog2) return format_error("direct_log2 %d exceeds %d", h->direct_log2, kMaxDirectLog2);
  h->requested_bound = get_f64(s + 16);
  h->error_bound = get_f64(s + 24);
  if (!(std::isfinite(h->requested_bound) && h->requested_bound > 0))
    return format_error("requested bound is not a positive finite number");
  if (!(std::isfinite(h->error_bound) && h->error_bound > 0))
    return format_error("error bound is not a positive finite number");
  const uint32_t step_bits = get_u32(s + 32);
  std::memcpy(&h->quant_step, &step_bits, 4);
  const float expected_step = quant_step_for(h->error_bound);
  if (std::memcmp(&expected_step, &h->quant_step, 4) != 0)
    return format_error("quantization step %a does not match the error bound", double(h->quant_step));
  if (get_u32(s + 36) != kChunkElems)
    return format_error("chunk size %u is not the %u elements of the format", get_u32(s + 36), kChunkElems);

  uint64_t pos = kFixedHeaderBytes;
  auto need = [&](uint64_t bytes) { return bytes <= h->header_bytes && pos <= h->header_bytes - bytes; };
  if (!need(8 * uint64_t(ndim))) return format_error("header too short for %u extents", ndim);
  h->shape.assign(ndim, 0);
  for (int d = 0; d < ndim; ++d, pos += 8) h->shape[d] = get_u64(s + pos);
  if (!count_elements(h->shape.data(), ndim, &h->numel)) return format_error("shape has 2^45 elements or more");
  const int books = version >= kFirstZeroMapVersion ? 3 : 2;  // mask, code, zero map
  h->zmap_lengths.clear();
  for (int book = 0; book < books; ++book) {
    if (!need(2)) return format_error("header too short for the codebooks");
    const uint32_t count = get_u16(s + pos);
    pos += 2;
    const uint32_t limit = book == 1 ? code_alphabet(h->direct_log2) : 256u;
    if (count > limit) return format_error("codebook of %u symbols exceeds %u", count, limit);
    if (!need((count + 1) / 2)) return format_error("header too short for the codebooks");
    auto& lengths = book == 0 ? h->mask_lengths : (book == 1 ? h->code_lengths : h->zmap_lengths);
    lengths.resize(count);
    for (uint32_t i = 0; i < count; ++i) {
      const uint8_t byte = s[pos + i / 2];
      lengths[i] = (i & 1) ? byte >> 4 : byte & 0xF;
      if (lengths[i] > kMaxCodeLen) return format_error("code length %u exceeds %d", lengths[i], kMaxCodeLen);
    }
    if ((count & 1) && (s[pos + count / 2] >> 4) != 0) return format_error("non-zero codebook padding");
    if (kraft_sum(lengths) > (uint64_t(1) << kMaxCodeLen)) return format_error("codebook lengths break Kraft's inequality");
    pos += (count + 1) / 2;
  }
  const uint64_t padded = pad8(pos);
  for (; pos < padded; ++pos)
    if (pos >= h->header_bytes || s[pos] != 0) return format_error("non-zero header padding");
  h->num_chunks = chunk_count(h->numel);
  if (!need(8 * uint64_t(h->num_chunks) + 8))
    return format_error("header too short for a table of %u chunks", h->num_chunks);
  h->chunk_end.resize(h->num_chunks);
  uint64_t prev = 0;
  for (uint32_t c = 0; c < h->num_chunks; ++c) {
    const uint64_t end = get_u64(s + pos);
    pos += 8;
    if (end < prev || end % 8 != 0 || end > size)
      return format_error("chunk %u ends at an invalid offset", c);
    h->chunk_end[c] = prev = end;
  }
  if (pos + 8 != h->header_bytes) return format_error("header length does not match its contents");
  const uint32_t crc = get_u32(s + pos);
  if (get_u32(s + pos + 4) != 0) return format_error("non-zero header padding");
  if (crc32(0, s, size_t(pos)) != crc) return format_error("header checksum mismatch");
  const uint64_t expected = h->header_bytes + prev + ((h->flags & kFlagPayloadChecksum) ? 4 : 0);
  if (expected != size)
    return format_error("stream is %llu bytes but its header describes %llu", (unsigned long long)size,
                        (unsigned long long)expected);
  return Status::Ok();
}

uint64_t chunk_length(const ChunkHeader& ch, uint32_t elems, size_t elem_size) {
  switch (ch.kind) {
    case kChunkZero: return kChunkHeaderBytes;
    case kChunkRaw: return kChunkHeaderBytes + pad8(uint64_t(elems) * elem_size);
    default:
      return kChunkHeaderBytes + uint64_t(ch.mask_bytes) + ch.code_bytes + pad8(2 * uint64_t(ch.outliers)) +
             pad8(uint64_t(ch.outliers) * elem_size);
  }
}

void write_chunk_header(const ChunkHeader& ch, uint8_t* out) {
  put_u8(out, ch.kind);
  put_u8(out + 1, ch.flags);
  put_u16(out + 2, 0);
  put_u32(out + 4, ch.outliers);
  put_u32(out + 8, ch.mask_bytes);
  put_u32(out + 12, ch.code_bytes);
}

Status parse_chunk_header(const uint8_t* p, uint64_t span, uint32_t elems, size_t elem_size, uint16_t version,
                          ChunkHeader* ch) {
  if (span < kChunkHeaderBytes) return format_error("chunk shorter than its header");
  ch->kind = p[0];
  ch->flags = p[1];
  ch->outliers = get_u32(p + 4);
  ch->mask_bytes = get_u32(p + 8);
  ch->code_bytes = get_u32(p + 12);
  if (get_u16(p + 2) != 0) return format_error("non-zero reserved chunk field");
  if (ch->kind > kChunkZero) return format_error("unknown chunk kind %u", ch->kind);
  if (ch->kind != kChunkCoded) {
    if (ch->flags || ch->outliers || ch->mask_bytes || ch->code_bytes)
      return format_error("raw or zero chunk with non-zero fields");
  } else {
    const uint8_t known = kChunkLorenzo | kChunkHasMask | kChunkLorenzo2D |
                          (version >= kFirstZeroMapVersion ? kChunkZeroMap : 0);
    if (ch->flags & ~known) return format_error("unknown chunk flag bits 0x%02x", ch->flags);
    if ((ch->flags & kChunkLorenzo) && (ch->flags & kChunkLorenzo2D))
      return format_error("chunk asks for two predictors");
    if (ch->outliers > elems) return format_error("chunk claims %u outliers in %u elements", ch->outliers, elems);
    if (ch->mask_bytes % 8 || ch->code_bytes % 8) return format_error("chunk section not a multiple of 8 bytes");
    if (!(ch->flags & kChunkHasMask) && (ch->mask_bytes != 0 || ch->outliers != 0))
      return format_error("chunk without a mask has mask bytes or outliers");
  }
  if (chunk_length(*ch, elems, elem_size) != span) return format_error("chunk length does not match the chunk table");
  return Status::Ok();
}

}  // namespace detail
}  // namespace actzip
