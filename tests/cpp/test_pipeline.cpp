// The chunk pipeline (include/actzip/pipeline.h) run on host threads: the code the CUDA
// kernels run, chunk for chunk. It must write the CPU backend's bytes, decode what the CPU
// backend decodes to the same bits, and refuse exactly the streams the CPU backend refuses.
#include <cstring>
#include <random>
#include <string>
#include <vector>

#include "actzip/pipeline.h"
#include "codec/crc32.h"
#include "harness.h"
#include "streams.h"

using namespace actzip_test;
namespace pl = actzip::pipeline;

namespace {

struct PipelineResult {
  actzip::Status status;
  std::vector<uint8_t> stream;
  actzip::CompressStats stats;
};

// Compression through every stage and host step, as the Python layer drives it.
PipelineResult pipeline_compress(const Tensor& t, double bound, actzip::BoundMode mode, bool checksum, int threads) {
  PipelineResult r;
  pl::Exec exec;
  exec.num_threads = threads;
  pl::TensorRef x{t.bytes.data(), t.dtype, t.shape};
  double abs_bound = bound;
  if (mode == actzip::BoundMode::kRel) {
    int32_t keys[2];
    if (!(r.status = pl::finite_range(exec, x, keys)).ok()) return r;
    abs_bound = pl::rel_abs_bound(keys[0], keys[1], bound);
  }
  const uint32_t chunks = pl::num_chunks(t.numel());
  std::vector<uint8_t> predictors(chunks);
  std::vector<uint64_t> hist(pl::kHistCounters, 7);  // the stage must zero it
  if (!(r.status = pl::sample(exec, x, abs_bound, predictors.data(), hist.data())).ok()) return r;
  pl::Books books;
  if (!(r.status = pl::build_books(hist.data(), &books)).ok()) return r;
  std::vector<uint8_t> layouts(uint64_t(chunks) * pl::kLayoutBytes);
  if (!(r.status = pl::measure(exec, x, abs_bound, predictors.data(), books.packed.data(), books.direct_log2,
                               layouts.data()))
           .ok())
    return r;
  pl::Assembly a;
  if (!(r.status = pl::assemble(layouts.data(), x, mode, bound, abs_bound, checksum, books, &a)).ok()) return r;
  // Garbage where the stage must write, so that a byte it forgets shows.
  std::vector<uint64_t> words((a.stream_bytes + 7) / 8, 0xA5A5A5A5A5A5A5A5ull);
  uint8_t* s = reinterpret_cast<uint8_t*>(words.data());
  std::memcpy(s, a.header.data(), a.header.size());
  if (!(r.status = pl::write(exec, x, abs_bound, predictors.data(), books.packed.data(), books.direct_log2,
                             layouts.data(), s, a.header.size()))
           .ok())
    return r;
  if (checksum) {
    const uint64_t payload = a.stream_bytes - 4 - a.header.size();
    put_u32_le(s + a.header.size() + payload, actzip::detail::crc32(0, s + a.header.size(), payload));
  }
  r.stream.assign(s, s + a.stream_bytes);
  r.stats = a.stats;
  return r;
}

// Decoding through the pipeline; `ok` tells whether the stream was accepted.
bool pipeline_decode(const std::vector<uint8_t>& stream, std::vector<uint8_t>* out, std::string* why, int threads = 1) {
  pl::DecodePlan plan;
  actzip::Status s = pl::plan_decode(stream.data(), stream.size(), stream.size(), &plan);
  if (!s.ok()) {
    *why = s.message;
    return false;
  }
  pl::Exec exec;
  exec.num_threads = threads;
  std::vector<uint32_t> tables(pl::kDecodeTablesBytes / 4);
  s = pl::decode_tables(exec, stream.data(), plan, reinterpret_cast<uint8_t*>(tables.data()));
  if (!s.ok()) {
    *why = s.message;
    return false;
  }
  out->assign(plan.info.numel * actzip::element_size(plan.info.dtype), 0x5A);
  uint64_t status = 99;
  s = pl::decode(exec, stream.data(), plan, reinterpret_cast<const uint8_t*>(tables.data()), out->data(), &status);
  if (!s.ok()) {
    *why = s.message;
    return false;
  }
  *why = pl::decode_status_message(status);
  return status == 0;
}

std::vector<Tensor> corpus() {
  using actzip::DType;
  std::vector<Tensor> ts;
  uint64_t seed = 1;
  for (DType dt : {DType::kFloat32, DType::kFloat16, DType::kBFloat16}) {
    ts.push_back(make_tensor("relu", dt, {3, 50000}, Fill::kRelu, seed++));
    ts.push_back(make_tensor("normal", dt, {40000}, Fill::kNormal, seed++));
    ts.push_back(make_tensor("specials", dt, {7, 5000}, Fill::kSpecials, seed++));
    ts.push_back(make_tensor("zeros", dt, {20000}, Fill::kZeros, seed++));
    ts.push_back(make_tensor("constant", dt, {33, 1000}, Fill::kConstant, seed++));
    ts.push_back(make_tensor("ramp", dt, {70000}, Fill::kRamp, seed++));
    for (uint64_t w : {2, 3, 31, 64, 100, 128, 129})
      ts.push_back(make_tensor("waves" + std::to_string(w), dt, {40000 / w + 1, w}, Fill::kWaves, seed++));
  }
  ts.push_back(make_tensor("scalar", DType::kFloat32, {}, Fill::kNormal, seed++));
  ts.push_back(make_tensor("empty", DType::kFloat32, {0, 4}, Fill::kNormal, seed++));
  ts.push_back(make_tensor("one", DType::kFloat16, {1}, Fill::kNormal, seed++));
  ts.push_back(make_tensor("5d", DType::kFloat32, {2, 3, 4, 5, 6}, Fill::kRelu, seed++));
  // A chunk of zeros between coded chunks, and a chunk of outliers only.
  Tensor mixed = make_tensor("mixed", DType::kFloat32, {3 * 16384 + 5}, Fill::kNormal, seed++);
  for (uint64_t i = 16384; i < 2 * 16384; ++i) mixed.set(i, 0.0f);
  for (uint64_t i = 2 * 16384; i < 3 * 16384; ++i) mixed.set(i, i % 2 ? std::nanf("") : 0.0f);
  ts.push_back(mixed);
  return ts;
}

}  // namespace

