// The HNSW graph (hnsw.hpp over the vendored usearch) and its distance kernels: every kernel
// against a naive dot product at each SIMD level this CPU runs; the one-call re-ranked search
// against a naive reference (exact scores of the graph's candidates, the live mask honoured,
// removed ids never returned); save / load round trips; batched search equal to one at a time.
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <limits>
#include <random>
#include <set>
#include <utility>
#include <vector>

#include "lookalike/hnsw.hpp"

namespace {

using lookalike::HnswGraph;
using lookalike::RerankSource;
using lookalike::SimdLevel;
using Kind = lookalike::hnsw_metric::Kind;

std::vector<float> unit_rows(std::size_t n, std::size_t d, std::uint32_t seed) {
  std::mt19937 gen(seed);
  std::normal_distribution<float> dist(0.0f, 1.0f);
  std::vector<float> x(n * d);
  for (std::size_t r = 0; r < n; ++r) {
    double norm = 0;
    for (std::size_t j = 0; j < d; ++j) {
      x[r * d + j] = dist(gen);
      norm += double(x[r * d + j]) * x[r * d + j];
    }
    for (std::size_t j = 0; j < d; ++j) x[r * d + j] = static_cast<float>(x[r * d + j] / std::sqrt(norm));
  }
  return x;
}

std::vector<SimdLevel> levels() {
  std::vector<SimdLevel> out;
  for (SimdLevel l : lookalike::kAllSimdLevels) {
    if (lookalike::simd_level_supported(l)) out.push_back(l);
  }
  return out;
}

TEST(HnswMetric, EveryKernelMatchesANaiveDotProduct) {
  const lookalike::hnsw_metric::Features f = lookalike::hnsw_metric::cpu_features();
  for (std::size_t d : {1u, 7u, 16u, 33u, 64u, 100u, 384u, 1280u}) {
    const std::vector<float> x = unit_rows(2, d, static_cast<std::uint32_t>(d));
    std::vector<lookalike::f16> h(2 * d);
    std::vector<lookalike::bf16> b(2 * d);
    std::vector<std::int8_t> c(2 * d);
    std::mt19937 gen(7);
    std::uniform_int_distribution<int> codes(-127, 127);
    for (std::size_t i = 0; i < 2 * d; ++i) {
      h[i] = lookalike::to_f16(x[i]);
      b[i] = lookalike::to_bf16(x[i]);
      c[i] = static_cast<std::int8_t>(codes(gen));
    }
    double want[4] = {0, 0, 0, 0};
    std::int64_t want_i8 = 0;
    for (std::size_t j = 0; j < d; ++j) {
      want[0] += double(x[j]) * x[d + j];
      want[1] += double(lookalike::to_float(h[j])) * lookalike::to_float(h[d + j]);
      want[2] += double(lookalike::to_float(b[j])) * lookalike::to_float(b[d + j]);
      want_i8 += std::int64_t(c[j]) * c[d + j];
    }
    for (SimdLevel level : levels()) {
      auto dist = [&](Kind kind, const void* p, std::size_t bytes) {
        const auto fn = lookalike::hnsw_metric::pick(kind, level, f);
        const auto a = reinterpret_cast<std::size_t>(p);
        return fn(a, a + bytes * d, d);
      };
      SCOPED_TRACE(testing::Message() << "d=" << d << " level=" << lookalike::simd_level_name(level));
      EXPECT_NEAR(dist(Kind::f32, x.data(), 4), 1.0 - want[0], 1e-5);
      EXPECT_NEAR(dist(Kind::f16, h.data(), 2), 1.0 - want[1], 1e-5);
      EXPECT_NEAR(dist(Kind::bf16, b.data(), 2), 1.0 - want[2], 1e-5);
      EXPECT_EQ(dist(Kind::i8, c.data(), 1), 1.0f - static_cast<float>(want_i8));
    }
  }
}

TEST(HnswGraph, FindRowAgreesWithABinarySearch) {
  std::mt19937 gen(3);
  for (int trial = 0; trial < 20; ++trial) {
    std::vector<std::int64_t> ids;
    std::int64_t id = trial;
    std::uniform_int_distribution<int> gap(1, trial % 3 == 0 ? 1 : trial % 3 == 1 ? 5 : 1000);
    for (int i = 0; i < 500 + trial * 37; ++i) ids.push_back(id += gap(gen));
    for (std::int64_t probe = -3; probe < ids.back() + 5; probe += 1 + probe / 50) {
      const auto at = std::lower_bound(ids.begin(), ids.end(), probe);
      const std::size_t want = at != ids.end() && *at == probe ? static_cast<std::size_t>(at - ids.begin()) : ids.size();
      ASSERT_EQ(lookalike::detail::find_row(ids.data(), ids.size(), probe), want) << "probe " << probe;
    }
  }
  EXPECT_EQ(lookalike::detail::find_row(nullptr, 0, 5), 0u);
}

struct Fixture {
  std::size_t n = 3000, d = 48;
  std::vector<float> x = unit_rows(n, d, 11);
  std::vector<std::int64_t> ids;  // ascending image ids, one per row
  std::vector<std::uint8_t> live;
  Fixture() : ids(n), live(n, 1) {
    for (std::size_t r = 0; r < n; ++r) ids[r] = static_cast<std::int64_t>(10 + 3 * r);
  }
  std::vector<std::uint64_t> keys() const { return std::vector<std::uint64_t>(ids.begin(), ids.end()); }
  // Two chunks, as the server's fixed-size chunks hand them over.
  RerankSource source() const {
    RerankSource src;
    src.storage = lookalike::Storage::f32;
    src.d = d;
    src.chunks = {x.data(), x.data() + 1024 * d};
    src.starts = {0, 1024, n};
    src.ids = ids.data();
    src.live = live.data();
    src.n = n;
    return src;
  }
};

// The reference: the graph's own candidates, mapped to rows, dead rows dropped, exact float64
// scores, best k by (score desc, row asc).
std::vector<std::pair<double, std::int64_t>> naive(const HnswGraph& g, const Fixture& fx, const float* q, std::size_t k,
                                                   std::size_t count) {
  std::vector<std::uint64_t> keys(count);
  keys.resize(g.search(q, count, keys.data()));
  std::vector<std::pair<double, std::int64_t>> out;
  for (std::uint64_t key : keys) {
    const auto at = std::find(fx.ids.begin(), fx.ids.end(), static_cast<std::int64_t>(key));
    if (at == fx.ids.end()) continue;
    const auto row = static_cast<std::size_t>(at - fx.ids.begin());
    if (!fx.live[row]) continue;
    double s = 0;
    for (std::size_t j = 0; j < fx.d; ++j) s += double(q[j]) * fx.x[row * fx.d + j];
    out.emplace_back(s, static_cast<std::int64_t>(row));
  }
  std::sort(out.begin(), out.end(), [](const auto& a, const auto& b) {
    return a.first > b.first || (a.first == b.first && a.second < b.second);
  });
  if (out.size() > k) out.resize(k);
  return out;
}

TEST(HnswGraph, RerankedSearchEqualsTheNaiveReranking) {
  for (Kind kind : {Kind::f32, Kind::f16, Kind::bf16, Kind::i8}) {
    Fixture fx;
    HnswGraph g(fx.d, kind, 16, 64, 64);
    const std::vector<std::uint64_t> keys = fx.keys();
    ASSERT_EQ(g.add(keys.data(), fx.x.data(), fx.n, 2), fx.n);
    ASSERT_EQ(g.add(keys.data(), fx.x.data(), 10, 1), 0u);  // held keys are skipped
    // Remove some ids from the graph and retire others only in the mask.
    std::vector<std::uint64_t> removed;
    for (std::size_t r = 0; r < fx.n; r += 7) removed.push_back(keys[r]);
    EXPECT_EQ(g.remove(removed.data(), removed.size()), removed.size());
    EXPECT_EQ(g.remove(removed.data(), 1), 0u);
    for (std::size_t r = 1; r < fx.n; r += 5) fx.live[r] = 0;
    const RerankSource src = fx.source();
    const std::vector<float> queries = unit_rows(40, fx.d, 5);
    const std::size_t k = 10, count = 40;
    std::vector<float> s(k);
    std::vector<std::int64_t> rows(k);
    for (std::size_t i = 0; i < 40; ++i) {
      const float* q = queries.data() + i * fx.d;
      const auto want = naive(g, fx, q, k, count);
      const std::size_t got = g.search_reranked(q, k, count, src, s.data(), rows.data());
      ASSERT_EQ(got, want.size());
      for (std::size_t j = 0; j < got; ++j) {
        EXPECT_EQ(rows[j], want[j].second) << "query " << i << " rank " << j;
        EXPECT_NEAR(s[j], want[j].first, 1e-5);
        EXPECT_TRUE(fx.live[static_cast<std::size_t>(rows[j])]);
        EXPECT_NE(rows[j] % 7, 0) << "a removed id came back";
      }
    }
    // Many at once: the same answers, padded.
    std::vector<float> ms(40 * k);
    std::vector<std::int64_t> mr(40 * k);
    g.search_reranked_many(queries.data(), 40, k, count, src, 3, ms.data(), mr.data());
    for (std::size_t i = 0; i < 40; ++i) {
      const std::size_t got = g.search_reranked(queries.data() + i * fx.d, k, count, src, s.data(), rows.data());
      for (std::size_t j = 0; j < k; ++j) {
        EXPECT_EQ(mr[i * k + j], j < got ? rows[j] : -1);
      }
    }
  }
}

TEST(HnswGraph, SaveLoadRoundTripKeepsEveryAnswer) {
  Fixture fx;
  HnswGraph g(fx.d, Kind::bf16, 16, 64, 48);
  const std::vector<std::uint64_t> keys = fx.keys();
  g.add(keys.data(), fx.x.data(), fx.n, 2);
  g.remove(keys.data(), 5);
  const std::vector<std::uint8_t> bytes = g.save();
  auto back = HnswGraph::load(bytes.data(), bytes.size());
  EXPECT_EQ(back->size(), g.size());
  EXPECT_EQ(back->kind(), Kind::bf16);
  EXPECT_EQ(back->dimensions(), fx.d);
  EXPECT_EQ(back->save(), bytes);
  back->set_expansion(64, 48);
  std::vector<std::uint64_t> a(20), b(20);
  for (std::size_t i = 0; i < 50; ++i) {
    const float* q = fx.x.data() + i * 31 * fx.d;
    ASSERT_EQ(g.search(q, 20, a.data()), back->search(q, 20, b.data()));
    EXPECT_EQ(a, b);
  }
  EXPECT_FALSE(back->contains(keys[0]));
  EXPECT_TRUE(back->contains(keys[5]));
  // A graph removed ids were re-added to answers them again.
  EXPECT_EQ(back->add(keys.data(), fx.x.data(), 5, 1), 5u);
  EXPECT_TRUE(back->contains(keys[0]));
}

TEST(HnswGraph, DamagedBytesAreRefused) {
  Fixture fx;
  HnswGraph g(fx.d, Kind::i8, 16, 64, 48);
  const std::vector<std::uint64_t> keys = fx.keys();
  g.add(keys.data(), fx.x.data(), 200, 1);
  std::vector<std::uint8_t> bytes = g.save();
  EXPECT_THROW(HnswGraph::load(bytes.data(), bytes.size() / 2), std::runtime_error);
  std::vector<std::uint8_t> junk(bytes.size(), 0x5a);
  EXPECT_THROW(HnswGraph::load(junk.data(), junk.size()), std::runtime_error);
}

}  // namespace
