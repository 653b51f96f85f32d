// The CPU backend: worker threads over the fixed-size chunks of docs/FORMAT.md.
//
// plan_compress() samples every chunk to choose its predictor and the tensor's codebooks
// (or takes both from CompressOptions::reuse), then classifies each element once and
// encodes each chunk into a buffer of the plan's (the plan holds about the compressed
// size). encode() copies the chunks to their final offsets in the caller's buffer. The
// bytes depend only on the input, the bound and the choices, never on the thread count.
#include <algorithm>
#include <atomic>
#include <cmath>
#include <cstring>
#include <limits>
#include <mutex>
#include <string>

#include "actzip/actzip.h"
#include "codec/bitio.h"
#include "codec/chunk.h"
#include "codec/crc32.h"
#include "codec/element.h"
#include "codec/format.h"
#include "codec/huffman.h"
#include "codec/plan.h"

#include "cpu/passes.h"
#include "cpu/thread_pool.h"

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
  return header_size(size_t(ndim), 256, code_alphabet(kMaxDirectLog2), 256, chunks) + payload + 4;
}

int max_threads() { return available_processors(); }
const char* parallel_runtime() { return detail::parallel_runtime(); }
void use_own_threads(bool own) { detail::use_own_threads(own); }

namespace {

Status invalid(std::string message) { return Status{StatusCode::kInvalidArgument, std::move(message)}; }

// Runs body(chunk, slot) for every chunk on up to `threads` threads; returns the failure
// of the lowest-numbered chunk that failed, so errors are deterministic too.
template <class Body>
Status for_each_chunk(uint32_t chunks, int threads, Body body) {
  std::mutex mu;
  uint32_t first_bad = std::numeric_limits<uint32_t>::max();
  Status failure;
  parallel_for(int64_t(chunks), std::min<int>(threads, int(std::max<uint32_t>(chunks, 1))),
               [&](int64_t index, int slot) {
                 const uint32_t c = uint32_t(index);
                 Status s = body(c, slot);
                 if (s.ok()) return;
                 std::lock_guard<std::mutex> lk(mu);
                 if (c < first_bad) {
                   first_bad = c;
                   failure = std::move(s);
                 }
               });
  return failure;
}

// Worst case of one encoded chunk body: 12 + 24 bits a code, 12 bits a mask or map byte.
inline constexpr uint64_t kMaxLaneBytes = pad8(uint64_t(kChunkElems / kCodeLanes) * 36 / 8);
inline constexpr uint64_t kLaneStride = kMaxLaneBytes + 8;  // slack for FastBitWriter
inline constexpr uint64_t kMaxMaskSection = pad8(uint64_t(kChunkElems / 8) * 12 / 8);

struct ChunkPlan {
  // Chunk flags chosen from the sample: the predictor's (0: none), and kChunkZeroMap.
  uint8_t predictor = 0;
  std::vector<uint8_t> bytes;    // the encoded chunk, header included
  uint32_t zeros = 0, coded = 0, outliers = 0;
  uint8_t kind = kChunkZero;
};

// classify_codes_*() (passes.h) of a chunk's elements, for its dtype.
template <int kDT>
void classify_codes_chunk(const uint8_t* data, uint64_t begin, uint32_t elems, const Quantizer& qz, int32_t* codes,
                          int32_t* q_out, uint32_t* u_out, uint32_t* zeros, uint32_t* outliers) {
  if constexpr (kDT == 1)
    classify_codes_f32(reinterpret_cast<const float*>(data) + begin, elems, qz, codes, q_out, u_out, zeros, outliers);
  else if constexpr (kDT == 2)
    classify_codes_f16(reinterpret_cast<const uint16_t*>(data) + begin, elems, qz, codes, q_out, u_out, zeros,
                       outliers);
  else
    classify_codes_bf16(reinterpret_cast<const uint16_t*>(data) + begin, elems, qz, codes, q_out, u_out, zeros,
                        outliers);
}

// Classification is the hot loop of sampling: the main pass's, the counts left unused.
template <int kDT>
void classify_chunk(const uint8_t* data, uint64_t begin, uint32_t elems, const Quantizer& qz, int32_t* codes) {
  uint32_t zeros, outliers;
  classify_codes_chunk<kDT>(data, begin, elems, qz, codes, nullptr, nullptr, &zeros, &outliers);
}

// The zeros before a chunk's q grid: the 2-D predictor reads up to kMax2DRow + 1 elements back.
inline constexpr uint32_t kGridPad = pad8(kMax2DRow + 1);

// Thread-local scratch of the main pass (8 bytes of slack for FastBitWriter).
struct Scratch {
  std::vector<int32_t> codes = std::vector<int32_t>(kChunkElems);
  std::vector<uint32_t> u = std::vector<uint32_t>(kChunkElems);
  std::vector<int32_t> grid = std::vector<int32_t>(kGridPad + kChunkElems);  // q, after kGridPad zeros
  std::vector<uint8_t> sign = std::vector<uint8_t>(kChunkElems / 8 + 16);
  std::vector<uint16_t> outlier_pos = std::vector<uint16_t>(kChunkElems + 1);
  std::vector<uint8_t> mask_bytes = std::vector<uint8_t>(kChunkElems / 8);
  std::vector<uint8_t> mask = std::vector<uint8_t>(kMaxMaskSection + 8);
  std::vector<uint8_t> zmap_bytes = std::vector<uint8_t>(kChunkElems / 8);
  std::vector<uint8_t> zmap = std::vector<uint8_t>(kMaxMaskSection + 8);
  std::vector<uint8_t> code = std::vector<uint8_t>(kCodeLanes * kLaneStride);
};

struct Books {
  int k = 0;
  uint32_t row = 0;  // the 2-D predictor's row length (0: not used)
  HuffmanEncoder mask, code, zmap;
  std::vector<uint32_t> code_len;  // code symbols' bit-reversed code | length << 16
  std::vector<uint32_t> small;     // the codes of values below kSmallValues (passes.h)

