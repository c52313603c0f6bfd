// The compute a plugin may call on the active device. One Ops object per device backend
// (backends/cpu, backends/cuda); plugins never touch device memory any other way.
//
// Conventions, shared by every backend:
//  - activations are row-major [rows, features]; attention tensors are [T, heads, head_dim];
//  - weights follow PyTorch's nn.Linear layout: W is [out, in], so y = x W^T + b;
//  - accumulation is fp32; CPU backends compute in fp32 throughout.
#pragma once

#include <algorithm>
#include <climits>
#include <cstdint>
#include <functional>
#include <memory>
#include <string>
#include <vector>

#include "rt/sdk/error.h"
#include "rt/sdk/position_hash.h"
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
  // Compute the naive way: the [Hq, Tq, Tk] scores materialized by GEMMs, a masked softmax, a
  // GEMM with V (and the same in the backward). Pure-PyTorch style, O(T^2) memory: l2a_dense uses
  // it as the slow reference that fused kernels are measured against. Same results either way.
  bool materialize = false;
  // Routed queries (L2A's global attention over the tokens its router picked). When q_index is
  // given, q (and o, lse, dout, dq) is a compact list of query rows: row i sits at position
  // q_pos0 + q_index[i]. q_index: I32 [>= Tq], strictly ascending positions, on the op's device;
  // q_count: I32 [1] on the op's device, how many rows are active (clamped to [0, Tq]). Both stay in
  // device memory, so routing needs no host synchronization. Rows at or past the count are
  // inactive: the forward writes o = 0 and lse = +inf there (nothing with inactive_unwritten,
  // below), the backward dq = 0, and they add nothing to dk, dv. Keys stay dense (row j of k, v at
  // k_pos0 + j).
  TensorView q_index;
  TensorView q_count;
  // Routed forward only (the backward refuses both). q_indexed: q holds every row of the call
  // ([Tq, Hq, D], shaped like o) and routed row i reads q row q_index[i] (each < Tq), so the caller
  // needs no gather before the call; o and lse stay compact. inactive_unwritten: rows at or past
  // the count are not written (o and lse keep what they held), for a caller that reads only the
  // first count rows (L2A's parallel-layout prefill: at 80% sparsity the zeros were 4/5 of o).
  bool q_indexed = false;
  bool inactive_unwritten = false;
  bool routed() const { return q_index.data != nullptr; }
  // Refuses the routed options without routed queries (a dense path would ignore them) and, in a
  // backward, the forward-only ones. Every backend's attention entry points call it.
  void check_routed_options(const char* op, bool backward) const {
    RT_CHECK(routed() || (!q_indexed && !inactive_unwritten), op,
             ": 'q_indexed' and 'inactive_unwritten' apply to routed queries only; 'q_index' is not given");
    RT_CHECK(!backward || (!q_indexed && !inactive_unwritten), op,
             ": 'q_indexed' and 'inactive_unwritten' are forward-only options (the backward reads a compact q and "
             "writes every row of dq)");
  }
};

class Ops {
 public:
  virtual ~Ops() = default;
  virtual Device device() const = 0;
  // The dtype of activations and weights on this device: F32 on the CPU backend (the reference),
  // BF16 on CUDA. The residual stream and logits stay F32 everywhere; ops accept activations
  // of this dtype or F32 and accumulate in fp32.
  virtual DType activation_dtype() const { return DType::F32; }
  // The dtype of the residual stream, logits, losses, parameter gradients and optimizer state:
  // F32, or F64 on a CPU backend made for finite-difference gradient checks (make_cpu_ops(F64),
  // where activation_dtype() is F64 too).
  virtual DType accum_dtype() const { return DType::F32; }
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
  // rmsnorm, with x copied into x_copy on the way (same shape and dtype): a training sublayer keeps
  // its input for the backward, and this reads x once instead of twice (a copy, then the norm).
  virtual void rmsnorm_keep_input(TensorView x, TensorView w, float eps, TensorView y, TensorView x_copy) {
    RT_CHECK(x_copy.dtype == x.dtype && x_copy.ndim == x.ndim &&
                 std::equal(x.shape.begin(), x.shape.begin() + x.ndim, x_copy.shape.begin()),
             "rmsnorm_keep_input: argument 'x_copy' must match x (", dtype_name(x.dtype), " ", x.shape_str(),
             "), found ", dtype_name(x_copy.dtype), " ", x_copy.shape_str());
    copy(x, x_copy);
    rmsnorm(x, w, eps, y);
  }
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

