// Per-chunk work of the chunk pipeline (include/actzip/pipeline.h), written once for every
// place it runs: the CUDA kernels and their host emulation, which the tests compare with
// the CPU backend byte for byte. The CPU backend shares the sampling step with it.
//
// The pipeline streams each chunk: an element is classified where it is needed and never
// stored, so a chunk needs no scratch buffers, only a ring of the last rows' quantized
// values for the 2-D predictor. Compression takes three passes over a chunk (sample,
// measure, write); decompression one, plus a pass over the mask for counting and one for
// the outliers. Everything here is ACTZIP_HD and allocation-free.
#pragma once

#include <cstdint>
#include <cstring>

#include "codec/bitio.h"
#include "codec/element.h"
#include "codec/format.h"
#include "codec/huffman.h"

namespace actzip {
namespace detail {

// ---------------------------------------------------------------------------------------
// Sampling (docs/FORMAT.md section 8): kSampleRuns runs of kSampleRun elements, spread
// evenly over the chunk, choose its predictor and feed the tensor's histograms. Runs keep
// the local structure prediction feeds on; spreading them avoids the bias of one block.

inline constexpr uint32_t kSampleRun = 64;
inline constexpr uint32_t kSampleRuns = 16;
inline constexpr uint32_t kSampleElems = kSampleRun * kSampleRuns;
// A run's codes preceded by up to a row and one element of context (2-D predictor).
inline constexpr uint32_t kSampleWindow = kMax2DRow + 1 + kSampleRun;

ACTZIP_HD uint32_t sample_runs(uint32_t elems) {
  return elems <= kSampleElems ? (elems + kSampleRun - 1) / kSampleRun : kSampleRuns;
}
// Length of the stretch each run is taken from; a multiple of 8, so that runs start on
// mask-byte boundaries.
ACTZIP_HD uint32_t sample_stride(uint32_t elems) {
  return elems <= kSampleElems ? kSampleRun : (elems / kSampleRuns) & ~7u;
}

// What a sample counts; Count functors receive one of these and an index.
enum SampleCounter : int {
  kCountNone = 0,       // fine bin of the value without prediction
  kCountLorenzo = 1,    // fine bin of the 1-D Lorenzo residual
  kCountLorenzo2D = 2,  // fine bin of the 2-D Lorenzo residual
  kCountMask = 3,       // mask byte
  kCountSign = 4,       // a coded element whose q is 0 (a sign bit for either Lorenzo predictor)
  kCountCoded = 5,      // a coded element
  kCountZmap = 6,       // a zero-map byte of the value without prediction; + 1: 1-D Lorenzo; + 2: 2-D
};

// Packs zero-map bits (1: the coded value is not 0) eight to a byte, least significant
// first, and hands each byte to `emit`; finish() emits a last byte as far as it is filled.
// The encoder's maps (LaneDealer) and the sample's map bytes are made by it alike.
struct ZeroMapBytes {
  uint32_t byte = 0, filled = 0;
  template <class Emit>
  ACTZIP_HD void add(bool nonzero, Emit emit) {
    byte |= uint32_t(nonzero) << filled;
    if (++filled == 8) {
      emit(byte);
      byte = filled = 0;
    }
  }
  template <class Emit>
  ACTZIP_HD void finish(Emit emit) {
    if (filled) emit(byte);
  }
};

// Adds one sample run to the counts: `codes` holds the run's codes preceded by `context`
// codes of the chunk; `first` is the run's position in the chunk and `col0` its column
// in rows of `row` elements (row 0: no 2-D predictor).
template <class Count>
ACTZIP_HD void sample_run(const int32_t* codes, uint32_t context, uint32_t n, uint32_t first, uint32_t col0,
                          uint32_t row, Count& count) {
  int32_t grid[kSampleWindow];
  const uint32_t total = context + n;
  for (uint32_t i = 0; i < total && row; ++i) grid[i] = codes[i] == kOutlierCode ? 0 : code_to_q(codes[i]);
  int32_t prev = 0;
  uint32_t mask_byte = 0;
  uint32_t col = col0;
  ZeroMapBytes zmap[3];  // a run's map bytes under each predictor
  auto map_count = [&](int p) { return [&count, p](uint32_t byte) { count(kCountZmap + p, byte); }; };
  for (uint32_t j = 0; j < n; ++j) {
    const int32_t c = codes[context + j];
    if (c != 0 && c != kOutlierCode) {
      const int32_t q = code_to_q(c);
      const uint32_t u_none = code_to_u(c), u_lor = zigzag(q - prev);
      count(kCountNone, fine_bin(u_none));
      count(kCountLorenzo, fine_bin(u_lor));
      zmap[0].add(u_none != 0, map_count(0));
      zmap[1].add(u_lor != 0, map_count(1));
      if (q == 0) count(kCountSign, 0u);
      if (row) {
        // Positions relative to the window, which starts `first - context` into the chunk.
        const uint32_t i = context + j;
        const bool left = col != 0 && first + j >= 1;
        const bool up = i >= row;
        const int32_t l = left ? grid[i - 1] : 0, a = up ? grid[i - row] : 0;
        const int32_t al = left && i >= row + 1 ? grid[i - row - 1] : 0;
        int32_t p = l + a - al;
        p = p > kMaxQ ? kMaxQ : (p < -kMaxQ ? -kMaxQ : p);
        const uint32_t u_2d = zigzag(q - p);
        count(kCountLorenzo2D, fine_bin(u_2d));
        zmap[2].add(u_2d != 0, map_count(2));
      }
      prev = q;
      mask_byte |= 1u << (j & 7);
      count(kCountCoded, 0u);
    }
    if ((j & 7) == 7 || j + 1 == n) {
      count(kCountMask, mask_byte);
      mask_byte = 0;
    }
    if (row && ++col == row) col = 0;
  }
  for (int p = 0; p < (row ? 3 : 2); ++p) zmap[p].finish(map_count(p));
}

// Where sample run r of a chunk of `elems` elements starts. Run r lies in the r-th stretch
// of sample_stride() elements, shifted in it by a pseudo-random multiple of 8. Without the
// shift every run would sit at the same offset of any layout whose period divides the
// stride: with 32x32 channel planes (stride 1024) each run would read the first two rows of
// a plane, where the 2-D predictor has no upper neighbour, and the sample would favour the
// 1-D predictor on data where the 2-D one takes 40% fewer bits.
ACTZIP_HD uint32_t sample_run_first(uint32_t elems, uint32_t r) {
  const uint32_t stride = sample_stride(elems);
  if (elems <= kSampleElems) return r * stride;
  const uint32_t slots = (stride - kSampleRun) / 8 + 1;  // start offsets that keep the run in its stretch
  const uint32_t hash = (r + 1u) * 0x9E3779B1u;          // wraps identically on every backend
  return r * stride + 8u * ((hash >> 16) % slots);
}

// Where sample run r of a chunk lies: its first element in the chunk, its length and the
// context before it.
struct SampleRunSpan {
  uint32_t first, n, context;
};
ACTZIP_HD SampleRunSpan sample_run_span(uint32_t elems, uint32_t r, uint32_t row) {
  SampleRunSpan s;
  s.first = sample_run_first(elems, r);
  s.n = elems - s.first < kSampleRun ? elems - s.first : kSampleRun;
  s.context = row ? (s.first < row + 1 ? s.first : row + 1) : 0;
  return s;
}

// Classifies and counts sample run r of a chunk (the device's and the emulation's path; the
// CPU backend classifies with its vectorized loop and calls sample_run itself).
template <int kDT, class Count>
ACTZIP_HD void sample_chunk_run(const void* data, uint64_t chunk_begin, uint32_t elems, uint32_t r,
                                const Quantizer& qz, uint32_t row, Count& count) {
  const SampleRunSpan s = sample_run_span(elems, r, row);
  int32_t window[kSampleWindow];
  const uint64_t from = chunk_begin + s.first - s.context;
  for (uint32_t i = 0; i < s.context + s.n; ++i) window[i] = classify_code<kDT>(load_elem<kDT>(data, from + i), qz);
  const uint32_t col0 = row ? uint32_t((chunk_begin + s.first) % row) : 0;
  sample_run(window, s.context, s.n, s.first, col0, row, count);
}

// A chunk's sampled histograms, one per predictor, in the fine-bin layout.
struct PredictorHist {
  uint32_t none[kFineAlphabet], lor[kFineAlphabet], lor2d[kFineAlphabet];
  uint32_t sign_bits;  // coded elements whose q is 0: the Lorenzo predictors spend a sign bit on each
  uint32_t coded;
  uint32_t zmap[3][256];  // zero-map bytes under each predictor: none, 1-D Lorenzo, 2-D Lorenzo
};

// Counts a sample into a chunk's PredictorHist and a mask histogram with counters of type
// M, one thread at a time (the GPU's sampling kernel counts with atomics instead).
template <class M>
struct LocalSampleCount {
  PredictorHist* ph;
  M* mask;
  ACTZIP_HD void operator()(int what, uint32_t index) {
    switch (what) {
      case kCountNone: ++ph->none[index]; break;
      case kCountLorenzo: ++ph->lor[index]; break;
      case kCountLorenzo2D: ++ph->lor2d[index]; break;
      case kCountMask: ++mask[index]; break;
      case kCountSign: ++ph->sign_bits; break;
      case kCountCoded: ++ph->coded; break;
      default: ++ph->zmap[what - kCountZmap][index]; break;
    }
  }
};

// Order-0 entropy (in bits) of a histogram of at most kChunkElems counts, plus the extra
// bits of the class bins. `nlog2n[n]` = n * log2(n) as binary32, computed once on the host
// (every backend must use the same table so that choices match).
ACTZIP_HD double fine_cost_bits(const uint32_t* hist, uint32_t total, const float* nlog2n) {
  double bits = nlog2n[total];
  for (uint32_t b = 0; b < kFineAlphabet; ++b) {
    const uint32_t n = hist[b];
    if (n == 0) continue;
    bits -= nlog2n[n];
    if (b >= (1u << kMaxDirectLog2)) bits += double(n) * (b - (1u << kMaxDirectLog2) + kMaxDirectLog2);
  }
  return bits;
}

// The chunk flag of the predictor whose sampled cost is lowest (0: none; ties go to
// Lorenzo, then to 2-D Lorenzo), `cost(hist)` giving a histogram's bits; both Lorenzo
// predictors also pay `sign_bits`. *chosen points to the winner's histogram.
template <class Cost>
ACTZIP_HD uint8_t choose_cheapest(const uint32_t* none_hist, const uint32_t* lor_hist, const uint32_t* lor2d_hist,
                                  uint32_t sign_bits, bool with_2d, Cost cost, const uint32_t** chosen) {
  const double none = cost(none_hist);
  const double lor = cost(lor_hist) + sign_bits;
  const double lor2d = with_2d ? cost(lor2d_hist) + sign_bits : 0.0;
  if (lor < none && (!with_2d || lor <= lor2d)) {
    *chosen = lor_hist;
    return kChunkLorenzo;
  }
  if (with_2d && lor2d < none) {
    *chosen = lor2d_hist;
    return kChunkLorenzo2D;
  }
  *chosen = none_hist;
  return 0;
}

// Which of a sample's per-predictor histograms (0 none, 1 Lorenzo, 2 2-D Lorenzo) a
// predictor's chunk flag uses.
ACTZIP_HD uint32_t predictor_slot(uint32_t flag) {
  return flag == kChunkLorenzo ? 1u : (flag == kChunkLorenzo2D ? 2u : 0u);
}

// Whether a chunk of a tensor of `num_chunks` chunks carries a zero map (docs/FORMAT.md
// section 8): when at least a fifth of its sampled values under the chosen predictor
// (`chosen`, of `coded` counts) are 0, in a tensor of at least kMinZeroMapChunks chunks.
// Below a fifth, a Huffman code's bit or two per zero costs less than the map; in a smaller
// tensor, the map's codebook (130 header bytes, built from fewer samples) costs more than
// the maps save (measured on convolution activations: 9% more bytes for one chunk, 0.5% less
// from 8 chunks on).
inline constexpr uint32_t kMinZeroMapChunks = 8;
ACTZIP_HD bool choose_zero_map(const uint32_t* chosen, uint32_t coded, uint32_t num_chunks) {
  return num_chunks >= kMinZeroMapChunks && coded > 0 && 5ull * chosen[0] >= uint64_t(coded);
}

// The chunk flag of the predictor the sample favours (0: none); *chosen points to its histogram.
ACTZIP_HD uint8_t choose_predictor(const PredictorHist& ph, bool with_2d, const float* nlog2n,
                                   const uint32_t** chosen) {
  const uint32_t coded = ph.coded;
  return choose_cheapest(ph.none, ph.lor, ph.lor2d, ph.sign_bits, with_2d,
                         [=](const uint32_t* hist) { return fine_cost_bits(hist, coded, nlog2n); }, chosen);
}

// ---------------------------------------------------------------------------------------
// Stores a 64-bit word at an 8-byte aligned address (sections are 8-byte aligned).
ACTZIP_HD void store_word(uint8_t* p, uint64_t w) {
#if defined(__CUDA_ARCH__)
  *reinterpret_cast<uint64_t*>(p) = w;
#else
  for (int i = 0; i < 8; ++i) p[i] = uint8_t(w >> (8 * i));
#endif
}
ACTZIP_HD void zero_fill(uint8_t* p, uint64_t n) {
  for (uint64_t i = 0; i < n; ++i) p[i] = 0;
}

// Appends bits LSB first and stores whole 64-bit words only, so it never touches a byte
// past the section's pad8 length (neighbouring sections are written at the same time).
class WordBitWriter {
 public:
  ACTZIP_HD explicit WordBitWriter(uint8_t* p) : p_(p) {}
  // Appends the low `nbits` bits of `value` (nbits <= 48; value has no higher bits set).
  ACTZIP_HD void put(uint64_t value, int nbits) {
    acc_ |= value << fill_;  // fill_ < 64
    const int old = fill_;
    fill_ += nbits;
    if (fill_ >= 64) {
      store_word(p_, acc_);
      p_ += 8;
      fill_ -= 64;
      acc_ = old == 0 ? 0 : value >> (64 - old);
    }
  }
  // Stores the last partial word, zero-padded.
  ACTZIP_HD void flush() {
    if (fill_ > 0) store_word(p_, acc_);
  }

