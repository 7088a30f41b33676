// bf16 and int8 rows screened with AMX tiles (Intel Sapphire Rapids and later), used at the avx512
// level when the CPU has AMX-TILE + AMX-BF16 / AMX-INT8 and the OS grants the tile state
// (Linux: arch_prctl(ARCH_REQ_XCOMP_PERM, XFEATURE_XTILEDATA), asked once per process).
//
// A tile multiply C[16 x 16] += A[16 x K] * B[K x 16] does 16 x 16 x 32 bf16 (or x 64 int8)
// multiply-adds in one instruction. A is 16 database rows read in place (row stride = the row's
// bytes; no repacking); B is 16 queries, packed once per call in the pair (bf16) / quad (int8)
// interleaved layout the instruction reads; C is [row][query], compared in place with the
// queries' thresholds (screen): no transpose, no score buffer.
//
// Queries are float32 but the tiles take bf16 / int8:
//   bf16: the tiles *screen*. They score every (query, row) with the query rounded to bf16
//         (hi = bf16(q)); the driver then scores only the pairs that may enter a heap with the
//         vector kernel, so every result is the vector kernel's, bit for bit, at any batch size.
//         A pair is dropped only when tile + bound < the query's current k-th score, with
//         bound = ||row|| * (||q - hi|| + 5.2 d 2^-24 ||q|| + sqrt(d) 2^-126) + (4 d + 4
//         + sqrt(d) ||q||) 2^-126 (inflated): |sum row (q - hi)| by Cauchy-Schwarz, both
//         kernels' float rounding (gamma_d, with room for the tile's own summation order), and
//         the tiles' denormals-are-zero / flush-to-zero. ||row|| is summed in float per block
//         (rounding and underflow bounded and added). Any NaN / inf makes the bound NaN / inf:
//         a candidate. With normalised vectors at d = 384 the bound is about 1.2e-3, so a few
//         pairs per query and block reach the vector kernel. An earlier version split q = hi + lo
//         and ran both halves through the tiles: twice the tile work, and bits that depended on
//         the batch size.
//   int8: the tiles screen the same way. The int16 query of int8_kernel.hpp is q16 = 256 hi + lo
//         with hi, lo in [-128, 127] (|q16| <= 32639 there); the tiles give H = sum row hi
//         exactly, so the vector kernels' integer is 256 H + sum row lo <= U = 256 H +
//         ||row|| ||lo|| + 1, and a pair is dropped only when float(U) * qscale * scale, the
//         vector kernel's own operations on the larger integer, is below the threshold (rounding
//         is monotone). The pairs kept are scored by avx512_i8 / avx2_i8: bit-identical results.
//         An earlier version ran both halves through the tiles (the exact integer, twice the work).
// Queries with a non-finite value keep the vector kernels (the driver checks).
#pragma once

#include <algorithm>
#include <cmath>
#include <cstddef>
#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <limits>
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
/// Queries the driver hands to one screen() call (several B tiles).
inline constexpr std::size_t kQueryTile = 64;
/// Calls with fewer queries keep the vector kernels. The screen costs about the same from 2 to 16
/// queries (one B tile; 1M x 384 on 2 threads: bf16 ~40 ms, int8 ~22.5 ms), the vector kernels
/// grow with m and cross it between 6 and 7 queries (m = 6: bf16 37.6-39.8 ms vector vs 39.2-42.0
/// screen, int8 20.1-21.2 vs 22.6-23.7; m = 7: bf16 42.9-47.2 vs 39.1-41.0, int8 24.6-25.9 vs
/// 22.5-23.0; ties at 7-8 at d = 1280, the screen ahead at 7 at 50k rows). At m = 1 the scan is
/// bound by memory and the vector kernels read it faster (bf16 8.5-9 GB/s per core through tiles,
/// 12.5 through the widening kernel).
inline constexpr std::size_t kMinQueries = 7;

/// Elements of one tile row (64 bytes).
template <class T>
struct Traits;
template <>
struct Traits<bf16> {
  static constexpr std::size_t kK = 32;
};
template <>
struct Traits<std::int8_t> {
  static constexpr std::size_t kK = 64;
};

