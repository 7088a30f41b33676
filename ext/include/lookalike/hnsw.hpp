// The HNSW tier's graph: usearch's index_dense (vendored, ext/third_party/usearch) with the
// distance kernels of hnsw_metric.hpp, and the one-call search the server runs: graph search,
// then the candidates mapped to rows, checked against the live mask and re-scored exactly
// from the stored rows.
//
// Files are usearch's own (the same bytes the Python `usearch.index.Index` saves and loads:
// vectors, header, graph), metric `ip`, keys uint64, slots uint32.
//
// Concurrency: searches share a reader lock and each takes one of `contexts()` search contexts
// (waiting when all are taken); add, remove, save and load take the writer lock.
#pragma once

#include <algorithm>
#include <condition_variable>
#include <cstddef>
#include <cstdint>
#include <cstring>
#include <functional>
#include <memory>
#include <mutex>
#include <shared_mutex>
#include <stdexcept>
#include <string>
#include <vector>

#include <usearch/index_dense.hpp>

#include "lookalike/hnsw_metric.hpp"
#include "lookalike/thread_pool.hpp"
#include "lookalike/types.hpp"

namespace lookalike {

/// The rows a graph's candidates are re-scored from, and which rows may be returned.
struct RerankSource {
  Storage storage = Storage::f32;   ///< f32, f16 or bf16 (an i8 database passes its float32 copy)
  std::vector<const void*> chunks;  ///< blocks of rows, [rows_c, d] each
  std::vector<std::size_t> starts;  ///< first global row of each chunk, then the end (chunks + 1 entries)
  std::size_t d = 0;
  const std::int64_t* ids = nullptr;   ///< the image id (graph key) of each row, ascending, n entries
  const std::uint8_t* live = nullptr;  ///< n entries; 0: the row is never returned
  std::size_t n = 0;
};

namespace detail {

/// Exact float32 <q, row> for a stored row (f16/bf16 widened exactly), best SIMD level.
inline float row_dot(const float* q, const void* row, Storage storage, std::size_t d, hnsw_metric::Features f) {
  static const SimdLevel level = default_simd_level();
  (void)f;
#if LOOKALIKE_X86_DISPATCH
  if (level == SimdLevel::avx512) {
    switch (storage) {
      case Storage::f32: return hnsw_metric::x86::dot_avx512(q, static_cast<const float*>(row), d);
      case Storage::f16: return hnsw_metric::x86::dot_avx512(q, static_cast<const f16*>(row), d);
      case Storage::bf16: return hnsw_metric::x86::dot_avx512(q, static_cast<const bf16*>(row), d);
      default: break;
    }
  } else if (level == SimdLevel::avx2) {
    switch (storage) {
      case Storage::f32: return hnsw_metric::x86::dot_avx2(q, static_cast<const float*>(row), d);
      case Storage::f16: return hnsw_metric::x86::dot_avx2(q, static_cast<const f16*>(row), d);
      case Storage::bf16: return hnsw_metric::x86::dot_avx2(q, static_cast<const bf16*>(row), d);
      default: break;
    }
  }
#endif
  switch (storage) {
    case Storage::f32: return hnsw_metric::scalar::dot(q, static_cast<const float*>(row), d);
    case Storage::f16: return hnsw_metric::scalar::dot(q, static_cast<const f16*>(row), d);
    case Storage::bf16: return hnsw_metric::scalar::dot(q, static_cast<const bf16*>(row), d);
    default: break;
  }
  throw std::invalid_argument("re-rank rows must be f32, f16 or bf16");
}

/// Throws `what` + usearch's message, taking the message (an error_t left set throws on destruction).
[[noreturn]] inline void fail(const std::string& what, unum::usearch::error_t& error) {
  const char* message = error.release();
  throw std::runtime_error(what + (message != nullptr ? message : "unknown error"));
}

inline std::size_t element_bytes(Storage s) { return s == Storage::f32 ? 4 : s == Storage::i8 ? 1 : 2; }

/// Position of `id` in the ascending `ids` [0, n), or n. Image ids are handed out in row order and
/// only compaction closes gaps, so the interpolated guess is usually the row itself: a galloping
/// search from there reads a few entries instead of the ~20 cache misses of a plain binary search.
inline std::size_t find_row(const std::int64_t* ids, std::size_t n, std::int64_t id) noexcept {
  if (n == 0 || id < ids[0] || id > ids[n - 1]) return n;
  const auto span = static_cast<double>(ids[n - 1] - ids[0]);
  std::size_t guess = span > 0 ? static_cast<std::size_t>(static_cast<double>(id - ids[0]) / span * double(n - 1)) : 0;
  guess = std::min(guess, n - 1);
  std::size_t lo = 0, hi = n;  // the answer is in [lo, hi)
  if (ids[guess] == id) return guess;
  if (ids[guess] < id) {
    std::size_t step = 1;
    lo = guess + 1;
    while (lo + step < n && ids[lo + step - 1] < id) {
      lo += step;
      step *= 2;
    }
    hi = std::min(n, lo + step);
  } else {
    std::size_t step = 1;
    hi = guess;
    while (hi > step && ids[hi - step] > id) {
      hi -= step;
      step *= 2;
    }
    lo = hi > step ? hi - step : 0;
  }
  const std::int64_t* at = std::lower_bound(ids + lo, ids + hi, id);
  return at != ids + hi && *at == id ? static_cast<std::size_t>(at - ids) : n;
}

}  // namespace detail

/// Re-scores graph candidates (image ids) exactly: ids mapped to rows by binary search, rows
/// not live (or ids not found) dropped, the best `k` kept, best first, ties by lower row.
/// Returns how many were written to scores/rows.
inline std::size_t rerank_candidates(const float* q, const std::uint64_t* keys, std::size_t count,
                                     const RerankSource& src, std::size_t k, float* scores, std::int64_t* rows) {
  static const hnsw_metric::Features features = hnsw_metric::cpu_features();
  std::vector<std::pair<float, std::int64_t>> found;
  found.reserve(count);
  const std::size_t row_bytes = src.d * detail::element_bytes(src.storage);
  std::int64_t cand[512];
  std::size_t done = 0;
  while (done < count) {  // in blocks: the rows of a block are prefetched, then scored
    const std::size_t block = std::min<std::size_t>(512, count - done);
    std::size_t m = 0;
    for (std::size_t i = 0; i < block; ++i) {
      const auto id = static_cast<std::int64_t>(keys[done + i]);
      const std::size_t row = detail::find_row(src.ids, src.n, id);
      if (row == src.n) continue;
      if (src.live != nullptr && src.live[row] == 0) continue;
      cand[m++] = static_cast<std::int64_t>(row);
    }
    const void* ptrs[512];
    for (std::size_t i = 0; i < m; ++i) {
      const auto row = static_cast<std::size_t>(cand[i]);
      const std::size_t c = static_cast<std::size_t>(
          std::upper_bound(src.starts.begin(), src.starts.end(), row) - src.starts.begin() - 1);
      ptrs[i] = static_cast<const char*>(src.chunks[c]) + (row - src.starts[c]) * row_bytes;
      for (std::size_t b = 0; b < row_bytes; b += 64) __builtin_prefetch(static_cast<const char*>(ptrs[i]) + b, 0, 3);
    }
    for (std::size_t i = 0; i < m; ++i) {
      found.emplace_back(detail::row_dot(q, ptrs[i], src.storage, src.d, features), cand[i]);
    }
    done += block;
  }
  auto better = [](const std::pair<float, std::int64_t>& a, const std::pair<float, std::int64_t>& b) {
    return a.first > b.first || (a.first == b.first && a.second < b.second);
  };
  const std::size_t keep = std::min(k, found.size());
  std::partial_sort(found.begin(), found.begin() + static_cast<std::ptrdiff_t>(keep), found.end(), better);
  for (std::size_t i = 0; i < keep; ++i) {
    scores[i] = found[i].first;
    rows[i] = found[i].second;
  }
  return keep;
}

class HnswGraph {
 public:
  using Index = unum::usearch::index_dense_gt<std::uint64_t, std::uint32_t>;
  using Kind = hnsw_metric::Kind;

