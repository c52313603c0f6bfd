#include "cpu/cpu_ops.h"

#include <cstdlib>
#include <limits>

#include "cpu/check.h"
#include "cpu/convert.h"
#include "cpu/kernels.h"
#include "rt/sdk/error.h"

namespace rt {

CpuOps::CpuOps(DType compute) : compute_(compute) {
  RT_CHECK(compute == DType::F32 || compute == DType::F64, "make_cpu_ops: compute dtype must be f32 or f64, found ",
           dtype_name(compute));
}

std::string CpuOps::description() const { return compute_ == DType::F64 ? "cpu (f64)" : "cpu"; }

Tensor CpuOps::alloc(DType dtype, std::initializer_list<int64_t> shape) {
  RT_CHECK(shape.size() <= static_cast<size_t>(TensorView::kMaxDims), "alloc: at most ",
           TensorView::kMaxDims, " dimensions are supported, found ", shape.size());
  size_t count = 1;
  for (int64_t d : shape) {
    RT_CHECK(d >= 0, "alloc: dimensions must be >= 0, found ", d);
    RT_CHECK(d == 0 || count <= std::numeric_limits<size_t>::max() / 64 / static_cast<size_t>(d),
             "alloc: tensor size overflows");
    count *= static_cast<size_t>(d);
  }
  constexpr size_t kAlign = 64;
  const size_t bytes = count * dtype_size(dtype);
  // aligned_alloc wants a multiple of the alignment; never ask for 0 bytes so data is non-null.
  const size_t padded = bytes == 0 ? kAlign : (bytes + kAlign - 1) / kAlign * kAlign;
  void* p = std::aligned_alloc(kAlign, padded);
  if (!p) {
    TensorView shown = TensorView::contiguous(nullptr, dtype, Device::CPU, shape);
    fail("alloc: out of host memory allocating ", bytes, " bytes for a ", dtype_name(dtype), " tensor of shape ",
         shown.shape_str());
  }
  Tensor t;
  t.storage = std::shared_ptr<void>(p, [](void* q) { std::free(q); });
  t.view = TensorView::contiguous(p, dtype, Device::CPU, shape);
  return t;
}

void CpuOps::copy(TensorView src, TensorView dst) { cpu::copy_forward(src, dst); }
void CpuOps::fill(TensorView dst, float value) { cpu::fill_forward(dst, value); }
void CpuOps::embedding(TensorView table, TensorView ids, TensorView out) {
  cpu::embedding_forward(table, ids, out);
}
void CpuOps::linear(TensorView x, TensorView w, TensorView bias, TensorView y) {
  cpu::linear_forward(x, w, bias, y);
}
void CpuOps::rmsnorm(TensorView x, TensorView w, float eps, TensorView y) { cpu::rmsnorm_forward(x, w, eps, y); }
void CpuOps::rope(TensorView x, int64_t pos0, double theta) { cpu::rope_forward(x, pos0, theta); }
void CpuOps::attention(TensorView q, TensorView k, TensorView v, TensorView o, const AttentionSpec& spec) {
  cpu::attention_forward(q, k, v, o, spec);
}
void CpuOps::add(TensorView a, TensorView b, TensorView out) { cpu::add_forward(a, b, out); }
void CpuOps::swiglu(TensorView gate, TensorView up, TensorView out) { cpu::swiglu_forward(gate, up, out); }

void CpuOps::attention_forward_lse(TensorView q, TensorView k, TensorView v, TensorView o, TensorView lse,
                                   const AttentionSpec& spec) {
  cpu::attention_forward_lse(q, k, v, o, lse, spec);
}
void CpuOps::attention_backward(TensorView q, TensorView k, TensorView v, TensorView o, TensorView lse,
                                TensorView dout, TensorView dq, TensorView dk, TensorView dv,
                                const AttentionSpec& spec) {
  cpu::attention_backward(q, k, v, o, lse, dout, dq, dk, dv, spec);
}
void CpuOps::linear_backward(TensorView x, TensorView w, TensorView dy, TensorView dx, TensorView dw, TensorView db,
                             bool accumulate_dx) {
  cpu::linear_backward(x, w, dy, dx, dw, db, accumulate_dx);
}
void CpuOps::rmsnorm_backward(TensorView x, TensorView w, float eps, TensorView dy, TensorView dx, TensorView dw) {
  cpu::rmsnorm_backward(x, w, eps, dy, dx, dw);
}
void CpuOps::rope_backward(TensorView dx, int64_t pos0, double theta) { cpu::rope_backward(dx, pos0, theta); }
void CpuOps::swiglu_backward(TensorView gate, TensorView up, TensorView dout, TensorView dgate, TensorView dup) {
  cpu::swiglu_backward(gate, up, dout, dgate, dup);
}
void CpuOps::embedding_backward(TensorView ids, TensorView dout, TensorView dtable) {
  cpu::embedding_backward(ids, dout, dtable);
}
void CpuOps::lm_head_cross_entropy(TensorView h, TensorView w, TensorView targets, float grad_scale,
                                   TensorView losses, TensorView dh, TensorView dw, TensorView is_greedy) {
  cpu::lm_head_cross_entropy(h, w, targets, grad_scale, losses, dh, dw, is_greedy);
}
void CpuOps::sigmoid(TensorView x, float scale, TensorView y) { cpu::sigmoid_forward(x, scale, y); }
void CpuOps::sigmoid_backward(TensorView y, TensorView dy, float scale, TensorView dx) {
  cpu::sigmoid_backward(y, dy, scale, dx);
}
void CpuOps::step(TensorView x, float threshold, TensorView y) { cpu::step_forward(x, threshold, y); }
void CpuOps::row_scale(TensorView x, TensorView s, TensorView out) { cpu::row_scale_forward(x, s, out); }
void CpuOps::row_dot(TensorView a, TensorView b, TensorView out, bool accumulate) {
  cpu::row_dot_forward(a, b, out, accumulate);
}
void CpuOps::axpby(float alpha, TensorView x, float beta, TensorView y, TensorView out) {
  cpu::axpby_forward(alpha, x, beta, y, out);
}
void CpuOps::reduce_sum(TensorView x, int power, TensorView out) { cpu::reduce_sum_forward(x, power, out); }
void CpuOps::adamw_step(TensorView master, TensorView grad, TensorView m, TensorView v, TensorView param,
                        const AdamW& hp) {
  cpu::adamw_step(master, grad, m, v, param, hp);
}

int64_t CpuOps::argmax(TensorView x) {
  const char* op = "argmax";
  cpu::check_cpu(op, "x", x);
  cpu::check_float(op, "x", x);
  RT_CHECK(x.ndim == 1 || x.ndim == 2, "argmax: argument 'x' must be [V] or [rows, V], found shape ", x.shape_str());
  const int64_t V = x.shape[x.ndim - 1];
  RT_CHECK(V > 0 && (x.ndim == 1 || x.shape[0] > 0), "argmax: argument 'x' is empty, shape ", x.shape_str());
  const char* row = x.ndim == 1 ? static_cast<const char*>(x.data)
                                : cpu::elem_ptr(x, (x.shape[0] - 1) * x.stride[0]);
  const int64_t st = x.stride[x.ndim - 1];
  const size_t es = dtype_size(x.dtype);
  int64_t best = 0;
  double bv = cpu::load_d(row, x.dtype);
  for (int64_t i = 1; i < V; ++i) {
    const double vi = cpu::load_d(row + i * st * static_cast<int64_t>(es), x.dtype);
    if (vi > bv) {
      bv = vi;
      best = i;
    }
  }
  return best;
}

std::unique_ptr<Ops> make_cpu_ops(DType compute) { return std::make_unique<CpuOps>(compute); }

}  // namespace rt
