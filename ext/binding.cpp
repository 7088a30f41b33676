// lookalike._native: the one pybind11 file. Validates arrays, then calls the header-only
// kernel in ext/include with the GIL released. The friendly API is lookalike.native.
#include <pybind11/numpy.h>
#include <pybind11/pybind11.h>
#include <pybind11/stl.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <optional>
#include <string>
#include <vector>

#include "lookalike/range_join.hpp"
#include "lookalike/simd.hpp"
#include "lookalike/stream.hpp"
#include "lookalike/thread_pool.hpp"
#include "lookalike/topk.hpp"
#include "lookalike/types.hpp"

namespace py = pybind11;

namespace {

std::string type_name(const py::handle& obj) { return py::str(py::type::handle_of(obj).attr("__name__")); }

std::string dtype_name(const py::array& a) { return py::str(a.dtype()); }

std::string shape_str(const py::array& a) {
  std::string s = "(";
  for (py::ssize_t i = 0; i < a.ndim(); ++i) {
    if (i > 0) s += ", ";
    s += std::to_string(a.shape(i));
  }
  return s + (a.ndim() == 1 ? ",)" : ")");
}

// `obj` as a 2-D, C-contiguous, aligned float32 array, or TypeError/ValueError saying how to fix it.
py::array as_matrix_f32(const py::handle& obj, const char* name) {
  const std::string fix =
      std::string("; try ") + name + " = np.ascontiguousarray(" + name + ", dtype=np.float32)";
  if (!py::isinstance<py::array>(obj)) {
    throw py::type_error(std::string(name) + " must be a numpy.ndarray of float32, got " + type_name(obj) + fix);
  }
  py::array a = py::reinterpret_borrow<py::array>(obj);
  if (!a.dtype().is(py::dtype::of<float>())) {
    throw py::type_error(std::string(name) + " must be float32 C-contiguous, got dtype " + dtype_name(a) + fix);
  }
  if (a.ndim() != 2) {
    throw py::value_error(std::string(name) + " must be 2-D [rows, dim], got shape " + shape_str(a) +
                          (a.ndim() == 1 ? std::string("; for one vector use ") + name + "[None, :]" : ""));
  }
  if (!(a.flags() & py::array::c_style)) {
    throw py::value_error(std::string(name) + " must be float32 C-contiguous, got a strided view" + fix);
  }
  if (!py::cast<bool>(a.attr("flags").attr("aligned"))) {
    throw py::value_error(std::string(name) + " is not aligned to 4 bytes; try " + name + " = " + name +
                          ".copy()");
  }
  return a;
}

std::vector<std::string> available_levels() {
  std::vector<std::string> out;
  for (lookalike::SimdLevel level : lookalike::kAllSimdLevels) {
    if (lookalike::simd_level_supported(level)) out.emplace_back(lookalike::simd_level_name(level));
  }
  return out;
}

std::optional<lookalike::SimdLevel> as_level(const std::optional<std::string>& simd) {
  if (!simd) return std::nullopt;
  const std::optional<lookalike::SimdLevel> level = lookalike::parse_simd_level(*simd);
  if (!level) throw py::value_error("simd must be None, 'scalar', 'avx2' or 'avx512', got '" + *simd + "'");
  if (!lookalike::simd_level_supported(*level)) {
    std::string names;
    for (const std::string& name : available_levels()) names += (names.empty() ? "'" : ", '") + name + "'";
    throw py::value_error("simd='" + *simd + "' is not supported by this CPU; use None or one of " + names);
  }
  return level;
}

// `obj` as a list of 2-D, C-contiguous arrays (one array is a list of one), all of one dtype
// and one dimension.
std::vector<py::array> as_chunks(const py::handle& obj) {
  std::vector<py::array> out;
  const char* fix = "; db is one 2-D numpy array [rows, dim] or a list/tuple of them (chunks)";
  auto check = [&](const py::handle& item, const std::string& name) {
    if (!py::isinstance<py::array>(item)) {
      throw py::type_error(name + " must be a numpy.ndarray, got " + type_name(item) + fix);
    }
    py::array a = py::reinterpret_borrow<py::array>(item);
    if (a.ndim() != 2) {
      throw py::value_error(name + " must be 2-D [rows, dim], got shape " + shape_str(a) +
                            (a.ndim() == 1 ? "; for one vector use " + name + "[None, :]" : std::string()));
    }
    if (!(a.flags() & py::array::c_style)) {
      throw py::value_error(name + " must be C-contiguous, got a strided view; try np.ascontiguousarray(" + name +
                            ")");
    }
    if (!py::cast<bool>(a.attr("flags").attr("aligned"))) {
      throw py::value_error(name + " is not aligned to its element size; try " + name + ".copy()");
    }
    out.push_back(a);
  };
  if (py::isinstance<py::list>(obj) || py::isinstance<py::tuple>(obj)) {
    py::sequence seq = py::reinterpret_borrow<py::sequence>(obj);
    for (std::size_t i = 0; i < seq.size(); ++i) check(seq[i], "db[" + std::to_string(i) + "]");
    if (out.empty()) throw py::value_error("db is an empty list; pass at least one chunk (it may have 0 rows)");
  } else {
    check(obj, "db");
  }
  for (std::size_t i = 1; i < out.size(); ++i) {
    if (!out[i].dtype().is(out[0].dtype())) {
      throw py::type_error("db chunks must share one dtype: db[0] is " + dtype_name(out[0]) + ", db[" +
                           std::to_string(i) + "] is " + dtype_name(out[i]));
    }
    if (out[i].shape(1) != out[0].shape(1)) {
      throw py::value_error("db chunks must share one dimension: db[0] has " + std::to_string(out[0].shape(1)) +
                            ", db[" + std::to_string(i) + "] has " + std::to_string(out[i].shape(1)));
    }
  }
  return out;
}

lookalike::Storage storage_of(const py::array& a) {
  if (a.dtype().is(py::dtype::of<float>())) return lookalike::Storage::f32;
  if (a.dtype().is(py::dtype("float16"))) return lookalike::Storage::f16;
  if (a.dtype().is(py::dtype::of<std::uint16_t>())) return lookalike::Storage::bf16;
  if (a.dtype().is(py::dtype::of<std::int8_t>())) return lookalike::Storage::i8;
  throw py::type_error("db dtype " + dtype_name(a) +
                       " is not a storage type; use float32 (try db = np.ascontiguousarray(db, dtype=np.float32)), float16, uint16 (bfloat16 bit patterns, see "
                       "lookalike.native.to_bfloat16) or int8 with scales (lookalike.native.quantize_int8)");
}

// A 1-D contiguous array of one of `dtypes` with at least n entries (pointer into it).
py::array as_vector(const py::handle& obj, const char* name, py::ssize_t n, const std::vector<py::dtype>& dtypes,
                    const std::string& what) {
  const std::string fix = std::string("; ") + name + " is " + what;
  if (!py::isinstance<py::array>(obj)) {
    throw py::type_error(std::string(name) + " must be None or a numpy.ndarray, got " + type_name(obj) + fix);
  }
  py::array a = py::reinterpret_borrow<py::array>(obj);
  bool ok = false;
  for (const py::dtype& dt : dtypes) ok = ok || a.dtype().is(dt);
  if (!ok) throw py::type_error(std::string(name) + " has dtype " + dtype_name(a) + fix);
  if (a.ndim() != 1 || a.shape(0) < n) {
    throw py::value_error(std::string(name) + " must be 1-D with at least " + std::to_string(n) +
                          " entries (one per database row), got shape " + shape_str(a));
  }
  if (!(a.flags() & py::array::c_style)) {
    throw py::value_error(std::string(name) + " must be contiguous; try np.ascontiguousarray(" + name + ")");
  }
  return a;
}

struct Call {
  std::vector<py::array> arrays;  // chunks, limited to the first n rows
  std::vector<std::size_t> rows;
  std::vector<const float*> scales;
  std::size_t d = 0;
  lookalike::TopKOptions options;
};

template <class DbT>
void run_topk(const Call& call, const float* q, std::size_t m, std::size_t k, float* s, std::int64_t* ids) {
  std::vector<lookalike::Chunk<DbT>> chunks;
  for (std::size_t c = 0; c < call.arrays.size(); ++c) {
    chunks.push_back({static_cast<const DbT*>(call.arrays[c].data()), call.rows[c],
                      call.scales.empty() ? nullptr : call.scales[c]});
  }
  py::gil_scoped_release release;
  lookalike::topk_chunks(chunks.data(), chunks.size(), call.d, q, m, k, s, ids, call.options);
}

// The arguments topk and range_join share, validated: db chunks limited to the first n rows,
// int8 scales, the live mask, threads and the SIMD level. `keep` holds the arrays pointed into.
Call make_call(const std::vector<py::array>& chunks, lookalike::Storage storage, const py::array& queries,
               const std::optional<std::int64_t>& n_opt, const py::handle& live_obj, std::int64_t threads,
               const py::handle& scales_obj, std::vector<py::array>& keep, py::ssize_t* n_out) {
  Call call;
  if (threads < 0) {
    throw py::value_error("threads must be >= 0 (0 = the thread budget, see set_threads), got " +
                          std::to_string(threads));
  }
  call.d = static_cast<std::size_t>(chunks[0].shape(1));
  if (static_cast<std::size_t>(queries.shape(1)) != call.d) {
    throw py::value_error("queries have dimension " + std::to_string(queries.shape(1)) + " but db rows have " +
                          std::to_string(call.d) + "; embed both with the same model");
  }
  py::ssize_t total = 0;
  for (const py::array& a : chunks) total += a.shape(0);
  py::ssize_t n = total;
  if (n_opt) {
    if (*n_opt < 0 || *n_opt > total) {
      throw py::value_error("n must be in [0, " + std::to_string(total) + "] (the rows db holds), got " +
                            std::to_string(*n_opt));
    }
    n = *n_opt;
  }
  *n_out = n;
  // Chunks limited to the first n rows.
  py::ssize_t left = n;
  for (const py::array& a : chunks) {
    const py::ssize_t take = std::min(left, a.shape(0));
    call.arrays.push_back(a);
    call.rows.push_back(static_cast<std::size_t>(take));
    left -= take;
  }

  // int8: scales, one float32 per row: one array over all rows, or one per chunk.
  if (storage == lookalike::Storage::i8) {
    const std::string what = "one float32 scale per int8 row (see lookalike.native.quantize_int8)";
    if (scales_obj.is_none()) throw py::type_error("int8 db needs scales: " + what);
    if (py::isinstance<py::list>(scales_obj) || py::isinstance<py::tuple>(scales_obj)) {
      py::sequence seq = py::reinterpret_borrow<py::sequence>(scales_obj);
      if (seq.size() != call.arrays.size()) {
        throw py::value_error("scales is a list of " + std::to_string(seq.size()) + " arrays but db has " +
                              std::to_string(call.arrays.size()) + " chunks; pass one per chunk");
      }
      for (std::size_t c = 0; c < call.arrays.size(); ++c) {
        const std::string name = "scales[" + std::to_string(c) + "]";
        keep.push_back(as_vector(seq[c], name.c_str(), static_cast<py::ssize_t>(call.rows[c]),
                                 {py::dtype::of<float>()}, what));
        call.scales.push_back(static_cast<const float*>(keep.back().data()));
      }
    } else {
      keep.push_back(as_vector(scales_obj, "scales", n, {py::dtype::of<float>()}, what));
      const auto* base = static_cast<const float*>(keep.back().data());
      std::size_t offset = 0;
      for (std::size_t c = 0; c < call.arrays.size(); ++c) {
        call.scales.push_back(base + offset);
        offset += static_cast<std::size_t>(call.arrays[c].shape(0));
      }
    }
  } else if (!scales_obj.is_none()) {
    throw py::value_error("scales are for int8 databases only; db is " + dtype_name(chunks[0]));
  }

  if (!live_obj.is_none()) {
    keep.push_back(as_vector(live_obj, "live", n, {py::dtype::of<std::uint8_t>(), py::dtype::of<bool>()},
                             "a uint8 or bool mask (1 = live, 0 = deleted); try np.ascontiguousarray(live, "
                             "dtype=np.uint8)"));
    call.options.live = static_cast<const std::uint8_t*>(keep.back().data());
  }
  call.options.threads = static_cast<std::size_t>(threads);
  return call;
}

py::tuple topk(const py::handle& db_obj, const py::handle& queries_obj, std::int64_t k,
               const std::optional<std::int64_t>& n_opt, const py::handle& live_obj, const py::handle& groups_obj,
               bool one_per_group, std::int64_t threads, const std::optional<std::string>& simd,
               const py::handle& scales_obj) {
  const std::vector<py::array> chunks = as_chunks(db_obj);
  const lookalike::Storage storage = storage_of(chunks[0]);
  const py::array queries = as_matrix_f32(queries_obj, "queries");
  if (k < 0) throw py::value_error("k must be >= 0, got " + std::to_string(k));
  std::vector<py::array> keep;
  py::ssize_t n = 0;
  Call call = make_call(chunks, storage, queries, n_opt, live_obj, threads, scales_obj, keep, &n);
  if (one_per_group) {
    if (groups_obj.is_none()) throw py::value_error("one_per_group=True needs groups: one int32/int64 id per row");
    keep.push_back(as_vector(groups_obj, "groups", n, {py::dtype::of<std::int64_t>(), py::dtype::of<std::int32_t>()},
                             "one int32 or int64 group id per row"));
    if (keep.back().dtype().is(py::dtype::of<std::int64_t>())) {
      call.options.groups = static_cast<const std::int64_t*>(keep.back().data());
    } else {
      call.options.groups32 = static_cast<const std::int32_t*>(keep.back().data());
    }
    call.options.one_per_group = true;
  } else if (!groups_obj.is_none()) {
    throw py::value_error("groups is only used with one_per_group=True; pass both, or neither");
  }
  call.options.simd = as_level(simd);

  const auto m = static_cast<std::size_t>(queries.shape(0));
  const auto kk = static_cast<std::size_t>(k);
  py::array_t<float> scores({static_cast<py::ssize_t>(m), static_cast<py::ssize_t>(kk)});
  py::array_t<std::int64_t> ids({static_cast<py::ssize_t>(m), static_cast<py::ssize_t>(kk)});
  const auto* q = static_cast<const float*>(queries.data());
  float* s = scores.mutable_data();
  std::int64_t* i = ids.mutable_data();
  switch (storage) {
    case lookalike::Storage::f32: run_topk<float>(call, q, m, kk, s, i); break;
    case lookalike::Storage::f16: run_topk<lookalike::f16>(call, q, m, kk, s, i); break;
    case lookalike::Storage::bf16: run_topk<lookalike::bf16>(call, q, m, kk, s, i); break;
    case lookalike::Storage::i8: run_topk<std::int8_t>(call, q, m, kk, s, i); break;
  }
  return py::make_tuple(std::move(scores), std::move(ids));
}

// A 1-D numpy array that takes over a vector's buffer (no copy): the capsule frees it.
template <class T>
py::array_t<T> adopt(std::vector<T>&& v) {
  auto* owned = new std::vector<T>(std::move(v));
  py::capsule free_when_done(owned, [](void* p) { delete static_cast<std::vector<T>*>(p); });
  return py::array_t<T>({static_cast<py::ssize_t>(owned->size())}, {static_cast<py::ssize_t>(sizeof(T))},
                        owned->data(), free_when_done);
}

template <class DbT>
lookalike::RangeJoinResult run_range_join(const Call& call, const float* q, std::size_t m, float threshold,
                                          const lookalike::RangeJoinOptions& options) {
  std::vector<lookalike::Chunk<DbT>> chunks;
  for (std::size_t c = 0; c < call.arrays.size(); ++c) {
    chunks.push_back({static_cast<const DbT*>(call.arrays[c].data()), call.rows[c],
                      call.scales.empty() ? nullptr : call.scales[c]});
  }
  py::gil_scoped_release release;
  return lookalike::range_join_chunks(chunks.data(), chunks.size(), call.d, q, m, threshold, options);
}

py::tuple range_join(const py::handle& db_obj, const py::handle& queries_obj, double threshold,
                     const std::optional<std::int64_t>& n_opt, const py::handle& live_obj,
                     const py::handle& min_row_obj, std::int64_t max_pairs, std::int64_t threads,
                     const std::optional<std::string>& simd, const py::handle& scales_obj, bool prune) {
  const std::vector<py::array> chunks = as_chunks(db_obj);
  const lookalike::Storage storage = storage_of(chunks[0]);
  const py::array queries = as_matrix_f32(queries_obj, "queries");
  if (!std::isfinite(threshold)) {
    throw py::value_error("threshold must be a finite number (a cosine, e.g. 0.95), got " + std::to_string(threshold));
  }
  if (max_pairs < 0) {
    throw py::value_error("max_pairs must be >= 0 (the most pairs one call may return), got " +
                          std::to_string(max_pairs));
  }
  std::vector<py::array> keep;
  py::ssize_t n = 0;
  Call call = make_call(chunks, storage, queries, n_opt, live_obj, threads, scales_obj, keep, &n);
  const auto m = static_cast<std::size_t>(queries.shape(0));
  lookalike::RangeJoinOptions options;
  options.live = call.options.live;
  options.threads = call.options.threads;
  options.max_pairs = static_cast<std::size_t>(max_pairs);
  options.simd = as_level(simd);
  options.prune = prune;
  if (!min_row_obj.is_none()) {
    const std::string what = "one int64 per query: only rows > min_row[i] are reported for query i";
    py::array a = as_vector(min_row_obj, "min_row", 0, {py::dtype::of<std::int64_t>()},
                            what + "; try np.ascontiguousarray(min_row, dtype=np.int64)");
    if (static_cast<std::size_t>(a.shape(0)) != m) {
      throw py::value_error("min_row must have one entry per query (" + std::to_string(m) + "), got shape " +
                            shape_str(a) + "; " + what);
    }
    keep.push_back(a);
    options.min_row = static_cast<const std::int64_t*>(a.data());
  }
  const auto* q = static_cast<const float*>(queries.data());
  const auto t = static_cast<float>(threshold);
  lookalike::RangeJoinResult r;
  switch (storage) {
    case lookalike::Storage::f32: r = run_range_join<float>(call, q, m, t, options); break;
    case lookalike::Storage::f16: r = run_range_join<lookalike::f16>(call, q, m, t, options); break;
    case lookalike::Storage::bf16: r = run_range_join<lookalike::bf16>(call, q, m, t, options); break;
    case lookalike::Storage::i8: r = run_range_join<std::int8_t>(call, q, m, t, options); break;
  }
  (void)n;
  return py::make_tuple(adopt(std::move(r.queries)), adopt(std::move(r.rows)), adopt(std::move(r.scores)));
}

std::uint64_t stream_read(const py::handle& obj, std::int64_t threads, const std::optional<std::string>& simd) {
  if (!py::isinstance<py::array>(obj)) throw py::type_error("stream_read needs a numpy.ndarray, got " + type_name(obj));
  py::array a = py::reinterpret_borrow<py::array>(obj);
  if (!(a.flags() & py::array::c_style)) throw py::value_error("stream_read needs a C-contiguous array");
  if (threads < 0) throw py::value_error("threads must be >= 0, got " + std::to_string(threads));
  const void* data = a.data();
  const auto bytes = static_cast<std::size_t>(a.nbytes());
  const std::optional<lookalike::SimdLevel> level = as_level(simd);
  py::gil_scoped_release release;
  return lookalike::stream_read(data, bytes, static_cast<std::size_t>(threads), level);
}

}  // namespace