template <class T>
inline constexpr bool kHasAmxKernel = std::is_same_v<T, bf16> || std::is_same_v<T, std::int8_t>;

/// Bytes of one tile (16 rows x 64 bytes).
inline constexpr std::size_t kTileBytes = 1024;

/// Queries packed for the tiles: group g (queries 16g .. 16g + 15), k-step s: one B tile of the
/// queries' hi halves. bf16 keeps the two terms of each query's screening bound (see the top);
/// int8 its scale and ||lo||.
struct Prepared {
  std::vector<std::uint8_t> pack;
  std::vector<float> qscale;     // int8
  std::vector<float> bound;      // bf16: per unit of row norm; int8: ||lo||
  std::vector<float> abs_bound;  // bf16: absolute
  std::size_t ksteps = 0;
  std::size_t bytes_per_group() const noexcept { return ksteps * kTileBytes; }
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
    const bool amx_bf16 = (d >> 22) & 1u;
    out.int8 = (d >> 25) & 1u;
    // The bf16 screen also sums row norms with AVX-512 BF16 (every AMX CPU so far has it).
    __cpuid_count(7, 1, a, b, c, d);
    out.bf16 = amx_bf16 && ((a >> 5) & 1u);
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

/// A float upper bound of a non-negative double (NaN stays NaN, so the pair stays a candidate).
inline float round_up(double x) noexcept {
  const float f = static_cast<float>(x);
  return static_cast<double>(f) < x ? std::nextafter(f, std::numeric_limits<float>::infinity()) : f;
}

/// bf16: packs m queries rounded to bf16 and their screening bounds (false if one holds a
/// non-finite value or rounds to one: those calls keep the vector kernels).
inline bool prepare_bf16(const float* q, std::size_t m, std::size_t d, Prepared& p) {
  constexpr std::size_t K = Traits<bf16>::kK;
  p.ksteps = (d + K - 1) / K;
  const std::size_t groups = (m + kTileQueries - 1) / kTileQueries;
  p.pack.assign(groups * p.bytes_per_group(), 0);
  p.bound.assign(groups * kTileQueries, 0.0f);
  p.abs_bound.assign(groups * kTileQueries, 0.0f);
  const double dd = static_cast<double>(d);
  const double tiny = std::ldexp(1.0, -126);
  // Float rounding of both kernels' sums: gamma_d = d u / (1 - d u) <= 1.07 d u while d u <= 1/16;
  // 4 d u for the tiles (room for an order or rounding of their own), 1.2 d u for the vector kernel.
  const double gamma = dd <= std::ldexp(1.0, 20) ? 5.2 * dd * std::ldexp(1.0, -24) : HUGE_VAL;
  for (std::size_t i = 0; i < m; ++i) {
    std::uint8_t* group = p.pack.data() + (i / kTileQueries) * p.bytes_per_group();
    const std::size_t j = i % kTileQueries;
    double lo2 = 0.0, q2 = 0.0;
    for (std::size_t k = 0; k < d; ++k) {
      const float x = q[i * d + k];
      const bf16 hi = to_bf16(x);
      if (!std::isfinite(x) || !std::isfinite(to_float(hi))) return false;
      const double lo = static_cast<double>(x) - static_cast<double>(to_float(hi));
      lo2 += lo * lo;
      q2 += static_cast<double>(x) * static_cast<double>(x);
      const std::size_t kk = k % K;
      std::memcpy(group + (k / K) * kTileBytes + (kk / 2) * 64 + j * 4 + (kk % 2) * 2, &hi.bits, 2);
    }
    const double qnorm = std::sqrt(q2);
    const double slack = 1.0 + std::ldexp(1.0, -10);  // the float rounding of the bound's own arithmetic
    p.bound[i] = round_up((std::sqrt(lo2) + gamma * qnorm + std::sqrt(dd) * tiny) * slack);
    p.abs_bound[i] = round_up((4.0 * dd + 4.0 + std::sqrt(dd) * qnorm * 1.01) * tiny * slack);
  }
  return true;
}

/// int8: packs the hi halves of the int16 queries of int8_kernel.hpp (q16: m x dpad), with
/// q16 = 256 hi + lo, lo in [-128, 127], and an upper bound of ||lo|| per query (`bound`).
inline void prepare_int8(const std::int16_t* q16, std::size_t dpad, const float* qscale, std::size_t m,
                         std::size_t d, Prepared& p) {
  constexpr std::size_t K = Traits<std::int8_t>::kK;
  p.ksteps = (d + K - 1) / K;
  const std::size_t groups = (m + kTileQueries - 1) / kTileQueries;
  p.pack.assign(groups * p.bytes_per_group(), 0);
  p.qscale.assign(groups * kTileQueries, 0.0f);
  p.bound.assign(groups * kTileQueries, 0.0f);
  for (std::size_t i = 0; i < m; ++i) {
    std::uint8_t* group = p.pack.data() + (i / kTileQueries) * p.bytes_per_group();
    const std::size_t j = i % kTileQueries;
    p.qscale[i] = qscale[i];
    std::int64_t lo2 = 0;
    for (std::size_t k = 0; k < d; ++k) {
      const int v = q16[i * dpad + k];
      const int hi = (v + 128) >> 8;  // floor: v = 256 * hi + lo, lo in [-128, 127]
      const int lo = v - 256 * hi;
      lo2 += static_cast<std::int64_t>(lo) * lo;
      const std::size_t kk = k % K;
      group[(k / K) * kTileBytes + (kk / 4) * 64 + j * 4 + (kk % 4)] = static_cast<std::uint8_t>(static_cast<std::int8_t>(hi));
    }
    p.bound[i] = round_up(std::sqrt(static_cast<double>(lo2)) * (1.0 + std::ldexp(1.0, -40)));
  }
}

#define LOOKALIKE_AMX_TARGET \
  __attribute__((target("amx-tile,amx-bf16,amx-int8,avx512f,avx512bw,avx512dq,avx512vl,avx512bf16,avx2,fma,f16c")))

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

/// Test hook: the transpose alone.
LOOKALIKE_AMX_TARGET inline void transpose_for_test(const float* in, float* out) noexcept {
  __m512 t[16];
  for (int i = 0; i < 16; ++i) t[i] = _mm512_loadu_ps(in + 16 * i);
  transpose16(t);
  for (int i = 0; i < 16; ++i) _mm512_storeu_ps(out + 16 * i, t[i]);
}

// One pass of NR row groups (16 rows each, A tiles read at `a[rg]` with byte stride `astride`;
// the last k-step, when d is not a multiple of K, from `atail[rg]`, stride 64) against NQ query
// groups (B tiles `group_bytes` apart): C[rg * 2 + qg] += A[rg] x B[qg], float (bf16) or int32 (int8).
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
    const std::uint8_t* b = bgroup + s * kTileBytes;
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
    _tile_loadd(6, b, 64);
    if constexpr (NQ == 2) _tile_loadd(7, b + group_bytes, 64);
    if constexpr (std::is_same_v<T, bf16>) {
      _tile_dpbf16ps(0, 4, 6);
      if constexpr (NQ == 2) _tile_dpbf16ps(1, 4, 7);
      if constexpr (NR == 2) _tile_dpbf16ps(2, 5, 6);
      if constexpr (NR == 2 && NQ == 2) _tile_dpbf16ps(3, 5, 7);
    } else {
      _tile_dpbssd(0, 4, 6);
      if constexpr (NQ == 2) _tile_dpbssd(1, 4, 7);
      if constexpr (NR == 2) _tile_dpbssd(2, 5, 6);
      if constexpr (NR == 2 && NQ == 2) _tile_dpbssd(3, 5, 7);
    }
  }
  _tile_stored(0, c[0], 64);
  if constexpr (NQ == 2) _tile_stored(1, c[1], 64);
  if constexpr (NR == 2) _tile_stored(2, c[2], 64);
  if constexpr (NR == 2 && NQ == 2) _tile_stored(3, c[3], 64);
}

