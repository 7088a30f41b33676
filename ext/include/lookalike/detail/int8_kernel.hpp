// int8 rows scored in integers (AVX2): the float query is rounded to int16 with a power-of-two
// scale, then vpmovsxbw + vpmaddwd + vpaddd do 16 multiply-adds per three instructions, about
// twice the rate of widening every int8 to float (vpmovsxbd + vcvtdq2ps + vfmadd per 8).
//
// Exactness: the int32 sums cannot overflow (the query's int16 range is cut so that
// d * 127 * max|q16| < 2^31), so a (query, row) score is one exact integer times the query's
// scale, whatever the tile or thread it falls in: ties stay exact and results are independent
// of the split, as for the float kernels. The only rounding is the query's, to 15 bits or
// fewer (d > 528 leaves fewer; 13 bits at d = 2048): an error far below the int8 rows' own.
// The driver (topk.hpp) rounds every query once per call; when one holds a non-finite value
// the whole call uses the float kernel instead.
#pragma once

#include <cmath>
#include <cstddef>
#include <cstdint>
#include <cstring>
#include <vector>

#include "lookalike/simd.hpp"

#if LOOKALIKE_X86_DISPATCH
#include <immintrin.h>

namespace lookalike::detail::avx2_i8 {

#define LOOKALIKE_I8_TARGET __attribute__((target("avx2,fma")))

constexpr std::size_t kStep = 16;  // int8 elements per vpmaddwd
constexpr int kQueryTile = 3;
constexpr int kRowTile = 4;

// Power-of-two scale s (returned) and q16 = round(q / s), |q16| <= qmax; false if q has a
// non-finite value. q16 is padded with zeros to a multiple of kStep.
inline bool quantize_query(const float* q, std::size_t d, std::size_t dpad, std::int16_t* q16, float* scale) {
  double qmax = 2147483647.0 / (127.0 * static_cast<double>(d == 0 ? 1 : d));
  // 32639 = 127 * 256 + 127: every q16 splits into two int8 halves, 256 * hi + lo, for the AMX
  // kernel (amx_kernel.hpp), so that all integer kernels share one rounding of the query.
  if (qmax > 32639.0) qmax = 32639.0;
  float peak = 0.0f;
  for (std::size_t c = 0; c < d; ++c) {
    if (!std::isfinite(q[c])) return false;
    peak = std::fmax(peak, std::fabs(q[c]));
  }
  int e = 0;
  if (peak > 0.0f) {
    e = static_cast<int>(std::ceil(std::log2(static_cast<double>(peak) / qmax)));
    while (std::ldexp(static_cast<double>(peak), -e) > qmax) ++e;
  }
  const float inv = std::ldexp(1.0f, -e);  // exact: a power of two
  for (std::size_t c = 0; c < d; ++c) q16[c] = static_cast<std::int16_t>(std::lrint(q[c] * inv));
  for (std::size_t c = d; c < dpad; ++c) q16[c] = 0;
  *scale = std::ldexp(1.0f, e);
  return true;
}

LOOKALIKE_I8_TARGET inline __m256i load_row(const std::int8_t* p) noexcept {
  return _mm256_cvtepi8_epi16(_mm_loadu_si128(reinterpret_cast<const __m128i*>(p)));
}

LOOKALIKE_I8_TARGET inline __m256i load_row_tail(const std::int8_t* p, std::size_t n) noexcept {
  alignas(16) std::int8_t tmp[kStep] = {};
  std::memcpy(tmp, p, n);
  return load_row(tmp);
}

LOOKALIKE_I8_TARGET inline std::int32_t hsum(__m256i v) noexcept {
  const __m128i s = _mm_add_epi32(_mm256_castsi256_si128(v), _mm256_extracti128_si256(v, 1));
  const __m128i t = _mm_add_epi32(s, _mm_shuffle_epi32(s, 0x4E));
  return _mm_cvtsi128_si32(_mm_add_epi32(t, _mm_shuffle_epi32(t, 0xB1)));
}

// out[i * ld + r * gap] = sum_c q16[i][c] * row_r[c] for i < QT, r < RT (rows `gap` apart).
template <int QT, int RT>
LOOKALIKE_I8_TARGET inline __attribute__((always_inline)) void tile(const std::int16_t* q16, std::size_t dpad,
                                                                   const std::int8_t* db, std::size_t d,
                                                                   const float* scale, float* out,
                                                                   std::size_t ld, std::size_t gap) {
  const std::size_t stride = gap * d;
  __m256i acc[QT][RT];
  _Pragma("GCC unroll 16") for (int i = 0; i < QT; ++i) {
    _Pragma("GCC unroll 16") for (int r = 0; r < RT; ++r) acc[i][r] = _mm256_setzero_si256();
  }
  std::size_t c = 0;
  for (; c + kStep <= d; c += kStep) {
    __m256i y[QT];
    _Pragma("GCC unroll 16") for (int i = 0; i < QT; ++i) y[i] = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(q16 + i * dpad + c));
    _Pragma("GCC unroll 16") for (int r = 0; r < RT; ++r) {
      const __m256i x = load_row(db + r * stride + c);
      _Pragma("GCC unroll 16") for (int i = 0; i < QT; ++i) acc[i][r] = _mm256_add_epi32(acc[i][r], _mm256_madd_epi16(y[i], x));
    }
  }
  if (c < d) {
    __m256i y[QT];
    _Pragma("GCC unroll 16") for (int i = 0; i < QT; ++i) y[i] = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(q16 + i * dpad + c));
    _Pragma("GCC unroll 16") for (int r = 0; r < RT; ++r) {
      const __m256i x = load_row_tail(db + r * stride + c, d - c);
      _Pragma("GCC unroll 16") for (int i = 0; i < QT; ++i) acc[i][r] = _mm256_add_epi32(acc[i][r], _mm256_madd_epi16(y[i], x));
    }
  }
  _Pragma("GCC unroll 16") for (int i = 0; i < QT; ++i) {
    _Pragma("GCC unroll 16") for (int r = 0; r < RT; ++r) out[static_cast<std::size_t>(i) * ld + static_cast<std::size_t>(r) * gap] =
          static_cast<float>(hsum(acc[i][r])) * scale[i];
  }
}

