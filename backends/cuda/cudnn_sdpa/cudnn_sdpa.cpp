// cuDNN SDPA through the cudnn-frontend graph API: argument checks (mirroring
// cuda/attention/attention.cu), mask mapping, a per-device handle and graph cache, the launch.
// See cudnn_sdpa.h for the contract. Compiled in every CUDA build; the cuDNN part only with
// RT_HAVE_CUDNN_SDPA (backends/cuda/cudnn.cmake).
#include "cuda/cudnn_sdpa/cudnn_sdpa.h"

#include <algorithm>
#include <atomic>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <limits>
#include <string>

#include "cuda/memory_limit.h"
#include "rt/sdk/error.h"

#if defined(RT_HAVE_CUDNN_SDPA)
#include <memory>
#include <mutex>
#include <unordered_map>

#include "cuda/cudnn_sdpa/cudnn_common.h"
#include "cuda/memory.h"
#endif

namespace rt::cuda {

#if !defined(RT_HAVE_CUDNN_SDPA)

bool cudnn_sdpa_supported(TensorView, TensorView, TensorView, const AttentionSpec&, bool) noexcept { return false; }

void cudnn_sdpa_forward(TensorView, TensorView, TensorView, TensorView, const AttentionSpec&, cudaStream_t,
                        TensorView) {
  fail("cudnn_sdpa_forward: this build has no cuDNN SDPA (cudnn-frontend or cuDNN >= 9 not found at "
       "configure time; see backends/cuda/cudnn.cmake)");
}

CudnnSdpaStats cudnn_sdpa_stats() noexcept { return {}; }
int64_t cudnn_sdpa_version() noexcept { return 0; }

#else  // RT_HAVE_CUDNN_SDPA

namespace cudnn_detail {

// One state per device, created on first use and deliberately never destroyed: cudnnDestroy at
// static-destruction time can run after the CUDA runtime has gone.
static DeviceState& device_state(int dev) {
  static std::mutex mu;
  static auto* states = new std::unordered_map<int, DeviceState*>();
  std::lock_guard<std::mutex> lock(mu);
  DeviceState*& s = (*states)[dev];
  if (s == nullptr) {
    s = new DeviceState();
    s->dev = dev;
  }
  return *s;
}

DeviceState* current_state(std::string& err) {
  int dev = -1;
  const cudaError_t ce = cudaGetDevice(&dev);
  if (ce != cudaSuccess) {
    (void)cudaGetLastError();
    err = std::string("cudaGetDevice failed: ") + cudaGetErrorString(ce);
    return nullptr;
  }
  DeviceState& st = device_state(dev);
  std::lock_guard<std::mutex> lock(st.mu);
  if (st.handle == nullptr && st.handle_error.empty()) {
    const cudnnStatus_t s = cudnnCreate(&st.handle);
    if (s != CUDNN_STATUS_SUCCESS) {
      st.handle = nullptr;
      st.handle_error = "cudnnCreate failed on GPU " + std::to_string(dev) + ": " + cudnn_status_string(s);
    }
    size_t free_bytes = 0;
    if (cudaMemGetInfo(&free_bytes, &st.total_bytes) != cudaSuccess) {
      (void)cudaGetLastError();
      st.total_bytes = 0;
    }
    st.total_bytes = memory_budget(st.total_bytes);  // RT_CUDA_MEMORY_LIMIT: plan as on a smaller GPU
  }
  if (st.handle == nullptr) {
    err = st.handle_error;
    return nullptr;
  }
  return &st;
}

}  // namespace cudnn_detail

namespace {

using namespace cudnn_detail;

constexpr int64_t kQ = 1, kK = 2, kV = 3, kO = 4, kStats = 5;  // tensor uids

// Everything a forward graph depends on. Strides are (row, head) in elements; the last one is 1.
struct Key {
  int64_t Tq = 0, Tk = 0, Hq = 0, Hkv = 0, D = 0;
  int64_t q_s0 = 0, q_s1 = 0, k_s0 = 0, k_s1 = 0, v_s0 = 0, v_s1 = 0, o_s0 = 0, o_s1 = 0;
  Mask mask;
  uint32_t scale_bits = 0;
  int64_t lse = 0;
  bool operator==(const Key& o) const {
    return Tq == o.Tq && Tk == o.Tk && Hq == o.Hq && Hkv == o.Hkv && D == o.D && q_s0 == o.q_s0 &&
           q_s1 == o.q_s1 && k_s0 == o.k_s0 && k_s1 == o.k_s1 && v_s0 == o.v_s0 && v_s1 == o.v_s1 &&
           o_s0 == o.o_s0 && o_s1 == o.o_s1 && mask.causal == o.mask.causal &&
           mask.left_bound == o.mask.left_bound && mask.align == o.mask.align && scale_bits == o.scale_bits &&
           lse == o.lse;
  }
};

struct KeyHash {
  size_t operator()(const Key& k) const {
    return hash_ints({k.Tq, k.Tk, k.Hq, k.Hkv, k.D, k.q_s0, k.q_s1, k.k_s0, k.k_s1, k.v_s0, k.v_s1, k.o_s0, k.o_s1,
                      k.mask.causal, k.mask.left_bound, static_cast<int64_t>(k.mask.align),
                      static_cast<int64_t>(k.scale_bits), k.lse});
  }
};

std::shared_ptr<Entry> build_entry(cudnnHandle_t handle, const Key& key) {
  auto entry = std::make_shared<Entry>();
  auto g = std::make_shared<fe::graph::Graph>();
  g->set_io_data_type(fe::DataType_t::BFLOAT16)
      .set_intermediate_data_type(fe::DataType_t::FLOAT)
      .set_compute_data_type(fe::DataType_t::FLOAT);
  auto Q = g->tensor(bhsd("Q", kQ, key.Hq, key.Tq, key.D, key.q_s0, key.q_s1));
  auto K = g->tensor(bhsd("K", kK, key.Hkv, key.Tk, key.D, key.k_s0, key.k_s1));
  auto V = g->tensor(bhsd("V", kV, key.Hkv, key.Tk, key.D, key.v_s0, key.v_s1));

  auto attrs = fe::graph::SDPA_attributes().set_name("rt_sdpa").set_generate_stats(key.lse != 0).set_attn_scale(
      bits_float(key.scale_bits));
  apply_mask(attrs, key.mask);

  auto [O, Stats] = g->sdpa(Q, K, V, std::move(attrs));
  O->set_output(true)
      .set_uid(kO)
      .set_dim(bhsd_dim(key.Hq, key.Tq, key.D))
      .set_stride(bhsd_stride(key.Hq, key.Tq, key.o_s0, key.o_s1));
  if (key.lse) {
    // cuDNN's softmax stats: the natural-log log-sum-exp of each row's scaled, masked scores, f32
    // [1, Hq, Tq, 1] packed, i.e. exactly our lse [Hq, Tq] (and what sdpa_backward reads back).
    Stats->set_output(true)
        .set_uid(kStats)
        .set_data_type(fe::DataType_t::FLOAT)
        .set_dim({1, key.Hq, key.Tq, 1})
        .set_stride({key.Hq * key.Tq, key.Tq, 1, 1});
  }
  finish_build(std::move(g), handle, *entry);
  return entry;
}

// Fills key from the arguments (o: its strides; nullptr: contiguous [Tq, Hq, D]). Returns "" or
// why the call is invalid (invalid = true) or not expressible in cuDNN (invalid = false).
std::string make_key(const TensorView& q, const TensorView& k, const TensorView& v, const TensorView* o,
                     const TensorView& lse, const AttentionSpec& spec, Key& key, bool& invalid) {
  invalid = true;
  const Named args[] = {{"q", &q}, {"k", &k}, {"v", &v}, {"o", o}};
  for (const auto& [name, t] : args) {
    if (t == nullptr) continue;
    if (std::string e = check_view(name, *t); !e.empty()) return e;
  }
  const int64_t Tq = q.shape[0], Hq = q.shape[1], D = q.shape[2];
  const int64_t Tk = k.shape[0], Hkv = k.shape[1];
  if (k.shape[2] != D)
    return msg("cudnn sdpa: argument 'k' head dim must be ", D, " (q.shape[2]), found shape ", k.shape_str());
  if (v.shape[0] != Tk || v.shape[1] != Hkv || v.shape[2] != D)
    return msg("cudnn sdpa: argument 'v' must have the shape of 'k' ", k.shape_str(), ", found ", v.shape_str());
  if (o != nullptr && (o->shape[0] != Tq || o->shape[1] != Hq || o->shape[2] != D))
    return msg("cudnn sdpa: argument 'o' must have the shape of 'q' ", q.shape_str(), ", found ", o->shape_str());
  if (Hkv <= 0 && Hq != 0) return msg("cudnn sdpa: k has 0 heads, shape ", k.shape_str());
  if (Hkv > 0 && Hq % Hkv != 0)
    return msg("cudnn sdpa: query heads (", Hq, ", q shape ", q.shape_str(), ") must be a multiple of KV heads (",
               Hkv, ", k shape ", k.shape_str(), ")");
  if (spec.window < 0) return msg("cudnn sdpa: window must be >= 0 (0: none), found ", spec.window);
  if (!std::isfinite(spec.scale)) return msg("cudnn sdpa: scale must be finite, found ", spec.scale);
  if (o != nullptr && (views_overlap(*o, q) || views_overlap(*o, k) || views_overlap(*o, v)))
    return "cudnn sdpa: output 'o' overlaps 'q', 'k' or 'v'";
  if (lse.data != nullptr) {
    if (std::string e = check_lse(lse, Hq, Tq); !e.empty()) return e;
  }

  // From here on: valid arguments, maybe not expressible.
  invalid = false;
  if (Tq == 0 || Hq == 0 || D == 0) {  // nothing to compute
    key.Tq = Tq;
    key.Hq = Hq;
    key.D = D;
    return {};
  }
  for (const auto& [name, t] : args) {
    if (t == nullptr) continue;
    if (std::string e = check_alignment(name, *t); !e.empty()) return e;
  }
  if (lse.data != nullptr && reinterpret_cast<uintptr_t>(lse.data) % 16 != 0)
    return "cudnn sdpa: argument 'lse' must be 16-byte aligned";
  if (D % 8 != 0 || D > 256) return msg("cudnn sdpa: head dim ", D, " is not supported (multiples of 8 up to 256)");
  if (Tk == 0) return "cudnn sdpa: no keys (Tk = 0): every row is empty, not expressible in cuDNN";
  if (std::string e = resolve_mask(spec, Tq, Tk, key.mask); !e.empty()) return e;

  key.Tq = Tq;
  key.Tk = Tk;
  key.Hq = Hq;
  key.Hkv = Hkv;
  key.D = D;
  dense_strides(q, D, key.q_s0, key.q_s1);
  dense_strides(k, D, key.k_s0, key.k_s1);
  dense_strides(v, D, key.v_s0, key.v_s1);
  if (o != nullptr) dense_strides(*o, D, key.o_s0, key.o_s1);
  else {
    key.o_s1 = D;
    key.o_s0 = Hq * D;
  }
  key.scale_bits = float_bits(resolve_scale(spec, D));
  key.lse = lse.data != nullptr ? 1 : 0;
  return {};
}

std::string describe(const Key& k) {
  return msg("Tq ", k.Tq, " Tk ", k.Tk, " Hq ", k.Hq, " Hkv ", k.Hkv, " D ", k.D, describe_mask(k.mask),
             k.lse ? " +lse" : "");
}

std::shared_ptr<Entry> lookup(DeviceState& st, const Key& key) {  // caller holds st.mu
  return device_cache<Key, KeyHash>(st.dev).lookup(key, [&](const Key& k) { return build_entry(st.handle, k); });
}

}  // namespace

bool cudnn_sdpa_supported(TensorView q, TensorView k, TensorView v, const AttentionSpec& spec,
                          bool with_lse) noexcept {
  try {
    Key key;
    bool invalid = false;
    TensorView lse;
    alignas(16) float dummy[4] = {};  // stands in for an lse buffer (never dereferenced)
    if (with_lse) lse = TensorView::contiguous(dummy, DType::F32, Device::CUDA, {q.shape[1], q.shape[0]});
    if (!make_key(q, k, v, nullptr, lse, spec, key, invalid).empty()) return false;
    if (key.Tq == 0 || key.Hq == 0 || key.D == 0) return true;  // nothing to do
    std::string err;
    DeviceState* st = current_state(err);
    if (st == nullptr) return false;
    std::lock_guard<std::mutex> lock(st->mu);
    return lookup(*st, key)->graph != nullptr;
  } catch (...) {
    return false;
  }
}

void cudnn_sdpa_forward(TensorView q, TensorView k, TensorView v, TensorView o, const AttentionSpec& spec,
                        cudaStream_t stream, TensorView lse) {
  Key key;
  bool invalid = false;
  if (std::string e = make_key(q, k, v, &o, lse, spec, key, invalid); !e.empty()) {
    if (invalid) fail(e);
    fail(e, " (unsupported by cuDNN SDPA; use rt::cuda::attention_forward)");
  }
  if (lse.data != nullptr) {
    if (std::string e = check_device_pointer("lse", lse); !e.empty()) fail(e);
  }
  if (key.Tq == 0 || key.Hq == 0 || key.D == 0) return;
  const Named args[] = {{"q", &q}, {"k", &k}, {"v", &v}, {"o", &o}};
  for (const auto& [name, t] : args)
    if (std::string e = check_device_pointer(name, *t); !e.empty()) fail(e);

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

  // Workspace from the stream-ordered pool, freed in stream order after the launch.
  std::unique_ptr<Scratch> ws;
  if (entry->workspace > 0)
    ws = std::make_unique<Scratch>(static_cast<size_t>(entry->workspace), stream, "cuDNN SDPA workspace");

  std::unordered_map<int64_t, void*> pack{{kQ, q.data}, {kK, k.data}, {kV, v.data}, {kO, o.data}};
  if (key.lse) pack.emplace(kStats, lse.data);
  std::lock_guard<std::mutex> lock(st->mu);  // the handle's stream is shared state
  const cudnnStatus_t ss = cudnnSetStream(st->handle, stream);
  if (ss != CUDNN_STATUS_SUCCESS) fail("cudnn sdpa: cudnnSetStream failed: ", cudnn_status_string(ss));
  const fe::error_t ee = entry->graph->execute(st->handle, pack, ws ? ws->get() : nullptr);
  if (ee.is_bad()) fail("cudnn sdpa: execute failed for ", describe(key), ": ", fe_error_string(ee));
}

CudnnSdpaStats cudnn_sdpa_stats() noexcept {
  CudnnSdpaStats s;
  s.graphs_built = g_built.load(std::memory_order_relaxed);
  s.build_failures = g_failed.load(std::memory_order_relaxed);
  s.cache_hits = g_hits.load(std::memory_order_relaxed);
  s.cached_graphs = g_cached.load(std::memory_order_relaxed);
  return s;
}

int64_t cudnn_sdpa_version() noexcept { return static_cast<int64_t>(cudnnGetVersion()); }

#endif  // RT_HAVE_CUDNN_SDPA

}  // namespace rt::cuda
