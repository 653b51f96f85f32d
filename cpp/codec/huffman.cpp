#include "codec/huffman.h"

#include <algorithm>
#include <numeric>

namespace actzip {
namespace detail {

uint64_t kraft_sum(const std::vector<uint8_t>& lengths) {
  uint64_t sum = 0;
  for (uint8_t l : lengths)
    if (l != 0) sum += uint64_t(1) << (kMaxCodeLen - std::min<int>(l, kMaxCodeLen));
  return sum;
}

std::vector<uint8_t> huffman_lengths(const uint64_t* freq, uint32_t alphabet) {
  std::vector<uint8_t> lengths(alphabet, 0);
  std::vector<uint32_t> used;
  used.reserve(alphabet);
  uint64_t largest = 0;
  for (uint32_t s = 0; s < alphabet; ++s) {
    if (freq[s] == 0) continue;
    used.push_back(s);
    largest = std::max(largest, freq[s]);
  }
  if (used.empty()) return lengths;
  if (used.size() == 1) {
    lengths[used[0]] = 1;
    return lengths;
  }
  // Package-merge (Larmore & Hirschberg): optimal lengths under the kMaxCodeLen limit.
  // Leaves in ascending (frequency, symbol) order, so the result is deterministic. When the
  // pair fits in 64 bits, sort it as one integer (the common case; no indirection).
  const size_t n = used.size();  // callers keep n <= 2^kMaxCodeLen
  int sym_bits = 1;
  while ((uint64_t(1) << sym_bits) < alphabet) ++sym_bits;
  if (largest < (uint64_t(1) << (64 - sym_bits))) {
    std::vector<uint64_t> keys(n);
    for (size_t i = 0; i < n; ++i) keys[i] = (freq[used[i]] << sym_bits) | used[i];
    std::sort(keys.begin(), keys.end());
    for (size_t i = 0; i < n; ++i) used[i] = uint32_t(keys[i] & ((uint64_t(1) << sym_bits) - 1));
  } else {
    std::sort(used.begin(), used.end(), [&](uint32_t a, uint32_t b) {
      return freq[a] != freq[b] ? freq[a] < freq[b] : a < b;
    });
  }
  // Level t holds the merged list of depth kMaxCodeLen - t: the leaves and the packages of
  // two consecutive items of level t - 1, in ascending weight (a leaf first on a tie).
  // Flat arrays, one row of 2n items per level; only the leaf flags outlive the merge.
  const size_t row = 2 * n;
  std::vector<uint64_t> leaf(n), below(row), level(row);
  std::vector<uint8_t> is_leaf(kMaxCodeLen * row);
  std::vector<size_t> size(kMaxCodeLen);
  for (size_t i = 0; i < n; ++i) leaf[i] = freq[used[i]];
  std::copy(leaf.begin(), leaf.end(), below.begin());
  std::fill(is_leaf.begin(), is_leaf.begin() + n, 1);
  size[0] = n;
  for (int t = 1; t < kMaxCodeLen; ++t) {
    const size_t packages = size[t - 1] / 2;
    uint8_t* flags = is_leaf.data() + t * row;
    size_t li = 0, pi = 0, k = 0;
    while (li < n && pi < packages) {
      const uint64_t lw = leaf[li], pw = below[2 * pi] + below[2 * pi + 1];
      const uint64_t take_leaf = lw <= pw;
      level[k] = take_leaf ? lw : pw;
      flags[k++] = uint8_t(take_leaf);
      li += take_leaf;
      pi += 1 - take_leaf;
    }
    for (; li < n; ++li, ++k) {
      level[k] = leaf[li];
      flags[k] = 1;
    }
    for (; pi < packages; ++pi, ++k) {
      level[k] = below[2 * pi] + below[2 * pi + 1];
      flags[k] = 0;
    }
    size[t] = k;
    std::swap(below, level);
  }
  // Take the 2n - 2 smallest items of the top list; each leaf taken at any depth adds one
  // to its code length, and the packages taken expand into a prefix of the list below.
  size_t take = 2 * n - 2;
  for (int t = kMaxCodeLen - 1; t >= 0; --t) {
    const uint8_t* flags = is_leaf.data() + t * row;
    size_t leaves = 0;
    const size_t m = std::min(take, size[t]);
    for (size_t i = 0; i < m; ++i) leaves += flags[i];
    for (size_t i = 0; i < leaves; ++i) ++lengths[used[i]];
    take = 2 * (m - leaves);
  }
  return lengths;
}

namespace {
// Canonical codes in the (length, symbol) order of the format; returns false when invalid.
bool canonical_codes(const std::vector<uint8_t>& lengths, std::vector<uint32_t>* codes) {
  uint32_t count[kMaxCodeLen + 1] = {0};
  for (uint8_t l : lengths) {
    if (l > kMaxCodeLen) return false;
    ++count[l];
  }
  count[0] = 0;
  if (kraft_sum(lengths) > (uint64_t(1) << kMaxCodeLen)) return false;
  uint32_t next_code[kMaxCodeLen + 2] = {0};
  uint32_t c = 0;
  for (int l = 1; l <= kMaxCodeLen; ++l) {
    c = (c + count[l - 1]) << 1;
    next_code[l] = c;
  }
  codes->assign(lengths.size(), 0);
  for (size_t s = 0; s < lengths.size(); ++s)
    if (lengths[s] != 0) (*codes)[s] = next_code[lengths[s]]++;
  return true;
}

uint32_t reverse_bits(uint32_t v, int n) {
  uint32_t r = 0;
  for (int i = 0; i < n; ++i) r |= ((v >> i) & 1u) << (n - 1 - i);
  return r;
}
}  // namespace

bool HuffmanEncoder::build(const std::vector<uint8_t>& lengths) {
  std::vector<uint32_t> codes;
  if (!canonical_codes(lengths, &codes)) return false;
  len = lengths;
  code.assign(lengths.size(), 0);
  for (size_t s = 0; s < lengths.size(); ++s)
    if (lengths[s] != 0) code[s] = uint16_t(reverse_bits(codes[s], lengths[s]));
  return true;
}

bool HuffmanDecoder::build(const std::vector<uint8_t>& lengths) {
  std::vector<uint32_t> codes;
  if (!canonical_codes(lengths, &codes)) return false;
  if (lengths.size() > 4096) return false;  // symbols must fit the entry's 12 bits
  table.assign(kDecodeTableSize, 0);
  for (size_t s = 0; s < lengths.size(); ++s) {
    const int l = lengths[s];
    if (l == 0) continue;
    const uint16_t entry = uint16_t(s | (uint32_t(l) << 12));
    for (uint32_t j = reverse_bits(codes[s], l); j < kDecodeTableSize; j += 1u << l) table[j] = entry;
  }
  return true;
}

}  // namespace detail
}  // namespace actzip
