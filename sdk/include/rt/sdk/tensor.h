// Tensors as plugins see them: a non-owning view (TensorView) and an owning handle (Tensor).
// Part of the plugin SDK: only the standard library may be included here.
#pragma once

#include <array>
#include <cstddef>
#include <cstdint>
#include <initializer_list>
#include <memory>
#include <stdexcept>
#include <string>

namespace rt {

enum class DType : int32_t { F32 = 0, BF16 = 1, F16 = 2, I32 = 3, U8 = 4, F64 = 5 };
enum class Device : int32_t { CPU = 0, CUDA = 1 };

inline constexpr size_t dtype_size(DType t) {
  switch (t) {
    case DType::F32: return 4;
    case DType::BF16: return 2;
    case DType::F16: return 2;
    case DType::I32: return 4;
    case DType::U8: return 1;
    case DType::F64: return 8;
  }
  return 0;
}
inline const char* dtype_name(DType t) {
  switch (t) {
    case DType::F32: return "f32";
    case DType::BF16: return "bf16";
    case DType::F16: return "f16";
    case DType::I32: return "i32";
    case DType::U8: return "u8";
    case DType::F64: return "f64";
  }
  return "?";
}
inline const char* device_name(Device d) { return d == Device::CPU ? "cpu" : "cuda"; }

// A strided view of memory the caller owns. Shapes have at most kMaxDims dimensions; strides are
// in elements. Views are passed by value; they never free anything.
struct TensorView {
  static constexpr int kMaxDims = 4;
  void* data = nullptr;
  DType dtype = DType::F32;
  Device device = Device::CPU;
  int ndim = 0;
  std::array<int64_t, kMaxDims> shape{};
  std::array<int64_t, kMaxDims> stride{};

  static TensorView contiguous(void* data, DType dtype, Device device,
                               std::initializer_list<int64_t> dims) {
    if (dims.size() > kMaxDims) throw std::invalid_argument("TensorView: too many dimensions");
    TensorView v;
    v.data = data;
    v.dtype = dtype;
    v.device = device;
    v.ndim = static_cast<int>(dims.size());
    int i = 0;
    for (int64_t d : dims) v.shape[i++] = d;
    int64_t s = 1;
    for (int j = v.ndim - 1; j >= 0; --j) {
      v.stride[j] = s;
      s *= v.shape[j];
    }
    return v;
  }

  int64_t numel() const {
    int64_t n = 1;
    for (int i = 0; i < ndim; ++i) n *= shape[i];
    return n;
  }
  size_t nbytes() const { return static_cast<size_t>(numel()) * dtype_size(dtype); }
  bool is_contiguous() const {
    int64_t s = 1;
    for (int j = ndim - 1; j >= 0; --j) {
      if (shape[j] != 1 && stride[j] != s) return false;
      s *= shape[j];
    }
    return true;
  }
  template <typename T>
  T* ptr() const { return static_cast<T*>(data); }

