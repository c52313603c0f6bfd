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
//
// In f64 (finite-difference gradient checks) the angle is still that fp32 value (it defines the
// op), but cos/sin stay in double and the rotation is done in double.
//
// Backward: rope is a rotation of each (x1[i], x2[i]) pair, so its transpose is the rotation by
// minus the angle (sin negated), applied in place to the gradient.
#include <cmath>
#include <vector>

#include "cpu/check.h"
#include "cpu/convert.h"
#include "cpu/kernels.h"

namespace rt::cpu {
namespace {

void check_rope(const char* op, const char* arg, const TensorView& x, int64_t pos0, double theta) {
  check_cpu(op, arg, x);
  check_compute(op, arg, x);
  check_ndim(op, arg, x, 3);
  check_unit_inner_stride(op, arg, x);
  const int64_t T = x.shape[0];
  RT_CHECK(x.shape[2] % 2 == 0, op, ": head dim (", arg, ".shape[2]) must be even, found shape ", x.shape_str());
  RT_CHECK(pos0 >= 0, op, ": pos0 must be >= 0, found ", pos0);
  RT_CHECK(pos0 + T <= (int64_t{1} << 24), op, ": positions up to ", pos0 + T,
           " exceed 2^24, past which fp32 positions are not exact");
  RT_CHECK(std::isfinite(theta) && theta > 0, op, ": theta must be a finite number > 0, found ", theta);
}

// sign +1: rope, -1: its transpose.
template <typename T>
void rope_apply(TensorView x, int64_t pos0, double theta, T sign) {
  const int64_t T_ = x.shape[0], H = x.shape[1], D = x.shape[2];
  if (T_ == 0 || H == 0 || D == 0) return;
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
#pragma omp parallel if (T_ * H * D >= (1 << 14))
  {
    std::vector<T> c(static_cast<size_t>(half)), s(static_cast<size_t>(half));
#pragma omp for schedule(static)
    for (int64_t t = 0; t < T_; ++t) {
      const float pos = static_cast<float>(pos0 + t);
      for (int64_t i = 0; i < half; ++i) {
        const float angle = pos * inv_freq[static_cast<size_t>(i)];
        c[static_cast<size_t>(i)] = static_cast<T>(std::cos(static_cast<double>(angle)));
        s[static_cast<size_t>(i)] = sign * static_cast<T>(std::sin(static_cast<double>(angle)));
      }
      for (int64_t h = 0; h < H; ++h) {
        T* r = x.ptr<T>() + t * s0 + h * s1;
        T* r2 = r + half;
        for (int64_t i = 0; i < half; ++i) {
          const T x1 = r[i], x2 = r2[i];
          r[i] = x1 * c[static_cast<size_t>(i)] - x2 * s[static_cast<size_t>(i)];
          r2[i] = x2 * c[static_cast<size_t>(i)] + x1 * s[static_cast<size_t>(i)];
        }
      }
    }
  }
}

}  // namespace

void rope_forward(TensorView x, int64_t pos0, double theta) {
  check_rope("rope", "x", x, pos0, theta);
  dispatch_compute(x.dtype, [&](auto tag) { rope_apply<decltype(tag)>(x, pos0, theta, decltype(tag)(1)); });
}

void rope_backward(TensorView dx, int64_t pos0, double theta) {
  check_rope("rope_backward", "dx", dx, pos0, theta);
  dispatch_compute(dx.dtype, [&](auto tag) { rope_apply<decltype(tag)>(dx, pos0, theta, decltype(tag)(-1)); });
}

}  // namespace rt::cpu
