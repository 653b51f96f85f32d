#include "codec/plan.h"

#include <algorithm>
#include <cmath>
#include <limits>
#include <string>

#include "codec/element.h"

namespace actzip {
namespace detail {

namespace {
// Sample counts are scaled by this before every symbol gets one count, so that symbols the
// sample missed stay codable but cost little.
constexpr uint64_t kSampleWeight = 64;

std::vector<uint8_t> smoothed_lengths(const std::vector<uint64_t>& freq) {
  std::vector<uint64_t> f(freq.size());
  for (size_t s = 0; s < f.size(); ++s) f[s] = freq[s] * kSampleWeight + 1;
  return huffman_lengths(f.data(), uint32_t(f.size()));
}
}  // namespace

const std::vector<float>& nlog2n_table() {
  static const std::vector<float> table = [] {
    std::vector<float> t(kChunkElems + 1, 0.0f);
    for (uint32_t n = 2; n <= kChunkElems; ++n) t[n] = float(double(n) * std::log2(double(n)));
    return t;
  }();
  return table;
}

double rel_abs_bound(double lo, double hi, double requested) { return rel_abs_bound_hd(lo, hi, requested); }

Status build_code_books(const uint64_t* fine, const uint64_t* mask, const uint64_t* zmap, CodeBooks* books) {
  // direct_log2: the k whose codebook plus estimated code size is smallest.
  int best_k = kMaxDirectLog2;
  double best_bits = std::numeric_limits<double>::infinity();
  std::vector<uint64_t> sym_freq;
  for (int k = 0; k <= kMaxDirectLog2; ++k) {
    sym_freq.assign(code_alphabet(k), 0);
    double bits = 4.0 * kSampleWeight * code_alphabet(k);  // the codebook, per sample weight
    uint64_t total = 0;
    for (uint32_t b = 0; b < kFineAlphabet; ++b) {
      if (fine[b] == 0) continue;
      int eb = 0;
      sym_freq[fine_bin_to_symbol(b, k, &eb)] += fine[b];
      bits += double(fine[b]) * eb * kSampleWeight;
      total += fine[b];
    }
    for (uint64_t f : sym_freq)
      if (f) bits -= double(f) * kSampleWeight * std::log2(double(f) / double(total));
    if (bits < best_bits) {
      best_bits = bits;
      best_k = k;
    }
  }
  books->direct_log2 = best_k;
  sym_freq.assign(code_alphabet(best_k), 0);
  for (uint32_t b = 0; b < kFineAlphabet; ++b) {
    int eb = 0;
    if (fine[b]) sym_freq[fine_bin_to_symbol(b, best_k, &eb)] += fine[b];
  }
  books->code_lengths = smoothed_lengths(sym_freq);
  books->mask_lengths = smoothed_lengths(std::vector<uint64_t>(mask, mask + 256));
  books->zmap_lengths = smoothed_lengths(std::vector<uint64_t>(zmap, zmap + 256));
  if (!books->code.build(books->code_lengths) || !books->mask.build(books->mask_lengths) ||
      !books->zmap.build(books->zmap_lengths))
    return Status{StatusCode::kInternal, "Huffman code construction failed"};
  return Status::Ok();
}

}  // namespace detail
}  // namespace actzip
