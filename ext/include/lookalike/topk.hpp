// Exact batched top-k by inner product (cosine for L2-normalised vectors).
//
// Header-only, C++17, no Python. For queries q[m, d] (float32) and a database of n rows of
// dimension d, stored as float32, f16, bf16 or int8 with a per-row scale (types.hpp), and held
// as one array or as a list of chunks (the rows are the chunks' concatenation), writes for
// every query the k best database rows, best first:
//   scores[i * k + j] = <q_i, row ids[i * k + j]>,  ids as global row numbers in [0, n).
// An int8 row's score is scale_r * <q_i, int8 row>; f16 / bf16 rows are widened exactly to
// float. Ranking is a total order: higher score first, equal scores by lower row number, NaN
// after every number. When fewer than k rows qualify, the rest is padding: score -inf, id -1.
//
// Options: a byte mask of live rows (0 = deleted, skipped inside the scan); and one-per-group
// search: with a group id per row, each query returns the best row of each of its k best
// groups (k distinct groups, best first), found in one scan by a bounded per-group heap.
//
// How it runs: the rows are cut into blocks that stay in cache (about 128 KiB); a tile of
// queries (3 with AVX2) is scored against a whole block by the SIMD kernel of the active level
// (register tiles of 3 queries x 4 rows with AVX2, 8 x 2 with AVX-512; AMX tiles for bf16 and
// int8 rows in calls of 17+ queries where the CPU has them, detail/amx_kernel.hpp: the tiles
// screen the rows and the vector kernel scores the few that may enter), then each
// query of the tile offers the block's scores to its bounded heap (16 at a time compared with
// the heap's worst first). float32 batches (16+ queries with AVX-512, 8+ with AVX2) take the
// fused kernel instead (detail/fused_kernel.inc): GEMM-style register tiles of up to 64 (24)
// queries x 6 (4) rows with the same bits per score, compared with each query's k-th best
// inside the kernel, so that only candidates reach the heaps and no score reaches memory. The work is split by row ranges (merged at the end) or,
// for large batches, by query ranges, and runs on the process's persistent thread pool
// (thread_pool.hpp). Every score is computed by the same operations whatever the split (see
// score_kernel.inc), so the result depends neither on the thread count nor on the chunking nor
// on the other queries of the batch.
#pragma once

#include <algorithm>
#include <cmath>
#include <cstddef>
#include <cstdint>
#include <exception>
#include <functional>
#include <limits>
#include <optional>
#include <stdexcept>
#include <string>
#include <type_traits>
#include <unordered_set>
#include <vector>

#include "lookalike/detail/kernels.hpp"
#include "lookalike/simd.hpp"
#include "lookalike/thread_pool.hpp"
#include "lookalike/types.hpp"

namespace lookalike {

/// Score and id of padding entries (when fewer than k live rows exist).
inline constexpr float kPadScore = -std::numeric_limits<float>::infinity();
inline constexpr std::int64_t kPadId = -1;

struct TopKOptions {
  /// Optional byte mask over all n rows: 0 = deleted (never returned), anything else = live.
  /// nullptr: every row is live.
  const std::uint8_t* live = nullptr;
  /// One-per-group search: a group id for each of the n rows (set exactly one of the two
  /// widths). Each query then returns the best row of each of its k best groups.
  bool one_per_group = false;
  const std::int64_t* groups = nullptr;
  const std::int32_t* groups32 = nullptr;
  /// Jobs the work is cut into (run on the shared pool); 0 = thread_budget().
  std::size_t threads = 0;
  /// SIMD level; nullopt = default_simd_level(). Must be supported by this CPU.
  std::optional<SimdLevel> simd;
  /// At the avx512 level, score bf16 and int8 rows with AMX tiles when the CPU has them, the OS
  /// grants them and the call has at least amx::kMinQueries (7) queries (below that the vector
  /// kernels are faster; detail/amx_kernel.hpp). LOOKALIKE_AMX=0 in the
  /// environment turns it off for the process. Results are bit-identical either way: the tiles
  /// only screen out rows that cannot enter (a bound on their error), and the vector kernel
  /// scores the rest.
  bool amx = true;
};

/// A run of consecutive database rows: `rows` x d elements, row-major, contiguous. int8
/// chunks carry one float32 scale per row.
template <class DbT>
struct Chunk {
  const DbT* data = nullptr;
  std::size_t rows = 0;
  const float* scales = nullptr;
};

/// Owning result of the allocating overloads: m x k, row-major.
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
  std::int64_t group;
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

inline bool ranks_before(const Hit& a, const Hit& b) noexcept { return ranks_before(a.score, a.id, b.score, b.id); }

struct RanksBefore {
  bool operator()(const Hit& a, const Hit& b) const noexcept { return ranks_before(a, b); }
};

/// The best `cap` hits offered so far, as a heap over caller storage whose top is the worst.
class BoundedHeap {
 public:
  BoundedHeap(Hit* storage, std::size_t cap) noexcept : data_(storage), cap_(cap) {}

