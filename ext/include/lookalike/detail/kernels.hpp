// Per-SIMD-level vector operations, and the block scorers built from them.
//
// Each level lives in its own namespace (scalar, avx2, avx512) with a `struct Ops` and an
// instantiation of score_kernel.inc compiled with that level's target attribute. Nothing here
// needs -mavx2 or -march=native on the command line: the x86 levels are only *called* after
// cpu_simd_level() said the CPU runs them.
//
// Database element types (float, f16, bf16, int8; see types.hpp) are widened to float lanes by
// `load`/`load_tail` overloads in each Ops (F16C vcvtph2ps, a 16-bit shift for bf16,
// vpmovsxbd + vcvtdq2ps for int8); the multiply-adds are float32 FMAs for every type.
#pragma once

#include <cstddef>
#include <cstdint>
#include <cstring>
#include <type_traits>

#include "lookalike/simd.hpp"
#include "lookalike/types.hpp"

#if LOOKALIKE_X86_DISPATCH
#include <immintrin.h>
#endif

#if defined(__GNUC__) || defined(__clang__)
#define LOOKALIKE_FORCE_INLINE inline __attribute__((always_inline))
#define LOOKALIKE_UNROLL _Pragma("GCC unroll 16")
#define LOOKALIKE_PREFETCH_L2(p) __builtin_prefetch((p), 0, 2)
#elif defined(_MSC_VER)
#define LOOKALIKE_FORCE_INLINE __forceinline
#define LOOKALIKE_UNROLL
#define LOOKALIKE_PREFETCH_L2(p) ((void)(p))
#else
#define LOOKALIKE_FORCE_INLINE inline
#define LOOKALIKE_UNROLL
#define LOOKALIKE_PREFETCH_L2(p) ((void)(p))
#endif

namespace lookalike::detail {

/// Signature of a block scorer: out[i * ld + r] = <q_i, db_r> for i < qn, r < rows; also
/// prefetches `prefetch_lines` cache lines from `prefetch` (the next block) into L2, spread
/// over its tiles (null: none).
template <class DbT>
using ScoreBlockFn = void (*)(const float* q, std::size_t qn, const DbT* db, std::size_t rows, std::size_t d,
                              float* out, std::size_t ld, const char* prefetch, std::size_t prefetch_lines);

// ---------------------------------------------------------------------------------------------
// Portable level: four independent float lanes in plain C++ (compilers map them onto SSE/NEON).
namespace scalar {

struct Ops {
  struct V {
    float v[4];
  };
  static constexpr std::size_t kLanes = 4;
  static constexpr int kQueryTile = 3;
  static constexpr int kRowTile = 4;
  static constexpr bool kHasHsum16 = false;
  static constexpr int row_tile(int /*query_tile*/) noexcept { return kRowTile; }
  static void hsum16(const V* /*v*/, float* /*out*/) noexcept {}  // never called (kHasHsum16)
  static LOOKALIKE_FORCE_INLINE void pin(V& /*v*/) noexcept {}

  static LOOKALIKE_FORCE_INLINE float widen(float x) noexcept { return x; }
  static LOOKALIKE_FORCE_INLINE float widen(std::int8_t x) noexcept { return static_cast<float>(x); }
  static LOOKALIKE_FORCE_INLINE float widen(f16 x) noexcept { return to_float(x); }
  static LOOKALIKE_FORCE_INLINE float widen(bf16 x) noexcept { return to_float(x); }

