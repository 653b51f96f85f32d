// The CPU backend: OpenMP over the fixed-size chunks of docs/FORMAT.md.
//
// Compression makes two passes over the input. plan_compress() classifies and quantizes
// every element, keeps one small histogram per chunk, chooses each chunk's predictor and
// the tensor's codebooks, and so knows every chunk's exact size before a byte is written.
// encode() quantizes again and writes each chunk straight to its final offset. The bytes
// depend only on the input and the bound, never on the thread count.
#include <algorithm>
#include <atomic>
#include <cmath>
#include <cstring>
#include <limits>
#include <string>

#include "actzip/actzip.h"
#include "codec/bitio.h"
#include "codec/crc32.h"
#include "codec/element.h"
#include "codec/format.h"
#include "codec/huffman.h"

#if defined(ACTZIP_HAVE_OPENMP)
#include <omp.h>
#endif

namespace actzip {

using namespace detail;

size_t element_size(DType dtype) {
  switch (dtype) {
    case DType::kFloat32: return 4;
    case DType::kFloat16:
    case DType::kBFloat16: return 2;
  }
  return 0;
}

uint64_t compress_bound(uint64_t numel, DType dtype, int ndim) {
  const uint32_t chunks = chunk_count(numel);
  const uint64_t full = numel / kChunkElems;
  const uint64_t tail = numel % kChunkElems;
  const size_t es = element_size(dtype);
  uint64_t payload = full * (kChunkHeaderBytes + pad8(uint64_t(kChunkElems) * es));
  if (tail) payload += kChunkHeaderBytes + pad8(tail * es);
  return header_size(size_t(ndim), 256, code_alphabet(kMaxDirectLog2), chunks) + payload + 4;
}

bool have_openmp() {
#if defined(ACTZIP_HAVE_OPENMP)
  return true;
#else
  return false;
#endif
}

int max_threads() {
#if defined(ACTZIP_HAVE_OPENMP)
  return omp_get_num_procs();
#else
  return 1;
#endif
}

namespace {

Status invalid(std::string message) { return Status{StatusCode::kInvalidArgument, std::move(message)}; }
Status internal(std::string message) { return Status{StatusCode::kInternal, std::move(message)}; }

// Runs body(chunk) for every chunk on up to `threads` threads; returns the failure of the
// lowest-numbered chunk that failed, so errors are deterministic too.
template <class Body>
Status for_each_chunk(uint32_t chunks, int threads, Body body) {
  std::atomic<uint32_t> first_bad{std::numeric_limits<uint32_t>::max()};
  std::vector<Status> failures;
  std::vector<uint32_t> failed_chunks;
  const int64_t n = int64_t(chunks);
#if defined(ACTZIP_HAVE_OPENMP)
  const int t = std::max(1, std::min<int>(threads, int(std::max<int64_t>(n, 1))));
#pragma omp parallel num_threads(t)
#endif
  {
    std::vector<std::pair<uint32_t, Status>> mine;
#if defined(ACTZIP_HAVE_OPENMP)
#pragma omp for schedule(dynamic, 1)
#endif
    for (int64_t c = 0; c < n; ++c) {
      if (uint32_t(c) > first_bad.load(std::memory_order_relaxed)) continue;
      Status s = body(uint32_t(c));
      if (!s.ok()) {
        uint32_t cur = first_bad.load();
        while (uint32_t(c) < cur && !first_bad.compare_exchange_weak(cur, uint32_t(c))) {
        }
        mine.emplace_back(uint32_t(c), std::move(s));
      }
    }
#if defined(ACTZIP_HAVE_OPENMP)
#pragma omp critical(actzip_failures)
#endif
    for (auto& m : mine) {
      failed_chunks.push_back(m.first);
      failures.push_back(std::move(m.second));
    }
  }
  if (failures.empty()) return Status::Ok();
  const size_t i = size_t(std::min_element(failed_chunks.begin(), failed_chunks.end()) - failed_chunks.begin());
  return failures[i];
}

// n * log2(n) for the counts one chunk can hold, so entropy estimates cost no logarithms.
const std::vector<float>& nlog2n_table() {
  static const std::vector<float> table = [] {
    std::vector<float> t(kChunkElems + 1, 0.0f);
    for (uint32_t n = 2; n <= kChunkElems; ++n) t[n] = float(double(n) * std::log2(double(n)));
    return t;
  }();
  return table;
}

// Order-0 entropy (in bits) of a histogram of at most kChunkElems counts, plus the extra
// bits of the class bins (fine-bin layout).
template <class Count>
double fine_cost_bits(const Count* hist, uint32_t total) {
  const auto& t = nlog2n_table();
  double bits = t[total];
  for (uint32_t b = 0; b < kFineAlphabet; ++b) {
    const uint32_t n = hist[b];
    if (n == 0) continue;
    bits -= t[n];
    if (b >= (1u << kMaxDirectLog2)) bits += double(n) * (b - (1u << kMaxDirectLog2) + kMaxDirectLog2);
  }
  return bits;
}

struct ChunkPlan {
  ChunkHeader header;
  uint32_t zeros = 0, coded = 0, outliers = 0;
};

// Per-chunk statistics kept between plan and encode, in the fine-bin layout.
struct ChunkHist {
  uint16_t mask[256];
  uint16_t fine[kFineAlphabet];
};

template <int kDT>
void analyze_chunk(const uint8_t* data, uint64_t begin, uint32_t elems, const Quantizer& qz, ChunkPlan* plan,
                   ChunkHist* keep, uint32_t* hist_none, uint32_t* hist_lor) {
  std::memset(hist_none, 0, sizeof(uint32_t) * kFineAlphabet);
  std::memset(hist_lor, 0, sizeof(uint32_t) * kFineAlphabet);
  uint32_t mask_hist[256] = {0};
  uint32_t zeros = 0, coded = 0, outliers = 0;
  int32_t prev = 0;
  uint32_t mask_byte = 0;
  for (uint32_t i = 0; i < elems; ++i) {
    const float x = load_elem<kDT>(data, begin + i);
    int32_t c = 0;
    const int cls = classify<kDT>(x, qz, &c);
    if (cls == kCoded) {
      ++hist_none[fine_bin(code_to_u(c))];
      ++hist_lor[fine_bin(zigzag(c - prev))];
      prev = c;
      mask_byte |= 1u << (i & 7);
      ++coded;
    } else if (cls == kZero) {
      ++zeros;
    } else {
      ++outliers;
    }
    if ((i & 7) == 7 || i + 1 == elems) {
      ++mask_hist[mask_byte];
      mask_byte = 0;
    }
  }
  plan->zeros = zeros;
  plan->coded = coded;
  plan->outliers = outliers;
  ChunkHeader& ch = plan->header;
  if (zeros == elems) {
    ch.kind = kChunkZero;
    return;
  }
  ch.kind = kChunkCoded;
  ch.outliers = outliers;
  ch.flags = coded == elems ? 0 : kChunkHasMask;
  if (fine_cost_bits(hist_lor, coded) < fine_cost_bits(hist_none, coded)) ch.flags |= kChunkLorenzo;
  const uint32_t* chosen = (ch.flags & kChunkLorenzo) ? hist_lor : hist_none;
  for (uint32_t b = 0; b < kFineAlphabet; ++b) keep->fine[b] = uint16_t(chosen[b]);
  for (uint32_t b = 0; b < 256; ++b) keep->mask[b] = uint16_t(mask_hist[b]);
}

template <int kDT>
void finite_range_chunk(const uint8_t* data, uint64_t begin, uint32_t elems, float* lo, float* hi) {
  float mn = std::numeric_limits<float>::infinity(), mx = -mn;
  for (uint32_t i = 0; i < elems; ++i) {
    const float x = load_elem<kDT>(data, begin + i);
    if (std::isfinite(x)) {
      mn = std::min(mn, x);
      mx = std::max(mx, x);
    }
  }
  *lo = mn;
  *hi = mx;
}

template <class F>
auto dispatch_dtype(DType dtype, F f) {
  switch (dtype) {
    case DType::kFloat16: return f(std::integral_constant<int, 2>{});
    case DType::kBFloat16: return f(std::integral_constant<int, 3>{});
    default: return f(std::integral_constant<int, 1>{});
  }
}

// Code lengths without trailing unused symbols (the stream stores only that prefix).
std::vector<uint8_t> trimmed(std::vector<uint8_t> lengths) {
  while (!lengths.empty() && lengths.back() == 0) lengths.pop_back();
  return lengths;
}

}  // namespace

struct CompressPlan::Impl {
  const uint8_t* data = nullptr;
  Header header;
  Quantizer qz{};
  std::vector<ChunkPlan> chunks;
  std::vector<ChunkHist> hists;
  HuffmanEncoder mask_enc, code_enc;
  std::vector<uint8_t> header_buf;
  CompressStats stats;
  uint64_t total_bytes = 0;
};

CompressPlan::CompressPlan(std::unique_ptr<Impl> impl) : impl_(std::move(impl)) {}
CompressPlan::~CompressPlan() = default;
uint64_t CompressPlan::compressed_bytes() const { return impl_->total_bytes; }
double CompressPlan::error_bound() const { return impl_->header.error_bound; }
const CompressStats& CompressPlan::stats() const { return impl_->stats; }

Status plan_compress(const void* data, DType dtype, const std::vector<uint64_t>& shape, const CompressOptions& opt,
                     std::unique_ptr<CompressPlan>* out_plan) {
  if (element_size(dtype) == 0) return invalid("dtype must be float32, float16 or bfloat16");
  if (shape.size() > size_t(kMaxDims)) return invalid("tensors of more than 8 dimensions are not supported");
  uint64_t numel = 1;
  for (uint64_t d : shape) {
    if (d >= kMaxElements || (d != 0 && numel > (kMaxElements - 1) / d))
      return invalid("tensor has more than 2^48 elements");
    numel *= d;
  }
  if (numel != 0 && data == nullptr) return invalid("data is null");
  if (!(std::isfinite(opt.error_bound) && opt.error_bound > 0))
    return invalid("error_bound must be a positive finite number");
  if (opt.mode != BoundMode::kAbs && opt.mode != BoundMode::kRel) return invalid("unknown bound mode");
  if (opt.num_threads < 1) return invalid("num_threads must be at least 1");

  auto impl = std::make_unique<CompressPlan::Impl>();
  impl->data = static_cast<const uint8_t*>(data);
  Header& h = impl->header;
  h.flags = opt.payload_checksum ? kFlagPayloadChecksum : 0;
  h.dtype = dtype;
  h.mode = opt.mode;
  h.requested_bound = opt.error_bound;
  h.shape = shape;
  h.numel = numel;
  h.num_chunks = chunk_count(numel);
  const uint32_t nchunks = h.num_chunks;
  const uint8_t* bytes = impl->data;

  double abs_bound = opt.error_bound;
  if (opt.mode == BoundMode::kRel) {
    std::vector<float> lo(nchunks), hi(nchunks);
    Status s = for_each_chunk(nchunks, opt.num_threads, [&](uint32_t c) {
      dispatch_dtype(dtype, [&](auto dt) {
        finite_range_chunk<decltype(dt)::value>(bytes, uint64_t(c) * kChunkElems, chunk_elem_count(numel, c), &lo[c],
                                                &hi[c]);
      });
      return Status::Ok();
    });
    if (!s.ok()) return s;
    double mn = std::numeric_limits<double>::infinity(), mx = -mn;
    for (uint32_t c = 0; c < nchunks; ++c) {
      mn = std::min(mn, double(lo[c]));
      mx = std::max(mx, double(hi[c]));
    }
    // The range of the finite values; a constant tensor falls back to its magnitude, and a
    // tensor with no non-zero finite value to 1 (nothing in it is approximated then).
    double range = mx >= mn ? mx - mn : 0.0;
    if (range == 0) range = mx >= mn ? std::max(std::fabs(mn), std::fabs(mx)) : 0.0;
    if (range == 0) range = 1.0;
    abs_bound = opt.error_bound * range;
    if (!(abs_bound > 0)) abs_bound = std::numeric_limits<double>::denorm_min();
    if (!std::isfinite(abs_bound)) abs_bound = std::numeric_limits<double>::max();
  }
  h.error_bound = abs_bound;
  h.step_exp = step_exp_for(abs_bound);
  impl->qz = make_quantizer(abs_bound, h.step_exp);
  const Quantizer qz = impl->qz;

  // Pass 1: classify, quantize and histogram every chunk.
  impl->chunks.assign(nchunks, ChunkPlan{});
  impl->hists.resize(nchunks);
  Status s = for_each_chunk(nchunks, opt.num_threads, [&](uint32_t c) {
    thread_local std::vector<uint32_t> scratch;
    scratch.resize(2 * kFineAlphabet);
    dispatch_dtype(dtype, [&](auto dt) {
      analyze_chunk<decltype(dt)::value>(bytes, uint64_t(c) * kChunkElems, chunk_elem_count(numel, c), qz,
                                         &impl->chunks[c], &impl->hists[c], scratch.data(),
                                         scratch.data() + kFineAlphabet);
    });
    return Status::Ok();
  });
  if (!s.ok()) return s;

  // The tensor's histograms, then its codebooks.
  std::vector<uint64_t> fine(kFineAlphabet, 0), mask(256, 0);
  bool any_mask = false;
  for (uint32_t c = 0; c < nchunks; ++c) {
    const ChunkPlan& cp = impl->chunks[c];
    impl->stats.zeros += cp.zeros;
    impl->stats.coded += cp.coded;
    impl->stats.outliers += cp.outliers;
    if (cp.header.kind != kChunkCoded) continue;
    for (uint32_t b = 0; b < kFineAlphabet; ++b) fine[b] += impl->hists[c].fine[b];
    if (cp.header.flags & kChunkHasMask) {
      any_mask = true;
      for (uint32_t b = 0; b < 256; ++b) mask[b] += impl->hists[c].mask[b];
    }
  }
  // direct_log2: the k whose codebook plus estimated code size is smallest.
  int best_k = kMaxDirectLog2;
  double best_bits = std::numeric_limits<double>::infinity();
  std::vector<uint64_t> sym_freq;
  for (int k = 0; k <= kMaxDirectLog2; ++k) {
    sym_freq.assign(code_alphabet(k), 0);
    double extra = 0;
    uint64_t total = 0;
    uint32_t last_used = 0;
    for (uint32_t b = 0; b < kFineAlphabet; ++b) {
      if (fine[b] == 0) continue;
      int eb = 0;
      const uint32_t sym = fine_bin_to_symbol(b, k, &eb);
      sym_freq[sym] += fine[b];
      extra += double(fine[b]) * eb;
      total += fine[b];
      last_used = std::max(last_used, sym + 1);
    }
    double bits = extra + 4.0 * last_used;
    for (uint64_t f : sym_freq)
      if (f) bits -= double(f) * std::log2(double(f) / double(total));
    if (bits < best_bits) {
      best_bits = bits;
      best_k = k;
    }
  }
  h.direct_log2 = best_k;
  sym_freq.assign(code_alphabet(best_k), 0);
  for (uint32_t b = 0; b < kFineAlphabet; ++b) {
    int eb = 0;
    if (fine[b]) sym_freq[fine_bin_to_symbol(b, best_k, &eb)] += fine[b];
  }
  h.code_lengths = trimmed(huffman_lengths(sym_freq.data(), uint32_t(sym_freq.size())));
  h.mask_lengths = any_mask ? trimmed(huffman_lengths(mask.data(), 256)) : std::vector<uint8_t>{};
  if (!impl->code_enc.build(h.code_lengths) || !impl->mask_enc.build(h.mask_lengths))
    return internal("Huffman code construction failed");

  // Exact chunk sizes; a chunk that does not shrink is stored raw.
  const size_t es = element_size(dtype);
  h.chunk_end.resize(nchunks);
  uint64_t end = 0;
  for (uint32_t c = 0; c < nchunks; ++c) {
    ChunkPlan& cp = impl->chunks[c];
    ChunkHeader& ch = cp.header;
    const uint32_t elems = chunk_elem_count(numel, c);
    if (ch.kind == kChunkCoded) {
      uint64_t code_bits = 0, mask_bits = 0;
      const ChunkHist& hist = impl->hists[c];
      for (uint32_t b = 0; b < kFineAlphabet; ++b) {
        if (!hist.fine[b]) continue;
        int eb = 0;
        const uint32_t sym = fine_bin_to_symbol(b, best_k, &eb);
        code_bits += uint64_t(hist.fine[b]) * (h.code_lengths[sym] + eb);
      }
      if (ch.flags & kChunkHasMask)
        for (uint32_t b = 0; b < 256; ++b)
          if (hist.mask[b]) mask_bits += uint64_t(hist.mask[b]) * h.mask_lengths[b];
      ch.code_bytes = uint32_t(pad8((code_bits + 7) / 8));
      ch.mask_bytes = uint32_t(pad8((mask_bits + 7) / 8));
      ChunkHeader raw;
      raw.kind = kChunkRaw;
      if (chunk_length(ch, elems, es) >= chunk_length(raw, elems, es)) ch = raw;
    }
    if (ch.kind == kChunkRaw) ++impl->stats.raw_chunks;
    if (ch.kind == kChunkZero) ++impl->stats.zero_chunks;
    if (ch.kind == kChunkCoded && (ch.flags & kChunkLorenzo)) ++impl->stats.lorenzo_chunks;
    end += chunk_length(ch, elems, es);
    h.chunk_end[c] = end;
  }
  h.header_bytes = header_size(shape.size(), h.mask_lengths.size(), h.code_lengths.size(), nchunks);
  impl->header_buf.resize(h.header_bytes);
  write_header(h, impl->header_buf.data());
  impl->total_bytes = h.header_bytes + end + (opt.payload_checksum ? 4 : 0);
  *out_plan = std::make_unique<CompressPlan>(std::move(impl));
  return Status::Ok();
}

namespace {

template <int kDT>
Status encode_chunk(const CompressPlan::Impl& p, uint32_t c, uint8_t* out) {
  const Header& h = p.header;
  const ChunkHeader& ch = p.chunks[c].header;
  const uint32_t elems = chunk_elem_count(h.numel, c);
  const uint64_t begin = uint64_t(c) * kChunkElems;
  const size_t es = element_size(h.dtype);
  write_chunk_header(ch, out);
  if (ch.kind == kChunkZero) return Status::Ok();
  uint8_t* body = out + kChunkHeaderBytes;
  if (ch.kind == kChunkRaw) {
    const uint64_t n = uint64_t(elems) * es;
    std::memcpy(body, p.data + begin * es, n);
    std::memset(body + n, 0, pad8(n) - n);
    return Status::Ok();
  }
  const bool has_mask = ch.flags & kChunkHasMask;
  const bool lorenzo = ch.flags & kChunkLorenzo;
  const int k = h.direct_log2;
  BitWriter mask_w(body, body + ch.mask_bytes);
  uint8_t* code_begin = body + ch.mask_bytes;
  BitWriter code_w(code_begin, code_begin + ch.code_bytes);
  uint8_t* pos_out = code_begin + ch.code_bytes;
  uint8_t* val_out = pos_out + pad8(2 * uint64_t(ch.outliers));
  const uint16_t* code = p.code_enc.code.data();
  const uint8_t* len = p.code_enc.len.data();
  const size_t nsym = p.code_enc.len.size();
  uint32_t outliers = 0, coded = 0;
  bool unknown_symbol = false;
  int32_t prev = 0;
  uint32_t mask_byte = 0;
  for (uint32_t i = 0; i < elems; ++i) {
    const float x = load_elem<kDT>(p.data, begin + i);
    int32_t cval = 0;
    const int cls = classify<kDT>(x, p.qz, &cval);
    if (cls == kCoded) {
      const uint32_t u = lorenzo ? zigzag(cval - prev) : code_to_u(cval);
      prev = cval;
      int eb = 0;
      const uint32_t sym = u_to_symbol(u, k, &eb);
      if (sym >= nsym || len[sym] == 0) {
        unknown_symbol = true;
        break;
      }
      code_w.put(code[sym], len[sym]);
      if (eb) code_w.put(u - (1u << eb), eb);
      mask_byte |= 1u << (i & 7);
      ++coded;
    } else if (cls == kOutlier) {
      if (outliers == ch.outliers) {
        unknown_symbol = true;
        break;
      }
      put_u16(pos_out + 2 * outliers, uint16_t(i));
      std::memcpy(val_out + es * outliers, p.data + (begin + i) * es, es);
      ++outliers;
    }
    if (has_mask && ((i & 7) == 7 || i + 1 == elems)) {
      if (mask_byte >= p.mask_enc.len.size() || p.mask_enc.len[mask_byte] == 0) {
        unknown_symbol = true;
        break;
      }
      mask_w.put(p.mask_enc.code[mask_byte], p.mask_enc.len[mask_byte]);
      mask_byte = 0;
    }
  }
  const bool ok_bits = mask_w.finish() & code_w.finish();
  if (unknown_symbol || !ok_bits || outliers != ch.outliers || coded != p.chunks[c].coded)
    return invalid("the input tensor changed between plan_compress() and encode()");
  const uint64_t pos_bytes = 2 * uint64_t(outliers), val_bytes = es * uint64_t(outliers);
  std::memset(pos_out + pos_bytes, 0, pad8(pos_bytes) - pos_bytes);
  std::memset(val_out + val_bytes, 0, pad8(val_bytes) - val_bytes);
  return Status::Ok();
}

}  // namespace

Status encode(const CompressPlan& plan, void* out, uint64_t out_bytes, int num_threads) {
  const CompressPlan::Impl& p = plan.impl();
  if (out == nullptr || out_bytes < p.total_bytes)
    return Status{StatusCode::kBufferTooSmall, "output buffer is smaller than compressed_bytes()"};
  if (num_threads < 1) return invalid("num_threads must be at least 1");
  uint8_t* dst = static_cast<uint8_t*>(out);
  std::memcpy(dst, p.header_buf.data(), p.header_buf.size());
  uint8_t* payload = dst + p.header.header_bytes;
  Status s = for_each_chunk(p.header.num_chunks, num_threads, [&](uint32_t c) {
    const uint64_t start = c == 0 ? 0 : p.header.chunk_end[c - 1];
    return dispatch_dtype(p.header.dtype,
                          [&](auto dt) { return encode_chunk<decltype(dt)::value>(p, c, payload + start); });
  });
  if (!s.ok()) return s;
  if (p.header.flags & kFlagPayloadChecksum) {
    const uint64_t payload_bytes = p.header.num_chunks ? p.header.chunk_end.back() : 0;
    put_u32(payload + payload_bytes, crc32(0, payload, size_t(payload_bytes)));
  }
  return Status::Ok();
}

namespace {

Status parse_and_check(const void* stream, uint64_t size, Header* h) {
  if (stream == nullptr && size != 0) return invalid("stream is null");
  return parse_header(static_cast<const uint8_t*>(stream), size, h);
}

void fill_info(const Header& h, uint64_t size, StreamInfo* info) {
  if (!info) return;
  info->dtype = h.dtype;
  info->shape = h.shape;
  info->numel = h.numel;
  info->mode = h.mode;
  info->requested_bound = h.requested_bound;
  info->error_bound = h.error_bound;
  info->step_exp = h.step_exp;
  info->payload_checksum = h.flags & kFlagPayloadChecksum;
  info->num_chunks = h.num_chunks;
  info->header_bytes = h.header_bytes;
  info->stream_bytes = size;
}

Status check_payload_crc(const uint8_t* s, const Header& h) {
  if (!(h.flags & kFlagPayloadChecksum)) return Status::Ok();
  const uint64_t payload_bytes = h.num_chunks ? h.chunk_end.back() : 0;
  const uint8_t* payload = s + h.header_bytes;
  if (crc32(0, payload, size_t(payload_bytes)) != get_u32(payload + payload_bytes))
    return format_error("payload checksum mismatch");
  return Status::Ok();
}

struct Decoders {
  HuffmanDecoder mask, code;
};

// Consumed bits must fill the section exactly up to its zero padding.
bool section_fits(const BitReader& r, uint32_t section_bytes, uint64_t consumed_bits) {
  return !r.overran() && pad8((consumed_bits + 7) / 8) == section_bytes;
}

template <int kDT>
Status decode_chunk(const uint8_t* payload, const Header& h, const Decoders& dec, uint32_t c, uint8_t* out) {
  const uint64_t start = c == 0 ? 0 : h.chunk_end[c - 1];
  const uint64_t span = h.chunk_end[c] - start;
  const uint32_t elems = chunk_elem_count(h.numel, c);
  const uint64_t begin = uint64_t(c) * kChunkElems;
  const size_t es = element_size(h.dtype);
  const uint8_t* chunk = payload + start;
  ChunkHeader ch;
  Status s = parse_chunk_header(chunk, span, elems, es, &ch);
  if (!s.ok()) return format_error("chunk %u: %s", c, s.message.c_str());
  uint8_t* dst = out + begin * es;
  const uint8_t* body = chunk + kChunkHeaderBytes;
  if (ch.kind == kChunkZero) {
    std::memset(dst, 0, uint64_t(elems) * es);
    return Status::Ok();
  }
  if (ch.kind == kChunkRaw) {
    std::memcpy(dst, body, uint64_t(elems) * es);
    return Status::Ok();
  }
  const bool has_mask = ch.flags & kChunkHasMask;
  const bool lorenzo = ch.flags & kChunkLorenzo;
  const uint32_t mask_len = (elems + 7) / 8;
  uint8_t mask[kChunkElems / 8];
  uint32_t coded = elems;
  if (has_mask) {
    if (h.mask_lengths.empty()) return format_error("chunk %u has a mask but the stream has no mask codebook", c);
    BitReader r(body, body + ch.mask_bytes);
    const uint16_t* table = dec.mask.table.data();
    uint64_t consumed = 0;
    coded = 0;
    for (uint32_t j = 0; j < mask_len; ++j) {
      if (r.available() < kMaxCodeLen) r.refill();
      const uint16_t e = table[r.peek() & (kDecodeTableSize - 1)];
      const int l = e >> 12;
      if (l == 0) return format_error("chunk %u: invalid mask code", c);
      r.consume(l);
      consumed += uint64_t(l);
      mask[j] = uint8_t(e & 0xFFF);
      coded += uint32_t(__builtin_popcount(mask[j]));
    }
    if (!section_fits(r, ch.mask_bytes, consumed)) return format_error("chunk %u: mask section length mismatch", c);
    if ((elems & 7) && (mask[mask_len - 1] >> (elems & 7)) != 0)
      return format_error("chunk %u: mask bits set past the last element", c);
    if (ch.outliers > elems - coded) return format_error("chunk %u: more outliers than uncoded elements", c);
  }
  const Quantizer qz = make_quantizer(h.error_bound, h.step_exp);
  const int k = h.direct_log2;
  const uint32_t direct = 1u << k;
  const uint16_t* table = dec.code.table.data();
  BitReader r(body + ch.mask_bytes, body + ch.mask_bytes + ch.code_bytes);
  uint64_t consumed = 0;
  int32_t prev = 0;
  bool bad = false;
  if (coded > 0 && h.code_lengths.empty()) return format_error("chunk %u has codes but the stream has no codebook", c);
  auto next_value = [&]() -> float {
    if (r.available() < kMaxCodeLen + kMaxExtraBits) r.refill();
    const uint16_t e = table[r.peek() & (kDecodeTableSize - 1)];
    const int l = e >> 12;
    const uint32_t sym = e & 0xFFFu;
    r.consume(l);
    uint32_t u = sym;
    int extra = 0;
    if (sym >= direct) {
      extra = int(sym - direct) + k;
      u = (1u << extra) + r.take(extra);
    }
    consumed += uint64_t(l + extra);
    const int32_t cv = lorenzo ? prev + unzigzag(u) : u_to_code(u);
    bad |= (l == 0) | (cv == 0) | (cv > kMaxCode) | (cv < -kMaxCode) | (extra > kMaxExtraBits);
    prev = bad ? 0 : cv;
    return reconstruct(bad ? 1 : cv, qz);
  };
  if (!has_mask) {
    for (uint32_t i = 0; i < elems; ++i) store_elem<kDT>(dst, i, next_value());
  } else {
    for (uint32_t j = 0; j < mask_len; ++j) {
      const uint32_t m = mask[j];
      const uint32_t n = std::min<uint32_t>(8, elems - 8 * j);
      if (m == 0) {
        std::memset(dst + uint64_t(8 * j) * es, 0, uint64_t(n) * es);
        continue;
      }
      for (uint32_t b = 0; b < n; ++b)
        store_elem<kDT>(dst, 8 * j + b, ((m >> b) & 1u) ? next_value() : 0.0f);
    }
  }
  if (bad) return format_error("chunk %u: invalid code", c);
  if (!section_fits(r, ch.code_bytes, consumed)) return format_error("chunk %u: code section length mismatch", c);
  // Outliers: strictly increasing positions of uncoded elements, then their exact bits.
  const uint8_t* pos = body + ch.mask_bytes + ch.code_bytes;
  const uint8_t* val = pos + pad8(2 * uint64_t(ch.outliers));
  int64_t last = -1;
  for (uint32_t o = 0; o < ch.outliers; ++o) {
    const uint32_t i = get_u16(pos + 2 * o);
    if (int64_t(i) <= last || i >= elems || ((mask[i / 8] >> (i & 7)) & 1u))
      return format_error("chunk %u: invalid outlier position", c);
    last = i;
    std::memcpy(dst + uint64_t(i) * es, val + uint64_t(o) * es, es);
  }
  return Status::Ok();
}

}  // namespace

Status read_info(const void* stream, uint64_t stream_bytes, StreamInfo* info) {
  Header h;
  Status s = parse_and_check(stream, stream_bytes, &h);
  if (!s.ok()) return s;
  fill_info(h, stream_bytes, info);
  return Status::Ok();
}

Status validate(const void* stream, uint64_t stream_bytes, StreamInfo* info) {
  Header h;
  Status s = parse_and_check(stream, stream_bytes, &h);
  if (!s.ok()) return s;
  const uint8_t* bytes = static_cast<const uint8_t*>(stream);
  const size_t es = element_size(h.dtype);
  for (uint32_t c = 0; c < h.num_chunks; ++c) {
    const uint64_t start = c == 0 ? 0 : h.chunk_end[c - 1];
    ChunkHeader ch;
    s = parse_chunk_header(bytes + h.header_bytes + start, h.chunk_end[c] - start, chunk_elem_count(h.numel, c), es,
                           &ch);
    if (!s.ok()) return format_error("chunk %u: %s", c, s.message.c_str());
  }
  s = check_payload_crc(bytes, h);
  if (!s.ok()) return s;
  fill_info(h, stream_bytes, info);
  return Status::Ok();
}

Status decompress(const void* stream, uint64_t stream_bytes, void* out, uint64_t out_bytes, int num_threads) {
  Header h;
  Status s = parse_and_check(stream, stream_bytes, &h);
  if (!s.ok()) return s;
  if (num_threads < 1) return invalid("num_threads must be at least 1");
  const uint64_t need = h.numel * element_size(h.dtype);
  if (out_bytes < need || (out == nullptr && need != 0))
    return Status{StatusCode::kBufferTooSmall, "output buffer is smaller than the decoded tensor"};
  const uint8_t* bytes = static_cast<const uint8_t*>(stream);
  s = check_payload_crc(bytes, h);
  if (!s.ok()) return s;
  Decoders dec;
  if (!dec.mask.build(h.mask_lengths) || !dec.code.build(h.code_lengths))
    return format_error("invalid codebook");
  const uint8_t* payload = bytes + h.header_bytes;
  uint8_t* dst = static_cast<uint8_t*>(out);
  return for_each_chunk(h.num_chunks, num_threads, [&](uint32_t c) {
    return dispatch_dtype(h.dtype, [&](auto dt) { return decode_chunk<decltype(dt)::value>(payload, h, dec, c, dst); });
  });
}

}  // namespace actzip