  void offer(float score, std::int64_t id, std::int64_t /*group*/ = 0) noexcept {
    if (size_ < cap_) {
      data_[size_++] = Hit{score, id, 0};
      std::push_heap(data_, data_ + size_, RanksBefore{});
      return;
    }
    const Hit& worst = data_[0];
    if (score < worst.score) return;  // the common case, one compare
    if (!ranks_before(score, id, worst.score, worst.id)) return;
    replace_top(Hit{score, id, 0});
  }

  std::size_t size() const noexcept { return size_; }
  bool full() const noexcept { return size_ == cap_; }
  std::size_t capacity() const noexcept { return cap_; }
  /// Once full: a score below this one cannot enter (NaN and equal scores may).
  float worst_score() const noexcept { return data_[0].score; }
  const Hit* begin() const noexcept { return data_; }
  const Hit* end() const noexcept { return data_ + size_; }

 private:
  void replace_top(Hit h) noexcept {
    std::size_t i = 0;
    for (;;) {
      std::size_t child = 2 * i + 1;
      if (child >= size_) break;
      if (child + 1 < size_ && ranks_before(data_[child], data_[child + 1])) ++child;  // the worse child
      if (!ranks_before(h, data_[child])) break;
      data_[i] = data_[child];
      i = child;
    }
    data_[i] = h;
  }

  Hit* data_;
  std::size_t cap_;
  std::size_t size_ = 0;
};

/// The best hit of each of the best `cap` groups offered so far: a heap of at most one hit
/// per group (top = worst), plus an open-addressing table group -> heap position. Once full, a
/// row that does not beat the worst kept hit costs one compare, as in BoundedHeap; only rows
/// that enter touch the table (about cap * ln(n / cap) of them on shuffled data).
class GroupHeap {
 public:
  GroupHeap(Hit* storage, std::size_t cap) : data_(storage), cap_(cap) {
    std::size_t size = 8;
    while (size < 2 * cap + 2) size *= 2;
    mask_ = size - 1;
    keys_.resize(size);
    pos_.assign(size, kEmpty);
  }

  /// False when a hit with this score cannot enter (one compare once the heap is full): the
  /// caller then skips reading the row's group id at all.
  bool may_enter(float score) const noexcept { return size_ < cap_ || !(score < data_[0].score); }
  bool full() const noexcept { return size_ == cap_; }
  std::size_t capacity() const noexcept { return cap_; }
  /// Once full: a score below this one cannot enter (NaN and equal scores may).
  float worst_score() const noexcept { return data_[0].score; }

  void offer(float score, std::int64_t id, std::int64_t group) noexcept {
    if (cap_ == 0) return;
    if (size_ == cap_) {
      const Hit& worst = data_[0];
      if (score < worst.score) return;
      if (!ranks_before(score, id, worst.score, worst.id)) return;
    }
    enter(Hit{score, id, group});
  }

  std::size_t size() const noexcept { return size_; }

 private:
  static constexpr std::uint32_t kEmpty = 0xffffffffu;

#if defined(__GNUC__) || defined(__clang__)
  __attribute__((noinline))
#endif
  void enter(const Hit h) noexcept {
    const std::int64_t group = h.group;
    const std::size_t slot = find(group);
    if (pos_[slot] != kEmpty) {  // the group is kept: improve its hit when this one is better
      const std::size_t i = pos_[slot];
      if (!ranks_before(h, data_[i])) return;
      data_[i] = h;
      sift_down(i);
      return;
    }
    if (size_ < cap_) {
      keys_[slot] = group;
      pos_[slot] = static_cast<std::uint32_t>(size_);
      data_[size_] = h;
      sift_up(size_++);
      return;
    }
    erase(find(data_[0].group));  // evict the worst group
    const std::size_t fresh = find(group);
    keys_[fresh] = group;
    pos_[fresh] = 0;
    data_[0] = h;
    sift_down(0);
  }

  std::size_t home(std::int64_t key) const noexcept {
    return static_cast<std::size_t>((static_cast<std::uint64_t>(key) * 0x9E3779B97F4A7C15ull) >> 32) & mask_;
  }
  // The slot holding `key`, or the empty slot where it would go.
  std::size_t find(std::int64_t key) const noexcept {
    std::size_t i = home(key);
    while (pos_[i] != kEmpty && keys_[i] != key) i = (i + 1) & mask_;
    return i;
  }
  // Linear-probing deletion by backward shift (no tombstones).
  void erase(std::size_t i) noexcept {
    std::size_t j = i;
    for (;;) {
      j = (j + 1) & mask_;
      if (pos_[j] == kEmpty) break;
      const std::size_t h = home(keys_[j]);
      const bool stays = (i <= j) ? (i < h && h <= j) : (i < h || h <= j);
      if (stays) continue;
      keys_[i] = keys_[j];
      pos_[i] = pos_[j];
      i = j;
    }
    pos_[i] = kEmpty;
  }
  void place(std::size_t i, const Hit& h) noexcept {
    data_[i] = h;
    pos_[find(h.group)] = static_cast<std::uint32_t>(i);
  }
  void sift_up(std::size_t i) noexcept {
    const Hit h = data_[i];
    while (i > 0) {
      const std::size_t parent = (i - 1) / 2;
      if (!ranks_before(data_[parent], h)) break;  // the parent is already worse
      place(i, data_[parent]);
      i = parent;
    }
    place(i, h);
  }
  void sift_down(std::size_t i) noexcept {
    const Hit h = data_[i];
    for (;;) {
      std::size_t child = 2 * i + 1;
      if (child >= size_) break;
      if (child + 1 < size_ && ranks_before(data_[child], data_[child + 1])) ++child;
      if (!ranks_before(h, data_[child])) break;
      place(i, data_[child]);
      i = child;
    }
    place(i, h);
  }

