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

#include "rt/sdk/error.h"

#if defined(RT_HAVE_CUDNN_SDPA)
#include <cudnn.h>
#include <cudnn_frontend.h>

#include <list>
#include <memory>
#include <mutex>
#include <sstream>
#include <unordered_map>

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

namespace {

namespace fe = cudnn_frontend;

constexpr int64_t kMaxInt = std::numeric_limits<int32_t>::max();
constexpr int64_t kQ = 1, kK = 2, kV = 3, kO = 4, kStats = 5;  // tensor uids
constexpr size_t kCacheCapacity = 256;                         // graphs per device (LRU)

enum class Align : int64_t { None, TopLeft, BottomRight };

// Everything a graph depends on. Strides are (row, head) in elements; the last one is 1.
struct Key {
  int64_t Tq = 0, Tk = 0, Hq = 0, Hkv = 0, D = 0;
  int64_t q_s0 = 0, q_s1 = 0, k_s0 = 0, k_s1 = 0, v_s0 = 0, v_s1 = 0, o_s0 = 0, o_s1 = 0;
  int64_t causal = 0, left_bound = 0;  // left_bound: the window W (0: none)
  Align align = Align::None;
  uint32_t scale_bits = 0;
  int64_t lse = 0;
  bool operator==(const Key& o) const {
    return Tq == o.Tq && Tk == o.Tk && Hq == o.Hq && Hkv == o.Hkv && D == o.D && q_s0 == o.q_s0 &&
           q_s1 == o.q_s1 && k_s0 == o.k_s0 && k_s1 == o.k_s1 && v_s0 == o.v_s0 && v_s1 == o.v_s1 &&
           o_s0 == o.o_s0 && o_s1 == o.o_s1 && causal == o.causal && left_bound == o.left_bound &&
           align == o.align && scale_bits == o.scale_bits && lse == o.lse;
  }
  float scale() const {
    float s;
    std::memcpy(&s, &scale_bits, sizeof s);
    return s;
  }
};

struct KeyHash {
  size_t operator()(const Key& k) const {
    uint64_t h = 1469598103934665603ull;
    auto mix = [&h](int64_t x) {
      h ^= static_cast<uint64_t>(x) + 0x9e3779b97f4a7c15ull + (h << 6) + (h >> 2);
    };
    for (int64_t x : {k.Tq, k.Tk, k.Hq, k.Hkv, k.D, k.q_s0, k.q_s1, k.k_s0, k.k_s1, k.v_s0, k.v_s1, k.o_s0, k.o_s1,
                      k.causal, k.left_bound, static_cast<int64_t>(k.align), static_cast<int64_t>(k.scale_bits),
                      k.lse})
      mix(x);
    return static_cast<size_t>(h);
  }
};

// A built graph (graph != nullptr) or the reason it cannot be built (cached too, so an
// unsupported shape is not rebuilt at every dispatch).
struct Entry {
  std::shared_ptr<fe::graph::Graph> graph;
  int64_t workspace = 0;
  std::string error;
};

struct DeviceState {
  std::mutex mu;
  cudnnHandle_t handle = nullptr;
  std::string handle_error;  // non-empty: cudnnCreate failed (kept, not retried)
  std::list<Key> lru;        // most recent first
  std::unordered_map<Key, std::pair<std::shared_ptr<Entry>, std::list<Key>::iterator>, KeyHash> map;
};

std::atomic<uint64_t> g_built{0}, g_failed{0}, g_hits{0}, g_cached{0};

// One state per device, created on first use and deliberately never destroyed: cudnnDestroy at
// static-destruction time can run after the CUDA runtime has gone.
DeviceState& device_state(int dev) {
  static std::mutex mu;
  static auto* states = new std::unordered_map<int, DeviceState*>();
  std::lock_guard<std::mutex> lock(mu);
  DeviceState*& s = (*states)[dev];
  if (s == nullptr) s = new DeviceState();
  return *s;
}

std::string fe_error_string(const fe::error_t& e) {
  std::ostringstream os;
  os << e.code << ": " << e.err_msg;  // the getters are not const
  return os.str();
}

// The cuDNN status-name helpers changed between versions; cudnnGetErrorString is stable.
std::string cudnn_status_string(cudnnStatus_t s) {
  return std::string(cudnnGetErrorString(s)) + " (status " + std::to_string(static_cast<int>(s)) + ")";
}

// cudnn-frontend is dropping the handle argument of check_support / build_plans; call whichever
// this version has.
template <class G>
fe::error_t check_support(G& g, cudnnHandle_t h) {
  if constexpr (requires { g.check_support(); }) return g.check_support();
  else return g.check_support(h);
}
template <class G>
fe::error_t build_plans(G& g, cudnnHandle_t h) {
  if constexpr (requires { g.build_plans(fe::BuildPlanPolicy_t::HEURISTICS_CHOICE); })
    return g.build_plans(fe::BuildPlanPolicy_t::HEURISTICS_CHOICE);
  else return g.build_plans(h, fe::BuildPlanPolicy_t::HEURISTICS_CHOICE);
}

std::shared_ptr<Entry> build_entry(cudnnHandle_t handle, const Key& key) {
  auto entry = std::make_shared<Entry>();
  auto g = std::make_shared<fe::graph::Graph>();
  g->set_io_data_type(fe::DataType_t::BFLOAT16)
      .set_intermediate_data_type(fe::DataType_t::FLOAT)
      .set_compute_data_type(fe::DataType_t::FLOAT);
  // [T, H, D] row-major with free row/head strides is cuDNN's [B=1, H, S, D] with strides
  // {batch, head stride, row stride, 1}; the batch stride is irrelevant for B = 1.
  auto bhsd = [](const char* name, int64_t uid, int64_t H, int64_t S, int64_t D, int64_t s0, int64_t s1) {
    return fe::graph::Tensor_attributes()
        .set_name(name)
        .set_uid(uid)
        .set_dim({1, H, S, D})
        .set_stride({std::max(s0 * S, s1 * H), s1, s0, 1});
  };
  auto Q = g->tensor(bhsd("Q", kQ, key.Hq, key.Tq, key.D, key.q_s0, key.q_s1));
  auto K = g->tensor(bhsd("K", kK, key.Hkv, key.Tk, key.D, key.k_s0, key.k_s1));
  auto V = g->tensor(bhsd("V", kV, key.Hkv, key.Tk, key.D, key.v_s0, key.v_s1));

  auto attrs = fe::graph::SDPA_attributes().set_name("rt_sdpa").set_generate_stats(key.lse != 0).set_attn_scale(
      key.scale());
  if (key.align != Align::None)
    attrs.set_diagonal_alignment(key.align == Align::BottomRight ? fe::DiagonalAlignment_t::BOTTOM_RIGHT
                                                                 : fe::DiagonalAlignment_t::TOP_LEFT);
  // Kept: col <= row (+ Tk - Tq bottom-right) + right_bound, and col + left_bound > row
  // (+ Tk - Tq): with right bound 0 and left bound W, exactly the W keys ending at the diagonal.
  if (key.causal) attrs.set_diagonal_band_right_bound(0);
  if (key.left_bound > 0) attrs.set_diagonal_band_left_bound(static_cast<int>(key.left_bound));

  auto [O, Stats] = g->sdpa(Q, K, V, std::move(attrs));
  O->set_output(true)
      .set_uid(kO)
      .set_dim({1, key.Hq, key.Tq, key.D})
      .set_stride({std::max(key.o_s0 * key.Tq, key.o_s1 * key.Hq), key.o_s1, key.o_s0, 1});
  if (key.lse) {
    Stats->set_output(true)
        .set_uid(kStats)
        .set_data_type(fe::DataType_t::FLOAT)
        .set_dim({1, key.Hq, key.Tq, 1})
        .set_stride({key.Hq * key.Tq, key.Tq, 1, 1});
  }

  auto step = [&](const char* what, const fe::error_t& e) {
    if (e.is_bad()) entry->error = std::string(what) + ": " + fe_error_string(e);
    return e.is_good();
  };
  if (!step("validate", g->validate())) return entry;
  if (!step("build_operation_graph", g->build_operation_graph(handle))) return entry;
  if (!step("create_execution_plans", g->create_execution_plans({fe::HeurMode_t::A}))) return entry;
  if (!step("check_support", check_support(*g, handle))) return entry;
  if (!step("build_plans", build_plans(*g, handle))) return entry;
  int64_t ws = 0;
  if (!step("get_workspace_size", g->get_workspace_size(ws))) return entry;
  entry->workspace = std::max<int64_t>(ws, 0);
  entry->graph = std::move(g);
  return entry;
}

// The cached entry for key on the current device, building it on a miss. Caller holds st.mu.
std::shared_ptr<Entry> lookup(DeviceState& st, const Key& key) {
  auto it = st.map.find(key);
  if (it != st.map.end()) {
    st.lru.splice(st.lru.begin(), st.lru, it->second.second);
    g_hits.fetch_add(1, std::memory_order_relaxed);
    return it->second.first;
  }
  std::shared_ptr<Entry> e;
  try {
    e = build_entry(st.handle, key);
  } catch (const std::exception& ex) {  // the frontend may throw (bad_alloc, json, ...)
    e = std::make_shared<Entry>();
    e->error = std::string("exception while building: ") + ex.what();
  }
  (e->graph ? g_built : g_failed).fetch_add(1, std::memory_order_relaxed);
  st.lru.push_front(key);
  st.map.emplace(key, std::make_pair(e, st.lru.begin()));
  g_cached.fetch_add(1, std::memory_order_relaxed);
  while (st.map.size() > kCacheCapacity) {
    st.map.erase(st.lru.back());
    st.lru.pop_back();
    g_cached.fetch_sub(1, std::memory_order_relaxed);
  }
  return e;
}

// The current device's state with a handle, or an error (no GPU, cudnnCreate failed). Caller
// holds nothing; returns with nothing held.
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
  }
  if (st.handle == nullptr) {
    err = st.handle_error;
    return nullptr;
  }
  return &st;
}

