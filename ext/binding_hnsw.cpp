// Python binding of the HNSW graph (ext/include/lookalike/hnsw.hpp): lookalike._native.HnswGraph.
// Registered into the module by binding.cpp. Every search and add runs with the GIL released.
#include <pybind11/numpy.h>
#include <pybind11/pybind11.h>
#include <pybind11/stl.h>

#include <cstdint>
#include <limits>
#include <memory>
#include <string>
#include <vector>

#include "lookalike/hnsw.hpp"

namespace py = pybind11;

namespace {

using lookalike::HnswGraph;
using Kind = lookalike::hnsw_metric::Kind;

Kind kind_of(const std::string& name) {
  if (name == "f32") return Kind::f32;
  if (name == "f16") return Kind::f16;
  if (name == "bf16") return Kind::bf16;
  if (name == "i8") return Kind::i8;
  throw py::value_error("HNSW dtype must be f32, f16, bf16 or i8, got " + name);
}

const char* kind_name(Kind kind) {
  switch (kind) {
    case Kind::f32: return "f32";
    case Kind::f16: return "f16";
    case Kind::bf16: return "bf16";
    case Kind::i8: return "i8";
  }
  return "?";
}

// float32 C-contiguous [m, d] (a 1-D query is one row) of the graph's dimension.
py::array_t<float, py::array::c_style> as_queries(const py::array& a, std::size_t d, const char* name) {
  if (!py::isinstance<py::array_t<float>>(a) || !(a.flags() & py::array::c_style)) {
    throw py::type_error(std::string(name) + " must be a C-contiguous float32 array; try np.ascontiguousarray(" +
                         name + ", dtype=np.float32)");
  }
  auto q = py::reinterpret_borrow<py::array_t<float, py::array::c_style>>(a);
  const std::size_t cols = q.ndim() == 1 ? static_cast<std::size_t>(q.shape(0))
                                         : q.ndim() == 2 ? static_cast<std::size_t>(q.shape(1)) : 0;
  if (cols != d) {
    throw py::value_error(std::string(name) + " must have " + std::to_string(d) + " columns (the graph's dimension)");
  }
  return q;
}

std::size_t rows_of(const py::array& q) { return q.ndim() == 1 ? 1 : static_cast<std::size_t>(q.shape(0)); }

std::vector<std::uint64_t> as_keys(const py::array& a) {
  auto k = py::array_t<std::int64_t, py::array::c_style | py::array::forcecast>::ensure(a);
  if (!k || k.ndim() != 1) throw py::value_error("keys must be a 1-D integer array");
  std::vector<std::uint64_t> out(static_cast<std::size_t>(k.shape(0)));
  for (std::size_t i = 0; i < out.size(); ++i) out[i] = static_cast<std::uint64_t>(k.data()[i]);
  return out;
}

// The rows candidates are re-scored from: chunks (f32, f16 or uint16 = bf16 bit patterns,
// [rows_c, d] each; the first n rows of their concatenation count), ids (int64, ascending) and
// live (uint8/bool) with at least n entries. `keep` holds the arrays for the call.
lookalike::RerankSource make_source(const py::list& chunks, std::int64_t n, const py::array& ids,
                                    const py::array& live, std::size_t d, std::vector<py::array>& keep) {
  lookalike::RerankSource src;
  src.d = d;
  if (chunks.empty()) throw py::value_error("rows must be a non-empty list of 2-D arrays");
  std::size_t start = 0;
  for (const py::handle& h : chunks) {
    if (!py::isinstance<py::array>(h)) throw py::type_error("rows must be numpy arrays");
    py::array a = py::reinterpret_borrow<py::array>(h);
    lookalike::Storage s;
    if (a.dtype().is(py::dtype::of<float>())) {
      s = lookalike::Storage::f32;
    } else if (a.dtype().kind() == 'f' && a.itemsize() == 2) {
      s = lookalike::Storage::f16;
    } else if (a.dtype().is(py::dtype::of<std::uint16_t>())) {
      s = lookalike::Storage::bf16;
    } else {
      throw py::type_error("rows must be float32, float16 or uint16 (bfloat16 bits), got " +
                           std::string(py::str(a.dtype())));
    }
    if (src.chunks.empty()) src.storage = s;
    if (s != src.storage || a.ndim() != 2 || static_cast<std::size_t>(a.shape(1)) != d ||
        !(a.flags() & py::array::c_style)) {
      throw py::value_error("rows must be C-contiguous [rows, " + std::to_string(d) + "] arrays of one dtype");
    }
    src.starts.push_back(start);
    src.chunks.push_back(a.data());
    start += static_cast<std::size_t>(a.shape(0));
    keep.push_back(a);
  }
  src.starts.push_back(start);
  if (n < 0 || static_cast<std::size_t>(n) > start) throw py::value_error("n must be in [0, rows held]");
  src.n = static_cast<std::size_t>(n);
  if (!ids.dtype().is(py::dtype::of<std::int64_t>()) || ids.ndim() != 1 || !(ids.flags() & py::array::c_style) ||
      ids.shape(0) < n) {
    throw py::value_error("ids must be a contiguous int64 array with at least n entries (ascending)");
  }
  if (!(live.dtype().is(py::dtype::of<std::uint8_t>()) || live.dtype().is(py::dtype::of<bool>())) ||
      live.ndim() != 1 || !(live.flags() & py::array::c_style) || live.shape(0) < n) {
    throw py::value_error("live must be a contiguous uint8/bool array with at least n entries");
  }
  src.ids = static_cast<const std::int64_t*>(ids.data());
  src.live = static_cast<const std::uint8_t*>(live.data());
  keep.push_back(ids);
  keep.push_back(live);
  return src;
}

std::unique_ptr<HnswGraph> load_buffer(const py::buffer& buffer) {
  py::buffer_info info = buffer.request();
  const auto* data = static_cast<const std::uint8_t*>(info.ptr);
  const auto size = static_cast<std::size_t>(info.size * info.itemsize);
  py::gil_scoped_release release;
  return HnswGraph::load(data, size);
}

}  // namespace