  Hit* data_;
  std::size_t cap_;
  std::size_t size_ = 0;
  std::size_t mask_ = 0;
  std::vector<std::int64_t> keys_;
  std::vector<std::uint32_t> pos_;
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
  std::vector<Chunk<DbT>> chunks;
  std::vector<std::size_t> begins;  // global row number of each chunk's first row
  std::size_t n = 0;
  std::size_t d = 0;
  const float* queries = nullptr;
  std::size_t m = 0;
  std::size_t k = 0;
  const std::uint8_t* live = nullptr;
  bool one_per_group = false;
  const std::int64_t* groups = nullptr;
  const std::int32_t* groups32 = nullptr;
  BlockScorer<DbT> scorer{};
  // int8 at AVX2 and above: the queries rounded to int16 once (int8_kernel.hpp); empty = float kernel.
  std::vector<std::int16_t> q16;
  std::vector<float> qscale;
  std::size_t dpad = 0;
  bool vnni = false;  // avx512 level on a CPU with AVX-512 BW + VNNI: avx512_i8 instead of avx2_i8
  bool amx = false;   // bf16 / int8 rows through AMX tiles (each job packs its own queries)
  // float32 rows at avx2 / avx512: batches go through the fused kernel (fused_kernel.inc).
  SimdLevel fused = SimdLevel::scalar;
};

/// Rounds every query to int16 for the integer int8 kernel; leaves p.q16 empty (float kernel)
/// below AVX2 or when a query holds a non-finite value.
template <class DbT>
void prepare_int8(Problem<DbT>& p, SimdLevel level) {
#if LOOKALIKE_X86_DISPATCH
  if constexpr (std::is_same_v<DbT, std::int8_t>) {
    if (level == SimdLevel::scalar || p.m == 0) return;
    p.vnni = level == SimdLevel::avx512 && avx512_i8::cpu_supported();
    p.dpad = (p.d + avx512_i8::kStep - 1) / avx512_i8::kStep * avx512_i8::kStep;  // fits both kernels
    p.q16.resize(p.m * p.dpad);
    p.qscale.resize(p.m);
    for (std::size_t i = 0; i < p.m; ++i) {
      if (!avx2_i8::quantize_query(p.queries + i * p.d, p.d, p.dpad, p.q16.data() + i * p.dpad, &p.qscale[i])) {
        p.q16.clear();
        p.qscale.clear();
        return;
      }
    }
  }
#endif
  (void)p;
  (void)level;
}

/// visit(r) for every r < rows, in order, except rows whose score cannot enter `heap`: once the
/// heap is full, 16 scores at a time are compared with its worst (SSE2 compares; a plain loop
/// of compares cost as much as the old one-branch-per-row offer: GCC does not vectorise it) and
/// only those not below it are visited. The worst only rises, so a skipped score would have
/// been refused anyway: the heap ends exactly as with every row offered.
template <class Heap, class Visit>
void offer_candidates(const Heap& heap, const float* s, std::size_t rows, Visit&& visit) {
  std::size_t r = 0;
  for (; r < rows && !heap.full(); ++r) visit(r);
  if (heap.capacity() == 0) return;  // keeps nothing
  for (; r + 16 <= rows; r += 16) {
    const float worst = heap.worst_score();
    std::uint32_t mask = 0;
#if LOOKALIKE_X86_DISPATCH
    const __m128 w = _mm_set1_ps(worst);  // SSE2: every x86-64 CPU runs it
    for (unsigned g = 0; g < 16; g += 4) {
      const __m128 v = _mm_loadu_ps(s + r + g);
      mask |= static_cast<std::uint32_t>(_mm_movemask_ps(_mm_cmpnlt_ps(v, w))) << g;  // !(v < w): NaN too
    }
#else
    for (unsigned j = 0; j < 16; ++j) mask |= static_cast<std::uint32_t>(!(s[r + j] < worst)) << j;
#endif
    if (mask == 0) continue;  // the common case once the heap holds good hits
    for (unsigned j = 0; j < 16; ++j) {
      if ((mask >> j) & 1u) visit(r + j);
    }
  }
  for (; r < rows; ++r) visit(r);
}

/// Picks the AMX tile kernel for bf16 / int8 rows at the avx512 level when the CPU and OS allow
/// it and the call has at least amx::kMinQueries queries (after prepare_int8: int8 needs the
/// integer queries; bf16 needs queries finite in bf16).
template <class DbT>
void prepare_amx(Problem<DbT>& p, SimdLevel level, bool allowed) {
  if constexpr (amx::kHasAmxKernel<DbT>) {
    if (!allowed || level != SimdLevel::avx512 || p.m < amx::kMinQueries || !amx::available<DbT>()) return;
    if constexpr (std::is_same_v<DbT, std::int8_t>) {
      p.amx = !p.q16.empty();
    } else {
      // Finite, and finite once rounded to bf16 (a value near FLT_MAX rounds to inf).
      p.amx = std::all_of(p.queries, p.queries + p.m * p.d,
                          [](float x) { return std::isfinite(x) && std::isfinite(to_float(to_bf16(x))); });
    }
  }
  (void)p;
  (void)level;
  (void)allowed;
}

/// A job's rows [r0, r1) in blocks of at most ``block`` rows that never cross a chunk, blocks with no
/// live row skipped: ``visit(chunk, local, rb, rows, live, ahead)`` for each (``local``: the block's
/// first row within its chunk, ``rb``: overall; ``live``: its live bytes or null; ``ahead``: rows of the
/// next block in the same chunk, 0 when it starts another chunk or the job ends: what to prefetch).
template <class DbT, class Visit>
void for_each_block(const Problem<DbT>& p, const Job& job, std::size_t block, Visit&& visit) {
  std::size_t c = static_cast<std::size_t>(std::upper_bound(p.begins.begin(), p.begins.end(), job.r0) -
                                           p.begins.begin()) - 1;
  for (std::size_t rb = job.r0; rb < job.r1;) {
    while (rb >= p.begins[c] + p.chunks[c].rows) ++c;
    const Chunk<DbT>& chunk = p.chunks[c];
    const std::size_t local = rb - p.begins[c];
    const std::size_t rows = std::min({block, job.r1 - rb, chunk.rows - local});
    const std::uint8_t* live = p.live != nullptr ? p.live + rb : nullptr;
    const std::size_t next = rb + rows;
    if (live == nullptr || !std::all_of(live, live + rows, [](std::uint8_t b) { return b == 0; })) {
      const bool more = next < job.r1 && local + rows < chunk.rows;
      visit(chunk, local, rb, rows, live, more ? std::min({block, job.r1 - next, chunk.rows - local - rows}) : 0);
    }
    rb = next;
  }
}

/// Runs one job through the block scorers, offering every live row of [r0, r1) to the heaps of
/// queries q0..q1 (heaps[i] is query q0 + i's).
template <class DbT, class Heap>
void run_job_blocks(const Problem<DbT>& p, const Job& job, Heap* heaps) {
  std::size_t block = rows_per_block<DbT>(p.d);
  const std::size_t tile = p.q16.empty() ? p.scorer.query_tile : std::size_t{3};  // int8: avx2_i8::kQueryTile
  std::vector<float> buf(tile * block);
  for_each_block(p, job, block, [&](const Chunk<DbT>& chunk, std::size_t local, std::size_t rb, std::size_t rows,
                                    const std::uint8_t* live, std::size_t ahead) {
    const DbT* base = chunk.data + local * p.d;
    const float* scales = chunk.scales != nullptr ? chunk.scales + local : nullptr;
    const auto id0 = static_cast<std::int64_t>(rb);
    // With several query tiles per block (a compute-bound batch), each tile's pass also
    // prefetches a slice of the next block into L2 (spread over the kernel's row tiles), so
    // that the first pass over it does not wait on memory. One tile (m = 1 and small batches)
    // is bound by memory: the hardware prefetchers do it.
    const std::size_t tiles = (job.q1 - job.q0 + tile - 1) / tile;
    const char* pf = nullptr;
    std::size_t pf_lines = 0;
    if (tiles >= 2 && ahead > 0) {
      pf = reinterpret_cast<const char*>(base + rows * p.d);
      pf_lines = (ahead * p.d * sizeof(DbT) + 63) / 64;
    }
    std::size_t tile_index = 0;
    for (std::size_t qb = job.q0; qb < job.q1; qb += tile, ++tile_index) {
      const std::size_t qn = std::min(tile, job.q1 - qb);
      const std::size_t pf_a = pf_lines * tile_index / tiles;
      const std::size_t pf_b = pf_lines * (tile_index + 1) / tiles;
      const char* pf_at = pf != nullptr ? pf + pf_a * 64 : nullptr;
      const std::size_t pf_n = pf_b - pf_a;
#if LOOKALIKE_X86_DISPATCH
      if constexpr (std::is_same_v<DbT, std::int8_t>) {
        if (!p.q16.empty() && p.vnni) {
          avx512_i8::score_prepared(p.q16.data() + qb * p.dpad, p.dpad, p.qscale.data() + qb, qn, base, rows, p.d,
                                    buf.data(), block);
        } else if (!p.q16.empty()) {
          avx2_i8::score_prepared(p.q16.data() + qb * p.dpad, p.dpad, p.qscale.data() + qb, qn, base, rows, p.d,
                                  buf.data(), block);
        } else {
          p.scorer.fn(p.queries + qb * p.d, qn, base, rows, p.d, buf.data(), block, pf_at, pf_n);
        }
      } else {
        p.scorer.fn(p.queries + qb * p.d, qn, base, rows, p.d, buf.data(), block, pf_at, pf_n);
      }
#else
      p.scorer.fn(p.queries + qb * p.d, qn, base, rows, p.d, buf.data(), block, pf_at, pf_n);
#endif
      for (std::size_t i = 0; i < qn; ++i) {
        Heap& heap = heaps[qb - job.q0 + i];
        float* s = buf.data() + i * block;
        if (scales != nullptr) {
          for (std::size_t r = 0; r < rows; ++r) s[r] *= scales[r];
        }
        if constexpr (std::is_same_v<Heap, GroupHeap>) {
          offer_candidates(heap, s, rows, [&](std::size_t r) {
            if (!heap.may_enter(s[r]) || (live != nullptr && live[r] == 0)) return;
            const std::int64_t g = p.groups != nullptr ? p.groups[rb + r] : p.groups32[rb + r];
            heap.offer(s[r], id0 + static_cast<std::int64_t>(r), g);
          });
        } else if (live == nullptr) {
          offer_candidates(heap, s, rows, [&](std::size_t r) { heap.offer(s[r], id0 + static_cast<std::int64_t>(r)); });
        } else {
          offer_candidates(heap, s, rows, [&](std::size_t r) {
            if (live[r] != 0) heap.offer(s[r], id0 + static_cast<std::int64_t>(r));
          });
        }
      }
    }
  });
}

#if LOOKALIKE_X86_DISPATCH
/// Runs one job of float32 rows through a level's fused kernel (F = Fused<tag>, kernels.hpp):
/// the queries in groups of up to F::kMaxQueries, each group's scores compared with its
/// queries' current k-th best inside the kernel, so that only candidates reach the heaps.
template <class F, class Heap>
void run_job_fused(const Problem<float>& p, const Job& job, Heap* heaps) {
  const std::size_t nq = job.q1 - job.q0;
  // Groups of kMaxQueries; a last group under kMinQueries shares the one before it evenly.
  std::vector<std::size_t> starts;
  for (std::size_t q = 0; q < nq; q += F::kMaxQueries) starts.push_back(q);
  const std::size_t last = nq - starts.back();
  if (starts.size() >= 2 && last < F::kMinQueries) starts.back() -= (F::kMaxQueries - last) / 2;
  starts.push_back(nq);
  const std::size_t groups = starts.size() - 1;
  const std::size_t pack_floats = F::pack_size(p.d);
  std::vector<float> packs(groups * pack_floats);
  std::vector<float> thr(groups * F::kMaxQueries, -std::numeric_limits<float>::infinity());
  for (std::size_t g = 0; g < groups; ++g) {
    F::pack(p.queries + (job.q0 + starts[g]) * p.d, starts[g + 1] - starts[g], p.d, packs.data() + g * pack_floats);
  }
  // Rows per block: about 512 KiB (L2-resident while every group passes over it), whole tiles.
  const std::size_t row_bytes = std::max<std::size_t>(p.d, 1) * sizeof(float);
  const std::size_t block = std::max<std::size_t>(24, (std::size_t{512} << 10) / row_bytes / 24 * 24);
  for_each_block(p, job, block, [&](const Chunk<float>& chunk, std::size_t local, std::size_t rb, std::size_t rows,
                                    const std::uint8_t* live, std::size_t ahead) {
    const float* base = chunk.data + local * p.d;
    const auto id0 = static_cast<std::int64_t>(rb);
    const char* pf = ahead > 0 ? reinterpret_cast<const char*>(base + rows * p.d) : nullptr;
    const std::size_t pf_lines = (ahead * row_bytes + 63) / 64;
    for (std::size_t g = 0; g < groups; ++g) {
      Heap* h = heaps + starts[g];
      float* t = thr.data() + g * F::kMaxQueries;
      auto visit = [&](std::size_t r, std::size_t i, float score) {
        if (live != nullptr && live[r] == 0) return;
        Heap& heap = h[i];
        if constexpr (std::is_same_v<Heap, GroupHeap>) {
          if (!heap.may_enter(score)) return;
          const std::int64_t grp = p.groups != nullptr ? p.groups[rb + r] : p.groups32[rb + r];
          heap.offer(score, id0 + static_cast<std::int64_t>(r), grp);
        } else {
          heap.offer(score, id0 + static_cast<std::int64_t>(r));
        }
        if (heap.full()) t[i] = heap.worst_score();
      };
      F::rows(packs.data() + g * pack_floats, starts[g + 1] - starts[g], base, rows, p.d, t,
              g + 1 == groups ? pf : nullptr, pf_lines, visit);
    }
  });
}
#endif

#if LOOKALIKE_X86_DISPATCH
/// Runs one job of bf16 or int8 rows through the AMX tiles as a screen (amx_kernel.hpp): the
/// tiles score every pair with the query's hi half (bf16: rounded to bf16; int8: q16 / 256), and
/// only the pairs whose bound reaches the query's current k-th score are scored again by the
/// vector kernel and offered, so that the heaps end exactly as with every row scored by the
/// vector kernel (bit for bit: its scores do not depend on the tile a row falls in).
template <class DbT, class Heap>
void run_job_amx(const Problem<DbT>& p, const Job& job, Heap* heaps) {
  const std::size_t nq_all = job.q1 - job.q0;
  amx::Prepared prepared;
  if constexpr (std::is_same_v<DbT, bf16>) {
    if (!amx::prepare_bf16(p.queries + job.q0 * p.d, nq_all, p.d, prepared)) {  // prepare_amx checked; kept safe
      run_job_blocks(p, job, heaps);
      return;
    }
  } else {
    amx::prepare_int8(p.q16.data() + job.q0 * p.dpad, p.dpad, p.qscale.data() + job.q0, nq_all, p.d, prepared);
  }
  std::vector<float> thr((nq_all + amx::kTileQueries - 1) / amx::kTileQueries * amx::kTileQueries,
                         -std::numeric_limits<float>::infinity());
  const std::size_t block = std::max<std::size_t>(32, rows_per_block<DbT>(p.d) / 32 * 32);
  const std::size_t tiles = (nq_all + amx::kQueryTile - 1) / amx::kQueryTile;
  // Exact scores of queries q (job-relative) x `rows` rows from `row` into out (ld 16): the
  // vector kernel the call would use without AMX.
  auto exact = [&](std::size_t q, std::size_t nq, const DbT* row, std::size_t rows, const float* scales, float* out) {
    if constexpr (std::is_same_v<DbT, bf16>) {
      p.scorer.fn(p.queries + (job.q0 + q) * p.d, nq, row, rows, p.d, out, amx::kTileRows, nullptr, 0);
    } else {
      const std::int16_t* q16 = p.q16.data() + (job.q0 + q) * p.dpad;
      const float* qscale = p.qscale.data() + job.q0 + q;
      if (p.vnni) {
        avx512_i8::score_prepared(q16, p.dpad, qscale, nq, row, rows, p.d, out, amx::kTileRows);
      } else {
        avx2_i8::score_prepared(q16, p.dpad, qscale, nq, row, rows, p.d, out, amx::kTileRows);
      }
      if (scales != nullptr) {
        for (std::size_t i = 0; i < nq; ++i) {
          for (std::size_t r = 0; r < rows; ++r) out[i * amx::kTileRows + r] *= scales[r];
        }
      }
    }
  };
  // A tile with many candidates (heaps still filling, large k) is scored whole by the block kernel.
  constexpr unsigned kWholeTile = 24;
  float scored[amx::kTileQueries * amx::kTileRows];
  std::vector<float> norms(block);  // the block's row norms, summed in its first query tile's screen
  for_each_block(p, job, block, [&](const Chunk<DbT>& chunk, std::size_t local, std::size_t rb, std::size_t rows,
                                    const std::uint8_t* live, std::size_t ahead) {
    const DbT* base = chunk.data + local * p.d;
    const float* scales = chunk.scales != nullptr ? chunk.scales + local : nullptr;
    const char* pf = ahead > 0 ? reinterpret_cast<const char*>(base + rows * p.d) : nullptr;
    const std::size_t pf_lines = (ahead * p.d * sizeof(DbT) + 63) / 64;
    for (std::size_t t = 0; t < tiles; ++t) {
      const std::size_t q0 = t * amx::kQueryTile;  // within the job
      const std::size_t qn = std::min(amx::kQueryTile, nq_all - q0);
      const std::size_t pf_a = pf_lines * t / tiles;
      const std::size_t pf_b = pf_lines * (t + 1) / tiles;
      auto on_tile = [&](std::size_t row0, std::size_t nrows, std::size_t j0, std::size_t nq, const std::uint16_t* cand) {
        const std::size_t qi0 = q0 + j0;  // the tile's first query within the job
        unsigned count = 0;
        for (std::size_t i = 0; i < nrows; ++i) count += static_cast<unsigned>(__builtin_popcount(cand[i]));
        const bool whole = count > kWholeTile;
        const float* tile_scales = scales != nullptr ? scales + row0 : nullptr;
        if (whole) exact(qi0, nq, base + row0 * p.d, nrows, tile_scales, scored);
        for (std::size_t i = 0; i < nrows; ++i) {
          const std::size_t r = row0 + i;
          if (cand[i] == 0 || (live != nullptr && live[r] == 0)) continue;
          for (unsigned bits = cand[i]; bits != 0; bits &= bits - 1) {
            const std::size_t j = static_cast<std::size_t>(__builtin_ctz(bits));
            float score = scored[j * amx::kTileRows + i];
            if (!whole) exact(qi0 + j, 1, base + r * p.d, 1, tile_scales != nullptr ? tile_scales + i : nullptr, &score);
            Heap& heap = heaps[qi0 + j];
            if constexpr (std::is_same_v<Heap, GroupHeap>) {
              if (!heap.may_enter(score)) continue;
              const std::int64_t g = p.groups != nullptr ? p.groups[rb + r] : p.groups32[rb + r];
              heap.offer(score, static_cast<std::int64_t>(rb + r), g);
            } else {
              heap.offer(score, static_cast<std::int64_t>(rb + r));
            }
            if (heap.full()) thr[qi0 + j] = heap.worst_score();
          }
        }
      };
      amx::screen<DbT>(prepared, q0, qn, base, scales, rows, p.d, norms.data(), t == 0, thr.data() + q0, on_tile,
                       pf != nullptr ? pf + pf_a * 64 : nullptr, pf_b - pf_a);
    }
  });
}
#endif

/// Runs one job, offering every live row of [r0, r1) to the heaps of queries q0..q1 (heaps[i]
/// is query q0 + i's).
template <class DbT, class Heap>
void run_job(const Problem<DbT>& p, const Job& job, Heap* heaps) {
#if LOOKALIKE_X86_DISPATCH
  if constexpr (std::is_same_v<DbT, float>) {
    const std::size_t nq = job.q1 - job.q0;
    if (p.fused == SimdLevel::avx512 && nq >= Fused<Avx512Tag>::kMinQueries) {
      run_job_fused<Fused<Avx512Tag>>(p, job, heaps);
      return;
    }
    if (p.fused == SimdLevel::avx2 && nq >= Fused<Avx2Tag>::kMinQueries) {
      run_job_fused<Fused<Avx2Tag>>(p, job, heaps);
      return;
    }
  }
  if constexpr (amx::kHasAmxKernel<DbT>) {
    if (p.amx) {
      run_job_amx(p, job, heaps);
      return;
    }
  }
#endif
  run_job_blocks(p, job, heaps);
}

/// How the work is cut: jobs that each cover all rows for a query range (`row_split` false),
/// or all queries for a row range (`row_split` true, merged afterwards).
struct Plan {
  std::vector<Job> jobs;
  bool row_split = false;
};

/// Splits the problem into at most `threads` jobs (at least one when n, m > 0).
inline Plan plan_jobs(std::size_t n, std::size_t m, std::size_t d, std::size_t k, std::size_t threads) {
  // At least 1 Mi multiply-adds (~50 us) per job: waking a pooled worker costs a few microseconds.
  constexpr double kMinWorkPerThread = 1048576.0;
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

/// Ranks the hits of one query gathered from several jobs and writes the best k (distinct
/// groups in one-per-group search: a group's first hit in rank order is its best).
inline void merge_row(std::vector<Hit>& merged, bool one_per_group, std::size_t k, float* scores,
                      std::int64_t* ids) {
  if (!one_per_group) {
    const std::size_t keep = std::min(k, merged.size());
    std::partial_sort(merged.begin(), merged.begin() + static_cast<std::ptrdiff_t>(keep), merged.end(),
                      RanksBefore{});
    write_row(merged.data(), keep, k, scores, ids);
    return;
  }
  std::sort(merged.begin(), merged.end(), RanksBefore{});
  std::unordered_set<std::int64_t> seen;
  std::size_t kept = 0;
  for (const Hit& h : merged) {
    if (kept == k) break;
    if (seen.insert(h.group).second) merged[kept++] = h;
  }
  write_row(merged.data(), kept, k, scores, ids);
}

template <class DbT, class Heap>
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

  const std::function<void(std::size_t)> work = [&](std::size_t j) {
    JobState& st = states[j];
    const Job& job = jobs[j];
    try {
      const std::size_t nq = job.q1 - job.q0;
      std::vector<Heap> heaps;
      heaps.reserve(nq);
      for (std::size_t i = 0; i < nq; ++i) heaps.emplace_back(st.hits.data() + i * st.cap, st.cap);
      run_job(p, job, heaps.data());
      for (std::size_t i = 0; i < nq; ++i) st.sizes[i] = heaps[i].size();
      if (!plan.row_split) {  // this job saw every row: its heaps are final
        for (std::size_t i = 0; i < nq; ++i) {
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
  if (jobs.size() == 1) {
    work(0);
  } else {
    shared_thread_pool()->run(jobs.size(), work);
  }
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
    merge_row(merged, p.one_per_group, p.k, out_scores + i * p.k, out_ids + i * p.k);
  }
}

inline std::size_t resolve_threads(std::size_t requested) { return requested != 0 ? requested : thread_budget(); }

inline SimdLevel resolve_level(const std::optional<SimdLevel>& requested) {
  if (!requested) return default_simd_level();
  if (!simd_level_supported(*requested)) {
    throw std::invalid_argument(std::string("SIMD level ") + simd_level_name(*requested) +
                                " is not supported by this CPU (best here: " +
                                simd_level_name(cpu_simd_level()) + "); pass a lower level or none");
  }
  return *requested;
}

template <class DbT>
constexpr bool kNeedsScales = std::is_same_v<DbT, std::int8_t>;

}  // namespace detail

/// Exact top-k of `m` float32 queries over the concatenated rows of `nchunks` chunks of
/// dimension `d` (DbT: float, f16, bf16 or std::int8_t with scales). `queries` is m x d,
/// row-major; `scores` and `ids` receive m x k values each (see the top of this file).
/// Throws std::invalid_argument for null pointers with non-zero sizes, int8 chunks without
/// scales, a one-per-group search without group ids, or an unsupported SIMD level.
template <class DbT>
void topk_chunks(const Chunk<DbT>* chunks, std::size_t nchunks, std::size_t d, const float* queries, std::size_t m,
                 std::size_t k, float* scores, std::int64_t* ids, const TopKOptions& options = {}) {
  if (chunks == nullptr && nchunks != 0) throw std::invalid_argument("topk: chunks is null but nchunks > 0");
  if (queries == nullptr && m != 0 && d != 0) throw std::invalid_argument("topk: queries is null but m, d > 0");
  if ((scores == nullptr || ids == nullptr) && m != 0 && k != 0) {
    throw std::invalid_argument("topk: scores/ids output is null but m, k > 0");
  }
  detail::Problem<DbT> p;
  p.chunks.reserve(nchunks);
  for (std::size_t c = 0; c < nchunks; ++c) {
    const Chunk<DbT>& chunk = chunks[c];
    if (chunk.rows == 0) continue;
    if (chunk.data == nullptr && d != 0) throw std::invalid_argument("topk: a chunk's data is null but rows, d > 0");
    if (detail::kNeedsScales<DbT> && chunk.scales == nullptr) {
      throw std::invalid_argument("topk: int8 rows need a float32 scale per row (chunk.scales is null)");
    }
    p.begins.push_back(p.n);
    p.chunks.push_back(chunk);
    p.n += chunk.rows;
  }
  if (options.one_per_group && options.groups == nullptr && options.groups32 == nullptr) {
    throw std::invalid_argument("topk: one_per_group needs a group id per row (options.groups)");
  }
  p.d = d;
  p.queries = queries;
  p.m = m;
  p.k = k;
  p.live = options.live;
  p.one_per_group = options.one_per_group;
  if (options.one_per_group) {
    p.groups = options.groups;
    p.groups32 = options.groups != nullptr ? nullptr : options.groups32;
  }
  const SimdLevel level = detail::resolve_level(options.simd);
  p.scorer = detail::block_scorer<DbT>(level);
  if (std::is_same_v<DbT, float> && level != SimdLevel::scalar) p.fused = level;
  detail::prepare_int8(p, level);
  detail::prepare_amx(p, level, options.amx);
  const std::size_t threads = detail::resolve_threads(options.threads);
  if (options.one_per_group) {
    detail::topk_impl<DbT, detail::GroupHeap>(p, threads, scores, ids);
  } else {
    detail::topk_impl<DbT, detail::BoundedHeap>(p, threads, scores, ids);
  }
}

/// One contiguous n x d database (the single-chunk case of topk_chunks). `scales` (n floats)
/// is required for int8 and ignored otherwise.
template <class DbT>
void topk(const DbT* db, std::size_t n, std::size_t d, const float* queries, std::size_t m, std::size_t k,
          float* scores, std::int64_t* ids, const TopKOptions& options = {}, const float* scales = nullptr) {
  if (db == nullptr && n != 0 && d != 0) throw std::invalid_argument("topk: db is null but n, d > 0");
  const Chunk<DbT> chunk{db, n, scales};
  topk_chunks(&chunk, 1, d, queries, m, k, scores, ids, options);
}

/// Allocating convenience overload of topk.
template <class DbT>
TopKResult topk(const DbT* db, std::size_t n, std::size_t d, const float* queries, std::size_t m, std::size_t k,
                const TopKOptions& options = {}, const float* scales = nullptr) {
  TopKResult result;
  result.m = m;
  result.k = k;
  result.scores.resize(m * k);
  result.ids.resize(m * k);
  topk(db, n, d, queries, m, k, result.scores.data(), result.ids.data(), options, scales);
  return result;
}

/// float32 database (kept from the first version of this header).
inline void topk_f32(const float* db, std::size_t n, std::size_t d, const float* queries, std::size_t m,
                     std::size_t k, float* scores, std::int64_t* ids, const TopKOptions& options = {}) {
  topk<float>(db, n, d, queries, m, k, scores, ids, options);
}

inline TopKResult topk_f32(const float* db, std::size_t n, std::size_t d, const float* queries, std::size_t m,
                           std::size_t k, const TopKOptions& options = {}) {
  return topk<float>(db, n, d, queries, m, k, options);
}

}  // namespace lookalike
