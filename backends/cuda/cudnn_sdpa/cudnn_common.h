// Internal pieces shared by the cuDNN SDPA forward (cudnn_sdpa.cpp) and backward
// (cudnn_sdpa_backward.cpp): the per-device handle, an LRU graph cache per (device, key type),
// the build steps, argument checks, and the mapping of rt::AttentionSpec and [T, H, D] views onto
// cuDNN's [1, H, S, D] tensors and diagonal-band masks. Only for builds with RT_HAVE_CUDNN_SDPA;
// not part of any public interface.
#pragma once

#if defined(RT_HAVE_CUDNN_SDPA)

#include <cuda_runtime_api.h>
#include <cudnn.h>
#include <cudnn_frontend.h>

#include <algorithm>
#include <atomic>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <initializer_list>
#include <limits>
#include <list>
#include <memory>
#include <mutex>
#include <sstream>
#include <string>
#include <unordered_map>
#include <utility>
#include <vector>

#include "cuda/check.h"
#include "rt/sdk/ops.h"
#include "rt/sdk/tensor.h"

namespace rt::cuda::cudnn_detail {

namespace fe = cudnn_frontend;

constexpr int64_t kMaxInt = std::numeric_limits<int32_t>::max();
constexpr size_t kCacheCapacity = 256;  // graphs per device and key type (LRU)

// Process-wide counters behind rt::cuda::cudnn_sdpa_stats (forward and backward graphs together).
inline std::atomic<uint64_t> g_built{0}, g_failed{0}, g_hits{0}, g_cached{0};

// A built graph (graph != nullptr) or the reason it cannot be built (cached too, so an
// unsupported shape is not rebuilt at every dispatch).
struct Entry {
  std::shared_ptr<fe::graph::Graph> graph;
  int64_t workspace = 0;
  std::string error;
};

// One per device: the cuDNN handle and the mutex that guards it and the device's graph caches.
struct DeviceState {
  int dev = -1;
  std::mutex mu;
  cudnnHandle_t handle = nullptr;
  std::string handle_error;  // non-empty: cudnnCreate failed (kept, not retried)
  size_t total_bytes = 0;    // the device's memory (or RT_CUDA_MEMORY_LIMIT), read once with the handle
};

// The current device's state with a handle, or nullptr and err (no GPU, cudnnCreate failed).
// Returns with nothing held. Defined in cudnn_sdpa.cpp.
DeviceState* current_state(std::string& err);

// LRU cache of built graphs. Every call is made with the owning DeviceState::mu held.
template <class Key, class Hash>
class GraphCache {
 public:
  // The cached entry for key, or build(key) on a miss (exceptions become a cached error).
  template <class Build>
  std::shared_ptr<Entry> lookup(const Key& key, Build&& build) {
    auto it = map_.find(key);
    if (it != map_.end()) {
      lru_.splice(lru_.begin(), lru_, it->second.second);
      g_hits.fetch_add(1, std::memory_order_relaxed);
      return it->second.first;
    }
    std::shared_ptr<Entry> e;
    try {
      e = build(key);
    } catch (const std::exception& ex) {  // the frontend may throw (bad_alloc, json, ...)
      e = std::make_shared<Entry>();
      e->error = std::string("exception while building: ") + ex.what();
    }
    (e->graph ? g_built : g_failed).fetch_add(1, std::memory_order_relaxed);
    lru_.push_front(key);
    map_.emplace(key, std::make_pair(e, lru_.begin()));
    g_cached.fetch_add(1, std::memory_order_relaxed);
    while (map_.size() > kCacheCapacity) {
      map_.erase(lru_.back());
      lru_.pop_back();
      g_cached.fetch_sub(1, std::memory_order_relaxed);
    }
    return e;
  }

