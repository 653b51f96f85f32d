// Length-limited canonical Huffman codes and LSB-first bit streams (cpp/codec/huffman.h,
// cpp/codec/bitio.h) against docs/FORMAT.md section 5.
#include <algorithm>
#include <cmath>
#include <cstdint>
#include <functional>
#include <queue>
#include <random>
#include <vector>

#include "codec/bitio.h"
#include "codec/huffman.h"
#include "harness.h"

namespace {

using namespace actzip::detail;

// Cost in bits of coding each symbol freq[s] times with lengths[s].
uint64_t cost(const std::vector<uint64_t>& freq, const std::vector<uint8_t>& lengths) {
  uint64_t bits = 0;
  for (size_t s = 0; s < freq.size(); ++s) bits += freq[s] * lengths[s];
  return bits;
}

// Optimal unlimited-length Huffman cost (sum of the merged weights) and the tree's depth.
uint64_t unlimited_huffman_cost(const std::vector<uint64_t>& freq, int* max_depth) {
  using Node = std::pair<uint64_t, int>;  // weight, depth of the subtree
  std::priority_queue<Node, std::vector<Node>, std::greater<Node>> heap;
  for (uint64_t f : freq)
    if (f) heap.push({f, 0});
  *max_depth = heap.size() == 1 ? 1 : 0;
  uint64_t total = heap.size() == 1 ? heap.top().first : 0;
  while (heap.size() > 1) {
    const Node a = heap.top();
    heap.pop();
    const Node b = heap.top();
    heap.pop();
    total += a.first + b.first;
    heap.push({a.first + b.first, std::max(a.second, b.second) + 1});
    *max_depth = std::max(*max_depth, std::max(a.second, b.second) + 1);
  }
  return total;
}

// Optimal cost under a length limit, by package-merge: the cost is the total weight of the
// 2n - 2 lightest items after limit - 1 rounds of packaging pairs and merging with the leaves.
uint64_t package_merge_cost(const std::vector<uint64_t>& freq, int limit) {
  std::vector<uint64_t> leaves;
  for (uint64_t f : freq)
    if (f) leaves.push_back(f);
  if (leaves.size() < 2) return leaves.empty() ? 0 : leaves[0];
  std::sort(leaves.begin(), leaves.end());
  std::vector<uint64_t> list = leaves;
  for (int round = 1; round < limit; ++round) {
    std::vector<uint64_t> packages;
    for (size_t i = 0; i + 1 < list.size(); i += 2) packages.push_back(list[i] + list[i + 1]);
    std::vector<uint64_t> merged(leaves.size() + packages.size());
    std::merge(leaves.begin(), leaves.end(), packages.begin(), packages.end(), merged.begin());
    list.swap(merged);
  }
  uint64_t total = 0;
  for (size_t i = 0; i < 2 * leaves.size() - 2; ++i) total += list[i];
  return total;
}

// Canonical codes as section 5 defines them: sorted by (length, symbol), the first all
// zeros, each next the previous plus one, shifted left when the length grows.
std::vector<uint32_t> spec_canonical_codes(const std::vector<uint8_t>& lengths) {
  std::vector<uint32_t> order;
  for (uint32_t s = 0; s < lengths.size(); ++s)
    if (lengths[s]) order.push_back(s);
  std::stable_sort(order.begin(), order.end(), [&](uint32_t a, uint32_t b) { return lengths[a] < lengths[b]; });
  std::vector<uint32_t> codes(lengths.size(), 0);
  uint32_t code = 0;
  int prev_len = 0;
  for (size_t i = 0; i < order.size(); ++i) {
    const int len = lengths[order[i]];
    if (i > 0) code = (code + 1) << (len - prev_len);
    else code <<= len;  // the first code: len zero bits
    codes[order[i]] = code;
    prev_len = len;
  }
  return codes;
}

uint32_t reversed(uint32_t v, int n) {
  uint32_t r = 0;
  for (int i = 0; i < n; ++i) r = (r << 1) | ((v >> i) & 1u);
  return r;
}

// Histograms worth coding: random, skewed, Fibonacci (the deepest trees), flat, tiny.
std::vector<std::vector<uint64_t>> histograms() {
  std::mt19937_64 rng(12345);
  std::vector<std::vector<uint64_t>> out;
  for (uint32_t n : {1u, 2u, 3u, 5u, 17u, 256u, 1039u, 4096u}) {
    for (int trial = 0; trial < 4; ++trial) {
      std::vector<uint64_t> f(n);
      for (auto& v : f) v = (rng() % 4 == 0) ? 0 : 1 + rng() % (trial == 0 ? 10 : 100000);
      f[rng() % n] += 1;  // at least one used symbol
      out.push_back(f);
    }
  }
  for (double ratio : {0.5, 0.7, 0.9, 0.99}) {  // geometric
    std::vector<uint64_t> f(1039, 0);
    double w = 1e15;
    for (auto& v : f) {
      v = uint64_t(w) + 1;
      w *= ratio;
    }
    out.push_back(f);
  }
  for (double s : {1.0, 1.5, 2.5}) {  // Zipf-like, symbols shuffled
    std::vector<uint64_t> f(1039);
    for (size_t i = 0; i < f.size(); ++i) f[i] = uint64_t(1e12 / std::pow(double(i + 1), s)) + 1;
    std::shuffle(f.begin(), f.end(), rng);
    out.push_back(f);
  }
  for (int n : {13, 14, 20, 40, 60, 90}) {  // Fibonacci: Huffman depth n - 1
    std::vector<uint64_t> f(size_t(n), 0);
    uint64_t a = 1, b = 1;
    for (auto& v : f) {
      v = a;
      const uint64_t next = a + b;
      a = b;
      b = next;
    }
    std::shuffle(f.begin(), f.end(), rng);
    out.push_back(f);
  }
  out.push_back(std::vector<uint64_t>(4096, 1));  // flat over the largest alphabet the limit allows
  out.push_back(std::vector<uint64_t>(1039, 7));
  out.push_back(std::vector<uint64_t>(300, 0));   // nothing used
  {
    std::vector<uint64_t> f(1039, 0);  // like a codec histogram: a peak, a long thin tail
    for (int i = 0; i < 200; ++i) f[size_t(i)] = uint64_t(16384.0 * std::exp(-i / 6.0)) + 1;
    f[1030] = 1;
    f[1038] = 1;
    out.push_back(f);
  }
  return out;
}

ACTZIP_TEST(huffman_lengths_respect_the_limit_kraft_and_frequency_order) {
  for (const auto& f : histograms()) {
    const std::vector<uint8_t> len = huffman_lengths(f.data(), uint32_t(f.size()));
    ACTZIP_REQUIRE(len.size() == f.size(), "%zu lengths for %zu symbols", len.size(), f.size());
    size_t used = 0;
    for (size_t s = 0; s < f.size(); ++s) {
      used += f[s] != 0;
      ACTZIP_CHECK((f[s] == 0) == (len[s] == 0), "symbol %zu freq %llu got length %u", s,
                   (unsigned long long)f[s], len[s]);
      ACTZIP_CHECK(len[s] <= kMaxCodeLen, "symbol %zu length %u above the limit", s, len[s]);
    }
    const uint64_t kraft = kraft_sum(len);
    if (used >= 2) ACTZIP_CHECK(kraft == kDecodeTableSize, "%zu used symbols: Kraft sum %llu", used, (unsigned long long)kraft);
    if (used == 1) ACTZIP_CHECK(kraft == kDecodeTableSize / 2, "one symbol must get length 1");
    for (size_t a = 0; a < f.size(); ++a)
      for (size_t b = a + 1; b < f.size() && f.size() <= 1039; ++b)
        if (f[a] && f[b]) {
          ACTZIP_CHECK(f[a] <= f[b] || len[a] <= len[b], "more frequent symbol %zu longer than %zu", a, b);
          ACTZIP_CHECK(f[b] <= f[a] || len[b] <= len[a], "more frequent symbol %zu longer than %zu", b, a);
        }
    ACTZIP_CHECK(huffman_lengths(f.data(), uint32_t(f.size())) == len, "not deterministic");
  }
}

ACTZIP_TEST(huffman_lengths_are_optimal_under_the_length_limit) {
  for (const auto& f : histograms()) {
    const std::vector<uint8_t> len = huffman_lengths(f.data(), uint32_t(f.size()));
    int depth = 0;
    const uint64_t unlimited = unlimited_huffman_cost(f, &depth);
    const uint64_t limited_optimum = package_merge_cost(f, kMaxCodeLen);
    const uint64_t got = cost(f, len);
    // Where the limit does not bind, plain Huffman is the optimum; where it does, the optimum
    // is package-merge's (computed independently above).
    if (depth <= kMaxCodeLen)
      ACTZIP_CHECK(got == unlimited && limited_optimum == unlimited, "depth %d: cost %llu, optimal Huffman %llu",
                   depth, (unsigned long long)got, (unsigned long long)unlimited);
    ACTZIP_CHECK(got == limited_optimum, "%zu symbols, depth %d: cost %llu, optimum under the limit %llu", f.size(),
                 depth, (unsigned long long)got, (unsigned long long)limited_optimum);
  }
}

// Package-merge written plainly, one vector per level, with the encoder's tie rules:
// leaves in (frequency, symbol) order, a leaf before a package of equal weight. Code
// lengths are part of the stream, so the fast implementation must match it exactly (equal
// cost alone would still change the bytes).
std::vector<uint8_t> reference_lengths(const std::vector<uint64_t>& freq) {
  std::vector<uint8_t> lengths(freq.size(), 0);
  std::vector<uint32_t> used;
  for (uint32_t s = 0; s < freq.size(); ++s)
    if (freq[s]) used.push_back(s);
  if (used.size() < 2) {
    if (used.size() == 1) lengths[used[0]] = 1;
    return lengths;
  }
  std::stable_sort(used.begin(), used.end(), [&](uint32_t a, uint32_t b) { return freq[a] < freq[b]; });
  const size_t n = used.size();
  std::vector<std::vector<std::pair<uint64_t, bool>>> lists(kMaxCodeLen);  // (weight, is leaf)
  for (uint32_t s : used) lists[0].push_back({freq[s], true});
  for (int t = 1; t < kMaxCodeLen; ++t) {
    std::vector<std::pair<uint64_t, bool>> packages;
    for (size_t i = 0; i + 1 < lists[t - 1].size(); i += 2)
      packages.push_back({lists[t - 1][i].first + lists[t - 1][i + 1].first, false});
    size_t li = 0, pi = 0;
    while (li < n || pi < packages.size()) {
      if (pi == packages.size() || (li < n && freq[used[li]] <= packages[pi].first)) lists[t].push_back({freq[used[li++]], true});
      else lists[t].push_back(packages[pi++]);
    }
  }
  size_t take = 2 * n - 2;
  for (int t = kMaxCodeLen - 1; t >= 0; --t) {
    size_t leaves = 0, packages = 0;
    for (size_t i = 0; i < take && i < lists[t].size(); ++i) (lists[t][i].second ? leaves : packages) += 1;
    for (size_t i = 0; i < leaves; ++i) ++lengths[used[i]];
    take = 2 * packages;
  }
  return lengths;
}

ACTZIP_TEST(huffman_lengths_follow_the_encoders_tie_rules_exactly) {
  std::vector<std::vector<uint64_t>> cases = histograms();
  std::mt19937_64 rng(7);
  for (int r = 0; r < 300; ++r) {  // few distinct frequencies: ties everywhere
    std::vector<uint64_t> f(1 + rng() % 1100);
    const uint64_t values = 1 + rng() % 6, scale = rng() % 2 ? 1 : (uint64_t(1) << (rng() % 50));
    for (auto& v : f) v = rng() % 4 == 0 ? 0 : (1 + rng() % values) * scale;
    cases.push_back(f);
  }
  for (const auto& f : cases) {
    const std::vector<uint8_t> want = reference_lengths(f);
    ACTZIP_CHECK(huffman_lengths(f.data(), uint32_t(f.size())) == want, "%zu symbols: lengths differ", f.size());
  }
}

ACTZIP_TEST(codes_are_canonical_as_the_format_defines_them) {
  for (const auto& f : histograms()) {
    const std::vector<uint8_t> len = huffman_lengths(f.data(), uint32_t(f.size()));
    HuffmanEncoder enc;
    ACTZIP_REQUIRE(enc.build(len), "encoder rejected valid lengths");
    const std::vector<uint32_t> want = spec_canonical_codes(len);
    for (size_t s = 0; s < len.size(); ++s)
      if (len[s])
        ACTZIP_CHECK(enc.code[s] == reversed(want[s], len[s]) && enc.len[s] == len[s],
                     "symbol %zu: code 0x%x/%u, want 0x%x reversed", s, enc.code[s], enc.len[s], want[s]);
  }
  // A worked example: lengths (2, 1, 3, 3) give codes 10, 0, 110, 111.
  HuffmanEncoder enc;
  ACTZIP_REQUIRE(enc.build({2, 1, 3, 3}), "build");
  ACTZIP_CHECK(enc.code[0] == reversed(0b10, 2) && enc.code[1] == 0 && enc.code[2] == reversed(0b110, 3) &&
                   enc.code[3] == reversed(0b111, 3),
               "codes %x %x %x %x", enc.code[0], enc.code[1], enc.code[2], enc.code[3]);
}

// Writes `count` symbols drawn from freq (each followed by a random number of extra bits, as
// the code section does), reads them back with the decoder table, and checks every one.
void round_trip(const std::vector<uint64_t>& f, size_t count, std::mt19937_64& rng) {
  const std::vector<uint8_t> len = huffman_lengths(f.data(), uint32_t(f.size()));
  HuffmanEncoder enc;
  HuffmanDecoder dec;
  ACTZIP_REQUIRE(enc.build(len) && dec.build(len), "build failed");
  std::vector<uint32_t> used;
  for (uint32_t s = 0; s < f.size(); ++s)
    if (f[s]) used.push_back(s);
  if (used.empty()) return;
  std::vector<double> weights;
  for (uint32_t s : used) weights.push_back(double(f[s]));
  std::discrete_distribution<size_t> pick(weights.begin(), weights.end());
  struct Item {
    uint32_t sym, extra_value;
    int extra_bits;
  };
  std::vector<Item> items(count);
  uint64_t bits = 0;
  for (auto& it : items) {
    it.sym = used[pick(rng)];
    it.extra_bits = int(rng() % 25);  // 0..24, as after a class symbol
    it.extra_value = it.extra_bits ? uint32_t(rng()) & ((1u << it.extra_bits) - 1u) : 0u;
    bits += len[it.sym] + uint64_t(it.extra_bits);
  }
  const size_t bytes = size_t(pad8((bits + 7) / 8));
  // The branch-free writer stores 8 bytes at a time: it needs 8 bytes of slack past the
  // stream, and must leave everything beyond that slack untouched.
  std::vector<uint8_t> buf(bytes + 8 + 16, 0xAB);
  FastBitWriter w(buf.data());
  for (const auto& it : items) {
    w.put(enc.code[it.sym], enc.len[it.sym]);
    if (it.extra_bits) w.put(it.extra_value, it.extra_bits);
  }
  ACTZIP_CHECK(w.flush() == (bits + 7) / 8, "writer did not write exactly the %llu bits", (unsigned long long)bits);
  for (size_t i = bytes + 8; i < buf.size(); ++i) ACTZIP_CHECK(buf[i] == 0xAB, "writer wrote past its slack at %zu", i);
  for (size_t i = (bits + 7) / 8; i < bytes; ++i) ACTZIP_CHECK(buf[i] == 0, "padding byte %zu is not zero", i);

  BitReader r(buf.data(), buf.data() + bytes);
  uint64_t consumed = 0;
  for (size_t i = 0; i < items.size(); ++i) {
    if (r.available() < kMaxCodeLen + 24) r.refill();
    const uint16_t e = dec.table[r.peek() & (kDecodeTableSize - 1)];
    const int l = e >> 12;
    ACTZIP_REQUIRE(l == len[items[i].sym] && (e & 0xFFFu) == items[i].sym, "item %zu: decoded %u/%d, wrote %u/%u", i,
                   e & 0xFFFu, l, items[i].sym, len[items[i].sym]);
    r.consume(l);
    const uint32_t v = r.take(items[i].extra_bits);
    ACTZIP_REQUIRE(v == items[i].extra_value, "item %zu: extra bits %u, wrote %u", i, v, items[i].extra_value);
    consumed += uint64_t(l + items[i].extra_bits);
  }
  ACTZIP_CHECK(consumed == bits && !r.overran(), "consumed %llu of %llu bits, overran %d", (unsigned long long)consumed,
               (unsigned long long)bits, int(r.overran()));
}

ACTZIP_TEST(random_symbol_streams_round_trip_through_bit_writer_reader_and_table) {
  std::mt19937_64 rng(777);
  for (const auto& f : histograms()) round_trip(f, 5000, rng);
  round_trip(std::vector<uint64_t>(1039, 1), 200000, rng);
}

ACTZIP_TEST(bit_reader_reports_reading_past_the_end) {
  std::vector<uint8_t> buf(24, 0xFF);
  for (size_t size : {size_t(0), size_t(1), size_t(7), size_t(8), size_t(9), size_t(24)}) {
    BitReader r(buf.data(), buf.data() + size);
    uint64_t got = 0;
    while (got < 8 * size) {
      if (r.available() < 32) r.refill();
      const int n = int(std::min<uint64_t>(13, 8 * size - got));
      const uint32_t v = r.take(n);
      ACTZIP_CHECK(v == (1u << n) - 1u, "size %zu: read %x from 0xFF bytes", size, v);
      got += uint64_t(n);
    }
    ACTZIP_CHECK(!r.overran(), "size %zu: overran after exactly its bits", size);
    if (r.available() < 32) r.refill();
    ACTZIP_CHECK(r.take(1) == 0, "size %zu: bits past the end must read as 0", size);
    ACTZIP_CHECK(r.overran(), "size %zu: one bit past the end not reported", size);
  }
}

ACTZIP_TEST(invalid_codebooks_are_rejected) {
  const std::vector<std::vector<uint8_t>> bad = {
      {1, 1, 1},                   // Kraft 3/2
      {2, 2, 2, 2, 3},             // Kraft 1 + 1/8
      {13},                        // longer than the limit
      {1, 15},                     // longer than the limit
      std::vector<uint8_t>(4097, 12),  // 4097 codes of 12 bits: Kraft > 1
  };
  for (const auto& lengths : bad) {
    HuffmanEncoder enc;
    HuffmanDecoder dec;
    ACTZIP_CHECK(!enc.build(lengths), "encoder accepted an invalid codebook of %zu symbols", lengths.size());
    ACTZIP_CHECK(!dec.build(lengths), "decoder accepted an invalid codebook of %zu symbols", lengths.size());
  }
  ACTZIP_CHECK(kraft_sum({1, 1, 1}) == 3 * kDecodeTableSize / 2, "kraft_sum");
  ACTZIP_CHECK(kraft_sum({0, 12, 0}) == 1, "kraft_sum");
  // Symbols beyond 4095 do not fit a decoder table entry even when the code is valid.
  std::vector<uint8_t> wide(4097, 0);
  wide[4096] = 1;
  HuffmanDecoder dec;
  ACTZIP_CHECK(!dec.build(wide), "decoder accepted symbol 4096");
}

ACTZIP_TEST(incomplete_code_leaves_unmatched_patterns_marked_invalid) {
  // Lengths (1, 0, 2): codes 0 and 10; pattern 11 matches nothing.
  HuffmanDecoder dec;
  ACTZIP_REQUIRE(dec.build({1, 0, 2}), "an incomplete code is allowed");
  uint32_t valid = 0, invalid = 0;
  for (uint32_t j = 0; j < kDecodeTableSize; ++j) {
    const uint16_t e = dec.table[j];
    const int l = e >> 12;
    if (l == 0) {
      ++invalid;
      ACTZIP_CHECK((j & 3u) == 3u, "pattern %x should decode", j);
    } else {
      ++valid;
      const uint32_t sym = e & 0xFFFu;
      ACTZIP_CHECK((sym == 0 && l == 1 && (j & 1u) == 0) || (sym == 2 && l == 2 && (j & 3u) == 1u),
                   "pattern %x -> symbol %u length %d", j, sym, l);
    }
  }
  ACTZIP_CHECK(invalid == kDecodeTableSize / 4 && valid == 3 * kDecodeTableSize / 4, "%u invalid", invalid);
  HuffmanDecoder empty;
  ACTZIP_REQUIRE(empty.build({}), "an empty codebook is allowed");
  for (uint16_t e : empty.table) ACTZIP_CHECK(e >> 12 == 0, "empty codebook decodes something");
}

}  // namespace