// ------------------------------------------------------------------------------------------------
// Argument checks. They return an error message ("" = fine) so cudnn_sdpa_supported can use them
// without exceptions; cudnn_sdpa_forward throws the message. Same wording as attention.cu.

template <class... Args>
std::string msg(const Args&... args) {
  std::ostringstream os;
  (os << ... << args);
  return os.str();
}

std::string check_view(const char* arg, const TensorView& v) {
  if (v.device != Device::CUDA)
    return msg("cudnn sdpa: argument '", arg, "' must be on device cuda, found ", device_name(v.device));
  if (v.ndim != 3)
    return msg("cudnn sdpa: argument '", arg, "' must have 3 dimensions [T, heads, head_dim], found shape ",
               v.shape_str());
  for (int i = 0; i < 3; ++i) {
    if (v.shape[i] < 0 || v.shape[i] > kMaxInt)
      return msg("cudnn sdpa: argument '", arg, "' has a dimension out of range, shape ", v.shape_str());
    if (v.stride[i] < 0) return msg("cudnn sdpa: argument '", arg, "' has a negative stride");
  }
  if (v.shape[2] > 1 && v.stride[2] != 1)
    return msg("cudnn sdpa: argument '", arg, "' must have a contiguous last dimension (stride 1), found stride ",
               v.stride[2], " for shape ", v.shape_str());
  if (v.data == nullptr && v.numel() != 0)
    return msg("cudnn sdpa: argument '", arg, "' has no data (null pointer) for shape ", v.shape_str());
  if (v.dtype != DType::BF16)
    return msg("cudnn sdpa: argument '", arg, "' must be bf16, found ", dtype_name(v.dtype));
  return {};
}

