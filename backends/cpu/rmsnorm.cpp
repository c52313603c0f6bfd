// rmsnorm: y = w * (x / sqrt(mean(x^2) + eps)), row-wise over the last dimension, in fp32.
// Same order of operations as Hugging Face Qwen2RMSNorm: normalize in fp32, then scale by w.
#include <cmath>
#include <vector>

#include <Eigen/Core>

#include "cpu/check.h"
#include "cpu/kernels.h"
#include "rt/sdk/half.h"

namespace rt::cpu {

void rmsnorm_forward(TensorView x, TensorView w, float eps, TensorView y) {
  const char* op = "rmsnorm";
  check_cpu(op, "x", x);
  check_cpu(op, "w", w);
  check_cpu(op, "y", y);
  check_dtype(op, "x", x, DType::F32);
  check_float(op, "w", w);
  check_dtype(op, "y", y, DType::F32);
  RT_CHECK(x.ndim >= 1, "rmsnorm: argument 'x' must have at least 1 dimension, found shape ", x.shape_str());
  check_same_shape(op, "x", x, "y", y);
  const int64_t d = row_len(x), rows = num_rows(x);
  RT_CHECK(w.ndim == 1 && w.shape[0] == d, "rmsnorm: argument 'w' must have shape [", d,
           "] (the last dimension of x), found ", w.shape_str());
  RT_CHECK(std::isfinite(eps) && eps >= 0.f, "rmsnorm: eps must be finite and >= 0, found ", eps);
  check_unit_inner_stride(op, "x", x);
  check_unit_inner_stride(op, "y", y);
  if (rows == 0 || d == 0) return;

  std::vector<float> wf(static_cast<size_t>(d));
  const size_t es = dtype_size(w.dtype);
  if (w.stride[0] == 1 || d == 1)
    convert_to_f32(w.data, w.dtype, wf.data(), static_cast<size_t>(d));
  else
    for (int64_t i = 0; i < d; ++i)
      convert_to_f32(static_cast<const char*>(w.data) + i * w.stride[0] * static_cast<int64_t>(es), w.dtype,
                     &wf[static_cast<size_t>(i)], 1);
  const Eigen::Map<const Eigen::ArrayXf> W(wf.data(), d);

#pragma omp parallel for schedule(static) if (rows * d >= (1 << 15) && rows > 1)
  for (int64_t r = 0; r < rows; ++r) {
    Eigen::Map<const Eigen::ArrayXf> X(x.ptr<float>() + row_offset(x, r), d);
    Eigen::Map<Eigen::ArrayXf> Y(y.ptr<float>() + row_offset(y, r), d);
    const float ms = X.square().sum() / static_cast<float>(d);
    const float inv = 1.f / std::sqrt(ms + eps);
    Y = (X * inv) * W;  // reads X[i] before writing Y[i]: y may alias x
  }
}

}  // namespace rt::cpu