  /// An empty graph of `dim`-dimensional vectors stored as `kind`.
  HnswGraph(std::size_t dim, Kind kind, std::size_t connectivity, std::size_t expansion_add,
            std::size_t expansion_search)
      : kind_(kind) {
    unum::usearch::index_dense_config_t config(connectivity, expansion_add, expansion_search);
    auto made = Index::make(metric(dim, kind), config, unum::usearch::default_free_value<std::uint64_t>(),
                            unum::usearch::index_limits_t(0, contexts()));
    if (!made) detail::fail("cannot create the HNSW graph: ", made.error);
    index_ = std::move(made.index);
    reset_contexts();
  }

  /// A graph from a usearch file's bytes (a copy: later changes go to memory only).
  static std::unique_ptr<HnswGraph> load(const std::uint8_t* data, std::size_t size) {
    std::unique_ptr<HnswGraph> g(new HnswGraph());
    std::size_t pos = 0;
    auto input = [&](void* out, std::size_t n) {
      if (n > size - pos) return false;
      std::memcpy(out, data + pos, n);
      pos += n;
      return true;
    };
    unum::usearch::serialization_result_t r = g->index_.load_from_stream(input);
    if (!r) detail::fail("not a usable usearch index: ", r.error);
    g->adopt_loaded();
    return g;
  }