 private:
  std::list<Key> lru_;  // most recent first
  std::unordered_map<Key, std::pair<std::shared_ptr<Entry>, typename std::list<Key>::iterator>, Hash> map_;
};

// The cache for one key type on device dev, created on first use and deliberately never
// destroyed (graphs hold cuDNN objects; destroying them at static-destruction time can run after
// the CUDA runtime has gone).
template <class Key, class Hash>
GraphCache<Key, Hash>& device_cache(int dev) {
  static std::mutex mu;
  static auto* caches = new std::unordered_map<int, GraphCache<Key, Hash>*>();
  std::lock_guard<std::mutex> lock(mu);
  GraphCache<Key, Hash>*& c = (*caches)[dev];
  if (c == nullptr) c = new GraphCache<Key, Hash>();
  return *c;
}

// FNV-style mixing of integers (for the key hashes).
constexpr uint64_t kHashSeed = 1469598103934665603ull;
inline void hash_mix(uint64_t& h, int64_t x) {
  h ^= static_cast<uint64_t>(x) + 0x9e3779b97f4a7c15ull + (h << 6) + (h >> 2);
}
inline size_t hash_ints(std::initializer_list<int64_t> xs, uint64_t h = kHashSeed) {
  for (int64_t x : xs) hash_mix(h, x);
  return static_cast<size_t>(h);
}

inline std::string fe_error_string(const fe::error_t& e) {
  std::ostringstream os;
  os << e.code << ": " << e.err_msg;  // the getters are not const
  return os.str();
}

// The cuDNN status-name helpers changed between versions; cudnnGetErrorString is stable.
inline std::string cudnn_status_string(cudnnStatus_t s) {
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

// validate .. build_plans .. workspace size of a described graph; on success moves it into entry,
// else leaves entry->error.
inline void finish_build(std::shared_ptr<fe::graph::Graph> g, cudnnHandle_t handle, Entry& entry) {
  auto step = [&](const char* what, const fe::error_t& e) {
    if (e.is_bad()) entry.error = std::string(what) + ": " + fe_error_string(e);
    return e.is_good();
  };
  if (!step("validate", g->validate())) return;
  if (!step("build_operation_graph", g->build_operation_graph(handle))) return;
  if (!step("create_execution_plans", g->create_execution_plans({fe::HeurMode_t::A}))) return;
  if (!step("check_support", check_support(*g, handle))) return;
  if (!step("build_plans", build_plans(*g, handle))) return;
  int64_t ws = 0;
  if (!step("get_workspace_size", g->get_workspace_size(ws))) return;
  entry.workspace = std::max<int64_t>(ws, 0);
  entry.graph = std::move(g);
}

// ------------------------------------------------------------------------------------------------
// Layout: [T, H, D] row-major with free row/head strides (s0, s1) is cuDNN's [B=1, H, S, D] with
// strides {batch, head stride, row stride, 1}; the batch stride is irrelevant for B = 1.

inline std::vector<int64_t> bhsd_dim(int64_t H, int64_t S, int64_t D) { return {1, H, S, D}; }
inline std::vector<int64_t> bhsd_stride(int64_t H, int64_t S, int64_t s0, int64_t s1) {
  return {std::max(s0 * S, s1 * H), s1, s0, 1};
}
inline fe::graph::Tensor_attributes bhsd(const char* name, int64_t uid, int64_t H, int64_t S, int64_t D, int64_t s0,
                                         int64_t s1) {
  return fe::graph::Tensor_attributes().set_name(name).set_uid(uid).set_dim(bhsd_dim(H, S, D)).set_stride(
      bhsd_stride(H, S, s0, s1));
}

// (row, head) strides of t, with the strides of size-1 dimensions replaced by the dense ones.
inline void dense_strides(const TensorView& t, int64_t D, int64_t& s0, int64_t& s1) {
  s1 = t.shape[1] > 1 ? t.stride[1] : D;
  s0 = t.shape[0] > 1 ? t.stride[0] : t.shape[1] * s1;
}

inline uint32_t float_bits(float f) {
  uint32_t b;
  std::memcpy(&b, &f, sizeof b);
  return b;
}
inline float bits_float(uint32_t b) {
  float f;
  std::memcpy(&f, &b, sizeof f);
  return f;
}
// spec.scale, or 1/sqrt(D) where it is 0.
inline float resolve_scale(const AttentionSpec& spec, int64_t D) {
  return spec.scale != 0.f ? spec.scale : static_cast<float>(1.0 / std::sqrt(static_cast<double>(D)));
}

// ------------------------------------------------------------------------------------------------
// Masks. cuDNN keeps col <= row (+ Tk - Tq bottom-right) + right_bound and col + left_bound > row
// (+ Tk - Tq): with right bound 0 and left bound W, exactly the W keys ending at the diagonal.

enum class Align : int64_t { None, TopLeft, BottomRight };

struct Mask {
  int64_t causal = 0, left_bound = 0;  // left_bound: the window W (0: none)
  Align align = Align::None;
  bool operator==(const Mask&) const = default;
};

template <class... Args>
std::string msg(const Args&... args) {
  std::ostringstream os;
  (os << ... << args);
  return os.str();
}

// Maps spec onto a cuDNN mask for Tq queries against Tk >= 1 keys: "" and m, or why the positions
// are not expressible. delta = q_pos0 - k_pos0 must be 0 (top-left) or Tk - Tq with Tq <= Tk
// (bottom-right) when a mask is on; a window that starts before the first key for every row is
// dropped (plain causal).
inline std::string resolve_mask(const AttentionSpec& spec, int64_t Tq, int64_t Tk, Mask& m) {
  const int64_t delta = spec.q_pos0 - spec.k_pos0;
  int64_t window = spec.window;
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
  m.causal = spec.causal ? 1 : 0;
  m.left_bound = window;
  m.align = align;
  return {};
}

// Sets the mask on SDPA_attributes or SDPA_backward_attributes.
template <class Attrs>
void apply_mask(Attrs& attrs, const Mask& m) {
  if (m.align != Align::None)
    attrs.set_diagonal_alignment(m.align == Align::BottomRight ? fe::DiagonalAlignment_t::BOTTOM_RIGHT
                                                               : fe::DiagonalAlignment_t::TOP_LEFT);
  if (m.causal) attrs.set_diagonal_band_right_bound(0);
  if (m.left_bound > 0) attrs.set_diagonal_band_left_bound(static_cast<int>(m.left_bound));
}

inline std::string describe_mask(const Mask& m) {
  return msg(m.causal ? " causal" : " non-causal", " window ", m.left_bound,
             m.align == Align::TopLeft ? " top-left" : m.align == Align::BottomRight ? " bottom-right" : "");
}

// ------------------------------------------------------------------------------------------------
// Argument checks. They return an error message ("" = fine) so the supported() functions can use
// them without exceptions; the launches throw the message. Same wording as attention.cu.

inline std::string check_view(const char* arg, const TensorView& v) {
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
inline std::string check_alignment(const char* arg, const TensorView& v) {
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


inline std::string check_device_pointer(const char* arg, const TensorView& v) {
  if (v.numel() == 0) return {};
  const std::string e = device_pointer_problem(arg, v.data);
  return e.empty() ? e : "cudnn sdpa: " + e;
}

// The log-sum-exp tensor: [Hq, Tq] f32 contiguous on the device ("" = fine).
inline std::string check_lse(const TensorView& lse, int64_t Hq, int64_t Tq) {
  if (lse.device != Device::CUDA || lse.dtype != DType::F32 || lse.ndim != 2 || lse.shape[0] != Hq ||
      lse.shape[1] != Tq || !lse.is_contiguous())
    return msg("cudnn sdpa: argument 'lse' must be a contiguous f32 cuda tensor of shape [", Hq, ", ", Tq,
               "], found ", dtype_name(lse.dtype), " ", device_name(lse.device), " ", lse.shape_str());
  return {};
}

using Named = std::pair<const char*, const TensorView*>;

}  // namespace rt::cuda::cudnn_detail

#endif  // RT_HAVE_CUDNN_SDPA
