// Test inputs and streams made through the public API, shared by the C++ tests.
#pragma once

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <limits>
#include <memory>
#include <random>
#include <string>
#include <vector>

#include "actzip/actzip.h"
#include "codec/element.h"

namespace actzip_test {

// A tensor to compress: its bytes in the dtype's representation, its dtype and shape.
struct Tensor {
  std::string name;
  actzip::DType dtype = actzip::DType::kFloat32;
  std::vector<uint64_t> shape;
  std::vector<uint8_t> bytes;

  uint64_t numel() const {
    uint64_t n = 1;
    for (uint64_t d : shape) n *= d;
    return n;
  }
  size_t elem_size() const { return actzip::element_size(dtype); }
  // Element i widened to binary32 (exact for every dtype).
  float at(uint64_t i) const {
    switch (dtype) {
      case actzip::DType::kFloat16: return actzip::detail::load_elem<2>(bytes.data(), i);
      case actzip::DType::kBFloat16: return actzip::detail::load_elem<3>(bytes.data(), i);
      default: return actzip::detail::load_elem<1>(bytes.data(), i);
    }
  }
  void set(uint64_t i, float v) {
    switch (dtype) {
      case actzip::DType::kFloat16: actzip::detail::store_elem<2>(bytes.data(), i, v); break;
      case actzip::DType::kBFloat16: actzip::detail::store_elem<3>(bytes.data(), i, v); break;
      default: actzip::detail::store_elem<1>(bytes.data(), i, v); break;
    }
  }
};

enum class Fill {
  kRelu,      // half zeros, the rest smooth positive values with noise
  kNormal,    // N(0, 1)
  kSpecials,  // normal values mixed with NaN, +-Inf, -0.0, +0.0, huge and tiny values
  kZeros,
  kConstant,
  kRamp,      // a smooth ramp (Lorenzo-friendly)
  kWaves,     // smooth 2-D waves over rows of shape[-1] (2-D Lorenzo-friendly), crossing zero
};

inline Tensor make_tensor(const std::string& name, actzip::DType dtype, std::vector<uint64_t> shape, Fill fill,
                          uint64_t seed) {
  Tensor t;
  t.name = name;
  t.dtype = dtype;
  t.shape = std::move(shape);
  const uint64_t n = t.numel();
  t.bytes.assign(n * t.elem_size(), 0);
  std::mt19937_64 rng(seed);
  std::normal_distribution<float> normal(0.0f, 1.0f);
  const float inf = std::numeric_limits<float>::infinity();
  const float specials[] = {std::numeric_limits<float>::quiet_NaN(), inf, -inf, -0.0f, 0.0f, 3e38f, -3e38f,
                            1e-40f, -1e-40f, 65504.0f, 6e-8f};
  const uint64_t row = t.shape.empty() || t.shape.back() == 0 ? 1 : t.shape.back();
  for (uint64_t i = 0; i < n; ++i) {
    float v = 0;
    switch (fill) {
      case Fill::kRelu: v = std::max(0.0f, std::sin(float(i) * 0.01f) + 0.3f * normal(rng)); break;
      case Fill::kNormal: v = normal(rng); break;
      case Fill::kSpecials: v = rng() % 5 == 0 ? specials[rng() % 11] : normal(rng) * 100.0f; break;
      case Fill::kZeros: v = 0; break;
      case Fill::kConstant: v = 1.5f; break;
      case Fill::kRamp: v = float(i) * 1e-3f; break;
      case Fill::kWaves:
        v = float(3 * std::sin(0.05 * double(i / row) + 0.3) * std::cos(0.07 * double(i % row) + 0.2));
        break;
    }
    t.set(i, v);
  }
  return t;
}

struct Compressed {
  actzip::Status status;
  std::vector<uint8_t> stream;
  double error_bound = 0;
  actzip::CompressStats stats;
  std::shared_ptr<const actzip::CompressChoices> choices;  // the plan's
};

// `reuse`: CompressOptions::reuse.
inline Compressed compress(const Tensor& t, double bound, actzip::BoundMode mode = actzip::BoundMode::kAbs,
                           bool checksum = false, int threads = 1,
                           std::shared_ptr<const actzip::CompressChoices> reuse = nullptr) {
  Compressed out;
  actzip::CompressOptions opt;
  opt.error_bound = bound;
  opt.mode = mode;
  opt.payload_checksum = checksum;
  opt.num_threads = threads;
  opt.reuse = std::move(reuse);
  std::unique_ptr<actzip::CompressPlan> plan;
  out.status = actzip::plan_compress(t.bytes.data(), t.dtype, t.shape, opt, &plan);
  if (!out.status.ok()) return out;
  out.stream.assign(plan->compressed_bytes(), 0);
  out.error_bound = plan->error_bound();
  out.stats = plan->stats();
  out.choices = plan->choices();
  out.status = actzip::encode(*plan, out.stream.data(), out.stream.size(), threads);
  return out;
}

// Decodes a stream; `out` gets the stream's numel elements (sized from read_info).
inline actzip::Status decode(const std::vector<uint8_t>& stream, std::vector<uint8_t>* out, int threads = 1) {
  actzip::StreamInfo info;
  actzip::Status s = actzip::read_info(stream.data(), stream.size(), &info);
  if (!s.ok()) return s;
  out->assign(info.numel * actzip::element_size(info.dtype), 0);
  return actzip::decompress(stream.data(), stream.size(), out->data(), out->size(), threads);
}

// quant_step_for(e) of docs/FORMAT.md section 3, read literally and searched over every
// exponent: the largest binary32 value M * 2^E, M an integer in [1, 255] and E >= -149, that
// does not exceed 2e; 2^-149 when none does. For each E the largest M is the least of 255,
// floor(2e / 2^E) = floor(e * 2^(1-E)) and, for M * 2^E to be a finite binary32 value (below
// 2^128), 2^(128-E) - 1. The scaling by a power of two is exact unless it overflows (to Inf,
// then capped) or underflows (only when the quotient is far below 1, so its floor is 0 either
// way); working with e instead of 2e keeps bounds near DBL_MAX from overflowing.
inline float ref_quant_step(double error_bound) {
  double best = 0;
  for (int exp = -149; exp <= 127; ++exp) {
    const double fits = std::floor(std::ldexp(error_bound, 1 - exp));
    if (fits < 1) break;  // 2^E > 2e: no larger exponent fits either
    const double mant = std::min({255.0, fits, std::ldexp(1.0, 128 - exp) - 1});
    best = std::max(best, std::ldexp(mant, exp));  // exact: 8 significant bits
  }
  if (best == 0) best = 0x1p-149;
  return float(best);  // exact: 8 significant bits, exponent within binary32's range
}

inline uint32_t get_u32_le(const uint8_t* p) {
  return uint32_t(p[0]) | (uint32_t(p[1]) << 8) | (uint32_t(p[2]) << 16) | (uint32_t(p[3]) << 24);
}
inline void put_u32_le(uint8_t* p, uint32_t v) {
  for (int i = 0; i < 4; ++i) p[i] = uint8_t(v >> (8 * i));
}
inline uint64_t get_u64_le(const uint8_t* p) { return uint64_t(get_u32_le(p)) | (uint64_t(get_u32_le(p + 4)) << 32); }
inline void put_u64_le(uint8_t* p, uint64_t v) {
  put_u32_le(p, uint32_t(v));
  put_u32_le(p + 4, uint32_t(v >> 32));
}

}  // namespace actzip_test