  // ---- Fused forward steps. Each default is the composition it replaces, so a backend that does
  // not fuse is still correct; the CUDA backend overrides them to save launches and passes. ----

  // y += x W^T, no bias: a projection added straight into the residual stream y (which may have
  // a wider dtype than x, e.g. f32 residual and bf16 activations). CUDA runs it as one GEMM with
  // beta = 1, so the residual add costs no kernel of its own.
  // x [N, in], W [out, in], y [N, out].
  virtual void linear_accumulate(TensorView x, TensorView w, TensorView y) {
    RT_CHECK(y.ndim == 2, "linear_accumulate: argument 'y' must be 2-D [N, out], found shape ", y.shape_str());
    Tensor t = alloc(y.dtype, {y.shape[0], y.shape[1]});
    linear(x, w, TensorView{}, t);
    add(y, t, y);
  }
  // The output of one fused QKV projection, qkv [T, (Hq + 2 Hkv) D] (q | k | v columns), split
  // into q [T, Hq, D], k, v [T, Hkv, D] (any row/head strides: k and v may be KV-cache rows),
  // with rotary embedding at positions pos0.. applied to q and k on the way.
  virtual void qkv_rope_split(TensorView qkv, int64_t pos0, double theta, TensorView q, TensorView k,
                              TensorView v) {
    RT_CHECK(qkv.ndim == 2 && q.ndim == 3 && k.ndim == 3 && v.ndim == 3 && qkv.stride[1] == 1,
             "qkv_rope_split: expected qkv [T, n] with unit column stride and q, k, v [T, H, D], found ",
             qkv.shape_str(), ", ", q.shape_str(), ", ", k.shape_str(), ", ", v.shape_str());
    const int64_t nq = q.shape[1] * q.shape[2], nk = k.shape[1] * k.shape[2], nv = v.shape[1] * v.shape[2];
    RT_CHECK(qkv.shape[1] == nq + nk + nv, "qkv_rope_split: qkv has ", qkv.shape[1], " columns; q, k, v need ",
             nq + nk + nv);
    copy(qkv_heads(qkv, 0, q), q);
    copy(qkv_heads(qkv, nq, k), k);
    copy(qkv_heads(qkv, nq + nk, v), v);
    rope(q, pos0, theta);
    rope(k, pos0, theta);
  }
  // Columns c0.. of qkv [T, n] seen as [T, H, D] with like's H and D.
  static TensorView qkv_heads(TensorView qkv, int64_t c0, const TensorView& like) {
    TensorView s = qkv.cols(c0, c0 + like.shape[1] * like.shape[2]);
    s.ndim = 3;
    s.shape = {qkv.shape[0], like.shape[1], like.shape[2], 0};
    s.stride = {qkv.stride[0], like.shape[2], 1, 0};
    return s;
  }

  // ---- Decode at a position held in device memory. ---------------------------------------------
  // A decode step made of these ops (and the position-free ones above) queues the same kernels
  // with the same arguments at every position, so it can be captured once and replayed (capture()
  // below). pos: I32 [1] on this device, the position of the token being decoded. The KV cache
  // k_cache, v_cache [capacity, Hkv, D] keeps position p in row p, or in row p % ring when it is a
  // ring buffer of `ring` rows (ring > 0). The defaults read pos back to the host and call the
  // host-position ops: correct anywhere, but not capturable.

