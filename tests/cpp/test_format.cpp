// The stream format (docs/FORMAT.md) from the outside: CRC-32 against known vectors, streams
// made through the public API, then corrupted field by field, bit by bit, truncated at every
// length: read_info(), validate() and decompress() must answer kFormatError (or, for damage
// the format cannot see, decode without touching memory they do not own), never crash.
#include <algorithm>
#include <cerrno>
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <limits>
#include <random>
#include <string>
#include <vector>

#include "actzip/actzip.h"
#include "codec/crc32.h"
#include "harness.h"
#include "streams.h"

namespace {

using actzip::BoundMode;
using actzip::DType;
using actzip::StatusCode;
using namespace actzip_test;

// ---- CRC-32 --------------------------------------------------------------------------------

uint32_t bitwise_crc32(const uint8_t* p, size_t n) {
  uint32_t c = 0xFFFFFFFFu;
  for (size_t i = 0; i < n; ++i) {
    c ^= p[i];
    for (int k = 0; k < 8; ++k) c = (c & 1u) ? (c >> 1) ^ 0xEDB88320u : c >> 1;
  }
  return ~c;
}

uint32_t crc_of(const std::string& s) {
  return actzip::detail::crc32(0, reinterpret_cast<const uint8_t*>(s.data()), s.size());
}

ACTZIP_TEST(crc32_matches_known_vectors) {
  ACTZIP_CHECK(crc_of("123456789") == 0xCBF43926u, "check value %08x", crc_of("123456789"));
  ACTZIP_CHECK(crc_of("") == 0u, "empty %08x", crc_of(""));
  ACTZIP_CHECK(crc_of("a") == 0xE8B7BE43u, "'a' %08x", crc_of("a"));
  ACTZIP_CHECK(crc_of("abc") == 0x352441C2u, "'abc' %08x", crc_of("abc"));
  ACTZIP_CHECK(crc_of("The quick brown fox jumps over the lazy dog") == 0x414FA339u, "fox %08x",
               crc_of("The quick brown fox jumps over the lazy dog"));
  const std::vector<uint8_t> zeros(32, 0), ones(32, 0xFF);
  ACTZIP_CHECK(actzip::detail::crc32(0, zeros.data(), 32) == 0x190A55ADu, "32 zero bytes");
  ACTZIP_CHECK(actzip::detail::crc32(0, ones.data(), 32) == 0xFF6CAB0Bu, "32 0xFF bytes");
}

ACTZIP_TEST(crc32_matches_a_bitwise_reference_at_every_length_offset_and_split) {
  std::mt19937_64 rng(3);
  std::vector<uint8_t> buf(600);
  for (auto& b : buf) b = uint8_t(rng());
  for (size_t offset = 0; offset < 8; ++offset)
    for (size_t n = 0; n + offset <= buf.size(); n += (n < 80 ? 1 : 37)) {
      const uint8_t* p = buf.data() + offset;
      const uint32_t want = bitwise_crc32(p, n);
      ACTZIP_CHECK(actzip::detail::crc32(0, p, n) == want, "offset %zu length %zu", offset, n);
      for (size_t split = 0; split <= n; split += 1 + n / 7) {
        const uint32_t part = actzip::detail::crc32(actzip::detail::crc32(0, p, split), p + split, n - split);
        ACTZIP_CHECK(part == want, "offset %zu length %zu split %zu", offset, n, split);
      }
    }
}

// ---- a corpus of streams -------------------------------------------------------------------

struct Sample {
  std::string name;
  std::vector<uint8_t> stream;
  bool checksum;
};

std::vector<Sample> corpus() {
  struct Spec {
    Tensor t;
    double bound;
    BoundMode mode;
    bool checksum;
  };
  std::vector<Spec> specs = {
      {make_tensor("f32 relu 2 chunks", DType::kFloat32, {3, 7000}, Fill::kRelu, 1), 1e-2, BoundMode::kAbs, true},
      {make_tensor("f32 specials 3 chunks", DType::kFloat32, {40000}, Fill::kSpecials, 2), 1e-3, BoundMode::kRel,
       false},
      {make_tensor("f16 normal", DType::kFloat16, {5, 7, 11}, Fill::kNormal, 3), 1e-2, BoundMode::kAbs, false},
      {make_tensor("bf16 ramp 5-D", DType::kBFloat16, {2, 3, 4, 5, 6}, Fill::kRamp, 4), 1e-3, BoundMode::kAbs, true},
      {make_tensor("f32 scalar", DType::kFloat32, {}, Fill::kNormal, 5), 1e-3, BoundMode::kAbs, false},
      {make_tensor("f32 empty", DType::kFloat32, {0, 4}, Fill::kNormal, 6), 1e-3, BoundMode::kAbs, true},
      {make_tensor("f32 zeros", DType::kFloat32, {20000}, Fill::kZeros, 7), 1e-3, BoundMode::kAbs, false},
      {make_tensor("f32 raw chunks", DType::kFloat32, {17000}, Fill::kNormal, 8), 1e-12, BoundMode::kAbs, false},
      {make_tensor("f16 constant", DType::kFloat16, {100}, Fill::kConstant, 9), 1e-2, BoundMode::kRel, false},
      {make_tensor("bf16 specials", DType::kBFloat16, {1000}, Fill::kSpecials, 10), 0.5, BoundMode::kAbs, false},
      // Waves crossing zero: 2-D prediction (the second over a chunk that starts mid-row) and
      // Lorenzo, with sign streams.
      {make_tensor("f32 waves 2-D", DType::kFloat32, {2, 4, 32, 32}, Fill::kWaves, 11), 1e-2, BoundMode::kAbs, false},
      {make_tensor("f16 waves rows of 100", DType::kFloat16, {200, 100}, Fill::kWaves, 12), 1e-2, BoundMode::kAbs,
       false},
      {make_tensor("f32 wave 1-D", DType::kFloat32, {20000}, Fill::kWaves, 13), 1e-2, BoundMode::kAbs, true},
      // Smooth and of 8 chunks: zero maps.
      {make_tensor("f32 waves mapped", DType::kFloat32, {8, 128, 128}, Fill::kWaves, 15), 1e-2, BoundMode::kAbs,
       false},
  };
  std::vector<Sample> out;
  for (const auto& s : specs) {
    Compressed c = compress(s.t, s.bound, s.mode, s.checksum);
    ACTZIP_CHECK(c.status.ok(), "%s: %s", s.t.name.c_str(), c.status.message.c_str());
    out.push_back({s.t.name, c.stream, s.checksum});
  }
  return out;
}

uint64_t header_bytes_of(const std::vector<uint8_t>& s) { return get_u32_le(s.data() + 8); }

// Recomputes the header checksum after a deliberate change, so that the checks behind it run.
void fix_header_crc(std::vector<uint8_t>* s) {
  const uint64_t hb = header_bytes_of(*s);
  if (hb < 8 || hb > s->size()) return;
  put_u32_le(s->data() + hb - 8, actzip::detail::crc32(0, s->data(), size_t(hb - 8)));
}

// Recomputes the payload checksum, where the stream has one, after a deliberate change.
void fix_payload_crc(std::vector<uint8_t>* s) {
  const uint64_t hb = header_bytes_of(*s);
  if (!((*s)[6] & 1) || hb + 4 > s->size()) return;
  put_u32_le(s->data() + s->size() - 4, actzip::detail::crc32(0, s->data() + hb, size_t(s->size() - 4 - hb)));
}

// Where a chunk lies and what its header and code-section table say (docs/FORMAT.md section 2).
struct ChunkAt {
  uint64_t start = 0;  // offset of the chunk header in the stream
  uint8_t kind = 0, flags = 0;
  uint32_t mask_bytes = 0, code_bytes = 0;
  uint64_t code = 0;        // offset of the code section
  uint32_t sign_bytes = 0;  // 0 where the code section is empty
  uint32_t zmap_bytes = 0;  // likewise
};

uint64_t chunk_table_of(const std::vector<uint8_t>& s, uint32_t num_chunks) {
  return header_bytes_of(s) - 8 - 8 * uint64_t(num_chunks);
}

std::vector<ChunkAt> chunks_of(const std::vector<uint8_t>& s) {
  actzip::StreamInfo info;
  std::vector<ChunkAt> out;
  if (!actzip::read_info(s.data(), s.size(), &info).ok()) return out;
  const uint64_t table = chunk_table_of(s, info.num_chunks);
  for (uint32_t c = 0; c < info.num_chunks; ++c) {
    ChunkAt ch;
    ch.start = info.header_bytes + (c == 0 ? 0 : get_u64_le(s.data() + table + 8 * (c - 1)));
    ch.kind = s[ch.start];
    ch.flags = s[ch.start + 1];
    ch.mask_bytes = get_u32_le(s.data() + ch.start + 8);
    ch.code_bytes = get_u32_le(s.data() + ch.start + 12);
    ch.code = ch.start + 16 + ch.mask_bytes;
    if (ch.kind == 1 && ch.code_bytes >= 24) {
      ch.sign_bytes = get_u32_le(s.data() + ch.code + 16);
      ch.zmap_bytes = get_u32_le(s.data() + ch.code + 20);
    }
    out.push_back(ch);
  }
  return out;
}

// Whether the stream's shape lets a chunk use 2-D prediction: a last extent of 2 to 128.
bool rows_allow_2d(const std::vector<uint8_t>& s) {
  const uint8_t ndim = s[13];
  if (ndim == 0) return false;
  const uint64_t row = get_u64_le(s.data() + 40 + 8 * uint64_t(ndim - 1));
  return row >= 2 && row <= 128;
}

// Grows (with zero bytes) or shrinks chunk c's sign stream by `delta` bytes, keeping
// sign_bytes, code_bytes, the chunk table and both checksums consistent with it.
std::vector<uint8_t> resize_sign_stream(std::vector<uint8_t> s, uint32_t c, int64_t delta) {
  const std::vector<ChunkAt> chunks = chunks_of(s);
  const ChunkAt ch = chunks[c];
  const uint64_t end = ch.code + ch.code_bytes;  // the sign stream ends the code section
  if (delta >= 0) s.insert(s.begin() + std::ptrdiff_t(end), size_t(delta), uint8_t(0));
  else s.erase(s.begin() + std::ptrdiff_t(end) + std::ptrdiff_t(delta), s.begin() + std::ptrdiff_t(end));
  put_u32_le(s.data() + ch.code + 16, uint32_t(int64_t(ch.sign_bytes) + delta));
  put_u32_le(s.data() + ch.start + 12, uint32_t(int64_t(ch.code_bytes) + delta));
  const uint64_t table = chunk_table_of(s, uint32_t(chunks.size()));
  for (size_t k = c; k < chunks.size(); ++k)
    put_u64_le(s.data() + table + 8 * k, uint64_t(int64_t(get_u64_le(s.data() + table + 8 * k)) + delta));
  fix_header_crc(&s);
  fix_payload_crc(&s);
  return s;
}

// The three entry points on one (possibly broken) stream. Each must return kOk or
// kFormatError; a decode buffer is sized from the stream's own header.
struct Outcome {
  StatusCode info, valid, decoded;
};

Outcome try_all(const std::vector<uint8_t>& s, int threads = 1) {
  Outcome o;
  actzip::StreamInfo info;
  o.info = actzip::read_info(s.data(), s.size(), &info).code;
  o.valid = actzip::validate(s.data(), s.size(), nullptr).code;
  const uint64_t need = o.info == StatusCode::kOk ? info.numel * actzip::element_size(info.dtype) : 0;
  if (need <= (uint64_t(1) << 26)) {
    std::vector<uint8_t> out(std::max<uint64_t>(need, 1));
    o.decoded = actzip::decompress(s.data(), s.size(), out.data(), need, threads).code;
  } else {
    o.decoded = StatusCode::kOk;  // a huge (but valid) shape: not decoded here
  }
  return o;
}

bool ok_or_format_error(StatusCode c) { return c == StatusCode::kOk || c == StatusCode::kFormatError; }
bool all_format_errors(const Outcome& o) {
  return o.info == StatusCode::kFormatError && o.valid == StatusCode::kFormatError &&
         o.decoded == StatusCode::kFormatError;
}

ACTZIP_TEST(corpus_streams_are_valid_and_say_what_was_compressed) {
  for (const Sample& s : corpus()) {
    actzip::StreamInfo info;
    const actzip::Status st = actzip::validate(s.stream.data(), s.stream.size(), &info);
    ACTZIP_REQUIRE(st.ok(), "%s: %s", s.name.c_str(), st.message.c_str());
    ACTZIP_CHECK(info.stream_bytes == s.stream.size() && info.header_bytes % 8 == 0 &&
                     info.header_bytes == header_bytes_of(s.stream),
                 "%s: lengths", s.name.c_str());
    ACTZIP_CHECK(info.payload_checksum == s.checksum, "%s: checksum flag", s.name.c_str());
    ACTZIP_CHECK(info.num_chunks == (info.numel + actzip::kChunkElems - 1) / actzip::kChunkElems, "%s: chunks",
                 s.name.c_str());
    std::vector<uint8_t> out;
    ACTZIP_CHECK(decode(s.stream, &out).ok(), "%s: decode", s.name.c_str());
    ACTZIP_CHECK(try_all(s.stream).decoded == StatusCode::kOk, "%s", s.name.c_str());
  }
}

ACTZIP_TEST(every_bit_flip_in_the_header_is_a_format_error) {
  for (const Sample& s : corpus()) {
    const uint64_t hb = header_bytes_of(s.stream);
    for (uint64_t i = 0; i < hb; ++i)
      for (int b = 0; b < 8; ++b) {
        std::vector<uint8_t> bad = s.stream;
        bad[i] ^= uint8_t(1u << b);
        const Outcome o = try_all(bad);
        ACTZIP_CHECK(all_format_errors(o), "%s: flipping bit %d of header byte %llu gave %d/%d/%d", s.name.c_str(), b,
                     (unsigned long long)i, int(o.info), int(o.valid), int(o.decoded));
      }
  }
}

ACTZIP_TEST(every_truncation_and_extension_is_a_format_error) {
  for (const Sample& s : corpus()) {
    const size_t stride = s.stream.size() > 20000 ? 7 : 1;
    for (size_t len = 0; len < s.stream.size(); len += (len < 2000 ? 1 : stride)) {
      // A copy of exactly `len` bytes, so a read past it is a heap overflow under ASan.
      const std::vector<uint8_t> cut(s.stream.begin(), s.stream.begin() + std::ptrdiff_t(len));
      const Outcome o = try_all(cut);
      ACTZIP_CHECK(all_format_errors(o), "%s: cut to %zu of %zu bytes gave %d/%d/%d", s.name.c_str(), len,
                   s.stream.size(), int(o.info), int(o.valid), int(o.decoded));
    }
    for (size_t extra = 1; extra <= 9; ++extra) {
      std::vector<uint8_t> longer = s.stream;
      longer.resize(longer.size() + extra, 0);
      ACTZIP_CHECK(all_format_errors(try_all(longer)), "%s: %zu bytes appended", s.name.c_str(), extra);
    }
  }
}

ACTZIP_TEST(null_or_empty_streams_are_rejected_without_a_crash) {
  actzip::StreamInfo info;
  ACTZIP_CHECK(actzip::read_info(nullptr, 0, &info).code == StatusCode::kFormatError, "null, 0 bytes");
  ACTZIP_CHECK(actzip::validate(nullptr, 0, &info).code == StatusCode::kFormatError, "null, 0 bytes");
  ACTZIP_CHECK(actzip::decompress(nullptr, 0, nullptr, 0, 1).code == StatusCode::kFormatError, "null, 0 bytes");
  ACTZIP_CHECK(!actzip::read_info(nullptr, 100, &info).ok(), "null with a length");
}

// With the header checksum recomputed, every field's own check is reached. These fields
// admit no other value: any change to them must be a format error.
ACTZIP_TEST(changed_fixed_fields_are_format_errors_even_with_a_fixed_header_crc) {
  struct Field {
    const char* name;
    uint64_t offset, size;
  };
  const Field fields[] = {{"magic", 0, 4},        {"format_version", 4, 2}, {"flags", 6, 2},
                          {"header_bytes", 8, 4}, {"quant_step", 32, 4},    {"chunk_elems", 36, 4}};
  for (const Sample& s : corpus()) {
    for (const Field& f : fields)
      for (uint64_t i = f.offset; i < f.offset + f.size; ++i)
        for (int b = 0; b < 8; ++b) {
          std::vector<uint8_t> bad = s.stream;
          bad[i] ^= uint8_t(1u << b);
          fix_header_crc(&bad);
          const Outcome o = try_all(bad);
          ACTZIP_CHECK(all_format_errors(o), "%s: %s bit %d of byte %llu gave %d/%d/%d", s.name.c_str(), f.name, b,
                       (unsigned long long)i, int(o.info), int(o.valid), int(o.decoded));
        }
    // Out-of-range values of the small fields.
    struct Value {
      const char* name;
      uint64_t offset;
      uint8_t value;
    };
    const Value values[] = {{"dtype 0", 12, 0},       {"dtype 4", 12, 4},        {"dtype 255", 12, 255},
                            {"ndim 9", 13, 9},        {"ndim 255", 13, 255},     {"bound_mode 2", 14, 2},
                            {"direct_log2 11", 15, 11}, {"direct_log2 255", 15, 255}};
    for (const Value& v : values) {
      std::vector<uint8_t> bad = s.stream;
      bad[v.offset] = v.value;
      fix_header_crc(&bad);
      ACTZIP_CHECK(all_format_errors(try_all(bad)), "%s: %s accepted", s.name.c_str(), v.name);
    }
    // Bounds that are not positive finite numbers.
    for (uint64_t offset : {16u, 24u})
      for (double d : {0.0, -1.0, -0.0, std::numeric_limits<double>::infinity(),
                       std::numeric_limits<double>::quiet_NaN(), -std::numeric_limits<double>::denorm_min()}) {
        std::vector<uint8_t> bad = s.stream;
        uint64_t u;
        std::memcpy(&u, &d, 8);
        for (int k = 0; k < 8; ++k) bad[offset + uint64_t(k)] = uint8_t(u >> (8 * k));
        fix_header_crc(&bad);
        ACTZIP_CHECK(all_format_errors(try_all(bad)), "%s: bound %g at offset %llu accepted", s.name.c_str(), d,
                     (unsigned long long)offset);
      }
    // The 4 zero bytes after the header checksum.
    const uint64_t hb = header_bytes_of(s.stream);
    for (uint64_t i = hb - 4; i < hb; ++i) {
      std::vector<uint8_t> bad = s.stream;
      bad[i] = 1;
      ACTZIP_CHECK(all_format_errors(try_all(bad)), "%s: non-zero padding byte %llu accepted", s.name.c_str(),
                   (unsigned long long)i);
    }
  }
}

// The element count must stay below 2^45 (section 1), where the chunk count fits 32 bits. An
// extent grown by a multiple of 2^46 elements (2^32 chunks) would leave a 32-bit chunk count
// unchanged: the header would then describe far more elements than its chunk table covers,
// and a decoder would hand back a buffer it never wrote.
ACTZIP_TEST(element_counts_at_or_past_the_limit_are_format_errors) {
  for (const Sample& s : corpus()) {
    const uint8_t ndim = s.stream[13];
    if (ndim == 0) continue;
    const uint64_t first = get_u64_le(s.stream.data() + 40);
    for (uint64_t extent : {first + (uint64_t(1) << 46), first + (uint64_t(1) << 47), first + 3 * (uint64_t(1) << 46),
                            uint64_t(1) << 45, (uint64_t(1) << 48) - 1}) {
      std::vector<uint8_t> bad = s.stream;
      put_u64_le(bad.data() + 40, extent);
      fix_header_crc(&bad);
      const Outcome o = try_all(bad);
      ACTZIP_CHECK(o.info == StatusCode::kFormatError && o.valid == StatusCode::kFormatError,
                   "%s: first extent %llu (was %llu) gave %d/%d", s.name.c_str(), (unsigned long long)extent,
                   (unsigned long long)first, int(o.info), int(o.valid));
      std::vector<uint8_t> out(64);
      ACTZIP_CHECK(actzip::decompress(bad.data(), bad.size(), out.data(), out.size(), 1).code ==
                       StatusCode::kFormatError,
                   "%s: first extent %llu decoded", s.name.c_str(), (unsigned long long)extent);
    }
  }
}

// quant_step must be quant_step_for(error_bound) bit for bit (section 1): a header that pairs
// a bound with its step (from the reference of section 3) is read, and every other step,
// near (one ulp either way) or far (the old power-of-two step, zero, NaN, Inf, negative), is
// a format error even with the header checksum fixed.
ACTZIP_TEST(quant_step_must_equal_quant_step_for_the_error_bound) {
  std::vector<double> bounds = {std::numeric_limits<double>::denorm_min(), std::numeric_limits<double>::min(),
                                0x1p-151, 0x1p-150, 0x1p-149, 1e-44, 0x1.ffp-143, 0x1p-142, 1e-39, 1e-3, 1e-2, 0.3,
                                0.5, 1e30, 0x1.fep126, 0x1p127, 1e300, std::numeric_limits<double>::max()};
  for (int k = -150; k <= 128; k += 7)
    for (double mant : {1.0, 3.0, 127.0, 128.0, 200.0, 255.0, 255.5, 1.3}) {
      const double e = std::ldexp(mant, k - 1);  // 2e = mant * 2^k
      bounds.push_back(e);
      bounds.push_back(std::nextafter(e, 0.0));
    }
  std::vector<Sample> samples;
  for (Sample& s : corpus())
    if (s.name == "f16 normal" || s.name == "bf16 ramp 5-D") samples.push_back(s);
  ACTZIP_REQUIRE(samples.size() == 2, "corpus samples");
  auto with = [](std::vector<uint8_t> s, double bound, uint32_t step_bits) {
    uint64_t u;
    std::memcpy(&u, &bound, 8);
    for (int k = 0; k < 8; ++k) s[24 + k] = uint8_t(u >> (8 * k));
    put_u32_le(s.data() + 32, step_bits);
    fix_header_crc(&s);
    return s;
  };
  auto f32_bits = [](float f) {
    uint32_t u;
    std::memcpy(&u, &f, 4);
    return u;
  };
  for (const Sample& s : samples)
    for (double e : bounds) {
      const float step = ref_quant_step(e);
      const std::vector<uint8_t> good = with(s.stream, e, f32_bits(step));
      actzip::StreamInfo info;
      const actzip::Status st = actzip::validate(good.data(), good.size(), &info);
      ACTZIP_CHECK(st.ok() && std::memcmp(&info.quant_step, &step, 4) == 0 && info.error_bound == e,
                   "%s: bound %a with step %a: %s", s.name.c_str(), e, double(step), st.message.c_str());
      const Outcome o = try_all(good);
      ACTZIP_CHECK(o.info == StatusCode::kOk && o.valid == StatusCode::kOk && o.decoded == StatusCode::kOk,
                   "%s: bound %a with its step gave %d/%d/%d", s.name.c_str(), e, int(o.info), int(o.valid),
                   int(o.decoded));
      int two_e_exp = 0;
      std::frexp(e, &two_e_exp);  // 2e in [2^k, 2^(k+1)) with k = this exponent
      const float power_of_two = std::ldexp(1.0f, std::max(-149, std::min(127, two_e_exp)));
      const float wrong[] = {std::nextafter(step, 0.0f), std::nextafter(step, HUGE_VALF), power_of_two, 0.0f, -step,
                             2 * step, std::numeric_limits<float>::infinity(),
                             std::numeric_limits<float>::quiet_NaN()};
      for (float w : wrong) {
        if (f32_bits(w) == f32_bits(step)) continue;  // the power of two may be the step itself
        const Outcome bad = try_all(with(s.stream, e, f32_bits(w)));
        ACTZIP_CHECK(all_format_errors(bad), "%s: bound %a with step %a (not %a) gave %d/%d/%d", s.name.c_str(), e,
                     double(w), double(step), int(bad.info), int(bad.valid), int(bad.decoded));
      }
    }
}

// Any change to any header byte, made consistent with the header checksum, is either
// accepted or a format error: never a crash, never another status.
ACTZIP_TEST(header_changes_with_a_fixed_crc_never_crash) {
  for (const Sample& s : corpus()) {
    const uint64_t hb = header_bytes_of(s.stream);
    for (uint64_t i = 0; i + 8 < hb; ++i) {
      const uint8_t orig = s.stream[i];
      const uint8_t variants[] = {uint8_t(orig ^ 1),  uint8_t(orig ^ 2),   uint8_t(orig ^ 4),   uint8_t(orig ^ 8),
                                  uint8_t(orig ^ 16), uint8_t(orig ^ 32),  uint8_t(orig ^ 64),  uint8_t(orig ^ 128),
                                  0,                  0xFF,                uint8_t(orig + 1),   uint8_t(orig - 1),
                                  0x7F,               0x80,                uint8_t(orig + 8),   uint8_t(orig - 8)};
      for (uint8_t v : variants) {
        if (v == orig) continue;
        std::vector<uint8_t> bad = s.stream;
        bad[i] = v;
        fix_header_crc(&bad);
        const Outcome o = try_all(bad);
        ACTZIP_CHECK(ok_or_format_error(o.info) && ok_or_format_error(o.valid) && ok_or_format_error(o.decoded),
                     "%s: byte %llu = 0x%02x gave %d/%d/%d", s.name.c_str(), (unsigned long long)i, v, int(o.info),
                     int(o.valid), int(o.decoded));
        // What validate() accepts, decompress() must not find malformed in the header.
        if (o.info == StatusCode::kFormatError)
          ACTZIP_CHECK(o.valid == StatusCode::kFormatError && o.decoded == StatusCode::kFormatError,
                       "%s: byte %llu = 0x%02x: read_info rejects but others accept", s.name.c_str(),
                       (unsigned long long)i, v);
      }
    }
  }
}

ACTZIP_TEST(every_payload_bit_flip_fails_the_payload_checksum) {
  for (const Sample& s : corpus()) {
    if (!s.checksum) continue;
    const uint64_t hb = header_bytes_of(s.stream);
    const uint64_t stride = s.stream.size() - hb > 8000 ? 5 : 1;
    for (uint64_t i = hb; i < s.stream.size(); i += (s.stream.size() - i <= 64 ? 1 : stride))
      for (int b = 0; b < 8; ++b) {
        std::vector<uint8_t> bad = s.stream;
        bad[i] ^= uint8_t(1u << b);
        const Outcome o = try_all(bad);
        ACTZIP_CHECK(o.info == StatusCode::kOk, "%s: read_info looks only at the header", s.name.c_str());
        ACTZIP_CHECK(o.valid == StatusCode::kFormatError && o.decoded == StatusCode::kFormatError,
                     "%s: bit %d of payload byte %llu gave %d/%d", s.name.c_str(), b, (unsigned long long)i,
                     int(o.valid), int(o.decoded));
      }
  }
}

// A non-negative integer from the environment, or `fallback` where the variable is unset;
// false (and a message) for anything else.
bool env_count(const char* name, uint64_t fallback, uint64_t* value) {
  const char* text = std::getenv(name);
  *value = fallback;
  if (text == nullptr || *text == '\0') return true;
  char* end = nullptr;
  errno = 0;
  const unsigned long long parsed = std::strtoull(text, &end, 10);
  if (errno != 0 || *end != '\0' || *text == '-') {
    std::fprintf(stderr, "%s=%s is not a non-negative integer\n", name, text);
    return false;
  }
  *value = parsed;
  return true;
}

// Without a payload checksum the decoder meets the damage itself: chunk headers, Huffman
// sections, outlier lists. It must report a format error or decode, never crash.
// ACTZIP_FUZZ_SEED and ACTZIP_FUZZ_TRIALS (default 99 and 3000 a stream) run a longer or
// different random campaign, best in the sanitizer build:
//   ACTZIP_FUZZ_SEED=7 ACTZIP_FUZZ_TRIALS=100000 ctest --test-dir build/asan -R format
ACTZIP_TEST(payload_corruption_without_checksum_never_crashes) {
  uint64_t seed = 0, trials = 0;
  ACTZIP_REQUIRE(env_count("ACTZIP_FUZZ_SEED", 99, &seed), "ACTZIP_FUZZ_SEED");
  ACTZIP_REQUIRE(env_count("ACTZIP_FUZZ_TRIALS", 3000, &trials), "ACTZIP_FUZZ_TRIALS");
  std::mt19937_64 rng(seed);
  for (const Sample& s : corpus()) {
    if (s.checksum) continue;
    const uint64_t hb = header_bytes_of(s.stream);
    if (s.stream.size() == hb) continue;
    const std::vector<ChunkAt> chunks = chunks_of(s.stream);
    ACTZIP_REQUIRE(!chunks.empty(), "%s", s.name.c_str());
    const bool rows_2d = rows_allow_2d(s.stream);
    // Every bit of every chunk header.
    for (uint32_t c = 0; c < chunks.size(); ++c) {
      const ChunkAt& ch = chunks[c];
      const uint64_t start = ch.start;
      for (uint64_t i = start; i < start + 16 && i < s.stream.size(); ++i)
        for (int b = 0; b < 8; ++b) {
          std::vector<uint8_t> bad = s.stream;
          bad[i] ^= uint8_t(1u << b);
          const Outcome o = try_all(bad);
          ACTZIP_CHECK(o.info == StatusCode::kOk && ok_or_format_error(o.valid) && ok_or_format_error(o.decoded),
                       "%s: chunk %u header byte %llu bit %d: %d/%d/%d", s.name.c_str(), c,
                       (unsigned long long)(i - start), b, int(o.info), int(o.valid), int(o.decoded));
          // Reserved bytes and the flags are checked by validate() itself: unknown bits, flags
          // on a raw or zero chunk, both predictors, 2-D prediction where the rows do not allow
          // it. A flip of bit 0 or 2 that names another valid predictor, or of bit 3 (the zero
          // map), may decode (to other values) or not; one that leaves a sign stream without a
          // Lorenzo predictor must not.
          const uint8_t flags = bad[start + 1];
          const bool header_rule = i - start == 2 || i - start == 3 ||
                                   (i - start == 1 && (ch.kind != 1 || (flags & ~15) || (flags & 5) == 5 ||
                                                       ((flags & 4) && !rows_2d)));
          const bool orphan_signs = i - start == 1 && ch.kind == 1 && (flags & 5) == 0 && ch.sign_bytes != 0;
          if (header_rule)
            ACTZIP_CHECK(o.valid == StatusCode::kFormatError && o.decoded == StatusCode::kFormatError,
                         "%s: chunk %u byte %llu bit %d accepted", s.name.c_str(), c,
                         (unsigned long long)(i - start), b);
          if (orphan_signs)
            ACTZIP_CHECK(o.decoded == StatusCode::kFormatError,
                         "%s: chunk %u: flags 0x%02x with a sign stream of %u bytes decoded", s.name.c_str(), c, flags,
                         ch.sign_bytes);
        }
    }
    // Random bit flips, byte stores and short overwrites anywhere in the payload.
    for (uint64_t trial = 0; trial < trials; ++trial) {
      std::vector<uint8_t> bad = s.stream;
      const int edits = 1 + int(rng() % 4);
      for (int e = 0; e < edits; ++e) {
        const uint64_t i = hb + rng() % (bad.size() - hb);
        switch (rng() % 3) {
          case 0: bad[i] ^= uint8_t(1u << (rng() % 8)); break;
          case 1: bad[i] = uint8_t(rng()); break;
          default:
            for (uint64_t j = i; j < std::min<uint64_t>(bad.size(), i + 1 + rng() % 16); ++j) bad[j] = uint8_t(rng());
        }
      }
      const Outcome o = try_all(bad, trial % 100 == 0 ? 3 : 1);  // a few decoded on several threads
      ACTZIP_CHECK(ok_or_format_error(o.valid) && ok_or_format_error(o.decoded), "%s: seed %llu trial %llu gave %d/%d",
                   s.name.c_str(), (unsigned long long)seed, (unsigned long long)trial, int(o.valid), int(o.decoded));
    }
  }
}

// The rules of the predictors and the sign stream (docs/FORMAT.md sections 2 and 3), broken
// one at a time on every coded chunk of the corpus, with both checksums fixed so that the
// rule itself is what the decoder meets. Chunk-header rules are validate()'s too; the code
// section's are the decoder's.
ACTZIP_TEST(broken_predictor_and_sign_stream_rules_are_format_errors) {
  uint32_t seen_plain = 0, seen_lorenzo_signs = 0, seen_2d_signs = 0, seen_2d = 0;
  for (const Sample& s : corpus()) {
    const std::vector<ChunkAt> chunks = chunks_of(s.stream);
    const bool rows_2d = rows_allow_2d(s.stream);
    std::vector<uint8_t> decoded;
    ACTZIP_REQUIRE(decode(s.stream, &decoded).ok(), "%s", s.name.c_str());
    for (uint32_t c = 0; c < chunks.size(); ++c) {
      const ChunkAt& ch = chunks[c];
      if (ch.kind != 1) continue;
      auto with_flags = [&](uint8_t flags) {
        std::vector<uint8_t> bad = s.stream;
        bad[ch.start + 1] = flags;
        fix_payload_crc(&bad);
        return bad;
      };
      auto header_rule_broken = [&](const std::vector<uint8_t>& bad, const char* rule) {
        const Outcome o = try_all(bad);
        ACTZIP_CHECK(o.info == StatusCode::kOk && o.valid == StatusCode::kFormatError &&
                         o.decoded == StatusCode::kFormatError,
                     "%s: chunk %u: %s gave %d/%d/%d", s.name.c_str(), c, rule, int(o.info), int(o.valid),
                     int(o.decoded));
      };
      auto section_rule_broken = [&](const std::vector<uint8_t>& bad, const char* rule) {
        const Outcome o = try_all(bad);
        ACTZIP_CHECK(o.info == StatusCode::kOk && ok_or_format_error(o.valid) && o.decoded == StatusCode::kFormatError,
                     "%s: chunk %u: %s gave %d/%d/%d", s.name.c_str(), c, rule, int(o.info), int(o.valid),
                     int(o.decoded));
      };
      // Bits 0 and 2 both set; bit 2 where the last extent is not 2 to 128.
      header_rule_broken(with_flags(uint8_t(ch.flags | 5)), "both predictor bits");
      if (!rows_2d) header_rule_broken(with_flags(uint8_t((ch.flags & ~1) | 4)), "2-D prediction over these rows");
      const bool predicted = (ch.flags & 5) != 0;
      seen_2d += (ch.flags & 4) != 0;
      if (ch.code_bytes == 0) continue;
      seen_plain += !predicted;
      seen_lorenzo_signs += (ch.flags & 1) && ch.sign_bytes > 0;
      seen_2d_signs += (ch.flags & 4) && ch.sign_bytes > 0;
      // The reserved table field, every bit of it.
      for (int k = 0; k < 32; ++k) {
        std::vector<uint8_t> bad = s.stream;
        put_u32_le(bad.data() + ch.code + 20, 1u << k);
        fix_payload_crc(&bad);
        section_rule_broken(bad, "a non-zero reserved table field");
      }
      // sign_bytes that does not add up with the lanes to code_bytes.
      for (int64_t d : {-8, -1, 1, 4, 8, 16}) {
        if (int64_t(ch.sign_bytes) + d < 0) continue;
        std::vector<uint8_t> bad = s.stream;
        put_u32_le(bad.data() + ch.code + 16, uint32_t(int64_t(ch.sign_bytes) + d));
        fix_payload_crc(&bad);
        section_rule_broken(bad, "sign_bytes changed alone");
      }
      // A sign stream without a Lorenzo predictor, or longer than its bits need.
      section_rule_broken(resize_sign_stream(s.stream, c, 8),
                          predicted ? "8 more sign-stream bytes" : "a sign stream without a predictor");
      section_rule_broken(resize_sign_stream(s.stream, c, 16), "16 more sign-stream bytes");
      // A sign stream too short for its bits.
      if (ch.sign_bytes >= 8) section_rule_broken(resize_sign_stream(s.stream, c, -8), "8 sign-stream bytes fewer");
      if (ch.sign_bytes >= 16)
        section_rule_broken(resize_sign_stream(s.stream, c, -int64_t(ch.sign_bytes)), "no sign stream");
      // A Lorenzo chunk's predictor swapped for no prediction leaves its sign stream orphaned.
      if (predicted && ch.sign_bytes > 0) section_rule_broken(with_flags(uint8_t(ch.flags & ~5)), "no predictor");
      // The sign stream is what gives a q = 0 its sign: flipping its first bit flips the sign
      // of one element (the chunk's first coded q = 0) and nothing else.
      if (ch.sign_bytes > 0) {
        std::vector<uint8_t> flipped = s.stream;
        flipped[ch.code + ch.code_bytes - ch.sign_bytes] ^= 1;
        fix_payload_crc(&flipped);
        std::vector<uint8_t> out;
        const actzip::Status st = decode(flipped, &out);
        ACTZIP_REQUIRE(st.ok() && out.size() == decoded.size(), "%s: chunk %u: a flipped sign bit: %s",
                       s.name.c_str(), c, st.message.c_str());
        actzip::StreamInfo info;
        ACTZIP_REQUIRE(actzip::read_info(s.stream.data(), s.stream.size(), &info).ok(), "read_info");
        const size_t elem = actzip::element_size(info.dtype);
        uint64_t changed = 0, first = 0;
        bool only_sign = true;
        for (uint64_t e = 0; e < info.numel; ++e) {
          if (std::memcmp(out.data() + e * elem, decoded.data() + e * elem, elem) == 0) continue;
          if (changed++ == 0) first = e;
          for (size_t k = 0; k < elem; ++k)  // little-endian: the sign is bit 7 of the last byte
            only_sign &= (out[e * elem + k] ^ decoded[e * elem + k]) == (k + 1 == elem ? 0x80 : 0);
        }
        ACTZIP_CHECK(changed == 1 && only_sign && first / actzip::kChunkElems == c,
                     "%s: chunk %u: a flipped sign bit changed %llu elements (sign only: %d)", s.name.c_str(), c,
                     (unsigned long long)changed, int(only_sign));
      }
    }
  }
  // The corpus has every kind of chunk these rules are about.
  ACTZIP_CHECK(seen_plain > 0 && seen_lorenzo_signs > 0 && seen_2d_signs > 0 && seen_2d > 1,
               "corpus: %u plain, %u Lorenzo with signs, %u 2-D with signs, %u 2-D chunks", seen_plain,
               seen_lorenzo_signs, seen_2d_signs, seen_2d);
}

// A 2-D chunk whose stream's shape is changed (same element count, header checksum fixed) to
// rows of 1 or of more than 128 is malformed, and validate() sees it in the chunk headers;
// changed to other rows of 2 to 128 it is valid (and decodes to other values, or fails).
// The zero map's rules (docs/FORMAT.md section 2) broken one at a time, with the payload
// checksum fixed: the flag without a map, a map without the flag, a map whose length does
// not add up.
ACTZIP_TEST(broken_zero_map_rules_are_format_errors) {
  uint32_t seen_mapped = 0, seen_unmapped = 0;
  for (const Sample& s : corpus()) {
    const std::vector<ChunkAt> chunks = chunks_of(s.stream);
    for (uint32_t c = 0; c < chunks.size(); ++c) {
      const ChunkAt& ch = chunks[c];
      if (ch.kind != 1 || ch.code_bytes == 0) continue;
      auto expect_error = [&](std::vector<uint8_t> bad, const char* what) {
        fix_payload_crc(&bad);
        std::vector<uint8_t> out;
        const actzip::Status st = decode(bad, &out);
        ACTZIP_CHECK(st.code == StatusCode::kFormatError, "%s chunk %u: %s decoded (%s)", s.name.c_str(), c, what,
                     st.message.c_str());
      };
      std::vector<uint8_t> bad = s.stream;
      if (ch.flags & 8) {
        ++seen_mapped;
        ACTZIP_CHECK(ch.zmap_bytes > 0, "%s chunk %u: a zero map of 0 bytes", s.name.c_str(), c);
        bad[ch.start + 1] = uint8_t(ch.flags & ~8);
        expect_error(bad, "a map without the flag");
        bad = s.stream;
        put_u32_le(bad.data() + ch.code + 20, ch.zmap_bytes + 8);
        expect_error(bad, "a map 8 bytes longer than the section has room for");
        bad = s.stream;
        put_u32_le(bad.data() + ch.code + 20, ch.zmap_bytes - 8);
        expect_error(bad, "a map 8 bytes shorter");
      } else {
        ++seen_unmapped;
        ACTZIP_CHECK(ch.zmap_bytes == 0, "%s chunk %u: zmap_bytes without a zero map", s.name.c_str(), c);
        bad[ch.start + 1] = uint8_t(ch.flags | 8);
        expect_error(bad, "the flag without a map");
      }
    }
  }
  ACTZIP_CHECK(seen_mapped > 0 && seen_unmapped > 0, "the corpus lacks chunks with (%u) or without (%u) zero maps",
               seen_mapped, seen_unmapped);
}

ACTZIP_TEST(two_d_chunks_in_a_shape_that_does_not_allow_them_are_format_errors) {
  for (const Sample& s : corpus()) {
    if (s.name != "f32 waves 2-D") continue;
    const std::vector<ChunkAt> chunks = chunks_of(s.stream);
    ACTZIP_REQUIRE(chunks.size() == 1 && (chunks[0].flags & 4), "%s: flags 0x%02x", s.name.c_str(),
                   chunks.empty() ? 0 : chunks[0].flags);
    const std::vector<std::vector<uint64_t>> shapes = {{2, 4, 1024, 1}, {2, 4, 4, 256}, {1, 1, 1, 8192},
                                                       {2, 4, 64, 16}, {8, 1, 8, 128}, {1, 1, 4096, 2}};
    for (const auto& shape : shapes) {
      std::vector<uint8_t> bad = s.stream;
      for (size_t k = 0; k < 4; ++k) put_u64_le(bad.data() + 40 + 8 * k, shape[k]);
      fix_header_crc(&bad);
      const Outcome o = try_all(bad);
      if (shape[3] >= 2 && shape[3] <= 128) {
        // Other rows the 2-D predictor may use: valid, decoding to other values.
        ACTZIP_CHECK(o.info == StatusCode::kOk && o.valid == StatusCode::kOk && ok_or_format_error(o.decoded),
                     "rows of %llu: %d/%d/%d", (unsigned long long)shape[3], int(o.info), int(o.valid),
                     int(o.decoded));
      } else {
        ACTZIP_CHECK(o.info == StatusCode::kOk && o.valid == StatusCode::kFormatError &&
                         o.decoded == StatusCode::kFormatError,
                     "rows of %llu: %d/%d/%d", (unsigned long long)shape[3], int(o.info), int(o.valid),
                     int(o.decoded));
      }
    }
  }
}

// A valid stream whose 2-D chunks start mid-row, made without the encoder: rows of 32 over two
// chunks (each chunk starts at column 0), then the shape changed to rows that do not divide
// 16384, so that the second chunk starts mid-row. Still valid: it must decode (or report a q
// out of range), reading nothing outside the chunk, on one thread or several.
ACTZIP_TEST(two_d_chunks_starting_mid_row_decode_without_reading_outside_the_chunk) {
  const Tensor t = make_tensor("", DType::kFloat32, {768, 32}, Fill::kWaves, 14);
  const Compressed z = compress(t, 1e-2);
  ACTZIP_REQUIRE(z.status.ok(), "%s", z.status.message.c_str());
  const std::vector<ChunkAt> chunks = chunks_of(z.stream);
  ACTZIP_REQUIRE(chunks.size() == 2 && (chunks[0].flags & 4) && (chunks[1].flags & 4), "2-D chunks");
  for (uint64_t row : {96ull, 48ull, 12ull, 3ull, 2ull, 64ull, 128ull}) {
    std::vector<uint8_t> s = z.stream;
    put_u64_le(s.data() + 40, t.numel() / row);
    put_u64_le(s.data() + 48, row);
    fix_header_crc(&s);
    const Outcome one = try_all(s, 1), many = try_all(s, 2);
    ACTZIP_CHECK(one.info == StatusCode::kOk && one.valid == StatusCode::kOk && ok_or_format_error(one.decoded),
                 "rows of %llu: %d/%d/%d", (unsigned long long)row, int(one.info), int(one.valid), int(one.decoded));
    ACTZIP_CHECK(many.decoded == one.decoded, "rows of %llu: threads disagree", (unsigned long long)row);
  }
}

ACTZIP_TEST(decompress_into_a_short_buffer_is_refused) {
  for (const Sample& s : corpus()) {
    actzip::StreamInfo info;
    ACTZIP_REQUIRE(actzip::read_info(s.stream.data(), s.stream.size(), &info).ok(), "%s", s.name.c_str());
    const uint64_t need = info.numel * actzip::element_size(info.dtype);
    if (need == 0) continue;
    std::vector<uint8_t> out(need - 1);
    const actzip::Status st = actzip::decompress(s.stream.data(), s.stream.size(), out.data(), out.size(), 1);
    ACTZIP_CHECK(st.code == StatusCode::kBufferTooSmall, "%s: %d %s", s.name.c_str(), int(st.code),
                 st.message.c_str());
    ACTZIP_CHECK(actzip::decompress(s.stream.data(), s.stream.size(), nullptr, need, 1).code ==
                     StatusCode::kBufferTooSmall,
                 "%s: null output", s.name.c_str());
  }
}

}  // namespace