 private:
  uint8_t* p_;
  uint64_t acc_ = 0;
  int fill_ = 0;
};


// ---------------------------------------------------------------------------------------
// Compression of one chunk: measure, then write.

// What measuring a chunk found: its header fields and section lengths. 64 bytes, kept in
// (device) memory between the measure and write passes.
struct ChunkLayout {
  uint32_t kind, flags, outliers, mask_bytes, code_bytes, sign_bytes;
  uint32_t lane_bytes[kCodeLanes];
  uint32_t zeros, coded;  // statistics: elements of each class (all three counted for every kind)
  uint64_t length;        // bytes of the whole chunk, header included
  uint32_t zmap_bytes;    // the zero map's section (0 without one)
  uint32_t reserved;
};
static_assert(sizeof(ChunkLayout) == 64, "ChunkLayout is a 64-byte record");

// The encoder's codebooks, packed: code[s], mask[s] and zmap[s] hold symbol s's
// bit-reversed code in bits 0-15 and its length in bits 16-23.
struct EncodeBooks {
  const uint32_t* code;
  const uint32_t* mask;
  const uint32_t* zmap;
  int k;  // direct_log2
};

// Deals a chunk's coded values to the lanes, or, with a zero map, its map bits to bytes and
// only the values that are not 0 to the lanes (docs/FORMAT.md section 2). `put_map(byte)`
// takes each finished map byte; `lane(v)` returns the lane value v goes to, or -1 when the
// map carries it.
struct LaneDealer {
  bool zero_map;
  ZeroMapBytes map;
  uint32_t carried = 0;
  template <class PutMap>
  ACTZIP_HD int lane(uint32_t t, uint32_t v, PutMap put_map) {
    if (!zero_map) return int(t % kCodeLanes);
    map.add(v != 0, put_map);
    return v != 0 ? int(carried++ % kCodeLanes) : -1;
  }
  template <class PutMap>
  ACTZIP_HD void finish(PutMap put_map) {
    if (zero_map) map.finish(put_map);
  }
};

// A code value's symbol bits and extra bits as one field (bits) and its length.
ACTZIP_HD int symbol_bits(uint32_t v, const EncodeBooks& books, uint64_t* bits) {
  const uint32_t direct = 1u << books.k;
  const int b = floor_log2(v | 1u);
  const bool is_class = v >= direct;
  const uint32_t sym = is_class ? direct + uint32_t(b - books.k) : v;
  const int eb = is_class ? b : 0;
  const uint64_t extra = is_class ? uint64_t(v - (1u << b)) : 0;
  const uint32_t cl = books.code[sym];
  const int len = int((cl >> 16) & 0xFFu);
  *bits = uint64_t(cl & 0xFFFFu) | (extra << len);
  return len + eb;
}

inline constexpr uint32_t kRing = 256;  // > kMax2DRow + 1, a power of two

// Visits a chunk's elements in order and reports, to `sink`, each coded element's value to
// code (by the chunk's predictor), each sign bit, each outlier and each mask byte. This is
// the order and content of docs/FORMAT.md section 2; measure and write differ only in sink.
template <int kDT, class Sink>
ACTZIP_HD void scan_chunk(const void* data, uint64_t begin, uint32_t elems, const Quantizer& qz, uint32_t predictor,
                          uint32_t row, Sink& sink) {
  int32_t ring[kRing];  // q of the last elements (0 for zeros and outliers), 2-D predictor only
  int32_t prev = 0;
  uint32_t t = 0, mask_byte = 0;
  uint32_t col = row ? uint32_t(begin % row) : 0;
  for (uint32_t i = 0; i < elems; ++i) {
    const int32_t c = classify_code<kDT>(load_elem<kDT>(data, begin + i), qz);
    const bool is_coded = c != 0 && c != kOutlierCode;
    if (is_coded) {
      const int32_t q = code_to_q(c);
      if (predictor == kChunkLorenzo2D) {
        const bool left = col != 0 && i >= 1;
        const bool up = i >= row;
        const int32_t l = left ? ring[(i - 1) & (kRing - 1)] : 0;
        const int32_t a = up ? ring[(i - row) & (kRing - 1)] : 0;
        const int32_t al = (left && i >= row + 1) ? ring[(i - row - 1) & (kRing - 1)] : 0;
        int32_t p = l + a - al;
        p = p > kMaxQ ? kMaxQ : (p < -kMaxQ ? -kMaxQ : p);
        sink.code(t, zigzag(q - p));
      } else if (predictor == kChunkLorenzo) {
        sink.code(t, zigzag(q - prev));
      } else {
        sink.code(t, code_to_u(c));
      }
      if (predictor != 0 && q == 0) sink.sign(c < 0);
      prev = q;
      ++t;
      mask_byte |= 1u << (i & 7);
    } else if (c == kOutlierCode) {
      sink.outlier(i);
    } else {
      sink.zero();
    }
    if (predictor == kChunkLorenzo2D) ring[i & (kRing - 1)] = is_coded ? code_to_q(c) : 0;
    if ((i & 7) == 7 || i + 1 == elems) {
      sink.mask(mask_byte);
      mask_byte = 0;
    }
    if (row && ++col == row) col = 0;
  }
}

struct MeasureSink {
  const EncodeBooks* books;
  LaneDealer dealer;
  uint64_t lane_bits[kCodeLanes] = {0, 0, 0, 0};
  uint64_t sign_bits = 0, mask_bits = 0, zmap_bits = 0;
  uint32_t zeros = 0, outliers = 0, coded = 0;