/// One step of the row loop: rows r0 .. r0 + 16 nr (the first group `valid` rows, < 16 only for
/// the last), their A tiles (in place, or a zero-padded copy for a partial group) and the padded
/// copies of their last k-step when d is not a multiple of K.
struct RowGroups {
  std::size_t r0 = 0;
  int nr = 1;
  std::size_t valid = 0;
  const std::uint8_t* a[2] = {nullptr, nullptr};
  std::size_t astride = 0;
  const std::uint8_t* atail[2] = {nullptr, nullptr};
  std::size_t full_steps = 0;  // k-steps read in place; the rest from atail
};

/// Walks `rows` rows of `db` in pairs of 16-row groups (a class, not a callback: GCC does not
/// give a lambda its enclosing function's target, so intrinsics could not be used in one).
/// Padded copies are zero-filled so that no byte past a row or the block is read.
template <class T>
class RowGroupWalker {
 public:
  RowGroupWalker(const T* db, std::size_t rows, std::size_t d, std::size_t ksteps) noexcept
      : db_(db), rows_(rows), d_(d), ksteps_(ksteps) {}

  /// The next pair of groups into g; false after the last.
  bool next(RowGroups& g) {
    constexpr std::size_t K = Traits<T>::kK;
    if (r0_ >= rows_) return false;
    const std::size_t row_bytes = d_ * sizeof(T);
    g.r0 = r0_;
    const std::size_t left = rows_ - r0_;
    g.nr = left >= 2 * kTileRows ? 2 : 1;
    g.valid = left >= kTileRows ? kTileRows : left;
    g.a[0] = reinterpret_cast<const std::uint8_t*>(db_ + r0_ * d_);
    g.a[1] = reinterpret_cast<const std::uint8_t*>(db_ + (r0_ + kTileRows) * d_);
    g.astride = row_bytes;
    g.full_steps = d_ / K;
    if (g.valid < kTileRows) {  // a last, partial group: a zero-padded copy holds every k-step
      partial_.assign(kTileRows * ksteps_ * 64, 0);
      for (std::size_t r = 0; r < g.valid; ++r) std::memcpy(partial_.data() + r * ksteps_ * 64, g.a[0] + r * row_bytes, row_bytes);
      g.a[0] = partial_.data();
      g.astride = ksteps_ * 64;
      g.full_steps = ksteps_;
    }
    g.atail[0] = tails_[0];
    g.atail[1] = tails_[1];
    if (g.full_steps < ksteps_) {
      const std::size_t tail_bytes = row_bytes - g.full_steps * 64;
      for (int rg = 0; rg < g.nr; ++rg) {
        std::memset(tails_[rg], 0, sizeof(tails_[rg]));
        for (std::size_t r = 0; r < kTileRows; ++r) {
          std::memcpy(tails_[rg] + r * 64, g.a[rg] + r * row_bytes + g.full_steps * 64, tail_bytes);
        }
      }
    }
    r0_ += g.valid < kTileRows ? g.valid : static_cast<std::size_t>(g.nr) * kTileRows;
    return true;
  }