  void pack() {
    code_len.resize(code.len.size());
    small.resize(kSmallValues);
    build_code_tables(code, k, code_len.data(), small.data());
  }
};

// Huffman-codes n bytes (mask or zero-map bytes) with a byte codebook into out; returns the
// bytes the bit stream fills (the rest of its pad8 section is zero padding).
uint64_t encode_byte_stream(const HuffmanEncoder& book, const uint8_t* bytes, uint32_t n, uint8_t* out) {
  FastBitWriter w(out);
  for (uint32_t j = 0; j < n; ++j) w.put(book.code[bytes[j]], book.len[bytes[j]]);
  return w.flush();
}

// Classifies and encodes one chunk into cp->bytes.
template <int kDT>
Status encode_chunk(const uint8_t* data, uint64_t begin, uint32_t elems, const Quantizer& qz, const Books& books,
                    Scratch& sc, ChunkPlan* cp) {
  const size_t es = kDT == 1 ? 4 : 2;
  int32_t* codes = sc.codes.data();
  int32_t* q = sc.grid.data() + kGridPad;  // preceded by zeros: the 2-D predictor's outside neighbours
  uint32_t* u = sc.u.data();
  uint16_t* outlier_pos = sc.outlier_pos.data();
  uint8_t* mask_bytes = sc.mask_bytes.data();
  const uint8_t predictor = cp->predictor & (kChunkLorenzo | kChunkLorenzo2D);
  // Both Lorenzo predictors work on q; the other codes the codes themselves (as u).
  const bool on_q = predictor != 0;
  int32_t* q_out = on_q ? q : nullptr;
  uint32_t* u_out = on_q ? nullptr : u;
  uint32_t zeros = 0, outliers = 0;
  classify_codes_chunk<kDT>(data, begin, elems, qz, codes, q_out, u_out, &zeros, &outliers);
  uint32_t coded = elems - zeros - outliers;
  const bool has_mask = coded != elems;
  uint64_t sign_len = 0;
  if (zeros != elems) {
    // u: the values to code, one per coded element, in order; the mask and the outliers'
    // positions where not every element is coded.
    if (predictor == kChunkLorenzo2D) {
      lorenzo2d_residuals(q, elems, books.row, uint32_t(begin % books.row), u);
      if (has_mask) compact_coded(codes, elems, u, mask_bytes);
    } else if (predictor == kChunkLorenzo) {
      if (has_mask) compact_coded(codes, elems, reinterpret_cast<uint32_t*>(q), mask_bytes);
      lorenzo1d_residuals(q, coded, u);
    } else {
      if (has_mask) compact_coded(codes, elems, u, mask_bytes);
    }
    if (outliers) outlier_positions(codes, elems, outlier_pos);
    // The sign stream: one bit (1 = negative) for each coded element whose q is 0, in
    // order; only the predictors that work on q need it.
    if (on_q) sign_len = pad8(write_sign_stream(codes, elems, sc.sign.data()));
  }
  cp->zeros = zeros;
  cp->outliers = outliers;
  cp->coded = coded;
  ChunkHeader ch;
  uint64_t mask_len = 0, code_len = 0;  // bytes the bit streams filled (the rest is padding)
  uint64_t zmap_fill = 0, zmap_len = 0;  // the zero map's filled bytes, and its section length
  uint64_t lane_bytes[kCodeLanes] = {0};
  const bool zero_map = (cp->predictor & kChunkZeroMap) && coded > 0;
  if (zeros == elems) {
    ch.kind = kChunkZero;
  } else {
    ch.kind = kChunkCoded;
    ch.outliers = outliers;
    ch.flags = uint8_t((has_mask ? kChunkHasMask : 0) | predictor | (zero_map ? kChunkZeroMap : 0));
    if (coded > 0) {
      uint32_t carried = coded;
      if (zero_map) {
        // The zero map, and only the values that are not 0 left in u for the lanes.
        carried = compact_nonzero(u, coded, sc.zmap_bytes.data());
        zmap_fill = encode_byte_stream(books.zmap, sc.zmap_bytes.data(), (coded + 7) / 8, sc.zmap.data());
        zmap_len = pad8(zmap_fill);
      }
      // Carried value t goes to lane t % kCodeLanes, so a decoder follows the lanes at once.
      huffman_encode_lanes(u, carried, books.small.data(), books.code_len.data(), books.k, sc.code.data(),
                           kLaneStride, lane_bytes);
      code_len = kLaneTableBytes + zmap_len + sign_len;
      for (uint32_t l = 0; l < kCodeLanes; ++l) {
        lane_bytes[l] = pad8(lane_bytes[l]);
        code_len += lane_bytes[l];
      }
    }
    if (has_mask) mask_len = encode_byte_stream(books.mask, mask_bytes, (elems + 7) / 8, sc.mask.data());
    ch.code_bytes = uint32_t(pad8(code_len));
    ch.mask_bytes = uint32_t(pad8(mask_len));
    ChunkHeader raw;
    raw.kind = kChunkRaw;
    if (chunk_length(ch, elems, es) >= chunk_length(raw, elems, es)) ch = raw;
  }
  cp->kind = ch.kind;
  cp->bytes.assign(chunk_length(ch, elems, es), 0);  // zeros: the padding of every section
  uint8_t* out = cp->bytes.data();
  write_chunk_header(ch, out);
  uint8_t* body = out + kChunkHeaderBytes;
  if (ch.kind == kChunkRaw) {
    std::memcpy(body, data + begin * es, uint64_t(elems) * es);
  } else if (ch.kind == kChunkCoded) {
    std::memcpy(body, sc.mask.data(), size_t(mask_len));
    if (code_len > 0) {
      uint8_t* lanes = body + ch.mask_bytes;
      std::memcpy(lanes + kLaneTableBytes, sc.zmap.data(), size_t(zmap_fill));
      uint64_t at = kLaneTableBytes + zmap_len;
      for (uint32_t l = 0; l < kCodeLanes; ++l) {
        put_u32(lanes + 4 * l, uint32_t(lane_bytes[l]));
        std::memcpy(lanes + at, sc.code.data() + l * kLaneStride, size_t(lane_bytes[l]));
        at += lane_bytes[l];
      }
      put_u32(lanes + 4 * kCodeLanes, uint32_t(sign_len));
      put_u32(lanes + 4 * kCodeLanes + 4, uint32_t(zmap_len));
      std::memcpy(lanes + at, sc.sign.data(), size_t(sign_len));
    }
    uint8_t* pos = body + ch.mask_bytes + ch.code_bytes;
    uint8_t* val = pos + pad8(2 * uint64_t(outliers));
    for (uint32_t o = 0; o < outliers; ++o) {
      put_u16(pos + 2 * o, outlier_pos[o]);
      std::memcpy(val + es * o, data + (begin + outlier_pos[o]) * es, es);
    }
  }
  return Status::Ok();
}

// Min and max of the finite elements as order-preserving integer keys (chunk.h): integer
// min/max reductions vectorize; float ones would need to drop NaN semantics.
template <int kDT, class T>
inline void range_loop(const T* __restrict x, uint32_t n, int32_t* lo, int32_t* hi) {
  int32_t mn = INT32_MAX, mx = INT32_MIN;
  for (uint32_t i = 0; i < n; ++i) {
    const float v = load_elem<kDT>(x, i);
    // Selects written as masks: GCC turns the ternaries into a branch, which does not vectorize.
    const int32_t finite = -int32_t((f32_bits(v) & 0x7F800000u) != 0x7F800000u);
    const int32_t key = order_key(v);
    mn = std::min(mn, (key & finite) | (INT32_MAX & ~finite));
    mx = std::max(mx, (key & finite) | (INT32_MIN & ~finite));
  }
  *lo = mn;
  *hi = mx;
}
ACTZIP_MULTIVERSION_WIDE void range_f32(const float* x, uint32_t n, int32_t* lo, int32_t* hi) { range_loop<1>(x, n, lo, hi); }
// float16 is widened a block at a time first (f16_to_f32() has branches that would keep
// the loop from vectorizing).
void range_f16(const uint16_t* x, uint32_t n, int32_t* lo, int32_t* hi) {
  constexpr uint32_t kBlock = 2048;
  float wide[kBlock];
  int32_t mn = INT32_MAX, mx = INT32_MIN;
  for (uint32_t i = 0; i < n; i += kBlock) {
    const uint32_t m = std::min(kBlock, n - i);
    widen_f16(x + i, m, wide);
    int32_t l, h;
    range_f32(wide, m, &l, &h);
    mn = std::min(mn, l);
    mx = std::max(mx, h);
  }
  *lo = mn;
  *hi = mx;
}
ACTZIP_MULTIVERSION_WIDE void range_bf16(const uint16_t* x, uint32_t n, int32_t* lo, int32_t* hi) { range_loop<3>(x, n, lo, hi); }

// The finite minimum and maximum of a chunk (+Inf and -Inf when it has no finite element).
template <int kDT>
void finite_range_chunk(const uint8_t* data, uint64_t begin, uint32_t elems, float* lo, float* hi) {
  int32_t klo, khi;
  if constexpr (kDT == 1) range_f32(reinterpret_cast<const float*>(data) + begin, elems, &klo, &khi);
  else if constexpr (kDT == 2) range_f16(reinterpret_cast<const uint16_t*>(data) + begin, elems, &klo, &khi);
  else range_bf16(reinterpret_cast<const uint16_t*>(data) + begin, elems, &klo, &khi);
  const bool any = klo <= khi;
  *lo = any ? key_value(klo) : std::numeric_limits<float>::infinity();
  *hi = any ? key_value(khi) : -std::numeric_limits<float>::infinity();
}


}  // namespace

