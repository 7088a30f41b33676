// Exact batched top-k by inner product (cosine for L2-normalised vectors).
//
// Header-only, C++17, no Python. For queries q[m, d] and a database db[n, d] (both row-major,
// contiguous), writes for every query the k best database rows, best first:
//   scores[i * k + j] = <q_i, db_ids[i * k + j]>,  ids as row numbers in [0, n).
// Ranking is a total order: higher score first, equal scores by lower row number, NaN after
// every number. When fewer than k rows are live, the rest of the row is padding: score -inf,
// id -1 (the faiss convention).
//
// How it runs: the rows are cut into blocks that stay in cache (about 128 KiB); a tile of
// queries (3 with AVX2) is scored against a whole block by the SIMD kernel of the active level
// (register tiles of 3 queries x 4 rows with AVX2), then each query of the tile offers the
// block's scores to its bounded heap. The work is split
// over threads by row ranges (merged at the end) or, for large batches, by query ranges. Every
// score is computed by the same operations whatever the split (see score_kernel.inc), so the
// result does not depend on the thread count nor on the other queries of the batch.
#pragma once

#include <algorithm>
#include <cmath>
#include <cstddef>
#include <cstdint>
#include <exception>
#include <limits>
#include <optional>
#include <stdexcept>
#include <string>
#include <system_error>
#include <thread>
#include <vector>

#include "lookalike/detail/kernels.hpp"
#include "lookalike/simd.hpp"

namespace lookalike {

/// Score and id of padding entries (when fewer than k live rows exist).
inline constexpr float kPadScore = -std::numeric_limits<float>::infinity();
inline constexpr std::int64_t kPadId = -1;

struct TopKOptions {
  /// Optional byte mask of length n: 0 = deleted (never returned), anything else = live.
  /// nullptr: every row is live.
  const std::uint8_t* live = nullptr;
  /// Worker threads; 0 = std::thread::hardware_concurrency(). Small problems use fewer.
  std::size_t threads = 0;
  /// SIMD level; nullopt = default_simd_level(). Must be supported by this CPU.
  std::optional<SimdLevel> simd;
};

/// Owning result of the allocating overload: m x k, row-major.
struct TopKResult {
  std::size_t m = 0;
  std::size_t k = 0;
  std::vector<float> scores;
  std::vector<std::int64_t> ids;
};

namespace detail {

struct Hit {
  float score;
  std::int64_t id;
};

/// The ranking order: true when (sa, ia) ranks before (sb, ib).
inline bool ranks_before(float sa, std::int64_t ia, float sb, std::int64_t ib) noexcept {
  if (sa > sb) return true;
  if (sa < sb) return false;
  const bool a_nan = std::isnan(sa);
  const bool b_nan = std::isnan(sb);
  if (a_nan != b_nan) return b_nan;
  return ia < ib;
}

struct RanksBefore {
  bool operator()(const Hit& a, const Hit& b) const noexcept { return ranks_before(a.score, a.id, b.score, b.id); }
};

/// The best `cap` hits offered so far, as a heap over caller storage whose top is the worst.
class BoundedHeap {
 public:
  BoundedHeap(Hit* storage, std::size_t cap) noexcept : data_(storage), cap_(cap) {}

  void offer(float score, std::int64_t id) noexcept {
    if (size_ < cap_) {
      data_[size_++] = Hit{score, id};
      std::push_heap(data_, data_ + size_, RanksBefore{});
      return;
    }
    const Hit& worst = data_[0];
    if (score < worst.score) return;  // the common case, one compare
    if (!ranks_before(score, id, worst.score, worst.id)) return;
    replace_top(Hit{score, id});
  }

  std::size_t size() const noexcept { return size_; }
  const Hit* begin() const noexcept { return data_; }
  const Hit* end() const noexcept { return data_ + size_; }

 private:
  void replace_top(Hit h) noexcept {
    std::size_t i = 0;
    for (;;) {
      std::size_t child = 2 * i + 1;
      if (child >= size_) break;
      if (child + 1 < size_ && ranks_before(data_[child].score, data_[child].id, data_[child + 1].score,
                                            data_[child + 1].id)) {
        ++child;  // the worse of the two children
      }
      if (!ranks_before(h.score, h.id, data_[child].score, data_[child].id)) break;
      data_[i] = data_[child];
      i = child;
    }
    data_[i] = h;
  }

