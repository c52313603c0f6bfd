// The compute a plugin may call on the active device. One Ops object per device backend
// (backends/cpu, backends/cuda); plugins never touch device memory any other way.
//
// Conventions, shared by every backend:
//  - activations are row-major [rows, features]; attention tensors are [T, heads, head_dim];
//  - weights follow PyTorch's nn.Linear layout: W is [out, in], so y = x W^T + b;
//  - accumulation is fp32; CPU backends compute in fp32 throughout.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include "rt/sdk/tensor.h"

namespace rt {

// Which keys a query may see. Query row i sits at position q_pos0 + i, key row j at k_pos0 + j.
// Causal: key position <= query position. Window W > 0: additionally key position > query
// position - W (W keys including the query itself; HF `sliding_window`, cuDNN left bound).
struct AttentionSpec {
  bool causal = true;
  int64_t window = 0;  // 0: no window
  int64_t q_pos0 = 0;
  int64_t k_pos0 = 0;
  float scale = 0.f;  // 0: 1/sqrt(head_dim)
};

class Ops {
 public:
  virtual ~Ops() = default;
  virtual Device device() const = 0;
  // The dtype of activations and weights on this device: F32 on the CPU backend (the reference),
  // BF16 on CUDA. The residual stream and logits stay F32 everywhere; ops accept activations
  // of this dtype or F32 and accumulate in fp32.
  virtual DType activation_dtype() const { return DType::F32; }
  // What to print in reports, e.g. "NVIDIA H100 80GB HBM3".
  virtual std::string description() const { return device_name(device()); }
  // Waits for queued device work (a no-op on the CPU), e.g. before reading a timer.
  virtual void synchronize() {}
  // Device memory held by tensors now and at most since the last reset (0 where untracked).
  struct MemoryStats {
    size_t in_use = 0;
    size_t peak = 0;
  };
  virtual MemoryStats memory_stats() { return {}; }
  virtual void reset_peak_memory() {}

  // Uninitialized device memory, freed when the last Tensor holding it goes away.
  virtual Tensor alloc(DType dtype, std::initializer_list<int64_t> shape) = 0;
  // dst = src, converting dtype when they differ (f32/bf16/f16). Shapes must match. Either side
  // may be a CPU view on a device backend (upload/download).
  virtual void copy(TensorView src, TensorView dst) = 0;
  virtual void fill(TensorView dst, float value) = 0;

  // out[t, :] = table[ids[t], :]; ids are I32 on the same device (or CPU for a CPU backend).
  virtual void embedding(TensorView table, TensorView ids, TensorView out) = 0;
  // y = x W^T (+ b). x [N, in], W [out, in], b [out] or data == nullptr, y [N, out].
  virtual void linear(TensorView x, TensorView w, TensorView bias, TensorView y) = 0;
  // y = w * x / sqrt(mean(x^2) + eps), row-wise over the last dimension, in fp32.
  virtual void rmsnorm(TensorView x, TensorView w, float eps, TensorView y) = 0;
  // In-place rotary embedding, rotate-half convention, on x [T, H, D]; row t has position pos0 + t.
  virtual void rope(TensorView x, int64_t pos0, double theta) = 0;
  // o [Tq, Hq, D] = softmax(q k^T * scale + mask) v, with q [Tq, Hq, D] and k, v [Tk, Hkv, D];
  // query head h reads KV head h / (Hq / Hkv) (grouped-query attention, no K/V copies).
  virtual void attention(TensorView q, TensorView k, TensorView v, TensorView o,
                         const AttentionSpec& spec) = 0;
  // Which implementation ran the last attention call (backends with several, e.g. "flash" or
  // "cudnn" on CUDA), for reports.
  virtual const char* last_attention_impl() const { return "reference"; }
  // out = a + b (elementwise, same shape). out may alias a or b.
  virtual void add(TensorView a, TensorView b, TensorView out) = 0;
  // out = silu(gate) * up (elementwise).
  virtual void swiglu(TensorView gate, TensorView up, TensorView out) = 0;

  // Index of the largest element of the last row of f32 x ([V] or [rows, V]); the first one on
  // ties. Greedy sampling. Device backends override it to avoid copying the row to the host.
  virtual int64_t argmax(TensorView x) {
    const int64_t V = x.shape[x.ndim - 1];
    TensorView row = x.ndim == 1 ? x : x.rows(x.shape[0] - 1, x.shape[0]);
    std::vector<float> host(static_cast<size_t>(V));
    copy(row, x.ndim == 1 ? TensorView::contiguous(host.data(), DType::F32, Device::CPU, {V})
                          : TensorView::contiguous(host.data(), DType::F32, Device::CPU, {1, V}));
    int64_t best = 0;
    for (int64_t i = 1; i < V; ++i)
      if (host[i] > host[best]) best = i;
    return best;
  }
};

}  // namespace rt