template <int QT>
LOOKALIKE_I8_TARGET void rows(const std::int16_t* q16, std::size_t dpad, const float* scale, const std::int8_t* db,
                              std::size_t n, std::size_t d, float* out, std::size_t ld) {
  const std::size_t s = n / kRowTile;  // strided row tiles, as in score_kernel.inc (prefetch-friendly)
  for (std::size_t t = 0; t < s; ++t) tile<QT, kRowTile>(q16, dpad, db + t * d, d, scale, out + t, ld, s);
  for (std::size_t r = s * kRowTile; r < n; ++r) tile<QT, 1>(q16, dpad, db + r * d, d, scale, out + r, ld, 1);
}

/// out[i * ld + r] = qscale[i] * <q16_i, row r> for i < qn, r < n: queries already rounded
/// by quantize_query (rows of dpad int16), once per call rather than once per block.
inline void score_prepared(const std::int16_t* q16, std::size_t dpad, const float* qscale, std::size_t qn,
                           const std::int8_t* db, std::size_t n, std::size_t d, float* out, std::size_t ld) {
  std::size_t i = 0;
  for (; i + kQueryTile <= qn; i += kQueryTile) rows<3>(q16 + i * dpad, dpad, qscale + i, db, n, d, out + i * ld, ld);
  if (qn - i == 2) rows<2>(q16 + i * dpad, dpad, qscale + i, db, n, d, out + i * ld, ld);
  if (qn - i == 1) rows<1>(q16 + i * dpad, dpad, qscale + i, db, n, d, out + i * ld, ld);
}

#undef LOOKALIKE_I8_TARGET

}  // namespace lookalike::detail::avx2_i8

