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
// With `reuse`, codes with those codebooks instead of the tensor's own (as the training
// path does with a layer's books of the previous step); `books_out` gets the tensor's own.
PipelineResult pipeline_compress(const Tensor& t, double bound, actzip::BoundMode mode, bool checksum, int threads,
                                 const pl::Books* reuse = nullptr, pl::Books* books_out = nullptr) {
  PipelineResult r;
  pl::Exec exec;
  exec.num_threads = threads;
  pl::TensorRef x{t.bytes.data(), t.dtype, t.shape};
  int32_t keys[2];
  if (mode == actzip::BoundMode::kRel && !(r.status = pl::finite_range(exec, x, keys)).ok()) return r;
  double resolved[2];
  if (!(r.status = pl::resolve_bound(exec, mode, bound, mode == actzip::BoundMode::kRel ? keys : nullptr, resolved))
           .ok())
    return r;
  const double abs_bound = resolved[0];
  const uint32_t chunks = pl::num_chunks(t.numel());
  std::vector<uint8_t> predictors(chunks);
  std::vector<uint64_t> hist(pl::kHistCounters, 7);  // the stage must zero it
  if (!(r.status = pl::sample(exec, x, resolved, predictors.data(), hist.data())).ok()) return r;
  pl::Books own;
  if (!(r.status = pl::build_books(hist.data(), &own)).ok()) return r;
  if (books_out) *books_out = own;
  const pl::Books& books = reuse ? *reuse : own;
  std::vector<uint8_t> layouts(uint64_t(chunks) * pl::kLayoutBytes);
  if (!(r.status = pl::measure(exec, x, resolved, predictors.data(), books.packed.data(), books.direct_log2,
                               layouts.data()))
           .ok())
    return r;
  pl::Assembly a;
  if (!(r.status = pl::assemble(layouts.data(), x, mode, bound, abs_bound, checksum, books, &a)).ok()) return r;
  // Garbage where the stage must write, so that a byte it forgets shows.
  std::vector<uint64_t> words((a.stream_bytes + 7) / 8, 0xA5A5A5A5A5A5A5A5ull);
  uint8_t* s = reinterpret_cast<uint8_t*>(words.data());
  std::memcpy(s, a.header.data(), a.header.size());
  if (!(r.status = pl::write(exec, x, resolved, books.packed.data(), books.direct_log2, layouts.data(), s,
                             a.header.size()))
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
  // Smooth enough, and of enough chunks, for zero maps (with and without masks).
  ts.push_back(make_tensor("long ramp", DType::kFloat32, {140000}, Fill::kRamp, seed++));
  ts.push_back(make_tensor("long waves", DType::kFloat32, {1100, 128}, Fill::kWaves, seed++));
  ts.push_back(make_tensor("long relu", DType::kFloat16, {9, 16384}, Fill::kRelu, seed++));
  // A chunk of zeros between coded chunks, and a chunk of outliers only.
  Tensor mixed = make_tensor("mixed", DType::kFloat32, {3 * 16384 + 5}, Fill::kNormal, seed++);
  for (uint64_t i = 16384; i < 2 * 16384; ++i) mixed.set(i, 0.0f);
  for (uint64_t i = 2 * 16384; i < 3 * 16384; ++i) mixed.set(i, i % 2 ? std::nanf("") : 0.0f);
  ts.push_back(mixed);
  return ts;
}

}  // namespace