  static std::unique_ptr<HnswGraph> load_file(const std::string& path) {
    std::unique_ptr<HnswGraph> g(new HnswGraph());
    unum::usearch::serialization_result_t r = g->index_.load(path.c_str());
    if (!r) detail::fail("cannot load the usearch index " + path + ": ", r.error);
    g->adopt_loaded();
    return g;
  }

  /// The file's bytes, as the Python usearch package would save them.
  std::vector<std::uint8_t> save() const {
    std::unique_lock<std::shared_mutex> lock(mu_);
    std::vector<std::uint8_t> out;
    out.reserve(index_.serialized_length());
    auto output = [&](const void* p, std::size_t n) {
      const auto* b = static_cast<const std::uint8_t*>(p);
      out.insert(out.end(), b, b + n);
      return true;
    };
    unum::usearch::serialization_result_t r = index_.save_to_stream(output);
    if (!r) detail::fail("cannot save the HNSW graph: ", r.error);
    return out;
  }

  void save_file(const std::string& path) const {
    std::unique_lock<std::shared_mutex> lock(mu_);
    unum::usearch::serialization_result_t r = index_.save(path.c_str());
    if (!r) detail::fail("cannot save the HNSW graph to " + path + ": ", r.error);
  }

  std::size_t size() const { return index_.size(); }
  std::size_t dimensions() const { return index_.dimensions(); }
  std::size_t connectivity() const { return index_.connectivity(); }
  Kind kind() const { return kind_; }
  std::size_t memory_usage() const { return index_.memory_usage(); }
  std::size_t expansion_add() const { return index_.expansion_add(); }
  std::size_t expansion_search() const { return index_.expansion_search(); }
  void set_expansion(std::size_t add, std::size_t search) {
    std::unique_lock<std::shared_mutex> lock(mu_);
    if (add > 0) index_.change_expansion_add(add);
    if (search > 0) index_.change_expansion_search(search);
  }
  bool contains(std::uint64_t key) const {
    std::shared_lock<std::shared_mutex> lock(mu_);
    return index_.contains(key);
  }

