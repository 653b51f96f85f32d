// The CUDA backend: the chunk pipeline's stages as kernels on the caller's stream.
//
// Each kernel runs the per-chunk functions of cpp/codec/chunk.h, the code test_pipeline
// checks on the host against the CPU backend, so the GPU writes the same bytes. The
// sampling kernel gives each chunk a block (its runs in parallel, the histograms in shared
// memory); measure, write and decode give each chunk a thread, which streams the chunk
// without scratch memory.
//
// Nothing here allocates device memory or synchronizes: every buffer is the caller's and
// every call only enqueues work. The one exception is a one-time upload, per device, of
// the 64 KiB entropy table the predictor choice reads (g_nlog2n), so that the GPU makes
// the CPU's choices bit for bit.
#include <cuda_runtime.h>

#include <climits>
#include <mutex>
#include <string>

#include "codec/chunk.h"
#include "pipeline/stages.h"

namespace actzip {
namespace pipeline {
namespace cuda {

using namespace detail;

namespace {

__device__ float g_nlog2n[kChunkElems + 1];

constexpr int kThreadsPerBlock = 64;  // chunk-per-thread kernels
constexpr int kSampleThreads = 32;    // sampling: one block per chunk, a thread per run

Status device_error(cudaError_t e, const char* what) {
  return Status{StatusCode::kDeviceError, std::string(what) + ": " + cudaGetErrorString(e)};
}

// Makes `device` current for the calls in its scope and restores the caller's device.
class DeviceScope {
 public:
  explicit DeviceScope(int device) {
    status_ = cudaGetDevice(&previous_);
    if (status_ == cudaSuccess && previous_ != device) status_ = cudaSetDevice(device);
  }
  ~DeviceScope() {
    int now = -1;
    if (cudaGetDevice(&now) == cudaSuccess && now != previous_ && previous_ >= 0) cudaSetDevice(previous_);
  }
  cudaError_t status() const { return status_; }

