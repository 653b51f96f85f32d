// The stream format (docs/FORMAT.md) from the outside: CRC-32 against known vectors, streams
// made through the public API, then corrupted field by field, bit by bit, truncated at every
// length: read_info(), validate() and decompress() must answer kFormatError (or, for damage
// the format cannot see, decode without touching memory they do not own), never crash.
#include <algorithm>
#include <cmath>
#include <cstdint>
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

// Without a payload checksum the decoder meets the damage itself: chunk headers, Huffman
// sections, outlier lists. It must report a format error or decode, never crash.
ACTZIP_TEST(payload_corruption_without_checksum_never_crashes) {
  std::mt19937_64 rng(99);
  for (const Sample& s : corpus()) {
    if (s.checksum) continue;
    const uint64_t hb = header_bytes_of(s.stream);
    if (s.stream.size() == hb) continue;
    actzip::StreamInfo info;
    ACTZIP_REQUIRE(actzip::read_info(s.stream.data(), s.stream.size(), &info).ok(), "%s", s.name.c_str());
    // Every bit of every chunk header.
    uint64_t start = hb;
    for (uint32_t c = 0; c < info.num_chunks; ++c) {
      for (uint64_t i = start; i < start + 16 && i < s.stream.size(); ++i)
        for (int b = 0; b < 8; ++b) {
          std::vector<uint8_t> bad = s.stream;
          bad[i] ^= uint8_t(1u << b);
          const Outcome o = try_all(bad);
          ACTZIP_CHECK(o.info == StatusCode::kOk && ok_or_format_error(o.valid) && ok_or_format_error(o.decoded),
                       "%s: chunk %u header byte %llu bit %d: %d/%d/%d", s.name.c_str(), c,
                       (unsigned long long)(i - start), b, int(o.info), int(o.valid), int(o.decoded));
          // Reserved bytes and unknown flag bits are checked by validate() itself.
          if (i - start == 2 || i - start == 3 || (i - start == 1 && b >= 2))
            ACTZIP_CHECK(o.valid == StatusCode::kFormatError && o.decoded == StatusCode::kFormatError,
                         "%s: chunk %u byte %llu bit %d accepted", s.name.c_str(), c,
                         (unsigned long long)(i - start), b);
        }
      const uint8_t* end_field = s.stream.data() + hb - 8 - 8 * uint64_t(info.num_chunks) + 8 * uint64_t(c);
      start = hb + (uint64_t(get_u32_le(end_field)) | (uint64_t(get_u32_le(end_field + 4)) << 32));
    }
    // Random bit flips, byte stores and short overwrites anywhere in the payload.
    for (int trial = 0; trial < 3000; ++trial) {
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
      ACTZIP_CHECK(ok_or_format_error(o.valid) && ok_or_format_error(o.decoded), "%s: trial %d gave %d/%d",
                   s.name.c_str(), trial, int(o.valid), int(o.decoded));
    }
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
