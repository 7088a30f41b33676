// Threshold (range) join by inner product: every (query, row) pair scoring at least a threshold.
//
// Header-only, C++17, no Python. For queries q[m, d] (float32) and a database of n rows stored
// as in topk.hpp (float32, f16, bf16, or int8 with a per-row scale; one array or a list of
// chunks, the same Chunk<DbT>), returns every pair (i, r) with
//   score = <q_i, row r> >= threshold,  row r live,  r > min_row[i] (when min_row is given),
// sorted by query, then row. This is the inner loop of a self-join ("find duplicates"): the
// caller passes a block of the database's own rows as queries with min_row[i] = the query's
// own row number, which keeps each unordered pair once (the upper triangle). f16 / bf16 rows
// are widened exactly; an int8 row is scored as the float row scale_r * int8 (an approximation:
// re-score the pairs that matter). A score is one float32 FMA chain over the d elements in order
// (it may differ from topk's tree-summed score in the last bits); the same chain wherever the
// pair falls, so the result depends neither on the thread count, nor on the chunking, nor on the
// other queries of the call. NaN scores never qualify.
//
// How it runs (GEMM-style, detail/range_kernels.hpp): the rows are cut into blocks of ~384 KiB
// that stay in L2, packed once per block into panels of P rows transposed (the row values in
// the vector lanes, f16/bf16/int8 widened there); the queries are packed once per call into
// tiles of QT transposed. A register tile of QT queries x P rows (AVX-512: 12 x 32 in 24 zmm
// accumulators; AVX2: 6 x 16; scalar: 4 x 8) broadcasts one query element per step, so the
// accumulators hold finished scores of P rows each: the threshold test is fused into the tile,
// one compare per vector, and only tiles with a hit store their scores for the (rare) pairs to
// be appended to the job's own buffer.
//
// Pruning (exact, on by default): every 32 elements the tile checks, for all its pairs at once,
// partial score + |q_i[k:]| |row[k:]| (Cauchy-Schwarz bound on the rest, tail norms precomputed
// in double and rounded up) against threshold - margin, the margin covering the float rounding
// of both the partial and the final sum; when no pair can reach the threshold the tile stops.
// Pairs that go on are finished by the same FMA chain, so pruning never changes a score or the
// result, only the work: on unrelated rows and a duplicate-level threshold most tiles stop after
// 64-96 of 384 elements. Rows at or below min(min_row) over the call are never read, and for each
// query tile the panels at or below the tile's smallest min_row are not scored (the triangle is
// skipped, not filtered).
//
// The work is split by row ranges of equal work (the triangle taken into account) or, with few
// rows, by query tiles, on the shared thread pool (thread_pool.hpp); the job buffers are merged
// at the end by a counting sort on the query (each job's pairs are already in row order).
//
// Memory is bounded: when more than max_pairs pairs qualify, storing stops (the scan goes on
// only counting them) and the call throws std::length_error saying how many there were.
#pragma once

#include <algorithm>
#include <atomic>
#include <cmath>
#include <cstddef>
#include <cstdint>
#include <cstdio>
#include <exception>
#include <functional>
#include <limits>
#include <optional>
#include <stdexcept>
#include <string>
#include <type_traits>
#include <utility>
#include <vector>

#include "lookalike/detail/range_kernels.hpp"
#include "lookalike/topk.hpp"