struct CompressChoices::Impl {
  DType dtype = DType::kFloat32;
  std::vector<uint64_t> shape;
  float quant_step = 0;
  std::vector<uint8_t> predictors;  // per chunk: its predictor's flag | kChunkZeroMap
  std::vector<uint8_t> code_lengths, mask_lengths, zmap_lengths;
  Books books;  // built from the lengths (direct_log2 in books.k), packed, with the shape's 2-D row
};

CompressChoices::CompressChoices(std::unique_ptr<Impl> impl) : impl_(std::move(impl)) {}
CompressChoices::~CompressChoices() = default;
DType CompressChoices::dtype() const { return impl_->dtype; }
const std::vector<uint64_t>& CompressChoices::shape() const { return impl_->shape; }
float CompressChoices::quant_step() const { return impl_->quant_step; }

struct CompressPlan::Impl {
  Header header;
  std::vector<ChunkPlan> chunks;
  std::shared_ptr<const CompressChoices> choices;
  std::vector<uint8_t> header_buf;
  CompressStats stats;
  uint64_t total_bytes = 0;
};

CompressPlan::CompressPlan(std::unique_ptr<Impl> impl) : impl_(std::move(impl)) {}
CompressPlan::~CompressPlan() = default;
uint64_t CompressPlan::compressed_bytes() const { return impl_->total_bytes; }
double CompressPlan::error_bound() const { return impl_->header.error_bound; }
const CompressStats& CompressPlan::stats() const { return impl_->stats; }
std::shared_ptr<const CompressChoices> CompressPlan::choices() const { return impl_->choices; }

