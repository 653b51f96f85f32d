// actzip: error-bounded lossy compression of activation tensors.
//
// Public C++ API of the codec core. The core sees a tensor as a pointer, a dtype and a
// shape; every output buffer is owned by the caller. It never prints, never sets global
// threading state and never synchronizes a device. The stream it writes is specified
// byte by byte in docs/FORMAT.md.
//
// Compression is two-phase, so that the caller (for example torch's allocator) owns the
// output: plan_compress() does all the work and holds the encoded chunks (about the
// compressed size); the caller allocates CompressPlan::compressed_bytes() bytes; encode()
// copies the stream there.
#pragma once

#include <cstddef>
#include <cstdint>
#include <memory>
#include <string>
#include <vector>

namespace actzip {

// Element types, numbered as in the stream's `dtype` field.
enum class DType : uint8_t { kFloat32 = 1, kFloat16 = 2, kBFloat16 = 3 };

// How the caller's error bound is to be read, numbered as in the stream's `bound_mode`.
enum class BoundMode : uint8_t {
  kAbs = 0,  // the bound is absolute
  kRel = 1,  // the bound is a fraction of (max - min) over the finite elements
};

// Outcome of every entry point. `message` says what went wrong, for a person.
enum class StatusCode : int {
  kOk = 0,
  kInvalidArgument = 1,  // the caller passed something the API does not accept
  kFormatError = 2,      // the stream breaks a rule of docs/FORMAT.md
  kBufferTooSmall = 3,   // an output buffer is smaller than required
  kInternal = 4,         // a bug in actzip: please report it
  kDeviceError = 5,      // the CUDA runtime reported an error (no device, out of memory, ...)
};

struct Status {
  StatusCode code = StatusCode::kOk;
  std::string message;
  bool ok() const { return code == StatusCode::kOk; }
  static Status Ok() { return {}; }
};

inline constexpr uint16_t kFormatVersion = 2;  // streams of version 1 are read too
inline constexpr uint32_t kChunkElems = 16384;  // fixed by the format (versions 1 and 2)
inline constexpr int kMaxDims = 8;
// Element counts stay below this, so that a tensor's chunk count (2^31 at most) fits the
// format's and the backends' 32-bit chunk indices.
inline constexpr uint64_t kMaxElements = uint64_t(1) << 45;

// Size in bytes of one element of `dtype` (0 for a value outside the enum).
size_t element_size(DType dtype);

// The largest stream that compressing `numel` elements of `dtype` in `ndim` dimensions can
// produce (every chunk stored raw, the largest header, a payload checksum).
uint64_t compress_bound(uint64_t numel, DType dtype, int ndim);

// What plan_compress() chose for a tensor by sampling it: each chunk's predictor and
// zero-map flag, and the codebooks. CompressOptions::reuse hands them to the compression
// of a later tensor of the same shape and dtype (the same layer's activation at the next
// training step, say), which then skips its sampling pass, about a fifth of the work.
// Every choice is valid for any data (every symbol has a code), so the stream decodes
// within its bound whatever the tensor holds; choices that no longer fit the data (after
// the bound or the values moved) only cost size. Immutable, so sharing one is safe.
class CompressChoices {
 public:
  ~CompressChoices();
  CompressChoices(const CompressChoices&) = delete;
  CompressChoices& operator=(const CompressChoices&) = delete;

  DType dtype() const;
  const std::vector<uint64_t>& shape() const;
  float quant_step() const;  // the quantization step the choices were sampled at

  struct Impl;
  explicit CompressChoices(std::unique_ptr<Impl> impl);
  const Impl& impl() const { return *impl_; }