 private:
  const T* db_;
  std::size_t rows_, d_, ksteps_;
  std::size_t r0_ = 0;
  alignas(64) std::uint8_t tails_[2][16 * 64];
  std::vector<std::uint8_t> partial_;
};

/// Spreads `pf_lines` prefetches (from `pf`) over a call's passes: the first `done_rows` of
/// `rows` rows have their share once a row group ends, each pass a slice of the group's share.
struct PrefetchShare {
  const char* pf;
  std::size_t lines;
  std::size_t rows;
  std::size_t done = 0;
  std::size_t until = 0;
  std::size_t passes = 1;
  std::size_t index = 0;
  void start_group(std::size_t done_rows, std::size_t group_passes) noexcept {
    done = until;
    until = pf != nullptr ? lines * done_rows / rows : 0;
    passes = group_passes;
    index = 0;
  }
  const char* slice(std::size_t& count) noexcept {
    const std::size_t begin = done + (until - done) * index / passes;
    const std::size_t end = done + (until - done) * (index + 1) / passes;
    ++index;
    count = end - begin;
    return pf != nullptr ? pf + begin * 64 : nullptr;
  }
  void finish() const noexcept {
    for (std::size_t at = until; pf != nullptr && at < lines; ++at) LOOKALIKE_PREFETCH_L2(pf + at * 64);
  }
};

