// AdamW (torch.optim.AdamW semantics: decoupled weight decay, bias correction) as one fused
// elementwise kernel over a parameter's f32 master weights, gradient and moments; the working copy
// (bf16 on this backend) receives the updated master rounded to nearest even in the same pass.
// Every product and sum is rounded separately (no FMA contraction), in the order of torch's
// single-tensor path (as the CPU backend):
//   g = grad * grad_scale;  m = b1 m + (1-b1) g;  v = b2 v + (1-b2) g^2
//   master = master (1 - lr wd) - (lr / (1-b1^t)) (m / (sqrt(v) / sqrt(1-b2^t) + eps))
// the scalar constants computed in double from the f32 hyperparameters and rounded to f32.
#include <algorithm>
#include <cmath>
#include <cstdint>
#include <utility>

#include "cuda/check.h"
#include "cuda/device_utils.cuh"
#include "cuda/kernels.h"

namespace rt::cuda {
namespace {

struct AdamWArgs {
  // decay = 1 - lr wd; step_size = lr / (1 - b1^t); bc2_sqrt = sqrt(1 - b2^t)
  float beta1, beta2, one_b1, one_b2, eps, decay, grad_scale, step_size, bc2_sqrt;
};

__global__ void adamw_kernel(float* __restrict__ master, const float* __restrict__ grad, float* __restrict__ m,
                             float* __restrict__ v, void* param, DType pt, int64_t n, AdamWArgs a) {
  const int64_t stride = static_cast<int64_t>(gridDim.x) * blockDim.x;
  for (int64_t i = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x; i < n; i += stride) {
    const float g = __fmul_rn(grad[i], a.grad_scale);
    const float mi = __fadd_rn(__fmul_rn(a.beta1, m[i]), __fmul_rn(a.one_b1, g));
    const float vi = __fadd_rn(__fmul_rn(a.beta2, v[i]), __fmul_rn(__fmul_rn(a.one_b2, g), g));
    m[i] = mi;
    v[i] = vi;
    const float denom = __fadd_rn(__fdiv_rn(__fsqrt_rn(vi), a.bc2_sqrt), a.eps);
    const float p = __fsub_rn(__fmul_rn(master[i], a.decay), __fmul_rn(a.step_size, __fdiv_rn(mi, denom)));
    master[i] = p;
    if (param) store_f(param, i, pt, p);
  }
}

void check_state(const char* op, const char* arg, const TensorView& t, int64_t n) {
  check_cuda(op, arg, t);
  check_not_f64(op, arg, t);
  check_dtype(op, arg, t, DType::F32);
  RT_CHECK(t.is_contiguous(), op, ": argument '", arg, "' must be contiguous, found shape ", t.shape_str());
  RT_CHECK(t.numel() == n, op, ": argument '", arg, "' must have ", n, " elements (as 'master'), found shape ",
           t.shape_str());
}

}  // namespace

void adamw_step(TensorView master, TensorView grad, TensorView m, TensorView v, TensorView param,
                const Ops::AdamW& hp, cudaStream_t stream) {
  const char* op = "adamw_step";
  const int64_t n = master.numel();
  check_state(op, "master", master, n);
  check_state(op, "grad", grad, n);
  check_state(op, "m", m, n);
  check_state(op, "v", v, n);
  const bool has_param = !is_empty_output(param);
  if (has_param) {
    check_cuda(op, "param", param);
    check_float(op, "param", param);
    RT_CHECK(param.is_contiguous(), op, ": argument 'param' must be contiguous, found shape ", param.shape_str());
    RT_CHECK(param.numel() == n, op, ": argument 'param' must have ", n, " elements (as 'master'), found shape ",
             param.shape_str());
  }
  const std::pair<const char*, const TensorView*> all[] = {
      {"master", &master}, {"grad", &grad}, {"m", &m}, {"v", &v}, {"param", &param}};
  for (size_t i = 0; i < 5; ++i)
    for (size_t j = i + 1; j < 5; ++j) {
      if (!has_param && j == 4) continue;
      RT_CHECK(!views_overlap(*all[i].second, *all[j].second), op, ": arguments '", all[i].first, "' and '",
               all[j].first, "' overlap (param may not be master itself: pass an empty param view then)");
    }
  RT_CHECK(hp.step >= 1, op, ": step must be >= 1 (1-based), found ", hp.step);
  RT_CHECK(std::isfinite(hp.lr) && std::isfinite(hp.weight_decay) && std::isfinite(hp.grad_scale), op,
           ": lr, weight_decay and grad_scale must be finite, found ", hp.lr, ", ", hp.weight_decay, ", ",
           hp.grad_scale);
  RT_CHECK(hp.beta1 >= 0.f && hp.beta1 < 1.f && hp.beta2 >= 0.f && hp.beta2 < 1.f, op,
           ": beta1 and beta2 must be in [0, 1), found ", hp.beta1, ", ", hp.beta2);
  RT_CHECK(std::isfinite(hp.eps) && hp.eps >= 0.f, op, ": eps must be finite and >= 0, found ", hp.eps);
  if (n == 0) return;
  const double b1 = hp.beta1, b2 = hp.beta2, lr = hp.lr, t = static_cast<double>(hp.step);
  const double bc1 = 1.0 - std::pow(b1, t), bc2 = 1.0 - std::pow(b2, t);
  RT_CHECK(bc1 > 0.0 && bc2 > 0.0, op, ": bias corrections 1 - beta^t are 0 (beta1 ", hp.beta1, ", beta2 ",
           hp.beta2, ", step ", hp.step, ")");
  AdamWArgs a;
  a.beta1 = hp.beta1;
  a.beta2 = hp.beta2;
  a.one_b1 = static_cast<float>(1.0 - b1);
  a.one_b2 = static_cast<float>(1.0 - b2);
  a.eps = hp.eps;
  a.decay = static_cast<float>(1.0 - lr * static_cast<double>(hp.weight_decay));
  a.grad_scale = hp.grad_scale;
  a.step_size = static_cast<float>(lr / bc1);
  a.bc2_sqrt = static_cast<float>(std::sqrt(bc2));
  const int threads = 256;
  const int64_t blocks = std::min<int64_t>((n + threads - 1) / threads, 132 * 16);
  adamw_kernel<<<static_cast<unsigned>(blocks), threads, 0, stream>>>(
      master.ptr<float>(), grad.ptr<float>(), m.ptr<float>(), v.ptr<float>(), has_param ? param.data : nullptr,
      param.dtype, n, a);
  CUDA_CHECK_LAUNCH();
}

}  // namespace rt::cuda
