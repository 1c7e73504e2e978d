// bfloat16 / float16 <-> float32 conversions (bit exact, round to nearest even).
//
// Header only and free of any device code, so the exhaustive tests can call them through
// the module on every one of the 65,536 half-precision bit patterns.
#pragma once

#include <cstddef>
#include <cstdint>
#include <cstring>

namespace qwen3vl {

inline uint32_t float_bits(float f) {
  uint32_t x;
  std::memcpy(&x, &f, 4);
  return x;
}

inline float bits_float(uint32_t x) {
  float f;
  std::memcpy(&f, &x, 4);
  return f;
}

// bfloat16 is the top half of a float32; dropping the low half rounds to nearest even.
inline uint16_t f32_to_bf16(float f) {
  uint32_t x = float_bits(f);
  if ((x & 0x7fffffffu) > 0x7f800000u) {  // NaN: keep sign and top payload bits, stay a NaN
    const uint16_t h = static_cast<uint16_t>(x >> 16);
    return (h & 0x7fu) ? h : static_cast<uint16_t>(h | 0x40u);
  }
  x += 0x7fffu + ((x >> 16) & 1u);
  return static_cast<uint16_t>(x >> 16);
}

inline float bf16_to_f32(uint16_t h) { return bits_float(static_cast<uint32_t>(h) << 16); }

// IEEE binary16: 1 sign, 5 exponent (bias 15), 10 mantissa bits.
inline uint16_t f32_to_f16(float f) {
  const uint32_t x = float_bits(f);
  const uint32_t sign = (x >> 16) & 0x8000u;
  const uint32_t exp8 = (x >> 23) & 0xffu;
  uint32_t mant = x & 0x7fffffu;
  if (exp8 == 0xffu) {  // inf, or NaN keeping its top payload bits (and staying a NaN)
    if (!mant) return static_cast<uint16_t>(sign | 0x7c00u);
    const uint32_t payload = mant >> 13;
    return static_cast<uint16_t>(sign | 0x7c00u | (payload ? payload : 0x200u));
  }
  const int32_t exp = static_cast<int32_t>(exp8) - 127 + 15;
  if (exp >= 31) return static_cast<uint16_t>(sign | 0x7c00u);  // overflow -> inf
  if (exp <= 0) {                                                 // subnormal half (or zero)
    if (exp < -10) return static_cast<uint16_t>(sign);
    mant |= 0x800000u;
    const uint32_t shift = static_cast<uint32_t>(14 - exp);
    uint32_t half = mant >> shift;
    const uint32_t rem = mant & ((1u << shift) - 1);
    const uint32_t mid = 1u << (shift - 1);
    if (rem > mid || (rem == mid && (half & 1u))) half++;
    return static_cast<uint16_t>(sign | half);
  }
  uint32_t half = sign | (static_cast<uint32_t>(exp) << 10) | (mant >> 13);
  const uint32_t rem = mant & 0x1fffu;
  if (rem > 0x1000u || (rem == 0x1000u && (half & 1u))) half++;  // may carry into the exponent: correct
  return static_cast<uint16_t>(half);
}

inline float f16_to_f32(uint16_t h) {
  const uint32_t sign = (h & 0x8000u) << 16;
  const uint32_t exp = (h >> 10) & 0x1fu;
  uint32_t mant = h & 0x3ffu;
  if (exp == 0) {
    if (mant == 0) return bits_float(sign);
    int e = -1;  // normalise the subnormal
    do {
      e++;
      mant <<= 1;
    } while ((mant & 0x400u) == 0);
    return bits_float(sign | (static_cast<uint32_t>(127 - 15 - e) << 23) | ((mant & 0x3ffu) << 13));
  }
  if (exp == 31) return bits_float(sign | 0x7f800000u | (mant << 13));
  return bits_float(sign | ((exp + 127 - 15) << 23) | (mant << 13));
}

}  // namespace qwen3vl