  ACTZIP_HD void count_map(uint32_t byte) { zmap_bits += (books->zmap[byte] >> 16) & 0xFFu; }
  ACTZIP_HD void code(uint32_t t, uint32_t v) {
    const int l = dealer.lane(t, v, [this](uint32_t byte) { count_map(byte); });
    uint64_t bits;
    if (l >= 0) lane_bits[l] += uint64_t(symbol_bits(v, *books, &bits));
    ++coded;
  }
  ACTZIP_HD void finish() {
    dealer.finish([this](uint32_t byte) { count_map(byte); });
  }
  ACTZIP_HD void sign(bool) { ++sign_bits; }
  ACTZIP_HD void outlier(uint32_t) { ++outliers; }
  ACTZIP_HD void zero() { ++zeros; }
  ACTZIP_HD void mask(uint32_t byte) { mask_bits += (books->mask[byte] >> 16) & 0xFFu; }
};

ACTZIP_HD uint64_t bits_to_section(uint64_t bits) { return ((bits + 7) / 8 + 7) / 8 * 8; }

ACTZIP_HD uint64_t layout_length(uint32_t kind, uint32_t mask_bytes, uint32_t code_bytes, uint32_t outliers,
                                 uint32_t elems, uint32_t es) {
  if (kind == kChunkZero) return kChunkHeaderBytes;
  if (kind == kChunkRaw) return kChunkHeaderBytes + (uint64_t(elems) * es + 7) / 8 * 8;
  return kChunkHeaderBytes + uint64_t(mask_bytes) + code_bytes + (2 * uint64_t(outliers) + 7) / 8 * 8 +
         (uint64_t(outliers) * es + 7) / 8 * 8;
}

// Measures chunk `chunk`: the kind the CPU backend would choose and every section's length.
// `choice`: the chunk flags the sample chose (a predictor's, and kChunkZeroMap).
template <int kDT>
ACTZIP_HD void measure_chunk(const void* data, uint64_t numel, uint32_t chunk, const Quantizer& qz, uint32_t choice,
                             uint32_t row, const EncodeBooks& books, ChunkLayout* out) {
  constexpr uint32_t es = kDT == 1 ? 4 : 2;
  const uint64_t begin = uint64_t(chunk) * kChunkElems;
  const uint32_t elems = numel - begin < kChunkElems ? uint32_t(numel - begin) : kChunkElems;
  const uint32_t predictor = choice & (kChunkLorenzo | kChunkLorenzo2D);
  MeasureSink m;
  m.books = &books;
  m.dealer.zero_map = (choice & kChunkZeroMap) != 0;
  scan_chunk<kDT>(data, begin, elems, qz, predictor, row, m);
  m.finish();
  ChunkLayout L;
  std::memset(&L, 0, sizeof L);
  L.zeros = m.zeros;
  L.coded = m.coded;
  L.outliers = m.outliers;
  if (m.zeros == elems) {
    L.kind = kChunkZero;
    L.outliers = 0;
  } else {
    L.kind = kChunkCoded;
    const bool has_mask = m.coded != elems;
    const bool zero_map = m.dealer.zero_map && m.coded > 0;
    L.flags = (has_mask ? kChunkHasMask : 0u) | predictor | (zero_map ? kChunkZeroMap : 0u);
    uint64_t code_len = 0;
    if (m.coded > 0) {
      L.sign_bytes = uint32_t(bits_to_section(m.sign_bits));
      L.zmap_bytes = zero_map ? uint32_t(bits_to_section(m.zmap_bits)) : 0u;
      code_len = kLaneTableBytes + L.zmap_bytes + L.sign_bytes;
      for (uint32_t l = 0; l < kCodeLanes; ++l) {
        L.lane_bytes[l] = uint32_t(bits_to_section(m.lane_bits[l]));
        code_len += L.lane_bytes[l];
      }
    }
    L.code_bytes = uint32_t(code_len);
    L.mask_bytes = has_mask ? uint32_t(bits_to_section(m.mask_bits)) : 0u;
    const uint64_t coded_len = layout_length(kChunkCoded, L.mask_bytes, L.code_bytes, L.outliers, elems, es);
    if (coded_len >= layout_length(kChunkRaw, 0, 0, 0, elems, es)) {
      L.kind = kChunkRaw;
      L.flags = L.mask_bytes = L.code_bytes = L.sign_bytes = L.zmap_bytes = 0;
      for (uint32_t l = 0; l < kCodeLanes; ++l) L.lane_bytes[l] = 0;
    }
  }
  const uint32_t header_outliers = L.kind == kChunkCoded ? L.outliers : 0u;
  L.length = layout_length(L.kind, L.mask_bytes, L.code_bytes, header_outliers, elems, es);
  *out = L;
}

template <int kDT>
struct WriteSink {
  const EncodeBooks* books;
  const void* data;
  uint64_t begin;
  WordBitWriter lane[kCodeLanes];
  WordBitWriter signs, masks, zmaps;
  uint8_t* pos;   // outlier positions
  uint8_t* vals;  // outlier values
  bool with_mask;
  LaneDealer dealer;
  uint32_t outliers = 0;

