// Storage types (f16, bf16, int8 + scale), chunked databases, one-per-group search and the
// thread pool, at every SIMD level this CPU runs, against naive references.
#include <gtest/gtest.h>

#include <algorithm>
#include <atomic>
#include <cmath>
#include <cstdint>
#include <limits>
#include <map>
#include <random>
#include <set>
#include <string>
#include <thread>
#include <vector>

#include "lookalike/stream.hpp"
#include "lookalike/thread_pool.hpp"
#include "lookalike/topk.hpp"
#include "lookalike/types.hpp"

namespace {

using lookalike::Chunk;
using lookalike::SimdLevel;
using lookalike::TopKOptions;
using lookalike::TopKResult;

constexpr float kInf = std::numeric_limits<float>::infinity();

std::vector<float> small_ints(std::size_t count, std::uint32_t seed, int lo = -3, int hi = 3) {
  std::mt19937 gen(seed);
  std::uniform_int_distribution<int> dist(lo, hi);
  std::vector<float> out(count);
  for (float& x : out) x = static_cast<float>(dist(gen));
  return out;
}

std::vector<float> normals(std::size_t count, std::uint32_t seed) {
  std::mt19937 gen(seed);
  std::normal_distribution<float> dist;
  std::vector<float> out(count);
  for (float& x : out) x = dist(gen);
  return out;
}

// A database in one storage type, plus the float values it stands for (the reference's input).
template <class DbT>
struct Stored {
  std::vector<DbT> data;
  std::vector<float> scales;  // int8 only
  std::vector<float> values;  // dequantized, n * d
};

template <class DbT>
Stored<DbT> store(const std::vector<float>& x, std::size_t n, std::size_t d) {
  Stored<DbT> s;
  s.data.resize(n * d);
  s.values.resize(n * d);
  if constexpr (std::is_same_v<DbT, std::int8_t>) {
    s.scales.resize(n);
    for (std::size_t r = 0; r < n; ++r) {
      float peak = 0.0f;
      for (std::size_t c = 0; c < d; ++c) peak = std::max(peak, std::fabs(x[r * d + c]));
      // Small integers keep scale 1 (exact); larger values get max|x| / 127.
      const float scale = peak <= 127.0f && std::all_of(x.begin() + static_cast<std::ptrdiff_t>(r * d),
                                                         x.begin() + static_cast<std::ptrdiff_t>((r + 1) * d),
                                                         [](float v) { return v == std::nearbyint(v); })
                              ? 1.0f
                              : peak / 127.0f;
      s.scales[r] = scale;
      for (std::size_t c = 0; c < d; ++c) {
        const float q = scale > 0 ? std::nearbyint(x[r * d + c] / scale) : 0.0f;
        s.data[r * d + c] = static_cast<std::int8_t>(std::clamp(q, -127.0f, 127.0f));
        s.values[r * d + c] = static_cast<float>(s.data[r * d + c]) * scale;
      }
    }
  } else {
    for (std::size_t i = 0; i < n * d; ++i) {
      if constexpr (std::is_same_v<DbT, float>) {
        s.data[i] = x[i];
      } else if constexpr (std::is_same_v<DbT, lookalike::f16>) {
        s.data[i] = lookalike::to_f16(x[i]);
      } else {
        s.data[i] = lookalike::to_bf16(x[i]);
      }
      if constexpr (std::is_same_v<DbT, float>) {
        s.values[i] = x[i];
      } else {
        s.values[i] = lookalike::to_float(s.data[i]);
      }
    }
  }
  return s;
}

struct Ref {
  double score;
  std::int64_t id;
};

// Naive reference: double dot products over the dequantized values, ranked (score desc, id asc),
// optionally one per group (a group's best row), then cut to k.
std::vector<std::vector<Ref>> reference(const std::vector<float>& values, std::size_t n, std::size_t d,
                                        const std::vector<float>& q, std::size_t m, std::size_t k,
                                        const std::uint8_t* live = nullptr, const std::int64_t* groups = nullptr) {
  std::vector<std::vector<Ref>> out(m);
  for (std::size_t i = 0; i < m; ++i) {
    std::vector<Ref> all;
    for (std::size_t r = 0; r < n; ++r) {
      if (live != nullptr && live[r] == 0) continue;
      double s = 0;
      for (std::size_t c = 0; c < d; ++c) s += double(q[i * d + c]) * double(values[r * d + c]);
      all.push_back({s, static_cast<std::int64_t>(r)});
    }
    std::sort(all.begin(), all.end(),
              [](const Ref& a, const Ref& b) { return a.score > b.score || (a.score == b.score && a.id < b.id); });
    if (groups != nullptr) {
      std::set<std::int64_t> seen;
      std::vector<Ref> best;
      for (const Ref& h : all) {
        if (seen.insert(groups[h.id]).second) best.push_back(h);
      }
      all = std::move(best);
    }
    all.resize(std::min(all.size(), k));
    out[i] = std::move(all);
  }
  return out;
}

void expect_exact(const TopKResult& got, const std::vector<std::vector<Ref>>& ref, std::size_t k) {
  for (std::size_t i = 0; i < ref.size(); ++i) {
    for (std::size_t j = 0; j < k; ++j) {
      SCOPED_TRACE("query " + std::to_string(i) + " rank " + std::to_string(j));
      if (j < ref[i].size()) {
        EXPECT_EQ(got.ids[i * k + j], ref[i][j].id);
        EXPECT_EQ(got.scores[i * k + j], static_cast<float>(ref[i][j].score));
      } else {
        EXPECT_EQ(got.ids[i * k + j], -1);
        EXPECT_EQ(got.scores[i * k + j], -kInf);
      }
    }
  }
}

template <class DbT>
TopKResult run(const Stored<DbT>& s, std::size_t n, std::size_t d, const std::vector<float>& q, std::size_t m,
               std::size_t k, TopKOptions opt) {
  return lookalike::topk<DbT>(s.data.data(), n, d, q.data(), m, k, opt, s.scales.empty() ? nullptr : s.scales.data());
}

}  // namespace

