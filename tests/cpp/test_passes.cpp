// The whole-chunk passes of the CPU backend (cpp/cpu/passes.h) against the per-element
// definitions of cpp/codec/element.h, on their AVX2/BMI2 paths where the CPU has them and
// on their portable loops; and, through the public API, the exact 2-D decoder that chunks
// with clamped predictions fall back to.
#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <random>
#include <vector>

#include "actzip/actzip.h"
#include "codec/bitio.h"
#include "codec/chunk.h"
#include "codec/element.h"
#include "codec/huffman.h"
#include "codec/plan.h"
#include "cpu/passes.h"
#include "harness.h"

namespace {

using namespace actzip::detail;

// Runs body() on the dispatched paths, on the AVX2 ones with table bit gathering (where
// pext is fast they are otherwise not taken), then on the portable ones.
template <class Body>
void on_both_paths(Body body) {
  for (int path = 0; path < 3; ++path) {
    force_portable_passes(path == 2);
    force_table_bits(path == 1);
    body(path == 2);
  }
  force_table_bits(false);
  force_portable_passes(false);
}

// Codes of a chunk: mostly small, some zeros and outliers when `sparse`.
std::vector<int32_t> random_codes(std::mt19937& rng, uint32_t n, bool sparse, int32_t spread) {
  std::vector<int32_t> codes(n);
  std::uniform_int_distribution<int32_t> mag(1, spread);
  std::uniform_int_distribution<int> pick(0, 9);
  for (auto& c : codes) {
    const int k = pick(rng);
    if (sparse && k < 3) c = 0;
    else if (sparse && k == 3) c = kOutlierCode;
    else c = (k & 1) ? -mag(rng) : mag(rng);
    if (pick(rng) == 0) c = (k & 1) ? -1 : 1;  // plenty of q = 0
  }
  return codes;
}

int32_t q_of(int32_t c) { return c == kOutlierCode ? 0 : code_to_q(c); }
bool is_coded(int32_t c) { return c != 0 && c != kOutlierCode; }

const uint32_t kSizes[] = {1, 7, 8, 31, 32, 33, 100, 1000, 16384};

ACTZIP_TEST(sample_runs_stay_in_their_stretch_and_vary_their_offset) {
  for (uint32_t elems = 1; elems <= actzip::kChunkElems; ++elems) {
    const uint32_t runs = sample_runs(elems), stride = sample_stride(elems);
    uint32_t end = 0;
    for (uint32_t r = 0; r < runs; ++r) {
      const SampleRunSpan sp = sample_run_span(elems, r, 0);
      ACTZIP_CHECK(sp.first % 8 == 0 && sp.first >= end && sp.n >= 1 && sp.first + sp.n <= elems,
                   "elems=%u run %u: [%u, %u) after %u", elems, r, sp.first, sp.first + sp.n, end);
      ACTZIP_CHECK(elems <= kSampleElems || (sp.first >= r * stride && sp.first + sp.n <= (r + 1) * stride),
                   "elems=%u run %u leaves its stretch", elems, r);
      end = sp.first + sp.n;
    }
    // Small chunks are sampled whole.
    if (elems <= kSampleElems) ACTZIP_CHECK(end == elems, "elems=%u: sampled %u", elems, end);
  }
  // In a full chunk the runs fall at many offsets of a 1024-element plane, and in many of
  // its 32 rows, rather than all at the same one.
  uint32_t rows_seen = 0;
  for (uint32_t r = 0; r < kSampleRuns; ++r) rows_seen |= 1u << (sample_run_span(actzip::kChunkElems, r, 32).first % 1024 / 32);
  ACTZIP_CHECK(__builtin_popcount(rows_seen) >= 10, "runs start in only %d rows of a plane", __builtin_popcount(rows_seen));
}

ACTZIP_TEST(sampled_counts_and_choice_match_chunk_h) {
  // Whole chunks sampled both ways, over spans and columns as plan_compress makes them:
  // the same histograms, mask counts, costs and predictor.
  std::mt19937 rng(11);
  const float* nlog2n = actzip::detail::nlog2n_table().data();
  on_both_paths([&](bool portable) {
    for (uint32_t row : {0u, 2u, 3u, 7u, 100u, 127u, 128u}) {
      for (uint32_t elems : {1u, 5u, 64u, 65u, 1000u, 1024u, 1500u, 16384u}) {
        for (int32_t spread : {3, 40, 3000, (1 << 23) - 1}) {
          for (bool sparse : {false, true}) {
            const uint64_t chunk_begin = uint64_t(rng() % 7) * 16384;
            auto codes = random_codes(rng, elems, sparse, spread);
            if (spread == (1 << 23) - 1)  // extremes of q, so that 2-D predictions clamp
              for (auto& c : codes)
                if (is_coded(c) && (rng() & 1)) c = (c < 0) ? -(kMaxQ + 1) : kMaxQ + 1;
            PredictorHist ph;
            std::memset(&ph, 0, sizeof ph);
            std::vector<uint64_t> mask_ref(256, 0), mask_new(256, 0);
            LocalSampleCount<uint64_t> count{&ph, mask_ref.data()};
            static SampleTally tally;
            tally.clear();
            for (uint32_t r = 0; r < sample_runs(elems); ++r) {
              const SampleRunSpan sp = sample_run_span(elems, r, row);
              const int32_t* window = codes.data() + sp.first - sp.context;
              const uint32_t col0 = row ? uint32_t((chunk_begin + sp.first) % row) : 0;
              sample_run(window, sp.context, sp.n, sp.first, col0, row, count);
              // The middle of a long row of context is not read: scribble over it.
              std::vector<int32_t> scribbled(window, window + sp.context + sp.n);
              if (sp.context == row + 1)
                for (uint32_t i = sp.n + 1; i < row; ++i) scribbled[i] = int32_t(rng());
              sample_run_counts(scribbled.data(), sp.context, sp.n, sp.first, col0, row, &tally, mask_new.data());
            }
            bool same = ph.sign_bits == tally.sign_bits && ph.coded == tally.coded && mask_ref == mask_new;
            for (uint32_t b = 0; b < kFineAlphabet; ++b)
              same &= ph.none[b] == tally.none[b] && ph.lor[b] == tally.lor[b] &&
                      (!row || ph.lor2d[b] == tally.lor2d[b]);
            std::vector<uint64_t> zmap[3];
            for (uint32_t p = 0; p < (row ? 3u : 2u); ++p) {
              zmap[p].assign(256, 0);
              sampled_zmap_bytes(tally, p, zmap[p].data());
              same &= std::equal(ph.zmap[p], ph.zmap[p] + 256, zmap[p].begin());
            }
            ACTZIP_CHECK(same, "row=%u elems=%u spread=%d sparse=%d: counts differ", row, elems, spread, int(sparse));
            // Every coded value makes one map bit; a run's last byte counts partly filled.
            uint64_t map_bytes = 0;
            for (uint32_t b = 0; b < 256; ++b) map_bytes += zmap[0][b];
            ACTZIP_CHECK(map_bytes >= (tally.coded + 7) / 8 && map_bytes <= tally.coded / 8 + sample_runs(elems),
                         "row=%u elems=%u: %llu map bytes for %u coded values", row, elems,
                         (unsigned long long)map_bytes, tally.coded);
            const uint32_t *chosen_ref = nullptr, *chosen_new = nullptr;
            const uint8_t ref = choose_predictor(ph, row != 0, nlog2n, &chosen_ref);
            const uint8_t got = choose_sampled_predictor(tally, row != 0, nlog2n, &chosen_new);
            ACTZIP_CHECK(ref == got, "row=%u elems=%u spread=%d portable=%d: predictor %d, expected %d", row, elems,
                         spread, int(portable), got, ref);
            ACTZIP_CHECK(std::equal(chosen_ref, chosen_ref + kFineAlphabet, chosen_new), "chosen histograms differ");
          }
        }
      }
    }
  });
}

ACTZIP_TEST(outlier_positions_lists_every_outlier_in_order) {
  std::mt19937 rng(5);
  on_both_paths([&](bool portable) {
    for (uint32_t n : kSizes) {
      const auto codes = random_codes(rng, n, true, 50);
      std::vector<uint16_t> expected;
      for (uint32_t i = 0; i < n; ++i)
        if (codes[i] == kOutlierCode) expected.push_back(uint16_t(i));
      std::vector<uint16_t> pos(n + 1, 0xEEEE);
      const uint32_t count = outlier_positions(codes.data(), n, pos.data());
      pos.resize(count);
      ACTZIP_CHECK(pos == expected, "n=%u portable=%d", n, int(portable));
    }
  });
}

ACTZIP_TEST(compact_and_expand_match_the_mask) {
  std::mt19937 rng(1);
  on_both_paths([&](bool portable) {
    for (uint32_t n : kSizes) {
      const auto codes = random_codes(rng, n, true, 50);
      std::vector<uint32_t> values(n + 8);
      for (uint32_t i = 0; i < n; ++i) values[i] = 1000 + i;
      std::vector<uint8_t> mask((n + 7) / 8, 0xEE);
      const uint32_t kept = compact_coded(codes.data(), n, values.data(), mask.data());
      uint32_t t = 0;
      for (uint32_t i = 0; i < n; ++i) {
        const bool coded = is_coded(codes[i]);
        ACTZIP_CHECK(((mask[i / 8] >> (i % 8)) & 1u) == uint32_t(coded), "portable=%d n=%u i=%u", portable, n, i);
        if (coded) {
          ACTZIP_CHECK(values[t] == 1000 + i, "portable=%d n=%u t=%u", portable, n, t);
          ++t;
        }
      }
      ACTZIP_CHECK(kept == t, "portable=%d n=%u kept=%u t=%u", portable, n, kept, t);
      if (n % 8) ACTZIP_CHECK((mask.back() >> (n % 8)) == 0, "portable=%d n=%u: bits past the end", portable, n);
      std::vector<uint32_t> grid(n);
      expand_coded(values.data(), mask.data(), n, grid.data());
      for (uint32_t i = 0; i < n; ++i)
        ACTZIP_CHECK(grid[i] == (is_coded(codes[i]) ? 1000 + i : kUncodedValue), "portable=%d n=%u i=%u", portable, n,
                     i);
    }
  });
}

ACTZIP_TEST(compact_and_expand_nonzero_match_the_zero_map) {
  std::mt19937 rng(3);
  on_both_paths([&](bool portable) {
    for (uint32_t n : kSizes) {
      for (uint32_t zero_share : {0u, 3u, 7u, 10u}) {  // tenths of the values that are 0
        std::vector<uint32_t> orig(n);
        for (uint32_t i = 0; i < n; ++i) orig[i] = rng() % 10 < zero_share ? 0u : 1 + rng() % 5000;
        std::vector<uint32_t> values(orig);
        values.resize(n + 8, 0xDDDDDDDDu);
        std::vector<uint8_t> map((n + 7) / 8, 0xEE);
        const uint32_t kept = compact_nonzero(values.data(), n, map.data());
        uint32_t t = 0;
        for (uint32_t i = 0; i < n; ++i) {
          const bool carried = orig[i] != 0;
          ACTZIP_CHECK(((map[i / 8] >> (i % 8)) & 1u) == uint32_t(carried), "portable=%d n=%u i=%u", portable, n, i);
          if (carried) {
            ACTZIP_CHECK(values[t] == orig[i], "portable=%d n=%u t=%u", portable, n, t);
            ++t;
          }
        }
        ACTZIP_CHECK(kept == t, "portable=%d n=%u kept=%u t=%u", portable, n, kept, t);
        if (n % 8) ACTZIP_CHECK((map.back() >> (n % 8)) == 0, "portable=%d n=%u: bits past the end", portable, n);
        std::vector<uint32_t> out(n, 0xCCCCCCCCu);
        expand_nonzero(values.data(), map.data(), n, out.data());
        ACTZIP_CHECK(out == orig, "portable=%d n=%u zero share %u: expanded values differ", portable, n, zero_share);
      }
    }
  });
}

ACTZIP_TEST(sign_stream_holds_the_signs_of_q_zero_in_order) {
  std::mt19937 rng(2);
  on_both_paths([&](bool portable) {
    for (uint32_t n : kSizes) {
      const auto codes = random_codes(rng, n, true, 3);
      std::vector<uint8_t> out(n / 8 + 16, 0xAB);
      const uint64_t bytes = write_sign_stream(codes.data(), n, out.data());
      std::vector<int> expect;
      for (int32_t c : codes)
        if (c == 1 || c == -1) expect.push_back(c < 0);
      ACTZIP_CHECK(bytes == (expect.size() + 7) / 8, "portable=%d n=%u bytes=%llu", portable, n,
                   (unsigned long long)bytes);
      for (size_t b = 0; b < expect.size(); ++b)
        ACTZIP_CHECK(((out[b / 8] >> (b % 8)) & 1) == expect[b], "portable=%d n=%u bit %zu", portable, n, b);
      if (expect.size() % 8)
        ACTZIP_CHECK((out[expect.size() / 8] >> (expect.size() % 8)) == 0, "portable=%d n=%u: padding", portable, n);
    }
  });
}

ACTZIP_TEST(q_to_w_takes_signs_for_coded_zeros_only) {
  std::mt19937 rng(3);
  on_both_paths([&](bool portable) {
    for (uint32_t n : kSizes) {
      for (bool masked : {false, true}) {
        const auto codes = random_codes(rng, n, masked, 3);
        std::vector<int32_t> q(n);
        std::vector<uint32_t> coded_if(n);
        for (uint32_t i = 0; i < n; ++i) {
          q[i] = q_of(codes[i]);
          coded_if[i] = is_coded(codes[i]) ? 7u : kUncodedValue;
        }
        std::vector<uint8_t> signs(n / 8 + 16, 0);
        const uint64_t bytes = write_sign_stream(codes.data(), n, signs.data());
        BitReader reader(signs.data(), signs.data() + bytes);
        std::vector<uint32_t> w(n);
        const uint64_t used = q_to_w(q.data(), masked ? coded_if.data() : nullptr, n, reader, w.data());
        uint64_t expect_used = 0;
        for (uint32_t i = 0; i < n; ++i) {
          const bool coded = !masked || is_coded(codes[i]);
          expect_used += coded && q[i] == 0;
          const uint32_t expect = coded ? code_to_u(codes[i]) : kUncodedValue;
          ACTZIP_CHECK(w[i] == expect, "portable=%d masked=%d n=%u i=%u w=%u expect=%u", portable, masked, n, i, w[i],
                       expect);
        }
        ACTZIP_CHECK(used == expect_used, "portable=%d n=%u used=%llu", portable, n, (unsigned long long)used);
        ACTZIP_CHECK(!reader.overran(), "portable=%d n=%u", portable, n);
      }
    }
  });
}

// The per-element 2-D residual of docs/FORMAT.md section 3.
std::vector<uint32_t> reference_residuals_2d(const std::vector<int32_t>& q, uint32_t row, uint32_t col0) {
  std::vector<uint32_t> u(q.size());
  uint32_t col = col0;
  for (uint32_t i = 0; i < q.size(); ++i) {
    u[i] = zigzag(q[i] - lorenzo2d_predict(q.data(), i, col, row));
    if (++col == row) col = 0;
  }
  return u;
}

ACTZIP_TEST(lorenzo_2d_residuals_and_inverse_match_the_definition) {
  std::mt19937 rng(4);
  const uint32_t pad = 136;
  on_both_paths([&](bool portable) {
    for (uint32_t row : {2u, 3u, 8u, 9u, 16u, 32u, 127u, 128u}) {
      for (uint32_t n : {1u, 5u, 300u, 16384u}) {
        for (bool masked : {false, true}) {
          const uint32_t col0 = n % row;
          const auto codes = random_codes(rng, n, masked, 40);
          std::vector<int32_t> qbuf(pad + n, 0);
          int32_t* q = qbuf.data() + pad;
          for (uint32_t i = 0; i < n; ++i) q[i] = q_of(codes[i]);
          std::vector<uint32_t> u(n);
          lorenzo2d_residuals(q, n, row, col0, u.data());
          const auto ref = reference_residuals_2d(std::vector<int32_t>(q, q + n), row, col0);
          for (uint32_t i = 0; i < n; ++i)
            ACTZIP_CHECK(u[i] == ref[i], "row=%u n=%u i=%u u=%u ref=%u", row, n, i, u[i], ref[i]);
          for (uint32_t i = 0; i < n; ++i)
            if (!is_coded(codes[i])) u[i] = kUncodedValue;
          std::vector<int32_t> back(pad + n, 12345);
          ACTZIP_CHECK(lorenzo2d_inverse(u.data(), n, row, col0, !masked, back.data() + pad), "row=%u n=%u", row, n);
          for (uint32_t i = 0; i < n; ++i)
            ACTZIP_CHECK(back[pad + i] == q[i], "portable=%d row=%u n=%u i=%u q=%d back=%d", portable, row, n, i, q[i],
                         back[pad + i]);
        }
      }
    }
  });
}

ACTZIP_TEST(lorenzo_2d_inverse_declines_clamped_predictions) {
  // l + a - al = kMaxQ + kMaxQ - (-kMaxQ): the prediction is clamped to kMaxQ.
  const uint32_t pad = 136, row = 4, n = 8;
  std::vector<int32_t> qbuf(pad + n, 0);
  int32_t* q = qbuf.data() + pad;
  const int32_t grid[n] = {-kMaxQ, kMaxQ, 0, 0, kMaxQ, kMaxQ, 0, 0};
  std::copy(grid, grid + n, q);
  std::vector<uint32_t> u(n);
  lorenzo2d_residuals(q, n, row, 0, u.data());
  const auto ref = reference_residuals_2d(std::vector<int32_t>(q, q + n), row, 0);
  for (uint32_t i = 0; i < n; ++i) ACTZIP_CHECK(u[i] == ref[i], "i=%u", i);
  std::vector<int32_t> back(pad + n);
  ACTZIP_CHECK(!lorenzo2d_inverse(u.data(), n, row, 0, true, back.data() + pad), "a clamped prediction was accepted");
}

ACTZIP_TEST(lorenzo_1d_residuals_and_inverse_round_trip) {
  std::mt19937 rng(5);
  on_both_paths([&](bool portable) {
    for (uint32_t n : kSizes) {
      const auto codes = random_codes(rng, n, false, 1000);
      std::vector<int32_t> q(n), back(n);
      for (uint32_t i = 0; i < n; ++i) q[i] = q_of(codes[i]);
      std::vector<uint32_t> u(n);
      lorenzo1d_residuals(q.data(), n, u.data());
      for (uint32_t i = 0; i < n; ++i)
        ACTZIP_CHECK(u[i] == zigzag(q[i] - (i ? q[i - 1] : 0)), "n=%u i=%u", n, i);
      ACTZIP_CHECK(lorenzo1d_inverse(u.data(), n, back.data()), "portable=%d n=%u", portable, n);
      ACTZIP_CHECK(back == q, "portable=%d n=%u", portable, n);
    }
    // A residual that leaves the range is refused, also when 32-bit arithmetic wraps, in a
    // group of eight and in the tail.
    for (uint32_t bad : {zigzag(kMaxQ) + 2u, 0xFFFFFFFFu, 0xFFFFFFFEu}) {
      for (uint32_t at : {1u, 9u}) {
        std::vector<uint32_t> u(11, 0);
        u[0] = zigzag(5);
        u[at] = bad;
        std::vector<int32_t> back(u.size());
        ACTZIP_CHECK(!lorenzo1d_inverse(u.data(), uint32_t(u.size()), back.data()), "portable=%d u=%u at %u accepted",
                     portable, bad, at);
      }
    }
  });
}

ACTZIP_TEST(classify_codes_matches_classify_code_with_q_u_and_counts) {
  std::mt19937 rng(9);
  const Quantizer qz = make_quantizer(0.01, 0.015625f);
  for (uint32_t n : kSizes) {
    // Mostly codable values, with zeros, negative zeros, NaN, infinities and huge values.
    std::vector<float> x(n);
    std::uniform_real_distribution<float> value(-5.0f, 5.0f);
    for (auto& v : x) {
      const uint32_t pick = rng() % 16;
      const float special[] = {0.0f, -0.0f, NAN, -INFINITY, 3e38f};
      v = pick < 5 ? special[pick] : value(rng);
    }
    std::vector<uint16_t> h(n);
    for (uint32_t i = 0; i < n; ++i) h[i] = uint16_t(f32_bits(x[i]) >> 16);  // bfloat16 by truncation
    for (int dt = 1; dt <= 3; ++dt) {
      for (int out = 0; out < 3; ++out) {  // codes only, with q, with u
        std::vector<int32_t> codes(n), q(n, 7);
        std::vector<uint32_t> u(n, 7);
        uint32_t zeros = 99, outliers = 99;
        int32_t* q_out = out == 1 ? q.data() : nullptr;
        uint32_t* u_out = out == 2 ? u.data() : nullptr;
        if (dt == 1) classify_codes_f32(x.data(), n, qz, codes.data(), q_out, u_out, &zeros, &outliers);
        else if (dt == 2) classify_codes_f16(h.data(), n, qz, codes.data(), q_out, u_out, &zeros, &outliers);
        else classify_codes_bf16(h.data(), n, qz, codes.data(), q_out, u_out, &zeros, &outliers);
        uint32_t z = 0, o = 0;
        bool same = true;
        for (uint32_t i = 0; i < n; ++i) {
          const int32_t c = dt == 1 ? classify_code<1>(load_elem<1>(x.data(), i), qz)
                            : dt == 2 ? classify_code<2>(load_elem<2>(h.data(), i), qz)
                                      : classify_code<3>(load_elem<3>(h.data(), i), qz);
          same &= codes[i] == c;
          if (out == 1) same &= q[i] == q_of(c);
          if (out == 2 && is_coded(c)) same &= u[i] == code_to_u(c);
          z += c == 0;
          o += c == kOutlierCode;
        }
        ACTZIP_CHECK(same && zeros == z && outliers == o, "n=%u dtype=%d outputs=%d", n, dt, out);
      }
    }
  }
}

// Classification takes a binary32 shortcut for groups of eight whose
// quotients |x| / step lie well away from ties and below 8192; the codes must still be
// those of classify_code(). Values at and a few ulps around the ties m + 1/2, near 8192 and
// from 2^20 to 2^22 steps (where binary32 quotients round the other way for some steps),
// in groups mixed with ordinary values, under steps of 1 to 8 significant bits, and steps
// whose reciprocal is not a normal float (shortcut off); in float32, and rounded to float16
// and bfloat16, which also checks the rounding of the reconstructed magnitude.
ACTZIP_TEST(classify_codes_shortcut_agrees_at_ties_and_limits) {
  std::mt19937 rng(21);
  const float steps[] = {0.015625f, 0.01171875f, 0.0107421875f, 3.0f, 1.9921875f, 1e-3f * 0.99609375f,
                         std::ldexp(1.0f, -130), std::ldexp(1.5f, 127)};
  on_both_paths([&](bool portable) {
    for (int dt : {1, 2, 3}) {
      for (float step : steps) {
        const Quantizer qz = make_quantizer(double(step) * 0.6, step);  // a tie is codable either way
        const uint32_t n = 4096 + 5;
        std::vector<float> x(n);
        std::vector<uint16_t> h(n);
        for (uint32_t i = 0; i < n; ++i) {
          const uint32_t pick = rng() % 8;
          const double m = pick < 4   ? double(rng() % 64)
                           : pick < 6 ? double(8186 + rng() % 12)
                                      : double((1u << 20) + rng() % (3u << 20));
          float v = float((m + (pick % 2 ? 0.5 : 0.25)) * double(step));  // a tie, or a quarter
          const int32_t ulps = int32_t(rng() % 7) - 3;
          v = bits_f32(uint32_t(int32_t(f32_bits(v)) + ulps));
          if (rng() % 3 == 0) v = -v;
          if (rng() % 50 == 0) v = 0.0f;
          x[i] = v;
          h[i] = uint16_t((dt == 2 ? f32_to_f16(v) : f32_to_bf16(v)) + ulps);  // its ulps around the rounded value
        }
        std::vector<int32_t> codes(n);
        uint32_t zeros = 0, outliers = 0;
        if (dt == 1) classify_codes_f32(x.data(), n, qz, codes.data(), nullptr, nullptr, &zeros, &outliers);
        else if (dt == 2) classify_codes_f16(h.data(), n, qz, codes.data(), nullptr, nullptr, &zeros, &outliers);
        else classify_codes_bf16(h.data(), n, qz, codes.data(), nullptr, nullptr, &zeros, &outliers);
        uint32_t wrong = 0, first = n;
        for (uint32_t i = 0; i < n; ++i) {
          const int32_t c = dt == 1   ? classify_code<1>(x[i], qz)
                            : dt == 2 ? classify_code<2>(load_elem<2>(h.data(), i), qz)
                                      : classify_code<3>(load_elem<3>(h.data(), i), qz);
          if (codes[i] != c) {
            ++wrong;
            first = std::min(first, i);
          }
        }
        ACTZIP_CHECK(wrong == 0, "portable=%d dtype=%d step=%g: %u codes differ, first at %u", portable, dt,
                     double(step), wrong, first);
      }
    }
  });
}

// Every float16 and every bfloat16 value, classified in one call, under steps of 1 to 8
// significant bits and bounds at and just above half a step, where the rounding of the
// reconstructed magnitude to the dtype (ties to even) decides between coded and outlier.
ACTZIP_TEST(classify_codes_16bit_match_classify_code_for_every_value) {
  std::vector<uint16_t> h(65536);
  for (uint32_t i = 0; i < h.size(); ++i) h[i] = uint16_t(i);
  const float steps[] = {1.9921875f, 0.01171875f, 0.0107421875f, 3.0f, 0.0625f};
  std::vector<int32_t> codes(h.size());
  on_both_paths([&](bool portable) {
    for (int dt : {2, 3}) {
      for (float step : steps) {
        for (double bound : {0.5 * step, 0.5 * step * (1 + 1.0 / 256), 0.5 * step * (1 + 1.0 / 64)}) {
          const Quantizer qz = make_quantizer(bound, step);
          uint32_t zeros = 0, outliers = 0, wrong = 0, first = 0;
          const uint32_t n = uint32_t(h.size());
          if (dt == 2) classify_codes_f16(h.data(), n, qz, codes.data(), nullptr, nullptr, &zeros, &outliers);
          else classify_codes_bf16(h.data(), n, qz, codes.data(), nullptr, nullptr, &zeros, &outliers);
          for (uint32_t i = 0; i < n; ++i) {
            const int32_t c = dt == 2 ? classify_code<2>(load_elem<2>(h.data(), i), qz)
                                      : classify_code<3>(load_elem<3>(h.data(), i), qz);
            if (codes[i] != c && wrong++ == 0) first = i;
          }
          ACTZIP_CHECK(wrong == 0, "portable=%d dtype=%d step=%g bound=%g: %u codes differ, first for 0x%04x",
                       portable, dt, double(step), bound, wrong, first);
        }
      }
    }
  });
}

ACTZIP_TEST(codes_to_u_and_reconstruct_match_element_h) {
  std::mt19937 rng(6);
  const Quantizer qz = make_quantizer(0.01, 0.015625f);
  on_both_paths([&](bool portable) {
  for (uint32_t n : kSizes) {
    auto codes = random_codes(rng, n, true, 1 << 22);
    std::vector<uint32_t> u(n);
    codes_to_u(codes.data(), n, u.data());
    std::vector<uint32_t> w(n), out(n);
    for (uint32_t i = 0; i < n; ++i) {
      if (is_coded(codes[i])) ACTZIP_CHECK(u[i] == code_to_u(codes[i]), "n=%u i=%u", n, i);
      w[i] = is_coded(codes[i]) ? u[i] : kUncodedValue;
    }
    reconstruct_f32(w.data(), n, qz.step, qz.quarter_step, out.data());
    for (uint32_t i = 0; i < n; ++i) {
      const uint32_t expect = is_coded(codes[i]) ? f32_bits(reconstruct(codes[i], qz)) : 0u;
      ACTZIP_CHECK(out[i] == expect, "portable=%d n=%u i=%u", portable, n, i);
    }
    // The 16-bit dtypes round the binary32 value to nearest even; a step of 8 significant
    // bits (0.01171875 = 3/256) makes the magnitudes round, codes up to 2^22 overflow
    // float16 to infinity, and a step of 2^-20 puts small ones among its subnormals.
    std::vector<uint16_t> half(n);
    for (const Quantizer& q16 : {make_quantizer(0.006, 0.01171875f), make_quantizer(6e-7, std::ldexp(1.0f, -20))}) {
      reconstruct_f16(w.data(), n, q16.step, q16.quarter_step, half.data());
      for (uint32_t i = 0; i < n; ++i) {
        const uint16_t expect = is_coded(codes[i]) ? f32_to_f16(reconstruct(codes[i], q16)) : 0u;
        ACTZIP_CHECK(half[i] == expect, "portable=%d float16 n=%u i=%u", portable, n, i);
      }
      reconstruct_bf16(w.data(), n, q16.step, q16.quarter_step, half.data());
      for (uint32_t i = 0; i < n; ++i) {
        const uint16_t expect = is_coded(codes[i]) ? f32_to_bf16(reconstruct(codes[i], q16)) : 0u;
        ACTZIP_CHECK(half[i] == expect, "portable=%d bfloat16 n=%u i=%u", portable, n, i);
      }
    }
  }
  });
}

// Values whose symbols follow `freq` (for direct_log2 = k), extra bits uniform.
std::vector<uint32_t> values_from(std::mt19937& rng, const std::vector<uint64_t>& freq, int k, uint32_t n) {
  std::discrete_distribution<uint32_t> pick(freq.begin(), freq.end());
  std::vector<uint32_t> u(n);
  const uint32_t direct = 1u << k;
  for (auto& v : u) {
    const uint32_t sym = pick(rng);
    if (sym < direct) {
      v = sym;
    } else {
      const int b = int(sym - direct) + k;
      v = (1u << b) + (b ? uint32_t(rng()) & ((1u << b) - 1u) : 0u);
    }
  }
  return u;
}

ACTZIP_TEST(huffman_lanes_round_trip_with_and_without_pairs) {
  std::mt19937 rng(8);
  for (int k : {0, 3, 5, 8, 10}) {
    const uint32_t alphabet = code_alphabet(k);
    for (double skew : {0.3, 0.7, 0.95}) {  // long codes (few pairs) to short ones (mostly pairs)
      std::vector<uint64_t> freq(alphabet);
      double f = 1e6;
      for (auto& x : freq) {
        x = uint64_t(f) + 1;
        f *= skew;
      }
      const std::vector<uint8_t> lengths = huffman_lengths(freq.data(), alphabet);
      HuffmanEncoder enc;
      HuffmanDecoder dec;
      ACTZIP_REQUIRE(enc.build(lengths) && dec.build(lengths), "k=%d", k);
      std::vector<uint32_t> code_len(alphabet), small(kSmallValues), table(kDecodeTableSize), pairs(kDecodeTableSize);
      build_code_tables(enc, k, code_len.data(), small.data());
      build_value_table(dec, k, table.data());
      build_pair_table(table.data(), pairs.data());
      on_both_paths([&](bool portable) {
        for (uint32_t n : {1u, 3u, 4u, 5u, 9u, 100u, 16384u}) {
          const auto u = values_from(rng, freq, k, n);
          const uint64_t stride = (uint64_t(n) / 4 + 1) * 36 / 8 + 16;
          std::vector<uint8_t> lanes(4 * stride, 0);
          uint64_t lane_bytes[4];
          huffman_encode_lanes(u.data(), n, small.data(), code_len.data(), k, lanes.data(), stride, lane_bytes);
          for (bool with_pairs : {false, true}) {
            // The lanes as a stream holds them: each padded to 8 bytes, back to back.
            std::vector<uint8_t> packed;
            uint64_t begin[4];
            for (int l = 0; l < 4; ++l) {
              begin[l] = packed.size();
              packed.insert(packed.end(), lanes.begin() + l * stride, lanes.begin() + l * stride + lane_bytes[l]);
              packed.resize((packed.size() + 7) / 8 * 8, 0);
            }
            BitReader readers[4] = {
                BitReader(packed.data() + begin[0], packed.data() + begin[1]),
                BitReader(packed.data() + begin[1], packed.data() + begin[2]),
                BitReader(packed.data() + begin[2], packed.data() + begin[3]),
                BitReader(packed.data() + begin[3], packed.data() + packed.size())};
            std::vector<uint32_t> back(n, 0xDEADBEEF);
            const uint32_t* pair_table = with_pairs ? pairs.data() : nullptr;
            // The bits a value may take as the table says (steps skip refills), or more (every
            // step refills).
            const uint32_t max_bits = (n & 1) ? 64 : max_value_bits(table.data());
            const bool ok = huffman_decode_lanes(table.data(), pair_table, max_bits, readers, n, back.data());
            ACTZIP_CHECK(ok, "k=%d skew=%g n=%u portable=%d pairs=%d", k, skew, n, portable, with_pairs);
            for (uint32_t i = 0; i < n && actzip_test::failures_in_current_test() == 0; ++i)
              ACTZIP_CHECK(back[i] == u[i], "k=%d skew=%g n=%u i=%u portable=%d pairs=%d: %u != %u", k, skew, n, i,
                           portable, with_pairs, back[i], u[i]);
            for (int l = 0; l < 4; ++l) {
              const uint64_t used = readers[l].consumed_bits();
              ACTZIP_CHECK(!readers[l].overran() && (used + 7) / 8 == lane_bytes[l], "k=%d n=%u lane %d", k, n, l);
            }
          }
        }
      });
    }
  }
}

// A sum of a random function of the row and one of the column, which 2-D Lorenzo predicts
// exactly, at q near 2^23 (steps of 2^-22 around 1.5), with one element of the opposite
// sign: its neighbours' predictions exceed kMaxQ and are clamped, so the decoder must
// take its exact per-element path.
ACTZIP_TEST(round_trip_with_clamped_2d_predictions_holds_the_bound) {
  const uint64_t rows = 512, cols = 64;
  std::mt19937 rng(7);
  std::uniform_int_distribution<int> offset(0, (1 << 19) - 1);
  std::vector<int> row_part(rows), col_part(cols);
  for (auto& v : row_part) v = offset(rng);
  for (auto& v : col_part) v = offset(rng);
  std::vector<float> x(rows * cols);
  for (uint64_t r = 0; r < rows; ++r)
    for (uint64_t c = 0; c < cols; ++c) x[r * cols + c] = 1.5f + std::ldexp(float(row_part[r] + col_part[c]), -22);
  x[100 * cols + 10] = -1.75f;
  actzip::CompressOptions opt;
  opt.mode = actzip::BoundMode::kAbs;
  opt.error_bound = std::ldexp(1.0, -23);  // a step of 2^-22
  for (int threads : {1, 2}) {
    opt.num_threads = threads;
    std::unique_ptr<actzip::CompressPlan> plan;
    actzip::Status s = actzip::plan_compress(x.data(), actzip::DType::kFloat32, {rows, cols}, opt, &plan);
    ACTZIP_REQUIRE(s.ok(), "%s", s.message.c_str());
    ACTZIP_CHECK(plan->stats().lorenzo2d_chunks > 0, "no chunk chose the 2-D predictor");
    std::vector<uint8_t> stream(plan->compressed_bytes());
    s = actzip::encode(*plan, stream.data(), stream.size(), threads);
    ACTZIP_REQUIRE(s.ok(), "%s", s.message.c_str());
    std::vector<float> y(x.size());
    s = actzip::decompress(stream.data(), stream.size(), y.data(), y.size() * 4, threads);
    ACTZIP_REQUIRE(s.ok(), "%s", s.message.c_str());
    for (size_t i = 0; i < x.size(); ++i)
      ACTZIP_CHECK(std::fabs(double(x[i]) - double(y[i])) <= plan->error_bound(), "i=%zu x=%g y=%g", i, x[i], y[i]);
  }
}

}  // namespace

