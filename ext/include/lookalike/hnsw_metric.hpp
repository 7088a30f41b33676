// Inner-product distances (1 - <a, b>) of the HNSW graph's vectors, one pair at a time.
//
// The graph (usearch's index_dense, vendored under ext/third_party/usearch, built without
// NumKong) calls these through a function pointer. Each storage type has a scalar version and
// x86 versions compiled with `target` attributes, picked at run time like the scan kernels
// (simd.hpp: no -march on the command line; LOOKALIKE_SIMD caps the level):
//
//   f32  AVX-512F fma / AVX2 fma             f16  AVX-512F / AVX2 vcvtph2ps + fma
//   bf16 AVX-512 BF16 vdpbf16ps, else a 16-bit shift + fma
//   i8   AVX-512 VNNI vpdpbusd (|a| x sign-moved b), else AVX2 vpmaddwd
//
// The values are the ones usearch's NumKong kernels give for the `ip` metric (1 - dot; i8:
// 1 - the integer dot of the stored int8 codes), so graphs built by the Python package and by
// this code order neighbours the same way and files are interchangeable.
#pragma once

#include <cstddef>
#include <cstdint>

#include "lookalike/simd.hpp"
#include "lookalike/types.hpp"

#if LOOKALIKE_X86_DISPATCH
#include <immintrin.h>
#endif

