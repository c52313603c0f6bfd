// cuDNN SDPA backward through the cudnn-frontend graph API (Graph::sdpa_backward): argument
// checks, the graph cache, the launch. See cudnn_sdpa.h for the contract; the handle, cache,
// mask mapping and checks are shared with the forward through cudnn_common.h. Compiled in every
// CUDA build; the cuDNN part only with RT_HAVE_CUDNN_SDPA (backends/cuda/cudnn.cmake).
#include "cuda/attention/attention_backward.h"
#include "cuda/cudnn_sdpa/cudnn_sdpa.h"

#include <cstdint>
#include <string>

#include "rt/sdk/error.h"

#if defined(RT_HAVE_CUDNN_SDPA)
#include <array>
#include <memory>
#include <mutex>
#include <unordered_map>

#include "cuda/cudnn_sdpa/cudnn_common.h"
#include "cuda/memory.h"
#endif

namespace rt::cuda {

#if !defined(RT_HAVE_CUDNN_SDPA)

bool cudnn_sdpa_backward_supported(TensorView, TensorView, TensorView, const AttentionSpec&) noexcept { return false; }

void cudnn_sdpa_backward(TensorView, TensorView, TensorView, TensorView, TensorView, TensorView, TensorView, TensorView,
                         TensorView, const AttentionSpec&, cudaStream_t) {
  fail("cudnn_sdpa_backward: this build has no cuDNN SDPA (cudnn-frontend or cuDNN >= 9 not found at "
       "configure time; see backends/cuda/cudnn.cmake)");
}

#else  // RT_HAVE_CUDNN_SDPA

namespace {

using namespace cudnn_detail;

// Tensor uids.
constexpr int64_t kQ = 1, kK = 2, kV = 3, kO = 4, kStats = 5, kdO = 6, kdQ = 7, kdK = 8, kdV = 9;

// The nine tensors of a call, in this order everywhere (strides, checks, the variant pack).
enum Arg { Q, K, V, O, LSE, DO, DQ, DK, DV, kArgs };
constexpr const char* kArgNames[kArgs] = {"q", "k", "v", "o", "lse", "dout", "dq", "dk", "dv"};
constexpr bool kKvShaped[kArgs] = {false, true, true, false, false, false, false, true, true};

// Everything a backward graph depends on. s: (row, head) strides in elements of the bf16 tensors
// in Arg order (the lse slots unused: always [Hq, Tq] packed).
struct BwdKey {
  int64_t Tq = 0, Tk = 0, Hq = 0, Hkv = 0, D = 0;
  std::array<int64_t, 2 * kArgs> s{};
  Mask mask;
  uint32_t scale_bits = 0;
  bool operator==(const BwdKey&) const = default;
};

struct BwdKeyHash {
  size_t operator()(const BwdKey& k) const {
    uint64_t h = kHashSeed;
    for (int64_t x : {k.Tq, k.Tk, k.Hq, k.Hkv, k.D, k.mask.causal, k.mask.left_bound,
                      static_cast<int64_t>(k.mask.align), static_cast<int64_t>(k.scale_bits)})
      hash_mix(h, x);
    for (int64_t x : k.s) hash_mix(h, x);
    return static_cast<size_t>(h);
  }
};

std::shared_ptr<Entry> build_entry(cudnnHandle_t handle, const BwdKey& key) {
  auto entry = std::make_shared<Entry>();
  auto g = std::make_shared<fe::graph::Graph>();
  g->set_io_data_type(fe::DataType_t::BFLOAT16)
      .set_intermediate_data_type(fe::DataType_t::FLOAT)
      .set_compute_data_type(fe::DataType_t::FLOAT);
  auto in = [&](const char* name, int64_t uid, Arg a) {
    const bool kv = kKvShaped[a];
    return g->tensor(bhsd(name, uid, kv ? key.Hkv : key.Hq, kv ? key.Tk : key.Tq, key.D, key.s[2 * a],
                          key.s[2 * a + 1]));
  };
  auto Qt = in("Q", kQ, Q);
  auto Kt = in("K", kK, K);
  auto Vt = in("V", kV, V);
  auto Ot = in("O", kO, O);
  auto dOt = in("dO", kdO, DO);
  // Our lse [Hq, Tq] f32 is cuDNN's Stats (natural-log log-sum-exp, packed BHSD [1, Hq, Tq, 1]).
  auto Stats = g->tensor(fe::graph::Tensor_attributes()
                             .set_name("Stats")
                             .set_uid(kStats)
                             .set_dim({1, key.Hq, key.Tq, 1})
                             .set_stride({key.Hq * key.Tq, key.Tq, 1, 1})
                             .set_data_type(fe::DataType_t::FLOAT));

  // Deterministic: cuDNN's ordered dQ accumulation (no atomics), so GPU training resumes bit-identically.
  auto attrs = fe::graph::SDPA_backward_attributes()
                   .set_name("rt_sdpa_bwd")
                   .set_attn_scale(bits_float(key.scale_bits))
                   .set_deterministic_algorithm(attention_deterministic());
  apply_mask(attrs, key.mask);
  auto [dQt, dKt, dVt] = g->sdpa_backward(Qt, Kt, Vt, Ot, dOt, Stats, std::move(attrs));
  auto out = [&](const std::shared_ptr<fe::graph::Tensor_attributes>& t, int64_t uid, Arg a) {
    const bool kv = kKvShaped[a];
    const int64_t H = kv ? key.Hkv : key.Hq, S = kv ? key.Tk : key.Tq;
    t->set_output(true)
        .set_uid(uid)
        .set_dim(bhsd_dim(H, S, key.D))
        .set_stride(bhsd_stride(H, S, key.s[2 * a], key.s[2 * a + 1]));
  };
  out(dQt, kdQ, DQ);
  out(dKt, kdK, DK);
  out(dVt, kdV, DV);
  finish_build(std::move(g), handle, *entry);
  return entry;
}

// Fills key from the arguments (t[a] == nullptr: a separate contiguous tensor of the right shape;
// t[LSE] must be given). pad: Tq = Tk = 1, which cuDNN rejects, runs against a second, masked key
// (key.Tk = 2, dense k/v/dk/dv strides) through scratch copies. Returns "" or why the call is
// invalid (invalid = true) or not expressible in cuDNN (invalid = false).
std::string make_key(const TensorView* const (&t)[kArgs], const AttentionSpec& spec, BwdKey& key, bool& invalid,
                     bool& pad) {
  invalid = true;
  pad = false;
  for (int a = 0; a < kArgs; ++a) {
    if (t[a] == nullptr || a == LSE) continue;
    if (std::string e = check_view(kArgNames[a], *t[a]); !e.empty()) return e;
  }
  const TensorView &q = *t[Q], &k = *t[K];
  const int64_t Tq = q.shape[0], Hq = q.shape[1], D = q.shape[2];
  const int64_t Tk = k.shape[0], Hkv = k.shape[1];
  if (k.shape[2] != D)
    return msg("cudnn sdpa: argument 'k' head dim must be ", D, " (q.shape[2]), found shape ", k.shape_str());
  for (int a = 0; a < kArgs; ++a) {
    if (t[a] == nullptr || a == LSE || a == Q || a == K) continue;
    const TensorView& like = kKvShaped[a] ? k : q;
    if (t[a]->shape[0] != like.shape[0] || t[a]->shape[1] != like.shape[1] || t[a]->shape[2] != D)
      return msg("cudnn sdpa: argument '", kArgNames[a], "' must have the shape of '", kKvShaped[a] ? "k" : "q", "' ",
                 like.shape_str(), ", found ", t[a]->shape_str());
  }
  if (Hkv <= 0 && Hq != 0) return msg("cudnn sdpa: k has 0 heads, shape ", k.shape_str());
  if (Hkv > 0 && Hq % Hkv != 0)
    return msg("cudnn sdpa: query heads (", Hq, ", q shape ", q.shape_str(), ") must be a multiple of KV heads (",
               Hkv, ", k shape ", k.shape_str(), ")");
  if (spec.window < 0) return msg("cudnn sdpa: window must be >= 0 (0: none), found ", spec.window);
  if (!std::isfinite(spec.scale)) return msg("cudnn sdpa: scale must be finite, found ", spec.scale);
  if (std::string e = check_lse(*t[LSE], Hq, Tq); !e.empty()) return e;
  if (t[LSE]->data == nullptr && Hq * Tq != 0) return "cudnn sdpa: argument 'lse' has no data (null pointer)";
  // The outputs may overlap neither an input nor each other.
  for (int a : {DQ, DK, DV}) {
    if (t[a] == nullptr) continue;
    for (int b = 0; b < kArgs; ++b) {
      if (b == a || t[b] == nullptr || ((b == DQ || b == DK || b == DV) && b > a)) continue;
      if (views_overlap(*t[a], *t[b]))
        return msg("cudnn sdpa: output '", kArgNames[a], "' overlaps '", kArgNames[b], "'");
    }
  }

  // From here on: valid arguments, maybe not expressible.
  invalid = false;
  key.Tq = Tq;
  key.Tk = Tk;
  key.Hq = Hq;
  key.Hkv = Hkv;
  key.D = D;
  if (Tq == 0 || Hq == 0 || D == 0) return {};  // nothing to compute (dk, dv are zero)
  for (int a = 0; a < kArgs; ++a) {
    if (t[a] == nullptr || a == LSE) continue;
    if (std::string e = check_alignment(kArgNames[a], *t[a]); !e.empty()) return e;
  }
  if (reinterpret_cast<uintptr_t>(t[LSE]->data) % 16 != 0) return "cudnn sdpa: argument 'lse' must be 16-byte aligned";
  if (D % 8 != 0 || D > 256) return msg("cudnn sdpa: head dim ", D, " is not supported (multiples of 8 up to 256)");
  if (Tk == 0) return "cudnn sdpa: no keys (Tk = 0): every row is empty, not expressible in cuDNN";
  if (std::string e = resolve_mask(spec, Tq, Tk, key.mask); !e.empty()) return e;

  pad = Tq == 1 && Tk == 1;
  for (int a = 0; a < kArgs; ++a) {
    int64_t& s0 = key.s[2 * a];
    int64_t& s1 = key.s[2 * a + 1];
    const int64_t H = kKvShaped[a] ? Hkv : Hq;
    if (a == LSE) s0 = s1 = 0;
    else if (t[a] == nullptr || (pad && kKvShaped[a])) {
      s1 = D;
      s0 = H * D;
    } else dense_strides(*t[a], D, s0, s1);
  }
  if (pad) {  // one query, key 0 real and key 1 zero and masked off: row 0 keeps col <= 0
    key.Tk = 2;
    key.mask = Mask{1, 0, Align::TopLeft};
  }
  key.scale_bits = float_bits(resolve_scale(spec, D));
  return {};
}

std::string describe(const BwdKey& k) {
  return msg("backward Tq ", k.Tq, " Tk ", k.Tk, " Hq ", k.Hq, " Hkv ", k.Hkv, " D ", k.D, describe_mask(k.mask));
}

std::shared_ptr<Entry> lookup(DeviceState& st, const BwdKey& key) {  // caller holds st.mu
  return device_cache<BwdKey, BwdKeyHash>(st.dev).lookup(key,
                                                         [&](const BwdKey& k) { return build_entry(st.handle, k); });
}

void cuda_check(cudaError_t e, const char* what) {
  if (e != cudaSuccess) {
    (void)cudaGetLastError();
    fail("cudnn sdpa backward: ", what, ": ", cudaGetErrorString(e));
  }
}

// Zeroes a bf16 [T, H, D] view (row stride s0, head stride s1, last stride 1) in stream order.
void zero_view(const TensorView& t, cudaStream_t stream) {
  if (t.numel() == 0) return;
  const int64_t T = t.shape[0], H = t.shape[1], D = t.shape[2];
  int64_t s0, s1;
  dense_strides(t, D, s0, s1);
  const size_t width = static_cast<size_t>(D) * 2, pitch = static_cast<size_t>(s1) * 2;
  if (s0 == H * s1) {
    cuda_check(cudaMemset2DAsync(t.data, pitch, 0, width, static_cast<size_t>(T * H), stream), "zeroing dk/dv");
    return;
  }
  for (int64_t r = 0; r < T; ++r)
    cuda_check(cudaMemset2DAsync(static_cast<uint16_t*>(t.data) + r * s0, pitch, 0, width, static_cast<size_t>(H),
                                 stream),
               "zeroing dk/dv");
}

}  // namespace

bool cudnn_sdpa_backward_supported(TensorView q, TensorView k, TensorView v, const AttentionSpec& spec) noexcept {
  try {
    if (q.ndim != 3) return false;
    alignas(16) float dummy[4] = {};  // stands in for an lse buffer (never dereferenced)
    const TensorView lse = TensorView::contiguous(dummy, DType::F32, Device::CUDA, {q.shape[1], q.shape[0]});
    const TensorView* const t[kArgs] = {&q, &k, &v, nullptr, &lse, nullptr, nullptr, nullptr, nullptr};
    BwdKey key;
    bool invalid = false, pad = false;
    if (!make_key(t, spec, key, invalid, pad).empty()) return false;
    if (key.Tq == 0 || key.Hq == 0 || key.D == 0) return true;  // nothing to do
    std::string err;
    DeviceState* st = current_state(err);
    if (st == nullptr) return false;
    std::shared_ptr<Entry> entry;
    {
      std::lock_guard<std::mutex> lock(st->mu);
      entry = lookup(*st, key);
    }
    if (entry->graph == nullptr) return false;
    // Some plans want a workspace quadratic in T (448 GiB at 128K for 0.5B): such a shape is not
    // supported here, and our kernel (linear memory) takes it. The bound is a quarter of the
    // device's memory, read once per device, so that the decision costs no driver call per layer
    // and does not change with what happens to be free at the time.
    return st->total_bytes > 0 && static_cast<size_t>(entry->workspace) <= st->total_bytes / 4;
  } catch (...) {
    return false;
  }
}

void cudnn_sdpa_backward(TensorView q, TensorView k, TensorView v, TensorView o, TensorView lse, TensorView dout,
                         TensorView dq, TensorView dk, TensorView dv, const AttentionSpec& spec, cudaStream_t stream) {
  const TensorView* const t[kArgs] = {&q, &k, &v, &o, &lse, &dout, &dq, &dk, &dv};
  BwdKey key;
  bool invalid = false, pad = false;
  if (std::string e = make_key(t, spec, key, invalid, pad); !e.empty()) {
    if (invalid) fail(e);
    fail(e, " (unsupported by cuDNN SDPA backward; use our attention backward kernel)");
  }
  for (int a = 0; a < kArgs; ++a)
    if (std::string e = check_device_pointer(kArgNames[a], *t[a]); !e.empty()) fail(e);
  if (key.D == 0) return;
  if (key.Tq == 0 || key.Hq == 0) {  // no query: no gradient reaches k and v
    zero_view(dk, stream);
    zero_view(dv, stream);
    return;
  }

  std::string err;
  DeviceState* st = current_state(err);
  if (st == nullptr) fail("cudnn sdpa: ", err);
  std::shared_ptr<Entry> entry;
  {
    std::lock_guard<std::mutex> lock(st->mu);
    entry = lookup(*st, key);
  }
  if (entry->graph == nullptr)
    fail("cudnn sdpa: cuDNN ", cudnnGetVersion(), " cannot run ", describe(key), ": ", entry->error);

  // Workspace (fp32 dQ accumulator, softmax sums) from the stream-ordered pool, freed in stream
  // order after the launch.
  std::unique_ptr<Scratch> ws;
  if (entry->workspace > 0)
    ws = std::make_unique<Scratch>(static_cast<size_t>(entry->workspace), stream, "cuDNN SDPA backward workspace");

  std::unordered_map<int64_t, void*> pack{{kQ, q.data},     {kK, k.data},   {kV, v.data},   {kO, o.data},
                                          {kStats, lse.data}, {kdO, dout.data}, {kdQ, dq.data}, {kdK, dk.data},
                                          {kdV, dv.data}};

  // Tq = Tk = 1: k, v padded to two rows ([2, Hkv, D] dense, row 1 zero), dk, dv computed into
  // two-row scratch and row 0 copied out.
  std::unique_ptr<Scratch> padbuf;
  const int64_t Hkv = key.Hkv, D = key.D;
  const size_t head_bytes = static_cast<size_t>(D) * 2, one = static_cast<size_t>(2 * Hkv * D);  // elements
  int64_t k_s0, k_s1, v_s0, v_s1, dk_s0, dk_s1, dv_s0, dv_s1;
  if (pad) {
    dense_strides(k, D, k_s0, k_s1);
    dense_strides(v, D, v_s0, v_s1);
    dense_strides(dk, D, dk_s0, dk_s1);
    dense_strides(dv, D, dv_s0, dv_s1);
    padbuf = std::make_unique<Scratch>(4 * one * 2, stream, "cuDNN SDPA backward padding (Tq = Tk = 1)");
    auto* base = static_cast<uint16_t*>(padbuf->get());
    cuda_check(cudaMemsetAsync(base, 0, 4 * one * 2, stream), "padding memset");
    cuda_check(cudaMemcpy2DAsync(base, head_bytes, k.data, static_cast<size_t>(k_s1) * 2, head_bytes,
                                 static_cast<size_t>(Hkv), cudaMemcpyDeviceToDevice, stream),
               "padding k");
    cuda_check(cudaMemcpy2DAsync(base + one, head_bytes, v.data, static_cast<size_t>(v_s1) * 2, head_bytes,
                                 static_cast<size_t>(Hkv), cudaMemcpyDeviceToDevice, stream),
               "padding v");
    pack[kK] = base;
    pack[kV] = base + one;
    pack[kdK] = base + 2 * one;
    pack[kdV] = base + 3 * one;
  }

  {
    std::lock_guard<std::mutex> lock(st->mu);  // the handle's stream is shared state
    const cudnnStatus_t ss = cudnnSetStream(st->handle, stream);
    if (ss != CUDNN_STATUS_SUCCESS) fail("cudnn sdpa: cudnnSetStream failed: ", cudnn_status_string(ss));
    const fe::error_t ee = entry->graph->execute(st->handle, pack, ws ? ws->get() : nullptr);
    if (ee.is_bad()) fail("cudnn sdpa: execute failed for ", describe(key), ": ", fe_error_string(ee));
  }

  if (pad) {
    auto* base = static_cast<uint16_t*>(padbuf->get());
    cuda_check(cudaMemcpy2DAsync(dk.data, static_cast<size_t>(dk_s1) * 2, base + 2 * one, head_bytes, head_bytes,
                                 static_cast<size_t>(Hkv), cudaMemcpyDeviceToDevice, stream),
               "copying dk out of the padding");
    cuda_check(cudaMemcpy2DAsync(dv.data, static_cast<size_t>(dv_s1) * 2, base + 3 * one, head_bytes, head_bytes,
                                 static_cast<size_t>(Hkv), cudaMemcpyDeviceToDevice, stream),
               "copying dv out of the padding");
  }
}

#endif  // RT_HAVE_CUDNN_SDPA

}  // namespace rt::cuda
