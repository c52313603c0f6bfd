// adamw_step: one AdamW step on one parameter, torch.optim.AdamW semantics (decoupled weight
// decay, bias correction; the order of operations of torch's single-tensor path):
//   g = grad * grad_scale;  m = b1 m + (1 - b1) g;  v = b2 v + (1 - b2) g^2
//   master = master (1 - lr wd);  master -= (lr / (1 - b1^t)) m / (sqrt(v) / sqrt(1 - b2^t) + eps)
// master, grad, m, v share one dtype (f32, or f64); the scalar constants are computed in double
// from the f32 hyperparameters and rounded to it. param, when given, receives master rounded to
// its own dtype (f32, bf16, f16 or f64); an empty param view means master is the parameter.
#include <cmath>

#include "cpu/check.h"
#include "cpu/convert.h"
#include "cpu/kernels.h"

namespace rt::cpu {

void adamw_step(TensorView master, TensorView grad, TensorView m, TensorView v, TensorView param,
                const Ops::AdamW& hp) {
  const char* op = "adamw_step";
  check_cpu(op, "master", master);
  check_compute(op, "master", master);
  const std::pair<const char*, const TensorView*> state[] = {{"grad", &grad}, {"m", &m}, {"v", &v}};
  for (const auto& [name, t] : state) {
    check_cpu(op, name, *t);
    check_dtype_as(op, name, *t, "master", master.dtype);
    check_same_shape(op, "master", master, name, *t);
  }
  check_unit_inner_stride(op, "master", master);
  for (const auto& [name, t] : state) check_unit_inner_stride(op, name, *t);
  if (given(param)) {
    check_cpu(op, "param", param);
    check_float(op, "param", param);
    check_same_shape(op, "master", master, "param", param);
    check_unit_inner_stride(op, "param", param);
  }
  {
    const std::pair<const char*, const TensorView*> all[] = {
        {"master", &master}, {"grad", &grad}, {"m", &m}, {"v", &v}, {"param", &param}};
    for (size_t i = 0; i < 5; ++i)
      for (size_t j = i + 1; j < 5; ++j)
        RT_CHECK(!given(*all[i].second) || !given(*all[j].second) || !views_overlap(*all[i].second, *all[j].second),
                 "adamw_step: arguments '", all[i].first, "' and '", all[j].first, "' overlap");
  }
  RT_CHECK(std::isfinite(hp.lr) && hp.lr >= 0.f, "adamw_step: lr must be finite and >= 0, found ", hp.lr);
  RT_CHECK(hp.beta1 >= 0.f && hp.beta1 < 1.f, "adamw_step: beta1 must be in [0, 1), found ", hp.beta1);
  RT_CHECK(hp.beta2 >= 0.f && hp.beta2 < 1.f, "adamw_step: beta2 must be in [0, 1), found ", hp.beta2);
  RT_CHECK(std::isfinite(hp.eps) && hp.eps >= 0.f, "adamw_step: eps must be finite and >= 0, found ", hp.eps);
  RT_CHECK(std::isfinite(hp.weight_decay) && hp.weight_decay >= 0.f,
           "adamw_step: weight_decay must be finite and >= 0, found ", hp.weight_decay);
  RT_CHECK(std::isfinite(hp.grad_scale), "adamw_step: grad_scale must be finite, found ", hp.grad_scale);
  RT_CHECK(hp.step >= 1, "adamw_step: step must be >= 1 (1-based), found ", hp.step);

  const int64_t rows = num_rows(master), n = row_len(master);
  if (rows * n == 0) return;
  const double b1 = hp.beta1, b2 = hp.beta2, lr = hp.lr;
  const double t = static_cast<double>(hp.step);
  const double bc1 = 1.0 - std::pow(b1, t), bc2 = 1.0 - std::pow(b2, t);
  dispatch_compute(master.dtype, [&](auto tag) {
    using T = decltype(tag);
    const T gs = static_cast<T>(hp.grad_scale), cb1 = static_cast<T>(b1), cb2 = static_cast<T>(b2);
    const T one_b1 = static_cast<T>(1.0 - b1), one_b2 = static_cast<T>(1.0 - b2);
    const T decay = static_cast<T>(1.0 - lr * static_cast<double>(hp.weight_decay));
    const T step_size = static_cast<T>(lr / bc1), bc2_sqrt = static_cast<T>(std::sqrt(bc2));
    const T eps = static_cast<T>(hp.eps);
#pragma omp parallel for schedule(static) if (rows * n >= (1 << 15) && rows > 1)
    for (int64_t r = 0; r < rows; ++r) {
      T* pw = master.ptr<T>() + row_offset(master, r);
      const T* pg = grad.ptr<T>() + row_offset(grad, r);
      T* pm = m.ptr<T>() + row_offset(m, r);
      T* pv = v.ptr<T>() + row_offset(v, r);
      for (int64_t i = 0; i < n; ++i) {
        const T g = pg[i] * gs;
        const T mi = cb1 * pm[i] + one_b1 * g;
        const T vi = cb2 * pv[i] + one_b2 * g * g;
        pm[i] = mi;
        pv[i] = vi;
        const T denom = std::sqrt(vi) / bc2_sqrt + eps;
        pw[i] = pw[i] * decay - step_size * (mi / denom);
      }
      if (given(param))
        from_compute<T>(pw, param.dtype, elem_ptr(param, row_offset(param, r)), static_cast<size_t>(n));
    }
  });
}

}  // namespace rt::cpu