  static LOOKALIKE_FORCE_INLINE V zero() noexcept { return V{{0.0f, 0.0f, 0.0f, 0.0f}}; }
  template <class T>
  static LOOKALIKE_FORCE_INLINE V load(const T* p) noexcept {
    return V{{widen(p[0]), widen(p[1]), widen(p[2]), widen(p[3])}};
  }
  template <class T>
  static LOOKALIKE_FORCE_INLINE V load_tail(const T* p, std::size_t n) noexcept {
    V out = zero();
    for (std::size_t l = 0; l < n; ++l) out.v[l] = widen(p[l]);
    return out;
  }
  static LOOKALIKE_FORCE_INLINE V fma(V a, V b, V acc) noexcept {
    for (int l = 0; l < 4; ++l) acc.v[l] += a.v[l] * b.v[l];
    return acc;
  }
  static LOOKALIKE_FORCE_INLINE float hsum(V a) noexcept { return (a.v[0] + a.v[1]) + (a.v[2] + a.v[3]); }
  static LOOKALIKE_FORCE_INLINE void hsum4(V a, V b, V c, V d, float* out) noexcept {
    out[0] = hsum(a);
    out[1] = hsum(b);
    out[2] = hsum(c);
    out[3] = hsum(d);
  }
};

#define LOOKALIKE_TARGET
#include "lookalike/detail/score_kernel.inc"
#undef LOOKALIKE_TARGET

}  // namespace scalar

#if LOOKALIKE_X86_DISPATCH

// Lanes 0..n-1 all ones, the rest zero: a window into this table is an AVX2 load mask.
inline constexpr std::int32_t kTailMask[16] = {-1, -1, -1, -1, -1, -1, -1, -1, 0, 0, 0, 0, 0, 0, 0, 0};

// ---------------------------------------------------------------------------------------------
// AVX2 + FMA: 8 lanes; a 3 x 4 tile keeps 12 accumulators + 3 query vectors + 1 row vector
// in the 16 ymm registers.
namespace avx2 {

#define LOOKALIKE_TARGET __attribute__((target("avx2,fma,f16c")))

struct Ops {
  using V = __m256;
  static constexpr std::size_t kLanes = 8;
  static constexpr int kQueryTile = 3;
  static constexpr int kRowTile = 4;
  static constexpr bool kHasHsum16 = false;
  static constexpr int row_tile(int /*query_tile*/) noexcept { return kRowTile; }
  static void hsum16(const V* /*v*/, float* /*out*/) noexcept {}  // never called (kHasHsum16)
  // Keeps a loaded vector in a register: without it GCC turns `y = load; fma(y, x0); fma(y, x1)`
  // into one load per FMA (a memory operand each), which makes the tile bound by loads.
  static LOOKALIKE_TARGET LOOKALIKE_FORCE_INLINE void pin(V& v) noexcept { __asm__("" : "+x"(v)); }

  static LOOKALIKE_TARGET LOOKALIKE_FORCE_INLINE V zero() noexcept { return _mm256_setzero_ps(); }
  static LOOKALIKE_TARGET LOOKALIKE_FORCE_INLINE V load(const float* p) noexcept { return _mm256_loadu_ps(p); }
  static LOOKALIKE_TARGET LOOKALIKE_FORCE_INLINE V load_tail(const float* p, std::size_t n) noexcept {
    // n in [1, 7]; masked-out lanes are neither read nor faulted on.
    const __m256i mask = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(kTailMask + 8 - n));
    return _mm256_maskload_ps(p, mask);
  }
  static LOOKALIKE_TARGET LOOKALIKE_FORCE_INLINE V load(const f16* p) noexcept {
    return _mm256_cvtph_ps(_mm_loadu_si128(reinterpret_cast<const __m128i*>(p)));
  }
  static LOOKALIKE_TARGET LOOKALIKE_FORCE_INLINE V load(const bf16* p) noexcept {
    const __m256i wide = _mm256_cvtepu16_epi32(_mm_loadu_si128(reinterpret_cast<const __m128i*>(p)));
    return _mm256_castsi256_ps(_mm256_slli_epi32(wide, 16));
  }
  static LOOKALIKE_TARGET LOOKALIKE_FORCE_INLINE V load(const std::int8_t* p) noexcept {
    return _mm256_cvtepi32_ps(_mm256_cvtepi8_epi32(_mm_loadl_epi64(reinterpret_cast<const __m128i*>(p))));
  }
  // Narrow types: the last n < 8 elements go through a zeroed copy (never read past the row).
  template <class T>
  static LOOKALIKE_TARGET LOOKALIKE_FORCE_INLINE V load_tail(const T* p, std::size_t n) noexcept {
    T tmp[kLanes] = {};
    std::memcpy(tmp, p, n * sizeof(T));
    return load(static_cast<const T*>(tmp));
  }
  static LOOKALIKE_TARGET LOOKALIKE_FORCE_INLINE V fma(V a, V b, V acc) noexcept {
    return _mm256_fmadd_ps(a, b, acc);
  }
  // For fused_kernel.inc: 16 ymm registers hold R x V accumulators, V query vectors and the
  // broadcast element (R x V <= 12).
  static constexpr std::size_t kFusedMaxQueries = 24;
  static constexpr int fused_row_tile(int v) noexcept { return v >= 3 ? 4 : v == 2 ? 6 : 12; }
  static LOOKALIKE_TARGET LOOKALIKE_FORCE_INLINE V bcast(const float* p) noexcept { return _mm256_broadcast_ss(p); }
  static LOOKALIKE_TARGET LOOKALIKE_FORCE_INLINE V add(V a, V b) noexcept { return _mm256_add_ps(a, b); }
  static LOOKALIKE_TARGET LOOKALIKE_FORCE_INLINE void store(float* p, V a) noexcept { _mm256_storeu_ps(p, a); }
  // Bit l set when !(a_l < b_l): not below, NaN included.
  static LOOKALIKE_TARGET LOOKALIKE_FORCE_INLINE unsigned not_below(V a, V b) noexcept {
    return static_cast<unsigned>(_mm256_movemask_ps(_mm256_cmp_ps(a, b, _CMP_NLT_UQ)));
  }
  // Each input gets ((x0+x1)+(x2+x3)) + ((x4+x5)+(x6+x7)), independently of the others.
  static LOOKALIKE_TARGET LOOKALIKE_FORCE_INLINE void hsum4(V a, V b, V c, V d, float* out) noexcept {
    const __m256 ab = _mm256_hadd_ps(a, b);     // a01 a23 b01 b23 | a45 a67 b45 b67
    const __m256 cd = _mm256_hadd_ps(c, d);     // c01 c23 d01 d23 | c45 c67 d45 d67
    const __m256 abcd = _mm256_hadd_ps(ab, cd);  // a0-3 b0-3 c0-3 d0-3 | a4-7 b4-7 c4-7 d4-7
    _mm_storeu_ps(out, _mm_add_ps(_mm256_castps256_ps128(abcd), _mm256_extractf128_ps(abcd, 1)));
  }
};

#include "lookalike/detail/score_kernel.inc"
#include "lookalike/detail/fused_kernel.inc"
#undef LOOKALIKE_TARGET

}  // namespace avx2

