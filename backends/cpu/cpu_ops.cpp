#include "cpu/cpu_ops.h"

#include <cstdlib>
#include <limits>

#include "cpu/kernels.h"
#include "rt/sdk/error.h"

namespace rt {

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

std::unique_ptr<Ops> make_cpu_ops() { return std::make_unique<CpuOps>(); }

}  // namespace rt