// cuDNN wants 16-byte aligned pointers and row/head strides (8 bf16 elements).
std::string check_alignment(const char* arg, const TensorView& v) {
  if (v.numel() == 0) return {};
  const bool ok = reinterpret_cast<uintptr_t>(v.data) % 16 == 0 && (v.shape[0] <= 1 || v.stride[0] % 8 == 0) &&
                  (v.shape[1] <= 1 || v.stride[1] % 8 == 0);
  if (!ok)
    return msg("cudnn sdpa: argument '", arg,
               "' must have 16-byte aligned rows (data pointer 16-byte aligned, strides multiples of 8 elements); "
               "found strides [",
               v.stride[0], ", ", v.stride[1], ", ", v.stride[2], "]");
  return {};
}

bool overlaps(const TensorView& a, const TensorView& b) {
  if (a.numel() == 0 || b.numel() == 0) return false;
  auto span = [](const TensorView& v) {
    int64_t last = 0;
    for (int i = 0; i < v.ndim; ++i) last += (v.shape[i] - 1) * v.stride[i];
    return (last + 1) * static_cast<int64_t>(dtype_size(v.dtype));
  };
  const char* pa = static_cast<const char*>(a.data);
  const char* pb = static_cast<const char*>(b.data);
  return pa < pb + span(b) && pb < pa + span(a);
}