  // qkv_rope_split of one token, qkv [1, n], at position pos: q [1, Hq, D] is written, k and v go
  // into the cache's row for pos.
  virtual void qkv_rope_split_at(TensorView qkv, TensorView pos, double theta, TensorView q, TensorView k_cache,
                                 TensorView v_cache, int64_t ring) {
    const int64_t p = read_position(pos);
    const int64_t row = ring > 0 ? p % ring : p;
    RT_CHECK(row < k_cache.shape[0], "qkv_rope_split_at: position ", p, " is past the KV cache (", k_cache.shape[0],
             " rows)");
    qkv_rope_split(qkv, p, theta, q, k_cache.rows(row, row + 1), v_cache.rows(row, row + 1));
  }
  // o [1, Hq, D] = attention of q [1, Hq, D] at position pos against the cache, once the row for
  // pos is written. A full cache (ring = 0): the keys at positions <= pos, and > pos - spec.window
  // when spec.window > 0. A ring: every filled row, min(pos + 1, ring) of them, which are exactly
  // the window's keys when ring == spec.window (required). spec.q_pos0 and k_pos0 are ignored.
  virtual void decode_attention_at(TensorView q, TensorView k_cache, TensorView v_cache, int64_t ring, TensorView pos,
                                   const AttentionSpec& spec, TensorView o) {
    RT_CHECK(spec.causal && (ring == 0 || ring == spec.window), "decode_attention_at: needs a causal spec and a ring ",
             "of exactly the window's size; found ring ", ring, ", window ", spec.window);
    const int64_t p = read_position(pos);
    const int64_t n = ring > 0 ? std::min(p + 1, ring) : p + 1;
    RT_CHECK(n <= k_cache.shape[0], "decode_attention_at: position ", p, " is past the KV cache (", k_cache.shape[0],
             " rows)");
    AttentionSpec s = spec;
    s.q_pos0 = p;
    s.k_pos0 = 0;
    if (ring > 0) {  // ring rows are slots, not positions: all of them are visible
      s.causal = false;
      s.window = 0;
    }
    attention(q, k_cache.rows(0, n), v_cache.rows(0, n), o, s);
  }
  // decode_attention_at when gate[0] != 0; o = 0 when gate[0] == 0, reading no key. gate [1] in
  // the accum dtype, on this device. A routed decode step (L2A) passes its router's decision, so
  // an unrouted token skips its global attention inside a replayed graph: the kernels read the
  // gate and exit early, and the launch stays the same at every step. Any other gate value, NaN
  // included, runs the attention (the caller scales by the gate).
  virtual void decode_attention_gated_at(TensorView q, TensorView k_cache, TensorView v_cache, int64_t ring,
                                         TensorView pos, TensorView gate, const AttentionSpec& spec, TensorView o) {
    RT_CHECK(gate.numel() == 1 && gate.dtype == accum_dtype(), "decode_attention_gated_at: gate must be [1] ",
             dtype_name(accum_dtype()), ", found ", dtype_name(gate.dtype), " ", gate.shape_str());
    float g = 0.f;
    copy(gate, TensorView::contiguous(&g, DType::F32, Device::CPU, {1}));
    if (g == 0.f) {
      fill(o, 0.f);
      return;
    }
    decode_attention_at(q, k_cache, v_cache, ring, pos, spec, o);
  }
  // out[0] (=) gate[0] if the position in pos is >= first, else 0; gate and out [1] in the accum
  // dtype (they may alias). What a decode step uses for a position-dependent decision, e.g. L2A's
  // force_local (no global attention before the window is full).
  virtual void gate_from_position_at(TensorView pos, int64_t first, TensorView gate, TensorView out) {
    if (read_position(pos) >= first) {
      if (gate.data != out.data) copy(gate, out);
    } else {
      fill(out, 0.f);
    }
  }
  // One decode token's routing decision by a linear threshold router, as one op (a decode step is
  // bound by its launch count): y (=) rmsnorm(x) * g in y's dtype; z = y . w[0, :] in the accum
  // dtype, over y as stored; d[0] (=) 1 if z >= z_min and the position in pos is >= first, else 0
  // (first = 0: any position); steps[0] += d[0] unless steps is empty. x [1, hidden], g [hidden],
  // w [1, hidden], y [1, hidden], d and steps [1] in the accum dtype, pos I32 [1] on this device.
  // A NaN z decides 0, as step does. The default composes rmsnorm, linear, step and
  // gate_from_position_at; a device backend runs it as one kernel.
  virtual void rmsnorm_route_at(TensorView x, TensorView g, float eps, TensorView w, float z_min, TensorView pos,
                                int64_t first, TensorView y, TensorView d, TensorView steps) {
    RT_CHECK(x.ndim == 2 && x.shape[0] == 1 && w.ndim == 2 && w.shape[0] == 1 && w.shape[1] == x.shape[1] &&
                 d.numel() == 1 && d.dtype == accum_dtype() && (!steps.data || steps.numel() == 1),
             "rmsnorm_route_at: expected x [1, hidden], w [1, hidden], d and steps [1] ", dtype_name(accum_dtype()),
             "; found x ", x.shape_str(), ", w ", w.shape_str(), ", d ", dtype_name(d.dtype), " ", d.shape_str());
    rmsnorm(x, g, eps, y);
    Tensor z = alloc(accum_dtype(), {1, 1});
    linear(y, w, TensorView{}, z);
    step(z.view.reshaped({1}), z_min, d);
    if (first > 0) gate_from_position_at(pos, first, d, d);
    if (steps.data) add(steps, d, steps);
  }
  // out[0] = 1 if rt::position_draw(key, position in pos, below), else 0; out [1] in the accum dtype.
  // A random routing decision at a device-held position (fixed_rate's decode step), the same bit
  // as the router's forward draws on the host.
  virtual void position_draw_at(TensorView pos, uint64_t key, double below, TensorView out) {
    const float v = position_draw(key, read_position(pos), below) ? 1.f : 0.f;
    copy(TensorView::contiguous(const_cast<float*>(&v), DType::F32, Device::CPU, {1}), out);
  }
  // out[i] = 1 if rt::position_draw(key, pos0 + i, below), else 0, for every i of out [T] (accum
  // dtype): fixed_rate's random decisions for a whole sequence, drawn where out lives (on a GPU:
  // no host loop, no upload, no synchronization in the layer).
  virtual void position_draw_rows(int64_t pos0, uint64_t key, double below, TensorView out) {
    RT_CHECK(out.ndim == 1 && out.dtype == accum_dtype() && pos0 >= 0, "position_draw_rows: expected out [T] ",
             dtype_name(accum_dtype()), " and pos0 >= 0; found out ", dtype_name(out.dtype), " ", out.shape_str(),
             ", pos0 ", pos0);
    std::vector<float> v(static_cast<size_t>(out.shape[0]));
    for (size_t i = 0; i < v.size(); ++i) v[i] = position_draw(key, pos0 + static_cast<int64_t>(i), below) ? 1.f : 0.f;
    copy(TensorView::contiguous(v.data(), DType::F32, Device::CPU, {out.shape[0]}), out);
  }
  // The position in pos (I32 [1], on this device), on the host.
  int64_t read_position(TensorView pos) {
    RT_CHECK(pos.dtype == DType::I32 && pos.numel() == 1, "decode position: expected I32 [1], found ",
             dtype_name(pos.dtype), " ", pos.shape_str());
    int32_t p = -1;
    copy(pos, TensorView::contiguous(&p, DType::I32, Device::CPU, {1}));
    RT_CHECK(p >= 0, "decode position: found ", p, ", expected >= 0");
    return p;
  }

