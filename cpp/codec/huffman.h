// Length-limited canonical Huffman codes (docs/FORMAT.md section 5).
#pragma once

#include <cstdint>
#include <vector>

namespace actzip {
namespace detail {

inline constexpr int kMaxCodeLen = 12;
inline constexpr uint32_t kDecodeTableSize = 1u << kMaxCodeLen;

// Code lengths (0 = unused, else 1..kMaxCodeLen) for symbols with the given frequencies.
// Deterministic: ties are broken by symbol number. A single used symbol gets length 1.
std::vector<uint8_t> huffman_lengths(const uint64_t* freq, uint32_t alphabet);

// Encoder side: each used symbol's canonical code, bit-reversed for LSB-first writing.
struct HuffmanEncoder {
  std::vector<uint16_t> code;  // bit-reversed canonical code
  std::vector<uint8_t> len;
  // Fails (returns false) on lengths above kMaxCodeLen or that break Kraft's inequality.
  bool build(const std::vector<uint8_t>& lengths);
};

// Decoder side: a kDecodeTableSize-entry table indexed by the next kMaxCodeLen bits.
// Entry = symbol | (length << 12); length 0 marks a bit pattern that matches no code.
struct HuffmanDecoder {
  std::vector<uint16_t> table;
  bool build(const std::vector<uint8_t>& lengths);
};

// Sum of 2^(kMaxCodeLen - len) over used symbols; a valid code has it <= 2^kMaxCodeLen.
uint64_t kraft_sum(const std::vector<uint8_t>& lengths);

}  // namespace detail
}  // namespace actzip