// ---------------------------------------------------------------------------------------------
// AVX-512F: 16 lanes; a 4 x 4 tile uses 16 accumulators + 4 query vectors + 1 row vector of
// the 32 zmm registers.
namespace avx512 {

#define LOOKALIKE_TARGET __attribute__((target("avx512f,avx2,fma,f16c")))

struct Ops {
  using V = __m512;
  static constexpr std::size_t kLanes = 16;
  // 8 queries x 2 rows: 16 accumulators + 8 query vectors + 1 row vector. Each row vector
  // (streamed from L2: the block does not fit L1) now feeds 8 FMAs instead of 4, which halves
  // the L2 -> L1 traffic per FMA; with full-width 512-bit FMAs (Intel) the 4 x 4 tile was
  // bound by it (about half the FMA peak). Narrow tiles (the last queries of a batch, m = 1)
  // keep 4 rows: they are bound by memory, where four streams prefetch better.
  static constexpr int kQueryTile = 8;
  static constexpr int kRowTile = 4;
  static constexpr bool kHasHsum16 = true;
  static constexpr int row_tile(int query_tile) noexcept { return query_tile > 4 ? 2 : 4; }
  static LOOKALIKE_TARGET LOOKALIKE_FORCE_INLINE void pin(V& v) noexcept { __asm__("" : "+v"(v)); }

