// Storage element types of a database: float32, IEEE half (f16), bfloat16 and int8.
//
// f16 and bf16 are 16-bit patterns wrapped in distinct structs so that overloads (loads,
// scorers) tell them apart; both are layout-compatible with std::uint16_t arrays, which is how
// Python hands them over (numpy float16 for f16; uint16 bit patterns for bf16). int8 rows are
// stored with one float32 scale per row: the row's value is scale * int8.
#pragma once

#include <cmath>
#include <cstdint>
#include <cstring>

namespace lookalike {

/// IEEE 754 binary16, as its bit pattern.
struct f16 {
  std::uint16_t bits;
};
/// bfloat16 (the top half of a float32), as its bit pattern.
struct bf16 {
  std::uint16_t bits;
};
static_assert(sizeof(f16) == 2 && sizeof(bf16) == 2, "16-bit storage types must be 2 bytes");

/// How the rows of a database are stored.
enum class Storage : int { f32 = 0, f16 = 1, bf16 = 2, i8 = 3 };

inline const char* storage_name(Storage s) noexcept {
  switch (s) {
    case Storage::f32: return "f32";
    case Storage::f16: return "f16";
    case Storage::bf16: return "bf16";
    case Storage::i8: return "i8";
  }
  return "unknown";
}

inline float bits_to_float(std::uint32_t x) noexcept {
  float f;
  std::memcpy(&f, &x, sizeof f);
  return f;
}

inline std::uint32_t float_to_bits(float f) noexcept {
  std::uint32_t x;
  std::memcpy(&x, &f, sizeof x);
  return x;
}

/// Exact widening of a half to float (the same value F16C's vcvtph2ps gives).
inline float to_float(f16 h) noexcept {
  const std::uint32_t sign = static_cast<std::uint32_t>(h.bits & 0x8000u) << 16;
  const std::uint32_t exp = (h.bits >> 10) & 0x1fu;
  const std::uint32_t mant = h.bits & 0x3ffu;
  if (exp == 0) {
    const float mag = std::ldexp(static_cast<float>(mant), -24);  // zero or subnormal
    return sign != 0 ? -mag : mag;
  }
  if (exp == 31) return bits_to_float(sign | 0x7f800000u | (mant << 13));  // inf / NaN
  return bits_to_float(sign | ((exp + 112u) << 23) | (mant << 13));
}

/// Exact widening of a bfloat16 to float.
inline float to_float(bf16 b) noexcept { return bits_to_float(static_cast<std::uint32_t>(b.bits) << 16); }

/// Float to half, round to nearest even; overflow gives +-inf, NaN stays NaN.
inline f16 to_f16(float f) noexcept {
  std::uint32_t x = float_to_bits(f);
  const auto sign = static_cast<std::uint16_t>((x >> 16) & 0x8000u);
  x &= 0x7fffffffu;
  if (x >= 0x7f800000u) return f16{static_cast<std::uint16_t>(sign | 0x7c00u | (x > 0x7f800000u ? 0x200u : 0u))};
  if (x >= 0x477ff000u) return f16{static_cast<std::uint16_t>(sign | 0x7c00u)};  // >= 65520 rounds to inf
  if (x < 0x38800000u) {  // below 2^-14: a subnormal half (or zero); f * 2^24 is exact, then rounded
    const auto m = static_cast<std::uint32_t>(std::nearbyint(bits_to_float(x) * 16777216.0f));
    return f16{static_cast<std::uint16_t>(sign | m)};
  }
  x += 0xfffu + ((x >> 13) & 1u);
  return f16{static_cast<std::uint16_t>(sign | ((x - (112u << 23)) >> 13))};
}

/// Float to bfloat16, round to nearest even; NaN stays NaN.
inline bf16 to_bf16(float f) noexcept {
  const std::uint32_t x = float_to_bits(f);
  if ((x & 0x7fffffffu) > 0x7f800000u) return bf16{static_cast<std::uint16_t>((x >> 16) | 0x40u)};
  return bf16{static_cast<std::uint16_t>((x + 0x7fffu + ((x >> 16) & 1u)) >> 16)};
}

}  // namespace lookalike
