// Unit tests of lookalike/range_join.hpp: every SIMD level this CPU runs and every storage type,
// against a naive double loop.
#include "lookalike/range_join.hpp"

#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <limits>
#include <random>
#include <stdexcept>
#include <string>
#include <thread>
#include <tuple>
#include <vector>

#if defined(__linux__)
#include <sys/mman.h>
#include <unistd.h>
#endif

namespace {

using lookalike::Chunk;
using lookalike::RangeJoinOptions;
using lookalike::RangeJoinResult;
using lookalike::SimdLevel;

std::vector<float> small_ints(std::size_t count, std::uint32_t seed, int lo = -2, int hi = 2) {
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

std::vector<std::uint8_t> random_mask(std::size_t n, double live_fraction, std::uint32_t seed) {
  std::mt19937 gen(seed);
  std::bernoulli_distribution live(live_fraction);
  std::vector<std::uint8_t> out(n);
  for (auto& b : out) b = live(gen) ? 1 : 0;
  return out;
}

// A database in one storage type, and the float values it stands for (the reference's input).
// Small integers stay exact in every type (int8 with scale 1).
template <class DbT>
struct Stored {
  std::vector<DbT> data;
  std::vector<float> scales;
  std::vector<float> values;
};

template <class DbT>
Stored<DbT> store(const std::vector<float>& x, std::size_t n, std::size_t d, bool integers) {
  Stored<DbT> s;
  s.data.resize(n * d);
  s.values.resize(n * d);
  if constexpr (std::is_same_v<DbT, std::int8_t>) {
    s.scales.resize(n);
    for (std::size_t r = 0; r < n; ++r) {
      float peak = 0.0f;
      for (std::size_t c = 0; c < d; ++c) peak = std::max(peak, std::fabs(x[r * d + c]));
      const float scale = integers ? 1.0f : peak / 127.0f;
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
        s.values[i] = x[i];
      } else if constexpr (std::is_same_v<DbT, lookalike::f16>) {
        s.data[i] = lookalike::to_f16(x[i]);
        s.values[i] = lookalike::to_float(s.data[i]);
      } else {
        s.data[i] = lookalike::to_bf16(x[i]);
        s.values[i] = lookalike::to_float(s.data[i]);
      }
    }
  }
  return s;
}

struct RefPair {
  std::int64_t query;
  std::int64_t row;
  double score;
};

// The naive double loop: every (query, row) with score >= t, live, row > min_row[query].
std::vector<RefPair> reference(const std::vector<float>& values, std::size_t n, std::size_t d,
                               const std::vector<float>& q, std::size_t m, double t,
                               const std::uint8_t* live = nullptr, const std::int64_t* min_row = nullptr) {
  std::vector<RefPair> out;
  for (std::size_t i = 0; i < m; ++i) {
    for (std::size_t r = 0; r < n; ++r) {
      if (live != nullptr && live[r] == 0) continue;
      if (min_row != nullptr && static_cast<std::int64_t>(r) <= min_row[i]) continue;
      double s = 0.0;
      for (std::size_t c = 0; c < d; ++c) {
        s += static_cast<double>(q[i * d + c]) * static_cast<double>(values[r * d + c]);
      }
      if (s >= t) out.push_back(RefPair{static_cast<std::int64_t>(i), static_cast<std::int64_t>(r), s});
    }
  }
  return out;
}

void expect_sorted(const RangeJoinResult& got) {
  ASSERT_EQ(got.queries.size(), got.size());
  ASSERT_EQ(got.scores.size(), got.size());
  for (std::size_t j = 1; j < got.size(); ++j) {
    ASSERT_TRUE(std::make_pair(got.queries[j - 1], got.rows[j - 1]) < std::make_pair(got.queries[j], got.rows[j]))
        << "not sorted by (query, row) at " << j;
  }
}

// Exact data: the same pairs in the same order, the same scores.
void expect_exact(const RangeJoinResult& got, const std::vector<RefPair>& ref) {
  expect_sorted(got);
  ASSERT_EQ(got.size(), ref.size());
  for (std::size_t j = 0; j < ref.size(); ++j) {
    ASSERT_EQ(got.queries[j], ref[j].query) << "pair " << j;
    ASSERT_EQ(got.rows[j], ref[j].row) << "pair " << j;
    ASSERT_EQ(got.scores[j], static_cast<float>(ref[j].score)) << "pair " << j;
  }
}

// Float data: every reported pair is within tol of its true score and at least t - tol; every
// true pair at t + tol or above is reported (pairs within tol of t may go either way).
void expect_close(const RangeJoinResult& got, const std::vector<RefPair>& ref_loose, double t, double tol) {
  expect_sorted(got);
  std::size_t j = 0;
  std::size_t matched = 0;
  for (const RefPair& r : ref_loose) {  // ref_loose: every pair >= t - tol, sorted
    while (j < got.size() && std::make_pair(got.queries[j], got.rows[j]) < std::make_pair(r.query, r.row)) {
      ADD_FAILURE() << "reported pair (" << got.queries[j] << ", " << got.rows[j] << ") is not near the threshold";
      ++j;
    }
    if (j < got.size() && got.queries[j] == r.query && got.rows[j] == r.row) {
      EXPECT_NEAR(got.scores[j], r.score, tol);
      EXPECT_GE(got.scores[j], t);
      ++j;
      ++matched;
    } else {
      EXPECT_LT(r.score, t + tol) << "missing pair (" << r.query << ", " << r.row << ") score " << r.score;
    }
  }
  EXPECT_EQ(j, got.size()) << "extra pairs after the reference's last";
  EXPECT_GT(matched + ref_loose.size(), 0u);
}

template <class DbT>
RangeJoinResult run(const Stored<DbT>& s, std::size_t n, std::size_t d, const std::vector<float>& q, std::size_t m,
                    float t, RangeJoinOptions opt) {
  return lookalike::range_join<DbT>(s.data.data(), n, d, q.data(), m, t, opt,
                                    s.scales.empty() ? nullptr : s.scales.data());
}

}  // namespace