namespace lookalike {

/// Default cap on the pairs one call may return (about 200 MB of output).
inline constexpr std::size_t kDefaultMaxPairs = 10'000'000;

struct RangeJoinOptions {
  /// Optional byte mask over all n rows: 0 = deleted (never reported). nullptr: all live.
  const std::uint8_t* live = nullptr;
  /// Optional, one per query: only rows r > min_row[i] are reported for query i (negative: all
  /// rows). Rows <= the smallest min_row are not even read.
  const std::int64_t* min_row = nullptr;
  /// More qualifying pairs than this: std::length_error (nothing is returned).
  std::size_t max_pairs = kDefaultMaxPairs;
  /// Jobs the work is cut into (run on the shared pool); 0 = thread_budget().
  std::size_t threads = 0;
  /// SIMD level; nullopt = default_simd_level(). Must be supported by this CPU.
  std::optional<SimdLevel> simd;
  /// Stop scoring a tile once no pair of it can reach the threshold (exact: never changes the
  /// result, only the work; false = score every pair in full, e.g. to measure the dense rate).
  bool prune = true;
};

/// Every qualifying pair, sorted by (query, row): three parallel arrays of size().
struct RangeJoinResult {
  std::vector<std::int64_t> queries;
  std::vector<std::int64_t> rows;
  std::vector<float> scores;
  std::size_t size() const noexcept { return rows.size(); }
};

namespace detail {

struct Pair {
  std::int64_t row;
  float score;
  std::uint32_t query;
};

// Elements between pruning checkpoints. Rounding margin of a score: see range_job.
inline constexpr std::size_t kCheckpointStep = 32;

/// Everything a job reads: the problem, the level's micro-kernel, and the queries packed once
/// per call into tiles (transposed, with their tail norms at each checkpoint).
template <class DbT>
struct RangeProblem {
  Problem<DbT> p;
  const RangeKernel* kernel = nullptr;
  float threshold = 0.0f;
  std::size_t max_pairs = 0;
  std::size_t checkpoints = 0;
  double margin_coef = 0.0;           // a score's float error is below margin_coef * |q| |row|
  std::vector<std::size_t> lo;        // per query: the first global row it may report
  std::vector<float> qpack;           // tile t at t * query_tile * d: [d][qn]
  std::vector<float> qtails;          // tile t at t * query_tile * checkpoints: [checkpoints][qn]
  std::vector<float> qnorm;           // per query, rounded up
  std::vector<std::uint8_t> tile_ok;  // per tile: every query finite (pruning allowed)
};

// |x[k_c:]| for the checkpoints k_c = (c + 1) * step, and |x|, each rounded up (the squares are
// exact in double and summed there, the float result is nudged up past the rounding).
template <class Get>
bool tail_norms(Get get, std::size_t d, std::size_t step, std::size_t checkpoints, float* tails, std::size_t stride,
                float* norm) {
  double sum = 0.0;
  std::size_t c = checkpoints;
  for (std::size_t k = d; k-- > 0;) {
    const double x = get(k);
    sum += x * x;
    if (c > 0 && k == c * step) {
      --c;
      tails[c * stride] = std::nextafter(static_cast<float>(std::sqrt(sum)), std::numeric_limits<float>::infinity());
    }
  }
  *norm = std::nextafter(static_cast<float>(std::sqrt(sum)), std::numeric_limits<float>::infinity());
  return std::isfinite(sum);
}

template <class DbT>
inline float widen(const DbT& x) noexcept {
  if constexpr (std::is_same_v<DbT, float>) {
    return x;
  } else if constexpr (std::is_same_v<DbT, std::int8_t>) {
    return static_cast<float>(x);
  } else {
    return to_float(x);
  }
}

template <class DbT>
void pack_queries(RangeProblem<DbT>& rp) {
  const Problem<DbT>& p = rp.p;
  const std::size_t qt = rp.kernel->query_tile;
  const std::size_t tiles = (p.m + qt - 1) / qt;
  rp.qpack.assign(tiles * qt * p.d, 0.0f);
  rp.qtails.assign(tiles * qt * rp.checkpoints, 0.0f);
  rp.qnorm.assign(p.m, 0.0f);
  rp.tile_ok.assign(tiles, 1);
  for (std::size_t t = 0; t < tiles; ++t) {
    const std::size_t q0 = t * qt;
    const std::size_t qn = std::min(qt, p.m - q0);
    float* pack = rp.qpack.data() + q0 * p.d;
    float* tails = rp.qtails.data() + q0 * rp.checkpoints;
    for (std::size_t i = 0; i < qn; ++i) {
      const float* q = p.queries + (q0 + i) * p.d;
      for (std::size_t k = 0; k < p.d; ++k) pack[k * qn + i] = q[k];
      const auto get = [q](std::size_t k) { return static_cast<double>(q[k]); };
      if (!tail_norms(get, p.d, kCheckpointStep, rp.checkpoints, tails + i, qn, &rp.qnorm[q0 + i])) rp.tile_ok[t] = 0;
    }
  }
}

// Packs `rows` <= P consecutive database rows (widened, times the int8 scales) into a panel
// [d][P] (lanes past `rows` zero). Tiles of 16 elements keep the 16 panel lines being written in
// L1 (element by element down the whole panel, each store would land on another line). The
// rows are read 64 bytes at a time from P places at once, more streams than the hardware
// prefetchers follow: the `ahead` rows (the next panel's, `ahead_rows` of them) are prefetched
// in the same order, one line per row and tile.
template <class DbT>
void pack_panel(const DbT* rows_data, std::size_t rows, std::size_t P, std::size_t d, const float* scales,
                float* panel, const DbT* ahead, std::size_t ahead_rows) {
  constexpr std::size_t kTile = 64 / sizeof(DbT) < 16 ? 64 / sizeof(DbT) : 16;
  for (std::size_t k0 = 0; k0 < d; k0 += kTile) {
    const std::size_t k1 = std::min(d, k0 + kTile);
    for (std::size_t j = 0; j < ahead_rows; ++j) {
#if defined(__GNUC__) || defined(__clang__)
      __builtin_prefetch(ahead + j * d + k0);
#endif
    }
    for (std::size_t j = 0; j < rows; ++j) {
      const DbT* row = rows_data + j * d;
      float* out = panel + j;
      if (scales != nullptr) {
        const float scale = scales[j];
        for (std::size_t k = k0; k < k1; ++k) out[k * P] = widen(row[k]) * scale;
      } else {
        for (std::size_t k = k0; k < k1; ++k) out[k * P] = widen(row[k]);
      }
    }
    if (rows < P) {
      for (std::size_t k = k0; k < k1; ++k) std::fill(panel + k * P + rows, panel + (k + 1) * P, 0.0f);
    }
  }
}

// The rows' tail norms at each checkpoint, for one packed panel ([d][P]), lane by lane (the
// compiler vectorizes the lanes), rounded up rigorously: a float sum of d rounded squares is at
// least (1 - (d + 1) u) times the exact one, less d 2^-150 of underflow; the factor and the
// added sqrt(d) 2^-74 cover both, nextafter the last rounding. Raises *norm_max to the largest
// row norm; false when a row is not finite.
inline bool panel_tail_norms(const float* panel, std::size_t P, std::size_t d, std::size_t checkpoints,
                             float* tails, float* sums, float* norm_max) {
  const float factor = 1.0f + static_cast<float>(2 * d + 16) * std::ldexp(1.0f, -24);
  const float tiny = std::sqrt(static_cast<float>(d) + 1.0f) * std::ldexp(1.0f, -74);
  const auto up = [&](float s) {
    return std::nextafter(std::sqrt(s * factor) + tiny, std::numeric_limits<float>::infinity());
  };
  std::fill(sums, sums + P, 0.0f);
  std::size_t c = checkpoints;
  for (std::size_t k = d; k-- > 0;) {
    const float* x = panel + k * P;
    for (std::size_t j = 0; j < P; ++j) sums[j] += x[j] * x[j];
    if (c > 0 && k == c * kCheckpointStep) {
      --c;
      for (std::size_t j = 0; j < P; ++j) tails[c * P + j] = up(sums[j]);
    }
  }
  bool finite = true;
  for (std::size_t j = 0; j < P; ++j) {
    finite = finite && std::isfinite(sums[j]);
    *norm_max = std::max(*norm_max, up(sums[j]));
  }
  return finite;
}

struct RangeJobOut {
  std::vector<Pair> pairs;
  std::exception_ptr error;
};

// Database rows per block: about 384 KiB packed as float (the block stays in L2 while every
// query tile passes over it), a whole number of panels.
inline std::size_t range_block_rows(std::size_t d, std::size_t panel) noexcept {
  constexpr std::size_t kBlockBytes = std::size_t{384} << 10;
  const std::size_t rows = kBlockBytes / (std::max<std::size_t>(d, 1) * sizeof(float));
  return std::clamp<std::size_t>(rows / panel * panel, panel, 64 * panel);
}

/// Runs one job: the query tiles of [q0, q1) (q0 a multiple of the tile) against the rows of
/// [r0, r1) they may report.
template <class DbT>
void range_job(const RangeProblem<DbT>& rp, const Job& job, std::atomic<std::size_t>& total,
               std::atomic<bool>& overflow, RangeJobOut& out) {
  const Problem<DbT>& p = rp.p;
  const RangeKernel& kernel = *rp.kernel;
  const std::size_t qt = kernel.query_tile;
  const std::size_t P = kernel.panel;
  const std::size_t block = range_block_rows(p.d, P);
  const std::size_t nchk = rp.checkpoints;
  std::vector<float> panels(block * p.d);          // panel j at j * P * d: [d][P]
  std::vector<float> row_tails(block * nchk);      // panel j at j * P * nchk: [nchk][P]
  std::vector<float> sums(P);
  std::vector<float> scores(qt * P);
  std::vector<float> prune_below(qt);
  // The first row each query tile may report (its queries' smallest).
  std::vector<std::size_t> tile_lo;
  for (std::size_t qb = job.q0; qb < job.q1; qb += qt) {
    const std::size_t qe = std::min(qb + qt, job.q1);
    tile_lo.push_back(*std::min_element(rp.lo.begin() + static_cast<std::ptrdiff_t>(qb),
                                        rp.lo.begin() + static_cast<std::ptrdiff_t>(qe)));
  }
  // Blocks that never cross a chunk, dead ones skipped (topk.hpp's walk); the packing prefetches its own.
  for_each_block(p, job, block, [&](const Chunk<DbT>& chunk, std::size_t local, std::size_t rb, std::size_t rows,
                                    const std::uint8_t* live, std::size_t /*ahead*/) {
    const std::size_t next = rb + rows;
    // Pack the block: panels of P rows transposed (rows past the block are zero), tail norms.
    const DbT* base = chunk.data + local * p.d;
    const float* scales = chunk.scales != nullptr ? chunk.scales + local : nullptr;
    const std::size_t npanels = (rows + P - 1) / P;
    for (std::size_t j = 0; j < npanels; ++j) {
      // The next panel's rows, in this block or the next one (as far as the chunk goes).
      const std::size_t after = local + (j + 1) * P;
      const std::size_t ahead_rows = after < chunk.rows ? std::min(P, chunk.rows - after) : 0;
      pack_panel(base + j * P * p.d, std::min(P, rows - j * P), P, p.d, scales != nullptr ? scales + j * P : nullptr,
                 panels.data() + j * P * p.d, chunk.data + after * p.d, ahead_rows);
    }
    float row_norm_max = 0.0f;
    bool finite = true;
    for (std::size_t j = 0; j < npanels; ++j) {
      finite = panel_tail_norms(panels.data() + j * P * p.d, P, p.d, nchk, row_tails.data() + j * P * nchk,
                                sums.data(), &row_norm_max) &&
               finite;
    }

    for (std::size_t qb = job.q0, t = 0; qb < job.q1; qb += qt, ++t) {
      if (tile_lo[t] >= next) continue;  // the whole block is at or below the tile's min_row
      const std::size_t qn = std::min(qt, job.q1 - qb);
      RangeTileArgs args{};
      args.queries = rp.qpack.data() + qb * p.d;
      args.d = p.d;
      args.step = kCheckpointStep;
      args.checkpoints = finite && rp.tile_ok[qb / qt] != 0 ? nchk : 0;
      args.query_tails = rp.qtails.data() + qb * nchk;
      args.prune_below = prune_below.data();
      args.threshold = rp.threshold;
      args.out = scores.data();
      for (std::size_t i = 0; i < qn; ++i) {
        // Pruned pairs have partial + tail bound < threshold - margin, so their float score is
        // below the threshold: the margin covers both float sums' rounding (partial and final).
        const double margin = rp.margin_coef * static_cast<double>(rp.qnorm[qb + i]) * row_norm_max +
                              static_cast<double>(2 * p.d + 2) * std::ldexp(1.0, -149);  // + underflow
        prune_below[i] = std::nextafter(static_cast<float>(static_cast<double>(rp.threshold) - margin),
                                        -std::numeric_limits<float>::infinity());
      }
      const RangeTileFn fn = kernel.fns[qn];
      const std::size_t before = out.pairs.size();
      for (std::size_t j = 0; j < npanels; ++j) {
        const std::size_t row0 = rb + j * P;
        const std::size_t row_end = std::min(row0 + P, next);
        if (row_end <= tile_lo[t]) continue;  // below the triangle: not scored
        if (live != nullptr &&
            std::all_of(live + (row0 - rb), live + (row_end - rb), [](std::uint8_t b) { return b == 0; })) {
          continue;
        }
        args.panel = panels.data() + j * P * p.d;
        args.row_tails = row_tails.data() + j * P * nchk;
        if (!fn(args)) continue;
        for (std::size_t i = 0; i < qn; ++i) {
          const std::size_t q = qb + i;
          const float* s = scores.data() + i * P;
          for (std::size_t r = std::max(row0, rp.lo[q]); r < row_end; ++r) {
            const float v = s[r - row0];
            if (v >= rp.threshold && (live == nullptr || live[r - rb] != 0)) {
              out.pairs.push_back(Pair{static_cast<std::int64_t>(r), v, static_cast<std::uint32_t>(q)});
            }
          }
        }
      }
      const std::size_t added = out.pairs.size() - before;
      if (added == 0) continue;
      // Storing stops once the call holds more than max_pairs: the rest is only counted.
      if (total.fetch_add(added) + added > rp.max_pairs) overflow.store(true);
      if (overflow.load(std::memory_order_relaxed)) out.pairs.resize(before);
    }
  });
}

// Row of [r_start, n) below which a fraction f of the work lies, where a row's work is the
// number of queries that may report it (lo sorted ascending): balances the triangle.
inline std::vector<std::size_t> balanced_cuts(const std::vector<std::size_t>& lo_sorted, std::size_t r_start,
                                              std::size_t n, std::size_t jobs) {
  const auto work_below = [&](std::size_t x) {  // sum over queries of max(0, x - lo)
    double w = 0.0;
    for (std::size_t lo : lo_sorted) {
      if (lo >= x) break;
      w += static_cast<double>(x - lo);
    }
    return w;
  };
  const double all = work_below(n);
  std::vector<std::size_t> cuts{r_start};
  for (std::size_t j = 1; j < jobs; ++j) {
    const double goal = all * static_cast<double>(j) / static_cast<double>(jobs);
    std::size_t a = cuts.back(), b = n;  // the smallest x in [a, b] with work_below(x) >= goal
    while (a < b) {
      const std::size_t mid = a + (b - a) / 2;
      if (work_below(mid) >= goal) {
        b = mid;
      } else {
        a = mid + 1;
      }
    }
    cuts.push_back(a);
  }
  cuts.push_back(n);
  return cuts;
}

template <class DbT>
RangeJoinResult range_join_impl(RangeProblem<DbT>& rp, const std::int64_t* min_row, std::size_t threads) {
  const Problem<DbT>& p = rp.p;
  RangeJoinResult result;
  if (p.m == 0 || p.n == 0) return result;
  rp.lo.resize(p.m);
  for (std::size_t i = 0; i < p.m; ++i) {
    const std::int64_t mr = min_row != nullptr ? min_row[i] : -1;
    rp.lo[i] = mr < 0 ? 0
                      : static_cast<std::size_t>(std::min<std::uint64_t>(static_cast<std::uint64_t>(mr), p.n - 1)) + 1;
  }
  std::vector<std::size_t> lo_sorted = rp.lo;
  std::sort(lo_sorted.begin(), lo_sorted.end());
  const std::size_t r_start = lo_sorted.front();
  if (r_start >= p.n) return result;
  pack_queries(rp);

  // The plan: as plan_jobs in topk.hpp, at least ~1 Mi multiply-adds per job; rows split into
  // ranges of equal work (the triangle counted), or whole query tiles split when rows are few.
  const std::size_t qt = rp.kernel->query_tile;
  const std::size_t tiles = (p.m + qt - 1) / qt;
  const std::size_t rows = p.n - r_start;
  const double work =
      static_cast<double>(rows) * static_cast<double>(p.m) * static_cast<double>(std::max<std::size_t>(p.d, 1));
  const double useful = std::max(1.0, std::min(work / 1048576.0, 1e6));
  std::size_t t = std::max<std::size_t>(1, std::min(threads, static_cast<std::size_t>(useful)));
  std::vector<Job> jobs;
  if (t == 1) {
    jobs.push_back(Job{0, p.m, r_start, p.n});
  } else if (rows < 64 * t && tiles >= t) {
    for (std::size_t j = 0; j < t; ++j) {
      jobs.push_back(Job{std::min(p.m, tiles * j / t * qt), std::min(p.m, tiles * (j + 1) / t * qt), r_start, p.n});
    }
  } else {
    t = std::min(t, rows);
    const std::vector<std::size_t> cuts = balanced_cuts(lo_sorted, r_start, p.n, t);
    for (std::size_t j = 0; j < t; ++j) {
      if (cuts[j] < cuts[j + 1]) jobs.push_back(Job{0, p.m, cuts[j], cuts[j + 1]});
    }
  }

  std::atomic<std::size_t> total{0};
  std::atomic<bool> overflow{false};
  std::vector<RangeJobOut> outs(jobs.size());
  const std::function<void(std::size_t)> work_fn = [&](std::size_t j) {
    try {
      range_job(rp, jobs[j], total, overflow, outs[j]);
    } catch (...) {
      outs[j].error = std::current_exception();
    }
  };
  if (jobs.size() == 1) {
    work_fn(0);
  } else {
    shared_thread_pool()->run(jobs.size(), work_fn);
  }
  for (const RangeJobOut& o : outs) {
    if (o.error) std::rethrow_exception(o.error);
  }
  if (overflow.load()) {
    char thr[32];
    std::snprintf(thr, sizeof thr, "%g", static_cast<double>(rp.threshold));
    throw std::length_error("range_join: " + std::to_string(total.load()) + " pairs score >= " + thr +
                            ", more than max_pairs = " + std::to_string(rp.max_pairs) +
                            "; raise the threshold or pass fewer queries per call (a smaller query block), or "
                            "raise max_pairs");
  }

  // Merge: a counting sort on the query. Jobs are in row order and each job's pairs of one
  // query are in row order, so the concatenation per query (job by job) is sorted.
  const std::size_t nj = jobs.size();
  std::vector<std::size_t> offset(nj * p.m, 0);  // [job][query]: count, then first output slot
  for (std::size_t j = 0; j < nj; ++j) {
    for (const Pair& pr : outs[j].pairs) ++offset[j * p.m + pr.query];
  }
  std::size_t next = 0;
  for (std::size_t q = 0; q < p.m; ++q) {
    for (std::size_t j = 0; j < nj; ++j) {
      const std::size_t count = offset[j * p.m + q];
      offset[j * p.m + q] = next;
      next += count;
    }
  }
  result.queries.resize(next);
  result.rows.resize(next);
  result.scores.resize(next);
  for (std::size_t j = 0; j < nj; ++j) {
    for (const Pair& pr : outs[j].pairs) {
      const std::size_t at = offset[j * p.m + pr.query]++;
      result.queries[at] = pr.query;
      result.rows[at] = pr.row;
      result.scores[at] = pr.score;
    }
    std::vector<Pair>().swap(outs[j].pairs);  // give the job's buffer back at once
  }
  return result;
}

}  // namespace detail

/// Every pair (query i, row r) with score >= threshold over the concatenated rows of `nchunks`
/// chunks of dimension d (DbT: float, f16, bf16 or std::int8_t with scales), n = the sum of
/// the chunks' rows; see the top of this file. `queries` is m x d float32, row-major;
/// `options.min_row`, when set, has m entries.
/// Throws std::invalid_argument for null pointers with non-zero sizes, int8 chunks without
/// scales, a NaN threshold, m >= 2^32 or an unsupported SIMD level; std::length_error when more
/// than options.max_pairs pairs qualify.
template <class DbT>
RangeJoinResult range_join_chunks(const Chunk<DbT>* chunks, std::size_t nchunks, std::size_t d,
                                  const float* queries, std::size_t m, float threshold,
                                  const RangeJoinOptions& options = {}) {
  if (chunks == nullptr && nchunks != 0) throw std::invalid_argument("range_join: chunks is null but nchunks > 0");
  if (queries == nullptr && m != 0 && d != 0) throw std::invalid_argument("range_join: queries is null but m, d > 0");
  if (std::isnan(threshold)) throw std::invalid_argument("range_join: threshold is NaN");
  if (m > std::numeric_limits<std::uint32_t>::max()) {
    throw std::invalid_argument("range_join: at most 2^32 - 1 queries per call; pass fewer (a smaller query block)");
  }
  detail::RangeProblem<DbT> rp;
  detail::Problem<DbT>& p = rp.p;
  p.chunks.reserve(nchunks);
  for (std::size_t c = 0; c < nchunks; ++c) {
    const Chunk<DbT>& chunk = chunks[c];
    if (chunk.rows == 0) continue;
    if (chunk.data == nullptr && d != 0) {
      throw std::invalid_argument("range_join: a chunk's data is null but rows, d > 0");
    }
    if (detail::kNeedsScales<DbT> && chunk.scales == nullptr) {
      throw std::invalid_argument("range_join: int8 rows need a float32 scale per row (chunk.scales is null)");
    }
    p.begins.push_back(p.n);
    p.chunks.push_back(chunk);
    p.n += chunk.rows;
  }
  p.d = d;
  p.queries = queries;
  p.m = m;
  p.live = options.live;
  rp.kernel = &detail::range_kernel(detail::resolve_level(options.simd));
  rp.threshold = threshold;
  rp.max_pairs = options.max_pairs;
  rp.checkpoints = options.prune && d > 0 ? (d - 1) / detail::kCheckpointStep : 0;
  // A float FMA chain of d terms errs by at most d u sum|q_k x_k| <= d u |q| |x| (u = 2^-24);
  // twice that covers the partial and the final sum, twice again the scalar level's separate
  // multiply and add, plus the checkpoint's own rounding.
  rp.margin_coef = (4.0 * static_cast<double>(d) + 16.0) * std::ldexp(1.0, -24);
  return detail::range_join_impl(rp, options.min_row, detail::resolve_threads(options.threads));
}

/// One contiguous n x d database (the single-chunk case). `scales` (n floats) is required for
/// int8 and ignored otherwise.
template <class DbT>
RangeJoinResult range_join(const DbT* db, std::size_t n, std::size_t d, const float* queries, std::size_t m,
                           float threshold, const RangeJoinOptions& options = {}, const float* scales = nullptr) {
  if (db == nullptr && n != 0 && d != 0) throw std::invalid_argument("range_join: db is null but n, d > 0");
  const Chunk<DbT> chunk{db, n, scales};
  return range_join_chunks(&chunk, 1, d, queries, m, threshold, options);
}

}  // namespace lookalike
