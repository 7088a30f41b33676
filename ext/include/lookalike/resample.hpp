// Antialiased bicubic resampling of 8-bit RGBX images (4 bytes a pixel, the layout Pillow keeps RGB
// images in): Pillow's filter and coefficients (`Image.resize(size, Image.BICUBIC)`), in 16-bit
// fixed point as Pillow-SIMD computes them, horizontal pass first; within 1-2 levels of Pillow, and
// the same bytes as torch's antialiased uint8 bicubic (a port of the same arithmetic), which the
// server falls back to where this kernel's AVX-512 path cannot run.
//
// Why: every image a database keeps as a thumbnail is downscaled on registration (a 640x480
// photo to 416x312), and that downscale was the largest part of what keeping thumbnails costs
// (issue: at most 15% slower registration than keeping nothing). Pillow's kernel is scalar
// (2.4 ms a photo here); torch's uint8 kernel needs its own copies of the pixels (1.08 ms with
// them); this one reads Pillow's rows in place (0.39 ms; bench/downscale.py).
//
// - Coefficients: Pillow's (`precompute_coeffs`), normalised to int16 with as many fraction bits
//   as the largest weight allows (at most 15), so that one `vpmaddwd` multiplies two taps and
//   adds them into 32 bits, exactly.
// - Horizontal pass (AVX-512 BW + VBMI): up to 4 neighbouring output pixels (one a 128-bit lane,
//   16 bytes: R, G, B, X) whose taps lie in one 64-byte window (16 input pixels); per pair of taps
//   one zero-masked byte permutation (`vpermb`) puts each lane's two input bytes in its 16-bit
//   slots, and one `vpmaddwd` adds both taps' products. Tables (window starts, indices, weights)
//   are built once per call and reused by every row.
// - Vertical pass: 32 output bytes a step, two input rows interleaved into 16-bit pairs, one
//   `vpmaddwd` per pair of rows.
//
// The scalar code is the reference (the same integer arithmetic): the AVX-512 path equals it byte
// for byte. The AVX-512 path needs AVX-512 F, BW, VL and VBMI and runs when each output pixel's
// taps fit one window (at most ~4x smaller across); otherwise the scalar code runs.
// `LOOKALIKE_SIMD` below avx512 forces the scalar code.
#pragma once

#include <algorithm>
#include <cmath>
#include <cstddef>
#include <cstdint>
#include <cstring>
#include <stdexcept>
#include <string>
#include <vector>

#include "lookalike/simd.hpp"

#if LOOKALIKE_X86_DISPATCH
#include <immintrin.h>
#endif