namespace lookalike {
void PrintTo(SimdLevel level, std::ostream* os) { *os << simd_level_name(level); }
}  // namespace lookalike

namespace {

class Level : public ::testing::TestWithParam<SimdLevel> {
 protected:
  void SetUp() override {
    if (!lookalike::simd_level_supported(GetParam())) {
      GTEST_SKIP() << lookalike::simd_level_name(GetParam()) << " is not supported by this CPU";
    }
  }
  TopKOptions opt(std::size_t threads = 1) const {
    TopKOptions o;
    o.simd = GetParam();
    o.threads = threads;
    return o;
  }
};

// Small integers are exact in every storage type and every dot product is an exact integer:
// each type must reproduce the reference bit for bit, ties included, at every d (tails).
template <class DbT>
void exact_small_ints(const TopKOptions& opt) {
  for (std::size_t d : {1, 5, 8, 15, 16, 17, 33, 100, 384}) {
    SCOPED_TRACE("d = " + std::to_string(d));
    const std::size_t n = 400, m = 5, k = 40;
    const auto x = small_ints(n * d, 1);
    const auto q = small_ints(m * d, 2, -2, 2);
    const auto s = store<DbT>(x, n, d);
    ASSERT_EQ(s.values, x);
    for (std::size_t threads : {1, 3}) {
      TopKOptions o = opt;
      o.threads = threads;
      expect_exact(run(s, n, d, q, m, k, o), reference(s.values, n, d, q, m, k), k);
    }
  }
}

TEST_P(Level, F16SmallIntsExact) { exact_small_ints<lookalike::f16>(opt()); }
TEST_P(Level, Bf16SmallIntsExact) { exact_small_ints<lookalike::bf16>(opt()); }
TEST_P(Level, Int8SmallIntsExact) { exact_small_ints<std::int8_t>(opt()); }

// Random floats: scores match the reference on the dequantized values within float error.
template <class DbT>
void close_random(const TopKOptions& opt) {
  for (std::size_t d : {3, 16, 31, 384}) {
    SCOPED_TRACE("d = " + std::to_string(d));
    const std::size_t n = 600, m = 4, k = 10;
    const auto s = store<DbT>(normals(n * d, 3), n, d);
    const auto q = normals(m * d, 4);
    const TopKResult got = run(s, n, d, q, m, k, opt);
    const auto ref = reference(s.values, n, d, q, m, k);
    double tol = 1e-5 * static_cast<double>(d) + 1e-5;
    if constexpr (std::is_same_v<DbT, std::int8_t>) {
      // The integer kernel rounds the query to int16 (power-of-two scale, at most max|q| / qmax
      // per element, int8_kernel.hpp): the error is bounded by max|q| * max ||row||_1 / qmax.
      double qpeak = 0, l1 = 0;
      for (float v : q) qpeak = std::max(qpeak, double(std::fabs(v)));
      for (std::size_t r = 0; r < n; ++r) {
        double sum = 0;
        for (std::size_t c = 0; c < d; ++c) sum += std::fabs(s.values[r * d + c]);
        l1 = std::max(l1, sum);
      }
      tol += qpeak * l1 / std::min(32639.0, 2147483647.0 / (127.0 * static_cast<double>(d)));
    }
    for (std::size_t i = 0; i < m; ++i) {
      for (std::size_t j = 0; j < k; ++j) {
        EXPECT_NEAR(got.scores[i * k + j], ref[i][j].score, tol);
        double own = 0;  // the returned id's own score
        const auto id = static_cast<std::size_t>(got.ids[i * k + j]);
        for (std::size_t c = 0; c < d; ++c) own += double(q[i * d + c]) * double(s.values[id * d + c]);
        EXPECT_NEAR(got.scores[i * k + j], own, tol);
      }
    }
  }
}

TEST_P(Level, F32RandomClose) { close_random<float>(opt()); }
TEST_P(Level, F16RandomClose) { close_random<lookalike::f16>(opt()); }
TEST_P(Level, Bf16RandomClose) { close_random<lookalike::bf16>(opt()); }
TEST_P(Level, Int8RandomClose) { close_random<std::int8_t>(opt()); }

// Extreme int8 rows at a large d: the integer kernel's int32 sums must not overflow.
TEST_P(Level, Int8ExtremesDoNotOverflow) {
  for (std::size_t d : {528, 529, 4096, 9000}) {
    SCOPED_TRACE("d = " + std::to_string(d));
    const std::size_t n = 3;
    std::vector<std::int8_t> db(n * d);
    for (std::size_t c = 0; c < d; ++c) {
      db[c] = 127;
      db[d + c] = -127;
      db[2 * d + c] = static_cast<std::int8_t>(c % 2 ? 127 : -127);
    }
    const std::vector<float> scales{1.0f, 1.0f, 0.5f};
    std::vector<float> q(d, 3.0f);
    q[0] = -3.0f;  // peak of the query at both signs
    const TopKResult got = lookalike::topk<std::int8_t>(db.data(), n, d, q.data(), 1, 3, opt(), scales.data());
    const double top = 127.0 * 3.0 * static_cast<double>(d - 2);
    EXPECT_EQ(got.ids[0], 0);
    EXPECT_NEAR(got.scores[0], top, top * 1e-6);
    EXPECT_EQ(got.ids[2], 1);
    EXPECT_NEAR(got.scores[2], -top, top * 1e-6);
  }
}

// A query with NaN: the int8 integer kernel hands it to the float kernel; NaN ranks last.
TEST_P(Level, Int8NanQueryFallsBack) {
  const std::size_t n = 5, d = 40;
  std::vector<std::int8_t> db(n * d, 1);
  const std::vector<float> scales(n, 1.0f);
  std::vector<float> q(2 * d, 1.0f);
  q[d + 7] = std::nanf("");
  const TopKResult got = lookalike::topk<std::int8_t>(db.data(), n, d, q.data(), 2, 2, opt(), scales.data());
  EXPECT_EQ(got.scores[0], 40.0f);
  EXPECT_EQ(got.ids[0], 0);
  EXPECT_TRUE(std::isnan(got.scores[2]));
  EXPECT_EQ(got.ids[2], 0);
}

// Any split into chunks (empty ones included) gives the single-array result, bit for bit.
template <class DbT>
void chunks_equal_single(const TopKOptions& opt) {
  const std::size_t n = 5000, d = 24, m = 3, k = 15;
  const auto s = store<DbT>(normals(n * d, 5), n, d);
  const auto q = normals(m * d, 6);
  std::vector<std::uint8_t> live(n, 1);
  for (std::size_t r = 0; r < n; r += 3) live[r] = 0;
  TopKOptions o = opt;
  o.live = live.data();
  const TopKResult single = run(s, n, d, q, m, k, o);
  for (const std::vector<std::size_t>& cuts :
       {std::vector<std::size_t>{0, 1, 4096, 4096, 5000}, {0, 1000, 2000, 3000, 4000, 5000}, {0, 0, 5000, 5000}}) {
    std::vector<Chunk<DbT>> chunks;
    for (std::size_t c = 0; c + 1 < cuts.size(); ++c) {
      chunks.push_back({s.data.data() + cuts[c] * d, cuts[c + 1] - cuts[c],
                        s.scales.empty() ? nullptr : s.scales.data() + cuts[c]});
    }
    for (std::size_t threads : {1, 2, 5}) {
      o.threads = threads;
      TopKResult got;
      got.scores.resize(m * k);
      got.ids.resize(m * k);
      lookalike::topk_chunks(chunks.data(), chunks.size(), d, q.data(), m, k, got.scores.data(), got.ids.data(), o);
      EXPECT_EQ(got.ids, single.ids);
      EXPECT_EQ(got.scores, single.scores);
    }
  }
}

TEST_P(Level, F32ChunksEqualSingle) { chunks_equal_single<float>(opt()); }
TEST_P(Level, F16ChunksEqualSingle) { chunks_equal_single<lookalike::f16>(opt()); }
TEST_P(Level, Int8ChunksEqualSingle) { chunks_equal_single<std::int8_t>(opt()); }

// One-per-group: the best row of each of the k best groups, as the naive per-group best.
void one_per_group_matches_naive(const TopKOptions& opt0, std::size_t m) {
  const std::size_t n = 6000, d = 12;
  const auto opt = [&](std::size_t threads) {
    TopKOptions o = opt0;
    o.threads = threads;
    return o;
  };
  const auto s = store<float>(small_ints(n * d, 7, -2, 2), n, d);  // many ties, exact scores
  const auto q = small_ints(m * d, 8, -2, 2);
  std::mt19937 gen(9);
  for (std::size_t ngroups : {1, 3, 50, 6000}) {
    std::vector<std::int64_t> groups(n);
    std::vector<std::int32_t> groups32(n);
    std::uniform_int_distribution<std::int64_t> pick(0, static_cast<std::int64_t>(ngroups) - 1);
    for (std::size_t r = 0; r < n; ++r) {
      groups[r] = pick(gen) * 1000003 - 7;  // sparse, negative ids too
      groups32[r] = static_cast<std::int32_t>(groups[r]);
    }
    std::vector<std::uint8_t> live(n, 1);
    for (std::size_t r = 0; r < n; r += 2) live[r] = 0;
    for (std::size_t k : {1, 10, 60}) {
      for (const std::uint8_t* mask : {static_cast<const std::uint8_t*>(nullptr), static_cast<const std::uint8_t*>(live.data())}) {
        const auto ref = reference(s.values, n, d, q, m, k, mask, groups.data());
        for (std::size_t threads : {1, 2, 7}) {
          SCOPED_TRACE("groups " + std::to_string(ngroups) + " k " + std::to_string(k) + " threads " +
                       std::to_string(threads) + (mask ? " masked" : ""));
          TopKOptions o = opt(threads);
          o.live = mask;
          o.one_per_group = true;
          o.groups = groups.data();
          expect_exact(run(s, n, d, q, m, k, o), ref, k);
          o.groups = nullptr;
          o.groups32 = groups32.data();
          expect_exact(run(s, n, d, q, m, k, o), ref, k);
        }
      }
    }
  }
}

TEST_P(Level, OnePerGroupMatchesNaive) {
  // m = 20: batches go through the fused float kernel at avx2 / avx512.
  for (std::size_t m : {4, 20}) {
    SCOPED_TRACE("m " + std::to_string(m));
    one_per_group_matches_naive(opt(), m);
  }
}

TEST_P(Level, OnePerGroupOneBigGroup) {
  // The case that cost 7 scans before: one group holds most rows and all the best ones.
  const std::size_t n = 20000, d = 16, m = 2, k = 10;
  const auto s = store<float>(normals(n * d, 10), n, d);
  const auto q = normals(m * d, 11);
  std::vector<std::int64_t> groups(n, 0);
  for (std::size_t r = 0; r < n; r += 1000) groups[r] = static_cast<std::int64_t>(r);  // 20 small groups
  TopKOptions o = opt(2);
  o.one_per_group = true;
  o.groups = groups.data();
  const TopKResult got = run(s, n, d, q, m, k, o);
  const auto ref = reference(s.values, n, d, q, m, k, nullptr, groups.data());
  for (std::size_t i = 0; i < m; ++i) {
    std::set<std::int64_t> seen;
    for (std::size_t j = 0; j < k; ++j) {
      EXPECT_EQ(got.ids[i * k + j], ref[i][j].id);
      EXPECT_TRUE(seen.insert(groups[static_cast<std::size_t>(got.ids[i * k + j])]).second);
    }
  }
}

INSTANTIATE_TEST_SUITE_P(AllLevels, Level, ::testing::Values(SimdLevel::scalar, SimdLevel::avx2, SimdLevel::avx512),
                         [](const ::testing::TestParamInfo<SimdLevel>& info) {
                           return std::string(lookalike::simd_level_name(info.param));
                         });

// The integer int8 kernels (AVX2 vpmaddwd, AVX-512 VNNI vpdpwssd) sum exact integers: their
// scores must be bit-identical, at every d (tails of 16 and 32).
TEST(Int8Kernels, VnniMatchesAvx2BitForBit) {
#if LOOKALIKE_X86_DISPATCH
  if (!lookalike::simd_level_supported(SimdLevel::avx2)) GTEST_SKIP() << "no AVX2";
  if (!lookalike::detail::avx512_i8::cpu_supported()) GTEST_SKIP() << "no AVX-512 BW + VNNI on this CPU";
  for (std::size_t d : {1, 15, 16, 17, 31, 32, 33, 100, 384, 1280}) {
    SCOPED_TRACE("d = " + std::to_string(d));
    const std::size_t n = 103, m = 5, dpad = (d + 31) / 32 * 32;
    std::mt19937 gen(static_cast<std::uint32_t>(d));
    std::uniform_int_distribution<int> byte(-127, 127);
    std::vector<std::int8_t> db(n * d);
    for (auto& b : db) b = static_cast<std::int8_t>(byte(gen));
    const auto q = normals(m * d, 14);
    std::vector<std::int16_t> q16(m * dpad);
    std::vector<float> qscale(m);
    for (std::size_t i = 0; i < m; ++i) {
      ASSERT_TRUE(lookalike::detail::avx2_i8::quantize_query(q.data() + i * d, d, dpad, q16.data() + i * dpad,
                                                             &qscale[i]));
    }
    std::vector<float> a(m * n), b(m * n);
    lookalike::detail::avx2_i8::score_prepared(q16.data(), dpad, qscale.data(), m, db.data(), n, d, a.data(), n);
    lookalike::detail::avx512_i8::score_prepared(q16.data(), dpad, qscale.data(), m, db.data(), n, d, b.data(), n);
    EXPECT_EQ(a, b);
    for (std::size_t i = 0; i < m; ++i) {  // and each is the exact integer sum times the scale
      for (std::size_t r = 0; r < n; r += 17) {
        std::int64_t sum = 0;
        for (std::size_t c = 0; c < d; ++c) sum += std::int64_t{q16[i * dpad + c]} * db[r * d + c];
        EXPECT_EQ(a[i * n + r], static_cast<float>(sum) * qscale[i]);
      }
    }
  }
#else
  GTEST_SKIP() << "not an x86 build";
#endif
}

// ---- conversions --------------------------------------------------------------------------------

TEST(Types, HalfRoundTripsEveryPattern) {
  for (std::uint32_t bits = 0; bits < 65536; ++bits) {
    const lookalike::f16 h{static_cast<std::uint16_t>(bits)};
    const float f = lookalike::to_float(h);
    if (std::isnan(f)) {
      EXPECT_TRUE(std::isnan(lookalike::to_float(lookalike::to_f16(f))));
      continue;
    }
    EXPECT_EQ(lookalike::to_f16(f).bits, bits) << "pattern " << bits;
  }
}

TEST(Types, HalfRoundsToNearestEven) {
  EXPECT_EQ(lookalike::to_float(lookalike::to_f16(1.0f + 1.0f / 2048)), 1.0f);  // halfway: even (down)
  EXPECT_EQ(lookalike::to_float(lookalike::to_f16(1.0f + 3.0f / 2048)), 1.0f + 2.0f / 1024);  // halfway: up
  EXPECT_EQ(lookalike::to_float(lookalike::to_f16(65519.0f)), 65504.0f);
  EXPECT_EQ(lookalike::to_float(lookalike::to_f16(65520.0f)), kInf);
  EXPECT_EQ(lookalike::to_float(lookalike::to_f16(1e-8f)), 0.0f);
  EXPECT_EQ(lookalike::to_float(lookalike::to_f16(std::ldexp(1.0f, -24))), std::ldexp(1.0f, -24));
  EXPECT_EQ(lookalike::to_float(lookalike::to_f16(-2.5f)), -2.5f);
}

TEST(Types, Bfloat16RoundsToNearestEven) {
  EXPECT_EQ(lookalike::to_float(lookalike::to_bf16(1.0f)), 1.0f);
  EXPECT_EQ(lookalike::to_float(lookalike::to_bf16(1.0f + 1.0f / 256)), 1.0f);  // halfway: even
  EXPECT_EQ(lookalike::to_float(lookalike::to_bf16(1.0f + 3.0f / 256)), 1.0f + 2.0f / 128);
  EXPECT_TRUE(std::isnan(lookalike::to_float(lookalike::to_bf16(std::nanf("")))));
  EXPECT_EQ(lookalike::to_float(lookalike::to_bf16(-kInf)), -kInf);
}

TEST(Types, Int8WithoutScalesThrows) {
  const std::vector<std::int8_t> db(8, 1);
  const std::vector<float> q(4, 1.0f);
  float s[2];
  std::int64_t ids[2];
  EXPECT_THROW(lookalike::topk<std::int8_t>(db.data(), 2, 4, q.data(), 1, 2, s, ids), std::invalid_argument);
  TopKOptions o;
  o.one_per_group = true;
  EXPECT_THROW(lookalike::topk<float>(q.data(), 1, 4, q.data(), 1, 2, s, ids, o), std::invalid_argument);
}

// ---- thread pool ------------------------------------------------------------------------------

TEST(ThreadPool, RunsEveryIndexOnce) {
  lookalike::ThreadPool pool(3);
  EXPECT_EQ(pool.workers(), 3u);
  for (std::size_t count : {0, 1, 2, 3, 4, 17, 1000}) {
    std::vector<std::atomic<int>> hits(count);
    pool.run(count, [&](std::size_t i) { hits[i].fetch_add(1); });
    for (std::size_t i = 0; i < count; ++i) EXPECT_EQ(hits[i].load(), 1) << "count " << count << " index " << i;
  }
}

TEST(ThreadPool, ZeroWorkersRunsOnTheCaller) {
  lookalike::ThreadPool pool(0);
  const auto me = std::this_thread::get_id();
  int calls = 0;
  pool.run(5, [&](std::size_t) {
    EXPECT_EQ(std::this_thread::get_id(), me);
    ++calls;
  });
  EXPECT_EQ(calls, 5);
}

TEST(ThreadPool, ConcurrentCallersShareIt) {
  lookalike::ThreadPool pool(2);
  std::atomic<long> total{0};
  std::vector<std::thread> callers;
  for (int c = 0; c < 6; ++c) {
    callers.emplace_back([&] {
      for (int rep = 0; rep < 50; ++rep) pool.run(9, [&](std::size_t i) { total.fetch_add(long(i)); });
    });
  }
  for (std::thread& t : callers) t.join();
  EXPECT_EQ(total.load(), 6L * 50 * 36);
}

TEST(ThreadPool, BudgetIsSettable) {
  const std::size_t before = lookalike::thread_budget();
  lookalike::set_thread_budget(3);
  EXPECT_EQ(lookalike::thread_budget(), 3u);
  EXPECT_EQ(lookalike::shared_thread_pool()->workers(), 2u);
  lookalike::set_thread_budget(0);
  EXPECT_EQ(lookalike::thread_budget(), lookalike::detail::hardware_threads());
  lookalike::set_thread_budget(before == lookalike::detail::hardware_threads() ? 0 : before);
}

TEST(ThreadPool, ConcurrentTopKCallsMatchSequential) {
  const std::size_t n = 30000, d = 32, m = 5, k = 10;
  const auto db = normals(n * d, 12);
  const auto q = normals(m * d, 13);
  TopKOptions o;
  o.threads = 3;
  const TopKResult expected = lookalike::topk<float>(db.data(), n, d, q.data(), m, k, o);
  std::vector<std::thread> callers;
  std::atomic<int> mismatches{0};
  for (int c = 0; c < 4; ++c) {
    callers.emplace_back([&] {
      for (int rep = 0; rep < 5; ++rep) {
        const TopKResult got = lookalike::topk<float>(db.data(), n, d, q.data(), m, k, o);
        if (got.ids != expected.ids || got.scores != expected.scores) mismatches.fetch_add(1);
      }
    });
  }
  for (std::thread& t : callers) t.join();
  EXPECT_EQ(mismatches.load(), 0);
}

TEST(StreamRead, ChecksumOfKnownBytes) {
  // 1 MiB + 37 bytes of ones, read with one job: every level's checksum is a sum of 64-bit
  // words (and leftover bytes), so zeros give 0 and the result is repeatable.
  const std::vector<std::uint8_t> zeros((1 << 20) + 37, 0);
  for (SimdLevel level : lookalike::kAllSimdLevels) {
    if (!lookalike::simd_level_supported(level)) continue;
    EXPECT_EQ(lookalike::stream_read(zeros.data(), zeros.size(), 2, level), 0u);
    std::vector<std::uint8_t> ones(zeros.size(), 1);
    EXPECT_EQ(lookalike::stream_read(ones.data(), ones.size(), 1, level),
              lookalike::stream_read(ones.data(), ones.size(), 1, level));
    EXPECT_NE(lookalike::stream_read(ones.data(), ones.size(), 1, level), 0u);
  }
}

}  // namespace