/// Upper bounds of the norms of `nrows` bf16 rows: sums of squares by AVX-512 BF16's
/// vdpbf16ps (32 products an instruction, float sums: relative rounding <= d 2^-24, under the
/// 2^-10 slack; denormal inputs and results are flushed: at most sqrt(d) 2^-63 of norm, under
/// the 2^-50 added for d < 2^26), 16 rows at a time and reduced by one transpose; NaN / inf
/// when a row holds one (or overflows).
LOOKALIKE_AMX_TARGET inline void row_norm_bounds(const bf16* rows, std::size_t nrows, std::size_t d,
                                                 float* out) noexcept {
  const __m512 slack = _mm512_set1_ps(1.0f + std::ldexp(1.0f, -10) + static_cast<float>(d) * std::ldexp(1.0f, -23));
  const __m512 floor = _mm512_set1_ps(std::ldexp(1.0f, -50));
  const __mmask32 tail = static_cast<__mmask32>((1ull << (d % 32)) - 1u);
  for (std::size_t r0 = 0; r0 < nrows; r0 += kTileRows) {
    const std::size_t n = nrows - r0 < kTileRows ? nrows - r0 : kTileRows;
    __m512 acc[16];
    for (int i = 0; i < 16; ++i) acc[i] = _mm512_setzero_ps();
    const std::uint16_t* x = reinterpret_cast<const std::uint16_t*>(rows + r0 * d);
    std::size_t c = 0;
    for (; c + 32 <= d; c += 32) {
      for (std::size_t i = 0; i < n; ++i) {
        const __m512bh v = reinterpret_cast<__m512bh>(_mm512_loadu_si512(x + i * d + c));
        acc[i] = _mm512_dpbf16_ps(acc[i], v, v);
      }
    }
    if (c < d) {
      for (std::size_t i = 0; i < n; ++i) {
        const __m512bh v = reinterpret_cast<__m512bh>(_mm512_maskz_loadu_epi16(tail, x + i * d + c));
        acc[i] = _mm512_dpbf16_ps(acc[i], v, v);
      }
    }
    transpose16(acc);  // acc[j] lane i: row i's lane j
    __m512 sum = acc[0];
    for (int j = 1; j < 16; ++j) sum = _mm512_add_ps(sum, acc[j]);
    const __m512 norm = _mm512_fmadd_ps(_mm512_maskz_sqrt_ps(kAll, sum), slack, floor);
    _mm512_mask_storeu_ps(out + r0, static_cast<__mmask16>((1u << n) - 1u), norm);
  }
}

/// Upper bounds of the norms of `nrows` int8 rows: the exact integer sum of squares (vpmaddwd
/// on the rows widened to int16), 16 rows at a time, its square root inflated by 2^-20.
LOOKALIKE_AMX_TARGET inline void row_norm_bounds(const std::int8_t* rows, std::size_t nrows, std::size_t d,
                                                 float* out) noexcept {
  const __m512 slack = _mm512_set1_ps(1.0f + std::ldexp(1.0f, -20));
  const __mmask32 tail = static_cast<__mmask32>((1ull << (d % 32)) - 1u);
  for (std::size_t r0 = 0; r0 < nrows; r0 += kTileRows) {
    const std::size_t n = nrows - r0 < kTileRows ? nrows - r0 : kTileRows;
    __m512i acc[16];
    for (int i = 0; i < 16; ++i) acc[i] = _mm512_setzero_si512();
    const std::int8_t* x = rows + r0 * d;
    std::size_t c = 0;
    for (; c + 32 <= d; c += 32) {
      for (std::size_t i = 0; i < n; ++i) {
        const __m512i v = _mm512_cvtepi8_epi16(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(x + i * d + c)));
        acc[i] = _mm512_add_epi32(acc[i], _mm512_madd_epi16(v, v));
      }
    }
    if (c < d) {
      for (std::size_t i = 0; i < n; ++i) {
        const __m512i v = _mm512_cvtepi8_epi16(_mm256_maskz_loadu_epi8(tail, x + i * d + c));
        acc[i] = _mm512_add_epi32(acc[i], _mm512_madd_epi16(v, v));
      }
    }
    __m512 t[16];  // the transpose only moves bits: integer lanes pass through it unchanged
    for (int i = 0; i < 16; ++i) t[i] = _mm512_castsi512_ps(acc[i]);
    transpose16(t);
    __m512i sum = _mm512_castps_si512(t[0]);
    for (int j = 1; j < 16; ++j) sum = _mm512_add_epi32(sum, _mm512_castps_si512(t[j]));
    const __m512 norm = _mm512_mul_ps(_mm512_maskz_sqrt_ps(kAll, _mm512_maskz_cvtepi32_ps(kAll, sum)), slack);
    _mm512_mask_storeu_ps(out + r0, static_cast<__mmask16>((1u << n) - 1u), norm);
  }
}