ACTZIP_TEST(pipeline_writes_the_cpu_backends_bytes) {
  for (const Tensor& t : corpus()) {
    for (double bound : {1e-1, 1e-3, 1e-6}) {
      for (auto mode : {actzip::BoundMode::kAbs, actzip::BoundMode::kRel}) {
        const bool checksum = bound == 1e-3;
        const Compressed cpu = compress(t, bound, mode, checksum, 1);
        ACTZIP_REQUIRE(cpu.status.ok(), "%s: %s", t.name.c_str(), cpu.status.message.c_str());
        for (int threads : {1, 3}) {
          const PipelineResult p = pipeline_compress(t, bound, mode, checksum, threads);
          ACTZIP_REQUIRE(p.status.ok(), "%s: %s", t.name.c_str(), p.status.message.c_str());
          ACTZIP_CHECK(p.stream == cpu.stream, "%s bound %g mode %d threads %d: %zu vs %zu bytes", t.name.c_str(),
                       bound, int(mode), threads, p.stream.size(), cpu.stream.size());
          ACTZIP_CHECK(p.stats.zeros == cpu.stats.zeros && p.stats.coded == cpu.stats.coded &&
                           p.stats.outliers == cpu.stats.outliers && p.stats.raw_chunks == cpu.stats.raw_chunks &&
                           p.stats.zero_chunks == cpu.stats.zero_chunks &&
                           p.stats.lorenzo_chunks == cpu.stats.lorenzo_chunks &&
                           p.stats.lorenzo2d_chunks == cpu.stats.lorenzo2d_chunks,
                       "%s: statistics differ", t.name.c_str());
        }
      }
    }
  }
}

ACTZIP_TEST(pipeline_decodes_to_the_cpu_backends_bits) {
  for (const Tensor& t : corpus()) {
    for (double bound : {1e-2, 1e-5}) {
      const Compressed cpu = compress(t, bound, actzip::BoundMode::kRel, false, 1);
      ACTZIP_REQUIRE(cpu.status.ok(), "%s", cpu.status.message.c_str());
      std::vector<uint8_t> want, got;
      ACTZIP_REQUIRE(decode(cpu.stream, &want).ok(), "%s: the CPU backend refused its own stream", t.name.c_str());
      std::string why;
      ACTZIP_CHECK(pipeline_decode(cpu.stream, &got, &why, 2), "%s: %s", t.name.c_str(), why.c_str());
      ACTZIP_CHECK(got == want, "%s bound %g: decoded bits differ", t.name.c_str(), bound);
    }
  }
}

