// Whole-chunk passes of the CPU backend: each is one simple loop over a chunk's elements,
// written so that the compiler vectorizes it (and, where the platform dispatches at load
// time, clones it for AVX2), or, where a pass carries a dependence from element to
// element, so that the dependence is a single add or select.
//
// Splitting the per-element work into such passes, instead of one loop that classifies,
// predicts and entropy-codes each element in turn, is what makes the backend fast: the
// serial bit writing and reading is left with nothing but itself. Every pass computes
// exactly what docs/FORMAT.md prescribes; tests/cpp/test_passes.cpp checks each against
// the per-element definitions of codec/element.h.
#pragma once

#include <cstdint>

#include "codec/bitio.h"
#include "codec/element.h"
#include "codec/huffman.h"

// Hand-written AVX2 loops (dispatched at run time, see avx2_passes_on()).
#if defined(__GNUC__) && defined(__x86_64__)
#include <immintrin.h>
#define ACTZIP_AVX2_PASSES 1
#define ACTZIP_TARGET_AVX2 __attribute__((target("avx2,popcnt")))
#endif

// Hot loops get a clone for AVX2 where the platform can dispatch on it at load time.
#if defined(__GNUC__) && defined(__x86_64__) && defined(__linux__) && !defined(__clang__)
#define ACTZIP_MULTIVERSION __attribute__((target_clones("avx2", "default")))
// Classification is wide double-precision work: AVX-512 halves its instructions.
#define ACTZIP_MULTIVERSION_WIDE __attribute__((target_clones("avx512f", "avx2", "default")))
#else
#define ACTZIP_MULTIVERSION
#define ACTZIP_MULTIVERSION_WIDE
#endif