 private:
  std::unique_ptr<Impl> impl_;
};

struct CompressOptions {
  double error_bound = 0;         // > 0 and finite; read as `mode` says
  BoundMode mode = BoundMode::kAbs;
  bool payload_checksum = false;  // append a CRC-32 of the payload
  int num_threads = 1;            // >= 1; chunks are spread over this many threads
  // Choices from an earlier plan (CompressPlan::choices()) of a tensor of the same shape
  // and dtype, used instead of sampling this one; null: sample.
  std::shared_ptr<const CompressChoices> reuse;
};

// What a stream's header says, after validation.
struct StreamInfo {
  DType dtype = DType::kFloat32;
  std::vector<uint64_t> shape;
  uint64_t numel = 0;
  BoundMode mode = BoundMode::kAbs;
  double requested_bound = 0;  // as the caller gave it
  double error_bound = 0;      // absolute bound every finite element honours
  float quant_step = 0;        // quantization step (docs/FORMAT.md section 3)
  bool payload_checksum = false;
  uint32_t num_chunks = 0;
  uint64_t header_bytes = 0;
  uint64_t stream_bytes = 0;   // exact length of the stream
};

// Per-stream statistics the encoder gathered, for telemetry and tests.
struct CompressStats {
  uint64_t zeros = 0;         // elements that are +0.0
  uint64_t coded = 0;         // elements quantized and entropy-coded
  uint64_t outliers = 0;      // elements stored exactly (NaN, Inf, -0.0, out of range)
  uint32_t raw_chunks = 0;    // chunks stored verbatim because coding did not shrink them
  uint32_t zero_chunks = 0;   // chunks of +0.0 only
  uint32_t lorenzo_chunks = 0;    // chunks predicted along the flattened order
  uint32_t lorenzo2d_chunks = 0;  // chunks predicted from the left and upper neighbours
  uint32_t zero_map_chunks = 0;   // chunks whose values of 0 are in a zero map
  uint32_t sampled_chunks = 0;    // chunks sampled to choose their predictor (0 with reuse)
};

class CompressPlan {
 public:
  ~CompressPlan();
  CompressPlan(const CompressPlan&) = delete;
  CompressPlan& operator=(const CompressPlan&) = delete;

  uint64_t compressed_bytes() const;  // exact size encode() will write
  double error_bound() const;         // absolute bound used
  const CompressStats& stats() const;
  // The choices this plan coded with: sampled, or CompressOptions::reuse.
  std::shared_ptr<const CompressChoices> choices() const;

  struct Impl;
  explicit CompressPlan(std::unique_ptr<Impl> impl);
  Impl& impl() const { return *impl_; }

 private:
  std::unique_ptr<Impl> impl_;
};

// Phase 1. Reads `data` (C-contiguous, `numel` = product of `shape` elements of `dtype`)
// during the call only; the plan keeps no pointer to it.
Status plan_compress(const void* data, DType dtype, const std::vector<uint64_t>& shape,
                     const CompressOptions& options, std::unique_ptr<CompressPlan>* plan);

// Phase 2. Copies exactly plan.compressed_bytes() bytes of stream to `out`.
Status encode(const CompressPlan& plan, void* out, uint64_t out_bytes, int num_threads);

// Validates the header, codebooks, chunk table and header checksum (cheap, O(chunks)).
Status read_info(const void* stream, uint64_t stream_bytes, StreamInfo* info);

// read_info() plus every chunk header and the payload checksum (no decoding).
Status validate(const void* stream, uint64_t stream_bytes, StreamInfo* info);

// Decodes into `out` (numel elements of the stream's dtype, C order). Every byte of the
// stream is treated as hostile: a malformed stream yields kFormatError, never a crash.
Status decompress(const void* stream, uint64_t stream_bytes, void* out, uint64_t out_bytes,
                  int num_threads);

// Two-valued masks (what a dropout saves on the CPU: +0.0 or one scale), stored exactly at
// one bit an element, the first element in the most significant bit of byte 0.
//
// pack_mask() writes ceil(numel / 8) bytes to `out` and sets *packed when every element is
// +0.0 or one other finite value, whose bits it stores in *value_bits (0 when all are
// +0.0). Otherwise (-0.0, NaN, +-Inf, a third value) *packed is false and `out` holds
// nothing useful. unpack_mask() writes the numel elements back.
Status pack_mask(const void* data, DType dtype, uint64_t numel, uint8_t* out, uint64_t out_bytes, bool* packed,
                 uint32_t* value_bits, int num_threads);
Status unpack_mask(const uint8_t* bits, uint64_t bits_bytes, DType dtype, uint64_t numel, uint32_t value_bits,
                   void* out, uint64_t out_bytes, int num_threads);

// Processors this process may run on: the default thread count.
int max_threads();

// Where calls with more than one thread run their work now: "openmp", in the parallel
// regions of the OpenMP runtime the process has loaded (torch's), whose idle workers
// would otherwise spin on the cores actzip's threads need; or "threads", on actzip's own
// threads (no runtime loaded, a child forked after this library was loaded, a runtime set
// to one thread, or use_own_threads(true)). The output is the same either way.
const char* parallel_runtime();

// Always run on actzip's own threads (true), or as above (false, the default).
void use_own_threads(bool own);

}  // namespace actzip