void register_hnsw(py::module_& mod) {
  py::class_<HnswGraph>(mod, "HnswGraph",
                        "usearch HNSW graph (metric ip, uint64 keys) with the one-call re-ranked search; files are "
                        "the usearch package's own.")
      .def(py::init([](std::size_t dim, const std::string& dtype, std::size_t connectivity, std::size_t expansion_add,
                       std::size_t expansion_search) {
             return std::make_unique<HnswGraph>(dim, kind_of(dtype), connectivity, expansion_add, expansion_search);
           }),
           py::arg("dimensions"), py::arg("dtype"), py::arg("connectivity") = 16, py::arg("expansion_add") = 128,
           py::arg("expansion_search") = 64)
      .def_static("load", &load_buffer, py::arg("buffer"), "A graph from a usearch file's bytes (copied into memory).")
      .def_static(
          "load_file", [](const std::string& path) {
            py::gil_scoped_release release;
            return HnswGraph::load_file(path);
          },
          py::arg("path"))
      .def("save", [](const HnswGraph& g) {
             std::vector<std::uint8_t> bytes;
             {
               py::gil_scoped_release release;
               bytes = g.save();
             }
             py::array_t<std::uint8_t> out(static_cast<py::ssize_t>(bytes.size()));
             std::copy(bytes.begin(), bytes.end(), out.mutable_data());
             return out;
           })
      .def(
          "save_file", [](const HnswGraph& g, const std::string& path) {
            py::gil_scoped_release release;
            g.save_file(path);
          },
          py::arg("path"))
      .def("__len__", &HnswGraph::size)
      .def_property_readonly("dimensions", &HnswGraph::dimensions)
      .def_property_readonly("connectivity", &HnswGraph::connectivity)
      .def_property_readonly("dtype", [](const HnswGraph& g) { return kind_name(g.kind()); })
      .def_property_readonly("memory_usage", &HnswGraph::memory_usage)
      .def_property_readonly("kernel", &HnswGraph::kernel)
      .def_property_readonly("expansion_add", &HnswGraph::expansion_add)
      .def_property_readonly("expansion_search", &HnswGraph::expansion_search)
      .def("set_expansion", &HnswGraph::set_expansion, py::arg("add") = 0, py::arg("search") = 0)
      .def("contains", &HnswGraph::contains, py::arg("key"))
      .def(
          "add", [](HnswGraph& g, const py::array& keys, const py::array& vectors, std::size_t threads) {
            const std::vector<std::uint64_t> k = as_keys(keys);
            auto v = as_queries(vectors, g.dimensions(), "vectors");
            if (rows_of(v) != k.size()) throw py::value_error("one vector per key");
            py::gil_scoped_release release;
            return g.add(k.data(), v.data(), k.size(), threads);
          },
          py::arg("keys"), py::arg("vectors"), py::arg("threads") = 0,
          "Adds the keys the graph does not hold yet; returns how many were new.")
      .def(
          "remove", [](HnswGraph& g, const py::array& keys) {
            const std::vector<std::uint64_t> k = as_keys(keys);
            py::gil_scoped_release release;
            return g.remove(k.data(), k.size());
          },
          py::arg("keys"), "Removes the keys the graph holds; returns how many were removed.")
      .def(
          "search", [](const HnswGraph& g, const py::array& query, std::size_t count) {
            auto q = as_queries(query, g.dimensions(), "query");
            std::vector<std::uint64_t> keys(count);
            std::size_t got = 0;
            {
              py::gil_scoped_release release;
              got = g.search(q.data(), count, keys.data());
            }
            py::array_t<std::int64_t> out(static_cast<py::ssize_t>(got));
            for (std::size_t i = 0; i < got; ++i) out.mutable_data()[i] = static_cast<std::int64_t>(keys[i]);
            return out;
          },
          py::arg("query"), py::arg("count"), "Keys of about `count` neighbours of one query, best first.")
      .def(
          "search_many", [](const HnswGraph& g, const py::array& queries, std::size_t count, std::size_t threads) {
            auto q = as_queries(queries, g.dimensions(), "queries");
            const std::size_t m = rows_of(q);
            py::array_t<std::int64_t> out({static_cast<py::ssize_t>(m), static_cast<py::ssize_t>(count)});
            std::int64_t* o = out.mutable_data();
            py::gil_scoped_release release;
            g.search_many(q.data(), m, count, threads, o);
            return out;
          },
          py::arg("queries"), py::arg("count"), py::arg("threads") = 0,
          "Keys [m, count] of each query's neighbours, -1 where the graph gave fewer.")
      .def(
          "search_reranked", [](const HnswGraph& g, const py::array& query, std::size_t k, std::size_t count,
                                const py::list& rows, std::int64_t n, const py::array& ids, const py::array& live) {
            auto q = as_queries(query, g.dimensions(), "query");
            std::vector<py::array> keep;
            const lookalike::RerankSource src = make_source(rows, n, ids, live, g.dimensions(), keep);
            std::vector<float> s(k);
            std::vector<std::int64_t> r(k);
            std::size_t got = 0;
            {
              py::gil_scoped_release release;
              got = g.search_reranked(q.data(), k, count, src, s.data(), r.data());
            }
            py::array_t<float> scores(static_cast<py::ssize_t>(got));
            py::array_t<std::int64_t> found(static_cast<py::ssize_t>(got));
            std::copy(s.begin(), s.begin() + static_cast<std::ptrdiff_t>(got), scores.mutable_data());
            std::copy(r.begin(), r.begin() + static_cast<std::ptrdiff_t>(got), found.mutable_data());
            return py::make_tuple(scores, found);
          },
          py::arg("query"), py::arg("k"), py::arg("count"), py::arg("rows"), py::arg("n"), py::arg("ids"),
          py::arg("live"),
          "`count` graph candidates -> rows (ids, ascending), live ones re-scored exactly from `rows`; the best k "
          "as (scores float32, rows int64), best first, ties by lower row.")
      .def(
          "search_reranked_many",
          [](const HnswGraph& g, const py::array& queries, std::size_t k, std::size_t count, const py::list& rows,
             std::int64_t n, const py::array& ids, const py::array& live, std::size_t threads) {
            auto q = as_queries(queries, g.dimensions(), "queries");
            const std::size_t m = rows_of(q);
            std::vector<py::array> keep;
            const lookalike::RerankSource src = make_source(rows, n, ids, live, g.dimensions(), keep);
            py::array_t<float> scores({static_cast<py::ssize_t>(m), static_cast<py::ssize_t>(k)});
            py::array_t<std::int64_t> found({static_cast<py::ssize_t>(m), static_cast<py::ssize_t>(k)});
            float* s = scores.mutable_data();
            std::int64_t* r = found.mutable_data();
            {
              py::gil_scoped_release release;
              g.search_reranked_many(q.data(), m, k, count, src, threads, s, r);
            }
            return py::make_tuple(scores, found);
          },
          py::arg("queries"), py::arg("k"), py::arg("count"), py::arg("rows"), py::arg("n"), py::arg("ids"),
          py::arg("live"), py::arg("threads") = 0,
          "search_reranked for each query [m, d] on the thread pool; [m, k] padded with -inf / -1.");
}
