// lookalike._native: the one pybind11 file. Validates arrays, then calls the header-only
// kernel in ext/include with the GIL released. The friendly API is lookalike.native.
#include <pybind11/numpy.h>
#include <pybind11/pybind11.h>
#include <pybind11/stl.h>

#include <cstdint>
#include <optional>
#include <string>
#include <vector>

#include "lookalike/simd.hpp"
#include "lookalike/topk.hpp"

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

// `obj` (None or a byte mask of length n) as a pointer into the array, kept alive by `keep`.
const std::uint8_t* as_live_mask(const py::handle& obj, py::ssize_t n, py::object& keep) {
  if (obj.is_none()) return nullptr;
  const char* fix = "; try live = np.ascontiguousarray(live, dtype=np.uint8)";
  if (!py::isinstance<py::array>(obj)) {
    throw py::type_error("live must be None or a numpy.ndarray of uint8 (1 = live, 0 = deleted), got " +
                         type_name(obj) + fix);
  }
  py::array a = py::reinterpret_borrow<py::array>(obj);
  if (!a.dtype().is(py::dtype::of<std::uint8_t>()) && !a.dtype().is(py::dtype::of<bool>())) {
    throw py::type_error("live must be uint8 or bool (1 = live, 0 = deleted), got dtype " + dtype_name(a) + fix);
  }
  if (a.ndim() != 1 || a.shape(0) != n) {
    throw py::value_error("live must have shape (" + std::to_string(n) + ",), one byte per database row, got " +
                          shape_str(a));
  }
  if (!(a.flags() & py::array::c_style)) throw py::value_error(std::string("live must be contiguous") + fix);
  keep = a;
  return static_cast<const std::uint8_t*>(a.data());
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

py::tuple topk_f32(const py::handle& db_obj, const py::handle& queries_obj, std::int64_t k,
                   const py::handle& live_obj, std::int64_t threads, const std::optional<std::string>& simd) {
  const py::array db = as_matrix_f32(db_obj, "db");
  const py::array queries = as_matrix_f32(queries_obj, "queries");
  if (k < 0) throw py::value_error("k must be >= 0, got " + std::to_string(k));
  if (threads < 0) throw py::value_error("threads must be >= 0 (0 = all cores), got " + std::to_string(threads));
  if (queries.shape(1) != db.shape(1)) {
    throw py::value_error("queries have dimension " + std::to_string(queries.shape(1)) + " but db rows have " +
                          std::to_string(db.shape(1)) + "; embed both with the same model");
  }
  py::object keep_live;
  const std::uint8_t* live = as_live_mask(live_obj, db.shape(0), keep_live);

  lookalike::TopKOptions options;
  options.live = live;
  options.threads = static_cast<std::size_t>(threads);
  options.simd = as_level(simd);

  const auto n = static_cast<std::size_t>(db.shape(0));
  const auto d = static_cast<std::size_t>(db.shape(1));
  const auto m = static_cast<std::size_t>(queries.shape(0));
  const auto kk = static_cast<std::size_t>(k);
  py::array_t<float> scores({static_cast<py::ssize_t>(m), static_cast<py::ssize_t>(kk)});
  py::array_t<std::int64_t> ids({static_cast<py::ssize_t>(m), static_cast<py::ssize_t>(kk)});

  // Plain pointers only past this point: no Python object is touched without the GIL.
  const auto* db_ptr = static_cast<const float*>(db.data());
  const auto* q_ptr = static_cast<const float*>(queries.data());
  float* s_ptr = scores.mutable_data();
  std::int64_t* i_ptr = ids.mutable_data();
  {
    py::gil_scoped_release release;
    lookalike::topk_f32(db_ptr, n, d, q_ptr, m, kk, s_ptr, i_ptr, options);
  }
  return py::make_tuple(std::move(scores), std::move(ids));
}

}  // namespace

PYBIND11_MODULE(_native, mod) {
  mod.doc() =
      "Native exact top-k kernel of Lookalike (C++ in ext/include/lookalike). Use lookalike.native for the "
      "friendly API.";

  mod.def("topk_f32", &topk_f32, py::arg("db"), py::arg("queries"), py::arg("k"), py::kw_only(),
          py::arg("live") = py::none(), py::arg("threads") = 0, py::arg("simd") = py::none(),
          R"doc(Exact top-k by inner product over a float32 database.

db: float32 [n, d] C-contiguous; queries: float32 [m, d] C-contiguous; k >= 0.
live: None or uint8/bool [n]; rows whose byte is 0 are never returned.
threads: worker threads, 0 = all cores. simd: None (best, or $LOOKALIKE_SIMD) or a level name.
Returns (scores float32 [m, k], ids int64 [m, k]), best first; equal scores by lower id;
padded with -inf / -1 when fewer than k live rows exist. The GIL is released while it runs.)doc");

  mod.def(
      "simd_level", [] { return std::string(lookalike::simd_level_name(lookalike::default_simd_level())); },
      "SIMD level used when a call names none: 'scalar', 'avx2' or 'avx512'.");
  mod.def("available_simd_levels", &available_levels, "SIMD levels this CPU runs, lowest first.");
}