ACTZIP_TEST(pipeline_writes_the_cpu_backends_bytes) {
  uint64_t mapped = 0;
  for (const Tensor& t : corpus()) {
    for (double bound : {1e-1, 1e-3, 1e-6}) {
      for (auto mode : {actzip::BoundMode::kAbs, actzip::BoundMode::kRel}) {
        const bool checksum = bound == 1e-3;
        const Compressed cpu = compress(t, bound, mode, checksum, 1);
        ACTZIP_REQUIRE(cpu.status.ok(), "%s: %s", t.name.c_str(), cpu.status.message.c_str());
        mapped += cpu.stats.zero_map_chunks;
        for (int threads : {1, 3}) {
          const PipelineResult p = pipeline_compress(t, bound, mode, checksum, threads);
          ACTZIP_REQUIRE(p.status.ok(), "%s: %s", t.name.c_str(), p.status.message.c_str());
          ACTZIP_CHECK(p.stream == cpu.stream, "%s bound %g mode %d threads %d: %zu vs %zu bytes", t.name.c_str(),
                       bound, int(mode), threads, p.stream.size(), cpu.stream.size());
          ACTZIP_CHECK(p.stats.zeros == cpu.stats.zeros && p.stats.coded == cpu.stats.coded &&
                           p.stats.outliers == cpu.stats.outliers && p.stats.raw_chunks == cpu.stats.raw_chunks &&
                           p.stats.zero_chunks == cpu.stats.zero_chunks &&
                           p.stats.lorenzo_chunks == cpu.stats.lorenzo_chunks &&
                           p.stats.lorenzo2d_chunks == cpu.stats.lorenzo2d_chunks &&
                           p.stats.zero_map_chunks == cpu.stats.zero_map_chunks,
                       "%s: statistics differ", t.name.c_str());
        }
      }
    }
  }
  ACTZIP_CHECK(mapped > 0, "no stream of the corpus has a zero map: the test does not cover them");
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

// Codebooks are lossless: with another tensor's, each element decodes to what the CPU
// backend's stream gives, except in chunks that those books would code worse than raw,
// which are stored raw and so come back exactly.
ACTZIP_TEST(codebooks_of_another_tensor_give_a_valid_stream_with_the_same_values) {
  const std::vector<Tensor> ts = corpus();
  uint64_t raw_elements = 0;
  for (size_t i = 0; i < ts.size(); ++i) {
    const Tensor& donor = ts[(i + 7) % ts.size()];
    const Tensor& t = ts[i];
    pl::Books books;
    ACTZIP_REQUIRE(pipeline_compress(donor, 1e-2, actzip::BoundMode::kRel, false, 1, nullptr, &books).status.ok(),
                   "donor %s", donor.name.c_str());
    const PipelineResult p = pipeline_compress(t, 1e-3, actzip::BoundMode::kRel, false, 2, &books);
    ACTZIP_REQUIRE(p.status.ok(), "%s: %s", t.name.c_str(), p.status.message.c_str());
    const Compressed cpu = compress(t, 1e-3, actzip::BoundMode::kRel);
    std::vector<uint8_t> want, got, got_pipeline;
    ACTZIP_REQUIRE(decode(cpu.stream, &want).ok(), "%s", t.name.c_str());
    const actzip::Status s = decode(p.stream, &got);
    ACTZIP_REQUIRE(s.ok(), "%s with %s's books: %s", t.name.c_str(), donor.name.c_str(), s.message.c_str());
    std::string why;
    ACTZIP_CHECK(pipeline_decode(p.stream, &got_pipeline, &why) && got_pipeline == got, "%s: pipeline decode: %s",
                 t.name.c_str(), why.c_str());
    const size_t es = t.elem_size();
    for (uint64_t e = 0; e < t.numel(); ++e) {
      const bool same = std::memcmp(&got[e * es], &want[e * es], es) == 0;
      const bool exact = std::memcmp(&got[e * es], &t.bytes[e * es], es) == 0;
      raw_elements += !same && exact;
      if (!same && !exact) {
        ACTZIP_CHECK(false, "%s with %s's books: element %llu is neither the CPU's value nor exact", t.name.c_str(),
                     donor.name.c_str(), (unsigned long long)e);
        break;
      }
    }
  }
  // Some donor's books must have sent a chunk raw, or the exception above went untested.
  ACTZIP_CHECK(raw_elements > 0, "no element came back exact through a raw chunk");
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
  double resolved[2];
  ACTZIP_CHECK(!pl::resolve_bound(exec, actzip::BoundMode::kAbs, 0.0, nullptr, resolved).ok(), "zero bound accepted");
  ACTZIP_CHECK(!pl::resolve_bound(exec, actzip::BoundMode::kAbs, std::nan(""), nullptr, resolved).ok(),
               "NaN bound accepted");
  ACTZIP_CHECK(!pl::resolve_bound(exec, actzip::BoundMode::kRel, 0.1, nullptr, resolved).ok(), "rel without keys");
  const double zero_bound[2] = {0.0, 0.0}, odd_step[2] = {0.1, 0.123};
  ACTZIP_CHECK(!pl::sample(exec, ok_ref, zero_bound, pred, hist).ok(), "zero bound buffer accepted");
  ACTZIP_CHECK(!pl::sample(exec, ok_ref, odd_step, pred, hist).ok(), "a step that is not the bound's accepted");
  ACTZIP_REQUIRE(pl::resolve_bound(exec, actzip::BoundMode::kAbs, 1.0, nullptr, resolved).ok(), "abs 1.0 refused");
  pl::TensorRef null_ref{nullptr, actzip::DType::kFloat32, {4}};
  ACTZIP_CHECK(!pl::sample(exec, null_ref, resolved, pred, hist).ok(), "null data accepted");
  pl::TensorRef bad_dtype{x, actzip::DType(9), {4}};
  ACTZIP_CHECK(!pl::sample(exec, bad_dtype, resolved, pred, hist).ok(), "unknown dtype accepted");
  pl::TensorRef too_many{x, actzip::DType::kFloat32, {uint64_t(1) << 15, uint64_t(1) << 30}};
  ACTZIP_CHECK(pl::sample(exec, too_many, resolved, pred, hist).code == actzip::StatusCode::kInvalidArgument,
               "2^45 elements accepted");
  exec.num_threads = 0;
  ACTZIP_CHECK(!pl::sample(exec, ok_ref, resolved, pred, hist).ok(), "zero threads accepted");
  pl::Exec dev;
  dev.device = 0;
  if (!pl::cuda_compiled()) {
    const actzip::Status s = pl::sample(dev, ok_ref, resolved, pred, hist);
    ACTZIP_CHECK(s.code == actzip::StatusCode::kInvalidArgument, "a device stage without CUDA: %s", s.message.c_str());
    ACTZIP_CHECK(pl::cuda_device_count() == 0, "devices without CUDA");
  } else if (pl::cuda_device_count() == 0) {
    // Built with CUDA, run without a GPU or a driver: an error status, never a crash.
    dev.device = 3;
    const actzip::Status s = pl::sample(dev, ok_ref, resolved, pred, hist);
    ACTZIP_CHECK(s.code == actzip::StatusCode::kDeviceError, "a device stage without a GPU: %d %s", int(s.code),
                 s.message.c_str());
  }
  // A header copy shorter than the header it describes.
  const Compressed c = compress(make_tensor("n", actzip::DType::kFloat32, {1000}, Fill::kNormal, 3), 1e-2);
  pl::DecodePlan plan;
  const actzip::Status s = pl::plan_decode(c.stream.data(), 48, c.stream.size(), &plan);
  ACTZIP_CHECK(!s.ok(), "a truncated header copy was accepted");
}