  // ---- Routed rows (L2A). A routed layer compacts its router's decisions into an index list and
  // a count held in device memory, runs its global projections and attention on those rows only,
  // and adds the result back into the residual. index [cap] and count [1] are I32 on this device;
  // rows at or past the count are not active. The defaults read the count and index back to the
  // host (correct anywhere, not capturable); device backends override them.

  // index[0..n) (=) the t with flags[t] != 0, ascending; count[0] (=) n; index[n..) (=) 0.
  // flags [T] (accum dtype, e.g. the router's hard decisions d), index [T] I32, count [1] I32.
  virtual void compact_rows(TensorView flags, TensorView index, TensorView count) {
    RT_CHECK(flags.ndim == 1 && index.ndim == 1 && index.shape[0] == flags.shape[0] && index.dtype == DType::I32 &&
                 count.dtype == DType::I32 && count.numel() == 1,
             "compact_rows: expected flags [T], index I32 [T], count I32 [1]; found ", flags.shape_str(), ", ",
             dtype_name(index.dtype), " ", index.shape_str(), ", ", dtype_name(count.dtype), " ", count.shape_str());
    const int64_t T = flags.shape[0];
    std::vector<float> f(static_cast<size_t>(T));
    if (T > 0) copy(flags, TensorView::contiguous(f.data(), DType::F32, Device::CPU, {T}));
    std::vector<int32_t> idx(static_cast<size_t>(T), 0);
    int32_t n = 0;
    for (int64_t t = 0; t < T; ++t)
      if (f[static_cast<size_t>(t)] != 0.f) idx[static_cast<size_t>(n++)] = static_cast<int32_t>(t);
    if (T > 0) copy(TensorView::contiguous(idx.data(), DType::I32, Device::CPU, {T}), index);
    copy(TensorView::contiguous(&n, DType::I32, Device::CPU, {1}), count);
  }
  // out[i, :] (=) x[index[i], :] for i < count, 0 for the rows past it. x [T, C], out [cap, C].
  virtual void gather_rows(TensorView x, TensorView index, TensorView count, TensorView out) {
    check_routed_rows("gather_rows", out, index, count);
    const std::vector<int32_t> idx = read_routed_index(index.rows(0, out.shape[0]), count, x.shape[0], "gather_rows");
    const int64_t n = static_cast<int64_t>(idx.size());
    for (int64_t i = 0; i < n; ++i) copy(x.rows(idx[static_cast<size_t>(i)], idx[static_cast<size_t>(i)] + 1), out.rows(i, i + 1));
    if (n < out.shape[0]) fill(out.rows(n, out.shape[0]), 0.f);
  }
  // dst[index[i], :] += src[i, :] for i < count (the indices are distinct, so the order is fixed).
  // src [cap, C] (any dtype), dst [T, C].
  virtual void scatter_add_rows(TensorView src, TensorView index, TensorView count, TensorView dst) {
    check_routed_rows("scatter_add_rows", src, index, count);
    const std::vector<int32_t> idx =
        read_routed_index(index.rows(0, src.shape[0]), count, dst.shape[0], "scatter_add_rows");
    for (size_t i = 0; i < idx.size(); ++i) {
      const TensorView d = dst.rows(idx[i], idx[i] + 1);
      add(d, src.rows(static_cast<int64_t>(i), static_cast<int64_t>(i) + 1), d);
    }
  }
  // out[index[i]] += sum_c a[i, c] * b[i, c] for i < count: a routed row's dot product (the L2A
  // gate's gradient) read over the active rows only and added at its position. a and b [cap, C],
  // out [T]; out's other entries are left as they are.
  virtual void row_dot_rows(TensorView a, TensorView b, TensorView index, TensorView count, TensorView out) {
    check_routed_rows("row_dot_rows", a, index, count);
    RT_CHECK(out.ndim == 1, "row_dot_rows: argument 'out' must be [T], found ", out.shape_str());
    const std::vector<int32_t> idx = read_routed_index(index.rows(0, a.shape[0]), count, out.shape[0], "row_dot_rows");
    for (size_t i = 0; i < idx.size(); ++i) {
      const auto r = static_cast<int64_t>(i);
      row_dot(a.rows(r, r + 1), b.rows(r, r + 1), out.rows(idx[i], idx[i] + 1), /*accumulate=*/true);
    }
  }
  // rope (or its backward, the rotation by minus the angle) on x [cap, H, D] where row i sits at
  // position pos0 + index[i]; rows past the count are left as they are.
  virtual void rope_rows(TensorView x, TensorView index, TensorView count, int64_t pos0, double theta, bool backward) {
    check_routed_rows("rope_rows", x, index, count);
    const std::vector<int32_t> idx = read_routed_index(index.rows(0, x.shape[0]), count, INT32_MAX, "rope_rows");
    for (size_t i = 0; i < idx.size(); ++i) {
      const TensorView r = x.rows(static_cast<int64_t>(i), static_cast<int64_t>(i) + 1);
      if (backward) rope_backward(r, pos0 + idx[i], theta);
      else rope(r, pos0 + idx[i], theta);
    }
  }
  // The active prefix of a routed index list on the host (the count clamped to [0, index entries];
  // callers pass the index cut to the rows they touch), each entry checked to be in [0, limit) and
  // ascending.
  std::vector<int32_t> read_routed_index(TensorView index, TensorView count, int64_t limit, const char* op) {
    int32_t n = 0;
    copy(count, TensorView::contiguous(&n, DType::I32, Device::CPU, {1}));
    n = std::clamp<int32_t>(n, 0, static_cast<int32_t>(index.shape[0]));
    std::vector<int32_t> idx(static_cast<size_t>(n));
    if (n > 0) copy(index.rows(0, n), TensorView::contiguous(idx.data(), DType::I32, Device::CPU, {n}));
    for (int32_t i = 0; i < n; ++i)
      RT_CHECK(idx[static_cast<size_t>(i)] >= 0 && idx[static_cast<size_t>(i)] < limit &&
                   (i == 0 || idx[static_cast<size_t>(i)] > idx[static_cast<size_t>(i - 1)]),
               op, ": routed index ", i, " is ", idx[static_cast<size_t>(i)], "; expected ascending values in [0, ",
               limit, ")");
    return idx;
  }
  static void check_routed_rows(const char* op, const TensorView& rows, const TensorView& index,
                                const TensorView& count) {
    RT_CHECK(index.dtype == DType::I32 && index.ndim == 1 && count.dtype == DType::I32 && count.numel() == 1, op,
             ": expected index I32 [cap] and count I32 [1], found ", dtype_name(index.dtype), " ", index.shape_str(),
             " and ", dtype_name(count.dtype), " ", count.shape_str());
    RT_CHECK(rows.ndim >= 1 && rows.shape[0] <= index.shape[0], op, ": ", rows.shape_str(), " has more rows than the index (",
             index.shape[0], ")");
  }