/// Screens `rows` rows of `db` against queries q0 .. q0 + qn of `p` (q0 a multiple of 16,
/// qn <= kQueryTile) with the hi tiles. For each 16 x 16 tile with a candidate it calls
/// on_tile(row0, nrows, j0, nq, cand): bit j of cand[i] is set when row row0 + i may reach
/// thr[j0 + j], query q0 + j0 + j's current threshold (-inf before its heap is full; NaN keeps
/// every pair). thr is read once per tile, after the previous tile's on_tile (which may raise
/// it); it holds a multiple of 16 entries. `scales`: int8 rows' scales (null: 1). `norms`: one
/// float per row, filled here when `fill_norms` (the block's first query tile: each row pair's
/// just before its passes, which also brings the rows into L1), read as they are otherwise.
/// Also prefetches pf_lines cache lines from pf into L2 (the next block), spread over the passes.
///   bf16: a pair is kept when tile + ||row|| bound + abs_bound >= thr (see the top).
///   int8: the exact integer is 256 H + L, H the tile's, |L| <= ||row|| ||lo||, so
///         U = 256 H + ||row|| ||lo|| + 1 >= it (in double); a pair is kept when
///         float(U) * qscale * scale >= thr, the vector kernel's own operations on a larger
///         integer (rounding is monotone, scales >= 0; a negative or NaN scale keeps the row).
template <class T, class OnTile>
LOOKALIKE_AMX_TARGET void screen(const Prepared& p, std::size_t q0, std::size_t qn, const T* db, const float* scales,
                                 std::size_t rows, std::size_t d, float* norms, bool fill_norms, const float* thr,
                                 OnTile&& on_tile, const char* pf, std::size_t pf_lines) {
  const std::size_t group_bytes = p.bytes_per_group();
  const std::size_t groups = (qn + kTileQueries - 1) / kTileQueries;
  const std::uint8_t* bbase = p.pack.data() + (q0 / kTileQueries) * group_bytes;
  alignas(64) float c[4][256];
  PrefetchShare share{pf, pf_lines, rows};
  const __m512 minus_inf = _mm512_set1_ps(-std::numeric_limits<float>::infinity());
  configure();
  RowGroupWalker<T> walk(db, rows, d, p.ksteps);
  for (RowGroups rg; walk.next(rg);) {
    share.start_group(std::min(rows, rg.r0 + static_cast<std::size_t>(rg.nr) * kTileRows), (groups + 1) / 2);
    if (fill_norms) row_norm_bounds(db + rg.r0 * d, rg.nr == 2 ? 2 * kTileRows : rg.valid, d, norms + rg.r0);
    for (std::size_t g = 0; g < groups; g += 2) {
      const std::uint8_t* b = bbase + g * group_bytes;
      const bool two = g + 1 < groups;
      std::size_t pf_count = 0;
      const char* pf_at = share.slice(pf_count);
      if (rg.nr == 2 && two) {
        pass<T, 2, 2>(rg.a, rg.astride, rg.atail, rg.full_steps, p.ksteps, b, group_bytes, c, pf_at, pf_count);
      } else if (rg.nr == 2) {
        pass<T, 2, 1>(rg.a, rg.astride, rg.atail, rg.full_steps, p.ksteps, b, group_bytes, c, pf_at, pf_count);
      } else if (two) {
        pass<T, 1, 2>(rg.a, rg.astride, rg.atail, rg.full_steps, p.ksteps, b, group_bytes, c, pf_at, pf_count);
      } else {
        pass<T, 1, 1>(rg.a, rg.astride, rg.atail, rg.full_steps, p.ksteps, b, group_bytes, c, pf_at, pf_count);
      }
      for (std::size_t qg = 0; qg < (two ? 2u : 1u); ++qg) {
        const std::size_t j0 = (g + qg) * kTileQueries;
        const std::size_t nq = qn - j0 < kTileQueries ? qn - j0 : kTileQueries;
        const __mmask16 qmask = static_cast<__mmask16>((1u << nq) - 1u);
        const __m512 bound = _mm512_loadu_ps(p.bound.data() + q0 + j0);
        // Per tile: bf16's absolute bound, int8's query scales and ||lo|| widened to double.
        const __m512 abs_bound_or_qs =
            _mm512_loadu_ps((std::is_same_v<T, bf16> ? p.abs_bound.data() : p.qscale.data()) + q0 + j0);
        const __m512d lo_b = _mm512_maskz_cvtps_pd(0xFF, _mm512_maskz_extractf32x8_ps(0xFF, bound, 0));
        const __m512d hi_b = _mm512_maskz_cvtps_pd(0xFF, _mm512_maskz_extractf32x8_ps(0xFF, bound, 1));
        for (int r = 0; r < rg.nr; ++r) {
          const std::size_t row0 = rg.r0 + static_cast<std::size_t>(r) * kTileRows;
          const std::size_t nrows = r == 0 ? rg.valid : kTileRows;
          const float* tile = c[r * 2 + qg];
          const __m512 t = _mm512_loadu_ps(thr + j0);
          std::uint16_t cand[kTileRows];
          unsigned any = 0;
          for (std::size_t i = 0; i < nrows; ++i) {
            const float norm = norms[row0 + i];
            __mmask16 m = 0;
            if constexpr (std::is_same_v<T, bf16>) {
              const __m512 v = _mm512_loadu_ps(tile + 16 * i);
              const __m512 reach = _mm512_add_ps(v, _mm512_fmadd_ps(_mm512_set1_ps(norm), bound, abs_bound_or_qs));
              m = static_cast<__mmask16>(_mm512_cmp_ps_mask(reach, t, _CMP_NLT_UQ) |
                                         _mm512_cmp_ps_mask(v, minus_inf, _CMP_EQ_OQ));
            } else {
              const float scale = scales != nullptr ? scales[row0 + i] : 1.0f;
              const __m512i h = _mm512_loadu_si512(tile + 16 * i);
              const __m512d n = _mm512_set1_pd(static_cast<double>(norm));
              const __m512d k256 = _mm512_set1_pd(256.0), one = _mm512_set1_pd(1.0);
              const __m512d lo_h = _mm512_maskz_cvtepi32_pd(0xFF, _mm512_maskz_extracti32x8_epi32(0xFF, h, 0));
              const __m512d hi_h = _mm512_maskz_cvtepi32_pd(0xFF, _mm512_maskz_extracti32x8_epi32(0xFF, h, 1));
              const __m256 lo_u = _mm512_maskz_cvtpd_ps(0xFF, _mm512_fmadd_pd(n, lo_b, _mm512_fmadd_pd(lo_h, k256, one)));
              const __m256 hi_u = _mm512_maskz_cvtpd_ps(0xFF, _mm512_fmadd_pd(n, hi_b, _mm512_fmadd_pd(hi_h, k256, one)));
              const __m512 u = _mm512_insertf32x8(_mm512_castps256_ps512(lo_u), hi_u, 1);
              const __m512 reach = _mm512_mul_ps(_mm512_mul_ps(u, abs_bound_or_qs), _mm512_set1_ps(scale));
              m = scale >= 0.0f ? _mm512_cmp_ps_mask(reach, t, _CMP_NLT_UQ) : kAll;
            }
            m = static_cast<__mmask16>(m & qmask);
            cand[i] = m;
            any |= m;
          }
          if (any != 0) on_tile(row0, nrows, j0, nq, cand);
        }
      }
    }
  }
  share.finish();
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
template <class T, class OnTile>
void screen(const Prepared&, std::size_t, std::size_t, const T*, const float*, std::size_t, std::size_t, float*, bool,
            const float*, OnTile&&, const char*, std::size_t) {}

#endif  // LOOKALIKE_AMX

}  // namespace lookalike::detail::amx
