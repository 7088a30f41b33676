// SIMD levels of the Lookalike kernels, and how the level is picked at run time.
//
// The library is compiled for the baseline ISA (no -march=native): each kernel is compiled
// once per level with a function `target` attribute, and the level is chosen at run time from
// what the CPU and the OS support (`cpu_simd_level`). `LOOKALIKE_SIMD=scalar|avx2|avx512` in
// the environment caps the level (read once), to rule the SIMD code in or out when debugging.
#pragma once

#include <cstdlib>
#include <optional>
#include <stdexcept>
#include <string>
#include <string_view>

#if (defined(__x86_64__) || defined(__i386__)) && (defined(__GNUC__) || defined(__clang__))
#define LOOKALIKE_X86_DISPATCH 1
#else
#define LOOKALIKE_X86_DISPATCH 0
#endif

namespace lookalike {

/// Instruction-set levels, ordered: a CPU that runs one level runs all lower ones.
enum class SimdLevel : int {
  scalar = 0,  ///< portable C++, 4 independent lanes (the compiler may map them to SSE/NEON)
  avx2 = 1,    ///< x86-64 AVX2 + FMA + F16C, 8 float lanes
  avx512 = 2,  ///< x86-64 AVX-512F (+ AVX2, FMA, F16C), 16 float lanes
};

inline constexpr SimdLevel kAllSimdLevels[] = {SimdLevel::scalar, SimdLevel::avx2, SimdLevel::avx512};

inline const char* simd_level_name(SimdLevel level) noexcept {
  switch (level) {
    case SimdLevel::scalar: return "scalar";
    case SimdLevel::avx2: return "avx2";
    case SimdLevel::avx512: return "avx512";
  }
  return "unknown";
}

/// "scalar", "avx2" or "avx512" -> level; anything else -> nullopt.
inline std::optional<SimdLevel> parse_simd_level(std::string_view name) noexcept {
  for (SimdLevel level : kAllSimdLevels) {
    if (name == simd_level_name(level)) return level;
  }
  return std::nullopt;
}

/// The best level this CPU (and OS: saved vector registers) supports and this build has code for.
inline SimdLevel cpu_simd_level() noexcept {
#if LOOKALIKE_X86_DISPATCH
  static const SimdLevel level = [] {
    __builtin_cpu_init();
    // F16C (half <-> float) came with every AVX2 CPU; it is checked all the same.
    const bool avx2 = __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma") && __builtin_cpu_supports("f16c");
    if (avx2 && __builtin_cpu_supports("avx512f")) return SimdLevel::avx512;
    if (avx2) return SimdLevel::avx2;
    return SimdLevel::scalar;
  }();
  return level;
#else
  return SimdLevel::scalar;
#endif
}

inline bool simd_level_supported(SimdLevel level) noexcept {
  return static_cast<int>(level) <= static_cast<int>(cpu_simd_level());
}

/// The level used when a call does not name one: `cpu_simd_level()`, capped by the
/// environment variable LOOKALIKE_SIMD when it is set. Throws std::invalid_argument when
/// LOOKALIKE_SIMD holds something other than a level name.
inline SimdLevel default_simd_level() {
  static const std::optional<SimdLevel> cap = []() -> std::optional<SimdLevel> {
    const char* env = std::getenv("LOOKALIKE_SIMD");
    if (env == nullptr || *env == '\0') return std::nullopt;
    std::optional<SimdLevel> parsed = parse_simd_level(env);
    if (!parsed) {
      throw std::invalid_argument(std::string("environment variable LOOKALIKE_SIMD=") + env +
                                  " is not a SIMD level; set it to scalar, avx2 or avx512, or unset it");
    }
    return parsed;
  }();
  const SimdLevel best = cpu_simd_level();
  if (cap && static_cast<int>(*cap) < static_cast<int>(best)) return *cap;
  return best;
}

}  // namespace lookalike