  /// Adds the keys the graph does not hold yet (float32 rows [m, d]); returns how many were new.
  std::size_t add(const std::uint64_t* keys, const float* vectors, std::size_t m, std::size_t threads) {
    std::unique_lock<std::shared_mutex> lock(mu_);
    std::vector<std::size_t> fresh;
    for (std::size_t i = 0; i < m; ++i) {
      if (!index_.contains(keys[i])) fresh.push_back(i);
    }
    if (fresh.empty()) return 0;
    const std::size_t need = index_.size() + fresh.size();
    if (need > index_.capacity()) {
      const std::size_t grown = std::max(need, index_.capacity() + index_.capacity() / 2);
      if (!index_.try_reserve(unum::usearch::index_limits_t(grown, contexts())))
        throw std::runtime_error("out of memory growing the HNSW graph");
    }
    const std::size_t d = index_.dimensions();
    const std::size_t jobs = std::max<std::size_t>(1, std::min({threads == 0 ? thread_budget() : threads,
                                                                 contexts(), fresh.size()}));
    std::mutex error_mu;
    std::string error;
    std::atomic<std::size_t> next{0};
    shared_thread_pool()->run(jobs, [&](std::size_t job) {
      for (std::size_t i = next.fetch_add(1); i < fresh.size(); i = next.fetch_add(1)) {
        const std::size_t at = fresh[i];
        auto r = index_.add(keys[at], vectors + at * d, job);
        if (!r) {
          std::lock_guard<std::mutex> g(error_mu);
          const char* message = r.error.release();
          if (error.empty()) error = message != nullptr ? message : "unknown error";
          return;
        }
      }
    });
    if (!error.empty()) throw std::runtime_error("HNSW add failed: " + error);
    return fresh.size();
  }

  /// Removes the keys the graph holds (others are skipped); returns how many were removed.
  std::size_t remove(const std::uint64_t* keys, std::size_t m) {
    std::unique_lock<std::shared_mutex> lock(mu_);
    std::size_t removed = 0;
    for (std::size_t i = 0; i < m; ++i) {
      auto r = index_.remove(keys[i]);
      if (!r) detail::fail("HNSW remove failed: ", r.error);
      removed += r.completed;
    }
    return removed;
  }

  /// The keys of about `count` approximate nearest neighbours of `q` (float32), best first.
  std::size_t search(const float* q, std::size_t count, std::uint64_t* keys) const {
    std::shared_lock<std::shared_mutex> lock(mu_);
    Context ctx(*this);
    auto r = index_.search(q, count, ctx.id);
    if (!r) detail::fail("HNSW search failed: ", r.error);
    return r.dump_to(keys, count);
  }

  /// One search as the server runs it: `count` graph candidates, checked against the live mask,
  /// re-scored exactly from `src`; the best `k`. Returns how many were written.
  std::size_t search_reranked(const float* q, std::size_t k, std::size_t count, const RerankSource& src,
                              float* scores, std::int64_t* rows) const {
    thread_local std::vector<std::uint64_t> keys;
    keys.resize(count);
    const std::size_t found = search(q, count, keys.data());
    return rerank_candidates(q, keys.data(), found, src, k, scores, rows);
  }

  /// `search_reranked` for m queries [m, d] on the shared pool; rows padded with -1 / -inf.
  void search_reranked_many(const float* q, std::size_t m, std::size_t k, std::size_t count, const RerankSource& src,
                            std::size_t threads, float* scores, std::int64_t* rows) const {
    const std::size_t d = index_.dimensions();
    run_many(m, threads, [&](std::size_t i) {
      const std::size_t got = search_reranked(q + i * d, k, count, src, scores + i * k, rows + i * k);
      std::fill(scores + i * k + got, scores + (i + 1) * k, -std::numeric_limits<float>::infinity());
      std::fill(rows + i * k + got, rows + (i + 1) * k, std::int64_t{-1});
    });
  }

  /// `search` for m queries; keys [m, count] padded with -1 (as int64).
  void search_many(const float* q, std::size_t m, std::size_t count, std::size_t threads, std::int64_t* keys) const {
    const std::size_t d = index_.dimensions();
    run_many(m, threads, [&](std::size_t i) {
      auto* out = reinterpret_cast<std::uint64_t*>(keys + i * count);
      const std::size_t got = search(q + i * d, count, out);
      std::fill(keys + i * count + got, keys + (i + 1) * count, std::int64_t{-1});
    });
  }

  /// Search contexts (concurrent searches) a graph keeps.
  static std::size_t contexts() { return std::max<std::size_t>(16, 2 * detail::hardware_threads()); }

