// rope: in-place rotary position embedding on x [T, H, D], rotate-half convention (HF Qwen2):
//   x' = x * cos + rotate_half(x) * sin,  rotate_half(x) = cat(-x2, x1),  x1 = x[:D/2], x2 = x[D/2:]
//   cos/sin of angle[i] = pos * inv_freq[i] (the same angle for column i and i + D/2).
//
// Why the angle is computed this way: at position p ~ 32K the angle of the fastest pair is ~32K
// radians, where one fp32 ulp is ~0.004 rad. Hugging Face computes
//   inv_freq = 1.0 / (base ** (arange(0, D, 2).float() / D))      (all fp32)
//   freqs    = position.float() * inv_freq                           (one fp32 multiply)
//   cos, sin = freqs.cos(), freqs.sin()                              (fp32, ~correctly rounded)
// so its cos/sin are those of the fp32-rounded angle, not of the exact one. Computing the angle in
// double (more "accurate") would differ from HF by up to ~0.004 rad at 32K and push logits past
// 1e-4 relative error. So: every step is done in fp32 exactly as above (exponent 2i/D as an fp32
// division, pow correctly rounded to fp32, fp32 reciprocal, fp32 product with the fp32 position),
// and only cos/sin of that fp32 angle are evaluated in double and rounded to fp32 (what a
// correctly rounded cosf/sinf returns; HF's vectorized ones are within an ulp of it).
#include <cmath>
#include <vector>

#include "cpu/check.h"
#include "cpu/kernels.h"

namespace rt::cpu {

void rope_forward(TensorView x, int64_t pos0, double theta) {
  const char* op = "rope";
  check_cpu(op, "x", x);
  check_dtype(op, "x", x, DType::F32);
  check_ndim(op, "x", x, 3);
  check_unit_inner_stride(op, "x", x);
  const int64_t T = x.shape[0], H = x.shape[1], D = x.shape[2];
  RT_CHECK(D % 2 == 0, "rope: head dim (x.shape[2]) must be even, found shape ", x.shape_str());
  RT_CHECK(pos0 >= 0, "rope: pos0 must be >= 0, found ", pos0);
  RT_CHECK(pos0 + T <= (int64_t{1} << 24), "rope: positions up to ", pos0 + T,
           " exceed 2^24, past which fp32 positions are not exact");
  RT_CHECK(std::isfinite(theta) && theta > 0, "rope: theta must be a finite number > 0, found ", theta);
  if (T == 0 || H == 0 || D == 0) return;
  const int64_t half = D / 2;

  // inv_freq[i] = 1 / theta^(2i/D), every step in fp32 as HF does.
  const float base = static_cast<float>(theta);
  std::vector<float> inv_freq(static_cast<size_t>(half));
  for (int64_t i = 0; i < half; ++i) {
    const float expo = static_cast<float>(2 * i) / static_cast<float>(D);
    const float p = static_cast<float>(std::pow(static_cast<double>(base), static_cast<double>(expo)));
    inv_freq[static_cast<size_t>(i)] = 1.0f / p;
  }

  const int64_t s0 = x.stride[0], s1 = x.stride[1];
#pragma omp parallel if (T * H * D >= (1 << 14))
  {
    std::vector<float> c(static_cast<size_t>(half)), s(static_cast<size_t>(half));
#pragma omp for schedule(static)
    for (int64_t t = 0; t < T; ++t) {
      const float pos = static_cast<float>(pos0 + t);
      for (int64_t i = 0; i < half; ++i) {
        const float angle = pos * inv_freq[static_cast<size_t>(i)];
        c[static_cast<size_t>(i)] = static_cast<float>(std::cos(static_cast<double>(angle)));
        s[static_cast<size_t>(i)] = static_cast<float>(std::sin(static_cast<double>(angle)));
      }
      for (int64_t h = 0; h < H; ++h) {
        float* r = x.ptr<float>() + t * s0 + h * s1;
        float* r2 = r + half;
        for (int64_t i = 0; i < half; ++i) {
          const float x1 = r[i], x2 = r2[i];
          r[i] = x1 * c[static_cast<size_t>(i)] - x2 * s[static_cast<size_t>(i)];
          r2[i] = x2 * c[static_cast<size_t>(i)] + x1 * s[static_cast<size_t>(i)];
        }
      }
    }
  }
}

}  // namespace rt::cpu