namespace actzip {
namespace detail {

// Marks an element that is not coded (a zero or an outlier) in the decoder's grid of
// element values; no valid value comes near it.
inline constexpr uint32_t kUncodedValue = 0xFFFFFFFFu;

// For tests: with `on`, the passes run their portable loops even where the CPU has the
// AVX2 and BMI2 versions (clones made by ACTZIP_MULTIVERSION still dispatch). Not for use
// while other threads run passes.
void force_portable_passes(bool on);

// Whether passes with AVX2 versions run them now (the CPU has AVX2 and
// force_portable_passes() is off); for passes outside this file.
bool avx2_passes_on();

// For tests: with `on`, the AVX2 passes gather and scatter sign bits with tables even where
// pext/pdep are fast. Not for use while other threads run passes.
void force_table_bits(bool on);

// ---- Sampling ----

// The sampled histograms of one chunk, as chunk.h's PredictorHist counts them, with one
// more bin (kSampleTrashBin) that takes the elements a run does not count, so that the
// counting loop has no branch. Clear before each chunk.
inline constexpr uint32_t kSampleTrashBin = kFineAlphabet;
struct SampleTally {
  uint32_t none[kFineAlphabet + 1], lor[kFineAlphabet + 1], lor2d[kFineAlphabet + 1];
  uint32_t sign_bits, coded;
  // Each run's zero-map bits under each predictor (none, 1-D, 2-D: bit t set when coded value
  // t is not 0), for sampled_zmap_bytes() to count as bytes once the predictor is chosen.
  struct RunBits {
    uint64_t nonzero[3];
    uint32_t coded;
  } run_bits[16];  // chunk.h's kSampleRuns
  uint32_t runs;
  void clear();
};

// chunk.h's sample_run with a LocalSampleCount over `tally` and `mask_hist` (256 counters):
// the same counts, from loops that vectorize instead of one branchy loop per element.
// `codes` holds the run's codes preceded by `context` codes of the chunk (n <= kSampleRun,
// context <= kMax2DRow + 1). Of the context, only the upper neighbours (positions up to
// n) and the left one (context - 1) change the counts: with context = row + 1, positions
// n + 1 .. row - 1 may hold any code.
void sample_run_counts(const int32_t* codes, uint32_t context, uint32_t n, uint32_t first, uint32_t col0, uint32_t row,
                       SampleTally* tally, uint64_t* mask_hist);

// Adds the zero-map bytes of the predictor in `slot` (chunk.h's predictor_slot) to hist (256
// counters): the counts chunk.h's sample_run makes in PredictorHist::zmap[slot].
void sampled_zmap_bytes(const SampleTally& tally, uint32_t slot, uint64_t* hist);

// chunk.h's choose_predictor for a SampleTally: the same costs, summed in the same order
// (so the same doubles and the same choice), visiting only the bins that are not empty.
uint8_t choose_sampled_predictor(const SampleTally& tally, bool with_2d, const float* nlog2n, const uint32_t** chosen);

// ---- Encoder ----

// codes[i] = classify_code(x[i]) for the chunk's elements, and optionally, for each
// element, q_out[i] (its quantized value; 0 for zeros and outliers) or u_out[i]
// (codes_to_u below): at most one of the two. *zeros and *outliers get the
// numbers of zeros (code 0) and outliers (kOutlierCode). Classifying is the costly part; the rest rides along.
void classify_codes_f32(const float* x, uint32_t n, const Quantizer& qz, int32_t* codes, int32_t* q_out,
                        uint32_t* u_out, uint32_t* zeros, uint32_t* outliers);
void classify_codes_f16(const uint16_t* x, uint32_t n, const Quantizer& qz, int32_t* codes, int32_t* q_out,
                        uint32_t* u_out, uint32_t* zeros, uint32_t* outliers);
void classify_codes_bf16(const uint16_t* x, uint32_t n, const Quantizer& qz, int32_t* codes, int32_t* q_out,
                         uint32_t* u_out, uint32_t* zeros, uint32_t* outliers);

// u[i] = code_to_u(codes[i]) (meaningless for uncoded elements, which are dropped later).
void codes_to_u(const int32_t* codes, uint32_t n, uint32_t* u);

// The 1-D Lorenzo residuals of a sequence of q values: u[t] = zigzag(q[t] - q[t-1]), q[-1] = 0.
void lorenzo1d_residuals(const int32_t* q, uint32_t n, uint32_t* u);

// The 2-D Lorenzo residuals of the chunk grid: u[i] = zigzag(q[i] - lorenzo2d_predict(...)).
// `q` must be preceded by row + 1 zeros (q[-row-1 .. -1] readable and 0); col0 is the
// column of element 0.
void lorenzo2d_residuals(const int32_t* q, uint32_t n, uint32_t row, uint32_t col0, uint32_t* u);

// Keeps values[i] for the coded elements (code neither 0 nor kOutlierCode), in order, in
// place; writes the chunk's mask bytes (bit i % 8 of byte i / 8: element i coded) and
// returns the number kept.
uint32_t compact_coded(const int32_t* codes, uint32_t n, uint32_t* values, uint8_t* mask_bytes);

// Keeps the values that are not 0, in order, in place; writes the zero map (bit i % 8 of
// byte i / 8: values[i] != 0) and returns the number kept.
uint32_t compact_nonzero(uint32_t* values, uint32_t n, uint8_t* map_bytes);

// Positions of the outliers, in order; returns their number.
uint32_t outlier_positions(const int32_t* codes, uint32_t n, uint16_t* pos);

// Writes the sign stream: bit 1 for each element whose code is -1, 0 for code +1, in
// order (these are exactly the coded elements with q = 0). `out` needs n / 8 + 16 bytes.
// Returns the bytes written (the last one zero-padded).
uint64_t write_sign_stream(const int32_t* codes, uint32_t n, uint8_t* out);

// The code symbols of small values precomputed: for u < kSmallValues, entry u is the value's
// bit-reversed code with its extra bits above it, | (code length + extra bits) << 24.
inline constexpr uint32_t kSmallValues = 4096;

// The encoder's tables for direct_log2 = k: code_len[s] = symbol s's code | length << 16
// (code.len.size() entries) and `small` (kSmallValues entries; every symbol must have a code).
void build_code_tables(const HuffmanEncoder& code, int k, uint32_t* code_len, uint32_t* small);

// Huffman-codes values u[0..n) into kCodeLanes interleaved lanes (value t into lane t % 4),
// lane l starting at lanes + l * lane_stride; each lane needs 8 bytes of slack. small: the
// table above; code_len: each symbol's code | length << 16; k: direct_log2.
// Writes each lane's byte count (the last byte zero-padded) to lane_bytes.
void huffman_encode_lanes(const uint32_t* u, uint32_t n, const uint32_t* small, const uint32_t* code_len, int k,
                          uint8_t* lanes, uint64_t lane_stride, uint64_t* lane_bytes);

// ---- Decoder ----

// The decode table widened so that one lookup (kDecodeTableSize entries, indexed by the
// next kMaxCodeLen bits) gives everything about the next value: a direct symbol's value
// (bits 0-11, 0 for a class), code length (12-15), extra bits (16-20), code length plus
// extra bits (21-26) and a class flag (27). A bit pattern that starts no code gets a class
// of 31 extra bits that consumes nothing, so its value is at least 2^31, which no valid
// value reaches, and the decoder reports it.
void build_value_table(const HuffmanDecoder& code, int k, uint32_t* table);

// A decode table that yields two values at once where two direct symbols' codes fit in
// the kMaxCodeLen bits looked up: consumed bits (bits 0-5), two values (6), class (7), and
// either the values (8-17, 18-27; direct values are below 2^kMaxDirectLog2) or, for a
// class, its extra bits (8-12) and code length (13-16). Built from `table`, the widened
// single-value table above; kDecodeTableSize entries.
// Returns the entries that hold two values: each entry is as likely as any other under the
// code's own symbol distribution, so this out of kDecodeTableSize is the share of lookups
// that would yield two values.
inline constexpr uint32_t kPairClass = 1u << 7;
uint32_t build_pair_table(const uint32_t* table, uint32_t* pairs);

// Huffman-decodes n values into u, value t from lanes[t % kCodeLanes], with the tables
// above (pairs may be null: one value a lookup). Returns false when some code is invalid.
// The readers are left where decoding stopped, for the caller's length checks.
// max_bits: max_value_bits(table), or more (a step refills a lane only when fewer bits
// than that wait).
bool huffman_decode_lanes(const uint32_t* table, const uint32_t* pairs, uint32_t max_bits, BitReader* lanes,
                          uint32_t n, uint32_t* u);

// The most bits one value of `table` (build_value_table) takes: code and extra bits.
uint32_t max_value_bits(const uint32_t* table);

// Spreads the coded elements' values over the chunk grid: grid[i] = values[t] for the
// t-th coded element (mask bit set), kUncodedValue elsewhere. mask holds (n + 7) / 8 bytes.
void expand_coded(const uint32_t* values, const uint8_t* mask, uint32_t n, uint32_t* grid);

// The same with 0 where the bit is clear: a zero map's carried values spread over the coded
// elements. `values` is read eight at a time, so it needs room for n elements however few
// it holds; out must not alias it.
void expand_nonzero(const uint32_t* values, const uint8_t* map, uint32_t n, uint32_t* out);

// True when some u[i] (not kUncodedValue) exceeds the largest valid unpredicted value.
bool any_invalid_u(const uint32_t* u, uint32_t n);

// Storage bits of the reconstructions: w[i] = |c| - 1 << 1 | (c < 0) for an element of
// code c (as code_to_u), kUncodedValue for a +0.0. Writes n elements of the dtype.
void reconstruct_f32(const uint32_t* w, uint32_t n, float step, float quarter_step, uint32_t* out);
void reconstruct_f16(const uint32_t* w, uint32_t n, float step, float quarter_step, uint16_t* out);

// out[i] = f16_to_f32(x[i]) (exact; F16C where the CPU has it, which quiets a signalling
// NaN: for passes that only tell NaN from other values).
void widen_f16(const uint16_t* x, uint32_t n, float* out);
void reconstruct_bf16(const uint32_t* w, uint32_t n, float step, float quarter_step, uint16_t* out);

// w of the elements of q values q[0..n) (coded unless the same position of `coded_if` holds
// kUncodedValue; coded_if may be null): a coded q of 0 takes its sign from `signs`, one bit
// each. Returns the sign bits taken. w may alias coded_if.
uint64_t q_to_w(const int32_t* q, const uint32_t* coded_if, uint32_t n, BitReader& signs, uint32_t* w);

// The 1-D Lorenzo inverse: q[t] = q[t-1] + unzigzag(u[t]) (q[-1] = 0). Returns false when a
// q leaves [-kMaxQ, kMaxQ] (the q from there on are then meaningless).
bool lorenzo1d_inverse(const uint32_t* u, uint32_t n, int32_t* q);

// The 2-D Lorenzo inverse over the chunk grid `u` (kUncodedValue for uncoded elements, whose
// q is 0; all_coded: there are none). `q` must be preceded by row + 1 writable elements.
// Returns false when a q leaves [-kMaxQ, kMaxQ] or a prediction may need clamping: the
// caller then decodes the chunk by the per-element definition, which handles both.
bool lorenzo2d_inverse(const uint32_t* u, uint32_t n, uint32_t row, uint32_t col0, bool all_coded, int32_t* q);

}  // namespace detail
}  // namespace actzip