  /// The distance kernel the graph uses on this CPU, e.g. "avx512bf16".
  const char* kernel() const {
    return hnsw_metric::kernel_name(kind_, default_simd_level(), hnsw_metric::cpu_features());
  }

 private:
  HnswGraph() = default;

  static unum::usearch::metric_punned_t metric(std::size_t dim, Kind kind) {
    using unum::usearch::scalar_kind_t;
    scalar_kind_t sk = scalar_kind_t::f32_k;
    switch (kind) {
      case Kind::f32: sk = scalar_kind_t::f32_k; break;
      case Kind::f16: sk = scalar_kind_t::f16_k; break;
      case Kind::bf16: sk = scalar_kind_t::bf16_k; break;
      case Kind::i8: sk = scalar_kind_t::i8_k; break;
    }
    return unum::usearch::metric_punned_t::stateless(
        dim, reinterpret_cast<std::uintptr_t>(hnsw_metric::pick(kind)),
        unum::usearch::metric_punned_signature_t::array_array_size_k, unum::usearch::metric_kind_t::ip_k, sk);
  }

  void adopt_loaded() {
    using unum::usearch::scalar_kind_t;
    if (index_.metric_kind() != unum::usearch::metric_kind_t::ip_k) {
      throw std::runtime_error("the usearch index does not use the inner-product metric");
    }
    switch (index_.scalar_kind()) {
      case scalar_kind_t::f32_k: kind_ = Kind::f32; break;
      case scalar_kind_t::f16_k: kind_ = Kind::f16; break;
      case scalar_kind_t::bf16_k: kind_ = Kind::bf16; break;
      case scalar_kind_t::i8_k: kind_ = Kind::i8; break;
      default: throw std::runtime_error("the usearch index stores a scalar type other than f32, f16, bf16, i8");
    }
    if (index_.multi()) throw std::runtime_error("the usearch index allows several vectors per key");
    if (!index_.try_change_metric(metric(index_.dimensions(), kind_)) ||
        !index_.try_reserve(unum::usearch::index_limits_t(index_.capacity(), contexts()))) {
      throw std::runtime_error("out of memory loading the HNSW graph");
    }
    reset_contexts();
  }

  void reset_contexts() {
    free_.clear();
    for (std::size_t i = 0; i < contexts(); ++i) free_.push_back(contexts() - 1 - i);
  }

  template <class Fn>
  void run_many(std::size_t m, std::size_t threads, Fn&& fn) const {
    const std::size_t jobs = std::max<std::size_t>(1, std::min(threads == 0 ? thread_budget() : threads, m));
    std::atomic<std::size_t> next{0};
    std::mutex error_mu;
    std::string error;
    shared_thread_pool()->run(jobs, [&](std::size_t) {
      try {
        for (std::size_t i = next.fetch_add(1); i < m; i = next.fetch_add(1)) fn(i);
      } catch (const std::exception& e) {
        std::lock_guard<std::mutex> g(error_mu);
        if (error.empty()) error = e.what();
      }
    });
    if (!error.empty()) throw std::runtime_error(error);
  }

  /// One search context, held for one search (waits while all are taken).
  struct Context {
    explicit Context(const HnswGraph& g) : graph(g) {
      std::unique_lock<std::mutex> lock(g.free_mu_);
      g.free_cv_.wait(lock, [&] { return !g.free_.empty(); });
      id = g.free_.back();
      g.free_.pop_back();
    }
    ~Context() {
      {
        std::lock_guard<std::mutex> lock(graph.free_mu_);
        graph.free_.push_back(id);
      }
      graph.free_cv_.notify_one();
    }
    Context(const Context&) = delete;
    Context& operator=(const Context&) = delete;
    const HnswGraph& graph;
    std::size_t id = 0;
  };

  Index index_;
  Kind kind_ = Kind::f32;
  mutable std::shared_mutex mu_;
  mutable std::mutex free_mu_;
  mutable std::condition_variable free_cv_;
  mutable std::vector<std::size_t> free_;
};

}  // namespace lookalike