  // Recorded device work, run again by replay() with the arguments it was recorded with.
  class CapturedWork {
   public:
    virtual ~CapturedWork() = default;
    virtual void replay() = 0;
  };
  // Records the device work that `work` queues, without running it (a CUDA graph). Pointers and
  // values are fixed at capture: what changes between replays must be read from device memory, as
  // the *_at ops above do. Temporaries that `work` allocates and frees belong to the recording.
  // `work` must not wait for the device or read device memory back to the host. Returns nullptr
  // where the backend cannot capture (the CPU): then nothing was recorded or run.
  virtual std::unique_ptr<CapturedWork> capture(const std::function<void()>& work) {
    (void)work;
    return nullptr;
  }

  // Runs `first` and `second`, two pieces of device work that neither read what the other writes,
  // where the backend can at the same time (CUDA: `second` queued on a second stream that starts
  // after the work queued before this call, and the work queued after it waits for both; no host
  // synchronization, and a capture records the fork and the join). One branch's kernels then fill
  // the SMs that the other's tail leaves idle (L2A: the window and the routed rows). Both may
  // allocate, and what they allocate may outlive the call; tensors from before the call must
  // outlive it. Elsewhere (the CPU) `first`, then `second`.
  virtual void concurrently(const std::function<void()>& first, const std::function<void()>& second) {
    first();
    second();
  }