namespace lookalike::resample {

inline constexpr int kChannels = 4;  // R, G, B, X: the X byte is carried along, never read back

/// Pillow's bicubic filter (a = -0.5), support 2.
inline double bicubic(double x) noexcept {
  constexpr double a = -0.5;
  if (x < 0.0) x = -x;
  if (x < 1.0) return ((a + 2.0) * x - (a + 3.0)) * x * x + 1;
  if (x < 2.0) return (((x - 5) * x + 8) * x - 4) * a;
  return 0.0;
}

/// One pass's fixed-point coefficients: output i reads `count[i]` inputs from `first[i]`, with
/// weights `weight[i * ksize + t]` scaled by 2^precision (zero past `count[i]`; `ksize` even).
struct Coefficients {
  int ksize = 0;
  int precision = 0;
  std::vector<int> first, count;
  std::vector<std::int16_t> weight;
};

inline Coefficients coefficients(int in_size, int out_size) {
  Coefficients c;
  const double scale = static_cast<double>(in_size) / out_size;
  const double filterscale = std::max(scale, 1.0);
  const double support = 2.0 * filterscale;
  c.ksize = (static_cast<int>(std::ceil(support)) * 2 + 1 + 1) & ~1;  // even: taps go in pairs
  c.first.resize(out_size);
  c.count.resize(out_size);
  std::vector<double> k(static_cast<std::size_t>(out_size) * c.ksize, 0.0);
  double largest = 0.0;
  for (int xx = 0; xx < out_size; ++xx) {
    const double center = (xx + 0.5) * scale;
    const double ss = 1.0 / filterscale;
    const int xmin = std::max(static_cast<int>(center - support + 0.5), 0);
    const int xmax = std::min(static_cast<int>(center + support + 0.5), in_size) - xmin;
    double* kx = &k[static_cast<std::size_t>(xx) * c.ksize];
    double ww = 0.0;
    for (int x = 0; x < xmax; ++x) ww += kx[x] = bicubic((x + xmin - center + 0.5) * ss);
    for (int x = 0; x < xmax; ++x) {
      if (ww != 0.0) kx[x] /= ww;
      largest = std::max(largest, kx[x]);
    }
    c.first[xx] = xmin;
    c.count[xx] = xmax;
  }
  // As many fraction bits as keep the largest weight below 2^15 (Pillow-SIMD's rule).
  while (c.precision < 22 && static_cast<int>(0.5 + largest * (1 << (c.precision + 1))) < (1 << 15)) ++c.precision;
  c.weight.resize(k.size());
  for (std::size_t i = 0; i < k.size(); ++i) {
    const double w = k[i] * (1 << c.precision);
    c.weight[i] = static_cast<std::int16_t>(w < 0 ? -0.5 + w : 0.5 + w);
  }
  return c;
}

inline std::uint8_t clip8(std::int32_t v, int precision) noexcept {
  v >>= precision;
  return static_cast<std::uint8_t>(v < 0 ? 0 : (v > 255 ? 255 : v));
}

namespace detail {

inline void horizontal_scalar(const std::uint8_t* in, int in_w, int rows, std::uint8_t* out, int out_w,
                              const Coefficients& c) {
  for (int y = 0; y < rows; ++y) {
    const std::uint8_t* row = in + static_cast<std::size_t>(y) * in_w * kChannels;
    std::uint8_t* dst = out + static_cast<std::size_t>(y) * out_w * kChannels;
    for (int xx = 0; xx < out_w; ++xx) {
      const std::int16_t* k = &c.weight[static_cast<std::size_t>(xx) * c.ksize];
      const std::uint8_t* p = row + static_cast<std::size_t>(c.first[xx]) * kChannels;
      for (int ch = 0; ch < kChannels; ++ch) {
        std::int32_t s = 1 << (c.precision - 1);
        for (int t = 0; t < c.count[xx]; ++t) s += p[t * kChannels + ch] * k[t];
        dst[xx * kChannels + ch] = clip8(s, c.precision);
      }
    }
  }
}

inline void vertical_scalar(const std::uint8_t* in, int width_bytes, std::uint8_t* out, int out_h,
                            const Coefficients& c) {
  std::vector<std::int32_t> acc(static_cast<std::size_t>(width_bytes));
  for (int yy = 0; yy < out_h; ++yy) {
    std::fill(acc.begin(), acc.end(), 1 << (c.precision - 1));
    const std::int16_t* k = &c.weight[static_cast<std::size_t>(yy) * c.ksize];
    for (int t = 0; t < c.count[yy]; ++t) {
      const std::uint8_t* src = in + static_cast<std::size_t>(c.first[yy] + t) * width_bytes;
      for (int x = 0; x < width_bytes; ++x) acc[x] += src[x] * k[t];
    }
    std::uint8_t* dst = out + static_cast<std::size_t>(yy) * width_bytes;
    for (int x = 0; x < width_bytes; ++x) dst[x] = clip8(acc[x], c.precision);
  }
}

/// The horizontal pass's groups for the AVX-512 path: runs of up to 4 output pixels whose taps lie
/// in one 64-byte window of the row (16 input pixels from pixel `start`), with per tap pair the
/// vpermb indices (each 16-bit slot's low byte; its high byte is zeroed) and the int16 weights.
struct Groups {
  int pairs = 0;                       // tap pairs per group
  std::vector<int> start, pixels;      // window start (input pixel), output pixels in the group
  std::vector<std::uint8_t> index;     // [group][pair][64]
  std::vector<std::int16_t> weight;    // [group][pair][32]
};

/// Groups for `c`, or empty when some output pixel's taps do not fit one window (a large scale).
inline Groups make_groups(const Coefficients& c, int in_w, int out_w) {
  constexpr int kWindow = 16, kMaxPixels = 4;  // pixels a window holds; output pixels a group makes
  Groups g;
  int taps = 0;
  for (int xx = 0; xx < out_w; ++xx) taps = std::max(taps, c.count[xx]);
  g.pairs = (taps + 1) / 2;
  if (2 * g.pairs > kWindow) return Groups{};
  for (int xx = 0; xx < out_w;) {
    int n = 1;
    while (n < kMaxPixels && xx + n < out_w && c.first[xx + n] + 2 * g.pairs - c.first[xx] <= kWindow) ++n;
    // The window ends inside the row where it can: no read past the row (a shorter row is read
    // with a masked load).
    const int start = std::max(0, std::min(c.first[xx], in_w - kWindow));
    g.start.push_back(start);
    g.pixels.push_back(n);
    for (int j = 0; j < g.pairs; ++j) {
      std::uint8_t idx[64] = {};
      std::int16_t w[32] = {};
      for (int p = 0; p < n; ++p) {
        const int o = xx + p;
        for (int s = 0; s < 2; ++s) {
          const int t = 2 * j + s;
          if (t >= c.count[o]) continue;  // weight 0: index 0 will do
          const int pixel = c.first[o] + t - start;
          if (pixel < 0 || pixel >= kWindow) return Groups{};
          for (int ch = 0; ch < kChannels; ++ch) {
            const int slot = (p * kChannels + ch) * 2 + s;  // 16-bit slot: dword (pixel, channel), tap s
            idx[2 * slot] = static_cast<std::uint8_t>(pixel * kChannels + ch);
            w[slot] = c.weight[static_cast<std::size_t>(o) * c.ksize + t];
          }
        }
      }
      g.index.insert(g.index.end(), idx, idx + 64);
      g.weight.insert(g.weight.end(), w, w + 32);
    }
    xx += n;
  }
  return g;
}

#if LOOKALIKE_X86_DISPATCH
#define LOOKALIKE_RESAMPLE_TARGET __attribute__((target("avx512f,avx512bw,avx512vl,avx512vbmi")))

// Full-mask maskz forms: the plain ones trip GCC 12's false -Wmaybe-uninitialized (bug 105593).
inline constexpr __mmask16 kAll16 = 0xFFFF;
inline constexpr __mmask32 kAll32 = 0xFFFFFFFFu;
inline constexpr __mmask64 kLowBytes = 0x5555555555555555ull;  // the low byte of each 16-bit slot

LOOKALIKE_RESAMPLE_TARGET inline __m128i clip_pack(__m512i acc, int precision) {
  acc = _mm512_maskz_sra_epi32(kAll16, acc, _mm_cvtsi32_si128(precision));
  acc = _mm512_maskz_max_epi32(kAll16, acc, _mm512_setzero_si512());
  return _mm512_maskz_cvtusepi32_epi8(kAll16, acc);  // unsigned saturation: > 255 -> 255
}

// `R` rows at a time per group: the group's tables (128 bytes a tap pair, ~50 KB a 416-pixel row,
// more than L1 holds) are read once for R rows instead of once a row.
template <int R>
LOOKALIKE_RESAMPLE_TARGET inline void horizontal_rows(const std::uint8_t* row, int row_bytes, std::uint8_t* dst,
                                                      int out_bytes, const Groups& g, int precision) {
  const __m512i round = _mm512_set1_epi32(1 << (precision - 1));
  const std::uint8_t* idx = g.index.data();
  const std::int16_t* w = g.weight.data();
  for (std::size_t gi = 0; gi < g.start.size(); ++gi) {
    const int start = g.start[gi] * kChannels;
    const int avail = std::min(64, row_bytes - start);
    const __mmask64 load_mask = avail >= 64 ? ~__mmask64{0} : ((__mmask64{1} << avail) - 1);
    __m512i window[R], acc[R];
    for (int r = 0; r < R; ++r) {
      window[r] = _mm512_maskz_loadu_epi8(load_mask, row + static_cast<std::size_t>(r) * row_bytes + start);
      acc[r] = round;
    }
    for (int j = 0; j < g.pairs; ++j, idx += 64, w += 32) {
      const __m512i index = _mm512_loadu_si512(idx), weight = _mm512_loadu_si512(w);
      for (int r = 0; r < R; ++r) {
        const __m512i pairs = _mm512_maskz_permutexvar_epi8(kLowBytes, index, window[r]);
        acc[r] = _mm512_add_epi32(acc[r], _mm512_madd_epi16(pairs, weight));
      }
    }
    const int n = g.pixels[gi] * kChannels;
    const __mmask16 store_mask = static_cast<__mmask16>((1u << n) - 1);
    for (int r = 0; r < R; ++r) {
      _mm_mask_storeu_epi8(dst + static_cast<std::size_t>(r) * out_bytes, store_mask, clip_pack(acc[r], precision));
    }
    dst += n;
  }
}

LOOKALIKE_RESAMPLE_TARGET inline void horizontal_avx512(const std::uint8_t* in, int in_w, int rows,
                                                        std::uint8_t* out, int out_w, const Groups& g,
                                                        int precision) {
  constexpr int kRows = 8;
  const int row_bytes = in_w * kChannels, out_bytes = out_w * kChannels;
  int y = 0;
  for (; y + kRows <= rows; y += kRows) {
    horizontal_rows<kRows>(in + static_cast<std::size_t>(y) * row_bytes, row_bytes,
                           out + static_cast<std::size_t>(y) * out_bytes, out_bytes, g, precision);
  }
  for (; y < rows; ++y) {
    horizontal_rows<1>(in + static_cast<std::size_t>(y) * row_bytes, row_bytes,
                       out + static_cast<std::size_t>(y) * out_bytes, out_bytes, g, precision);
  }
}

// 32 output bytes of one output row from `count` input rows `stride` apart, from `top`.
LOOKALIKE_RESAMPLE_TARGET inline __m256i vertical_step(const std::uint8_t* top, std::size_t stride, int count,
                                                       const std::int16_t* k, int precision, __mmask32 m) {
  __m512i lo = _mm512_set1_epi32(1 << (precision - 1)), hi = lo;
  for (int t = 0; t < count; t += 2) {
    const __m512i a = _mm512_maskz_cvtepu8_epi16(kAll32, _mm256_maskz_loadu_epi8(m, top + t * stride));
    const __m512i b = t + 1 < count
                          ? _mm512_maskz_cvtepu8_epi16(kAll32, _mm256_maskz_loadu_epi8(m, top + (t + 1) * stride))
                          : _mm512_setzero_si512();
    // (k[t], k[t+1]) in every dword; k[t+1] is 0 past count.
    const __m512i kk = _mm512_set1_epi32(static_cast<std::int32_t>(static_cast<std::uint16_t>(k[t])) |
                                         (static_cast<std::int32_t>(static_cast<std::uint16_t>(k[t + 1])) << 16));
    lo = _mm512_add_epi32(lo, _mm512_madd_epi16(_mm512_unpacklo_epi16(a, b), kk));
    hi = _mm512_add_epi32(hi, _mm512_madd_epi16(_mm512_unpackhi_epi16(a, b), kk));
  }
  const __m128i shift = _mm_cvtsi32_si128(precision);
  lo = _mm512_maskz_sra_epi32(kAll16, lo, shift);
  hi = _mm512_maskz_sra_epi32(kAll16, hi, shift);
  // packs undoes unpacklo/hi within each 128-bit lane: the 16-bit results come back in byte order.
  __m512i words = _mm512_packs_epi32(lo, hi);
  words = _mm512_maskz_max_epi16(kAll32, words, _mm512_setzero_si512());
  return _mm512_maskz_cvtusepi16_epi8(kAll32, words);
}

LOOKALIKE_RESAMPLE_TARGET inline void vertical_avx512(const std::uint8_t* in, int width_bytes, std::uint8_t* out,
                                                      int out_h, const Coefficients& c) {
  const std::size_t stride = static_cast<std::size_t>(width_bytes);
  for (int yy = 0; yy < out_h; ++yy) {
    const std::int16_t* k = &c.weight[static_cast<std::size_t>(yy) * c.ksize];
    const std::uint8_t* top = in + static_cast<std::size_t>(c.first[yy]) * stride;
    std::uint8_t* dst = out + static_cast<std::size_t>(yy) * stride;
    for (int x = 0; x < width_bytes; x += 32) {
      const int n = std::min(32, width_bytes - x);
      const __mmask32 m = n == 32 ? kAll32 : static_cast<__mmask32>((1u << n) - 1);
      _mm256_mask_storeu_epi8(dst + x, m, vertical_step(top + x, stride, c.count[yy], k, c.precision, m));
    }
  }
}
#undef LOOKALIKE_RESAMPLE_TARGET
#endif

}  // namespace detail

/// Whether this CPU runs the AVX-512 path (F, BW, VL and VBMI, and the level not capped below avx512).
inline bool avx512_available() {
#if LOOKALIKE_X86_DISPATCH
  static const bool vbmi = [] {
    __builtin_cpu_init();
    return __builtin_cpu_supports("avx512bw") && __builtin_cpu_supports("avx512vl") &&
           __builtin_cpu_supports("avx512vbmi");
  }();
  return vbmi && default_simd_level() == SimdLevel::avx512;
#else
  return false;
#endif
}

/// Which code `downscale_rgbx` runs across for this width change at `level`: "avx512vbmi" or "scalar".
inline const char* kernel_name(int in_w, int out_w, SimdLevel level) {
  if (level != SimdLevel::avx512 || !avx512_available()) return "scalar";
  return detail::make_groups(coefficients(in_w, out_w), in_w, out_w).start.empty() ? "scalar" : "avx512vbmi";
}

/// `src` (in_h rows of in_w RGBX pixels) resampled to out_w x out_h RGBX pixels into `dst`.
/// `level` avx512 uses the AVX-512 path where it can; the result is the same at every level.
/// `only_fast`: where the AVX-512 path cannot run (the CPU, the level, a scale past one window),
/// do nothing and return false (the caller has a faster way than the scalar code).
inline bool downscale_rgbx(const std::uint8_t* src, int in_w, int in_h, std::uint8_t* dst, int out_w, int out_h,
                           SimdLevel level, bool only_fast = false) {
  if (in_w < 1 || in_h < 1 || out_w < 1 || out_h < 1) {
    throw std::invalid_argument("resample: sizes must be positive, got " + std::to_string(in_w) + "x" +
                                std::to_string(in_h) + " -> " + std::to_string(out_w) + "x" + std::to_string(out_h));
  }
  const bool wide = level == SimdLevel::avx512 && avx512_available();
  const bool across = out_w != in_w, down = out_h != in_h;
  if (only_fast && !wide) return false;
  Coefficients ch;
  detail::Groups groups;
  if (across) {
    ch = coefficients(in_w, out_w);
    if (wide) groups = detail::make_groups(ch, in_w, out_w);
    if (only_fast && groups.start.empty()) return false;
  }
  std::vector<std::uint8_t> mid;
  const std::uint8_t* rows = src;
  if (across) {
    std::uint8_t* target = dst;
    if (down) {
      mid.resize(static_cast<std::size_t>(in_h) * out_w * kChannels);
      target = mid.data();
    }
#if LOOKALIKE_X86_DISPATCH
    if (!groups.start.empty()) {
      detail::horizontal_avx512(src, in_w, in_h, target, out_w, groups, ch.precision);
    } else {
      detail::horizontal_scalar(src, in_w, in_h, target, out_w, ch);
    }
#else
    detail::horizontal_scalar(src, in_w, in_h, target, out_w, ch);
#endif
    rows = target;
  }
  if (down) {
    const Coefficients cv = coefficients(in_h, out_h);
    const int width_bytes = out_w * kChannels;
#if LOOKALIKE_X86_DISPATCH
    if (wide) {
      detail::vertical_avx512(rows, width_bytes, dst, out_h, cv);
      return true;
    }
#endif
    detail::vertical_scalar(rows, width_bytes, dst, out_h, cv);
  } else if (!across) {
    std::memcpy(dst, src, static_cast<std::size_t>(in_w) * in_h * kChannels);
  }
  return true;
}

}  // namespace lookalike::resample