namespace {

// Sampling pass: kSampleElems elements of every chunk choose its predictor and feed the
// tensor's histograms, from which the codebooks are built.
Status sample_choices(const uint8_t* bytes, const Header& h, const Quantizer& qz, int threads,
                      std::shared_ptr<const CompressChoices>* out) {
  const DType dtype = h.dtype;
  const uint64_t numel = h.numel;
  const uint32_t nchunks = h.num_chunks;
  auto ci = std::make_unique<CompressChoices::Impl>();
  ci->dtype = dtype;
  ci->shape = h.shape;
  ci->quant_step = h.quant_step;
  ci->predictors.assign(nchunks, 0);
  std::vector<uint64_t> fine(kFineAlphabet, 0), mask(256, 0), zmap(256, 0);
  {
    std::vector<std::vector<uint64_t>> part_fine, part_mask, part_zmap;
    part_fine.assign(size_t(threads), std::vector<uint64_t>(kFineAlphabet, 0));
    part_mask.assign(size_t(threads), std::vector<uint64_t>(256, 0));
    part_zmap.assign(size_t(threads), std::vector<uint64_t>(256, 0));
    const uint32_t row = grid_row(h.shape);
    const float* nlog2n = nlog2n_table().data();
    Status s = for_each_chunk(nchunks, threads, [&](uint32_t c, int slot) {
      thread_local SampleTally tally;
      tally.clear();
      uint64_t* mask_part = part_mask[size_t(slot)].data();
      int32_t window[kSampleWindow];
      const uint32_t elems = chunk_elem_count(numel, c);
      const uint64_t chunk_begin = uint64_t(c) * kChunkElems;
      const uint32_t runs = sample_runs(elems);
      for (uint32_t r = 0; r < runs; ++r) {
        const SampleRunSpan sp = sample_run_span(elems, r, row);
        const uint64_t from = chunk_begin + sp.first - sp.context;
        // With a full row of context, the run reads only its upper neighbours (window
        // positions 0 .. n) and its left one: the rest of a long row is left unclassified.
        const uint32_t skip_from = sp.context == row + 1 && row > sp.n + 1 ? sp.n + 1 : sp.context + sp.n;
        const uint32_t skip_to = skip_from < sp.context ? row : skip_from;
        dispatch_dtype(dtype, [&](auto dt) {
          classify_chunk<decltype(dt)::value>(bytes, from, skip_from, qz, window);
          classify_chunk<decltype(dt)::value>(bytes, from + skip_to, sp.context + sp.n - skip_to, qz, window + skip_to);
        });
        std::fill(window + skip_from, window + skip_to, 0);
        const uint32_t col0 = row ? uint32_t((chunk_begin + sp.first) % row) : 0;
        sample_run_counts(window, sp.context, sp.n, sp.first, col0, row, &tally, mask_part);
      }
      const uint32_t* chosen = nullptr;
      const uint8_t predictor = choose_sampled_predictor(tally, row != 0, nlog2n, &chosen);
      const bool zero_map = choose_zero_map(chosen, tally.coded, nchunks);
      ci->predictors[c] = uint8_t(predictor | (zero_map ? kChunkZeroMap : 0));
      // The tensor's histograms: the values the lanes carry (a mapped chunk's zeros are in
      // its map), and the map bytes.
      uint64_t* fine_part = part_fine[size_t(slot)].data();
      for (uint32_t b = zero_map ? 1 : 0; b < kFineAlphabet; ++b) fine_part[b] += chosen[b];
      if (zero_map) sampled_zmap_bytes(tally, predictor_slot(predictor), part_zmap[size_t(slot)].data());
      return Status::Ok();
    });
    if (!s.ok()) return s;
    for (int t = 0; t < threads; ++t) {
      for (uint32_t b = 0; b < kFineAlphabet; ++b) fine[b] += part_fine[t][b];
      for (uint32_t b = 0; b < 256; ++b) mask[b] += part_mask[t][b];
      for (uint32_t b = 0; b < 256; ++b) zmap[b] += part_zmap[t][b];
    }
  }
  CodeBooks code_books;
  Status books_status = build_code_books(fine.data(), mask.data(), zmap.data(), &code_books);
  if (!books_status.ok()) return books_status;
  ci->code_lengths = std::move(code_books.code_lengths);
  ci->mask_lengths = std::move(code_books.mask_lengths);
  ci->zmap_lengths = std::move(code_books.zmap_lengths);
  Books& books = ci->books;
  books.k = code_books.direct_log2;
  books.row = grid_row(h.shape);
  books.code = std::move(code_books.code);
  books.mask = std::move(code_books.mask);
  books.zmap = std::move(code_books.zmap);
  books.pack();
  *out = std::make_shared<const CompressChoices>(std::move(ci));
  return Status::Ok();
}

}  // namespace

