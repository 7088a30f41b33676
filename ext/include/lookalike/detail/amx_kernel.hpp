// bf16 and int8 rows scored with AMX tiles (Intel Sapphire Rapids and later), used at the avx512
// level when the CPU has AMX-TILE + AMX-BF16 / AMX-INT8 and the OS grants the tile state
// (Linux: arch_prctl(ARCH_REQ_XCOMP_PERM, XFEATURE_XTILEDATA), asked once per process).
//
// A tile multiply C[16 x 16] += A[16 x K] * B[K x 16] does 16 x 16 x 32 bf16 (or x 64 int8)
// multiply-adds in one instruction. A is 16 database rows read in place (row stride = the row's
// bytes; no repacking); B is 16 queries, packed once per call in the pair (bf16) / quad (int8)
// interleaved layout the instruction reads; C is [row][query], transposed into the driver's
// [query][row] score buffer.
//
// Queries are float32 but the tiles take bf16 / int8, so each query is split in two:
//   bf16: q = hi + lo, hi = bf16(q), lo = bf16(q - hi) (q - hi is exact in float32), so the pair
//         carries 16 significant bits (relative error <= 2^-17, like the rows' own rounding is
//         2^-9); both products are accumulated into the same float32 C, hi then lo, step by step
//         over d. Every (query, row) score is the same sequence of tile operations whatever the
//         tile, batch, chunking or thread, so ties and results stay deterministic; the bits
//         differ from the vector kernels' (another summation order) within float rounding.
//         AMX treats bf16 denormal inputs as zero and flushes denormal results; a stored +-inf
//         meets a query element whose lo half is zero as 0 * inf = NaN (NaN ranks last).
//   int8: the int16 query of int8_kernel.hpp, q16 = 256 * hi + lo with hi, lo in [-128, 127]
//         (|q16| <= 32639 there), two int32 tile sums combined as 256 * hi + lo in wrapping
//         int32 arithmetic: the exact integer of the vector kernels, so scores are bit-identical
//         to avx2_i8 / avx512_i8.
// Queries with a non-finite value keep the vector kernels (the driver checks).
#pragma once

#include <algorithm>
#include <cmath>
#include <cstddef>
#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <type_traits>
#include <vector>

#include "lookalike/simd.hpp"
#include "lookalike/types.hpp"

#if LOOKALIKE_X86_DISPATCH && defined(__linux__) && (defined(__x86_64__) || defined(__i386__))
#define LOOKALIKE_AMX 1
#else
#define LOOKALIKE_AMX 0
#endif

#if LOOKALIKE_AMX
#include <cpuid.h>
#include <immintrin.h>
#include <sys/syscall.h>
#include <unistd.h>
#endif