 private:
  int previous_ = -1;
  cudaError_t status_;
};

cudaStream_t stream_of(const Exec& exec) { return static_cast<cudaStream_t>(exec.stream); }

unsigned grid_for(uint32_t items, int per_block) { return unsigned((uint64_t(items) + per_block - 1) / per_block); }

Status launched(const char* what) {
  const cudaError_t e = cudaGetLastError();
  return e == cudaSuccess ? Status::Ok() : device_error(e, what);
}

ACTZIP_HD uint32_t chunk_elems(uint64_t numel, uint32_t c) {
  const uint64_t left = numel - uint64_t(c) * kChunkElems;
  return left < kChunkElems ? uint32_t(left) : kChunkElems;
}

template <class F>
Status with_dtype(int dtype, F f) {
  switch (dtype) {
    case 2: return f(std::integral_constant<int, 2>{});
    case 3: return f(std::integral_constant<int, 3>{});
    default: return f(std::integral_constant<int, 1>{});
  }
}

// --- kernels -------------------------------------------------------------------------

__global__ void range_init_kernel(int32_t* keys) {
  keys[0] = INT32_MAX;
  keys[1] = INT32_MIN;
}

template <int kDT>
__global__ void range_kernel(StageArgs a, int32_t* keys) {
  const uint32_t c = blockIdx.x * blockDim.x + threadIdx.x;
  if (c >= a.num_chunks) return;
  int32_t lo, hi;
  chunk_range_keys<kDT>(a.data, uint64_t(c) * kChunkElems, chunk_elems(a.numel, c), &lo, &hi);
  if (lo <= hi) {
    atomicMin(&keys[0], lo);
    atomicMax(&keys[1], hi);
  }
}

__global__ void resolve_bound_kernel(bool relative, double requested, const int32_t* keys, double* bound) {
  double b = requested;
  if (relative) {
    const bool any = keys[0] <= keys[1];
    const double inf = __longlong_as_double(0x7FF0000000000000ll);
    const double lo = any ? double(key_value(keys[0])) : inf;
    const double hi = any ? double(key_value(keys[1])) : -inf;
    b = rel_abs_bound_hd(lo, hi, requested);
  }
  bound[0] = b;
  bound[1] = double(quant_step_hd(b));
}

// Counts a sample into the block's shared histograms.
struct SharedCount {
  PredictorHist* ph;
  uint32_t* mask;
  __device__ void operator()(int what, uint32_t index) {
    switch (what) {
      case kCountNone: atomicAdd(&ph->none[index], 1u); break;
      case kCountLorenzo: atomicAdd(&ph->lor[index], 1u); break;
      case kCountLorenzo2D: atomicAdd(&ph->lor2d[index], 1u); break;
      case kCountMask: atomicAdd(&mask[index], 1u); break;
      case kCountSign: atomicAdd(&ph->sign_bits, 1u); break;
      case kCountCoded: atomicAdd(&ph->coded, 1u); break;
      default: atomicAdd(&ph->zmap[what - kCountZmap][index], 1u); break;
    }
  }
};

template <int kDT>
__global__ void sample_kernel(StageArgs a, uint8_t* predictors, unsigned long long* hist) {
  __shared__ PredictorHist ph;
  __shared__ uint32_t mask[256];
  __shared__ const uint32_t* chosen;
  __shared__ const uint32_t* chosen_zmap;  // the chosen predictor's zero-map bytes, null without a map
  const uint32_t c = blockIdx.x;
  uint32_t* words = reinterpret_cast<uint32_t*>(&ph);
  for (uint32_t w = threadIdx.x; w < sizeof(PredictorHist) / 4; w += blockDim.x) words[w] = 0;
  for (uint32_t b = threadIdx.x; b < 256; b += blockDim.x) mask[b] = 0;
  __syncthreads();
  const uint32_t elems = chunk_elems(a.numel, c);
  const uint64_t begin = uint64_t(c) * kChunkElems;
  const Quantizer qz = stage_quantizer(a);
  SharedCount count{&ph, mask};
  for (uint32_t r = threadIdx.x; r < sample_runs(elems); r += blockDim.x)
    sample_chunk_run<kDT>(a.data, begin, elems, r, qz, a.row, count);
  __syncthreads();
  if (threadIdx.x == 0) {
    const uint32_t* best = nullptr;
    const uint8_t predictor = choose_predictor(ph, a.row != 0, g_nlog2n, &best);
    const bool zero_map = choose_zero_map(best, ph.coded, a.num_chunks);
    predictors[c] = uint8_t(predictor | (zero_map ? kChunkZeroMap : 0));
    chosen = best;
    chosen_zmap = zero_map ? ph.zmap[predictor_slot(predictor)] : nullptr;
  }
  __syncthreads();
  // As the CPU backend: a mapped chunk's zeros are in its map, not in the lanes.
  for (uint32_t b = threadIdx.x + (chosen_zmap ? 1u : 0u); b < kFineAlphabet; b += blockDim.x)
    if (chosen[b]) atomicAdd(&hist[b], (unsigned long long)chosen[b]);
  for (uint32_t b = threadIdx.x; b < 256; b += blockDim.x) {
    if (mask[b]) atomicAdd(&hist[kFineAlphabet + b], (unsigned long long)mask[b]);
    if (chosen_zmap && chosen_zmap[b]) atomicAdd(&hist[kFineAlphabet + 256 + b], (unsigned long long)chosen_zmap[b]);
  }
}

template <int kDT>
__global__ void measure_kernel(StageArgs a, const uint8_t* predictors, const uint32_t* packed, int k,
                               ChunkLayout* layouts) {
  const uint32_t c = blockIdx.x * blockDim.x + threadIdx.x;
  if (c >= a.num_chunks) return;
  const EncodeBooks books{packed, packed + code_alphabet(k), packed + code_alphabet(k) + 256, k};
  const Quantizer qz = stage_quantizer(a);
  ChunkLayout L;
  measure_chunk<kDT>(a.data, a.numel, c, qz, predictors[c], a.row, books, &L);
  layouts[c] = L;
}

template <int kDT>
__global__ void write_kernel(StageArgs a, const uint32_t* packed, int k, const ChunkLayout* layouts,
                             uint8_t* stream, uint64_t header_bytes) {
  const uint32_t c = blockIdx.x * blockDim.x + threadIdx.x;
  if (c >= a.num_chunks) return;
  const EncodeBooks books{packed, packed + code_alphabet(k), packed + code_alphabet(k) + 256, k};
  const Quantizer qz = stage_quantizer(a);
  const uint8_t* table = stream + header_bytes - 8 - 8 * uint64_t(a.num_chunks);
  const uint64_t start = c == 0 ? 0 : get_u64(table + 8 * uint64_t(c - 1));
  write_chunk<kDT>(a.data, a.numel, c, qz, a.row, books, layouts[c], stream + header_bytes + start);
}

__global__ void decode_tables_kernel(const uint8_t* stream, uint64_t mask_offset, uint32_t mask_symbols,
                                     uint64_t code_offset, uint32_t code_symbols, uint64_t zmap_offset,
                                     uint32_t zmap_symbols, int k, uint32_t* tables) {
  // Thread 0 builds the mask table, thread 1 the code table, thread 2 the zero-map table. A
  // codebook that is no code (the host checked its copy of the header; this is the
  // device's) leaves every entry invalid, so any chunk that uses it fails to decode.
  const bool code = threadIdx.x == 1;
  uint32_t* t = tables + threadIdx.x * kDecodeTableSize;
  const bool ok = code ? build_decode_table_one(stream + code_offset, code_symbols, t, k, true)
                       : (threadIdx.x == 0 ? build_decode_table_one(stream + mask_offset, mask_symbols, t, 0, false)
                                           : build_decode_table_one(stream + zmap_offset, zmap_symbols, t, 0, false));
  if (!ok)
    for (uint32_t j = 0; j < kDecodeTableSize; ++j) t[j] = code ? (1u << 28) : 0u;
}

template <int kDT>
__global__ void decode_kernel(DecodeArgs d, const uint32_t* tables, void* out, unsigned long long* status) {
  const uint32_t c = blockIdx.x * blockDim.x + threadIdx.x;
  if (c >= d.params.num_chunks) return;
  const uint8_t* payload = d.stream + d.header_bytes;
  const uint8_t* table = d.stream + d.header_bytes - 8 - 8 * uint64_t(d.params.num_chunks);
  const uint32_t e = decode_chunk_stream<kDT>(payload, table, c, d.params, tables, tables + kDecodeTableSize,
                                              tables + 2 * kDecodeTableSize, out);
  if (e != kDecodeOk) atomicMin(status, (unsigned long long)((uint64_t(c) << 8) | e));
}

// ~0 (no failure) becomes 0; a failure f becomes f + 1 (decode_status_message's encoding).
__global__ void decode_status_kernel(unsigned long long* status) {
  const unsigned long long v = *status;
  *status = v == ~0ull ? 0ull : v + 1;
}

std::mutex g_table_mu;
uint64_t g_table_ready = 0;  // bit d: g_nlog2n uploaded to device d (devices 0-63)

Status upload_nlog2n(int device, const float* host_table) {
  std::lock_guard<std::mutex> lk(g_table_mu);
  if (device < 64 && (g_table_ready >> device) & 1u) return Status::Ok();
  const cudaError_t e = cudaMemcpyToSymbol(g_nlog2n, host_table, sizeof(float) * (kChunkElems + 1));
  if (e != cudaSuccess) return device_error(e, "uploading the entropy table");
  if (device < 64) g_table_ready |= uint64_t(1) << device;
  return Status::Ok();
}

Status check_aligned(const void* p, const char* what) {
  if (reinterpret_cast<uintptr_t>(p) % 8 != 0)
    return Status{StatusCode::kInvalidArgument, std::string(what) + " must be 8-byte aligned"};
  return Status::Ok();
}

}  // namespace

int device_count() {
  int n = 0;
  if (cudaGetDeviceCount(&n) != cudaSuccess) {
    cudaGetLastError();  // no driver or no device: clear the error, report none
    return 0;
  }
  return n;
}

Status finite_range(const Exec& exec, const StageArgs& a, int32_t* keys) {
  DeviceScope scope(exec.device);
  if (scope.status() != cudaSuccess) return device_error(scope.status(), "selecting the device");
  range_init_kernel<<<1, 1, 0, stream_of(exec)>>>(keys);
  if (a.num_chunks == 0) return launched("range");
  return with_dtype(a.dtype, [&](auto dt) {
    range_kernel<decltype(dt)::value>
        <<<grid_for(a.num_chunks, kThreadsPerBlock), kThreadsPerBlock, 0, stream_of(exec)>>>(a, keys);
    return launched("range");
  });
}

Status resolve_bound(const Exec& exec, bool relative, double requested, const int32_t* keys, double* bound) {
  Status s = check_aligned(bound, "bound");
  if (!s.ok()) return s;
  DeviceScope scope(exec.device);
  if (scope.status() != cudaSuccess) return device_error(scope.status(), "selecting the device");
  resolve_bound_kernel<<<1, 1, 0, stream_of(exec)>>>(relative, requested, keys, bound);
  return launched("resolve bound");
}

Status sample(const Exec& exec, const StageArgs& a, const float* nlog2n_host, uint8_t* predictors, uint64_t* hist) {
  DeviceScope scope(exec.device);
  if (scope.status() != cudaSuccess) return device_error(scope.status(), "selecting the device");
  Status s = upload_nlog2n(exec.device, nlog2n_host);
  if (!s.ok()) return s;
  cudaError_t e = cudaMemsetAsync(hist, 0, kHistBytes, stream_of(exec));
  if (e != cudaSuccess) return device_error(e, "clearing the histograms");
  if (a.num_chunks == 0) return Status::Ok();
  return with_dtype(a.dtype, [&](auto dt) {
    sample_kernel<decltype(dt)::value><<<a.num_chunks, kSampleThreads, 0, stream_of(exec)>>>(
        a, predictors, reinterpret_cast<unsigned long long*>(hist));
    return launched("sample");
  });
}

Status measure(const Exec& exec, const StageArgs& a, const uint8_t* predictors, const uint32_t* packed_books,
               int direct_log2, uint8_t* layouts) {
  Status s = check_aligned(layouts, "layouts");
  if (!s.ok()) return s;
  DeviceScope scope(exec.device);
  if (scope.status() != cudaSuccess) return device_error(scope.status(), "selecting the device");
  if (a.num_chunks == 0) return Status::Ok();
  return with_dtype(a.dtype, [&](auto dt) {
    measure_kernel<decltype(dt)::value>
        <<<grid_for(a.num_chunks, kThreadsPerBlock), kThreadsPerBlock, 0, stream_of(exec)>>>(
            a, predictors, packed_books, direct_log2, reinterpret_cast<ChunkLayout*>(layouts));
    return launched("measure");
  });
}

Status write(const Exec& exec, const StageArgs& a, const uint32_t* packed_books, int direct_log2,
             const uint8_t* layouts, uint8_t* stream, uint64_t header_bytes) {
  Status s = check_aligned(layouts, "layouts");
  if (!s.ok()) return s;
  DeviceScope scope(exec.device);
  if (scope.status() != cudaSuccess) return device_error(scope.status(), "selecting the device");
  if (a.num_chunks == 0) return Status::Ok();
  return with_dtype(a.dtype, [&](auto dt) {
    write_kernel<decltype(dt)::value>
        <<<grid_for(a.num_chunks, kThreadsPerBlock), kThreadsPerBlock, 0, stream_of(exec)>>>(
            a, packed_books, direct_log2, reinterpret_cast<const ChunkLayout*>(layouts), stream, header_bytes);
    return launched("write");
  });
}

Status decode_tables(const Exec& exec, const uint8_t* stream, uint64_t mask_offset, uint32_t mask_symbols,
                     uint64_t code_offset, uint32_t code_symbols, uint64_t zmap_offset, uint32_t zmap_symbols,
                     int direct_log2, uint8_t* tables) {
  Status s = check_aligned(tables, "tables");
  if (!s.ok()) return s;
  DeviceScope scope(exec.device);
  if (scope.status() != cudaSuccess) return device_error(scope.status(), "selecting the device");
  decode_tables_kernel<<<1, 3, 0, stream_of(exec)>>>(stream, mask_offset, mask_symbols, code_offset, code_symbols,
                                                     zmap_offset, zmap_symbols, direct_log2,
                                                     reinterpret_cast<uint32_t*>(tables));
  return launched("decode tables");
}

Status decode(const Exec& exec, const DecodeArgs& d, const uint8_t* tables, void* out, uint64_t* status) {
  Status s = check_aligned(status, "status");
  if (!s.ok()) return s;
  DeviceScope scope(exec.device);
  if (scope.status() != cudaSuccess) return device_error(scope.status(), "selecting the device");
  unsigned long long* st = reinterpret_cast<unsigned long long*>(status);
  cudaError_t e = cudaMemsetAsync(st, 0xFF, sizeof *st, stream_of(exec));
  if (e != cudaSuccess) return device_error(e, "clearing the status");
  if (d.params.num_chunks > 0) {
    s = with_dtype(d.dtype, [&](auto dt) {
      decode_kernel<decltype(dt)::value>
          <<<grid_for(d.params.num_chunks, kThreadsPerBlock), kThreadsPerBlock, 0, stream_of(exec)>>>(
              d, reinterpret_cast<const uint32_t*>(tables), out, st);
      return launched("decode");
    });
    if (!s.ok()) return s;
  }
  decode_status_kernel<<<1, 1, 0, stream_of(exec)>>>(st);
  return launched("decode status");
}

}  // namespace cuda
}  // namespace pipeline
}  // namespace actzip
