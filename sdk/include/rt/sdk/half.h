// 16-bit float formats <-> fp32, scalar and bulk. Part of the plugin SDK: standard library only.
//
//  - bf16: the top 16 bits of an IEEE fp32. f32 -> bf16 rounds to nearest, ties to even; NaN
//    stays NaN (quieted, sign kept; never rounded into inf); values past the bf16 range become inf.
//  - f16: IEEE 754 binary16 (1 sign, 5 exponent, 10 mantissa bits), including subnormals
//    (down to 2^-24), inf and NaN. f32 -> f16 rounds to nearest, ties to even, also into and out of
//    the subnormal range; |x| >= 65520 becomes inf; NaN stays NaN (quieted, sign and the top
//    payload bits kept).
// Both f16/bf16 -> f32 directions are exact.
#pragma once

#include <cstddef>
#include <cstdint>
#include <cstring>

#include "rt/sdk/error.h"
#include "rt/sdk/tensor.h"

namespace rt {

namespace detail {
inline uint32_t f32_bits(float f) {
  uint32_t u;
  std::memcpy(&u, &f, sizeof u);
  return u;
}
inline float bits_f32(uint32_t u) {
  float f;
  std::memcpy(&f, &u, sizeof f);
  return f;
}
}  // namespace detail

inline float bf16_to_f32(uint16_t h) { return detail::bits_f32(static_cast<uint32_t>(h) << 16); }

inline uint16_t f32_to_bf16(float f) {
  uint32_t u = detail::f32_bits(f);
  if ((u & 0x7fffffffu) > 0x7f800000u)  // NaN: keep sign and top payload, force the quiet bit
    return static_cast<uint16_t>((u >> 16) | 0x0040u);
  u += 0x7fffu + ((u >> 16) & 1u);  // round to nearest even; overflow carries into inf correctly
  return static_cast<uint16_t>(u >> 16);
}

inline float f16_to_f32(uint16_t h) {
  const uint32_t sign = static_cast<uint32_t>(h & 0x8000u) << 16;
  const uint32_t exp = (h >> 10) & 0x1fu;
  const uint32_t mant = h & 0x3ffu;
  if (exp == 0x1f) return detail::bits_f32(sign | 0x7f800000u | (mant << 13));  // inf / NaN
  if (exp == 0) {
    if (mant == 0) return detail::bits_f32(sign);  // +-0
    // Subnormal: mant * 2^-24, exact in fp32.
    return detail::bits_f32(sign | detail::f32_bits(static_cast<float>(mant) * 0x1p-24f));
  }
  return detail::bits_f32(sign | ((exp + (127 - 15)) << 23) | (mant << 13));
}

inline uint16_t f32_to_f16(float f) {
  const uint32_t u = detail::f32_bits(f);
  const uint16_t sign = static_cast<uint16_t>((u >> 16) & 0x8000u);
  const uint32_t a = u & 0x7fffffffu;
  if (a > 0x7f800000u)  // NaN
    return static_cast<uint16_t>(sign | 0x7e00u | ((a >> 13) & 0x3ffu));
  if (a >= 0x477ff000u)  // >= 65520 (halfway past the largest finite 65504, ties to even): inf
    return static_cast<uint16_t>(sign | 0x7c00u);
  if (a < 0x38800000u) {  // below 2^-14: f16 subnormal (or zero); result = round(|f| * 2^24)
    const uint32_t e = a >> 23;
    const uint32_t shift = 126u - e;  // |f| * 2^24 = m * 2^-(shift), m the 24-bit significand
    if (shift > 24) return sign;      // < 2^-25: rounds to zero (2^-25 itself ties to even 0)
    const uint32_t m = (a & 0x7fffffu) | 0x800000u;
    uint32_t r = m >> shift;
    const uint32_t rem = m & ((1u << shift) - 1u);
    const uint32_t half = 1u << (shift - 1);
    if (rem > half || (rem == half && (r & 1u))) ++r;  // may carry into the smallest normal: fine
    return static_cast<uint16_t>(sign | r);
  }
  uint32_t r = a - ((127u - 15u) << 23);  // rebias the exponent
  r += 0xfffu + ((r >> 13) & 1u);         // round to nearest even on the 13 dropped bits
  return static_cast<uint16_t>(sign | (r >> 13));
}

// dst[i] = src[i] as f32, for src of dtype f32, bf16 or f16.
inline void convert_to_f32(const void* src, DType dtype, float* dst, size_t n) {
  switch (dtype) {
    case DType::F32:
      if (n) std::memmove(dst, src, n * sizeof(float));
      return;
    case DType::BF16: {
      const uint16_t* s = static_cast<const uint16_t*>(src);
      for (size_t i = 0; i < n; ++i) dst[i] = bf16_to_f32(s[i]);
      return;
    }
    case DType::F16: {
      const uint16_t* s = static_cast<const uint16_t*>(src);
      for (size_t i = 0; i < n; ++i) dst[i] = f16_to_f32(s[i]);
      return;
    }
    default:
      fail("convert_to_f32: source dtype ", dtype_name(dtype), " is not a float type (f32, bf16, f16)");
  }
}

// dst[i] = src[i] converted to dtype (f32, bf16 or f16), rounding to nearest even. Same argument
// order as convert_to_f32: source, the dtype of the 16/32-bit side, destination, count.
inline void convert_from_f32(const float* src, DType dtype, void* dst, size_t n) {
  switch (dtype) {
    case DType::F32:
      if (n) std::memmove(dst, src, n * sizeof(float));
      return;
    case DType::BF16: {
      uint16_t* d = static_cast<uint16_t*>(dst);
      for (size_t i = 0; i < n; ++i) d[i] = f32_to_bf16(src[i]);
      return;
    }
    case DType::F16: {
      uint16_t* d = static_cast<uint16_t*>(dst);
      for (size_t i = 0; i < n; ++i) d[i] = f32_to_f16(src[i]);
      return;
    }
    default:
      fail("convert_from_f32: destination dtype ", dtype_name(dtype),
           " is not a float type (f32, bf16, f16)");
  }
}

}  // namespace rt