  // Rows [begin, end) of the leading dimension, same layout otherwise.
  TensorView rows(int64_t begin, int64_t end) const {
    if (ndim < 1 || begin < 0 || end > shape[0] || begin > end)
      throw std::out_of_range("TensorView::rows: range out of bounds");
    TensorView v = *this;
    v.data = static_cast<char*>(data) + begin * stride[0] * static_cast<int64_t>(dtype_size(dtype));
    v.shape[0] = end - begin;
    return v;
  }
  // Entries [begin, end) of the last dimension (a column slice), same layout otherwise.
  TensorView cols(int64_t begin, int64_t end) const {
    if (ndim < 1 || begin < 0 || end > shape[ndim - 1] || begin > end)
      throw std::out_of_range("TensorView::cols: range out of bounds");
    TensorView v = *this;
    v.data = static_cast<char*>(data) + begin * stride[ndim - 1] * static_cast<int64_t>(dtype_size(dtype));
    v.shape[ndim - 1] = end - begin;
    return v;
  }
  // Same memory, new contiguous shape with the same element count.
  TensorView reshaped(std::initializer_list<int64_t> dims) const {
    if (!is_contiguous()) throw std::invalid_argument("TensorView::reshaped: view is not contiguous");
    TensorView v = contiguous(data, dtype, device, dims);
    if (v.numel() != numel()) throw std::invalid_argument("TensorView::reshaped: element count differs");
    return v;
  }
  std::string shape_str() const {
    std::string s = "[";
    for (int i = 0; i < ndim; ++i) s += (i ? ", " : "") + std::to_string(shape[i]);
    return s + "]";
  }
};

// parts stacked along dimension 0, as one view, when they are consecutive rows of one buffer
// (same dtype, device, trailing shape and strides, each starting where the previous one ends);
// an empty view otherwise. The runtime stores q/k/v and gate/up weights this way so that one
// GEMM computes them all.
inline TensorView stacked_rows(std::initializer_list<TensorView> parts) {
  if (parts.size() == 0) return {};
  const TensorView& first = *parts.begin();
  if (first.data == nullptr || first.ndim < 1) return {};
  TensorView all = first;
  for (auto it = parts.begin() + 1; it != parts.end(); ++it) {
    const TensorView& p = *it;
    const char* next = static_cast<const char*>(all.data) +
                       all.shape[0] * all.stride[0] * static_cast<int64_t>(dtype_size(all.dtype));
    if (p.data != next || p.dtype != all.dtype || p.device != all.device || p.ndim != all.ndim ||
        p.stride[0] != all.stride[0])
      return {};
    for (int i = 1; i < p.ndim; ++i)
      if (p.shape[i] != all.shape[i] || p.stride[i] != all.stride[i]) return {};
    all.shape[0] += p.shape[0];
  }
  return all;
}

// True when two views may share an element (e.g. an op's output overlapping an input). Byte
// ranges decide, except that views with equal strides whose rows interleave without touching
// (q, k and v as column slices of one fused QKV buffer) are recognized as disjoint.
inline bool views_overlap(const TensorView& a, const TensorView& b) {
  if (a.numel() == 0 || b.numel() == 0) return false;
  auto span = [](const TensorView& v) {  // elements from the first to the last one, inclusive
    int64_t last = 0;
    for (int i = 0; i < v.ndim; ++i) last += (v.shape[i] - 1) * (v.stride[i] < 0 ? -v.stride[i] : v.stride[i]);
    return last + 1;
  };
  const char* pa = static_cast<const char*>(a.data);
  const char* pb = static_cast<const char*>(b.data);
  const int64_t ea = static_cast<int64_t>(dtype_size(a.dtype)), eb = static_cast<int64_t>(dtype_size(b.dtype));
  if (!(pa < pb + span(b) * eb && pb < pa + span(a) * ea)) return false;
  if (a.dtype != b.dtype || a.ndim != b.ndim || a.ndim < 2 || a.stride != b.stride || a.stride[0] <= 0) return true;
  const int64_t delta_bytes = pb - pa;
  if (delta_bytes % ea != 0) return true;
  // Per row of stride s0, a covers columns [0, inner_a) and b covers [r, r + inner_b).
  auto inner = [](const TensorView& v) {
    int64_t last = 0;
    for (int i = 1; i < v.ndim; ++i) last += (v.shape[i] - 1) * v.stride[i];
    return last + 1;
  };
  const int64_t s0 = a.stride[0], ia = inner(a), ib = inner(b);
  for (int i = 1; i < a.ndim; ++i)
    if (a.stride[i] < 0) return true;
  if (ia > s0 || ib > s0) return true;
  const int64_t r = ((delta_bytes / ea) % s0 + s0) % s0;
  return !(r >= ia && r + ib <= s0);
}

// An owning tensor: a view plus shared ownership of its storage. Storage is freed by whichever
// allocator made it (the deleter travels with the shared_ptr), so tensors may cross the plugin
// boundary freely.
struct Tensor {
  TensorView view;
  std::shared_ptr<void> storage;

  bool defined() const { return view.data != nullptr || view.numel() == 0; }
  operator TensorView() const { return view; }
  template <typename T>
  T* ptr() const { return view.ptr<T>(); }
};

}  // namespace rt