void register_hnsw(py::module_& mod);  // binding_hnsw.cpp
void register_resample(py::module_& mod);  // binding_resample.cpp

PYBIND11_MODULE(_native, mod) {
  mod.doc() =
      "Native exact top-k kernel of Lookalike (C++ in ext/include/lookalike). Use lookalike.native for the "
      "friendly API.";

  mod.def("topk", &topk, py::arg("db"), py::arg("queries"), py::arg("k"), py::kw_only(), py::arg("n") = py::none(),
          py::arg("live") = py::none(), py::arg("groups") = py::none(), py::arg("one_per_group") = false,
          py::arg("threads") = 0, py::arg("simd") = py::none(), py::arg("scales") = py::none(),
          R"doc(Exact top-k by inner product; see lookalike.native.topk for the full contract.

db: one 2-D C-contiguous array or a list/tuple of them (chunks, concatenated), dtype float32,
float16, uint16 (bfloat16 bit patterns) or int8 (with scales). queries: float32 [m, d].
n: rows used (the first n of the concatenation; default all). live: uint8/bool [>= n].
groups + one_per_group: int32/int64 [>= n]; the best row of each of the k best groups.
scales: int8 only; float32 [>= n] or one array per chunk. Returns (scores float32 [m, k],
ids int64 [m, k]) with global row ids, padded with -inf / -1. The GIL is released.)doc");

  mod.def("range_join", &range_join, py::arg("db"), py::arg("queries"), py::arg("threshold"), py::kw_only(),
          py::arg("n") = py::none(), py::arg("live") = py::none(), py::arg("min_row") = py::none(),
          py::arg("max_pairs") = static_cast<std::int64_t>(lookalike::kDefaultMaxPairs), py::arg("threads") = 0,
          py::arg("simd") = py::none(), py::arg("scales") = py::none(), py::arg("prune") = true,
          R"doc(Every (query, row) pair with inner product >= threshold; see lookalike.native.range_join.

db, n, live, threads, simd, scales: as topk. queries: float32 [m, d]. threshold: finite float.
min_row: int64 [m] or None; only rows > min_row[i] are reported for query i (rows <= min(min_row)
are not read). max_pairs: more qualifying pairs raise ValueError (std::length_error). prune:
stop scoring tiles that cannot reach the threshold (exact; False scores every pair). Returns
(query_idx int64 [p], rows int64 [p], scores float32 [p]) sorted by (query, row). The GIL is released.)doc");

  mod.def("stream_read", &stream_read, py::arg("array"), py::kw_only(), py::arg("threads") = 0,
          py::arg("simd") = py::none(),
          "Reads every byte of a C-contiguous array once on the shared pool (the bandwidth ceiling of a "
          "scan); returns a checksum. The GIL is released.");
  mod.def(
      "set_threads", [](std::int64_t n) {
        if (n < 0) throw py::value_error("threads must be >= 0 (0 = one per hardware thread), got " + std::to_string(n));
        lookalike::set_thread_budget(static_cast<std::size_t>(n));
      },
      py::arg("n"), "Sets the thread budget (the caller + n - 1 pooled workers); 0 = hardware threads.");
  mod.def(
      "get_threads", [] { return lookalike::thread_budget(); }, "The thread budget of a call with threads=0.");
  mod.def(
      "simd_level", [] { return std::string(lookalike::simd_level_name(lookalike::default_simd_level())); },
      "SIMD level used when a call names none: 'scalar', 'avx2' or 'avx512'.");
  mod.def("available_simd_levels", &available_levels, "SIMD levels this CPU runs, lowest first.");
  register_hnsw(mod);
  register_resample(mod);
}
