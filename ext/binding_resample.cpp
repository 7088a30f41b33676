// Python binding of the RGB resampler (ext/include/lookalike/resample.hpp):
// lookalike._native.downscale_rgbx. Registered into the module by binding.cpp; the work runs with
// the GIL released, into the bytes object it returns (no copy out). The pixels come as a buffer, or
// as a Pillow image through the Arrow C data interface (`__arrow_c_array__`: Pillow's own rows, no
// copy in).
#include <pybind11/pybind11.h>
#include <pybind11/stl.h>

#include <cstdint>
#include <optional>
#include <utility>
#include <string>

#include "lookalike/resample.hpp"

namespace py = pybind11;

namespace {

// The Arrow C data interface's two structs (https://arrow.apache.org/docs/format/CDataInterface.html).
struct ArrowSchema {
  const char* format;
  const char* name;
  const char* metadata;
  std::int64_t flags;
  std::int64_t n_children;
  ArrowSchema** children;
  ArrowSchema* dictionary;
  void (*release)(ArrowSchema*);
  void* private_data;
};
struct ArrowArray {
  std::int64_t length;
  std::int64_t null_count;
  std::int64_t offset;
  std::int64_t n_buffers;
  std::int64_t n_children;
  const void** buffers;
  ArrowArray** children;
  ArrowArray* dictionary;
  void (*release)(ArrowArray*);
  void* private_data;
};

// The pixel bytes of an Arrow export of 4-byte pixels (format "+w:4" of "C": Pillow's RGB/RGBX/RGBA),
// `bytes` long; `keep` holds the capsules (their destructors release the export) until the work is done.
const std::uint8_t* arrow_pixels(const py::handle& obj, std::int64_t bytes, py::object& keep) {
  keep = obj.attr("__arrow_c_array__")();
  const py::tuple pair = keep.cast<py::tuple>();
  auto* schema = static_cast<ArrowSchema*>(PyCapsule_GetPointer(pair[0].ptr(), "arrow_schema"));
  auto* array = static_cast<ArrowArray*>(PyCapsule_GetPointer(pair[1].ptr(), "arrow_array"));
  if (schema == nullptr || array == nullptr) throw py::error_already_set();
  const bool four = schema->format != nullptr && std::string(schema->format) == "+w:4" && schema->n_children == 1 &&
                    schema->children[0]->format != nullptr && std::string(schema->children[0]->format) == "C";
  if (!four || array->n_children != 1 || array->offset != 0) {
    throw py::type_error("pixels: an Arrow export of 4-byte pixels (an RGB image) is needed");
  }
  const ArrowArray* child = array->children[0];
  if (child->n_buffers != 2 || child->offset != 0 || child->buffers[1] == nullptr || child->length != bytes) {
    throw py::value_error("pixels: the Arrow export holds " + std::to_string(child->length) + " bytes; the sizes need " +
                          std::to_string(bytes));
  }
  return static_cast<const std::uint8_t*>(child->buffers[1]);
}

constexpr std::int64_t kMaxSide = 1 << 16;  // larger than any image the server decodes (its pixel limit)

lookalike::SimdLevel level_of(const std::optional<std::string>& simd) {
  if (!simd) return lookalike::default_simd_level();
  const std::optional<lookalike::SimdLevel> level = lookalike::parse_simd_level(*simd);
  if (!level || !lookalike::simd_level_supported(*level)) {
    throw py::value_error("simd must be None or a level this CPU runs ('scalar', 'avx2', 'avx512'), got '" +
                          *simd + "'");
  }
  return *level;
}

void check_side(std::int64_t v, const char* name) {
  if (v < 1 || v > kMaxSide) {
    throw py::value_error(std::string(name) + " must be in 1.." + std::to_string(kMaxSide) + ", got " +
                          std::to_string(v));
  }
}

py::object downscale(const py::object& src, std::int64_t width, std::int64_t height, std::int64_t out_width,
                     std::int64_t out_height, const std::optional<std::string>& simd, bool only_fast) {
  check_side(width, "width");
  check_side(height, "height");
  check_side(out_width, "out_width");
  check_side(out_height, "out_height");
  const lookalike::SimdLevel level = level_of(simd);
  const std::int64_t expected = width * height * lookalike::resample::kChannels;
  const std::uint8_t* pixels = nullptr;
  py::object keep;
  py::buffer_info info;
  if (PyObject_CheckBuffer(src.ptr())) {
    info = src.cast<py::buffer>().request();
    if (info.itemsize != 1 || !(info.ndim == 1 || PyBuffer_IsContiguous(info.view(), 'C'))) {
      throw py::type_error("pixels must be a C-contiguous buffer of bytes (Image.tobytes(\"raw\", \"RGBX\") of an RGB "
                           "image) or an RGB image");
    }
    const std::int64_t got = info.size * info.itemsize;
    if (got != expected) {
      throw py::value_error("pixels hold " + std::to_string(got) + " bytes; " + std::to_string(width) + "x" +
                            std::to_string(height) + " RGBX needs " + std::to_string(expected));
    }
    pixels = static_cast<const std::uint8_t*>(info.ptr);
  } else if (py::hasattr(src, "__arrow_c_array__")) {
    pixels = arrow_pixels(src, expected, keep);  // Pillow raises ValueError for rows not in one block
  } else {
    throw py::type_error("pixels must be bytes-like or an RGB image (Arrow export)");
  }
  const std::int64_t out_bytes = out_width * out_height * lookalike::resample::kChannels;
  PyObject* out = PyBytes_FromStringAndSize(nullptr, static_cast<Py_ssize_t>(out_bytes));
  if (out == nullptr) throw py::error_already_set();
  py::bytes result = py::reinterpret_steal<py::bytes>(out);
  auto* dst = reinterpret_cast<std::uint8_t*>(PyBytes_AS_STRING(out));
  bool ran = false;
  {
    py::gil_scoped_release release;
    ran = lookalike::resample::downscale_rgbx(pixels, static_cast<int>(width), static_cast<int>(height), dst,
                                              static_cast<int>(out_width), static_cast<int>(out_height), level,
                                              only_fast);
  }
  if (!ran) return py::none();
  return std::move(result);
}

}  // namespace

void register_resample(py::module_& mod) {
  mod.def("downscale_rgbx", &downscale, py::arg("pixels"), py::arg("width"), py::arg("height"),
          py::arg("out_width"), py::arg("out_height"), py::arg("simd") = py::none(), py::arg("only_fast") = false,
          R"(RGBX pixels (4 bytes each, width x height; bytes-like, or a Pillow RGB image read in place through
its Arrow export, which Pillow refuses with ValueError for an image whose rows are not in one block) resampled to out_width x out_height RGBX with Pillow's
antialiased bicubic filter in 16-bit fixed point (within 1-2 levels of Image.resize(size, Image.BICUBIC)).
simd None: the best path this CPU runs (AVX-512 VBMI where it can, else scalar: the same bytes); 'scalar'
forces the reference code. only_fast: None instead of running the scalar code (no AVX-512 VBMI here, or
a scale past what one window holds), for a caller with a faster fallback.)");
  mod.def(
      "resample_kernel",
      [](std::int64_t width, std::int64_t out_width, const std::optional<std::string>& simd) {
        check_side(width, "width");
        check_side(out_width, "out_width");
        return std::string(lookalike::resample::kernel_name(static_cast<int>(width), static_cast<int>(out_width),
                                                            level_of(simd)));
      },
      py::arg("width"), py::arg("out_width"), py::arg("simd") = py::none(),
      "The code downscale_rgbx runs for this width change: 'avx512vbmi' or 'scalar'.");
}
