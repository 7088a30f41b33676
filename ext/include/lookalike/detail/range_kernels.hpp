// Per-SIMD-level micro-kernels of the range join (range_kernel.inc compiled once per level),
// and the pick by level. Same dispatch scheme as kernels.hpp: target attributes, no -march.
//
// Tiles (queries x rows, the rows in the lanes): AVX-512 12 x 32 (24 zmm accumulators + 2 row
// vectors + 1 broadcast of the 32 registers), AVX2 6 x 16 (12 + 2 + 1 of 16 ymm), scalar 4 x 8.
#pragma once

#include <cstddef>
#include <utility>

#include "lookalike/detail/kernels.hpp"

namespace lookalike::detail {

inline constexpr std::size_t kMaxRangeQueryTile = 12;

struct RangeTileArgs {
  const float* queries;      // the query tile, transposed: [d][qn]
  const float* panel;        // the row panel, transposed: [d][P]
  std::size_t d;
  std::size_t step;          // elements between checkpoints
  std::size_t checkpoints;   // at k = step, 2 step, ..., checkpoints * step (all < d); 0 = no pruning
  const float* query_tails;  // [checkpoints][qn]: |q_i[k_c:]| (rounded up)
  const float* row_tails;    // [checkpoints][P]: |row[k_c:]| (rounded up)
  const float* prune_below;  // [qn]: the threshold minus query i's rounding margin
  float threshold;
  float* out;                // [qn][P] scores, written when the tile has a hit
};

using RangeTileFn = bool (*)(const RangeTileArgs&);

/// A level's micro-kernel: fns[qn] scores a tile of qn queries (1 <= qn <= query_tile) against a
/// panel of `panel` rows.
struct RangeKernel {
  RangeTileFn fns[kMaxRangeQueryTile + 1];
  std::size_t query_tile;
  std::size_t panel;
};

namespace scalar_range {

#define LOOKALIKE_TARGET
struct ROps {
  struct V {
    float v[4];
  };
  static constexpr std::size_t kLanes = 4;
  static LOOKALIKE_FORCE_INLINE V zero() noexcept { return V{{0.0f, 0.0f, 0.0f, 0.0f}}; }
  static LOOKALIKE_FORCE_INLINE V load(const float* p) noexcept { return V{{p[0], p[1], p[2], p[3]}}; }
  static LOOKALIKE_FORCE_INLINE V set1(float x) noexcept { return V{{x, x, x, x}}; }
  static LOOKALIKE_FORCE_INLINE void store(float* p, V a) noexcept {
    for (int l = 0; l < 4; ++l) p[l] = a.v[l];
  }
  static LOOKALIKE_FORCE_INLINE V fma(V a, V b, V acc) noexcept {
    for (int l = 0; l < 4; ++l) acc.v[l] += a.v[l] * b.v[l];
    return acc;
  }
  static LOOKALIKE_FORCE_INLINE unsigned ge_mask(V a, V b) noexcept {
    unsigned m = 0;
    for (int l = 0; l < 4; ++l) m |= static_cast<unsigned>(a.v[l] >= b.v[l]) << l;
    return m;
  }
};
constexpr int kQueryTile = 4;
constexpr int kVectors = 2;
constexpr std::size_t kPanel = 8;
#include "lookalike/detail/range_kernel.inc"
#undef LOOKALIKE_TARGET

}  // namespace scalar_range

#if LOOKALIKE_X86_DISPATCH

namespace avx2_range {

#define LOOKALIKE_TARGET __attribute__((target("avx2,fma,f16c")))
struct ROps {
  using V = __m256;
  static constexpr std::size_t kLanes = 8;
  static LOOKALIKE_TARGET LOOKALIKE_FORCE_INLINE V zero() noexcept { return _mm256_setzero_ps(); }
  static LOOKALIKE_TARGET LOOKALIKE_FORCE_INLINE V load(const float* p) noexcept { return _mm256_loadu_ps(p); }
  static LOOKALIKE_TARGET LOOKALIKE_FORCE_INLINE V set1(float x) noexcept { return _mm256_set1_ps(x); }
  static LOOKALIKE_TARGET LOOKALIKE_FORCE_INLINE void store(float* p, V a) noexcept { _mm256_storeu_ps(p, a); }
  static LOOKALIKE_TARGET LOOKALIKE_FORCE_INLINE V fma(V a, V b, V acc) noexcept { return _mm256_fmadd_ps(a, b, acc); }
  static LOOKALIKE_TARGET LOOKALIKE_FORCE_INLINE unsigned ge_mask(V a, V b) noexcept {
    return static_cast<unsigned>(_mm256_movemask_ps(_mm256_cmp_ps(a, b, _CMP_GE_OQ)));
  }
};
constexpr int kQueryTile = 6;
constexpr int kVectors = 2;
constexpr std::size_t kPanel = 16;
#include "lookalike/detail/range_kernel.inc"
#undef LOOKALIKE_TARGET

}  // namespace avx2_range

namespace avx512_range {

#define LOOKALIKE_TARGET __attribute__((target("avx512f,avx2,fma,f16c")))
struct ROps {
  using V = __m512;
  static constexpr std::size_t kLanes = 16;
  static LOOKALIKE_TARGET LOOKALIKE_FORCE_INLINE V zero() noexcept { return _mm512_setzero_ps(); }
  static LOOKALIKE_TARGET LOOKALIKE_FORCE_INLINE V load(const float* p) noexcept { return _mm512_loadu_ps(p); }
  static LOOKALIKE_TARGET LOOKALIKE_FORCE_INLINE V set1(float x) noexcept { return _mm512_set1_ps(x); }
  static LOOKALIKE_TARGET LOOKALIKE_FORCE_INLINE void store(float* p, V a) noexcept { _mm512_storeu_ps(p, a); }
  static LOOKALIKE_TARGET LOOKALIKE_FORCE_INLINE V fma(V a, V b, V acc) noexcept { return _mm512_fmadd_ps(a, b, acc); }
  static LOOKALIKE_TARGET LOOKALIKE_FORCE_INLINE unsigned ge_mask(V a, V b) noexcept {
    return static_cast<unsigned>(_mm512_cmp_ps_mask(a, b, _CMP_GE_OQ));
  }
};
constexpr int kQueryTile = 12;
constexpr int kVectors = 2;
constexpr std::size_t kPanel = 32;
#include "lookalike/detail/range_kernel.inc"
#undef LOOKALIKE_TARGET

}  // namespace avx512_range

#endif  // LOOKALIKE_X86_DISPATCH

/// The micro-kernel of a level (the caller makes sure the level is supported).
inline const RangeKernel& range_kernel(SimdLevel level) noexcept {
#if LOOKALIKE_X86_DISPATCH
  switch (level) {
    case SimdLevel::avx512: return avx512_range::kRangeKernel;
    case SimdLevel::avx2: return avx2_range::kRangeKernel;
    case SimdLevel::scalar: break;
  }
#else
  (void)level;
#endif
  return scalar_range::kRangeKernel;
}

}  // namespace lookalike::detail
