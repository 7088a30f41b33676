// The AMX tile kernels (detail/amx_kernel.hpp) and the avx512 f32 tile's one-pass reduction,
// against naive references and the vector kernels. Tests of a path this CPU (or OS) lacks are
// skipped with the reason.
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <limits>
#include <random>
#include <string>
#include <vector>

#include "lookalike/topk.hpp"
#include "lookalike/types.hpp"

namespace {

using lookalike::bf16;
using lookalike::Chunk;
using lookalike::SimdLevel;
using lookalike::TopKOptions;
using lookalike::TopKResult;
namespace amx = lookalike::detail::amx;

std::vector<float> normals(std::size_t count, std::uint32_t seed, float scale = 1.0f) {
  std::mt19937 gen(seed);
  std::normal_distribution<float> dist;
  std::vector<float> out(count);
  for (float& x : out) x = dist(gen) * scale;
  return out;
}

std::vector<float> small_ints(std::size_t count, std::uint32_t seed) {
  std::mt19937 gen(seed);
  std::uniform_int_distribution<int> dist(-3, 3);
  std::vector<float> out(count);
  for (float& x : out) x = static_cast<float>(dist(gen));
  return out;
}

bool has_avx512() { return lookalike::simd_level_supported(SimdLevel::avx512); }

template <class T>
std::string amx_skip_reason() {
  if (!has_avx512()) return "no AVX-512 on this CPU: the AMX kernels run at the avx512 level only";
  if (!amx::available<T>()) {
    return "no AMX-TILE + AMX-" + std::string(std::is_same_v<T, bf16> ? "BF16" : "INT8") +
           " here (CPU flags, OS tile permission, or LOOKALIKE_AMX=0)";
  }
  return "";
}

#define SKIP_WITHOUT_AMX(T)                                        \
  do {                                                              \
    const std::string reason = amx_skip_reason<T>();                \
    if (!reason.empty()) {                                          \
      GTEST_SKIP() << reason;                                       \
    }                                                               \
  } while (0)

TopKOptions options(bool use_amx, std::size_t threads = 1) {
  TopKOptions o;
  o.simd = SimdLevel::avx512;
  o.amx = use_amx;
  o.threads = threads;
  return o;
}

// A bf16 database (its exact float values beside it) or an int8 one with per-row scales.
template <class T>
struct Db {
  std::vector<T> data;
  std::vector<float> scales;
  std::vector<float> values;  // what the stored rows stand for
};

template <class T>
Db<T> make_db(const std::vector<float>& x, std::size_t n, std::size_t d, bool exact_ints) {
  Db<T> db;
  db.data.resize(n * d);
  db.values.resize(n * d);
  db.scales.assign(n, 1.0f);
  for (std::size_t r = 0; r < n; ++r) {
    float peak = 0.0f;
    for (std::size_t c = 0; c < d; ++c) peak = std::max(peak, std::fabs(x[r * d + c]));
    const float scale = exact_ints || peak == 0.0f ? 1.0f : peak / 127.0f;
    if constexpr (std::is_same_v<T, std::int8_t>) db.scales[r] = scale;
    for (std::size_t c = 0; c < d; ++c) {
      const std::size_t i = r * d + c;
      if constexpr (std::is_same_v<T, bf16>) {
        db.data[i] = lookalike::to_bf16(x[i]);
        db.values[i] = lookalike::to_float(db.data[i]);
      } else {
        db.data[i] = static_cast<std::int8_t>(std::clamp(std::nearbyint(x[i] / scale), -127.0f, 127.0f));
        db.values[i] = static_cast<float>(db.data[i]) * scale;
      }
    }
  }
  return db;
}

template <class T>
TopKResult search(const Db<T>& db, std::size_t n, std::size_t d, const std::vector<float>& q, std::size_t m,
                  std::size_t k, const TopKOptions& o) {
  return lookalike::topk<T>(db.data.data(), n, d, q.data(), m, k, o, db.scales.data());
}

double dot(const float* a, const float* b, std::size_t d) {
  double s = 0.0;
  for (std::size_t c = 0; c < d; ++c) s += static_cast<double>(a[c]) * static_cast<double>(b[c]);
  return s;
}

// Scores within `tol` of the float64 reference, each the score of its own row, best first, and
// no row clearly better than the k-th missing.
template <class T>
void expect_close_to_reference(const Db<T>& db, std::size_t n, std::size_t d, const std::vector<float>& q,
                               std::size_t m, std::size_t k, const TopKResult& got, double tol) {
  for (std::size_t i = 0; i < m; ++i) {
    std::vector<double> all(n);
    for (std::size_t r = 0; r < n; ++r) all[r] = dot(q.data() + i * d, db.values.data() + r * d, d);
    std::vector<double> sorted = all;
    std::sort(sorted.begin(), sorted.end(), std::greater<>());
    const std::size_t real = std::min(k, n);
    for (std::size_t j = 0; j < k; ++j) {
      const std::int64_t id = got.ids[i * k + j];
      if (j >= real) {
        EXPECT_EQ(id, -1);
        continue;
      }
      ASSERT_GE(id, 0);
      EXPECT_NEAR(got.scores[i * k + j], all[static_cast<std::size_t>(id)], tol) << "query " << i << " rank " << j;
      EXPECT_NEAR(got.scores[i * k + j], sorted[j], tol) << "query " << i << " rank " << j;
      if (j > 0) {
        EXPECT_LE(got.scores[i * k + j], got.scores[i * k + j - 1]);
      }
    }
  }
}

void expect_identical(const TopKResult& a, const TopKResult& b) {
  ASSERT_EQ(a.ids.size(), b.ids.size());
  for (std::size_t j = 0; j < a.ids.size(); ++j) {
    EXPECT_EQ(a.ids[j], b.ids[j]) << "entry " << j;
    EXPECT_EQ(std::memcmp(&a.scores[j], &b.scores[j], sizeof(float)), 0)
        << "entry " << j << ": " << a.scores[j] << " vs " << b.scores[j];
  }
}

// Shapes that hit every edge of the kernel: d around the 32 / 64-element k-step, rows around the
// 16- and 32-row groups and the block, queries around the 16-query B tile and the 64-query call
// (calls of fewer than amx::kMinQueries = 7 queries take the vector kernels: they check that
// the switch is seamless).
struct Shape {
  std::size_t n, d, m, k;
};
const Shape kShapes[] = {
    {1, 1, 1, 1},     {15, 7, 6, 3},     {16, 31, 16, 5},   {17, 32, 17, 10}, {33, 33, 40, 10},
    {200, 64, 64, 10}, {517, 65, 70, 20}, {1000, 100, 7, 10}, {700, 384, 65, 10}, {300, 129, 1, 300},
};

TEST(AmxBf16, MatchesFloat64Reference) {
  SKIP_WITHOUT_AMX(bf16);
  std::uint32_t seed = 1;
  for (const Shape& s : kShapes) {
    const std::vector<float> x = normals(s.n * s.d, seed++);
    const std::vector<float> q = normals(s.m * s.d, seed++);
    const Db<bf16> db = make_db<bf16>(x, s.n, s.d, false);
    const TopKResult got = search(db, s.n, s.d, q, s.m, s.k, options(true));
    SCOPED_TRACE("n=" + std::to_string(s.n) + " d=" + std::to_string(s.d) + " m=" + std::to_string(s.m));
    expect_close_to_reference(db, s.n, s.d, q, s.m, s.k, got, 1e-5 * static_cast<double>(s.d) + 1e-5);
    // And within float rounding of the vector kernel (which widens rows to float).
    const TopKResult vec = search(db, s.n, s.d, q, s.m, s.k, options(false));
    for (std::size_t j = 0; j < got.scores.size(); ++j) {
      EXPECT_NEAR(got.scores[j], vec.scores[j], 1e-5 * static_cast<double>(s.d) + 1e-5);
    }
  }
}

TEST(AmxBf16, SmallIntegersExactWithTies) {
  SKIP_WITHOUT_AMX(bf16);
  const std::size_t n = 517, d = 40, m = 33, k = 600;
  const std::vector<float> x = small_ints(n * d, 7);
  const std::vector<float> q = small_ints(m * d, 8);
  const Db<bf16> db = make_db<bf16>(x, n, d, true);
  // Ties broken by the lower row, k > n (every row a candidate until the heaps fill).
  expect_identical(search(db, n, d, q, m, k, options(true)), search(db, n, d, q, m, k, options(false)));
}

// The tiles only screen: every bf16 result is the vector kernel's, bit for bit, on every shape.
TEST(AmxBf16, BitIdenticalToTheVectorKernel) {
  SKIP_WITHOUT_AMX(bf16);
  std::uint32_t seed = 300;
  for (const Shape& s : kShapes) {
    SCOPED_TRACE("n=" + std::to_string(s.n) + " d=" + std::to_string(s.d) + " m=" + std::to_string(s.m));
    const std::vector<float> x = normals(s.n * s.d, seed++);
    const std::vector<float> q = normals(s.m * s.d, seed++, 0.3f);
    const Db<bf16> db = make_db<bf16>(x, s.n, s.d, false);
    expect_identical(search(db, s.n, s.d, q, s.m, s.k, options(true)), search(db, s.n, s.d, q, s.m, s.k, options(false)));
  }
}

// Rows a hair apart (one bf16 step in a few elements): many pairs fall inside the screen's bound
// around the k-th score, where a bound too small would drop a row the vector kernel keeps.
TEST(AmxBf16, NearDuplicateRowsInsideTheBound) {
  SKIP_WITHOUT_AMX(bf16);
  const std::size_t n = 2000, d = 384, m = 40, k = 10;
  const std::vector<float> base = normals(20 * d, 31);
  std::vector<float> x(n * d);
  std::mt19937 gen(32);
  std::uniform_int_distribution<std::size_t> pick(0, d - 1);
  for (std::size_t r = 0; r < n; ++r) {
    std::copy_n(base.begin() + static_cast<std::ptrdiff_t>((r % 20) * d), d, x.begin() + static_cast<std::ptrdiff_t>(r * d));
    for (int t = 0; t < 3; ++t) x[r * d + pick(gen)] *= 1.0f + (t % 2 ? 1.0f : -1.0f) * std::ldexp(1.0f, -8);
  }
  std::vector<float> q(m * d);
  for (std::size_t i = 0; i < m; ++i) {  // queries near the base rows: the top k is all near-duplicates
    for (std::size_t c = 0; c < d; ++c) q[i * d + c] = base[(i % 20) * d + c] + 0.01f * normals(1, static_cast<std::uint32_t>(i * d + c))[0];
  }
  const Db<bf16> db = make_db<bf16>(x, n, d, false);
  expect_identical(search(db, n, d, q, m, k, options(true)), search(db, n, d, q, m, k, options(false)));
  for (std::size_t threads : {2, 5}) {
    expect_identical(search(db, n, d, q, m, k, options(true, threads)), search(db, n, d, q, m, k, options(false, threads)));
  }
}

// Magnitudes at the ends of float's range, denormal rows, and rows holding inf / NaN: the bound
// holds (or turns NaN / inf and keeps the pair), so results stay the vector kernel's.
TEST(AmxBf16, ExtremeMagnitudesDenormalsAndNonFiniteRows) {
  SKIP_WITHOUT_AMX(bf16);
  const std::size_t n = 300, d = 70, m = 20, k = 12;
  for (float row_scale : {1.0f, 1e-30f, 1e-39f, 1e18f}) {
    for (float query_scale : {1.0f, 1e-30f, 1e-38f, 1e15f}) {
      SCOPED_TRACE("row scale " + std::to_string(row_scale) + " query scale " + std::to_string(query_scale));
      std::vector<float> x = normals(n * d, 41, row_scale);
      if (row_scale == 1.0f) {
        x[5 * d + 3] = std::numeric_limits<float>::infinity();
        x[6 * d + 9] = -std::numeric_limits<float>::infinity();
        x[7 * d + 1] = std::numeric_limits<float>::quiet_NaN();
        for (std::size_t c = 0; c < d; ++c) x[8 * d + c] = c % 2 ? 3e38f : -3e38f;  // overflows in the sums
        x[9 * d + 2] = std::ldexp(1.0f, -130);                                   // a denormal element
      }
      const std::vector<float> q = normals(m * d, 42, query_scale);
      const Db<bf16> db = make_db<bf16>(x, n, d, false);
      expect_identical(search(db, n, d, q, m, k, options(true)), search(db, n, d, q, m, k, options(false)));
    }
  }
}

// Deleted rows and one-per-group search (int64 and int32 group ids) go through the same screen:
// the same answer as the vector kernels, and no deleted row returned.
template <class T>
void expect_identical_with_masks_and_groups(const Db<T>& db, std::size_t n, std::size_t d, const std::vector<float>& q,
                                            std::size_t m, std::size_t k) {
  std::vector<std::uint8_t> live(n, 1);
  std::vector<std::int64_t> groups(n);
  std::vector<std::int32_t> groups32(n);
  for (std::size_t r = 0; r < n; ++r) {
    live[r] = r % 7 != 3;
    groups[r] = static_cast<std::int64_t>((r * 37) % 200);
    groups32[r] = static_cast<std::int32_t>(groups[r]);
  }
  for (int width : {0, 64, 32}) {
    for (bool masked : {false, true}) {
      TopKOptions on = options(true), off = options(false);
      for (TopKOptions* o : {&on, &off}) {
        o->live = masked ? live.data() : nullptr;
        o->one_per_group = width != 0;
        o->groups = width == 64 ? groups.data() : nullptr;
        o->groups32 = width == 32 ? groups32.data() : nullptr;
      }
      const TopKResult got = search(db, n, d, q, m, k, on);
      expect_identical(got, search(db, n, d, q, m, k, off));
      for (std::int64_t id : got.ids) EXPECT_TRUE(!masked || id < 0 || live[static_cast<std::size_t>(id)] != 0);
    }
  }
}

TEST(AmxBf16, LiveMaskAndOnePerGroupBitIdentical) {
  SKIP_WITHOUT_AMX(bf16);
  const std::size_t n = 1500, d = 96, m = 50, k = 15;
  const Db<bf16> db = make_db<bf16>(normals(n * d, 51), n, d, false);
  expect_identical_with_masks_and_groups(db, n, d, normals(m * d, 52, 0.2f), m, k);
}

template <class T>
void batch_threads_chunks_invariant() {
  const std::size_t n = 1111, d = 70, m = 37, k = 12;
  const std::vector<float> x = normals(n * d, 21);
  const std::vector<float> q = normals(m * d, 22, 3.0f);
  const Db<T> db = make_db<T>(x, n, d, false);
  const TopKResult base = search(db, n, d, q, m, k, options(true));
  for (std::size_t threads : {2, 3, 7}) expect_identical(search(db, n, d, q, m, k, options(true, threads)), base);
  // A query's answer does not depend on the other queries of a call of >= kMinQueries (the
  // tiles' arithmetic is per (query, row)): query i inside another batch of 20 (its slot moved).
  for (std::size_t i : {std::size_t{0}, std::size_t{17}, m - 1}) {
    std::vector<float> batch(q.begin() + static_cast<std::ptrdiff_t>((m - 20) * d), q.end());
    std::copy_n(q.begin() + static_cast<std::ptrdiff_t>(i * d), d, batch.begin() + 5 * static_cast<std::ptrdiff_t>(d));
    const TopKResult other = search(db, n, d, batch, 20, k, options(true));
    for (std::size_t j = 0; j < k; ++j) {
      EXPECT_EQ(other.ids[5 * k + j], base.ids[i * k + j]);
      EXPECT_EQ(other.scores[5 * k + j], base.scores[i * k + j]);
    }
    // Alone (a call below kMinQueries: the vector kernel): bit for bit.
    std::vector<float> one(q.begin() + static_cast<std::ptrdiff_t>(i * d), q.begin() + static_cast<std::ptrdiff_t>((i + 1) * d));
    const TopKResult single = search(db, n, d, one, 1, k, options(true));
    for (std::size_t j = 0; j < k; ++j) {
      EXPECT_EQ(single.ids[j], base.ids[i * k + j]);
      EXPECT_EQ(single.scores[j], base.scores[i * k + j]);
    }
  }
  // Chunks of odd sizes (rows 0..99, 100..612, 613..): the same answer.
  const Chunk<T> chunks[] = {{db.data.data(), 100, db.scales.data()},
                             {db.data.data() + 100 * d, 513, db.scales.data() + 100},
                             {db.data.data() + 613 * d, n - 613, db.scales.data() + 613}};
  TopKResult chunked;
  chunked.scores.resize(m * k);
  chunked.ids.resize(m * k);
  lookalike::topk_chunks(chunks, 3, d, q.data(), m, k, chunked.scores.data(), chunked.ids.data(), options(true, 3));
  expect_identical(chunked, base);
}

TEST(AmxBf16, BatchThreadsAndChunksDoNotChangeResults) {
  SKIP_WITHOUT_AMX(bf16);
  batch_threads_chunks_invariant<bf16>();
}

TEST(AmxInt8, BatchThreadsAndChunksDoNotChangeResults) {
  SKIP_WITHOUT_AMX(std::int8_t);
  batch_threads_chunks_invariant<std::int8_t>();
}

TEST(AmxInt8, BitIdenticalToTheVectorIntegerKernels) {
  SKIP_WITHOUT_AMX(std::int8_t);
  std::uint32_t seed = 100;
  for (const Shape& s : kShapes) {
    SCOPED_TRACE("n=" + std::to_string(s.n) + " d=" + std::to_string(s.d) + " m=" + std::to_string(s.m));
    const std::vector<float> x = normals(s.n * s.d, seed++);
    const std::vector<float> q = normals(s.m * s.d, seed++, 5.0f);
    const Db<std::int8_t> db = make_db<std::int8_t>(x, s.n, s.d, false);
    const TopKResult got = search(db, s.n, s.d, q, s.m, s.k, options(true));
    expect_identical(got, search(db, s.n, s.d, q, s.m, s.k, options(false)));  // VNNI (or AVX2) integers
    TopKOptions avx2 = options(false);
    avx2.simd = SimdLevel::avx2;
    expect_identical(got, search(db, s.n, s.d, q, s.m, s.k, avx2));
  }
}

TEST(AmxInt8, ExtremeQueriesAndLargeD) {
  SKIP_WITHOUT_AMX(std::int8_t);
  // Rows at +-127 and queries whose int16 rounding reaches the largest magnitudes (the hi / lo
  // split at its ends), at d where the int16 range is cut (d * 127 * qmax < 2^31).
  for (std::size_t d : {std::size_t{64}, std::size_t{1000}, std::size_t{4099}}) {
    const std::size_t n = 40, m = 18, k = 7;
    std::vector<float> x(n * d), q(m * d);
    for (std::size_t i = 0; i < x.size(); ++i) x[i] = (i % 3 == 0) ? 127.0f : (i % 3 == 1 ? -127.0f : 5.0f);
    std::mt19937 gen(static_cast<std::uint32_t>(d));
    std::uniform_real_distribution<float> u(-1.0f, 1.0f);
    for (float& v : q) v = u(gen);
    for (std::size_t i = 0; i < m; ++i) q[i * d + i % d] = (i % 2 ? -1.99f : 1.99f);  // the peak: |q16| near qmax
    const Db<std::int8_t> db = make_db<std::int8_t>(x, n, d, true);
    expect_identical(search(db, n, d, q, m, k, options(true)), search(db, n, d, q, m, k, options(false)));
  }
}

// int8 tiles screen too: rows one integer step apart put many pairs inside the bound
// (||row|| ||lo||) around the k-th score, where a bound too small would drop a row.
TEST(AmxInt8, NearDuplicateRowsInsideTheBound) {
  SKIP_WITHOUT_AMX(std::int8_t);
  const std::size_t n = 2000, d = 384, m = 40, k = 10;
  const Db<std::int8_t> base = make_db<std::int8_t>(normals(20 * d, 61), 20, d, false);
  Db<std::int8_t> db;
  db.data.resize(n * d);
  db.scales.resize(n);
  std::mt19937 gen(62);
  std::uniform_int_distribution<std::size_t> pick(0, d - 1);
  for (std::size_t r = 0; r < n; ++r) {
    std::copy_n(base.data.begin() + static_cast<std::ptrdiff_t>((r % 20) * d), d, db.data.begin() + static_cast<std::ptrdiff_t>(r * d));
    db.scales[r] = base.scales[r % 20];
    for (int t = 0; t < 3; ++t) {
      std::int8_t& v = db.data[r * d + pick(gen)];
      v = static_cast<std::int8_t>(std::clamp(v + (t % 2 ? 1 : -1), -127, 127));
    }
  }
  std::vector<float> q(m * d);
  const std::vector<float> noise = normals(m * d, 63, 0.01f);
  for (std::size_t i = 0; i < m; ++i) {
    for (std::size_t c = 0; c < d; ++c) q[i * d + c] = static_cast<float>(base.data[(i % 20) * d + c]) + noise[i * d + c];
  }
  for (std::size_t threads : {1, 2, 5}) {
    expect_identical(search(db, n, d, q, m, k, options(true, threads)), search(db, n, d, q, m, k, options(false, threads)));
  }
}

// Scales the bound's monotonicity argument does not cover (zero, negative, NaN, inf) keep their
// rows as candidates; masks and one-per-group go through the same screen.
TEST(AmxInt8, OddScalesLiveMaskAndOnePerGroup) {
  SKIP_WITHOUT_AMX(std::int8_t);
  const std::size_t n = 1500, d = 100, m = 50, k = 15;
  Db<std::int8_t> db = make_db<std::int8_t>(normals(n * d, 71), n, d, false);
  db.scales[3] = 0.0f;
  db.scales[4] = -db.scales[4];
  db.scales[5] = std::numeric_limits<float>::quiet_NaN();
  db.scales[6] = std::numeric_limits<float>::infinity();
  db.scales[700] = -1e30f;
  expect_identical_with_masks_and_groups(db, n, d, normals(m * d, 72, 2.0f), m, k);
}

TEST(AmxBf16, NonFiniteQueryFallsBackToTheVectorKernel) {
  SKIP_WITHOUT_AMX(bf16);
  const std::size_t n = 50, d = 20, m = 3, k = 5;
  std::vector<float> q = normals(m * d, 3);
  q[d + 4] = std::numeric_limits<float>::infinity();
  const Db<bf16> db = make_db<bf16>(normals(n * d, 4), n, d, false);
  expect_identical(search(db, n, d, q, m, k, options(true)), search(db, n, d, q, m, k, options(false)));
  // Finite, but inf once rounded to bf16: a batch the tiles cannot take either.
  std::vector<float> big = normals(20 * d, 5);
  big[3 * d + 1] = 3.4e38f;
  expect_identical(search(db, n, d, big, 20, k, options(true)), search(db, n, d, big, 20, k, options(false)));
}

TEST(AmxKernel, TransposeOf16x16) {
  SKIP_WITHOUT_AMX(bf16);
  float in[256], out[256];
  for (int i = 0; i < 256; ++i) in[i] = static_cast<float>(i);
  amx::transpose_for_test(in, out);
  for (int r = 0; r < 16; ++r) {
    for (int c = 0; c < 16; ++c) EXPECT_EQ(out[c * 16 + r], in[r * 16 + c]);
  }
}

#if LOOKALIKE_X86_DISPATCH
// The avx512 f32 tile reduces 16 accumulators at once (Ops::hsum16); it must give each one the
// very tree of hsum4, bit for bit, or scores would depend on the tile a row falls in.
__attribute__((target("avx512f,avx2,fma,f16c"))) int hsum16_mismatches() {
  namespace avx512 = lookalike::detail::avx512;
  std::mt19937 gen(5);
  std::normal_distribution<float> dist;
  int bad = 0;
  for (int trial = 0; trial < 2000; ++trial) {
    float a[16][16];
    for (auto& row : a) {
      for (float& v : row) v = dist(gen) * std::ldexp(1.0f, trial % 40 - 20);
    }
    __m512 v[16];
    for (int i = 0; i < 16; ++i) v[i] = _mm512_loadu_ps(a[i]);
    float s16[16], s4[16];
    avx512::Ops::hsum16(v, s16);
    for (int i = 0; i < 16; i += 4) avx512::Ops::hsum4(v[i], v[i + 1], v[i + 2], v[i + 3], s4 + i);
    bad += std::memcmp(s16, s4, sizeof(s4)) != 0;
  }
  return bad;
}

TEST(Avx512F32, Hsum16IsHsum4BitForBit) {
  if (!has_avx512()) GTEST_SKIP() << "no AVX-512 on this CPU";
  EXPECT_EQ(hsum16_mismatches(), 0);
}
#endif

}  // namespace