// Random damage to real streams: both decoders accept the same streams, and decode the
// accepted ones to the same bits. The damaged streams carry no payload checksum (with one,
// nearly every change would be refused before the chunks are read).
ACTZIP_TEST(pipeline_refuses_exactly_what_the_cpu_backend_refuses) {
  std::mt19937_64 rng(42);
  std::vector<std::vector<uint8_t>> streams;
  for (const Tensor& t : corpus()) {
    if (t.numel() == 0 || t.numel() > 60000) continue;
    streams.push_back(compress(t, 1e-2, actzip::BoundMode::kRel).stream);
  }
  uint64_t accepted = 0, refused = 0;
  for (int trial = 0; trial < 3000; ++trial) {
    std::vector<uint8_t> s = streams[rng() % streams.size()];
    actzip::StreamInfo info;
    ACTZIP_REQUIRE(actzip::read_info(s.data(), s.size(), &info).ok(), "corpus stream refused");
    // Damage the payload (the header is checked by the same host code on both paths),
    // or now and then the chunk table, whose CRC is then refreshed so the damage is seen.
    const int edits = 1 + int(rng() % 3);
    for (int e = 0; e < edits; ++e) {
      const uint64_t at = info.header_bytes + rng() % (s.size() - info.header_bytes);
      switch (rng() % 3) {
        case 0: s[at] ^= uint8_t(1u << (rng() % 8)); break;
        case 1: s[at] = uint8_t(rng()); break;
        default: s[at] = 0; break;
      }
    }
    std::vector<uint8_t> want, got;
    const bool cpu_ok = decode(s, &want).ok();
    std::string why;
    const bool pipe_ok = pipeline_decode(s, &got, &why);
    ACTZIP_CHECK(cpu_ok == pipe_ok, "trial %d: CPU %s, pipeline %s (%s)", trial, cpu_ok ? "accepts" : "refuses",
                 pipe_ok ? "accepts" : "refuses", why.c_str());
    if (cpu_ok && pipe_ok) ACTZIP_CHECK(got == want, "trial %d: accepted stream decoded differently", trial);
    (cpu_ok ? accepted : refused) += 1;
  }
  // Both outcomes must be exercised for the comparison to mean anything.
  ACTZIP_CHECK(accepted > 100 && refused > 100, "accepted %llu, refused %llu", (unsigned long long)accepted,
               (unsigned long long)refused);
}

ACTZIP_TEST(pipeline_stages_refuse_bad_arguments) {
  pl::Exec exec;
  const float x[4] = {1, 2, 3, 4};
  pl::TensorRef ok_ref{x, actzip::DType::kFloat32, {4}};
  uint8_t pred[1];
  uint64_t hist[pl::kHistCounters];
  ACTZIP_CHECK(!pl::sample(exec, ok_ref, 0.0, pred, hist).ok(), "zero bound accepted");
  ACTZIP_CHECK(!pl::sample(exec, ok_ref, std::nan(""), pred, hist).ok(), "NaN bound accepted");
  pl::TensorRef null_ref{nullptr, actzip::DType::kFloat32, {4}};
  ACTZIP_CHECK(!pl::sample(exec, null_ref, 1.0, pred, hist).ok(), "null data accepted");
  pl::TensorRef bad_dtype{x, actzip::DType(9), {4}};
  ACTZIP_CHECK(!pl::sample(exec, bad_dtype, 1.0, pred, hist).ok(), "unknown dtype accepted");
  exec.num_threads = 0;
  ACTZIP_CHECK(!pl::sample(exec, ok_ref, 1.0, pred, hist).ok(), "zero threads accepted");
  pl::Exec dev;
  dev.device = 0;
  if (!pl::cuda_compiled()) {
    const actzip::Status s = pl::sample(dev, ok_ref, 1.0, pred, hist);
    ACTZIP_CHECK(s.code == actzip::StatusCode::kInvalidArgument, "a device stage without CUDA: %s", s.message.c_str());
    ACTZIP_CHECK(pl::cuda_device_count() == 0, "devices without CUDA");
  } else if (pl::cuda_device_count() == 0) {
    // Built with CUDA, run without a GPU or a driver: an error status, never a crash.
    dev.device = 3;
    const actzip::Status s = pl::sample(dev, ok_ref, 1.0, pred, hist);
    ACTZIP_CHECK(s.code == actzip::StatusCode::kDeviceError, "a device stage without a GPU: %d %s", int(s.code),
                 s.message.c_str());
  }
  // A header copy shorter than the header it describes.
  const Compressed c = compress(make_tensor("n", actzip::DType::kFloat32, {1000}, Fill::kNormal, 3), 1e-2);
  pl::DecodePlan plan;
  const actzip::Status s = pl::plan_decode(c.stream.data(), 48, c.stream.size(), &plan);
  ACTZIP_CHECK(!s.ok(), "a truncated header copy was accepted");
}
