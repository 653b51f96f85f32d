// Host-side choices every backend shares, so that they all write the same bytes: the
// absolute bound of a relative request, the entropy table the predictor choice uses, and
// the codebooks built from the sampled histograms (docs/FORMAT.md section 8).
#pragma once

#include <cstdint>
#include <type_traits>
#include <vector>

#include "actzip/actzip.h"
#include "codec/format.h"
#include "codec/huffman.h"

namespace actzip {
namespace detail {

// Calls f with std::integral_constant<int, dtype code> (1 float32, 2 float16, 3 bfloat16), so
// per-element code is compiled once per dtype.
template <class F>
auto dispatch_dtype(DType dtype, F f) {
  switch (dtype) {
    case DType::kFloat16: return f(std::integral_constant<int, 2>{});
    case DType::kBFloat16: return f(std::integral_constant<int, 3>{});
    default: return f(std::integral_constant<int, 1>{});
  }
}

// The row length the 2-D predictor works on (the last extent), or 0 where it is not considered.
inline uint32_t grid_row(const std::vector<uint64_t>& shape) {
  const uint64_t row = shape.empty() ? 1 : shape.back();
  return row >= 2 && row <= kMax2DRow ? uint32_t(row) : 0;
}

// n * log2(n) as binary32 for n = 0..kChunkElems, so entropy estimates cost no logarithms.
const std::vector<float>& nlog2n_table();

// The absolute bound of a kRel request, from the finite minimum and maximum (lo > hi when
// there is no finite element). A constant tensor takes the bound relative to its
// magnitude, and one with no non-zero finite value relative to 1.
double rel_abs_bound(double lo, double hi, double requested);

// The codebooks for sampled histograms: `fine` (kFineAlphabet fine bins of the carried
// values), `mask` (256 mask bytes) and `zmap` (256 zero-map bytes). Picks direct_log2 by
// estimated size, then gives every symbol a code.
struct CodeBooks {
  int direct_log2 = 0;
  std::vector<uint8_t> mask_lengths, code_lengths, zmap_lengths;
  HuffmanEncoder mask, code, zmap;
};
Status build_code_books(const uint64_t* fine, const uint64_t* mask, const uint64_t* zmap, CodeBooks* books);

}  // namespace detail
}  // namespace actzip