namespace lookalike::detail::amx {

/// Queries per B tile (C's columns) and database rows per A tile (C's rows).
inline constexpr std::size_t kTileQueries = 16;
inline constexpr std::size_t kTileRows = 16;
/// Queries the driver hands to one score() call (several B tiles).
inline constexpr std::size_t kQueryTile = 64;
/// Calls with fewer queries keep the vector kernels: with one B tile or less, a scan is bound by
/// memory, and the vector kernels (one row stream each) keep closer to it than tile loads of 16
/// rows (measured on a 2-vCPU Sapphire Rapids VM: bf16 at m = 1 read 8.5-9 GB/s per core through
/// tiles, 12.5 through the widening kernel; int8 8 vs 13).
inline constexpr std::size_t kMinQueries = 17;

/// Elements of one tile row (64 bytes) and how many consecutive k share a B tile row.
template <class T>
struct Traits;
template <>
struct Traits<bf16> {
  static constexpr std::size_t kK = 32;
  static constexpr std::size_t kPack = 2;
};
template <>
struct Traits<std::int8_t> {
  static constexpr std::size_t kK = 64;
  static constexpr std::size_t kPack = 4;
};

template <class T>
inline constexpr bool kHasAmxKernel = std::is_same_v<T, bf16> || std::is_same_v<T, std::int8_t>;

/// Queries split and packed for the tiles: group g (queries 16g .. 16g + 15), k-step s: the hi
/// tile then the lo tile, each 16 rows x 64 bytes. int8 also keeps one float scale per query.
struct Prepared {
  std::vector<std::uint8_t> pack;
  std::vector<float> qscale;
  std::size_t ksteps = 0;
  std::size_t bytes_per_group() const noexcept { return ksteps * 2 * 1024; }
};

#if LOOKALIKE_AMX

/// CPUID bits and the OS's permission, once per process. LOOKALIKE_AMX=0 in the environment
/// turns AMX off (the vector kernels then run, as on a CPU without it).
struct Support {
  bool bf16 = false;
  bool int8 = false;
};

inline Support support() noexcept {
  static const Support s = [] {
    Support out;
    const char* env = std::getenv("LOOKALIKE_AMX");
    if (env != nullptr && std::strcmp(env, "0") == 0) return out;
    unsigned a = 0, b = 0, c = 0, d = 0;
    if (__get_cpuid_max(0, nullptr) < 7) return out;
    __cpuid_count(7, 0, a, b, c, d);
    const bool tile = (d >> 24) & 1u;
    if (!tile) return out;
    // OSXSAVE and XCR0 bits 17 (XTILECFG) and 18 (XTILEDATA): the OS manages tile state.
    __cpuid(1, a, b, c, d);
    if (((c >> 27) & 1u) == 0) return out;
    std::uint32_t xcr0_lo = 0, xcr0_hi = 0;
    __asm__ volatile("xgetbv" : "=a"(xcr0_lo), "=d"(xcr0_hi) : "c"(0));
    if ((xcr0_lo & (3u << 17)) != (3u << 17)) return out;
    // Linux >= 5.16 hands out the (large) tile data state only on request.
    constexpr long kArchReqXcompPerm = 0x1023;
    constexpr long kXfeatureXtiledata = 18;
    if (syscall(SYS_arch_prctl, kArchReqXcompPerm, kXfeatureXtiledata) != 0) return out;
    __cpuid_count(7, 0, a, b, c, d);
    out.bf16 = (d >> 22) & 1u;
    out.int8 = (d >> 25) & 1u;
    return out;
  }();
  return s;
}

template <class T>
inline bool available() noexcept {
  if constexpr (std::is_same_v<T, bf16>) {
    return support().bf16;
  } else if constexpr (std::is_same_v<T, std::int8_t>) {
    return support().int8;
  } else {
    return false;
  }
}

/// bf16: splits and packs m queries (false if one holds a non-finite value).
inline bool prepare_bf16(const float* q, std::size_t m, std::size_t d, Prepared& p) {
  constexpr std::size_t K = Traits<bf16>::kK;
  p.ksteps = (d + K - 1) / K;
  const std::size_t groups = (m + kTileQueries - 1) / kTileQueries;
  p.pack.assign(groups * p.bytes_per_group(), 0);
  for (std::size_t i = 0; i < m; ++i) {
    std::uint8_t* group = p.pack.data() + (i / kTileQueries) * p.bytes_per_group();
    const std::size_t j = i % kTileQueries;
    for (std::size_t k = 0; k < d; ++k) {
      const float x = q[i * d + k];
      if (!std::isfinite(x)) return false;
      const bf16 hi = to_bf16(x);
      const bf16 lo = to_bf16(x - to_float(hi));
      const std::size_t s = k / K;
      const std::size_t kk = k % K;
      const std::size_t at = (kk / 2) * 64 + j * 4 + (kk % 2) * 2;
      std::memcpy(group + s * 2048 + at, &hi.bits, 2);
      std::memcpy(group + s * 2048 + 1024 + at, &lo.bits, 2);
    }
  }
  return true;
}

/// int8: packs the int16 queries of int8_kernel.hpp (q16: m x dpad) as hi / lo int8 halves.
inline void prepare_int8(const std::int16_t* q16, std::size_t dpad, const float* qscale, std::size_t m,
                         std::size_t d, Prepared& p) {
  constexpr std::size_t K = Traits<std::int8_t>::kK;
  p.ksteps = (d + K - 1) / K;
  const std::size_t groups = (m + kTileQueries - 1) / kTileQueries;
  p.pack.assign(groups * p.bytes_per_group(), 0);
  p.qscale.assign(groups * kTileQueries, 0.0f);
  for (std::size_t i = 0; i < m; ++i) {
    std::uint8_t* group = p.pack.data() + (i / kTileQueries) * p.bytes_per_group();
    const std::size_t j = i % kTileQueries;
    p.qscale[i] = qscale[i];
    for (std::size_t k = 0; k < d; ++k) {
      const int v = q16[i * dpad + k];
      const int hi = (v + 128) >> 8;  // floor: v = 256 * hi + lo, lo in [-128, 127]
      const int lo = v - 256 * hi;
      const std::size_t s = k / K;
      const std::size_t kk = k % K;
      const std::size_t at = (kk / 4) * 64 + j * 4 + (kk % 4);
      group[s * 2048 + at] = static_cast<std::uint8_t>(static_cast<std::int8_t>(hi));
      group[s * 2048 + 1024 + at] = static_cast<std::uint8_t>(static_cast<std::int8_t>(lo));
    }
  }
}

#define LOOKALIKE_AMX_TARGET \
  __attribute__((target("amx-tile,amx-bf16,amx-int8,avx512f,avx512bw,avx512dq,avx512vl,avx2,fma,f16c")))

struct alignas(64) TileConfig {
  std::uint8_t palette = 1;
  std::uint8_t start_row = 0;
  std::uint8_t reserved[14] = {};
  std::uint16_t colsb[16] = {};
  std::uint8_t rows[16] = {};
};

// Tiles 0-3: C; 4, 5: A (two groups of 16 rows); 6, 7: B.
LOOKALIKE_AMX_TARGET inline void configure() noexcept {
  TileConfig cfg;
  for (int t = 0; t < 8; ++t) {
    cfg.colsb[t] = 64;
    cfg.rows[t] = 16;
  }
  _tile_loadconfig(&cfg);
}

// Full-mask maskz forms: the plain ones trip GCC 12's false -Wmaybe-uninitialized (bug 105593).
inline constexpr __mmask16 kAll = 0xFFFF;

// 16 x 16 floats: t[r] (row r) -> t[c] = column c.
LOOKALIKE_AMX_TARGET LOOKALIKE_FORCE_INLINE void transpose16(__m512 t[16]) noexcept {
  __m512 u[16];
  for (int i = 0; i < 16; i += 2) {
    u[i] = _mm512_maskz_unpacklo_ps(kAll, t[i], t[i + 1]);
    u[i + 1] = _mm512_maskz_unpackhi_ps(kAll, t[i], t[i + 1]);
  }
  for (int i = 0; i < 16; i += 4) {
    t[i] = _mm512_maskz_shuffle_ps(kAll, u[i], u[i + 2], 0x44);
    t[i + 1] = _mm512_maskz_shuffle_ps(kAll, u[i], u[i + 2], 0xEE);
    t[i + 2] = _mm512_maskz_shuffle_ps(kAll, u[i + 1], u[i + 3], 0x44);
    t[i + 3] = _mm512_maskz_shuffle_ps(kAll, u[i + 1], u[i + 3], 0xEE);
  }
  for (int i = 0; i < 16; i += 8) {
    for (int j = 0; j < 4; ++j) {
      u[i + j] = _mm512_maskz_shuffle_f32x4(kAll, t[i + j], t[i + j + 4], 0x88);
      u[i + j + 4] = _mm512_maskz_shuffle_f32x4(kAll, t[i + j], t[i + j + 4], 0xDD);
    }
  }
  for (int j = 0; j < 8; ++j) {
    t[j] = _mm512_maskz_shuffle_f32x4(kAll, u[j], u[j + 8], 0x88);
    t[j + 8] = _mm512_maskz_shuffle_f32x4(kAll, u[j], u[j + 8], 0xDD);
  }
}

// c: 16 rows (database rows) x 16 floats (queries). Writes out[j * ld + i] = c[i][j] for
// i < nrows, j < nq.
LOOKALIKE_AMX_TARGET inline void store_transposed(const float* c, std::size_t nrows, std::size_t nq, float* out,
                                                  std::size_t ld) noexcept {
  __m512 t[16];
  for (int i = 0; i < 16; ++i) t[i] = _mm512_loadu_ps(c + 16 * i);
  transpose16(t);
  const __mmask16 mask = static_cast<__mmask16>((1u << nrows) - 1u);
  for (std::size_t j = 0; j < nq; ++j) _mm512_mask_storeu_ps(out + j * ld, mask, t[j]);
}

/// Test hook: the transpose alone.
LOOKALIKE_AMX_TARGET inline void transpose_for_test(const float* in, float* out) noexcept {
  store_transposed(in, 16, 16, out, 16);
}

// One pass of NR row groups (16 rows each, A tiles read at `a[rg]` with byte stride `astride`;
// the last k-step, when d is not a multiple of K, from `atail[rg]`, stride 64) against NQ query
// groups (bf16) or one (int8, hi and lo in separate C tiles).
template <class T, int NR, int NQ>
LOOKALIKE_AMX_TARGET void pass(const std::uint8_t* const* a, std::size_t astride, const std::uint8_t* const* atail,
                               std::size_t full_steps, std::size_t ksteps, const std::uint8_t* bgroup,
                               std::size_t group_bytes, float (*c)[256], const char* pf,
                               std::size_t pf_lines) noexcept {
  _tile_zero(0);
  _tile_zero(1);
  _tile_zero(2);
  _tile_zero(3);
  std::size_t pf_done = 0;
  for (std::size_t s = 0; s < ksteps; ++s) {
    // A few prefetches between tile instructions: a burst of them stalls on the fill buffers.
    const std::size_t pf_until = pf_lines * (s + 1) / ksteps;
    for (; pf_done < pf_until; ++pf_done) LOOKALIKE_PREFETCH_L2(pf + pf_done * 64);
    const bool tail = s >= full_steps;
    const std::uint8_t* b = bgroup + s * 2048;
    // Tile loads wait for all 16 of their lines and hold up the tile instructions behind them:
    // bring the A rows' next k-step into L1 one step ahead (B, the packed queries, stay in L2
    // and are read as whole contiguous tiles, which the hardware prefetchers follow).
    if (NQ == 2 && s + 1 < full_steps) {  // measured: helps wide passes, slows the m <= 16 ones
      for (std::size_t r = 0; r < kTileRows; ++r) {
        _mm_prefetch(reinterpret_cast<const char*>(a[0] + r * astride + (s + 1) * 64), _MM_HINT_T0);
        if constexpr (NR == 2) _mm_prefetch(reinterpret_cast<const char*>(a[1] + r * astride + (s + 1) * 64), _MM_HINT_T0);
      }
    }
    if (tail) {
      _tile_loadd(4, atail[0], 64);
      if constexpr (NR == 2) _tile_loadd(5, atail[1], 64);
    } else {
      _tile_loadd(4, a[0] + s * 64, astride);
      if constexpr (NR == 2) _tile_loadd(5, a[1] + s * 64, astride);
    }
    if constexpr (std::is_same_v<T, bf16>) {
      // C[rg * 2 + qg] += A[rg] x hi[qg], then += A[rg] x lo[qg].
      _tile_loadd(6, b, 64);
      if constexpr (NQ == 2) _tile_loadd(7, b + group_bytes, 64);
      _tile_dpbf16ps(0, 4, 6);
      if constexpr (NQ == 2) _tile_dpbf16ps(1, 4, 7);
      if constexpr (NR == 2) _tile_dpbf16ps(2, 5, 6);
      if constexpr (NR == 2 && NQ == 2) _tile_dpbf16ps(3, 5, 7);
      _tile_loadd(6, b + 1024, 64);
      if constexpr (NQ == 2) _tile_loadd(7, b + group_bytes + 1024, 64);
      _tile_dpbf16ps(0, 4, 6);
      if constexpr (NQ == 2) _tile_dpbf16ps(1, 4, 7);
      if constexpr (NR == 2) _tile_dpbf16ps(2, 5, 6);
      if constexpr (NR == 2 && NQ == 2) _tile_dpbf16ps(3, 5, 7);
    } else {
      // C[rg * 2] += A[rg] x hi, C[rg * 2 + 1] += A[rg] x lo (int32).
      _tile_loadd(6, b, 64);
      _tile_loadd(7, b + 1024, 64);
      _tile_dpbssd(0, 4, 6);
      _tile_dpbssd(1, 4, 7);
      if constexpr (NR == 2) _tile_dpbssd(2, 5, 6);
      if constexpr (NR == 2) _tile_dpbssd(3, 5, 7);
    }
  }
  _tile_stored(0, c[0], 64);
  if constexpr (!std::is_same_v<T, bf16> || NQ == 2) _tile_stored(1, c[1], 64);
  if constexpr (NR == 2) _tile_stored(2, c[2], 64);
  if constexpr (NR == 2 && (!std::is_same_v<T, bf16> || NQ == 2)) _tile_stored(3, c[3], 64);
}

// int8: c_hi, c_lo int32 [16][16] -> float (256 * hi + lo, wrapping) * qscale[column], in place.
LOOKALIKE_AMX_TARGET inline void combine_int8(float* hi, const float* lo, const float* qscale) noexcept {
  const __m512 scale = _mm512_loadu_ps(qscale);
  for (int i = 0; i < 16; ++i) {
    const __m512i h = _mm512_loadu_si512(hi + 16 * i);
    const __m512i l = _mm512_loadu_si512(lo + 16 * i);
    const __m512i sum = _mm512_add_epi32(_mm512_maskz_slli_epi32(kAll, h, 8), l);
    _mm512_storeu_ps(hi + 16 * i, _mm512_mul_ps(_mm512_maskz_cvtepi32_ps(kAll, sum), scale));
  }
}

/// out[j * ld + r] = score of query q0 + j against row r, for j < qn (<= kQueryTile), r < rows.
/// q0 is a multiple of 16 (the driver's query tiles are). Also prefetches pf_lines cache lines
/// from pf into L2 (the next block), spread over the row groups.
template <class T>
LOOKALIKE_AMX_TARGET void score(const Prepared& p, std::size_t q0, std::size_t qn, const T* db, std::size_t rows,
                                std::size_t d, float* out, std::size_t ld, const char* pf,
                                std::size_t pf_lines) {
  constexpr std::size_t K = Traits<T>::kK;
  const std::size_t ksteps = p.ksteps;
  const std::size_t full_steps = d / K;
  const std::size_t row_bytes = d * sizeof(T);
  const std::size_t group_bytes = p.bytes_per_group();
  const std::size_t groups = (qn + kTileQueries - 1) / kTileQueries;
  const std::uint8_t* bbase = p.pack.data() + (q0 / kTileQueries) * group_bytes;

  // Padded copies: the last k-step's columns (d % K) of each row group, and a partial row group
  // (< 16 rows), zero-filled so that no byte past a row or the block is read.
  alignas(64) std::uint8_t tails[2][16 * 64];
  thread_local std::vector<std::uint8_t> partial;
  alignas(64) float c[4][256];

  configure();
  std::size_t pf_done = 0;
  for (std::size_t r0 = 0; r0 < rows;) {
    const std::size_t left = rows - r0;
    const int nr = left >= 2 * kTileRows ? 2 : 1;
    const std::size_t valid = left >= kTileRows ? kTileRows : left;
    const std::uint8_t* a[2] = {reinterpret_cast<const std::uint8_t*>(db + r0 * d),
                                reinterpret_cast<const std::uint8_t*>(db + (r0 + kTileRows) * d)};
    std::size_t astride = row_bytes;
    std::size_t fs = full_steps;  // k-steps read in place; the rest from the padded tails
    if (valid < kTileRows) {      // a last, partial group: a zero-padded copy holds every k-step
      partial.assign(kTileRows * ksteps * 64, 0);
      for (std::size_t r = 0; r < valid; ++r) std::memcpy(partial.data() + r * ksteps * 64, a[0] + r * row_bytes, row_bytes);
      a[0] = partial.data();
      astride = ksteps * 64;
      fs = ksteps;
    }
    const std::uint8_t* atail[2] = {tails[0], tails[1]};
    if (fs < ksteps) {
      const std::size_t tail_bytes = row_bytes - fs * 64;
      for (int rg = 0; rg < nr; ++rg) {
        std::memset(tails[rg], 0, sizeof(tails[rg]));
        for (std::size_t r = 0; r < kTileRows; ++r) std::memcpy(tails[rg] + r * 64, a[rg] + r * row_bytes + fs * 64, tail_bytes);
      }
    }
    // This row group's share of the prefetches, spread over its passes' k-steps.
    const std::size_t done_rows = std::min(rows, r0 + static_cast<std::size_t>(nr) * kTileRows);
    const std::size_t pf_until = pf != nullptr ? pf_lines * done_rows / rows : 0;
    const std::size_t passes = std::is_same_v<T, bf16> ? (groups + 1) / 2 : groups;
    std::size_t pass_index = 0;
    auto pf_slice = [&](std::size_t& at, std::size_t& count) {
      const std::size_t begin = pf_done + (pf_until - pf_done) * pass_index / passes;
      const std::size_t end = pf_done + (pf_until - pf_done) * (pass_index + 1) / passes;
      at = begin;
      count = end - begin;
      ++pass_index;
    };
    if constexpr (std::is_same_v<T, bf16>) {
      for (std::size_t g = 0; g < groups; g += 2) {
        const std::uint8_t* b = bbase + g * group_bytes;
        const bool two = g + 1 < groups;
        std::size_t pf_at = 0, pf_count = 0;
        pf_slice(pf_at, pf_count);
        if (nr == 2 && two) pass<T, 2, 2>(a, astride, atail, fs, ksteps, b, group_bytes, c, pf + pf_at * 64, pf_count);
        if (nr == 2 && !two) pass<T, 2, 1>(a, astride, atail, fs, ksteps, b, group_bytes, c, pf + pf_at * 64, pf_count);
        if (nr == 1 && two) pass<T, 1, 2>(a, astride, atail, fs, ksteps, b, group_bytes, c, pf + pf_at * 64, pf_count);
        if (nr == 1 && !two) pass<T, 1, 1>(a, astride, atail, fs, ksteps, b, group_bytes, c, pf + pf_at * 64, pf_count);
        for (int rg = 0; rg < nr; ++rg) {
          const std::size_t nrows = rg == 0 ? valid : kTileRows;
          for (std::size_t qg = 0; qg < (two ? 2u : 1u); ++qg) {
            const std::size_t j0 = (g + qg) * kTileQueries;
            const std::size_t nq = qn - j0 < kTileQueries ? qn - j0 : kTileQueries;
            store_transposed(c[rg * 2 + qg], nrows, nq, out + j0 * ld + r0 + static_cast<std::size_t>(rg) * kTileRows, ld);
          }
        }
      }
    } else {
      for (std::size_t g = 0; g < groups; ++g) {
        const std::uint8_t* b = bbase + g * group_bytes;
        std::size_t pf_at = 0, pf_count = 0;
        pf_slice(pf_at, pf_count);
        if (nr == 2) {
          pass<T, 2, 1>(a, astride, atail, fs, ksteps, b, group_bytes, c, pf + pf_at * 64, pf_count);
        } else {
          pass<T, 1, 1>(a, astride, atail, fs, ksteps, b, group_bytes, c, pf + pf_at * 64, pf_count);
        }
        const float* qscale = p.qscale.data() + q0 + g * kTileQueries;
        const std::size_t j0 = g * kTileQueries;
        const std::size_t nq = qn - j0 < kTileQueries ? qn - j0 : kTileQueries;
        for (int rg = 0; rg < nr; ++rg) {
          const std::size_t nrows = rg == 0 ? valid : kTileRows;
          combine_int8(c[rg * 2], c[rg * 2 + 1], qscale);
          store_transposed(c[rg * 2], nrows, nq, out + j0 * ld + r0 + static_cast<std::size_t>(rg) * kTileRows, ld);
        }
      }
    }
    pf_done = pf_until;
    r0 += valid < kTileRows ? valid : static_cast<std::size_t>(nr) * kTileRows;
  }
  for (; pf_done < pf_lines; ++pf_done) LOOKALIKE_PREFETCH_L2(pf + pf_done * 64);
  _tile_release();
}

#undef LOOKALIKE_AMX_TARGET

#else  // no AMX in this build

template <class T>
inline bool available() noexcept {
  return false;
}
inline bool prepare_bf16(const float*, std::size_t, std::size_t, Prepared&) { return false; }
inline void prepare_int8(const std::int16_t*, std::size_t, const float*, std::size_t, std::size_t, Prepared&) {}
template <class T>
inline void score(const Prepared&, std::size_t, std::size_t, const T*, std::size_t, std::size_t, float*, std::size_t,
                  const char*, std::size_t) {}

#endif  // LOOKALIKE_AMX

}  // namespace lookalike::detail::amx