namespace lookalike {
void PrintTo(SimdLevel level, std::ostream* os) { *os << simd_level_name(level); }
}  // namespace lookalike

namespace {

class RangeJoin : public ::testing::TestWithParam<SimdLevel> {
 protected:
  void SetUp() override {
    if (!lookalike::simd_level_supported(GetParam())) {
      GTEST_SKIP() << lookalike::simd_level_name(GetParam()) << " is not supported by this CPU";
    }
  }
  RangeJoinOptions opt(std::size_t threads = 1) const {
    RangeJoinOptions o;
    o.simd = GetParam();
    o.threads = threads;
    return o;
  }
};

// Small integers: every score is an exact integer at every level and in every storage type, so
// the pair set (ties at the threshold included) and the scores must match bit for bit.
template <class DbT>
void exact_small_ints(RangeJoinOptions base) {
  for (std::size_t d : {1, 3, 15, 16, 17, 33, 100, 384}) {
    for (std::size_t m : {1, 5, 13}) {
      SCOPED_TRACE("d = " + std::to_string(d) + ", m = " + std::to_string(m));
      const std::size_t n = 517;  // not a multiple of any block or tile
      const auto s = store<DbT>(small_ints(n * d, 7 + static_cast<std::uint32_t>(d)), n, d, true);
      const auto q = small_ints(m * d, 11 + static_cast<std::uint32_t>(d + m));
      // A threshold that many scores hit exactly: about the top 10% of scores.
      const double t = std::max(1.0, std::floor(std::sqrt(2.0 * static_cast<double>(d))));
      const auto live = random_mask(n, 0.8, 3);
      std::vector<std::int64_t> min_row(m);
      for (std::size_t i = 0; i < m; ++i) min_row[i] = static_cast<std::int64_t>(i * 37) - 1;  // -1 = every row
      for (std::size_t threads : {1, 3}) {
        RangeJoinOptions o = base;
        o.threads = threads;
        expect_exact(run(s, n, d, q, m, static_cast<float>(t), o), reference(s.values, n, d, q, m, t));
        o.live = live.data();
        o.min_row = min_row.data();
        expect_exact(run(s, n, d, q, m, static_cast<float>(t), o),
                     reference(s.values, n, d, q, m, t, live.data(), min_row.data()));
      }
    }
  }
}

TEST_P(RangeJoin, F32SmallIntsExact) { exact_small_ints<float>(opt()); }
TEST_P(RangeJoin, F16SmallIntsExact) { exact_small_ints<lookalike::f16>(opt()); }
TEST_P(RangeJoin, Bf16SmallIntsExact) { exact_small_ints<lookalike::bf16>(opt()); }
TEST_P(RangeJoin, Int8SmallIntsExact) { exact_small_ints<std::int8_t>(opt()); }

// Random unit-ish vectors: scores within float error of the reference, every clear pair found.
template <class DbT>
void close_random(RangeJoinOptions o) {
  for (std::size_t d : {7, 64, 129, 384}) {
    SCOPED_TRACE("d = " + std::to_string(d));
    const std::size_t n = 1031, m = 9;
    const auto s = store<DbT>(normals(n * d, 21), n, d, false);
    const auto q = normals(m * d, 22);
    const double t = 1.5 * std::sqrt(static_cast<double>(d));  // ~7% of scores
    // int8 at AVX2 and above: the query is rounded to int16 (15 bits), about 1e-5 of the score.
    const double tol = 2e-6 * static_cast<double>(d) + 1e-5 + (std::is_same_v<DbT, std::int8_t> ? 1e-4 * t : 0.0);
    expect_close(run(s, n, d, q, m, static_cast<float>(t), o), reference(s.values, n, d, q, m, t - tol), t, tol);
  }
}

TEST_P(RangeJoin, F32RandomClose) { close_random<float>(opt(2)); }
TEST_P(RangeJoin, F16RandomClose) { close_random<lookalike::f16>(opt(2)); }
TEST_P(RangeJoin, Bf16RandomClose) { close_random<lookalike::bf16>(opt(2)); }
TEST_P(RangeJoin, Int8RandomClose) { close_random<std::int8_t>(opt(2)); }

TEST_P(RangeJoin, ThresholdsFromNoneToEveryPair) {
  const std::size_t n = 301, d = 17, m = 4;
  const auto s = store<float>(small_ints(n * d, 5), n, d, true);
  const auto q = small_ints(m * d, 6);
  // Far below every score: all n * m pairs; at 0: every pair >= 0 (ties at 0 included); above all: none.
  for (double t : {-1e9, -3.0, 0.0, 1e9}) {
    SCOPED_TRACE("threshold " + std::to_string(t));
    const auto ref = reference(s.values, n, d, q, m, t);
    if (t < -1e6) {
      EXPECT_EQ(ref.size(), n * m);
    }
    if (t > 1e6) {
      EXPECT_TRUE(ref.empty());
    }
    expect_exact(run(s, n, d, q, m, static_cast<float>(t), opt(2)), ref);
  }
}

TEST_P(RangeJoin, SelfJoinUpperTriangle) {
  // The caller's self-join: a block of the database's own rows as queries, min_row = own row.
  const std::size_t n = 700, d = 24;
  const auto s = store<float>(small_ints(n * d, 9, -1, 1), n, d, true);
  for (std::size_t q0 : {0, 250, 650, 699}) {
    const std::size_t m = std::min<std::size_t>(64, n - q0);
    const std::vector<float> q(s.values.begin() + static_cast<std::ptrdiff_t>(q0 * d),
                               s.values.begin() + static_cast<std::ptrdiff_t>((q0 + m) * d));
    std::vector<std::int64_t> min_row(m);
    for (std::size_t i = 0; i < m; ++i) min_row[i] = static_cast<std::int64_t>(q0 + i);
    for (std::size_t threads : {1, 2, 5}) {
      RangeJoinOptions o = opt(threads);
      o.min_row = min_row.data();
      expect_exact(run(s, n, d, q, m, 6.0f, o), reference(s.values, n, d, q, m, 6.0, nullptr, min_row.data()));
    }
  }
}

TEST_P(RangeJoin, IndependentOfThreadsAndChunks) {
  const std::size_t n = 2000, d = 48, m = 37;
  const auto s = store<float>(normals(n * d, 31), n, d, false);
  const auto q = normals(m * d, 32);
  const auto want = run(s, n, d, q, m, 8.0f, opt(1));
  ASSERT_GT(want.size(), 10u);
  for (std::size_t threads : {2, 3, 4, 7}) {
    const auto got = run(s, n, d, q, m, 8.0f, opt(threads));
    EXPECT_EQ(got.queries, want.queries);
    EXPECT_EQ(got.rows, want.rows);
    EXPECT_EQ(got.scores, want.scores);  // bit for bit
  }
  const std::size_t cuts[] = {0, 1, 333, 1000, 1999, 2000};
  std::vector<Chunk<float>> chunks;
  for (std::size_t c = 0; c + 1 < std::size(cuts); ++c) {
    chunks.push_back({s.data.data() + cuts[c] * d, cuts[c + 1] - cuts[c]});
  }
  const auto got = lookalike::range_join_chunks(chunks.data(), chunks.size(), d, q.data(), m, 8.0f, opt(3));
  EXPECT_EQ(got.rows, want.rows);
  EXPECT_EQ(got.scores, want.scores);
}

TEST_P(RangeJoin, MaxPairsThrowsWithTheCount) {
  const std::size_t n = 100, d = 8, m = 3;
  const auto s = store<float>(small_ints(n * d, 41), n, d, true);
  const auto q = small_ints(m * d, 42);
  const std::size_t all = reference(s.values, n, d, q, m, 0.0).size();
  RangeJoinOptions o = opt(2);
  o.max_pairs = all;  // exactly enough
  EXPECT_EQ(run(s, n, d, q, m, 0.0f, o).size(), all);
  o.max_pairs = all - 1;
  try {
    run(s, n, d, q, m, 0.0f, o);
    FAIL() << "no length_error";
  } catch (const std::length_error& e) {
    const std::string msg = e.what();
    EXPECT_NE(msg.find(std::to_string(all) + " pairs"), std::string::npos) << msg;
    EXPECT_NE(msg.find("max_pairs = " + std::to_string(all - 1)), std::string::npos) << msg;
    EXPECT_NE(msg.find("raise the threshold"), std::string::npos) << msg;
  }
  o.max_pairs = 0;
  EXPECT_THROW(run(s, n, d, q, m, 0.0f, o), std::length_error);
  EXPECT_EQ(run(s, n, d, q, m, 1e9f, o).size(), 0u);  // no pair: max_pairs = 0 is fine
}

// Pruning stops a tile only when no pair of it can reach the threshold: the result (pairs and
// scores, bit for bit) is the one of the unpruned kernel, at thresholds everywhere in the score
// range, on unit vectors with the energy spread evenly, at the front, or at the back.
TEST_P(RangeJoin, PruningNeverChangesTheResult) {
  for (int shape = 0; shape < 3; ++shape) {
    for (std::size_t d : {31, 64, 97, 384}) {
      SCOPED_TRACE("shape " + std::to_string(shape) + ", d = " + std::to_string(d));
      const std::size_t n = 900, m = 30;
      auto x = normals((n + m) * d, 71 + static_cast<std::uint32_t>(d));
      for (std::size_t r = 0; r < n + m; ++r) {
        double norm = 0.0;
        for (std::size_t c = 0; c < d; ++c) {
          float& v = x[r * d + c];
          if (shape == 1) v *= std::exp(-4.0f * static_cast<float>(c) / static_cast<float>(d));  // front-loaded
          if (shape == 2) v *= std::exp(-4.0f * static_cast<float>(d - c) / static_cast<float>(d));  // back-loaded
          norm += static_cast<double>(v) * v;
        }
        for (std::size_t c = 0; c < d; ++c) x[r * d + c] = static_cast<float>(x[r * d + c] / std::sqrt(norm));
      }
      // Near-copies of the queries among the rows: pairs near every threshold below 1.
      for (std::size_t i = 0; i < m; ++i) {
        const float mix = static_cast<float>(i) / static_cast<float>(m);
        float* row = x.data() + i * 29 * d;
        for (std::size_t c = 0; c < d; ++c) row[c] = (1 - mix) * x[(n + i) * d + c] + mix * row[c];
      }
      const std::vector<float> db(x.begin(), x.begin() + static_cast<std::ptrdiff_t>(n * d));
      const std::vector<float> q(x.begin() + static_cast<std::ptrdiff_t>(n * d), x.end());
      RangeJoinOptions dense = opt(2);
      dense.prune = false;
      const auto all = lookalike::range_join<float>(db.data(), n, d, q.data(), m, -2.0f, dense);
      std::vector<float> sorted = all.scores;
      std::sort(sorted.begin(), sorted.end());
      for (double quantile : {0.5, 0.9, 0.99, 0.999, 0.9999, 1.0}) {
        // Thresholds exactly at a pair's float score: the hardest case for the margin.
        const auto at = static_cast<std::size_t>(quantile * static_cast<double>(sorted.size()));
        const float t = sorted[std::min(sorted.size() - 1, at)];
        const auto want = lookalike::range_join<float>(db.data(), n, d, q.data(), m, t, dense);
        const auto got = lookalike::range_join<float>(db.data(), n, d, q.data(), m, t, opt(2));
        ASSERT_GE(want.size(), 1u);
        EXPECT_EQ(got.queries, want.queries) << "threshold " << t;
        EXPECT_EQ(got.rows, want.rows) << "threshold " << t;
        EXPECT_EQ(got.scores, want.scores) << "threshold " << t;
      }
    }
  }
}

// A row equal to the query makes the Cauchy-Schwarz bound tight at every checkpoint: its pair
// must survive pruning when the threshold is exactly its score.
TEST_P(RangeJoin, TightBoundAtTheThresholdSurvives) {
  const std::size_t d = 384, n = 64;
  const auto q = normals(d, 81);
  std::vector<float> db = normals(n * d, 82);
  std::copy(q.begin(), q.end(), db.begin() + 17 * static_cast<std::ptrdiff_t>(d));
  RangeJoinOptions dense = opt();
  dense.prune = false;
  const auto self = lookalike::range_join<float>(db.data() + 17 * d, 1, d, q.data(), 1, -1e30f, dense);
  ASSERT_EQ(self.size(), 1u);
  const auto got = lookalike::range_join<float>(db.data(), n, d, q.data(), 1, self.scores[0], opt());
  ASSERT_EQ(got.size(), 1u);
  EXPECT_EQ(got.rows[0], 17);
  EXPECT_EQ(got.scores[0], self.scores[0]);
}

// Non-finite rows or queries turn pruning off for their tiles (a bound of inf or NaN proves
// nothing): the result is the unpruned one.
TEST_P(RangeJoin, NonFiniteValuesAreNotPrunedAway) {
  const std::size_t n = 200, d = 70, m = 5;
  auto db = normals(n * d, 91);
  auto q = normals(m * d, 92);
  db[3 * d + 5] = std::numeric_limits<float>::infinity();
  db[50 * d + 69] = std::numeric_limits<float>::quiet_NaN();
  db[120 * d + 0] = -std::numeric_limits<float>::infinity();
  q[1 * d + 60] = std::numeric_limits<float>::infinity();
  RangeJoinOptions dense = opt();
  dense.prune = false;
  for (float t : {-1e30f, 0.0f, 5.0f, 1e30f}) {
    const auto want = lookalike::range_join<float>(db.data(), n, d, q.data(), m, t, dense);
    const auto got = lookalike::range_join<float>(db.data(), n, d, q.data(), m, t, opt());
    EXPECT_EQ(got.queries, want.queries);
    EXPECT_EQ(got.rows, want.rows);
  }
}

INSTANTIATE_TEST_SUITE_P(AllLevels, RangeJoin, ::testing::Values(SimdLevel::scalar, SimdLevel::avx2, SimdLevel::avx512),
                         [](const ::testing::TestParamInfo<SimdLevel>& info) {
                           return std::string(lookalike::simd_level_name(info.param));
                         });

TEST(RangeJoinEdges, EmptyInputsAndBadArguments) {
  const std::vector<float> db(10 * 4, 1.0f), q(2 * 4, 1.0f);
  EXPECT_EQ(lookalike::range_join<float>(db.data(), 0, 4, q.data(), 2, 0.0f).size(), 0u);
  EXPECT_EQ(lookalike::range_join<float>(db.data(), 10, 4, q.data(), 0, 0.0f).size(), 0u);
  EXPECT_EQ(lookalike::range_join<float>(db.data(), 10, 4, q.data(), 2, 0.0f).size(), 20u);
  std::vector<std::int64_t> past_end = {9, 1000};
  RangeJoinOptions o;
  o.min_row = past_end.data();
  EXPECT_EQ(lookalike::range_join<float>(db.data(), 10, 4, q.data(), 2, 0.0f, o).size(), 0u);
  EXPECT_THROW(lookalike::range_join<float>(db.data(), 10, 4, q.data(), 2, std::nanf("")), std::invalid_argument);
  EXPECT_THROW(lookalike::range_join<float>(nullptr, 10, 4, q.data(), 2, 0.0f), std::invalid_argument);
  const std::vector<std::int8_t> i8(10 * 4, 1);
  EXPECT_THROW(lookalike::range_join<std::int8_t>(i8.data(), 10, 4, q.data(), 2, 0.0f), std::invalid_argument);
}

#if defined(__linux__)
// Rows at or below min(min_row) are not read at all: here they lie on a page that faults on any
// access, so scoring (or even prefetching through loads of) one of them would crash the test.
TEST(RangeJoinEdges, RowsBelowMinRowAreNeverRead) {
  const std::size_t d = 32, skipped = 256, n2 = 300, m = 6;
  const std::size_t page = static_cast<std::size_t>(sysconf(_SC_PAGESIZE));
  const std::size_t bytes = (skipped * d * sizeof(float) + page - 1) / page * page;
  void* guard = mmap(nullptr, bytes, PROT_NONE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
  ASSERT_NE(guard, MAP_FAILED);
  const auto rest = small_ints(n2 * d, 51);
  const auto q = small_ints(m * d, 52);
  const Chunk<float> chunks[] = {{static_cast<const float*>(guard), skipped}, {rest.data(), n2}};
  std::vector<std::int64_t> min_row(m);
  for (std::size_t i = 0; i < m; ++i) min_row[i] = static_cast<std::int64_t>(skipped - 1 + 40 * i);
  for (SimdLevel level : lookalike::kAllSimdLevels) {
    if (!lookalike::simd_level_supported(level)) continue;
    RangeJoinOptions o;
    o.simd = level;
    o.threads = 2;
    o.min_row = min_row.data();
    const auto got = lookalike::range_join_chunks(chunks, 2, d, q.data(), m, 3.0f, o);
    std::vector<std::int64_t> shifted(m);
    for (std::size_t i = 0; i < m; ++i) shifted[i] = min_row[i] - static_cast<std::int64_t>(skipped);
    auto ref = reference(rest, n2, d, q, m, 3.0, nullptr, shifted.data());
    for (RefPair& r : ref) r.row += static_cast<std::int64_t>(skipped);
    expect_exact(got, ref);
  }
  munmap(guard, bytes);
}
#endif

TEST(RangeJoinEdges, ConcurrentCallersMatchSequential) {
  const std::size_t n = 3000, d = 40, m = 20;
  const auto db = normals(n * d, 61);
  const auto q = normals(m * d, 62);
  RangeJoinOptions o;
  o.threads = 2;
  const auto want = lookalike::range_join<float>(db.data(), n, d, q.data(), m, 7.0f, o);
  std::vector<RangeJoinResult> got(6);
  std::vector<std::thread> callers;
  for (std::size_t i = 0; i < got.size(); ++i) {
    callers.emplace_back([&, i] { got[i] = lookalike::range_join<float>(db.data(), n, d, q.data(), m, 7.0f, o); });
  }
  for (std::thread& t : callers) t.join();
  for (const auto& g : got) {
    EXPECT_EQ(g.rows, want.rows);
    EXPECT_EQ(g.queries, want.queries);
    EXPECT_EQ(g.scores, want.scores);
  }
}

}  // namespace
