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
  for (uint32_t s = 0; s < alphabet; ++s)
    if (freq[s] != 0) used.push_back(s);
  if (used.empty()) return lengths;
  if (used.size() == 1) {
    lengths[used[0]] = 1;
    return lengths;
  }
  // Package-merge (Larmore & Hirschberg): optimal lengths under the kMaxCodeLen limit.
  // Leaves in ascending (frequency, symbol) order, so the result is deterministic.
  std::sort(used.begin(), used.end(), [&](uint32_t a, uint32_t b) {
    return freq[a] != freq[b] ? freq[a] < freq[b] : a < b;
  });
  const size_t n = used.size();  // callers keep n <= 2^kMaxCodeLen
  std::vector<uint64_t> leaf(n);
  for (size_t i = 0; i < n; ++i) leaf[i] = freq[used[i]];
  // lists[t]: the merged list of depth kMaxCodeLen - t, as weights and leaf flags. Each
  // package is the sum of two consecutive items of the list below it.
  std::vector<std::vector<uint64_t>> weight(kMaxCodeLen);
  std::vector<std::vector<uint8_t>> is_leaf(kMaxCodeLen);
  weight[0] = leaf;
  is_leaf[0].assign(n, 1);
  for (int t = 1; t < kMaxCodeLen; ++t) {
    const std::vector<uint64_t>& below = weight[t - 1];
    const size_t packages = below.size() / 2;
    std::vector<uint64_t>& w = weight[t];
    std::vector<uint8_t>& f = is_leaf[t];
    w.reserve(n + packages);
    f.reserve(n + packages);
    size_t li = 0, pi = 0;
    while (li < n || pi < packages) {
      const uint64_t pw = pi < packages ? below[2 * pi] + below[2 * pi + 1] : 0;
      if (pi >= packages || (li < n && leaf[li] <= pw)) {
        w.push_back(leaf[li++]);
        f.push_back(1);
      } else {
        w.push_back(pw);
        f.push_back(0);
        ++pi;
      }
    }
  }
  // Take the 2n - 2 smallest items of the top list; each leaf taken at any depth adds one
  // to its code length, and the packages taken expand into a prefix of the list below.
  size_t take = 2 * n - 2;
  for (int t = kMaxCodeLen - 1; t >= 0; --t) {
    size_t leaves = 0, packages = 0;
    for (size_t i = 0; i < take && i < is_leaf[t].size(); ++i) (is_leaf[t][i] ? leaves : packages) += 1;
    for (size_t i = 0; i < leaves; ++i) ++lengths[used[i]];
    take = 2 * packages;
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