namespace {

// Elements of `bytes` per element (2 or 4) as 32-bit patterns.
uint32_t element_bits(const std::vector<uint8_t>& bytes, size_t es, uint64_t i) {
  uint32_t v = 0;
  std::memcpy(&v, bytes.data() + i * es, es);
  return v;
}

}  // namespace

ACTZIP_TEST(masks_pack_to_packbits_order_and_unpack_bit_for_bit_on_every_path) {
  std::mt19937 rng(11);
  const uint64_t lengths[] = {1, 7, 8, 31, 32, 33, 1000, (1u << 18) + 5, 3 * (1u << 18) + 77};
  struct Kind {
    actzip::DType dtype;
    uint32_t value, minus_zero, nan;
  };
  const Kind kinds[] = {{actzip::DType::kFloat32, 0x3FB6DB6Eu, 0x80000000u, 0x7FC00000u},  // 1 / 0.7
                        {actzip::DType::kFloat16, 0x3DB7u, 0x8000u, 0x7E00u},
                        {actzip::DType::kBFloat16, 0xC060u, 0x8000u, 0x7FC0u}};  // -3.5
  on_both_paths([&](bool portable) {
    for (const Kind& k : kinds)
      for (uint64_t n : lengths) {
        const size_t es = actzip::element_size(k.dtype);
        std::vector<uint8_t> data(n * es), bits((n + 7) / 8), expected((n + 7) / 8, 0), out(n * es);
        bool any = false;
        for (uint64_t i = 0; i < n; ++i) {
          const bool keep = rng() % 10 < 7;
          any |= keep;
          const uint32_t v = keep ? k.value : 0;
          std::memcpy(data.data() + i * es, &v, es);
          if (keep) expected[i / 8] |= uint8_t(0x80u >> (i % 8));  // numpy.packbits order
        }
        for (int threads : {1, 3}) {
          bool packed = false;
          uint32_t value_bits = 0;
          ACTZIP_REQUIRE(
              actzip::pack_mask(data.data(), k.dtype, n, bits.data(), bits.size(), &packed, &value_bits, threads).ok(),
              "pack_mask");
          ACTZIP_CHECK(packed && value_bits == (any ? k.value : 0u) && bits == expected,
                       "%s path, dtype %d, %llu elements: mask not packed as packbits", portable ? "portable" : "AVX2",
                       int(k.dtype), (unsigned long long)n);
          std::fill(out.begin(), out.end(), uint8_t(0xAB));
          ACTZIP_REQUIRE(actzip::unpack_mask(bits.data(), bits.size(), k.dtype, n, value_bits, out.data(), out.size(),
                                             threads).ok(),
                         "unpack_mask");
          ACTZIP_CHECK(out == data, "%s path, dtype %d, %llu elements: not unpacked bit for bit",
                       portable ? "portable" : "AVX2", int(k.dtype), (unsigned long long)n);
        }
        // One element that no mask has, anywhere (the first, the last, inside a block of 32,
        // in a later job): the tensor is refused, never packed wrongly.
        if (n < 2) continue;
        for (uint64_t at : {uint64_t(1), n - 1, n / 2, uint64_t(rng() % n)}) {
          for (uint32_t intruder : {k.minus_zero, k.nan, k.value ^ 1u}) {
            std::vector<uint8_t> spoiled = data;
            if (element_bits(spoiled, es, 0) == 0) std::memcpy(spoiled.data(), &k.value, es);  // value seen first
            std::memcpy(spoiled.data() + at * es, &intruder, es);
            bool packed = true;
            uint32_t value_bits = 0;
            ACTZIP_REQUIRE(actzip::pack_mask(spoiled.data(), k.dtype, n, bits.data(), bits.size(), &packed,
                                             &value_bits, 2)
                               .ok(),
                           "pack_mask");
            ACTZIP_CHECK(!packed, "%s path, dtype %d, %llu elements: bits %x at %llu packed as a mask",
                         portable ? "portable" : "AVX2", int(k.dtype), (unsigned long long)n, intruder,
                         (unsigned long long)at);
          }
        }
      }
  });
}