namespace lookalike::hnsw_metric {

using uptr = std::size_t;
/// usearch's `metric_punned_signature_t::array_array_size_k`: (a, b, dimensions) -> distance.
using DistanceFn = float (*)(uptr, uptr, uptr);

enum class Kind : int { f32 = 0, f16 = 1, bf16 = 2, i8 = 3 };

namespace scalar {
template <class T>
inline float widen(T x) noexcept {
  return to_float(x);
}
template <>
inline float widen<float>(float x) noexcept {
  return x;
}

/// <x, y> in float32, four lanes.
template <class A, class B>
float dot(const A* x, const B* y, std::size_t d) noexcept {
  float s[4] = {0, 0, 0, 0};
  std::size_t i = 0;
  for (; i + 4 <= d; i += 4) {
    for (int l = 0; l < 4; ++l) s[l] += widen(x[i + l]) * widen(y[i + l]);
  }
  for (; i < d; ++i) s[0] += widen(x[i]) * widen(y[i]);
  return (s[0] + s[1]) + (s[2] + s[3]);
}

template <class T>
float ip(uptr a, uptr b, uptr d) noexcept {
  return 1.0f - dot(reinterpret_cast<const T*>(a), reinterpret_cast<const T*>(b), d);
}

inline float ip_i8(uptr a, uptr b, uptr d) noexcept {
  const auto* x = reinterpret_cast<const std::int8_t*>(a);
  const auto* y = reinterpret_cast<const std::int8_t*>(b);
  std::int32_t s = 0;
  for (std::size_t i = 0; i < d; ++i) s += static_cast<std::int32_t>(x[i]) * static_cast<std::int32_t>(y[i]);
  return 1.0f - static_cast<float>(s);
}
}  // namespace scalar

#if LOOKALIKE_X86_DISPATCH
namespace x86 {

#define LOOKALIKE_HM_AVX2 __attribute__((target("avx2,fma,f16c")))
#define LOOKALIKE_HM_AVX512 __attribute__((target("avx512f,avx512bw,avx512vl,avx2,fma,f16c")))
#define LOOKALIKE_HM_BF16 __attribute__((target("avx512bf16,avx512f,avx512bw,avx512vl,avx2,fma,f16c")))
#define LOOKALIKE_HM_VNNI __attribute__((target("avx512vnni,avx512f,avx512bw,avx512vl,avx2,fma,f16c")))

LOOKALIKE_HM_AVX2 inline float hsum256(__m256 v) noexcept {
  __m128 s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
  s = _mm_add_ps(s, _mm_movehl_ps(s, s));
  s = _mm_add_ss(s, _mm_movehdup_ps(s));
  return _mm_cvtss_f32(s);
}

LOOKALIKE_HM_AVX2 inline __m256 load8(const float* p) noexcept { return _mm256_loadu_ps(p); }
LOOKALIKE_HM_AVX2 inline __m256 load8(const f16* p) noexcept {
  return _mm256_cvtph_ps(_mm_loadu_si128(reinterpret_cast<const __m128i*>(p)));
}
LOOKALIKE_HM_AVX2 inline __m256 load8(const bf16* p) noexcept {
  const __m256i w = _mm256_cvtepu16_epi32(_mm_loadu_si128(reinterpret_cast<const __m128i*>(p)));
  return _mm256_castsi256_ps(_mm256_slli_epi32(w, 16));
}

template <class A, class B>
LOOKALIKE_HM_AVX2 float dot_avx2(const A* x, const B* y, std::size_t d) noexcept {
  __m256 s0 = _mm256_setzero_ps(), s1 = _mm256_setzero_ps();
  std::size_t i = 0;
  for (; i + 16 <= d; i += 16) {
    s0 = _mm256_fmadd_ps(load8(x + i), load8(y + i), s0);
    s1 = _mm256_fmadd_ps(load8(x + i + 8), load8(y + i + 8), s1);
  }
  for (; i + 8 <= d; i += 8) s0 = _mm256_fmadd_ps(load8(x + i), load8(y + i), s0);
  float s = hsum256(_mm256_add_ps(s0, s1));
  for (; i < d; ++i) s += scalar::widen(x[i]) * scalar::widen(y[i]);
  return s;
}

template <class T>
LOOKALIKE_HM_AVX2 float ip_avx2(uptr a, uptr b, uptr d) noexcept {
  return 1.0f - dot_avx2(reinterpret_cast<const T*>(a), reinterpret_cast<const T*>(b), d);
}

LOOKALIKE_HM_AVX2 inline float ip_i8_avx2(uptr a, uptr b, uptr d) noexcept {
  const auto* x = reinterpret_cast<const std::int8_t*>(a);
  const auto* y = reinterpret_cast<const std::int8_t*>(b);
  __m256i s = _mm256_setzero_si256();
  std::size_t i = 0;
  for (; i + 16 <= d; i += 16) {
    const __m256i xa = _mm256_cvtepi8_epi16(_mm_loadu_si128(reinterpret_cast<const __m128i*>(x + i)));
    const __m256i yb = _mm256_cvtepi8_epi16(_mm_loadu_si128(reinterpret_cast<const __m128i*>(y + i)));
    s = _mm256_add_epi32(s, _mm256_madd_epi16(xa, yb));
  }
  __m128i h = _mm_add_epi32(_mm256_castsi256_si128(s), _mm256_extracti128_si256(s, 1));
  h = _mm_add_epi32(h, _mm_shuffle_epi32(h, 0x4e));
  h = _mm_add_epi32(h, _mm_shuffle_epi32(h, 0xb1));
  std::int32_t t = _mm_cvtsi128_si32(h);
  for (; i < d; ++i) t += static_cast<std::int32_t>(x[i]) * static_cast<std::int32_t>(y[i]);
  return 1.0f - static_cast<float>(t);
}

// Full-mask maskz forms throughout: the plain ones trip GCC 12's false -Wmaybe-uninitialized
// (bug 105593), as in detail/kernels.hpp.
constexpr __mmask16 kAll16 = 0xFFFF;

LOOKALIKE_HM_AVX512 inline __m512 load16(const float* p, __mmask16 m) noexcept { return _mm512_maskz_loadu_ps(m, p); }
LOOKALIKE_HM_AVX512 inline __m512 load16(const f16* p, __mmask16 m) noexcept {
  return _mm512_maskz_cvtph_ps(kAll16, _mm256_maskz_loadu_epi16(m, p));
}
LOOKALIKE_HM_AVX512 inline __m512 load16(const bf16* p, __mmask16 m) noexcept {
  const __m512i w = _mm512_maskz_cvtepu16_epi32(kAll16, _mm256_maskz_loadu_epi16(m, p));
  return _mm512_castsi512_ps(_mm512_maskz_slli_epi32(kAll16, w, 16));
}

LOOKALIKE_HM_AVX512 inline float hsum512(__m512 v) noexcept {
  const __m256 lo = _mm256_castpd_ps(_mm512_maskz_extractf64x4_pd(0xFF, _mm512_castps_pd(v), 0));
  const __m256 hi = _mm256_castpd_ps(_mm512_maskz_extractf64x4_pd(0xFF, _mm512_castps_pd(v), 1));
  return hsum256(_mm256_add_ps(lo, hi));
}

LOOKALIKE_HM_AVX512 inline std::int32_t hsum512i(__m512i v) noexcept {
  const __m256i s = _mm256_add_epi32(_mm512_maskz_extracti64x4_epi64(0xFF, v, 0), _mm512_maskz_extracti64x4_epi64(0xFF, v, 1));
  __m128i h = _mm_add_epi32(_mm256_castsi256_si128(s), _mm256_extracti128_si256(s, 1));
  h = _mm_add_epi32(h, _mm_shuffle_epi32(h, 0x4e));
  h = _mm_add_epi32(h, _mm_shuffle_epi32(h, 0xb1));
  return _mm_cvtsi128_si32(h);
}

template <class A, class B>
LOOKALIKE_HM_AVX512 float dot_avx512(const A* x, const B* y, std::size_t d) noexcept {
  const __mmask16 all = 0xffff;
  __m512 s0 = _mm512_setzero_ps(), s1 = _mm512_setzero_ps();
  std::size_t i = 0;
  for (; i + 32 <= d; i += 32) {
    s0 = _mm512_fmadd_ps(load16(x + i, all), load16(y + i, all), s0);
    s1 = _mm512_fmadd_ps(load16(x + i + 16, all), load16(y + i + 16, all), s1);
  }
  for (; i < d; i += 16) {
    const __mmask16 m = d - i >= 16 ? all : static_cast<__mmask16>((1u << (d - i)) - 1u);
    s0 = _mm512_fmadd_ps(load16(x + i, m), load16(y + i, m), s0);
  }
  return hsum512(_mm512_add_ps(s0, s1));
}

template <class T>
LOOKALIKE_HM_AVX512 float ip_avx512(uptr a, uptr b, uptr d) noexcept {
  return 1.0f - dot_avx512(reinterpret_cast<const T*>(a), reinterpret_cast<const T*>(b), d);
}

LOOKALIKE_HM_BF16 inline float ip_bf16_dp(uptr a, uptr b, uptr d) noexcept {
  const auto* x = reinterpret_cast<const std::uint16_t*>(a);
  const auto* y = reinterpret_cast<const std::uint16_t*>(b);
  __m512 s0 = _mm512_setzero_ps(), s1 = _mm512_setzero_ps();
  std::size_t i = 0;
  for (; i + 64 <= d; i += 64) {
    s0 = _mm512_dpbf16_ps(s0, (__m512bh)_mm512_loadu_si512(x + i), (__m512bh)_mm512_loadu_si512(y + i));
    s1 = _mm512_dpbf16_ps(s1, (__m512bh)_mm512_loadu_si512(x + i + 32), (__m512bh)_mm512_loadu_si512(y + i + 32));
  }
  for (; i < d; i += 32) {
    const __mmask32 m = d - i >= 32 ? ~__mmask32(0) : static_cast<__mmask32>((1ull << (d - i)) - 1u);
    s0 = _mm512_dpbf16_ps(s0, (__m512bh)_mm512_maskz_loadu_epi16(m, x + i), (__m512bh)_mm512_maskz_loadu_epi16(m, y + i));
  }
  return 1.0f - hsum512(_mm512_add_ps(s0, s1));
}

// a . b = |a| . (b with a's signs moved onto it): vpdpbusd multiplies unsigned by signed bytes.
// Codes are in [-127, 127] (usearch's cast clamps), so negating b never overflows.
LOOKALIKE_HM_VNNI inline float ip_i8_vnni(uptr a, uptr b, uptr d) noexcept {
  const auto* x = reinterpret_cast<const std::int8_t*>(a);
  const auto* y = reinterpret_cast<const std::int8_t*>(b);
  const __m512i zero = _mm512_setzero_si512();
  __m512i s0 = zero, s1 = zero;
  std::size_t i = 0;
  for (; i < d; i += 64) {
    const __mmask64 m = d - i >= 64 ? ~__mmask64(0) : ((__mmask64(1) << (d - i)) - 1u);
    const __m512i xa = _mm512_maskz_loadu_epi8(m, x + i);
    const __m512i yb = _mm512_maskz_loadu_epi8(m, y + i);
    const __m512i ys = _mm512_mask_sub_epi8(yb, _mm512_movepi8_mask(xa), zero, yb);
    if ((i / 64) % 2 == 0) {
      s0 = _mm512_dpbusd_epi32(s0, _mm512_maskz_abs_epi8(~__mmask64(0), xa), ys);
    } else {
      s1 = _mm512_dpbusd_epi32(s1, _mm512_maskz_abs_epi8(~__mmask64(0), xa), ys);
    }
  }
  return 1.0f - static_cast<float>(hsum512i(_mm512_add_epi32(s0, s1)));
}

}  // namespace x86
#endif

/// CPU features beyond the SIMD level that the graph kernels use.
struct Features {
  bool avx512bf16 = false;
  bool avx512vnni = false;
};

inline Features cpu_features() noexcept {
  Features f;
#if LOOKALIKE_X86_DISPATCH
  __builtin_cpu_init();
  f.avx512bf16 = __builtin_cpu_supports("avx512bf16");
  f.avx512vnni = __builtin_cpu_supports("avx512vnni");
#endif
  return f;
}

/// The distance function for `kind` at `level` (the best the CPU runs by default).
inline DistanceFn pick(Kind kind, SimdLevel level, Features features) noexcept {
#if LOOKALIKE_X86_DISPATCH
  if (level == SimdLevel::avx512) {
    switch (kind) {
      case Kind::f32: return &x86::ip_avx512<float>;
      case Kind::f16: return &x86::ip_avx512<f16>;
      case Kind::bf16: return features.avx512bf16 ? &x86::ip_bf16_dp : &x86::ip_avx512<bf16>;
      case Kind::i8: return features.avx512vnni ? &x86::ip_i8_vnni : &x86::ip_i8_avx2;
    }
  }
  if (level == SimdLevel::avx2) {
    switch (kind) {
      case Kind::f32: return &x86::ip_avx2<float>;
      case Kind::f16: return &x86::ip_avx2<f16>;
      case Kind::bf16: return &x86::ip_avx2<bf16>;
      case Kind::i8: return &x86::ip_i8_avx2;
    }
  }
#else
  (void)level;
  (void)features;
#endif
  switch (kind) {
    case Kind::f32: return &scalar::ip<float>;
    case Kind::f16: return &scalar::ip<f16>;
    case Kind::bf16: return &scalar::ip<bf16>;
    case Kind::i8: return &scalar::ip_i8;
  }
  return &scalar::ip<float>;
}

inline DistanceFn pick(Kind kind) { return pick(kind, default_simd_level(), cpu_features()); }

/// Name of the kernel `pick` chose (for logs and tests).
inline const char* kernel_name(Kind kind, SimdLevel level, Features features) noexcept {
  if (level == SimdLevel::scalar) return "scalar";
  if (level == SimdLevel::avx2) return "avx2";
  if (kind == Kind::bf16 && features.avx512bf16) return "avx512bf16";
  if (kind == Kind::i8) return features.avx512vnni ? "avx512vnni" : "avx2";
  return "avx512";
}

}  // namespace lookalike::hnsw_metric
