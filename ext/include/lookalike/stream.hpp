// A multithreaded streaming read: the memory-bandwidth ceiling the benchmark compares the
// scan with. It reads `bytes` bytes once with the widest loads of the SIMD level, split over
// the shared thread pool exactly as a single-query top-k splits its rows, and returns a
// checksum (so that the compiler cannot drop the loads).
#pragma once

#include <algorithm>
#include <cstddef>
#include <cstdint>
#include <cstring>
#include <functional>
#include <optional>
#include <vector>

#include "lookalike/simd.hpp"
#include "lookalike/thread_pool.hpp"

#if LOOKALIKE_X86_DISPATCH
#include <immintrin.h>
#endif

namespace lookalike {
namespace detail {

inline std::uint64_t read_scalar(const std::uint8_t* p, std::size_t bytes) noexcept {
  std::uint64_t acc[4] = {0, 0, 0, 0};
  std::size_t i = 0;
  for (; i + 32 <= bytes; i += 32) {
    for (int l = 0; l < 4; ++l) {
      std::uint64_t x;
      std::memcpy(&x, p + i + 8 * l, 8);
      acc[l] += x;
    }
  }
  for (; i < bytes; ++i) acc[0] += p[i];
  return acc[0] ^ acc[1] ^ acc[2] ^ acc[3];
}

#if LOOKALIKE_X86_DISPATCH
__attribute__((target("avx2"))) inline std::uint64_t read_avx2(const std::uint8_t* p, std::size_t bytes) noexcept {
  __m256i a = _mm256_setzero_si256(), b = a, c = a, d = a;
  std::size_t i = 0;
  for (; i + 128 <= bytes; i += 128) {
    a = _mm256_add_epi64(a, _mm256_loadu_si256(reinterpret_cast<const __m256i*>(p + i)));
    b = _mm256_add_epi64(b, _mm256_loadu_si256(reinterpret_cast<const __m256i*>(p + i + 32)));
    c = _mm256_add_epi64(c, _mm256_loadu_si256(reinterpret_cast<const __m256i*>(p + i + 64)));
    d = _mm256_add_epi64(d, _mm256_loadu_si256(reinterpret_cast<const __m256i*>(p + i + 96)));
  }
  const __m256i s = _mm256_xor_si256(_mm256_xor_si256(a, b), _mm256_xor_si256(c, d));
  alignas(32) std::uint64_t lanes[4];
  _mm256_store_si256(reinterpret_cast<__m256i*>(lanes), s);
  return (lanes[0] ^ lanes[1] ^ lanes[2] ^ lanes[3]) + read_scalar(p + i, bytes - i);
}

__attribute__((target("avx512f"))) inline std::uint64_t read_avx512(const std::uint8_t* p,
                                                                     std::size_t bytes) noexcept {
  __m512i a = _mm512_setzero_si512(), b = a, c = a, d = a;
  std::size_t i = 0;
  for (; i + 256 <= bytes; i += 256) {
    a = _mm512_add_epi64(a, _mm512_loadu_si512(p + i));
    b = _mm512_add_epi64(b, _mm512_loadu_si512(p + i + 64));
    c = _mm512_add_epi64(c, _mm512_loadu_si512(p + i + 128));
    d = _mm512_add_epi64(d, _mm512_loadu_si512(p + i + 192));
  }
  const __m512i s = _mm512_xor_si512(_mm512_xor_si512(a, b), _mm512_xor_si512(c, d));
  alignas(64) std::uint64_t lanes[8];
  _mm512_store_si512(lanes, s);
  std::uint64_t out = 0;
  for (std::uint64_t x : lanes) out ^= x;
  return out + read_scalar(p + i, bytes - i);
}
#endif

}  // namespace detail

/// Reads `bytes` bytes from `data` once, on `threads` jobs of the shared pool (0 = the thread
/// budget), with the loads of `level` (nullopt = default_simd_level()). Returns a checksum.
inline std::uint64_t stream_read(const void* data, std::size_t bytes, std::size_t threads = 0,
                                 std::optional<SimdLevel> level = std::nullopt) {
  const SimdLevel lv = level ? *level : default_simd_level();
  const std::size_t t = std::max<std::size_t>(1, threads != 0 ? threads : thread_budget());
  const auto* p = static_cast<const std::uint8_t*>(data);
  std::vector<std::uint64_t> sums(t, 0);
  const std::function<void(std::size_t)> work = [&](std::size_t j) {
    const std::size_t a = bytes * j / t / 64 * 64;
    const std::size_t b = j + 1 == t ? bytes : bytes * (j + 1) / t / 64 * 64;
#if LOOKALIKE_X86_DISPATCH
    if (lv == SimdLevel::avx512 && simd_level_supported(SimdLevel::avx512)) {
      sums[j] = detail::read_avx512(p + a, b - a);
      return;
    }
    if (lv >= SimdLevel::avx2 && simd_level_supported(SimdLevel::avx2)) {
      sums[j] = detail::read_avx2(p + a, b - a);
      return;
    }
#endif
    sums[j] = detail::read_scalar(p + a, b - a);
  };
  shared_thread_pool()->run(t, work);
  std::uint64_t out = 0;
  for (std::uint64_t s : sums) out ^= s;
  return out;
}

}  // namespace lookalike