  // ---- Training. Backward ops and the small elementwise ops routers and L2A need. -------------
  // Conventions: "+=" outputs accumulate into what is there (parameter gradients summed over
  // micro-batches and over the places a weight is used; residual-stream gradients); "=" outputs
  // are overwritten. An output passed as an empty view (data == nullptr, e.g. a frozen weight's
  // gradient) is not computed. Gradients of weights have accum_dtype(); activation gradients have
  // the dtype of the activation.

  // Attention forward that also writes lse [Hq, Tq] (accum dtype, contiguous): the log-sum-exp of each row's scaled, masked scores (+inf for a row that sees no
  // key), which attention_backward needs.
  virtual void attention_forward_lse(TensorView q, TensorView k, TensorView v, TensorView o, TensorView lse,
                                     const AttentionSpec& spec) = 0;
  // Given o, lse (from attention_forward_lse) and dout = dL/do: dq, dk, dv (=). dk, dv are summed
  // over the query heads that share a KV head.
  virtual void attention_backward(TensorView q, TensorView k, TensorView v, TensorView o, TensorView lse,
                                  TensorView dout, TensorView dq, TensorView dk, TensorView dv,
                                  const AttentionSpec& spec) = 0;
  // y = x W^T + b:  dx (= or += when accumulate_dx) dy W;  dw += dy^T x;  db += column sums of dy.
  virtual void linear_backward(TensorView x, TensorView w, TensorView dy, TensorView dx, TensorView dw,
                               TensorView db, bool accumulate_dx) = 0;
  // y = rmsnorm(x) * w:  dx += (dy through the norm);  dw += sum over rows of dy * x / rms(x).
  virtual void rmsnorm_backward(TensorView x, TensorView w, float eps, TensorView dy, TensorView dx,
                                TensorView dw) = 0;
  // The transpose of rope(x, pos0, theta), in place on dx [T, H, D] (rotation by minus the angle).
  virtual void rope_backward(TensorView dx, int64_t pos0, double theta) = 0;
  // out = silu(gate) * up:  dgate, dup (=). They may alias gate and up (in-place backward).
  virtual void swiglu_backward(TensorView gate, TensorView up, TensorView dout, TensorView dgate,
                               TensorView dup) = 0;
  // dtable[ids[t], :] += dout[t, :] (repeated ids sum).
  virtual void embedding_backward(TensorView ids, TensorView dout, TensorView dtable) = 0;
  // The language-model head fused with cross-entropy, never holding more than a chunk of the
  // [N, V] logits: for rows h [N, hidden] (activation dtype), lm_head w [V, hidden] and
  // targets [N] (I32; -100 = ignored row):
  //   losses[n] (=) logsumexp(h_n w^T) - (h_n w^T)[target_n]    (0 for ignored rows; accum dtype)
  //   with dh: dh (=) grad_scale * (softmax(h w^T) - onehot(target)) w   (0 rows where ignored)
  //   with dw: dw += grad_scale * (softmax - onehot)^T h
  //   with is_greedy ([N] I32): 1 where target_n is the first index of the largest logit of row n
  //     (the head's greedy choice: lm-eval's is_greedy), else 0; 0 for ignored rows
  virtual void lm_head_cross_entropy(TensorView h, TensorView w, TensorView targets, float grad_scale,
                                     TensorView losses, TensorView dh, TensorView dw,
                                     TensorView is_greedy = TensorView{}) = 0;