Status plan_compress(const void* data, DType dtype, const std::vector<uint64_t>& shape, const CompressOptions& opt,
                     std::unique_ptr<CompressPlan>* out_plan) {
  if (element_size(dtype) == 0) return invalid("dtype must be float32, float16 or bfloat16");
  if (shape.size() > size_t(kMaxDims)) return invalid("tensors of more than 8 dimensions are not supported");
  uint64_t numel = 0;
  if (!count_elements(shape.data(), shape.size(), &numel)) return invalid("tensor has 2^45 elements or more");
  if (numel != 0 && data == nullptr) return invalid("data is null");
  if (!(std::isfinite(opt.error_bound) && opt.error_bound > 0))
    return invalid("error_bound must be a positive finite number");
  if (opt.mode != BoundMode::kAbs && opt.mode != BoundMode::kRel) return invalid("unknown bound mode");
  if (opt.num_threads < 1) return invalid("num_threads must be at least 1");
  if (opt.reuse && (opt.reuse->dtype() != dtype || opt.reuse->shape() != shape))
    return invalid("reuse: the choices were made for a tensor of another shape or dtype");

  auto impl = std::make_unique<CompressPlan::Impl>();
  Header& h = impl->header;
  h.flags = opt.payload_checksum ? kFlagPayloadChecksum : 0;
  h.dtype = dtype;
  h.mode = opt.mode;
  h.requested_bound = opt.error_bound;
  h.shape = shape;
  h.numel = numel;
  h.num_chunks = chunk_count(numel);
  const uint32_t nchunks = h.num_chunks;
  const uint8_t* bytes = static_cast<const uint8_t*>(data);

  double abs_bound = opt.error_bound;
  if (opt.mode == BoundMode::kRel) {
    std::vector<float> lo(nchunks), hi(nchunks);
    Status s = for_each_chunk(nchunks, opt.num_threads, [&](uint32_t c, int /*slot*/) {
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
    abs_bound = rel_abs_bound(mn, mx, opt.error_bound);
  }
  h.error_bound = abs_bound;
  h.quant_step = quant_step_for(abs_bound);
  const Quantizer qz = make_quantizer(abs_bound, h.quant_step);

  impl->chunks.resize(nchunks);
  if (opt.reuse) {
    impl->choices = opt.reuse;
  } else {
    Status s = sample_choices(bytes, h, qz, opt.num_threads, &impl->choices);
    if (!s.ok()) return s;
    impl->stats.sampled_chunks = nchunks;
  }
  const CompressChoices::Impl& choices = impl->choices->impl();
  for (uint32_t c = 0; c < nchunks; ++c) impl->chunks[c].predictor = choices.predictors[c];
  h.direct_log2 = choices.books.k;
  h.code_lengths = choices.code_lengths;
  h.mask_lengths = choices.mask_lengths;
  h.zmap_lengths = choices.zmap_lengths;
  const Books& books = choices.books;

  // Main pass: classify and encode every chunk into its own buffer.
  Status s = for_each_chunk(nchunks, opt.num_threads, [&](uint32_t c, int /*slot*/) {
    thread_local Scratch scratch;
    const uint32_t elems = chunk_elem_count(numel, c);
    const uint64_t begin = uint64_t(c) * kChunkElems;
    return dispatch_dtype(dtype, [&](auto dt) {
      return encode_chunk<decltype(dt)::value>(bytes, begin, elems, qz, books, scratch, &impl->chunks[c]);
    });
  });
  if (!s.ok()) return s;

  // Drop codebooks no chunk uses, so the header carries only what decoding needs.
  bool any_mask = false, any_code = false, any_zmap = false;
  h.chunk_end.resize(nchunks);
  uint64_t end = 0;
  for (uint32_t c = 0; c < nchunks; ++c) {
    const ChunkPlan& cp = impl->chunks[c];
    impl->stats.zeros += cp.zeros;
    impl->stats.coded += cp.coded;
    impl->stats.outliers += cp.outliers;
    if (cp.kind == kChunkRaw) ++impl->stats.raw_chunks;
    if (cp.kind == kChunkZero) ++impl->stats.zero_chunks;
    if (cp.kind == kChunkCoded) {
      any_code |= cp.coded > 0;
      any_mask |= (cp.bytes[1] & kChunkHasMask) != 0;
      any_zmap |= (cp.bytes[1] & kChunkZeroMap) != 0;
      if (cp.bytes[1] & kChunkLorenzo) ++impl->stats.lorenzo_chunks;
      if (cp.bytes[1] & kChunkLorenzo2D) ++impl->stats.lorenzo2d_chunks;
      if (cp.bytes[1] & kChunkZeroMap) ++impl->stats.zero_map_chunks;
    }
    end += cp.bytes.size();
    h.chunk_end[c] = end;
  }
  if (!any_mask) h.mask_lengths.clear();
  if (!any_code) h.code_lengths.clear();
  if (!any_zmap) h.zmap_lengths.clear();
  h.header_bytes =
      header_size(shape.size(), h.mask_lengths.size(), h.code_lengths.size(), h.zmap_lengths.size(), nchunks);
  impl->header_buf.resize(h.header_bytes);
  write_header(h, impl->header_buf.data());
  impl->total_bytes = h.header_bytes + end + (opt.payload_checksum ? 4 : 0);
  *out_plan = std::make_unique<CompressPlan>(std::move(impl));
  return Status::Ok();
}

Status encode(const CompressPlan& plan, void* out, uint64_t out_bytes, int num_threads) {
  const CompressPlan::Impl& p = plan.impl();
  if (out == nullptr || out_bytes < p.total_bytes)
    return Status{StatusCode::kBufferTooSmall, "output buffer is smaller than compressed_bytes()"};
  if (num_threads < 1) return invalid("num_threads must be at least 1");
  uint8_t* dst = static_cast<uint8_t*>(out);
  std::memcpy(dst, p.header_buf.data(), p.header_buf.size());
  uint8_t* payload = dst + p.header.header_bytes;
  Status s = for_each_chunk(p.header.num_chunks, num_threads, [&](uint32_t c, int /*slot*/) {
    const uint64_t start = c == 0 ? 0 : p.header.chunk_end[c - 1];
    std::memcpy(payload + start, p.chunks[c].bytes.data(), p.chunks[c].bytes.size());
    return Status::Ok();
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
  info->quant_step = h.quant_step;
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

// A mask decode table that yields up to three mask bytes a lookup: those whose codes fit,
// one after another, in the kMaxCodeLen bits looked up. Entry: the bytes (bits 0-23), the
// bits they consume (24-27) and their number (28-29; 0 where the first code is invalid).
// Masks of dense tensors are mostly one byte with a short code, which this decodes three
// at a time instead of one.
void build_mask_triples(const HuffmanDecoder& mask, std::vector<uint32_t>* triples) {
  triples->assign(kDecodeTableSize, 0);
  for (uint32_t j = 0; j < kDecodeTableSize; ++j) {
    uint32_t bytes = 0, used = 0, count = 0;
    for (; count < 3; ++count) {
      const uint32_t e = mask.table[j >> used];
      const uint32_t len = e >> 12;
      if (len == 0 || used + len > uint32_t(kMaxCodeLen)) break;  // invalid, or not all looked up
      bytes |= (e & 0xFFu) << (8 * count);
      used += len;
    }
    (*triples)[j] = bytes | (used << 24) | (count << 28);
  }
}

// Huffman-decodes `count` bytes (mask or zero-map bytes) from r into out, with the byte
// codebook's table and its build_mask_triples() table. Returns false for an invalid code.
bool decode_byte_stream(BitReader& r, const HuffmanDecoder& book, const uint32_t* triples, uint32_t count,
                        uint8_t* out) {
  const uint16_t* table = book.table.data();
  uint32_t bad = 0;
  auto step = [&](uint32_t j) {
    const uint32_t e = table[r.peek() & (kDecodeTableSize - 1)];
    const uint32_t l = e >> 12;
    bad |= uint32_t(l == 0);
    r.consume(l);
    out[j] = uint8_t(e);
  };
  // Up to three bytes a lookup while four stay to go: each lookup stores four bytes (the
  // ones past those it decoded are rewritten by the next), so four lookups from j store
  // up to byte j + 12.
  auto triple_step = [&](uint32_t& j) {
    const uint32_t e = triples[r.peek() & (kDecodeTableSize - 1)];
    std::memcpy(out + j, &e, 4);
    r.consume((e >> 24) & 15u);
    j += e >> 28;
    return e >> 28 != 0;
  };
  uint32_t j = 0;
  bool valid = true;
  while (valid && j + 13 <= count) {
    r.refill();  // at least 56 bits: four lookups of at most 12
    valid = triple_step(j) && triple_step(j) && triple_step(j) && triple_step(j);
  }
  while (valid && j + 4 <= count) {
    r.refill();
    valid = triple_step(j);
  }
  bad |= uint32_t(!valid);
  for (; j < count && valid; ++j) {
    r.refill();
    step(j);
  }
  return bad == 0;
}

struct Decoders {
  HuffmanDecoder mask, code, zmap;
  std::vector<uint32_t> mask_triples, zmap_triples;  // build_mask_triples()
  std::vector<uint32_t> code_wide;   // one value a lookup (build_value_table, passes.h)
  std::vector<uint32_t> code_pairs;  // two values a lookup where they fit (passes.h)
  uint32_t pair_share = 0;           // entries of code_pairs with two values
  uint32_t max_bits = 64;            // the most bits a value takes (max_value_bits, passes.h)

  // Two values a lookup pays where they come often enough: measured, the pair loop wins
  // from about 45% of lookups up and loses below (its lanes drift and it stores twice).
  bool use_pairs() const { return pair_share >= kDecodeTableSize * 9 / 20; }

  void widen(int k) {
    code_wide.assign(kDecodeTableSize, 0);
    code_pairs.assign(kDecodeTableSize, 0);
    if (code.table.empty()) return;
    build_value_table(code, k, code_wide.data());
    max_bits = max_value_bits(code_wide.data());
    pair_share = build_pair_table(code_wide.data(), code_pairs.data());
  }
};

// Set bits of n bytes (without POPCNT, __builtin_popcount is a library call).
inline uint32_t popcount_bytes(const uint8_t* p, uint32_t n) {
  uint32_t total = 0, i = 0;
  for (; i + 8 <= n; i += 8) {
    uint64_t w;
    std::memcpy(&w, p + i, 8);
    w = w - ((w >> 1) & 0x5555555555555555ull);
    w = (w & 0x3333333333333333ull) + ((w >> 2) & 0x3333333333333333ull);
    w = (w + (w >> 4)) & 0x0F0F0F0F0F0F0F0Full;
    total += uint32_t((w * 0x0101010101010101ull) >> 56);
  }
  for (; i < n; ++i) {
    uint32_t b = p[i];
    b = b - ((b >> 1) & 0x55u);
    b = (b & 0x33u) + ((b >> 2) & 0x33u);
    total += (b + (b >> 4)) & 0x0Fu;
  }
  return total;
}


// Per-thread scratch of the decoder.
struct DecodeScratch {
  // The coded elements' values (8 elements of slack: expand_coded reads 8 at a time).
  std::vector<uint32_t> u = std::vector<uint32_t>(kChunkElems + 8);
  std::vector<uint32_t> w = std::vector<uint32_t>(kChunkElems);     // per element (passes.h)
  std::vector<int32_t> grid = std::vector<int32_t>(kGridPad + kChunkElems);  // q, after kGridPad elements
};

// The 2-D Lorenzo inverse element by element, as docs/FORMAT.md defines it (clamped
// predictions, out-of-range q replaced): for the chunks lorenzo2d_inverse() declines. Leaves
// the coded elements' w compacted in u; returns false for an invalid code.
bool lorenzo2d_exact(uint32_t* u, const uint8_t* mask, bool has_mask, uint32_t elems, uint32_t row, uint32_t col0,
                     int32_t* grid, BitReader& signs) {
  uint32_t bad = 0;
  uint32_t col = col0;
  for (uint32_t i = 0, t = 0; i < elems; ++i) {
    const bool is_coded = !has_mask || ((mask[i >> 3] >> (i & 7)) & 1u);
    int32_t q = 0;
    if (is_coded) {
      const int64_t qw = int64_t(lorenzo2d_predict(grid, i, col, row)) + unzigzag(u[t]);
      const uint32_t invalid = (qw > kMaxQ) | (qw < -kMaxQ);
      bad |= invalid;
      bool negative = false;
      if (!invalid && qw == 0) {
        if (signs.available() < 1) signs.refill();
        negative = signs.take(1) != 0;
      }
      const int32_t cv = invalid ? 1 : q_to_code(int32_t(qw), negative);
      q = code_to_q(cv);  // an invalid q was replaced: keep the grid in range
      u[t++] = code_to_u(cv);
    }
    grid[i] = q;
    if (++col == row) col = 0;
  }
  return bad == 0;
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
  Status s = parse_chunk_header(chunk, span, elems, es, h.version, &ch);
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
  const bool lorenzo2d = ch.flags & kChunkLorenzo2D;
  const bool zero_map = ch.flags & kChunkZeroMap;
  const uint32_t mask_len = (elems + 7) / 8;
  uint8_t mask[kChunkElems / 8];
  uint32_t coded = elems;
  if (has_mask) {
    if (h.mask_lengths.empty()) return format_error("chunk %u has a mask but the stream has no mask codebook", c);
    BitReader r(body, body + ch.mask_bytes);
    if (!decode_byte_stream(r, dec.mask, dec.mask_triples.data(), mask_len, mask))
      return format_error("chunk %u: invalid mask code", c);
    if (!r.fits(ch.mask_bytes))
      return format_error("chunk %u: mask section length mismatch", c);
    coded = popcount_bytes(mask, mask_len);
    if ((elems & 7) && (mask[mask_len - 1] >> (elems & 7)) != 0)
      return format_error("chunk %u: mask bits set past the last element", c);
    if (ch.outliers > elems - coded) return format_error("chunk %u: more outliers than uncoded elements", c);
  }
  if (zero_map && coded == 0) return format_error("chunk %u: a zero map without coded elements", c);
  if (coded > 0 && h.code_lengths.empty()) return format_error("chunk %u has codes but the stream has no codebook", c);
  thread_local DecodeScratch sc;
  uint32_t* u = sc.u.data();
  uint32_t sign_bytes = 0;
  const uint8_t* sign_stream = nullptr;
  // Entropy decoding: the values of the coded elements, in order.
  {
    const uint32_t* table = dec.code_wide.data();
    if ((coded == 0) != (ch.code_bytes == 0) || (coded > 0 && ch.code_bytes < kLaneTableBytes))
      return format_error("chunk %u: code section does not fit %u coded elements", c, coded);
    if (coded > 0) {
      const uint8_t* lanes = body + ch.mask_bytes;
      // The zero map, where there is one: which coded elements' values the lanes carry.
      const uint32_t zmap_bytes = get_u32(lanes + 4 * kCodeLanes + 4);
      if (!zero_map && zmap_bytes != 0)
        return format_error("chunk %u: a zero-map length (or reserved field) without a zero map", c);
      if (zmap_bytes % 8 != 0 || zmap_bytes > ch.code_bytes - kLaneTableBytes)
        return format_error("chunk %u: the zero map has an invalid length", c);
      uint32_t carried = coded;
      uint8_t zmap[kChunkElems / 8];
      if (zero_map) {
        if (h.zmap_lengths.empty()) return format_error("chunk %u has a zero map but the stream has no map codebook", c);
        const uint32_t zmap_len = (coded + 7) / 8;
        BitReader zr(lanes + kLaneTableBytes, lanes + kLaneTableBytes + zmap_bytes);
        if (!decode_byte_stream(zr, dec.zmap, dec.zmap_triples.data(), zmap_len, zmap))
          return format_error("chunk %u: invalid zero-map code", c);
        if (!zr.fits(zmap_bytes)) return format_error("chunk %u: zero map length mismatch", c);
        if ((coded & 7) && (zmap[zmap_len - 1] >> (coded & 7)) != 0)
          return format_error("chunk %u: zero-map bits set past the last coded element", c);
        carried = popcount_bytes(zmap, zmap_len);
      }
      uint64_t lane_bytes[kCodeLanes];
      uint64_t at = kLaneTableBytes + zmap_bytes;
      for (uint32_t l = 0; l < kCodeLanes; ++l) {
        lane_bytes[l] = get_u32(lanes + 4 * l);
        if (lane_bytes[l] % 8 != 0 || lane_bytes[l] > ch.code_bytes - at)
          return format_error("chunk %u: code lane %u has an invalid length", c, l);
        at += lane_bytes[l];
      }
      sign_bytes = get_u32(lanes + 4 * kCodeLanes);
      if (sign_bytes % 8 != 0 || sign_bytes != ch.code_bytes - at)
        return format_error("chunk %u: the sign stream does not fill the code section", c);
      if (sign_bytes != 0 && !(lorenzo || lorenzo2d))
        return format_error("chunk %u: a sign stream without a predictor that needs one", c);
      sign_stream = lanes + at;
      const uint8_t* lane0 = lanes + kLaneTableBytes + zmap_bytes;
      BitReader r[kCodeLanes] = {
          BitReader(lane0, lane0 + lane_bytes[0]),
          BitReader(lane0 + lane_bytes[0], lane0 + lane_bytes[0] + lane_bytes[1]),
          BitReader(lane0 + lane_bytes[0] + lane_bytes[1], lane0 + lane_bytes[0] + lane_bytes[1] + lane_bytes[2]),
          BitReader(lane0 + lane_bytes[0] + lane_bytes[1] + lane_bytes[2],
                    lane0 + lane_bytes[0] + lane_bytes[1] + lane_bytes[2] + lane_bytes[3])};
      // With a zero map the lanes' values go to w (not used before prediction is inverted)
      // and are spread over the coded elements in u.
      uint32_t* values = zero_map ? sc.w.data() : u;
      const bool valid = huffman_decode_lanes(table, dec.use_pairs() ? dec.code_pairs.data() : nullptr, dec.max_bits, r,
                                              carried, values);
      if (!valid) return format_error("chunk %u: invalid code", c);
      for (uint32_t l = 0; l < kCodeLanes; ++l)
        if (!r[l].fits(lane_bytes[l]))
          return format_error("chunk %u: code lane %u length mismatch", c, l);
      if (zero_map) expand_nonzero(values, zmap, coded, u);
    }
  }
  // Prediction inverted: w (passes.h) of the coded elements, compacted (in u) or on the
  // chunk grid (in sc.w, kUncodedValue where the mask is clear).
  uint32_t* w = sc.w.data();
  bool on_grid = false;
  {
    // Both Lorenzo predictors work on q; a q of 0 takes its sign from the sign stream.
    BitReader signs(sign_stream, sign_stream + sign_bytes);
    int32_t* q = sc.grid.data() + kGridPad;
    if (lorenzo2d) {
      const uint64_t row64 = h.shape.empty() ? 1 : h.shape.back();
      if (row64 < 2 || row64 > kMax2DRow)
        return format_error("chunk %u: 2-D prediction over rows of %llu elements", c, (unsigned long long)row64);
      const uint32_t row = uint32_t(row64);
      const uint32_t col0 = uint32_t(begin % row);
      const uint32_t* grid_u = u;
      if (has_mask) {
        expand_coded(u, mask, elems, w);
        grid_u = w;
      }
      if (lorenzo2d_inverse(grid_u, elems, row, col0, !has_mask, q)) {
        q_to_w(q, has_mask ? grid_u : nullptr, elems, signs, w);
        on_grid = true;
      } else {
        // A q out of range or a clamped prediction: the per-element definition decides.
        if (!lorenzo2d_exact(u, mask, has_mask, elems, row, col0, q - kGridPad, signs))
          return format_error("chunk %u: invalid code", c);
      }
    } else if (lorenzo) {
      if (!lorenzo1d_inverse(u, coded, q)) return format_error("chunk %u: invalid code", c);
      q_to_w(q, nullptr, coded, signs, u);
    } else {
      if (any_invalid_u(u, coded)) return format_error("chunk %u: invalid code", c);
    }
    if (!signs.fits(sign_bytes)) return format_error("chunk %u: sign stream length mismatch", c);
  }
  if (!on_grid) {
    if (has_mask) expand_coded(u, mask, elems, w);
    else w = u;
  }
  // Reconstructions in the stream's dtype, zeros where the mask is clear.
  {
    const float step = h.quant_step, quarter_step = make_quantizer(h.error_bound, h.quant_step).quarter_step;
    if constexpr (kDT == 1) reconstruct_f32(w, elems, step, quarter_step, reinterpret_cast<uint32_t*>(dst));
    else if constexpr (kDT == 2) reconstruct_f16(w, elems, step, quarter_step, reinterpret_cast<uint16_t*>(dst));
    else reconstruct_bf16(w, elems, step, quarter_step, reinterpret_cast<uint16_t*>(dst));
  }
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
                           h.version, &ch);
    if (!s.ok()) return format_error("chunk %u: %s", c, s.message.c_str());
    if (ch.kind == kChunkCoded && (ch.flags & kChunkLorenzo2D) && grid_row(h.shape) == 0)
      return format_error("chunk %u: 2-D prediction, but the last extent is not between 2 and %u", c, kMax2DRow);
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
  if (!dec.mask.build(h.mask_lengths) || !dec.code.build(h.code_lengths) || !dec.zmap.build(h.zmap_lengths))
    return format_error("invalid codebook");
  if (!dec.mask.table.empty()) build_mask_triples(dec.mask, &dec.mask_triples);
  if (!dec.zmap.table.empty()) build_mask_triples(dec.zmap, &dec.zmap_triples);
  dec.widen(h.direct_log2);
  const uint8_t* payload = bytes + h.header_bytes;
  uint8_t* dst = static_cast<uint8_t*>(out);
  return for_each_chunk(h.num_chunks, num_threads, [&](uint32_t c, int /*slot*/) {
    return dispatch_dtype(h.dtype, [&](auto dt) { return decode_chunk<decltype(dt)::value>(payload, h, dec, c, dst); });
  });
}

}  // namespace actzip
