// actzip: the chunk pipeline, the codec in stages over buffers the caller owns.
//
// This is how the CUDA backend works, and it runs on the host too (the reference its tests
// compare with the CPU backend). Each stage reads and writes memory that the caller
// allocated where the stage runs (host memory, or one CUDA device's memory for an Exec on
// that device), so a framework's caching allocator can own every byte. A device stage is
// only enqueued on the caller's stream: the core never synchronizes a device and never
// allocates device memory. The caller copies the few small results the host steps need
// (histograms, chunk layouts, a status word) and decides when to wait for them.
//
// Compression, for a tensor x of `numel` elements:
//   1. (mode kRel only) finite_range()           -> 2 keys
//      resolve_bound()                            -> the absolute bound and the step
//   2. sample()                                   -> predictors (1 byte a chunk), histograms
//      host: build_books() from the histograms    -> codebooks, packed for the device
//   3. measure()                                  -> a 64-byte layout per chunk
//      host: assemble() from the layouts          -> the header and the stream's length
//   4. the caller puts the header at the stream's start; write() writes the chunks.
// The bytes equal those of actzip::plan_compress() + encode() for the same input and bound.
// Codebooks built from another tensor (the same layer's at the previous step, say) work
// too: every symbol has a code, so the stream stays valid and decodes to the same values,
// except that a chunk those books would code worse than raw is stored raw (exact); only
// the size changes. Then the only result the host must wait for is the layouts.
//
// Decompression: plan_decode() on a host copy of the header; decode_tables(); decode(),
// which leaves a status word (0 = success; decode_status_message() explains the rest).
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include "actzip/actzip.h"

namespace actzip {
namespace pipeline {

// Where a stage runs. device < 0: on the host's worker threads (num_threads of them).
// device >= 0: enqueued on that CUDA device, on `stream` (a cudaStream_t; null is the
// legacy default stream).
struct Exec {
  int device = -1;
  void* stream = nullptr;
  int num_threads = 1;
};

// Whether this build has the CUDA backend, and how many devices it can use (0 without a
// driver or a GPU; never an error).
bool cuda_compiled();
int cuda_device_count();

// Buffer sizes, in bytes.
inline constexpr uint64_t kRangeBytes = 8;              // two int32 order keys
inline constexpr uint64_t kHistCounters = 1039 + 256 + 256;  // fine bins, mask bytes, zero-map bytes (u64 each)
inline constexpr uint64_t kHistBytes = kHistCounters * 8;
inline constexpr uint64_t kLayoutBytes = 64;            // per chunk
inline constexpr uint64_t kDecodeTablesBytes = 49152;   // mask, code and zero-map tables (u32 each)
inline constexpr uint64_t kStatusBytes = 8;

uint32_t num_chunks(uint64_t numel);

// A tensor as the stages see it: C-contiguous storage of `shape` in `dtype`.
struct TensorRef {
  const void* data = nullptr;
  DType dtype = DType::kFloat32;
  std::vector<uint64_t> shape;
};

// --- compression -------------------------------------------------------------------

// Stage 1: the finite minimum and maximum as order-preserving int32 keys (keys[0] <=
// keys[1] unless the tensor has no finite element).
Status finite_range(const Exec& exec, const TensorRef& x, int32_t* keys);
// Stage 1: the absolute bound of a request and its quantization step, as two doubles in
// `bound` (kBoundBytes): for kRel from finite_range()'s keys, for kAbs (keys null) the
// request itself. Later stages read the bound there, so it never has to visit the host.
inline constexpr uint64_t kBoundBytes = 16;
Status resolve_bound(const Exec& exec, BoundMode mode, double requested, const int32_t* keys, double* bound);
// Host: the absolute bound a kRel request means, from the keys.
double rel_abs_bound(int32_t key_lo, int32_t key_hi, double requested);

// Stage 2: each chunk's choice (num_chunks bytes: its predictor's chunk flag, and the
// zero-map flag) and the tensor's sampled histograms (kHistCounters u64 counters; the stage
// zeroes them first).
Status sample(const Exec& exec, const TensorRef& x, const double* bound, uint8_t* predictors, uint64_t* hist);

// Host: the codebooks for a histogram (a host copy of stage 2's).
struct Books {
  int direct_log2 = 0;
  std::vector<uint8_t> mask_lengths, code_lengths, zmap_lengths;
  // For measure() and write(): each code symbol's (code_alphabet(direct_log2) of them),
  // then each mask byte's (256), then each zero-map byte's (256) bit-reversed code |
  // length << 16. Copy to where they run.
  std::vector<uint32_t> packed;
};
Status build_books(const uint64_t* hist, Books* books);

// Stage 3: each chunk's layout (num_chunks × kLayoutBytes).
Status measure(const Exec& exec, const TensorRef& x, const double* bound, const uint8_t* predictors,
               const uint32_t* packed_books, int direct_log2, uint8_t* layouts);

// Host: the header (chunk table included) from a host copy of stage 3's layouts (x's data
// is not read and may be null).
struct Assembly {
  std::vector<uint8_t> header;
  uint64_t stream_bytes = 0;  // header, chunks and the optional 4-byte payload checksum
  CompressStats stats;
};
Status assemble(const uint8_t* layouts, const TensorRef& x, BoundMode mode, double requested_bound,
                double abs_bound, bool payload_checksum, const Books& books, Assembly* out);

// Stage 4: writes every chunk into `stream`, whose first header_bytes bytes must already
// hold assemble()'s header (the stage reads the chunk table there). The payload checksum,
// if any, is the caller's to append.
Status write(const Exec& exec, const TensorRef& x, const double* bound, const uint32_t* packed_books,
             int direct_log2, const uint8_t* layouts, uint8_t* stream, uint64_t header_bytes);

// --- decompression -----------------------------------------------------------------

// What decoding needs from a header, parsed and validated on the host.
struct DecodePlan {
  StreamInfo info;
  uint64_t mask_book_offset = 0, code_book_offset = 0, zmap_book_offset = 0;  // nibble-packed lengths in the header
  uint32_t mask_symbols = 0, code_symbols = 0, zmap_symbols = 0;
  int direct_log2 = 0;
  uint32_t version = 0;  // the stream's format_version
};
// `header` holds at least the header's bytes; stream_bytes is the whole stream's length.
Status plan_decode(const uint8_t* header, uint64_t header_len, uint64_t stream_bytes, DecodePlan* plan);

// Builds the decode tables (kDecodeTablesBytes) from the codebooks in `stream`'s header.
Status decode_tables(const Exec& exec, const uint8_t* stream, const DecodePlan& plan, uint8_t* tables);

// Decodes `stream` into `out` (numel elements). `status` (kStatusBytes) receives 0, or the
// first failing chunk and why: see decode_status_message(). The payload checksum is not
// checked here.
Status decode(const Exec& exec, const uint8_t* stream, const DecodePlan& plan, const uint8_t* tables, void* out,
              uint64_t* status);
std::string decode_status_message(uint64_t status);

// CRC-32 of `size` bytes of host memory: the payload checksum (docs/FORMAT.md section 7),
// which the caller computes over the payload and appends.
uint32_t crc32(const void* data, uint64_t size);

}  // namespace pipeline
}  // namespace actzip
