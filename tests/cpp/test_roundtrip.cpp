// The public API end to end (plan_compress, encode, decompress): the bound, zero, sign and
// special-value rules on decoded tensors, bytes independent of the thread count, the size
// bound, the statistics, and the arguments that must be refused.
#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <limits>
#include <memory>
#include <random>
#include <vector>

#include "actzip/actzip.h"
#include "harness.h"
#include "streams.h"

namespace {

using actzip::BoundMode;
using actzip::DType;
using actzip::StatusCode;
using namespace actzip_test;

struct Case {
  Tensor t;
  double bound;
  BoundMode mode;
};

std::vector<Case> cases() {
  std::vector<Case> out;
  const DType dtypes[] = {DType::kFloat32, DType::kFloat16, DType::kBFloat16};
  // {171, 97} and {521, 33}: two chunks, the second starting mid-row (2-D prediction's edge).
  const std::vector<std::vector<uint64_t>> shapes = {{}, {0}, {1}, {7}, {16384}, {16385}, {3, 17, 331}, {2, 3, 5, 7, 11},
                                                     {50000}, {171, 97}, {521, 33}};
  const Fill fills[] = {Fill::kRelu, Fill::kNormal, Fill::kSpecials, Fill::kZeros, Fill::kConstant, Fill::kRamp,
                        Fill::kWaves};
  uint64_t seed = 1;
  for (DType dt : dtypes)
    for (const auto& shape : shapes)
      for (Fill fill : fills) {
        if (fill == Fill::kZeros && shape.size() > 1) continue;
        for (double bound : {1e-1, 1e-3})
          out.push_back({make_tensor("", dt, shape, fill, seed++), bound, seed % 2 ? BoundMode::kAbs : BoundMode::kRel});
      }
  out.push_back({make_tensor("", DType::kFloat32, {20000}, Fill::kNormal, 77), 1e-30, BoundMode::kAbs});
  out.push_back({make_tensor("", DType::kFloat32, {20000}, Fill::kNormal, 78), 1e10, BoundMode::kAbs});
  out.push_back({make_tensor("", DType::kFloat16, {20000}, Fill::kSpecials, 79), 1e-7, BoundMode::kRel});
  return out;
}

// Checks every decoded element against its input: finite values within `bound` (binary64),
// +0.0 exact, non-zero values keep their sign and stay non-zero, NaN/Inf/-0.0 bit-exact.
void check_decoded(const Tensor& in, const std::vector<uint8_t>& out, double bound, const char* what) {
  Tensor dec = in;
  dec.bytes = out;
  const size_t es = in.elem_size();
  for (uint64_t i = 0; i < in.numel(); ++i) {
    const float x = in.at(i), y = dec.at(i);
    const bool exact = std::memcmp(in.bytes.data() + i * es, out.data() + i * es, es) == 0;
    if (!std::isfinite(x) || x == 0.0f) {
      ACTZIP_CHECK(exact, "%s: element %llu: special or zero %a came back as %a", what, (unsigned long long)i,
                   double(x), double(y));
    } else {
      const double err = std::fabs(double(x) - double(y));
      ACTZIP_CHECK(std::isfinite(y) && err <= bound && y != 0.0f && std::signbit(x) == std::signbit(y),
                   "%s: element %llu: %a came back as %a (error %a, bound %a)", what, (unsigned long long)i, double(x),
                   double(y), err, bound);
    }
    if (actzip_test::failures_in_current_test() > 20) return;
  }
}

// What the rel mode's absolute bound is: the bound times the range of the finite values.
double rel_bound(const Tensor& t, double rel) {
  double lo = HUGE_VAL, hi = -HUGE_VAL;
  for (uint64_t i = 0; i < t.numel(); ++i) {
    const float x = t.at(i);
    if (std::isfinite(x)) {
      lo = std::min(lo, double(x));
      hi = std::max(hi, double(x));
    }
  }
  double range = hi >= lo ? hi - lo : 0.0;
  if (range == 0) range = hi >= lo ? std::max(std::fabs(lo), std::fabs(hi)) : 0.0;  // constant tensor
  if (range == 0) range = 1.0;  // no non-zero finite value
  return rel * range;
}

ACTZIP_TEST(round_trips_honour_the_bound_zero_sign_and_special_rules) {
  for (const Case& c : cases()) {
    const Compressed z = compress(c.t, c.bound, c.mode, true);
    ACTZIP_REQUIRE(z.status.ok(), "%s", z.status.message.c_str());
    const double want_bound = c.mode == BoundMode::kAbs ? c.bound : rel_bound(c.t, c.bound);
    ACTZIP_CHECK(z.error_bound == want_bound, "dtype %d numel %llu: error bound %a, want %a", int(c.t.dtype),
                 (unsigned long long)c.t.numel(), z.error_bound, want_bound);
    std::vector<uint8_t> out;
    const actzip::Status s = decode(z.stream, &out);
    ACTZIP_REQUIRE(s.ok(), "%s", s.message.c_str());
    ACTZIP_REQUIRE(out.size() == c.t.bytes.size(), "decoded %zu bytes of %zu", out.size(), c.t.bytes.size());
    check_decoded(c.t, out, z.error_bound, "round trip");
    ACTZIP_CHECK(z.stats.zeros + z.stats.coded + z.stats.outliers == c.t.numel(), "stats do not add up");
    ACTZIP_CHECK(z.stream.size() <= actzip::compress_bound(c.t.numel(), c.t.dtype, int(c.t.shape.size())),
                 "%zu bytes above compress_bound", z.stream.size());
    actzip::StreamInfo info;
    ACTZIP_REQUIRE(actzip::validate(z.stream.data(), z.stream.size(), &info).ok(), "validate");
    ACTZIP_CHECK(info.shape == c.t.shape && info.dtype == c.t.dtype && info.mode == c.mode &&
                     info.requested_bound == c.bound && info.error_bound == z.error_bound,
                 "info does not describe the input");
  }
}

ACTZIP_TEST(bytes_do_not_depend_on_the_thread_count) {
  for (const Case& c : cases()) {
    if (c.t.numel() < 2 * actzip::kChunkElems) continue;
    const Compressed one = compress(c.t, c.bound, c.mode, true, 1);
    ACTZIP_REQUIRE(one.status.ok(), "%s", one.status.message.c_str());
    std::vector<uint8_t> dec_one;
    ACTZIP_REQUIRE(decode(one.stream, &dec_one, 1).ok(), "decode");
    for (int threads : {2, 3, 8}) {
      const Compressed many = compress(c.t, c.bound, c.mode, true, threads);
      ACTZIP_CHECK(many.status.ok() && many.stream == one.stream, "%d threads: different bytes", threads);
      std::vector<uint8_t> dec_many;
      ACTZIP_CHECK(decode(one.stream, &dec_many, threads).ok() && dec_many == dec_one, "%d threads: different decode",
                   threads);
    }
  }
}

// Chunk c's flags byte (docs/FORMAT.md section 2), found through the chunk table.
uint8_t chunk_flags(const std::vector<uint8_t>& stream, uint32_t c) {
  actzip::StreamInfo info;
  if (!actzip::read_info(stream.data(), stream.size(), &info).ok()) return 0xFF;
  const uint64_t table = info.header_bytes - 8 - 8 * uint64_t(info.num_chunks);
  const uint64_t start = info.header_bytes + (c == 0 ? 0 : get_u64_le(stream.data() + table + 8 * (c - 1)));
  return stream[start] == 1 ? stream[start + 1] : 0;  // coded chunks only
}

ACTZIP_TEST(smooth_rows_of_every_allowed_width_are_coded_with_2d_prediction) {
  // Rows of 2 to 128 over three chunks (for most widths the later chunks start mid-row), in
  // every dtype: x[i][j] = a(i) + b(j) with a slow and b rough, which 2-D prediction codes
  // almost exactly at any width. The 2-D predictor codes them, the stats count what the chunk
  // flags say, the bound holds and the bytes do not depend on the thread count.
  const DType dtypes[] = {DType::kFloat32, DType::kFloat16, DType::kBFloat16};
  for (uint64_t row : {2ull, 3ull, 5ull, 17ull, 32ull, 33ull, 63ull, 64ull, 65ull, 100ull, 127ull, 128ull})
    for (DType dt : dtypes) {
      Tensor t = make_tensor("", dt, {(40000 + row - 1) / row, row}, Fill::kZeros, 0);
      std::mt19937_64 rng(row);
      std::vector<double> cols(row);
      for (double& b : cols) b = double(rng() % 2001) / 1000.0 - 1.0;
      for (uint64_t i = 0; i < t.numel(); ++i) t.set(i, float(2 * std::sin(0.002 * double(i / row)) + cols[i % row]));
      const Compressed z = compress(t, 1e-2);
      ACTZIP_REQUIRE(z.status.ok(), "W %llu: %s", (unsigned long long)row, z.status.message.c_str());
      uint32_t flagged_2d = 0, flagged_1d = 0;
      for (uint32_t c = 0; c < 3; ++c) {
        const uint8_t f = chunk_flags(z.stream, c);
        ACTZIP_CHECK((f & 5) != 5, "W %llu chunk %u: both predictors", (unsigned long long)row, c);
        flagged_2d += (f & 4) != 0;
        flagged_1d += (f & 1) != 0;
      }
      ACTZIP_CHECK(z.stats.lorenzo2d_chunks == flagged_2d && z.stats.lorenzo_chunks == flagged_1d,
                   "W %llu dtype %d: stats %u/%u, flags %u/%u", (unsigned long long)row, int(dt),
                   z.stats.lorenzo2d_chunks, z.stats.lorenzo_chunks, flagged_2d, flagged_1d);
      ACTZIP_CHECK(flagged_2d == 3, "W %llu dtype %d: %u of 3 chunks use 2-D prediction", (unsigned long long)row,
                   int(dt), flagged_2d);
      std::vector<uint8_t> out;
      ACTZIP_REQUIRE(decode(z.stream, &out).ok(), "W %llu: decode", (unsigned long long)row);
      check_decoded(t, out, 1e-2, "2-D rows");
      const Compressed many = compress(t, 1e-2, BoundMode::kAbs, false, 3);
      ACTZIP_CHECK(many.status.ok() && many.stream == z.stream, "W %llu: 3 threads wrote other bytes",
                   (unsigned long long)row);
      std::vector<uint8_t> out_many;
      ACTZIP_CHECK(decode(z.stream, &out_many, 3).ok() && out_many == out, "W %llu: 3 threads decode otherwise",
                   (unsigned long long)row);
    }
}

ACTZIP_TEST(tensors_whose_last_extent_is_not_2_to_128_never_use_2d_prediction) {
  const std::vector<std::vector<uint64_t>> shapes = {{40000, 1}, {310, 129}, {40, 1000}, {40000}, {}, {1}, {3, 1}};
  for (const auto& shape : shapes) {
    const Tensor t = make_tensor("", DType::kFloat32, shape, Fill::kWaves, 3);
    const Compressed z = compress(t, 1e-2);
    ACTZIP_REQUIRE(z.status.ok(), "%s", z.status.message.c_str());
    ACTZIP_CHECK(z.stats.lorenzo2d_chunks == 0, "%zu-D shape with last extent %llu: %u 2-D chunks", shape.size(),
                 (unsigned long long)(shape.empty() ? 0 : shape.back()), z.stats.lorenzo2d_chunks);
    for (uint32_t c = 0; c < (t.numel() + actzip::kChunkElems - 1) / actzip::kChunkElems; ++c)
      ACTZIP_CHECK((chunk_flags(z.stream, c) & 4) == 0, "chunk %u flagged 2-D", c);
    std::vector<uint8_t> out;
    ACTZIP_REQUIRE(decode(z.stream, &out).ok(), "decode");
    check_decoded(t, out, 1e-2, "no 2-D");
  }
}

ACTZIP_TEST(values_rounding_to_q_zero_keep_their_signs_under_both_lorenzo_predictors) {
  // Waves crossing zero (Lorenzo over rows of 20000, 2-D over rows of 50) with planted values
  // of both signs below half a step: they decode to +-step / 4 with their own signs.
  for (const std::vector<uint64_t>& shape : {std::vector<uint64_t>{20000}, std::vector<uint64_t>{400, 50}})
    for (DType dt : {DType::kFloat32, DType::kFloat16, DType::kBFloat16}) {
      Tensor t = make_tensor("", dt, shape, Fill::kWaves, 4);
      const double bound = 1e-2;
      const float step = ref_quant_step(bound);
      const float planted[] = {0.01f, 0.25f, 0.49f, -0.01f, -0.25f, -0.49f};
      for (uint64_t i = 101, k = 0; i < t.numel(); i += 397, ++k) t.set(i, planted[k % 6] * step);
      const Compressed z = compress(t, bound);
      ACTZIP_REQUIRE(z.status.ok(), "%s", z.status.message.c_str());
      ACTZIP_CHECK((shape.size() == 1 ? z.stats.lorenzo_chunks : z.stats.lorenzo2d_chunks) == 2,
                   "%zu-D dtype %d: predictors %u/%u", shape.size(), int(dt), z.stats.lorenzo_chunks,
                   z.stats.lorenzo2d_chunks);
      std::vector<uint8_t> out;
      ACTZIP_REQUIRE(decode(z.stream, &out).ok(), "decode");
      check_decoded(t, out, bound, "q = 0");
      Tensor dec = t;
      dec.bytes = out;
      for (uint64_t i = 101; i < t.numel(); i += 397) {
        const float want = std::signbit(t.at(i)) ? -step * 0.25f : step * 0.25f;
        Tensor one = make_tensor("", dt, {1}, Fill::kZeros, 0);
        one.set(0, want);  // +-step / 4 rounded to the dtype
        ACTZIP_CHECK(dec.at(i) == one.at(0), "%zu-D dtype %d: element %llu: %a came back as %a, want %a", shape.size(),
                     int(dt), (unsigned long long)i, double(t.at(i)), double(dec.at(i)), double(one.at(0)));
      }
    }
}

ACTZIP_TEST(incompressible_data_stays_within_compress_bound) {
  // Random bit patterns (any float, NaNs included) at a tiny bound: every chunk raw at worst.
  std::mt19937_64 rng(5);
  for (DType dt : {DType::kFloat32, DType::kFloat16, DType::kBFloat16})
    for (uint64_t n : {1ull, 100ull, 16384ull, 16385ull, 40000ull}) {
      Tensor t = make_tensor("", dt, {n}, Fill::kZeros, 0);
      for (auto& b : t.bytes) b = uint8_t(rng());
      for (int ndim : {1, 8}) {
        std::vector<uint64_t> shape(size_t(ndim), 1);
        shape[0] = n;
        t.shape = shape;
        const Compressed z = compress(t, 1e-30, BoundMode::kAbs, true);
        ACTZIP_REQUIRE(z.status.ok(), "%s", z.status.message.c_str());
        ACTZIP_CHECK(z.stream.size() <= actzip::compress_bound(n, dt, ndim), "n=%llu: %zu > %llu",
                     (unsigned long long)n, z.stream.size(),
                     (unsigned long long)actzip::compress_bound(n, dt, ndim));
        std::vector<uint8_t> out;
        ACTZIP_CHECK(decode(z.stream, &out).ok() && out == t.bytes, "n=%llu: not bit-exact", (unsigned long long)n);
      }
    }
}

ACTZIP_TEST(compress_bound_covers_the_largest_header_and_raw_chunks) {
  // docs/FORMAT.md section 6 without its slack: the largest header (256 mask and 1039 code
  // lengths), every chunk raw, the payload checksum.
  for (DType dt : {DType::kFloat32, DType::kFloat16, DType::kBFloat16})
    for (uint64_t n : {0ull, 1ull, 3ull, 16384ull, 16385ull, 1000000ull})
      for (int ndim : {0, 1, 4, 8}) {
        const uint64_t es = actzip::element_size(dt);
        const uint64_t chunks = (n + actzip::kChunkElems - 1) / actzip::kChunkElems;
        const uint64_t books = 2 + 128 + 2 + 520;
        uint64_t want = ((40 + 8 * uint64_t(ndim) + books + 7) / 8) * 8 + 8 * chunks + 8;
        for (uint64_t c = 0; c < chunks; ++c) {
          const uint64_t count = std::min<uint64_t>(actzip::kChunkElems, n - c * actzip::kChunkElems);
          want += 16 + (count * es + 7) / 8 * 8;
        }
        want += 4;
        ACTZIP_CHECK(actzip::compress_bound(n, dt, ndim) >= want, "n=%llu ndim %d: %llu < %llu",
                     (unsigned long long)n, ndim, (unsigned long long)actzip::compress_bound(n, dt, ndim),
                     (unsigned long long)want);
      }
}

ACTZIP_TEST(encode_refuses_a_short_buffer_and_never_writes_past_it) {
  const Tensor t = make_tensor("", DType::kFloat32, {20000}, Fill::kRelu, 11);
  actzip::CompressOptions opt;
  opt.error_bound = 1e-3;
  std::unique_ptr<actzip::CompressPlan> plan;
  ACTZIP_REQUIRE(actzip::plan_compress(t.bytes.data(), t.dtype, t.shape, opt, &plan).ok(), "plan");
  std::vector<uint8_t> out(plan->compressed_bytes() - 1);
  ACTZIP_CHECK(actzip::encode(*plan, out.data(), out.size(), 1).code == StatusCode::kBufferTooSmall, "short buffer");
  ACTZIP_CHECK(actzip::encode(*plan, nullptr, plan->compressed_bytes(), 1).code == StatusCode::kBufferTooSmall,
               "null buffer");
  out.resize(plan->compressed_bytes());
  ACTZIP_CHECK(actzip::encode(*plan, out.data(), out.size(), 0).code == StatusCode::kInvalidArgument, "0 threads");
}

ACTZIP_TEST(the_plan_holds_the_stream_so_the_input_may_change_before_encode) {
  // plan_compress() reads the data during the call only: encode() must give the stream of
  // the data as it was, whatever happened to the buffer afterwards.
  for (Fill later : {Fill::kSpecials, Fill::kNormal, Fill::kZeros}) {
    Tensor t = make_tensor("", DType::kFloat32, {40000}, Fill::kRelu, 12);
    actzip::CompressOptions opt;
    opt.error_bound = 1e-2;
    std::unique_ptr<actzip::CompressPlan> plan, again;
    ACTZIP_REQUIRE(actzip::plan_compress(t.bytes.data(), t.dtype, t.shape, opt, &plan).ok(), "plan");
    ACTZIP_REQUIRE(actzip::plan_compress(t.bytes.data(), t.dtype, t.shape, opt, &again).ok(), "plan again");
    std::vector<uint8_t> expected(again->compressed_bytes());
    ACTZIP_REQUIRE(actzip::encode(*again, expected.data(), expected.size(), 1).ok(), "encode");
    t.bytes = make_tensor("", DType::kFloat32, {40000}, later, 13).bytes;  // same size, new contents
    std::vector<uint8_t> out(plan->compressed_bytes());
    ACTZIP_REQUIRE(actzip::encode(*plan, out.data(), out.size(), 2).ok(), "encode after the change");
    ACTZIP_CHECK(out == expected, "the stream depends on data changed after plan_compress()");
  }
}

ACTZIP_TEST(reusing_a_plans_own_choices_gives_its_bytes_without_sampling) {
  for (const Case& c : cases()) {
    const Compressed fresh = compress(c.t, c.bound, c.mode, true, 2);
    ACTZIP_REQUIRE(fresh.status.ok() && fresh.choices, "%s", fresh.status.message.c_str());
    const Compressed again = compress(c.t, c.bound, c.mode, true, 2, fresh.choices);
    ACTZIP_REQUIRE(again.status.ok(), "%s", again.status.message.c_str());
    actzip::StreamInfo info;
    ACTZIP_REQUIRE(actzip::read_info(fresh.stream.data(), fresh.stream.size(), &info).ok(), "read_info");
    ACTZIP_CHECK(again.stream == fresh.stream, "numel %llu: reusing its own choices changed the stream",
                 (unsigned long long)c.t.numel());
    ACTZIP_CHECK(fresh.stats.sampled_chunks == info.num_chunks && again.stats.sampled_chunks == 0,
                 "sampled %u and %u chunks of %u", fresh.stats.sampled_chunks, again.stats.sampled_chunks,
                 info.num_chunks);
    ACTZIP_CHECK(again.choices == fresh.choices, "the plan does not hold the choices it reused");
    ACTZIP_CHECK(fresh.choices->dtype() == c.t.dtype && fresh.choices->shape() == c.t.shape &&
                     fresh.choices->quant_step() == info.quant_step,
                 "the choices do not describe what they were sampled from");
  }
}

ACTZIP_TEST(choices_sampled_from_other_values_and_bounds_still_honour_the_bound) {
  // Choices are hints about the data only: whatever values and bound they were sampled
  // at, a stream coded with them decodes within its own bound, specials and zeros exact.
  const Fill fills[] = {Fill::kRelu, Fill::kNormal, Fill::kSpecials, Fill::kZeros, Fill::kWaves, Fill::kConstant};
  const std::vector<std::vector<uint64_t>> shapes = {{50000}, {171, 97}, {3, 17, 331}, {12, 128, 96}};
  uint64_t seed = 500;
  uint32_t mapped = 0, twod = 0;
  for (DType dt : {DType::kFloat32, DType::kFloat16, DType::kBFloat16})
    for (const auto& shape : shapes)
      for (Fill from : fills)
        for (Fill to : fills) {
          if (from == to) continue;
          const Tensor a = make_tensor("", dt, shape, from, seed++);
          const Tensor b = make_tensor("", dt, shape, to, seed++);
          for (auto bounds : {std::pair<double, double>{1e-1, 1e-4}, {1e-4, 1e-1}}) {
            const Compressed sampled = compress(a, bounds.first, BoundMode::kRel);
            ACTZIP_REQUIRE(sampled.status.ok(), "%s", sampled.status.message.c_str());
            mapped += sampled.stats.zero_map_chunks;
            twod += sampled.stats.lorenzo2d_chunks;
            const Compressed z = compress(b, bounds.second, BoundMode::kRel, seed % 2 == 0, 1 + int(seed % 3),
                                          sampled.choices);
            ACTZIP_REQUIRE(z.status.ok(), "%s", z.status.message.c_str());
            ACTZIP_CHECK(z.stats.sampled_chunks == 0, "a plan with choices sampled again");
            ACTZIP_CHECK(z.error_bound == rel_bound(b, bounds.second), "error bound %a, want %a", z.error_bound,
                         rel_bound(b, bounds.second));
            ACTZIP_REQUIRE(actzip::validate(z.stream.data(), z.stream.size(), nullptr).ok(), "validate");
            std::vector<uint8_t> out;
            ACTZIP_REQUIRE(decode(z.stream, &out, 2).ok(), "decode");
            check_decoded(b, out, z.error_bound, "coded with other values' choices");
            ACTZIP_CHECK(z.stream.size() <= actzip::compress_bound(b.numel(), dt, int(shape.size())),
                         "above compress_bound");
          }
        }
  // The choices carried over must include zero maps and 2-D prediction, or the test
  // would not reach them.
  ACTZIP_CHECK(mapped > 0 && twod > 0, "no sampled zero map (%u) or 2-D chunk (%u)", mapped, twod);
}

ACTZIP_TEST(choices_of_another_shape_or_dtype_are_refused) {
  const Tensor t = make_tensor("", DType::kFloat32, {200, 250}, Fill::kNormal, 3);
  const Compressed sampled = compress(t, 1e-2);
  ACTZIP_REQUIRE(sampled.status.ok(), "%s", sampled.status.message.c_str());
  const Tensor others[] = {make_tensor("", DType::kFloat32, {250, 200}, Fill::kNormal, 4),
                           make_tensor("", DType::kFloat32, {50000}, Fill::kNormal, 4),
                           make_tensor("", DType::kFloat32, {200, 251}, Fill::kNormal, 4),
                           make_tensor("", DType::kFloat16, {200, 250}, Fill::kNormal, 4)};
  for (const Tensor& o : others) {
    const Compressed z = compress(o, 1e-2, BoundMode::kAbs, false, 1, sampled.choices);
    ACTZIP_CHECK(z.status.code == StatusCode::kInvalidArgument, "choices for {200, 250} float32 accepted for "
                 "a tensor of %zu dimensions, dtype %d", o.shape.size(), int(o.dtype));
  }
}

ACTZIP_TEST(bad_arguments_are_refused) {
  const Tensor t = make_tensor("", DType::kFloat32, {10}, Fill::kNormal, 1);
  std::unique_ptr<actzip::CompressPlan> plan;
  auto plan_with = [&](double bound, int threads, std::vector<uint64_t> shape, const void* data, int mode, int dtype) {
    actzip::CompressOptions opt;
    opt.error_bound = bound;
    opt.num_threads = threads;
    opt.mode = BoundMode(mode);
    return actzip::plan_compress(data, DType(dtype), shape, opt, &plan).code;
  };
  const auto inv = StatusCode::kInvalidArgument;
  const void* d = t.bytes.data();
  for (double b : {0.0, -1.0, std::numeric_limits<double>::infinity(), std::numeric_limits<double>::quiet_NaN()})
    ACTZIP_CHECK(plan_with(b, 1, {10}, d, 0, 1) == inv, "bound %g accepted", b);
  ACTZIP_CHECK(plan_with(1e-3, 0, {10}, d, 0, 1) == inv, "0 threads accepted");
  ACTZIP_CHECK(plan_with(1e-3, 1, std::vector<uint64_t>(9, 1), d, 0, 1) == inv, "9 dimensions accepted");
  ACTZIP_CHECK(plan_with(1e-3, 1, {uint64_t(1) << 24, uint64_t(1) << 24}, d, 0, 1) == inv, "2^48 elements accepted");
  ACTZIP_CHECK(plan_with(1e-3, 1, {uint64_t(1) << 45}, d, 0, 1) == inv, "2^45 elements accepted");
  ACTZIP_CHECK(plan_with(1e-3, 1, {uint64_t(1) << 15, uint64_t(1) << 30}, d, 0, 1) == inv, "2^45 elements accepted");
  ACTZIP_CHECK(plan_with(1e-3, 1, {10}, nullptr, 0, 1) == inv, "null data accepted");
  ACTZIP_CHECK(plan_with(1e-3, 1, {10}, d, 2, 1) == inv, "bound mode 2 accepted");
  ACTZIP_CHECK(plan_with(1e-3, 1, {10}, d, 0, 0) == inv, "dtype 0 accepted");
  ACTZIP_CHECK(plan_with(1e-3, 1, {10}, d, 0, 4) == inv, "dtype 4 accepted");
  ACTZIP_CHECK(plan_with(1e-3, 1, {0}, nullptr, 0, 1) == StatusCode::kOk, "an empty tensor needs no data");
}

ACTZIP_TEST(streams_carry_the_step_the_format_prescribes_even_for_huge_bounds) {
  // quant_step = quant_step_for(error_bound) (docs/FORMAT.md section 3) for every finite
  // positive bound, including bounds whose double is so large that 2 * bound overflows.
  const Tensor t = make_tensor("", DType::kFloat32, {100}, Fill::kNormal, 21);
  for (double bound : {1e-30, 1e-3, 1e-2, 0.5, 1e30, 0x1p126, 0x1.fep126, 0x1p127, 1e300, 1e308,
                       std::numeric_limits<double>::max()}) {
    const Compressed z = compress(t, bound);
    ACTZIP_REQUIRE(z.status.ok(), "%s", z.status.message.c_str());
    actzip::StreamInfo info;
    ACTZIP_REQUIRE(actzip::read_info(z.stream.data(), z.stream.size(), &info).ok(), "read_info");
    const float want = ref_quant_step(bound);
    ACTZIP_CHECK(std::memcmp(&info.quant_step, &want, 4) == 0, "bound %g: quant_step %a, the format says %a", bound,
                 double(info.quant_step), double(want));
    // The field itself, at offset 32 (binary32, little-endian).
    ACTZIP_CHECK(get_u32_le(z.stream.data() + 32) == actzip::detail::f32_bits(want), "bound %g: header bytes 32..35", bound);
  }
  // From 2e = 255 * 2^120 on, the step is that cap (by hand).
  for (double bound : {0x1.fep126, 1e300, std::numeric_limits<double>::max()})
    ACTZIP_CHECK(ref_quant_step(bound) == 0x1.fep127f, "bound %g", bound);
}

// The point of a step with 8 significant bits: it is within 1/128 below 2e, so values that
// fall between two multiples of the step come back off by up to almost the whole bound (a
// power-of-two step, up to half as large, would leave up to half the bound unused). Large
// random tensors in every dtype must show a largest error above 95% of the bound.
ACTZIP_TEST(round_trips_of_random_data_use_more_than_95_percent_of_the_bound) {
  std::mt19937_64 rng(31);
  std::normal_distribution<double> normal(0.0, 1.0);
  struct Run {
    DType dtype;
    double scale, bound;
  };
  // Bounds whose 2e is just below a power of two lose the most to a power-of-two step. For
  // float16 and bfloat16 the step is kept well above the spacing of the values near it.
  const Run runs[] = {{DType::kFloat32, 1.0, 1e-2},  {DType::kFloat32, 1.0, 3e-3},   {DType::kFloat32, 1.0, 0x1.fcp-8},
                      {DType::kFloat32, 100.0, 0.7}, {DType::kFloat32, 1e-30, 1e-33}, {DType::kFloat32, 1.0, 1e-5},
                      {DType::kFloat16, 1.0, 3e-2},  {DType::kFloat16, 1.0, 0.11},   {DType::kBFloat16, 1.0, 0.2},
                      {DType::kBFloat16, 1e20, 3e18}};
  for (const Run& r : runs) {
    Tensor t = make_tensor("", r.dtype, {200000}, Fill::kZeros, 0);
    for (uint64_t i = 0; i < t.numel(); ++i) t.set(i, float(normal(rng) * r.scale));
    const Compressed z = compress(t, r.bound);
    ACTZIP_REQUIRE(z.status.ok(), "%s", z.status.message.c_str());
    std::vector<uint8_t> out;
    ACTZIP_REQUIRE(decode(z.stream, &out).ok(), "decode");
    check_decoded(t, out, r.bound, "random data");
    Tensor dec = t;
    dec.bytes = out;
    double worst = 0;
    for (uint64_t i = 0; i < t.numel(); ++i) worst = std::max(worst, std::fabs(double(t.at(i)) - double(dec.at(i))));
    ACTZIP_CHECK(worst > 0.95 * r.bound && worst <= r.bound, "dtype %d bound %g: largest error %g is %.4f of the bound",
                 int(r.dtype), r.bound, worst, worst / r.bound);
    ACTZIP_CHECK(z.stats.coded > t.numel() * 9 / 10, "dtype %d bound %g: only %llu of %llu coded", int(r.dtype),
                 r.bound, (unsigned long long)z.stats.coded, (unsigned long long)t.numel());
  }
}

}  // namespace
