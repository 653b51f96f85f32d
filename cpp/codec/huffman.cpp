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
  // Leaves in ascending (frequency, symbol) order; two-queue Huffman gives tree depths.
  std::sort(used.begin(), used.end(), [&](uint32_t a, uint32_t b) {
    return freq[a] != freq[b] ? freq[a] < freq[b] : a < b;
  });
  const size_t n = used.size();
  std::vector<uint64_t> weight(2 * n - 1);
  std::vector<size_t> parent(2 * n - 1, 0);
  for (size_t i = 0; i < n; ++i) weight[i] = freq[used[i]];
  size_t leaf = 0, inner = n, next = n;
  auto pop_smallest = [&]() {
    if (leaf < n && (inner >= next || weight[leaf] <= weight[inner])) return leaf++;
    return inner++;
  };
  for (; next < 2 * n - 1; ++next) {
    const size_t a = pop_smallest();
    const size_t b = pop_smallest();
    weight[next] = weight[a] + weight[b];
    parent[a] = parent[b] = next;
  }
  // Depths: the root is the last node.
  std::vector<int> depth(2 * n - 1, 0);
  for (size_t i = 2 * n - 1; i-- > 0;)
    depth[i] = (i == 2 * n - 2) ? 0 : depth[parent[i]] + 1;

  // Count codes per length, then limit to kMaxCodeLen (the adjustment of JPEG Annex K.3:
  // move pairs of deepest codes up, splitting a shorter code to keep Kraft's equality).
  const int kDeep = int(n);  // no Huffman tree over n leaves is deeper than n - 1
  std::vector<uint64_t> count(kDeep + 1, 0);
  for (size_t i = 0; i < n; ++i) ++count[std::min(depth[i], kDeep)];
  for (int l = kDeep; l > kMaxCodeLen; --l) {
    while (count[l] > 0) {
      int j = l - 2;
      while (count[j] == 0) --j;
      count[l] -= 2;
      count[l - 1] += 1;
      count[j + 1] += 2;
      count[j] -= 1;
    }
  }
  // Most frequent symbols get the shortest codes: walk leaves from most to least frequent.
  size_t i = n;
  for (int l = 1; l <= kMaxCodeLen; ++l)
    for (uint64_t c = 0; c < count[l]; ++c) lengths[used[--i]] = uint8_t(l);
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