std::string check_device_pointer(const char* arg, const TensorView& v) {
  if (v.numel() == 0) return {};
  cudaPointerAttributes attr{};
  const cudaError_t err = cudaPointerGetAttributes(&attr, v.data);
  if (err != cudaSuccess) {
    (void)cudaGetLastError();
    return msg("cudnn sdpa: argument '", arg, "': cannot query its pointer (", cudaGetErrorString(err),
               "); is it device memory?");
  }
  if (attr.type != cudaMemoryTypeDevice && attr.type != cudaMemoryTypeManaged)
    return msg("cudnn sdpa: argument '", arg, "' is labelled cuda but points to ",
               attr.type == cudaMemoryTypeHost ? "pinned host memory" : "host (unregistered) memory");
  if (attr.type == cudaMemoryTypeDevice) {
    int cur = -1;
    if (cudaGetDevice(&cur) != cudaSuccess) {
      (void)cudaGetLastError();
      return "cudnn sdpa: cudaGetDevice failed";
    }
    if (attr.device != cur)
      return msg("cudnn sdpa: argument '", arg, "' lives on GPU ", attr.device, " but the current device is GPU ",
                 cur);
  }
  return {};
}

using Named = std::pair<const char*, const TensorView*>;

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
  if (o != nullptr && (overlaps(*o, q) || overlaps(*o, k) || overlaps(*o, v)))
    return "cudnn sdpa: output 'o' overlaps 'q', 'k' or 'v'";
  if (lse.data != nullptr) {
    if (lse.device != Device::CUDA || lse.dtype != DType::F32 || lse.ndim != 2 || lse.shape[0] != Hq ||
        lse.shape[1] != Tq || !lse.is_contiguous())
      return msg("cudnn sdpa: argument 'lse' must be a contiguous f32 cuda tensor of shape [", Hq, ", ", Tq,
                 "], found ", dtype_name(lse.dtype), " ", device_name(lse.device), " ", lse.shape_str());
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

  // Mask. delta: how far the query positions run ahead of the key positions.
  const int64_t delta = spec.q_pos0 - spec.k_pos0;
  int64_t window = spec.window;
  // A window that starts before the first key for every row (delta + Tq - 1 - W < 0) masks nothing.
  if (window > 0 && delta + Tq <= window) window = 0;
  Align align = Align::None;
  if (spec.causal || window > 0) {
    if (delta == 0) align = Align::TopLeft;
    else if (delta == Tk - Tq && Tq <= Tk) align = Align::BottomRight;
    else
      return msg("cudnn sdpa: positions q_pos0 ", spec.q_pos0, ", k_pos0 ", spec.k_pos0, " with Tq ", Tq, ", Tk ", Tk,
                 " are not expressible (needs q_pos0 - k_pos0 = 0 or Tk - Tq)");
    if (window > 0 && Tq > Tk) return msg("cudnn sdpa: sliding window needs Tq <= Tk, found Tq ", Tq, ", Tk ", Tk);
  }

  key.Tq = Tq;
  key.Tk = Tk;
  key.Hq = Hq;
  key.Hkv = Hkv;
  key.D = D;
  // Strides of size-1 dimensions are free; give cuDNN the dense ones.
  auto strides = [&](const TensorView& t, int64_t& s0, int64_t& s1) {
    s1 = t.shape[1] > 1 ? t.stride[1] : D;
    s0 = t.shape[0] > 1 ? t.stride[0] : t.shape[1] * s1;
  };
  strides(q, key.q_s0, key.q_s1);
  strides(k, key.k_s0, key.k_s1);
  strides(v, key.v_s0, key.v_s1);
  if (o != nullptr) strides(*o, key.o_s0, key.o_s1);
  else {
    key.o_s1 = D;
    key.o_s0 = Hq * D;
  }
  key.causal = spec.causal ? 1 : 0;
  key.left_bound = window;
  key.align = align;
  const float scale = spec.scale != 0.f ? spec.scale : static_cast<float>(1.0 / std::sqrt(static_cast<double>(D)));
  std::memcpy(&key.scale_bits, &scale, sizeof scale);
  key.lse = lse.data != nullptr ? 1 : 0;
  return {};
}

std::string describe(const Key& k) {
  return msg("Tq ", k.Tq, " Tk ", k.Tk, " Hq ", k.Hq, " Hkv ", k.Hkv, " D ", k.D, k.causal ? " causal" : " non-causal",
             " window ", k.left_bound,
             k.align == Align::TopLeft ? " top-left" : k.align == Align::BottomRight ? " bottom-right" : "",
             k.lse ? " +lse" : "");
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
