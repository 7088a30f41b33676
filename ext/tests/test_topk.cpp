// Unit tests of lookalike/topk.hpp: every SIMD level this CPU runs, against a naive reference.
#include "lookalike/topk.hpp"

#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <limits>
#include <numeric>
#include <random>
#include <set>
#include <string>
#include <vector>

namespace {

using lookalike::SimdLevel;
using lookalike::TopKOptions;
using lookalike::TopKResult;

constexpr float kInf = std::numeric_limits<float>::infinity();

// ---- data -------------------------------------------------------------------------------------

std::vector<float> normal_matrix(std::size_t rows, std::size_t cols, std::uint32_t seed) {
  std::mt19937 gen(seed);
  std::normal_distribution<float> dist;
  std::vector<float> out(rows * cols);
  for (float& x : out) x = dist(gen);
  return out;
}

// Small integers: every dot product (any summation order) is an exactly representable
// integer, so every level must reproduce the reference bit for bit, ties included.
std::vector<float> small_int_matrix(std::size_t rows, std::size_t cols, std::uint32_t seed, int lo = -2, int hi = 2) {
  std::mt19937 gen(seed);
  std::uniform_int_distribution<int> dist(lo, hi);
  std::vector<float> out(rows * cols);
  for (float& x : out) x = static_cast<float>(dist(gen));
  return out;
}

std::vector<std::uint8_t> random_mask(std::size_t n, double live_fraction, std::uint32_t seed) {
  std::mt19937 gen(seed);
  std::bernoulli_distribution live(live_fraction);
  std::vector<std::uint8_t> out(n);
  for (auto& b : out) b = live(gen) ? 1 : 0;
  return out;
}

// ---- reference ----------------------------------------------------------------------------------

struct RefHit {
  double score;
  std::int64_t id;
};

// Naive top-k: double-precision dot products, full sort by (score desc, id asc).
std::vector<std::vector<RefHit>> reference_topk(const std::vector<float>& db, std::size_t n, std::size_t d,
                                                const std::vector<float>& q, std::size_t m, std::size_t k,
                                                const std::uint8_t* live = nullptr) {
  std::vector<std::vector<RefHit>> out(m);
  for (std::size_t i = 0; i < m; ++i) {
    std::vector<RefHit> all;
    for (std::size_t r = 0; r < n; ++r) {
      if (live != nullptr && live[r] == 0) continue;
      double s = 0.0;
      for (std::size_t c = 0; c < d; ++c) s += static_cast<double>(q[i * d + c]) * static_cast<double>(db[r * d + c]);
      all.push_back(RefHit{s, static_cast<std::int64_t>(r)});
    }
    std::sort(all.begin(), all.end(), [](const RefHit& a, const RefHit& b) {
      return a.score > b.score || (a.score == b.score && a.id < b.id);
    });
    all.resize(std::min(all.size(), k));
    out[i] = std::move(all);
  }
  return out;
}

double dot(const std::vector<float>& a, std::size_t ia, const std::vector<float>& b, std::size_t ib, std::size_t d) {
  double s = 0.0;
  for (std::size_t c = 0; c < d; ++c) s += static_cast<double>(a[ia * d + c]) * static_cast<double>(b[ib * d + c]);
  return s;
}

// Exact comparison: same ids in the same order, same scores; padding after the real hits.
void expect_exact(const TopKResult& got, const std::vector<std::vector<RefHit>>& ref, std::size_t k) {
  ASSERT_EQ(got.scores.size(), ref.size() * k);
  for (std::size_t i = 0; i < ref.size(); ++i) {
    for (std::size_t j = 0; j < k; ++j) {
      SCOPED_TRACE("query " + std::to_string(i) + ", rank " + std::to_string(j));
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

// Float data: the returned scores match the reference ranks within `tol`, each returned
// score matches its own row's true score, ids are unique, live, ordered, and nothing
// clearly better than the k-th was left out.
void expect_close(const TopKResult& got, const std::vector<float>& db, const std::vector<float>& q,
                  std::size_t d, const std::vector<std::vector<RefHit>>& ref, std::size_t k,
                  const std::uint8_t* live = nullptr, double tol = 1e-4) {
  for (std::size_t i = 0; i < ref.size(); ++i) {
    SCOPED_TRACE("query " + std::to_string(i));
    std::set<std::int64_t> seen;
    for (std::size_t j = 0; j < k; ++j) {
      const std::int64_t id = got.ids[i * k + j];
      const float s = got.scores[i * k + j];
      if (j >= ref[i].size()) {
        EXPECT_EQ(id, -1);
        EXPECT_EQ(s, -kInf);
        continue;
      }
      ASSERT_GE(id, 0);
      EXPECT_TRUE(seen.insert(id).second) << "duplicate id " << id;
      if (live != nullptr) {
        EXPECT_NE(live[id], 0) << "deleted row " << id << " returned";
      }
      EXPECT_NEAR(s, dot(q, i, db, static_cast<std::size_t>(id), d), tol);
      EXPECT_NEAR(s, ref[i][j].score, tol);
      if (j > 0) {
        EXPECT_TRUE(lookalike::detail::ranks_before(got.scores[i * k + j - 1], got.ids[i * k + j - 1], s, id));
      }
    }
    if (!ref[i].empty()) {
      const double kth = ref[i].back().score;
      for (const RefHit& h : ref[i]) {
        if (h.score > kth + 2 * tol) {
          EXPECT_TRUE(seen.count(h.id)) << "missing row " << h.id;
        }
      }
    }
  }
}

TopKResult run(const std::vector<float>& db, std::size_t n, std::size_t d, const std::vector<float>& q,
               std::size_t m, std::size_t k, SimdLevel level, std::size_t threads = 1,
               const std::uint8_t* live = nullptr) {
  TopKOptions opt;
  opt.simd = level;
  opt.threads = threads;
  opt.live = live;
  return lookalike::topk_f32(db.data(), n, d, q.data(), m, k, opt);
}

}  // namespace

namespace lookalike {
// Readable test names and messages for the level parameter.
void PrintTo(SimdLevel level, std::ostream* os) { *os << simd_level_name(level); }
}  // namespace lookalike

namespace {

// ---- tests at every level -------------------------------------------------------------------

class TopKLevel : public ::testing::TestWithParam<SimdLevel> {
 protected:
  void SetUp() override {
    if (!lookalike::simd_level_supported(GetParam())) {
      GTEST_SKIP() << lookalike::simd_level_name(GetParam()) << " is not supported by this CPU";
    }
  }
  SimdLevel level() const { return GetParam(); }
};

TEST_P(TopKLevel, RandomFloatsMatchReference) {
  for (std::size_t d : {1, 3, 7, 8, 9, 15, 16, 17, 31, 33, 64, 100, 384}) {
    SCOPED_TRACE("d = " + std::to_string(d));
    const std::size_t n = 517, m = 11, k = 10;
    const auto db = normal_matrix(n, d, 1);
    const auto q = normal_matrix(m, d, 2);
    expect_close(run(db, n, d, q, m, k, level()), db, q, d, reference_topk(db, n, d, q, m, k), k, nullptr,
                 1e-5 * static_cast<double>(d) + 1e-5);
  }
}

TEST_P(TopKLevel, SmallIntegersExactWithTies) {
  // Few distinct values: many exactly equal scores, which must come out by increasing id.
  for (std::size_t d : {1, 2, 5, 8, 13, 16, 29, 64, 130, 1000}) {
    SCOPED_TRACE("d = " + std::to_string(d));
    const std::size_t n = 300, m = 7, k = 50;
    const auto db = small_int_matrix(n, d, 3, -1, 1);
    const auto q = small_int_matrix(m, d, 4, -1, 1);
    expect_exact(run(db, n, d, q, m, k, level()), reference_topk(db, n, d, q, m, k), k);
  }
}

TEST_P(TopKLevel, AllRowsEqualComeOutByIndex) {
  const std::size_t n = 100, d = 19, m = 2, k = 30;
  std::vector<float> db(n * d);
  const auto row = normal_matrix(1, d, 5);
  for (std::size_t r = 0; r < n; ++r) std::copy(row.begin(), row.end(), db.begin() + static_cast<std::ptrdiff_t>(r * d));
  const auto q = normal_matrix(m, d, 6);
  const TopKResult got = run(db, n, d, q, m, k, level());
  for (std::size_t i = 0; i < m; ++i) {
    for (std::size_t j = 0; j < k; ++j) {
      EXPECT_EQ(got.ids[i * k + j], static_cast<std::int64_t>(j));
      EXPECT_EQ(got.scores[i * k + j], got.scores[i * k]);  // bit-identical across tile positions
    }
  }
}

TEST_P(TopKLevel, DuplicatedFloatRowsTieByIndex) {
  // 10 distinct random rows, each repeated 10 times (row r is a copy of row r % 10).
  const std::size_t distinct = 10, n = 100, d = 45, m = 5, k = 25;
  const auto base = normal_matrix(distinct, d, 7);
  std::vector<float> db(n * d);
  for (std::size_t r = 0; r < n; ++r) {
    std::copy_n(base.begin() + static_cast<std::ptrdiff_t>((r % distinct) * d), d,
                db.begin() + static_cast<std::ptrdiff_t>(r * d));
  }
  const auto q = normal_matrix(m, d, 8);
  for (std::size_t threads : {1, 2, 3}) {
    const TopKResult got = run(db, n, d, q, m, k, level(), threads);
    for (std::size_t i = 0; i < m; ++i) {
      std::vector<std::size_t> order(distinct);
      std::iota(order.begin(), order.end(), 0);
      std::sort(order.begin(), order.end(),
                [&](std::size_t a, std::size_t b) { return dot(q, i, base, a, d) > dot(q, i, base, b, d); });
      for (std::size_t j = 0; j < k; ++j) {
        const std::size_t group = order[j / distinct];
        const auto expected = static_cast<std::int64_t>(group + (j % distinct) * distinct);
        EXPECT_EQ(got.ids[i * k + j], expected) << "query " << i << " rank " << j << " threads " << threads;
      }
    }
  }
}

TEST_P(TopKLevel, KLargerThanNIsPadded) {
  const std::size_t n = 5, d = 12, m = 3, k = 9;
  const auto db = small_int_matrix(n, d, 9);
  const auto q = small_int_matrix(m, d, 10);
  const TopKResult got = run(db, n, d, q, m, k, level());
  expect_exact(got, reference_topk(db, n, d, q, m, k), k);
  for (std::size_t i = 0; i < m; ++i) {
    std::set<std::int64_t> ids(got.ids.begin() + static_cast<std::ptrdiff_t>(i * k),
                               got.ids.begin() + static_cast<std::ptrdiff_t>(i * k + n));
    EXPECT_EQ(ids.size(), n);
  }
}

TEST_P(TopKLevel, EmptyDatabaseIsAllPadding) {
  const std::size_t d = 8, m = 2, k = 4;
  const std::vector<float> db;
  const auto q = normal_matrix(m, d, 11);
  const TopKResult got = run(db, 0, d, q, m, k, level());
  for (std::size_t j = 0; j < m * k; ++j) {
    EXPECT_EQ(got.ids[j], -1);
    EXPECT_EQ(got.scores[j], -kInf);
  }
}

TEST_P(TopKLevel, ZeroKAndZeroQueries) {
  const auto db = normal_matrix(10, 4, 12);
  const auto q = normal_matrix(3, 4, 13);
  EXPECT_TRUE(run(db, 10, 4, q, 3, 0, level()).scores.empty());
  EXPECT_TRUE(run(db, 10, 4, q, 0, 5, level()).ids.empty());
}

TEST_P(TopKLevel, ZeroDimensionScoresZero) {
  const std::vector<float> db, q;
  const TopKResult got = run(db, 6, 0, q, 2, 3, level());
  for (std::size_t i = 0; i < 2; ++i) {
    for (std::size_t j = 0; j < 3; ++j) {
      EXPECT_EQ(got.scores[i * 3 + j], 0.0f);
      EXPECT_EQ(got.ids[i * 3 + j], static_cast<std::int64_t>(j));
    }
  }
}

TEST_P(TopKLevel, LiveMaskSkipsDeletedRows) {
  const std::size_t n = 5000, d = 16, m = 9, k = 20;  // several row blocks
  const auto db = small_int_matrix(n, d, 14);
  const auto q = small_int_matrix(m, d, 15);
  for (double fraction : {0.0, 0.01, 0.5, 0.99, 1.0}) {
    SCOPED_TRACE("live fraction " + std::to_string(fraction));
    const auto live = random_mask(n, fraction, 16);
    for (std::size_t threads : {1, 2}) {
      expect_exact(run(db, n, d, q, m, k, level(), threads, live.data()),
                   reference_topk(db, n, d, q, m, k, live.data()), k);
    }
  }
}

TEST_P(TopKLevel, LiveMaskWithWholeDeadBlocks) {
  const std::size_t n = 9000, d = 16, m = 4, k = 15;
  const auto db = normal_matrix(n, d, 17);
  const auto q = normal_matrix(m, d, 18);
  std::vector<std::uint8_t> live(n, 0);
  for (std::size_t r = 4000; r < 4010; ++r) live[r] = 1;  // 10 live rows in a sea of deleted ones
  live[n - 1] = 2;                                       // any non-zero byte means live
  const TopKResult got = run(db, n, d, q, m, k, level(), 2, live.data());
  expect_close(got, db, q, d, reference_topk(db, n, d, q, m, k, live.data()), k, live.data());
  for (std::size_t i = 0; i < m; ++i) {  // 11 live rows, then padding
    EXPECT_NE(got.ids[i * k + 10], -1);
    EXPECT_EQ(got.ids[i * k + 11], -1);
  }
}

TEST_P(TopKLevel, ThreadsGiveIdenticalResults) {
  struct Shape {
    std::size_t n, d, m, k;
  };
  // Row splits (few queries), query splits (few rows), and a large k (splits change with threads).
  for (const Shape& s : {Shape{60000, 64, 4, 10}, Shape{150, 64, 2000, 5}, Shape{3000, 24, 400, 700}}) {
    SCOPED_TRACE("n=" + std::to_string(s.n) + " m=" + std::to_string(s.m));
    const auto db = normal_matrix(s.n, s.d, 19);
    const auto q = normal_matrix(s.m, s.d, 20);
    const TopKResult one = run(db, s.n, s.d, q, s.m, s.k, level(), 1);
    for (std::size_t threads : {2, 3, 8, 64}) {
      ASSERT_GT(lookalike::detail::plan_jobs(s.n, s.m, s.d, s.k, threads).jobs.size(), 1u);
      const TopKResult many = run(db, s.n, s.d, q, s.m, s.k, level(), threads);
      EXPECT_EQ(one.ids, many.ids) << threads << " threads";
      EXPECT_EQ(one.scores, many.scores) << threads << " threads";
    }
  }
}

TEST_P(TopKLevel, QueryResultDoesNotDependOnBatch) {
  const std::size_t n = 2000, d = 77, m = 10, k = 8;
  const auto db = normal_matrix(n, d, 21);
  const auto q = normal_matrix(m, d, 22);
  const TopKResult batch = run(db, n, d, q, m, k, level());
  for (std::size_t i = 0; i < m; ++i) {
    const std::vector<float> one_query(q.begin() + static_cast<std::ptrdiff_t>(i * d),
                                       q.begin() + static_cast<std::ptrdiff_t>((i + 1) * d));
    const TopKResult single = run(db, n, d, one_query, 1, k, level());
    for (std::size_t j = 0; j < k; ++j) {
      EXPECT_EQ(single.ids[j], batch.ids[i * k + j]);
      EXPECT_EQ(single.scores[j], batch.scores[i * k + j]);
    }
  }
}

// Batches of 16+ queries (8+ with AVX2) go through the fused kernel (fused_kernel.inc), single
// queries through the block scorer: both must give every score bit for bit, at every d (tails
// included) and batch shape (groups of 64 / 24 queries, an uneven last group, a short one).
TEST_P(TopKLevel, BatchedScoresAreBitIdenticalToSingle) {
  for (std::size_t d : {1, 3, 15, 16, 17, 33, 100, 384}) {
    for (std::size_t m : {8, 17, 40, 64, 65, 130}) {
      SCOPED_TRACE("d = " + std::to_string(d) + ", m = " + std::to_string(m));
      const std::size_t n = 611, k = 7;
      const auto db = normal_matrix(n, d, 41);
      const auto q = normal_matrix(m, d, 42);
      for (std::size_t threads : {1, 2}) {
        const TopKResult batch = run(db, n, d, q, m, k, level(), threads);
        for (std::size_t i = 0; i < m; i += 3) {
          const std::vector<float> one(q.begin() + static_cast<std::ptrdiff_t>(i * d),
                                       q.begin() + static_cast<std::ptrdiff_t>((i + 1) * d));
          const TopKResult single = run(db, n, d, one, 1, k, level());
          for (std::size_t j = 0; j < k; ++j) {
            ASSERT_EQ(single.ids[j], batch.ids[i * k + j]) << "query " << i << " rank " << j;
            ASSERT_EQ(single.scores[j], batch.scores[i * k + j]) << "query " << i << " rank " << j;
          }
        }
      }
    }
  }
}

TEST_P(TopKLevel, BatchedSmallIntegersExactWithTies) {
  for (std::size_t d : {1, 5, 16, 29, 130}) {
    for (std::size_t m : {24, 70}) {
      SCOPED_TRACE("d = " + std::to_string(d) + ", m = " + std::to_string(m));
      const std::size_t n = 500, k = 40;
      const auto db = small_int_matrix(n, d, 43, -1, 1);
      const auto q = small_int_matrix(m, d, 44, -1, 1);
      const auto ref = reference_topk(db, n, d, q, m, k);
      expect_exact(run(db, n, d, q, m, k, level()), ref, k);
      expect_exact(run(db, n, d, q, m, k, level(), 3), ref, k);
    }
  }
}

TEST_P(TopKLevel, BatchedLiveMaskNanAndPadding) {
  const std::size_t n = 300, d = 21, m = 33, k = 12;
  auto db = normal_matrix(n, d, 45);
  db[7 * d + 3] = std::numeric_limits<float>::quiet_NaN();
  db[250 * d] = std::numeric_limits<float>::infinity();
  auto live = random_mask(n, 0.05, 46);  // about 15 live rows: some queries get padding
  live[7] = 1;
  live[250] = 1;
  const auto q = normal_matrix(m, d, 47);
  const TopKResult batch = run(db, n, d, q, m, k, level(), 1, live.data());
  for (std::size_t i = 0; i < m; ++i) {
    const std::vector<float> one(q.begin() + static_cast<std::ptrdiff_t>(i * d),
                                 q.begin() + static_cast<std::ptrdiff_t>((i + 1) * d));
    const TopKResult single = run(db, n, d, one, 1, k, level(), 1, live.data());
    for (std::size_t j = 0; j < k; ++j) {
      EXPECT_EQ(single.ids[j], batch.ids[i * k + j]) << "query " << i << " rank " << j;
      const float a = single.scores[j], b = batch.scores[i * k + j];
      EXPECT_TRUE(a == b || (std::isnan(a) && std::isnan(b))) << "query " << i << " rank " << j;
      if (batch.ids[i * k + j] >= 0) {
        EXPECT_NE(live[static_cast<std::size_t>(batch.ids[i * k + j])], 0);
      }
    }
  }
}

TEST_P(TopKLevel, NanScoresRankLast) {
  const std::size_t n = 6, d = 4, m = 1, k = 8;
  auto db = small_int_matrix(n, d, 23, 1, 2);  // all positive scores
  db[2 * d + 1] = std::numeric_limits<float>::quiet_NaN();
  const std::vector<float> q(d, 1.0f);
  const TopKResult got = run(db, n, d, q, m, k, level());
  EXPECT_EQ(got.ids[5], 2);
  EXPECT_TRUE(std::isnan(got.scores[5]));
  EXPECT_EQ(got.ids[6], -1);
  for (std::size_t j = 0; j < 5; ++j) EXPECT_NE(got.ids[j], 2);
}

TEST_P(TopKLevel, UnitVectorsCosine) {
  // The intended use: L2-normalised vectors, where a row's score with itself is ~1.
  const std::size_t n = 1000, d = 128, k = 3;
  auto db = normal_matrix(n, d, 24);
  for (std::size_t r = 0; r < n; ++r) {
    double norm = 0.0;
    for (std::size_t c = 0; c < d; ++c) norm += double(db[r * d + c]) * db[r * d + c];
    for (std::size_t c = 0; c < d; ++c) db[r * d + c] = static_cast<float>(db[r * d + c] / std::sqrt(norm));
  }
  const std::vector<float> q(db.begin() + 417 * d, db.begin() + 418 * d);
  const TopKResult got = run(db, n, d, q, 1, k, level());
  EXPECT_EQ(got.ids[0], 417);
  EXPECT_NEAR(got.scores[0], 1.0f, 1e-5f);
  EXPECT_LT(got.scores[1], 0.5f);
}

INSTANTIATE_TEST_SUITE_P(AllLevels, TopKLevel,
                         ::testing::Values(SimdLevel::scalar, SimdLevel::avx2, SimdLevel::avx512),
                         [](const ::testing::TestParamInfo<SimdLevel>& info) {
                           return std::string(lookalike::simd_level_name(info.param));
                         });

// ---- level independent ------------------------------------------------------------------------

TEST(TopK, LevelsAgreeOnFloats) {
  const std::size_t n = 3001, d = 200, m = 13, k = 12;
  const auto db = normal_matrix(n, d, 25);
  const auto q = normal_matrix(m, d, 26);
  const TopKResult base = run(db, n, d, q, m, k, SimdLevel::scalar);
  for (SimdLevel level : lookalike::kAllSimdLevels) {
    if (!lookalike::simd_level_supported(level)) continue;
    const TopKResult got = run(db, n, d, q, m, k, level, 2);
    for (std::size_t j = 0; j < m * k; ++j) EXPECT_NEAR(got.scores[j], base.scores[j], 1e-3);
  }
}

TEST(TopK, DefaultOptionsUseTheBestLevel) {
  const auto db = normal_matrix(50, 10, 27);
  const auto q = normal_matrix(2, 10, 28);
  const TopKResult got = lookalike::topk_f32(db.data(), 50, 10, q.data(), 2, 5);
  expect_close(got, db, q, 10, reference_topk(db, 50, 10, q, 2, 5), 5);
  EXPECT_TRUE(lookalike::simd_level_supported(lookalike::default_simd_level()));
}

TEST(TopK, UnsupportedLevelThrows) {
  const auto db = normal_matrix(4, 4, 29);
  for (SimdLevel level : lookalike::kAllSimdLevels) {
    TopKOptions opt;
    opt.simd = level;
    if (lookalike::simd_level_supported(level)) {
      EXPECT_NO_THROW(lookalike::topk_f32(db.data(), 4, 4, db.data(), 4, 2, opt));
    } else {
      EXPECT_THROW(lookalike::topk_f32(db.data(), 4, 4, db.data(), 4, 2, opt), std::invalid_argument);
    }
  }
}

TEST(TopK, NullPointersThrow) {
  float out_s[4];
  std::int64_t out_i[4];
  const float x[4] = {1, 2, 3, 4};
  EXPECT_THROW(lookalike::topk_f32(nullptr, 1, 4, x, 1, 4, out_s, out_i), std::invalid_argument);
  EXPECT_THROW(lookalike::topk_f32(x, 1, 4, nullptr, 1, 4, out_s, out_i), std::invalid_argument);
  EXPECT_THROW(lookalike::topk_f32(x, 1, 4, x, 1, 4, nullptr, out_i), std::invalid_argument);
  EXPECT_NO_THROW(lookalike::topk_f32(nullptr, 0, 4, x, 1, 4, out_s, out_i));
}

TEST(PlanJobs, SplitsByRowsOrQueries) {
  using lookalike::detail::plan_jobs;
  // Small problems stay on the calling thread.
  EXPECT_EQ(plan_jobs(1000, 1, 384, 10, 8).jobs.size(), 1u);
  // One query over many rows: row ranges that tile [0, n).
  const auto rows = plan_jobs(100000, 1, 384, 10, 4);
  ASSERT_TRUE(rows.row_split);
  ASSERT_EQ(rows.jobs.size(), 4u);
  for (std::size_t j = 0; j < 4; ++j) {
    EXPECT_EQ(rows.jobs[j].q0, 0u);
    EXPECT_EQ(rows.jobs[j].q1, 1u);
    EXPECT_EQ(rows.jobs[j].r0, j == 0 ? 0u : rows.jobs[j - 1].r1);
  }
  EXPECT_EQ(rows.jobs.back().r1, 100000u);
  // Many queries over few rows, or heaps too large to keep per thread: query ranges.
  EXPECT_FALSE(plan_jobs(100, 5000, 384, 10, 4).row_split);
  EXPECT_FALSE(plan_jobs(100000, 5000, 384, 1000, 4).row_split);
  // Never an empty job, even with more threads than rows.
  const auto few = plan_jobs(5, 1, 10000000, 1, 16);
  EXPECT_EQ(few.jobs.size(), 5u);
  for (const auto& job : few.jobs) EXPECT_LT(job.r0, job.r1);
}

TEST(SimdLevels, NamesRoundTrip) {
  for (SimdLevel level : lookalike::kAllSimdLevels) {
    EXPECT_EQ(lookalike::parse_simd_level(lookalike::simd_level_name(level)), level);
  }
  EXPECT_FALSE(lookalike::parse_simd_level("sse9").has_value());
  EXPECT_TRUE(lookalike::simd_level_supported(SimdLevel::scalar));
}

TEST(BoundedHeap, KeepsTheBestInRankOrder) {
  std::vector<lookalike::detail::Hit> storage(4);
  lookalike::detail::BoundedHeap heap(storage.data(), storage.size());
  const float scores[] = {0.5f, 0.9f, 0.1f, 0.9f, 0.7f, 0.2f, 0.9f, 0.95f};
  for (std::int64_t id = 0; id < 8; ++id) heap.offer(scores[id], id);
  std::vector<lookalike::detail::Hit> kept(heap.begin(), heap.end());
  std::sort(kept.begin(), kept.end(), lookalike::detail::RanksBefore{});
  ASSERT_EQ(kept.size(), 4u);
  EXPECT_EQ(kept[0].id, 7);
  EXPECT_EQ(kept[1].id, 1);
  EXPECT_EQ(kept[2].id, 3);
  EXPECT_EQ(kept[3].id, 6);
}

}  // namespace