  Hit* data_;
  std::size_t cap_;
  std::size_t size_ = 0;
};

/// One unit of work: queries [q0, q1) against rows [r0, r1).
struct Job {
  std::size_t q0, q1, r0, r1;
};

/// Writes sorted hits to one output row and pads it to k.
inline void write_row(const Hit* hits, std::size_t count, std::size_t k, float* scores, std::int64_t* ids) noexcept {
  const std::size_t real = std::min(count, k);
  for (std::size_t j = 0; j < real; ++j) {
    scores[j] = hits[j].score;
    ids[j] = hits[j].id;
  }
  for (std::size_t j = real; j < k; ++j) {
    scores[j] = kPadScore;
    ids[j] = kPadId;
  }
}

// Rows per cache block: about 128 KiB of database (it stays in L2 while every query tile
// passes over it), a multiple of 8 so that blocks split into whole row tiles (of 4).
template <class DbT>
std::size_t rows_per_block(std::size_t d) noexcept {
  constexpr std::size_t kBlockBytes = std::size_t{128} << 10;
  const std::size_t row_bytes = std::max<std::size_t>(d, 1) * sizeof(DbT);
  return std::clamp<std::size_t>(kBlockBytes / row_bytes, 16, 4096) / 8 * 8;
}

template <class DbT>
struct Problem {
  const DbT* db;
  std::size_t n;
  std::size_t d;
  const float* queries;
  std::size_t m;
  std::size_t k;
  const std::uint8_t* live;
  BlockScorer<DbT> scorer;
};

/// Runs one job; its per-query heaps (capacity `cap` each, for queries q0..q1) go to `hits`/`sizes`.
template <class DbT>
void run_job(const Problem<DbT>& p, const Job& job, std::size_t cap, Hit* hits, std::size_t* sizes) {
  const std::size_t nq = job.q1 - job.q0;
  std::vector<BoundedHeap> heaps;
  heaps.reserve(nq);
  for (std::size_t i = 0; i < nq; ++i) heaps.emplace_back(hits + i * cap, cap);

  const std::size_t block = rows_per_block<DbT>(p.d);
  const std::size_t tile = p.scorer.query_tile;
  std::vector<float> buf(tile * block);

  for (std::size_t rb = job.r0; rb < job.r1; rb += block) {
    const std::size_t rows = std::min(block, job.r1 - rb);
    const std::uint8_t* live = p.live != nullptr ? p.live + rb : nullptr;
    if (live != nullptr && std::all_of(live, live + rows, [](std::uint8_t b) { return b == 0; })) continue;
    for (std::size_t qb = job.q0; qb < job.q1; qb += tile) {
      const std::size_t qn = std::min(tile, job.q1 - qb);
      p.scorer.fn(p.queries + qb * p.d, qn, p.db + rb * p.d, rows, p.d, buf.data(), block);
      for (std::size_t i = 0; i < qn; ++i) {
        BoundedHeap& heap = heaps[qb - job.q0 + i];
        const float* s = buf.data() + i * block;
        const auto base = static_cast<std::int64_t>(rb);
        if (live == nullptr) {
          for (std::size_t r = 0; r < rows; ++r) heap.offer(s[r], base + static_cast<std::int64_t>(r));
        } else {
          for (std::size_t r = 0; r < rows; ++r) {
            if (live[r] != 0) heap.offer(s[r], base + static_cast<std::int64_t>(r));
          }
        }
      }
    }
  }
  for (std::size_t i = 0; i < nq; ++i) sizes[i] = heaps[i].size();
}

/// How the work is cut: jobs that each cover all rows for a query range (`row_split` false),
/// or all queries for a row range (`row_split` true, merged afterwards).
struct Plan {
  std::vector<Job> jobs;
  bool row_split = false;
};

/// Splits the problem into at most `threads` jobs (at least one when n, m > 0).
inline Plan plan_jobs(std::size_t n, std::size_t m, std::size_t d, std::size_t k, std::size_t threads) {
  // At least 2 Mi multiply-adds (~0.1 ms) per thread: starting a thread costs tens of microseconds.
  constexpr double kMinWorkPerThread = 2097152.0;
  const double work =
      static_cast<double>(n) * static_cast<double>(m) * static_cast<double>(std::max<std::size_t>(d, 1));
  const double useful = std::max(1.0, std::min(work / kMinWorkPerThread, 1e6));
  std::size_t t = std::max<std::size_t>(1, std::min(threads, static_cast<std::size_t>(useful)));

  Plan plan;
  if (t == 1) {
    plan.jobs.push_back(Job{0, m, 0, n});
    return plan;
  }
  // Splitting rows reads the database once but keeps t heaps per query; split queries when
  // those heaps would be large or rows are few.
  constexpr std::size_t kMaxRowSplitHeapEntries = std::size_t{1} << 21;
  const std::size_t heap_entries = m * std::min(k, n) * t;
  plan.row_split = !(m >= t && (heap_entries > kMaxRowSplitHeapEntries || n < 64 * t));
  const std::size_t total = plan.row_split ? n : m;
  t = std::min(t, total);
  for (std::size_t j = 0; j < t; ++j) {
    const std::size_t a = total * j / t;
    const std::size_t b = total * (j + 1) / t;
    plan.jobs.push_back(plan.row_split ? Job{0, m, a, b} : Job{a, b, 0, n});
  }
  return plan;
}

template <class DbT>
void topk_impl(const Problem<DbT>& p, std::size_t threads, float* out_scores, std::int64_t* out_ids) {
  if (p.m == 0 || p.k == 0) return;
  if (p.n == 0) {
    for (std::size_t i = 0; i < p.m; ++i) write_row(nullptr, 0, p.k, out_scores + i * p.k, out_ids + i * p.k);
    return;
  }
  const Plan plan = plan_jobs(p.n, p.m, p.d, p.k, threads);
  const std::vector<Job>& jobs = plan.jobs;

  // Heap storage of every job, allocated up front so that the workers only compute.
  struct JobState {
    std::size_t cap = 0;
    std::vector<Hit> hits;
    std::vector<std::size_t> sizes;
    std::exception_ptr error;
  };
  std::vector<JobState> states(jobs.size());
  for (std::size_t j = 0; j < jobs.size(); ++j) {
    const Job& job = jobs[j];
    states[j].cap = std::min(p.k, job.r1 - job.r0);
    states[j].hits.resize((job.q1 - job.q0) * states[j].cap);
    states[j].sizes.resize(job.q1 - job.q0);
  }

  auto work = [&](std::size_t j) {
    JobState& st = states[j];
    const Job& job = jobs[j];
    try {
      run_job(p, job, st.cap, st.hits.data(), st.sizes.data());
      if (!plan.row_split) {  // this job saw every row: its heaps are final
        for (std::size_t i = 0; i < job.q1 - job.q0; ++i) {
          Hit* h = st.hits.data() + i * st.cap;
          std::sort(h, h + st.sizes[i], RanksBefore{});
          const std::size_t q = job.q0 + i;
          write_row(h, st.sizes[i], p.k, out_scores + q * p.k, out_ids + q * p.k);
        }
      }
    } catch (...) {
      st.error = std::current_exception();
    }
  };

  std::vector<std::thread> pool;
  pool.reserve(jobs.size());
  std::vector<std::size_t> here{0};  // jobs run on the calling thread
  for (std::size_t j = 1; j < jobs.size(); ++j) {
    try {
      pool.emplace_back(work, j);
    } catch (const std::system_error&) {
      here.push_back(j);  // no thread to be had: run it here
    }
  }
  for (std::size_t j : here) work(j);
  for (std::thread& t : pool) t.join();
  for (const JobState& st : states) {
    if (st.error) std::rethrow_exception(st.error);
  }
  if (!plan.row_split) return;

  // Row-split jobs: each query's hits from every job, ranked, best k written.
  std::vector<Hit> merged;
  for (std::size_t i = 0; i < p.m; ++i) {
    merged.clear();
    for (const JobState& st : states) {
      const Hit* h = st.hits.data() + i * st.cap;
      merged.insert(merged.end(), h, h + st.sizes[i]);
    }
    const std::size_t keep = std::min(p.k, merged.size());
    std::partial_sort(merged.begin(), merged.begin() + static_cast<std::ptrdiff_t>(keep), merged.end(),
                      RanksBefore{});
    write_row(merged.data(), keep, p.k, out_scores + i * p.k, out_ids + i * p.k);
  }
}

inline std::size_t resolve_threads(std::size_t requested) noexcept {
  if (requested != 0) return requested;
  const unsigned hw = std::thread::hardware_concurrency();
  return hw == 0 ? 1 : hw;
}

inline SimdLevel resolve_level(const std::optional<SimdLevel>& requested) {
  if (!requested) return default_simd_level();
  if (!simd_level_supported(*requested)) {
    throw std::invalid_argument(std::string("SIMD level ") + simd_level_name(*requested) +
                                " is not supported by this CPU (best here: " +
                                simd_level_name(cpu_simd_level()) + "); pass a lower level or none");
  }
  return *requested;
}

}  // namespace detail

/// Exact top-k of `m` float32 queries over `n` float32 database rows of dimension `d`.
/// `db` is n x d and `queries` m x d, row-major and contiguous; `scores` and `ids` receive
/// m x k values each (see the top of this file for order and padding).
/// Throws std::invalid_argument for null pointers with non-zero sizes or an unsupported SIMD
/// level; std::bad_alloc when working memory cannot be allocated.
inline void topk_f32(const float* db, std::size_t n, std::size_t d, const float* queries, std::size_t m,
                     std::size_t k, float* scores, std::int64_t* ids, const TopKOptions& options = {}) {
  if (db == nullptr && n != 0 && d != 0) throw std::invalid_argument("topk_f32: db is null but n, d > 0");
  if (queries == nullptr && m != 0 && d != 0) throw std::invalid_argument("topk_f32: queries is null but m, d > 0");
  if ((scores == nullptr || ids == nullptr) && m != 0 && k != 0) {
    throw std::invalid_argument("topk_f32: scores/ids output is null but m, k > 0");
  }
  const SimdLevel level = detail::resolve_level(options.simd);
  const detail::Problem<float> problem{db, n, d, queries, m, k, options.live, detail::block_scorer<float>(level)};
  detail::topk_impl(problem, detail::resolve_threads(options.threads), scores, ids);
}

/// Allocating convenience overload.
inline TopKResult topk_f32(const float* db, std::size_t n, std::size_t d, const float* queries, std::size_t m,
                           std::size_t k, const TopKOptions& options = {}) {
  TopKResult result;
  result.m = m;
  result.k = k;
  result.scores.resize(m * k);
  result.ids.resize(m * k);
  topk_f32(db, n, d, queries, m, k, result.scores.data(), result.ids.data(), options);
  return result;
}

}  // namespace lookalike