  ACTZIP_HD void put_map(uint32_t byte) {
    const uint32_t cl = books->zmap[byte];
    zmaps.put(cl & 0xFFFFu, int((cl >> 16) & 0xFFu));
  }
  ACTZIP_HD void code(uint32_t t, uint32_t v) {
    const int l = dealer.lane(t, v, [this](uint32_t byte) { put_map(byte); });
    if (l < 0) return;
    uint64_t bits;
    const int n = symbol_bits(v, *books, &bits);
    lane[l].put(bits, n);
  }
  ACTZIP_HD void finish() {
    dealer.finish([this](uint32_t byte) { put_map(byte); });
  }
  ACTZIP_HD void sign(bool negative) { signs.put(negative ? 1u : 0u, 1); }
  ACTZIP_HD void outlier(uint32_t i) {
    constexpr uint32_t es = kDT == 1 ? 4 : 2;
    put_u16(pos + 2 * outliers, uint16_t(i));
    const uint8_t* src = static_cast<const uint8_t*>(data) + (begin + i) * es;
    for (uint32_t b = 0; b < es; ++b) vals[uint64_t(outliers) * es + b] = src[b];
    ++outliers;
  }
  ACTZIP_HD void zero() {}
  ACTZIP_HD void mask(uint32_t byte) {
    if (!with_mask) return;
    const uint32_t cl = books->mask[byte];
    masks.put(cl & 0xFFFFu, int((cl >> 16) & 0xFFu));
  }
};

ACTZIP_HD void write_chunk_header_hd(const ChunkLayout& L, uint8_t* out) {
  out[0] = uint8_t(L.kind);
  out[1] = uint8_t(L.flags);
  out[2] = out[3] = 0;
  put_u32(out + 4, L.kind == kChunkCoded ? L.outliers : 0u);
  put_u32(out + 8, L.mask_bytes);
  put_u32(out + 12, L.code_bytes);
}

// Writes chunk `chunk` as measured into `dst` (L.length bytes, 8-byte aligned).
template <int kDT>
ACTZIP_HD void write_chunk(const void* data, uint64_t numel, uint32_t chunk, const Quantizer& qz, uint32_t row,
                           const EncodeBooks& books, const ChunkLayout& L, uint8_t* dst) {
  constexpr uint32_t es = kDT == 1 ? 4 : 2;
  const uint64_t begin = uint64_t(chunk) * kChunkElems;
  const uint32_t elems = numel - begin < kChunkElems ? uint32_t(numel - begin) : kChunkElems;
  write_chunk_header_hd(L, dst);
  uint8_t* body = dst + kChunkHeaderBytes;
  if (L.kind == kChunkZero) return;
  if (L.kind == kChunkRaw) {
    const uint64_t n = uint64_t(elems) * es;
    const uint8_t* src = static_cast<const uint8_t*>(data) + begin * es;
    for (uint64_t b = 0; b < n; ++b) body[b] = src[b];
    zero_fill(body + n, (n + 7) / 8 * 8 - n);
    return;
  }
  uint8_t* code = body + L.mask_bytes;
  WriteSink<kDT> w{&books,
                   data,
                   begin,
                   {WordBitWriter(nullptr), WordBitWriter(nullptr), WordBitWriter(nullptr), WordBitWriter(nullptr)},
                   WordBitWriter(nullptr),
                   WordBitWriter(body),
                   WordBitWriter(nullptr),
                   nullptr,
                   nullptr,
                   L.mask_bytes != 0,
                   LaneDealer{(L.flags & kChunkZeroMap) != 0, ZeroMapBytes{}}};
  if (L.code_bytes) {
    for (uint32_t l = 0; l < kCodeLanes; ++l) put_u32(code + 4 * l, L.lane_bytes[l]);
    put_u32(code + 4 * kCodeLanes, L.sign_bytes);
    put_u32(code + 4 * kCodeLanes + 4, L.zmap_bytes);
    uint8_t* at = code + kLaneTableBytes;
    w.zmaps = WordBitWriter(at);
    at += L.zmap_bytes;
    for (uint32_t l = 0; l < kCodeLanes; ++l) {
      w.lane[l] = WordBitWriter(at);
      at += L.lane_bytes[l];
    }
    w.signs = WordBitWriter(at);
  }
  w.pos = code + L.code_bytes;
  const uint64_t pos_bytes = (2 * uint64_t(L.outliers) + 7) / 8 * 8;
  w.vals = w.pos + pos_bytes;
  zero_fill(w.pos + 2 * uint64_t(L.outliers), pos_bytes - 2 * uint64_t(L.outliers));
  const uint64_t val_bytes = uint64_t(L.outliers) * es;
  zero_fill(w.vals + val_bytes, (val_bytes + 7) / 8 * 8 - val_bytes);
  scan_chunk<kDT>(data, begin, elems, qz, L.flags & (kChunkLorenzo | kChunkLorenzo2D), row, w);
  w.finish();
  if (L.code_bytes) {
    for (uint32_t l = 0; l < kCodeLanes; ++l) w.lane[l].flush();
    w.signs.flush();
    if (L.zmap_bytes) w.zmaps.flush();
  }
  if (L.mask_bytes) w.masks.flush();
}

// The finite minimum and maximum of a chunk as order-preserving integer keys
// (INT32_MAX and INT32_MIN when it has no finite element).
ACTZIP_HD int32_t order_key(float x) {
  const int32_t b = int32_t(f32_bits(x));
  return b ^ ((b >> 31) & 0x7FFFFFFF);
}
ACTZIP_HD float key_value(int32_t key) { return bits_f32(uint32_t(key ^ ((key >> 31) & 0x7FFFFFFF))); }

template <int kDT>
ACTZIP_HD void chunk_range_keys(const void* data, uint64_t begin, uint32_t elems, int32_t* lo, int32_t* hi) {
  int32_t mn = INT32_MAX, mx = INT32_MIN;
  for (uint32_t i = 0; i < elems; ++i) {
    const float v = load_elem<kDT>(data, begin + i);
    if ((f32_bits(v) & 0x7F800000u) == 0x7F800000u) continue;
    const int32_t key = order_key(v);
    mn = key < mn ? key : mn;
    mx = key > mx ? key : mx;
  }
  *lo = mn;
  *hi = mx;
}

// ---------------------------------------------------------------------------------------
// Decompression of one chunk.

// Why a chunk failed to decode; 0 is success. decode_error_text() says it in words.
enum DecodeError : uint32_t {
  kDecodeOk = 0,
  kErrChunkTable,        // the chunk's span in the chunk table is invalid
  kErrChunkHeader,       // a chunk header field breaks a rule
  kErrChunkLength,       // the chunk's length does not match its span
  kErr2DRow,             // 2-D prediction with a last extent outside 2..kMax2DRow
  kErrNoMaskBook,        // a mask section but no mask codebook
  kErrMaskCode,          // a bit pattern that is no mask code
  kErrMaskLength,        // the mask section's length does not match its symbols
  kErrMaskTail,          // mask bits set past the last element
  kErrTooManyOutliers,   // more outliers than uncoded elements
  kErrNoCodeBook,        // codes but no code codebook
  kErrCodeSection,       // the code section does not fit the coded elements
  kErrLaneLength,        // a lane length is invalid
  kErrZmapWithoutFlag,   // a zero-map length (version 1: a reserved field) without a zero map
  kErrSignSection,       // the sign stream does not fill the code section, or is not allowed
  kErrCode,              // an invalid code
  kErrLaneFit,           // a lane's length does not match its symbols
  kErrSignFit,           // the sign stream's length does not match its bits
  kErrOutlierPosition,   // outlier positions not increasing, out of range or on a coded element
  kErrZmapEmpty,         // a zero map in a chunk without coded elements
  kErrNoZmapBook,        // a zero map but no zero-map codebook
  kErrZmapLength,        // the zero map's length is invalid or does not match its symbols
  kErrZmapCode,          // a bit pattern that is no zero-map code
  kErrZmapTail,          // zero-map bits set past the last coded element
  kDecodeErrorCount
};

inline const char* decode_error_text(uint32_t e) {
  switch (e) {
    case kErrChunkTable: return "invalid span in the chunk table";
    case kErrChunkHeader: return "invalid chunk header";
    case kErrChunkLength: return "chunk length does not match the chunk table";
    case kErr2DRow: return "2-D prediction, but the last extent is not between 2 and 128";
    case kErrNoMaskBook: return "a mask but the stream has no mask codebook";
    case kErrMaskCode: return "invalid mask code";
    case kErrMaskLength: return "mask section length mismatch";
    case kErrMaskTail: return "mask bits set past the last element";
    case kErrTooManyOutliers: return "more outliers than uncoded elements";
    case kErrNoCodeBook: return "codes but the stream has no codebook";
    case kErrCodeSection: return "code section does not fit the coded elements";
    case kErrLaneLength: return "a code lane has an invalid length";
    case kErrZmapWithoutFlag: return "a zero-map length without a zero map";
    case kErrSignSection: return "invalid sign stream";
    case kErrCode: return "invalid code";
    case kErrLaneFit: return "code lane length mismatch";
    case kErrSignFit: return "sign stream length mismatch";
    case kErrOutlierPosition: return "invalid outlier position";
    case kErrZmapEmpty: return "a zero map without coded elements";
    case kErrNoZmapBook: return "a zero map but the stream has no zero-map codebook";
    case kErrZmapLength: return "zero map length mismatch";
    case kErrZmapCode: return "invalid zero-map code";
    case kErrZmapTail: return "zero-map bits set past the last coded element";
    default: return "decoding failed";
  }
}

// What every chunk of a stream shares, from the host's parse of the header.
struct DecodeParams {
  uint64_t numel;
  uint64_t payload_bytes;  // bytes of the payload (chunks), without the checksum
  uint32_t num_chunks;
  uint32_t row;            // the 2-D predictor's row length, 0 when the last extent is outside 2..128
  double error_bound;
  float quant_step;
  int direct_log2;
  bool has_mask_book, has_code_book, has_zmap_book;
  uint32_t version;  // format_version: zero maps need 2
};

// Decode tables, built by build_decode_table_one(), kDecodeTableSize u32 entries each,
// indexed by the next kMaxCodeLen bits, in this order: mask, code, zero map. The mask and
// zero-map tables' entries are symbol | length << 12 (length 0: no code); the code table's
// ("wide") hold the symbol in bits 0-11, the code length in 12-15, the extra bits in 16-20,
// length plus extra bits in 21-26, a class flag in 27 and an invalid-code flag in 28.
inline constexpr uint64_t kDecodeTablesBytes = 3 * kDecodeTableSize * 4;

// Builds a decode table from nibble-packed code lengths as the header stores them
// (docs/FORMAT.md section 1). Returns false for lengths that are no canonical code.
ACTZIP_HD bool build_decode_table_one(const uint8_t* nibbles, uint32_t count, uint32_t* table, int k, bool wide) {
  uint32_t per_len[kMaxCodeLen + 1] = {0};
  for (uint32_t s = 0; s < count; ++s) {
    const uint32_t l = (s & 1) ? nibbles[s / 2] >> 4 : nibbles[s / 2] & 0xFu;
    if (l > kMaxCodeLen) return false;
    ++per_len[l];
  }
  per_len[0] = 0;
  uint64_t kraft = 0;
  for (int l = 1; l <= kMaxCodeLen; ++l) kraft += uint64_t(per_len[l]) << (kMaxCodeLen - l);
  if (kraft > (uint64_t(1) << kMaxCodeLen)) return false;
  uint32_t next[kMaxCodeLen + 2] = {0};
  uint32_t code = 0;
  for (int l = 1; l <= kMaxCodeLen; ++l) {
    code = (code + per_len[l - 1]) << 1;
    next[l] = code;
  }
  for (uint32_t j = 0; j < kDecodeTableSize; ++j) table[j] = wide ? (1u << 28) : 0u;
  const uint32_t direct = 1u << k;
  for (uint32_t s = 0; s < count; ++s) {
    const uint32_t l = (s & 1) ? nibbles[s / 2] >> 4 : nibbles[s / 2] & 0xFu;
    if (l == 0) continue;
    const uint32_t c = next[l]++;
    uint32_t rev = 0;
    for (uint32_t b = 0; b < l; ++b) rev |= ((c >> b) & 1u) << (l - 1 - b);
    uint32_t entry;
    if (wide) {
      const bool is_class = s >= direct;
      const uint32_t eb = is_class ? s - direct + uint32_t(k) : 0;
      entry = s | (l << 12) | (eb << 16) | ((l + eb) << 21) | (uint32_t(is_class) << 27);
    } else {
      entry = s | (l << 12);
    }
    for (uint32_t j = rev; j < kDecodeTableSize; j += 1u << l) table[j] = entry;
  }
  return true;
}

// The chunk header fields and checks of docs/FORMAT.md section 2.
struct ChunkFields {
  uint32_t kind, flags, outliers, mask_bytes, code_bytes;
};
ACTZIP_HD uint32_t parse_chunk_fields(const uint8_t* p, uint64_t span, uint32_t elems, uint32_t es, uint32_t version,
                                      ChunkFields* f) {
  if (span < kChunkHeaderBytes) return kErrChunkLength;
  f->kind = p[0];
  f->flags = p[1];
  f->outliers = get_u32(p + 4);
  f->mask_bytes = get_u32(p + 8);
  f->code_bytes = get_u32(p + 12);
  if (get_u16(p + 2) != 0 || f->kind > kChunkZero) return kErrChunkHeader;
  if (f->kind != kChunkCoded) {
    if (f->flags || f->outliers || f->mask_bytes || f->code_bytes) return kErrChunkHeader;
  } else {
    const uint32_t known = kChunkLorenzo | kChunkHasMask | kChunkLorenzo2D |
                           (version >= kFirstZeroMapVersion ? kChunkZeroMap : 0u);
    if (f->flags & ~known) return kErrChunkHeader;
    if ((f->flags & kChunkLorenzo) && (f->flags & kChunkLorenzo2D)) return kErrChunkHeader;
    if (f->outliers > elems || f->mask_bytes % 8 || f->code_bytes % 8) return kErrChunkHeader;
    if (!(f->flags & kChunkHasMask) && (f->mask_bytes != 0 || f->outliers != 0)) return kErrChunkHeader;
  }
  if (layout_length(f->kind, f->mask_bytes, f->code_bytes, f->outliers, elems, es) != span) return kErrChunkLength;
  return kDecodeOk;
}

// Decodes chunk `chunk` of a stream whose payload starts at `payload` into `out` (the whole
// tensor's storage). `chunk_table` points to the header's chunk table (u64 end offsets).
// Every byte is treated as hostile: nothing outside the chunk's span is read and nothing
// outside the chunk's elements is written. Returns a DecodeError.
template <int kDT>
ACTZIP_HD uint32_t decode_chunk_stream(const uint8_t* payload, const uint8_t* chunk_table, uint32_t chunk,
                                       const DecodeParams& p, const uint32_t* mask_table,
                                       const uint32_t* code_table, const uint32_t* zmap_table, void* out) {
  constexpr uint32_t es = kDT == 1 ? 4 : 2;
  const uint64_t begin = uint64_t(chunk) * kChunkElems;
  const uint32_t elems = p.numel - begin < kChunkElems ? uint32_t(p.numel - begin) : kChunkElems;
  const uint64_t start = chunk == 0 ? 0 : get_u64(chunk_table + 8 * uint64_t(chunk - 1));
  const uint64_t end = get_u64(chunk_table + 8 * uint64_t(chunk));
  if (end < start || end > p.payload_bytes || start % 8 || end % 8) return kErrChunkTable;
  const uint8_t* ck = payload + start;
  ChunkFields f;
  uint32_t err = parse_chunk_fields(ck, end - start, elems, es, p.version, &f);
  if (err) return err;
  uint8_t* dst = static_cast<uint8_t*>(out) + begin * es;
  const uint8_t* body = ck + kChunkHeaderBytes;
  if (f.kind == kChunkZero) {
    zero_fill(dst, uint64_t(elems) * es);
    return kDecodeOk;
  }
  if (f.kind == kChunkRaw) {
    for (uint64_t b = 0; b < uint64_t(elems) * es; ++b) dst[b] = body[b];
    return kDecodeOk;
  }
  const bool has_mask = f.flags & kChunkHasMask;
  const bool lorenzo = f.flags & kChunkLorenzo;
  const bool lorenzo2d = f.flags & kChunkLorenzo2D;
  const bool zero_map = f.flags & kChunkZeroMap;
  if (lorenzo2d && p.row == 0) return kErr2DRow;
  const uint32_t mask_len = (elems + 7) / 8;
  // The next byte of a mask or zero map.
  auto byte_next = [&](BitReader& r, const uint32_t* table, uint32_t* byte) {
    if (r.available() < kMaxCodeLen) r.refill();
    const uint32_t e = table[r.peek() & (kDecodeTableSize - 1)];
    const int l = int(e >> 12);
    r.consume(l);
    *byte = e & 0xFFu;
    return l != 0;
  };
  auto mask_next = [&](BitReader& r, uint32_t* byte) { return byte_next(r, mask_table, byte); };
  uint32_t coded = elems;
  if (has_mask) {
    if (!p.has_mask_book) return kErrNoMaskBook;
    BitReader r(body, body + f.mask_bytes);
    coded = 0;
    bool bad = false;
    uint32_t last = 0;
    for (uint32_t j = 0; j < mask_len; ++j) {
      uint32_t byte;
      bad |= !mask_next(r, &byte);
      coded += uint32_t(
#if defined(__CUDA_ARCH__)
          __popc(byte)
#else
          __builtin_popcount(byte)
#endif
      );
      last = byte;
    }
    if (bad) return kErrMaskCode;
    if (!r.fits(f.mask_bytes)) return kErrMaskLength;
    if ((elems & 7) && (last >> (elems & 7)) != 0) return kErrMaskTail;
    if (f.outliers > elems - coded) return kErrTooManyOutliers;
  }
  if (zero_map && coded == 0) return kErrZmapEmpty;
  if (zero_map && !p.has_zmap_book) return kErrNoZmapBook;
  if (coded > 0 && !p.has_code_book) return kErrNoCodeBook;
  if ((coded == 0) != (f.code_bytes == 0) || (coded > 0 && f.code_bytes < kLaneTableBytes)) return kErrCodeSection;
  const uint8_t* code = body + f.mask_bytes;
  BitReader lane[kCodeLanes];
  BitReader signs, zr;
  uint64_t lane_bytes[kCodeLanes] = {0, 0, 0, 0};
  uint32_t sign_bytes = 0, zmap_bytes = 0;
  if (coded > 0) {
    zmap_bytes = get_u32(code + 4 * kCodeLanes + 4);
    if (!zero_map && zmap_bytes != 0) return kErrZmapWithoutFlag;
    if (zmap_bytes % 8 != 0 || zmap_bytes > f.code_bytes - kLaneTableBytes) return kErrZmapLength;
    zr = BitReader(code + kLaneTableBytes, code + kLaneTableBytes + zmap_bytes);
    uint64_t at = kLaneTableBytes + zmap_bytes;
    for (uint32_t l = 0; l < kCodeLanes; ++l) {
      lane_bytes[l] = get_u32(code + 4 * l);
      if (lane_bytes[l] % 8 != 0 || lane_bytes[l] > f.code_bytes - at) return kErrLaneLength;
      lane[l] = BitReader(code + at, code + at + lane_bytes[l]);
      at += lane_bytes[l];
    }
    sign_bytes = get_u32(code + 4 * kCodeLanes);
    if (sign_bytes % 8 != 0 || sign_bytes != f.code_bytes - at) return kErrSignSection;
    if (sign_bytes != 0 && !(lorenzo || lorenzo2d)) return kErrSignSection;
    signs = BitReader(code + at, code + at + sign_bytes);
  }
  // The main pass: each element in order.
  const Quantizer qz = make_quantizer(p.error_bound, p.quant_step);
  BitReader mr(body, body + f.mask_bytes);
  int32_t ring[kRing];
  int32_t prev = 0;
  uint32_t bad = 0, t = 0, mask_byte = 0xFFu;
  uint32_t zmap_byte = 0xFFu, zmap_left = 0, carried = 0;  // zero map: the current byte's bits not yet used
  uint32_t col = p.row ? uint32_t(begin % p.row) : 0;
  for (uint32_t i = 0; i < elems; ++i) {
    if (has_mask && (i & 7) == 0) mask_next(mr, &mask_byte);
    const bool is_coded = (mask_byte >> (i & 7)) & 1u;
    uint32_t bits = 0;
    int32_t q = 0;
    if (is_coded) {
      bool is_carried = true;
      if (zero_map) {
        if (zmap_left == 0) {
          bad |= uint32_t(!byte_next(zr, zmap_table, &zmap_byte)) << 1;
          zmap_left = 8;
        }
        is_carried = zmap_byte & 1u;
        zmap_byte >>= 1;
        --zmap_left;
      }
      uint32_t u = 0;
      if (is_carried) {
        BitReader& rd = lane[carried++ % kCodeLanes];
        rd.refill();
        const uint64_t w = rd.peek();
        const uint32_t e = code_table[w & (kDecodeTableSize - 1)];
        const uint32_t len = (e >> 12) & 15u, eb = (e >> 16) & 31u, total = (e >> 21) & 63u;
        rd.consume(int(total));
        const uint32_t extra = uint32_t(w >> len) & ((1u << eb) - 1u);
        u = (e & (1u << 27)) ? (1u << eb) + extra : (e & 0xFFFu);
        bad |= (e >> 28) & 1u;
      }
      int32_t cv;
      if (lorenzo || lorenzo2d) {
        int32_t pred = prev;
        if (lorenzo2d) {
          const bool left = col != 0 && i >= 1;
          const bool up = i >= p.row;
          const int32_t l = left ? ring[(i - 1) & (kRing - 1)] : 0;
          const int32_t a = up ? ring[(i - p.row) & (kRing - 1)] : 0;
          const int32_t al = (left && i >= p.row + 1) ? ring[(i - p.row - 1) & (kRing - 1)] : 0;
          pred = l + a - al;
          pred = pred > kMaxQ ? kMaxQ : (pred < -kMaxQ ? -kMaxQ : pred);
        }
        const int32_t qq = pred + unzigzag(u);
        const uint32_t invalid = (qq > kMaxQ) | (qq < -kMaxQ);
        bad |= invalid;
        bool negative = false;
        if (qq == 0) {
          if (signs.available() < 1) signs.refill();
          negative = (signs.peek() & 1u) != 0;
          signs.consume(1);
        }
        cv = invalid ? 1 : q_to_code(qq, negative);
        q = code_to_q(cv);
        prev = q;
      } else {
        bad |= uint32_t(u > 2u * uint32_t(kMaxCode - 1) + 1u);
        cv = u_to_code(u < 2u * uint32_t(kMaxCode) ? u : 0u);
      }
      const float v = reconstruct(cv, qz);
      if constexpr (kDT == 1) bits = f32_bits(v);
      else if constexpr (kDT == 2) bits = f32_to_f16(v);
      else bits = f32_to_bf16(v);
      ++t;
    }
#if defined(__CUDA_ARCH__)
    // The output tensor is aligned to its element size: one typed store.
    if constexpr (kDT == 1) reinterpret_cast<uint32_t*>(dst)[i] = bits;
    else reinterpret_cast<uint16_t*>(dst)[i] = uint16_t(bits);
#else
    if constexpr (kDT == 1) put_u32(dst + 4 * uint64_t(i), bits);
    else put_u16(dst + 2 * uint64_t(i), uint16_t(bits));
#endif
    if (lorenzo2d) ring[i & (kRing - 1)] = q;
    if (p.row && ++col == p.row) col = 0;
  }
  if (bad & 2u) return kErrZmapCode;
  if (bad) return kErrCode;
  if (zero_map && zmap_byte != 0) return kErrZmapTail;  // the last map byte's unused bits
  if (zero_map && !zr.fits(zmap_bytes)) return kErrZmapLength;
  for (uint32_t l = 0; l < kCodeLanes && coded > 0; ++l)
    if (!lane[l].fits(lane_bytes[l])) return kErrLaneFit;
  if (!signs.fits(sign_bytes)) return kErrSignFit;
  // Outliers: strictly increasing positions of uncoded elements, then their exact bits.
  const uint8_t* pos = code + f.code_bytes;
  const uint8_t* val = pos + (2 * uint64_t(f.outliers) + 7) / 8 * 8;
  BitReader or_(body, body + f.mask_bytes);
  uint32_t next_byte = 0;  // mask bytes decoded so far in this pass
  mask_byte = has_mask ? 0u : 0xFFu;
  int64_t last = -1;
  for (uint32_t o = 0; o < f.outliers; ++o) {
    const uint32_t i = get_u16(pos + 2 * o);
    if (int64_t(i) <= last || i >= elems) return kErrOutlierPosition;
    while (has_mask && next_byte <= i / 8) {
      mask_next(or_, &mask_byte);
      ++next_byte;
    }
    if ((mask_byte >> (i & 7)) & 1u) return kErrOutlierPosition;
    last = i;
    for (uint32_t b = 0; b < es; ++b) dst[uint64_t(i) * es + b] = val[uint64_t(o) * es + b];
  }
  return kDecodeOk;
}

}  // namespace detail
}  // namespace actzip
