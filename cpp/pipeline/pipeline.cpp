// The chunk pipeline's host steps, its stages on host threads, and the dispatch of its
// stages to the CUDA backend (cpp/cuda/) when an Exec names a device.
#include "actzip/pipeline.h"

#include <algorithm>
#include <cstring>
#include <limits>
#include <functional>
#include <mutex>

#include "codec/chunk.h"
#include "codec/crc32.h"
#include "codec/element.h"
#include "codec/format.h"
#include "codec/plan.h"
#include "cpu/thread_pool.h"
#include "pipeline/stages.h"

namespace actzip {
namespace pipeline {

using namespace detail;

namespace {

Status invalid(std::string message) { return Status{StatusCode::kInvalidArgument, std::move(message)}; }

[[maybe_unused]] Status no_cuda() { return invalid("this build of actzip has no CUDA backend"); }

// Checks a TensorRef and returns its element count.
Status check_tensor(const TensorRef& x, uint64_t* numel, bool need_data = true) {
  if (element_size(x.dtype) == 0) return invalid("dtype must be float32, float16 or bfloat16");
  if (x.shape.size() > size_t(kMaxDims)) return invalid("tensors of more than 8 dimensions are not supported");
  uint64_t n = 0;
  if (!count_elements(x.shape.data(), x.shape.size(), &n)) return invalid("tensor has 2^45 elements or more");
  if (need_data && n != 0 && x.data == nullptr) return invalid("data is null");
  *numel = n;
  return Status::Ok();
}

Status check_exec(const Exec& exec) {
  if (exec.device < 0 && exec.num_threads < 1) return invalid("num_threads must be at least 1");
  return Status::Ok();
}

Status check_bound(double abs_bound) {
  if (!(abs_bound > 0 && abs_bound <= std::numeric_limits<double>::max()))
    return invalid("abs_bound must be a positive finite number");
  return Status::Ok();
}

// A bound buffer as resolve_bound() leaves it. Only host memory can be read here; a
// device's is the device stages' to read (a bad one cannot fault them: the quantizer then
// makes every element an outlier).
Status check_bound_buffer(const Exec& exec, const double* bound) {
  if (bound == nullptr) return invalid("bound is null");
  if (exec.device >= 0) return Status::Ok();
  Status s = check_bound(bound[0]);
  if (!s.ok()) return s;
  if (bound[1] != double(quant_step_hd(bound[0]))) return invalid("bound[1] is not the step of bound[0]");
  return Status::Ok();
}


void host_for(uint32_t chunks, int threads, const std::function<void(uint32_t)>& body) {
  parallel_for(int64_t(chunks), std::min<int>(threads, int(std::max<uint32_t>(chunks, 1))),
               [&](int64_t c, int /*slot*/) { body(uint32_t(c)); });
}

StageArgs stage_args(const TensorRef& x, uint64_t numel, const double* bound) {
  StageArgs a;
  a.data = x.data;
  a.dtype = int(x.dtype);
  a.numel = numel;
  a.num_chunks = chunk_count(numel);
  a.row = grid_row(x.shape);
  a.bound = bound;
  return a;
}


}  // namespace

bool cuda_compiled() {
#if defined(ACTZIP_HAVE_CUDA)
  return true;
#else
  return false;
#endif
}

int cuda_device_count() {
#if defined(ACTZIP_HAVE_CUDA)
  return cuda::device_count();
#else
  return 0;
#endif
}

uint32_t num_chunks(uint64_t numel) { return chunk_count(numel); }

double rel_abs_bound(int32_t key_lo, int32_t key_hi, double requested) {
  const bool any = key_lo <= key_hi;
  const double lo = any ? double(key_value(key_lo)) : std::numeric_limits<double>::infinity();
  const double hi = any ? double(key_value(key_hi)) : -std::numeric_limits<double>::infinity();
  return detail::rel_abs_bound(lo, hi, requested);
}

Status finite_range(const Exec& exec, const TensorRef& x, int32_t* keys) {
  uint64_t numel = 0;
  Status s = check_tensor(x, &numel);
  if (!s.ok()) return s;
  if (!(s = check_exec(exec)).ok()) return s;
  if (keys == nullptr) return invalid("keys is null");
  const StageArgs a = stage_args(x, numel, nullptr);
  if (exec.device >= 0) {
#if defined(ACTZIP_HAVE_CUDA)
    return cuda::finite_range(exec, a, keys);
#else
    return no_cuda();
#endif
  }
  std::mutex mu;
  keys[0] = INT32_MAX;
  keys[1] = INT32_MIN;
  host_for(a.num_chunks, exec.num_threads, [&](uint32_t c) {
    int32_t lo, hi;
    dispatch_dtype(x.dtype, [&](auto dt) {
      chunk_range_keys<decltype(dt)::value>(x.data, uint64_t(c) * kChunkElems, chunk_elem_count(numel, c), &lo, &hi);
    });
    std::lock_guard<std::mutex> lk(mu);
    keys[0] = std::min(keys[0], lo);
    keys[1] = std::max(keys[1], hi);
  });
  return Status::Ok();
}

Status resolve_bound(const Exec& exec, BoundMode mode, double requested, const int32_t* keys, double* bound) {
  Status s = check_exec(exec);
  if (!s.ok()) return s;
  if (!(s = check_bound(requested)).ok()) return s;
  if (mode != BoundMode::kAbs && mode != BoundMode::kRel) return invalid("unknown bound mode");
  if (bound == nullptr || (mode == BoundMode::kRel && keys == nullptr)) return invalid("bound or keys is null");
  if (exec.device >= 0) {
#if defined(ACTZIP_HAVE_CUDA)
    return cuda::resolve_bound(exec, mode == BoundMode::kRel, requested, keys, bound);
#else
    return no_cuda();
#endif
  }
  bound[0] = mode == BoundMode::kRel ? pipeline::rel_abs_bound(keys[0], keys[1], requested) : requested;
  bound[1] = double(quant_step_hd(bound[0]));
  return Status::Ok();
}

Status sample(const Exec& exec, const TensorRef& x, const double* bound, uint8_t* predictors, uint64_t* hist) {
  uint64_t numel = 0;
  Status s = check_tensor(x, &numel);
  if (!s.ok()) return s;
  if (!(s = check_exec(exec)).ok() || !(s = check_bound_buffer(exec, bound)).ok()) return s;
  if (hist == nullptr || (numel != 0 && predictors == nullptr)) return invalid("predictors or hist is null");
  const StageArgs a = stage_args(x, numel, bound);
  if (exec.device >= 0) {
#if defined(ACTZIP_HAVE_CUDA)
    return cuda::sample(exec, a, nlog2n_table().data(), predictors, hist);
#else
    return no_cuda();
#endif
  }
  std::fill(hist, hist + kHistCounters, uint64_t(0));
  std::mutex mu;
  const Quantizer qz = stage_quantizer(a);
  const float* nlog2n = nlog2n_table().data();
  host_for(a.num_chunks, exec.num_threads, [&](uint32_t c) {
    thread_local PredictorHist ph;
    std::memset(&ph, 0, sizeof ph);
    uint32_t mask[256] = {0};
    LocalSampleCount<uint32_t> count{&ph, mask};
    const uint32_t elems = chunk_elem_count(numel, c);
    const uint64_t begin = uint64_t(c) * kChunkElems;
    for (uint32_t r = 0; r < sample_runs(elems); ++r)
      dispatch_dtype(x.dtype, [&](auto dt) {
        sample_chunk_run<decltype(dt)::value>(x.data, begin, elems, r, qz, a.row, count);
      });
    const uint32_t* chosen = nullptr;
    const uint8_t predictor = choose_predictor(ph, a.row != 0, nlog2n, &chosen);
    const bool zero_map = choose_zero_map(chosen, ph.coded, a.num_chunks);
    predictors[c] = uint8_t(predictor | (zero_map ? kChunkZeroMap : 0));
    std::lock_guard<std::mutex> lk(mu);
    // As the CPU backend: a mapped chunk's zeros are in its map, not in the lanes.
    for (uint32_t b = zero_map ? 1 : 0; b < kFineAlphabet; ++b) hist[b] += chosen[b];
    for (uint32_t b = 0; b < 256; ++b) hist[kFineAlphabet + b] += mask[b];
    if (zero_map)
      for (uint32_t b = 0; b < 256; ++b) hist[kFineAlphabet + 256 + b] += ph.zmap[predictor_slot(predictor)][b];
  });
  return Status::Ok();
}

Status build_books(const uint64_t* hist, Books* books) {
  if (hist == nullptr || books == nullptr) return invalid("hist or books is null");
  CodeBooks cb;
  Status s = build_code_books(hist, hist + kFineAlphabet, hist + kFineAlphabet + 256, &cb);
  if (!s.ok()) return s;
  books->direct_log2 = cb.direct_log2;
  books->mask_lengths = cb.mask_lengths;
  books->code_lengths = cb.code_lengths;
  books->zmap_lengths = cb.zmap_lengths;
  const size_t nc = cb.code.len.size();
  books->packed.assign(nc + 512, 0);
  for (size_t i = 0; i < nc; ++i) books->packed[i] = cb.code.code[i] | (uint32_t(cb.code.len[i]) << 16);
  for (size_t i = 0; i < 256; ++i) books->packed[nc + i] = cb.mask.code[i] | (uint32_t(cb.mask.len[i]) << 16);
  for (size_t i = 0; i < 256; ++i) books->packed[nc + 256 + i] = cb.zmap.code[i] | (uint32_t(cb.zmap.len[i]) << 16);
  return Status::Ok();
}

namespace {
EncodeBooks encode_books(const uint32_t* packed, int direct_log2) {
  EncodeBooks b;
  b.code = packed;
  b.mask = packed + code_alphabet(direct_log2);
  b.zmap = b.mask + 256;
  b.k = direct_log2;
  return b;
}
Status check_books(const uint32_t* packed, int direct_log2) {
  if (packed == nullptr) return invalid("packed_books is null");
  if (direct_log2 < 0 || direct_log2 > kMaxDirectLog2) return invalid("direct_log2 out of range");
  return Status::Ok();
}
}  // namespace

Status measure(const Exec& exec, const TensorRef& x, const double* bound, const uint8_t* predictors,
               const uint32_t* packed_books, int direct_log2, uint8_t* layouts) {
  uint64_t numel = 0;
  Status s = check_tensor(x, &numel);
  if (!s.ok()) return s;
  if (!(s = check_exec(exec)).ok() || !(s = check_bound_buffer(exec, bound)).ok()) return s;
  if (!(s = check_books(packed_books, direct_log2)).ok()) return s;
  if (numel != 0 && (predictors == nullptr || layouts == nullptr)) return invalid("predictors or layouts is null");
  const StageArgs a = stage_args(x, numel, bound);
  if (exec.device >= 0) {
#if defined(ACTZIP_HAVE_CUDA)
    return cuda::measure(exec, a, predictors, packed_books, direct_log2, layouts);
#else
    return no_cuda();
#endif
  }
  const Quantizer qz = stage_quantizer(a);
  const EncodeBooks books = encode_books(packed_books, direct_log2);
  host_for(a.num_chunks, exec.num_threads, [&](uint32_t c) {
    ChunkLayout L;
    dispatch_dtype(x.dtype, [&](auto dt) {
      measure_chunk<decltype(dt)::value>(x.data, numel, c, qz, predictors[c], a.row, books, &L);
    });
    std::memcpy(layouts + uint64_t(c) * kLayoutBytes, &L, sizeof L);
  });
  return Status::Ok();
}

Status assemble(const uint8_t* layouts, const TensorRef& x, BoundMode mode, double requested_bound, double abs_bound,
                bool payload_checksum, const Books& books, Assembly* out) {
  uint64_t numel = 0;
  Status s = check_tensor(x, &numel, false);  // only the shape and dtype are read
  if (!s.ok()) return s;
  if (!(s = check_bound(abs_bound)).ok()) return s;
  if (mode != BoundMode::kAbs && mode != BoundMode::kRel) return invalid("unknown bound mode");
  if (!(requested_bound > 0 && requested_bound <= std::numeric_limits<double>::max()))
    return invalid("requested_bound must be a positive finite number");
  Header h;
  h.flags = payload_checksum ? kFlagPayloadChecksum : 0;
  h.dtype = x.dtype;
  h.mode = mode;
  h.direct_log2 = books.direct_log2;
  h.requested_bound = requested_bound;
  h.error_bound = abs_bound;
  h.quant_step = quant_step_for(abs_bound);
  h.shape = x.shape;
  h.numel = numel;
  h.num_chunks = chunk_count(numel);
  h.chunk_end.resize(h.num_chunks);
  CompressStats stats;
  bool any_mask = false, any_code = false, any_zmap = false;
  uint64_t end = 0;
  stats.sampled_chunks = h.num_chunks;  // stage 2 samples every chunk
  for (uint32_t c = 0; c < h.num_chunks; ++c) {
    ChunkLayout L;
    std::memcpy(&L, layouts + uint64_t(c) * kLayoutBytes, sizeof L);
    const uint32_t elems = chunk_elem_count(numel, c);
    if (L.kind > kChunkZero || L.length != layout_length(L.kind, L.mask_bytes, L.code_bytes,
                                                         L.kind == kChunkCoded ? L.outliers : 0u, elems,
                                                         uint32_t(element_size(x.dtype))))
      return invalid("layouts do not describe this tensor");
    stats.zeros += L.zeros;
    stats.coded += L.coded;
    stats.outliers += L.outliers;
    if (L.kind == kChunkRaw) ++stats.raw_chunks;
    if (L.kind == kChunkZero) ++stats.zero_chunks;
    if (L.kind == kChunkCoded) {
      any_code |= L.coded > 0;
      any_mask |= (L.flags & kChunkHasMask) != 0;
      if (L.flags & kChunkLorenzo) ++stats.lorenzo_chunks;
      if (L.flags & kChunkLorenzo2D) ++stats.lorenzo2d_chunks;
      if (L.flags & kChunkZeroMap) ++stats.zero_map_chunks;
      any_zmap |= (L.flags & kChunkZeroMap) != 0;
    }
    end += L.length;
    h.chunk_end[c] = end;
  }
  // Only the codebooks some chunk uses go into the header, as the CPU backend does.
  if (any_mask) h.mask_lengths = books.mask_lengths;
  if (any_code) h.code_lengths = books.code_lengths;
  if (any_zmap) h.zmap_lengths = books.zmap_lengths;
  h.header_bytes = header_size(x.shape.size(), h.mask_lengths.size(), h.code_lengths.size(), h.zmap_lengths.size(),
                               h.num_chunks);
  out->header.assign(h.header_bytes, 0);
  write_header(h, out->header.data());
  out->stream_bytes = h.header_bytes + end + (payload_checksum ? 4 : 0);
  out->stats = stats;
  return Status::Ok();
}

Status write(const Exec& exec, const TensorRef& x, const double* bound, const uint32_t* packed_books,
             int direct_log2, const uint8_t* layouts, uint8_t* stream, uint64_t header_bytes) {
  uint64_t numel = 0;
  Status s = check_tensor(x, &numel);
  if (!s.ok()) return s;
  if (!(s = check_exec(exec)).ok() || !(s = check_bound_buffer(exec, bound)).ok()) return s;
  if (!(s = check_books(packed_books, direct_log2)).ok()) return s;
  if (stream == nullptr || (numel != 0 && layouts == nullptr)) return invalid("stream or layouts is null");
  const StageArgs a = stage_args(x, numel, bound);
  if (header_bytes % 8 != 0 || header_bytes < 8 * uint64_t(a.num_chunks) + 8)
    return invalid("header_bytes does not fit a header");
  if (reinterpret_cast<uintptr_t>(stream) % 8 != 0) return invalid("stream must be 8-byte aligned");
  if (exec.device >= 0) {
#if defined(ACTZIP_HAVE_CUDA)
    return cuda::write(exec, a, packed_books, direct_log2, layouts, stream, header_bytes);
#else
    return no_cuda();
#endif
  }
  const Quantizer qz = stage_quantizer(a);
  const EncodeBooks books = encode_books(packed_books, direct_log2);
  const uint8_t* table = stream + header_bytes - 8 - 8 * uint64_t(a.num_chunks);
  host_for(a.num_chunks, exec.num_threads, [&](uint32_t c) {
    ChunkLayout L;
    std::memcpy(&L, layouts + uint64_t(c) * kLayoutBytes, sizeof L);
    const uint64_t start = c == 0 ? 0 : get_u64(table + 8 * uint64_t(c - 1));
    dispatch_dtype(x.dtype, [&](auto dt) {
      write_chunk<decltype(dt)::value>(x.data, numel, c, qz, a.row, books, L, stream + header_bytes + start);
    });
  });
  return Status::Ok();
}

Status plan_decode(const uint8_t* header, uint64_t header_len, uint64_t stream_bytes, DecodePlan* plan) {
  if (header == nullptr || plan == nullptr) return invalid("header or plan is null");
  if (header_len < kFixedHeaderBytes) return format_error("stream of %llu bytes is shorter than the fixed header",
                                                          (unsigned long long)header_len);
  const uint64_t claimed = get_u32(header + 8);
  if (claimed > header_len && claimed <= stream_bytes)
    return invalid("the header copy is shorter than the header it describes");
  Header h;
  Status s = parse_header(header, stream_bytes, &h);
  if (!s.ok()) return s;
  StreamInfo& info = plan->info;
  info.dtype = h.dtype;
  info.shape = h.shape;
  info.numel = h.numel;
  info.mode = h.mode;
  info.requested_bound = h.requested_bound;
  info.error_bound = h.error_bound;
  info.quant_step = h.quant_step;
  info.payload_checksum = h.flags & kFlagPayloadChecksum;
  info.num_chunks = h.num_chunks;
  info.header_bytes = h.header_bytes;
  info.stream_bytes = stream_bytes;
  plan->mask_book_offset = kFixedHeaderBytes + 8 * uint64_t(h.shape.size()) + 2;
  plan->mask_symbols = uint32_t(h.mask_lengths.size());
  plan->code_book_offset = plan->mask_book_offset + (plan->mask_symbols + 1) / 2 + 2;
  plan->code_symbols = uint32_t(h.code_lengths.size());
  plan->zmap_book_offset = plan->code_book_offset + (plan->code_symbols + 1) / 2 + 2;
  plan->zmap_symbols = uint32_t(h.zmap_lengths.size());
  plan->direct_log2 = h.direct_log2;
  plan->version = h.version;
  return Status::Ok();
}

namespace {
DecodeArgs decode_args(const uint8_t* stream, const DecodePlan& plan) {
  DecodeArgs d;
  const StreamInfo& info = plan.info;
  d.stream = stream;
  d.dtype = int(info.dtype);
  d.header_bytes = info.header_bytes;
  d.params.numel = info.numel;
  d.params.payload_bytes = info.stream_bytes - info.header_bytes - (info.payload_checksum ? 4 : 0);
  d.params.num_chunks = info.num_chunks;
  d.params.row = grid_row(info.shape);
  d.params.error_bound = info.error_bound;
  d.params.quant_step = info.quant_step;
  d.params.direct_log2 = plan.direct_log2;
  d.params.has_mask_book = plan.mask_symbols > 0;
  d.params.has_code_book = plan.code_symbols > 0;
  d.params.has_zmap_book = plan.zmap_symbols > 0;
  d.params.version = plan.version;
  return d;
}
}  // namespace

Status decode_tables(const Exec& exec, const uint8_t* stream, const DecodePlan& plan, uint8_t* tables) {
  Status s = check_exec(exec);
  if (!s.ok()) return s;
  if (stream == nullptr || tables == nullptr) return invalid("stream or tables is null");
  if (exec.device >= 0) {
#if defined(ACTZIP_HAVE_CUDA)
    return cuda::decode_tables(exec, stream, plan.mask_book_offset, plan.mask_symbols, plan.code_book_offset,
                               plan.code_symbols, plan.zmap_book_offset, plan.zmap_symbols, plan.direct_log2, tables);
#else
    return no_cuda();
#endif
  }
  uint32_t* t = reinterpret_cast<uint32_t*>(tables);
  const bool ok =
      build_decode_table_one(stream + plan.mask_book_offset, plan.mask_symbols, t, 0, false) &&
      build_decode_table_one(stream + plan.code_book_offset, plan.code_symbols, t + kDecodeTableSize,
                             plan.direct_log2, true) &&
      build_decode_table_one(stream + plan.zmap_book_offset, plan.zmap_symbols, t + 2 * kDecodeTableSize, 0, false);
  if (!ok) return format_error("invalid codebook");
  return Status::Ok();
}

Status decode(const Exec& exec, const uint8_t* stream, const DecodePlan& plan, const uint8_t* tables, void* out,
              uint64_t* status) {
  Status s = check_exec(exec);
  if (!s.ok()) return s;
  if (stream == nullptr || tables == nullptr || status == nullptr || (out == nullptr && plan.info.numel != 0))
    return invalid("stream, tables, out or status is null");
  const DecodeArgs d = decode_args(stream, plan);
  if (exec.device >= 0) {
#if defined(ACTZIP_HAVE_CUDA)
    return cuda::decode(exec, d, tables, out, status);
#else
    return no_cuda();
#endif
  }
  std::mutex mu;
  *status = 0;
  uint64_t first = std::numeric_limits<uint64_t>::max();
  const uint32_t* t = reinterpret_cast<const uint32_t*>(tables);
  const uint8_t* payload = stream + d.header_bytes;
  const uint8_t* table = stream + d.header_bytes - 8 - 8 * uint64_t(d.params.num_chunks);
  host_for(d.params.num_chunks, exec.num_threads, [&](uint32_t c) {
    const uint32_t e = dispatch_dtype(plan.info.dtype, [&](auto dt) {
      return decode_chunk_stream<decltype(dt)::value>(payload, table, c, d.params, t, t + kDecodeTableSize,
                                                      t + 2 * kDecodeTableSize, out);
    });
    if (e == kDecodeOk) return;
    std::lock_guard<std::mutex> lk(mu);
    first = std::min(first, (uint64_t(c) << 8) | e);
  });
  if (first != std::numeric_limits<uint64_t>::max()) *status = first + 1;
  return Status::Ok();
}

std::string decode_status_message(uint64_t status) {
  if (status == 0) return "ok";
  const uint64_t v = status - 1;
  return "chunk " + std::to_string(v >> 8) + ": " + decode_error_text(uint32_t(v & 0xFF));
}

uint32_t crc32(const void* data, uint64_t size) {
  return detail::crc32(0, static_cast<const uint8_t*>(data), size_t(size));
}

}  // namespace pipeline
}  // namespace actzip