// The same integer arithmetic with AVX-512 VNNI (vpdpwssd: multiply int16 pairs and accumulate
// in one instruction) over 32 elements per step, for CPUs with AVX-512 BW + VNNI. The integer
// sums are exact, so scores are bit-identical to the AVX2 integer kernel's.
namespace lookalike::detail::avx512_i8 {

#define LOOKALIKE_I8_TARGET __attribute__((target("avx512f,avx512bw,avx512vnni,avx2,fma")))

constexpr std::size_t kStep = 32;
constexpr int kRowTile = 4;

inline bool cpu_supported() noexcept {
  static const bool ok = [] {
    __builtin_cpu_init();
    return __builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512bw") &&
           __builtin_cpu_supports("avx512vnni");
  }();
  return ok;
}

// Full-mask maskz forms: the plain ones trip GCC 12's false -Wmaybe-uninitialized (bug 105593).
LOOKALIKE_I8_TARGET inline __m512i load_row(const std::int8_t* p) noexcept {
  return _mm512_maskz_cvtepi8_epi16(0xFFFFFFFFu, _mm256_loadu_si256(reinterpret_cast<const __m256i*>(p)));
}

LOOKALIKE_I8_TARGET inline __m512i load_row_tail(const std::int8_t* p, std::size_t n) noexcept {
  alignas(32) std::int8_t tmp[kStep] = {};
  std::memcpy(tmp, p, n);
  return load_row(tmp);
}

LOOKALIKE_I8_TARGET inline std::int32_t hsum(__m512i v) noexcept {
  const __m256i lo = _mm512_maskz_extracti64x4_epi64(0xFF, v, 0);
  const __m256i hi = _mm512_maskz_extracti64x4_epi64(0xFF, v, 1);
  return avx2_i8::hsum(_mm256_add_epi32(lo, hi));
}

template <int QT, int RT>
LOOKALIKE_I8_TARGET inline __attribute__((always_inline)) void tile(const std::int16_t* q16, std::size_t dpad,
                                                                   const std::int8_t* db, std::size_t d,
                                                                   const float* scale, float* out,
                                                                   std::size_t ld, std::size_t gap) {
  const std::size_t stride = gap * d;
  __m512i acc[QT][RT];
  _Pragma("GCC unroll 16") for (int i = 0; i < QT; ++i) {
    _Pragma("GCC unroll 16") for (int r = 0; r < RT; ++r) acc[i][r] = _mm512_setzero_si512();
  }
  std::size_t c = 0;
  for (; c + kStep <= d; c += kStep) {
    __m512i y[QT];
    _Pragma("GCC unroll 16") for (int i = 0; i < QT; ++i) y[i] = _mm512_loadu_si512(q16 + i * dpad + c);
    _Pragma("GCC unroll 16") for (int r = 0; r < RT; ++r) {
      const __m512i x = load_row(db + r * stride + c);
      _Pragma("GCC unroll 16") for (int i = 0; i < QT; ++i) acc[i][r] = _mm512_dpwssd_epi32(acc[i][r], y[i], x);
    }
  }
  if (c < d) {
    __m512i y[QT];
    _Pragma("GCC unroll 16") for (int i = 0; i < QT; ++i) y[i] = _mm512_loadu_si512(q16 + i * dpad + c);
    _Pragma("GCC unroll 16") for (int r = 0; r < RT; ++r) {
      const __m512i x = load_row_tail(db + r * stride + c, d - c);
      _Pragma("GCC unroll 16") for (int i = 0; i < QT; ++i) acc[i][r] = _mm512_dpwssd_epi32(acc[i][r], y[i], x);
    }
  }
  _Pragma("GCC unroll 16") for (int i = 0; i < QT; ++i) {
    _Pragma("GCC unroll 16") for (int r = 0; r < RT; ++r) {
      out[static_cast<std::size_t>(i) * ld + static_cast<std::size_t>(r) * gap] =
          static_cast<float>(hsum(acc[i][r])) * scale[i];
    }
  }
}

template <int QT>
LOOKALIKE_I8_TARGET void rows(const std::int16_t* q16, std::size_t dpad, const float* scale, const std::int8_t* db,
                              std::size_t n, std::size_t d, float* out, std::size_t ld) {
  const std::size_t s = n / kRowTile;
  for (std::size_t t = 0; t < s; ++t) tile<QT, kRowTile>(q16, dpad, db + t * d, d, scale, out + t, ld, s);
  for (std::size_t r = s * kRowTile; r < n; ++r) tile<QT, 1>(q16, dpad, db + r * d, d, scale, out + r, ld, 1);
}

/// As avx2_i8::score_prepared; dpad must be a multiple of 32.
inline void score_prepared(const std::int16_t* q16, std::size_t dpad, const float* qscale, std::size_t qn,
                           const std::int8_t* db, std::size_t n, std::size_t d, float* out, std::size_t ld) {
  std::size_t i = 0;
  for (; i + 3 <= qn; i += 3) rows<3>(q16 + i * dpad, dpad, qscale + i, db, n, d, out + i * ld, ld);
  if (qn - i == 2) rows<2>(q16 + i * dpad, dpad, qscale + i, db, n, d, out + i * ld, ld);
  if (qn - i == 1) rows<1>(q16 + i * dpad, dpad, qscale + i, db, n, d, out + i * ld, ld);
}

#undef LOOKALIKE_I8_TARGET

}  // namespace lookalike::detail::avx512_i8
#endif  // LOOKALIKE_X86_DISPATCH