  // y (=) sigmoid(scale * x).
  virtual void sigmoid(TensorView x, float scale, TensorView y) = 0;
  // For y = sigmoid(scale * x): dx (=) dy * scale * y * (1 - y).
  virtual void sigmoid_backward(TensorView y, TensorView dy, float scale, TensorView dx) = 0;
  // y (=) 1 where x >= threshold, else 0.
  virtual void step(TensorView x, float threshold, TensorView y) = 0;
  // out[r, :] (=) s[r] * x[r, :], x [R, C], s [R]. out may alias x.
  virtual void row_scale(TensorView x, TensorView s, TensorView out) = 0;
  // out[r] (= or += when accumulate) sum_c a[r, c] * b[r, c], a and b [R, C], out [R].
  virtual void row_dot(TensorView a, TensorView b, TensorView out, bool accumulate) = 0;
  // out (=) alpha * x + beta * y, elementwise; out may alias x or y.
  virtual void axpby(float alpha, TensorView x, float beta, TensorView y, TensorView out) = 0;
  // out[0] += sum of x (power 1) or of x^2 (power 2) over every element; out is [1] accum dtype.
  virtual void reduce_sum(TensorView x, int power, TensorView out) = 0;

  // One AdamW step (torch.optim.AdamW semantics, decoupled weight decay, bias correction) on one
  // parameter. master, grad, m, v have accum dtype; param has the activation dtype and receives
  // the updated master rounded to it (param may be master itself: an empty param view then).
  //   g = grad * grad_scale;  m = b1 m + (1-b1) g;  v = b2 v + (1-b2) g^2
  //   master = master * (1 - lr wd) - lr * (m / (1-b1^t)) / (sqrt(v / (1-b2^t)) + eps)
  struct AdamW {
    float lr = 0.f, beta1 = 0.9f, beta2 = 0.999f, eps = 1e-8f, weight_decay = 0.f, grad_scale = 1.f;
    int64_t step = 1;  // t, 1-based
  };
  virtual void adamw_step(TensorView master, TensorView grad, TensorView m, TensorView v, TensorView param,
                          const AdamW& hp) = 0;

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