  static LOOKALIKE_TARGET LOOKALIKE_FORCE_INLINE V zero() noexcept { return _mm512_setzero_ps(); }
  static LOOKALIKE_TARGET LOOKALIKE_FORCE_INLINE V load(const float* p) noexcept { return _mm512_loadu_ps(p); }
  static LOOKALIKE_TARGET LOOKALIKE_FORCE_INLINE V load_tail(const float* p, std::size_t n) noexcept {
    // n in [1, 15]; masked-out lanes are neither read nor faulted on.
    return _mm512_maskz_loadu_ps(static_cast<__mmask16>((1u << n) - 1u), p);
  }
  // Full-mask maskz forms: the plain ones trip GCC 12's false -Wmaybe-uninitialized (bug 105593).
  static constexpr __mmask16 kAll = 0xFFFF;
  static LOOKALIKE_TARGET LOOKALIKE_FORCE_INLINE V load(const f16* p) noexcept {
    return _mm512_maskz_cvtph_ps(kAll, _mm256_loadu_si256(reinterpret_cast<const __m256i*>(p)));
  }
  static LOOKALIKE_TARGET LOOKALIKE_FORCE_INLINE V load(const bf16* p) noexcept {
    const __m512i wide = _mm512_maskz_cvtepu16_epi32(kAll, _mm256_loadu_si256(reinterpret_cast<const __m256i*>(p)));
    return _mm512_castsi512_ps(_mm512_maskz_slli_epi32(kAll, wide, 16));
  }
  static LOOKALIKE_TARGET LOOKALIKE_FORCE_INLINE V load(const std::int8_t* p) noexcept {
    const __m512i wide = _mm512_maskz_cvtepi8_epi32(kAll, _mm_loadu_si128(reinterpret_cast<const __m128i*>(p)));
    return _mm512_maskz_cvtepi32_ps(kAll, wide);
  }
  template <class T>
  static LOOKALIKE_TARGET LOOKALIKE_FORCE_INLINE V load_tail(const T* p, std::size_t n) noexcept {
    T tmp[kLanes] = {};
    std::memcpy(tmp, p, n * sizeof(T));
    return load(static_cast<const T*>(tmp));
  }
  static LOOKALIKE_TARGET LOOKALIKE_FORCE_INLINE V fma(V a, V b, V acc) noexcept {
    return _mm512_fmadd_ps(a, b, acc);
  }
  // For fused_kernel.inc: R x V accumulators (<= 24) + V query vectors of the 32 zmm; the row
  // element is an embedded broadcast of the FMA.
  static constexpr std::size_t kFusedMaxQueries = 64;
  static constexpr int fused_row_tile(int v) noexcept { return v >= 4 ? 6 : v == 3 ? 8 : 12; }
  static LOOKALIKE_TARGET LOOKALIKE_FORCE_INLINE V bcast(const float* p) noexcept { return _mm512_set1_ps(*p); }
  static LOOKALIKE_TARGET LOOKALIKE_FORCE_INLINE V add(V a, V b) noexcept { return _mm512_add_ps(a, b); }
  static LOOKALIKE_TARGET LOOKALIKE_FORCE_INLINE void store(float* p, V a) noexcept { _mm512_storeu_ps(p, a); }
  static LOOKALIKE_TARGET LOOKALIKE_FORCE_INLINE unsigned not_below(V a, V b) noexcept {
    return static_cast<unsigned>(_mm512_cmp_ps_mask(a, b, _CMP_NLT_UQ));
  }
  // 16 -> 8 lanes (x_i + x_{i+8}), then the AVX2 tree.
  static LOOKALIKE_TARGET LOOKALIKE_FORCE_INLINE __m256 fold(V x) noexcept {
    // The maskz forms with a full mask compile to plain extracts; the unmasked ones trip a
    // false -Wmaybe-uninitialized inside GCC 12's own header (GCC bug 105593).
    const __m512d xd = _mm512_castps_pd(x);
    const __m256 lo = _mm256_castpd_ps(_mm512_maskz_extractf64x4_pd(0xFF, xd, 0));
    const __m256 hi = _mm256_castpd_ps(_mm512_maskz_extractf64x4_pd(0xFF, xd, 1));
    return _mm256_add_ps(lo, hi);
  }
  // out[p] = the hsum4 tree of v[p] for p < 16, bit for bit: x_i = v_i + v_{i+8}, then
  // ((x0+x1)+(x2+x3)) + ((x4+x5)+(x6+x7)), computed for all 16 at once with 45 full-width
  // shuffles and adds (hsum4 takes about twice as many half-width ones). Stage 1 folds pairs
  // into [x0..7 of a | x0..7 of b]; stages 2 and 3 add adjacent lanes within 128-bit lanes;
  // stage 4 adds the two halves. The inputs are fed in the order that makes lane p hold v[p].
  static LOOKALIKE_TARGET LOOKALIKE_FORCE_INLINE void hsum16(const V* v, float* out) noexcept {
    // Butterfly slot s takes accumulator kFeed[s]; slot order of the result is
    // 0,2,4,6, 1,3,5,7, 8,10,12,14, 9,11,13,15.
    constexpr int kFeed[16] = {0, 4, 1, 5, 2, 6, 3, 7, 8, 12, 9, 13, 10, 14, 11, 15};
    V w[8];
    LOOKALIKE_UNROLL
    for (int k = 0; k < 8; ++k) {
      const V a = v[kFeed[2 * k]];
      const V b = v[kFeed[2 * k + 1]];
      w[k] = _mm512_add_ps(_mm512_maskz_shuffle_f32x4(kAll, a, b, 0x44), _mm512_maskz_shuffle_f32x4(kAll, a, b, 0xEE));
    }
    V u[4];
    LOOKALIKE_UNROLL
    for (int k = 0; k < 4; ++k) {
      u[k] = _mm512_add_ps(_mm512_shuffle_ps(w[2 * k], w[2 * k + 1], 0x88),
                           _mm512_shuffle_ps(w[2 * k], w[2 * k + 1], 0xDD));
    }
    V z[2];
    LOOKALIKE_UNROLL
    for (int k = 0; k < 2; ++k) {
      z[k] = _mm512_add_ps(_mm512_shuffle_ps(u[2 * k], u[2 * k + 1], 0x88),
                           _mm512_shuffle_ps(u[2 * k], u[2 * k + 1], 0xDD));
    }
    const V f = _mm512_add_ps(_mm512_maskz_shuffle_f32x4(kAll, z[0], z[1], 0x88), _mm512_maskz_shuffle_f32x4(kAll, z[0], z[1], 0xDD));
    _mm512_storeu_ps(out, f);
  }
  static LOOKALIKE_TARGET LOOKALIKE_FORCE_INLINE void hsum4(V a, V b, V c, V d, float* out) noexcept {
    const __m256 ab = _mm256_hadd_ps(fold(a), fold(b));
    const __m256 cd = _mm256_hadd_ps(fold(c), fold(d));
    const __m256 abcd = _mm256_hadd_ps(ab, cd);
    _mm_storeu_ps(out, _mm_add_ps(_mm256_castps256_ps128(abcd), _mm256_extractf128_ps(abcd, 1)));
  }
};

#include "lookalike/detail/score_kernel.inc"
#include "lookalike/detail/fused_kernel.inc"
#undef LOOKALIKE_TARGET

}  // namespace avx512

