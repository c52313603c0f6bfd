// rope: in-place rotate-half rotary embedding on x [T, H, D] (f32/bf16/f16). One thread per
// (position, frequency) pair computes cos/sin once and rotates that pair in every head.
//
// The angle is computed step by step as backends/cpu/rope.cpp does (see the reasoning there):
// the exponent 2i/D as an IEEE fp32 division, theta^expo in double rounded to fp32, an fp32
// reciprocal, one fp32 product with the fp32 position; then cos/sin of that fp32 angle in double,
// rounded to fp32. The rotation uses __fmul_rn/__fadd_rn so the compiler cannot contract it into
// FMAs: on f32 inputs the result matches the CPU path bit for bit (barring a last-ulp
// difference in the device's double cos/sin, which is then rounded away).
#include <cmath>

#include "cuda/check.h"
#include "cuda/device_utils.cuh"
#include "cuda/kernels.h"

namespace rt::cuda {
namespace {

// kInverse: rotation by minus the angle (the transpose, for the backward pass).
template <bool kInverse>
__global__ void rope_kernel(void* x, DType dt, int64_t T, int64_t H, int64_t D, int64_t s0, int64_t s1, int64_t pos0,
                            float base) {
  const int64_t half = D / 2;
  const int64_t idx = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x;
  if (idx >= T * half) return;
  const int64_t t = idx / half, i = idx % half;
  const float expo = __fdiv_rn(static_cast<float>(2 * i), static_cast<float>(D));
  const float p = static_cast<float>(pow(static_cast<double>(base), static_cast<double>(expo)));
  const float inv_freq = __fdiv_rn(1.0f, p);
  const float angle = __fmul_rn(static_cast<float>(pos0 + t), inv_freq);
  double sd, cd;
  sincos(static_cast<double>(angle), &sd, &cd);
  const float c = static_cast<float>(cd), s = static_cast<float>(sd);
  for (int64_t h = 0; h < H; ++h) {
    const int64_t o = t * s0 + h * s1;
    const float x1 = load_f(x, o + i, dt), x2 = load_f(x, o + i + half, dt);
    if constexpr (kInverse) {
      store_f(x, o + i, dt, __fadd_rn(__fmul_rn(x1, c), __fmul_rn(x2, s)));
      store_f(x, o + i + half, dt, __fsub_rn(__fmul_rn(x2, c), __fmul_rn(x1, s)));
    } else {
      store_f(x, o + i, dt, __fsub_rn(__fmul_rn(x1, c), __fmul_rn(x2, s)));
      store_f(x, o + i + half, dt, __fadd_rn(__fmul_rn(x2, c), __fmul_rn(x1, s)));
    }
  }
}

template <bool kInverse>
void rope_launch(const char* op, const char* arg, TensorView x, int64_t pos0, double theta, cudaStream_t stream) {
  check_cuda(op, arg, x);
  check_float(op, arg, x);
  check_ndim(op, arg, x, 3);
  check_unit_inner_stride(op, arg, x);
  const int64_t T = x.shape[0], H = x.shape[1], D = x.shape[2];
  RT_CHECK(D % 2 == 0, op, ": head dim (", arg, ".shape[2]) must be even, found shape ", x.shape_str());
  RT_CHECK(pos0 >= 0, op, ": pos0 must be >= 0, found ", pos0);
  RT_CHECK(pos0 + T <= (int64_t{1} << 24), op, ": positions up to ", pos0 + T,
           " exceed 2^24, past which fp32 positions are not exact");
  RT_CHECK(std::isfinite(theta) && theta > 0, op, ": theta must be a finite number > 0, found ", theta);
  if (T == 0 || H == 0 || D == 0) return;
  const int64_t n = T * (D / 2);
  const int threads = 128;
  rope_kernel<kInverse><<<static_cast<unsigned>((n + threads - 1) / threads), threads, 0, stream>>>(
      x.data, x.dtype, T, H, D, x.stride[0], x.stride[1], pos0, static_cast<float>(theta));
  CUDA_CHECK_LAUNCH();
}

}  // namespace

void rope_forward(TensorView x, int64_t pos0, double theta, cudaStream_t stream) {
  rope_launch<false>("rope", "x", x, pos0, theta, stream);
}

// x1' = x1 c + x2 s, x2' = x2 c - x1 s: R(-angle), the transpose of the forward's R(angle).
void rope_backward(TensorView dx, int64_t pos0, double theta, cudaStream_t stream) {
  rope_launch<true>("rope_backward", "dx", dx, pos0, theta, stream);
}

}  // namespace rt::cuda