#endif  // LOOKALIKE_X86_DISPATCH
}  // namespace lookalike::detail

#include "lookalike/detail/int8_kernel.hpp"
#include "lookalike/detail/amx_kernel.hpp"

namespace lookalike::detail {

/// The block scorer and its query tile (queries scored per pass over a row block) for a level.
/// The caller makes sure the level is supported (simd_level_supported).
template <class DbT>
struct BlockScorer {
  ScoreBlockFn<DbT> fn;
  std::size_t query_tile;
};

template <class DbT>
inline BlockScorer<DbT> block_scorer(SimdLevel level) noexcept {
#if LOOKALIKE_X86_DISPATCH
  switch (level) {
    case SimdLevel::avx512: return {&avx512::score_block<DbT>, avx512::Ops::kQueryTile};
    case SimdLevel::avx2: return {&avx2::score_block<DbT>, avx2::Ops::kQueryTile};
    case SimdLevel::scalar: break;
  }
#else
  (void)level;
#endif
  return {&scalar::score_block<DbT>, scalar::Ops::kQueryTile};
}

}  // namespace lookalike::detail

#if LOOKALIKE_X86_DISPATCH
namespace lookalike::detail {

/// A level's fused float32 kernel (fused_kernel.inc) behind one type, for the driver (topk.hpp).
/// Batches of at least kMinQueries queries use it, in groups of up to kMaxQueries.
template <class Level>
struct Fused;

struct Avx512Tag {};
struct Avx2Tag {};

template <>
struct Fused<Avx512Tag> {
  static constexpr std::size_t kMaxQueries = avx512::Ops::kFusedMaxQueries;
  static constexpr std::size_t kMinQueries = 16;
  static std::size_t pack_size(std::size_t d) noexcept { return avx512::fused_pack_size(d, kMaxQueries); }
  static void pack(const float* q, std::size_t qn, std::size_t d, float* out) noexcept {
    avx512::fused_pack(q, qn, d, avx512::fused_group(qn), out);
  }
  template <class Visit>
  static void rows(const float* pack, std::size_t qn, const float* db, std::size_t rows, std::size_t d,
                   const float* thr, const char* next, std::size_t next_lines, Visit& visit) {
    avx512::fused_rows(pack, qn, db, rows, d, thr, next, next_lines, visit);
  }
};

template <>
struct Fused<Avx2Tag> {
  static constexpr std::size_t kMaxQueries = avx2::Ops::kFusedMaxQueries;
  static constexpr std::size_t kMinQueries = 8;
  static std::size_t pack_size(std::size_t d) noexcept { return avx2::fused_pack_size(d, kMaxQueries); }
  static void pack(const float* q, std::size_t qn, std::size_t d, float* out) noexcept {
    avx2::fused_pack(q, qn, d, avx2::fused_group(qn), out);
  }
  template <class Visit>
  static void rows(const float* pack, std::size_t qn, const float* db, std::size_t rows, std::size_t d,
                   const float* thr, const char* next, std::size_t next_lines, Visit& visit) {
    avx2::fused_rows(pack, qn, db, rows, d, thr, next, next_lines, visit);
  }
};

}  // namespace lookalike::detail
#endif  // LOOKALIKE_X86_DISPATCH
