// AttentionBackend: the attention part of one decoder layer, as a plugin implements it.
//
// The runtime owns the residual stream and the MLP; the plugin owns everything between
// "residual in" and "residual out" of the attention sublayer(s): the input norm, projections,
// RoPE, the attention kernel, the output projection and the residual add. That is what lets
// L2A add a second, routed sublayer without the runtime knowing about it.
#pragma once

#include <cstdint>
#include <memory>
#include <span>
#include <string>
#include <vector>

#include "rt/sdk/ops.h"
#include "rt/sdk/error.h"
#include "rt/sdk/options.h"
#include "rt/sdk/tensor.h"
#include "rt/sdk/training.h"

namespace rt {

// Architecture numbers of the model a backend runs inside.
struct ModelDims {
  int64_t hidden = 0;
  int64_t n_layers = 0;
  int64_t n_heads = 0;
  int64_t n_kv_heads = 0;
  int64_t head_dim = 0;
  int64_t intermediate = 0;
  int64_t vocab = 0;
  int64_t max_positions = 0;
  double rope_theta = 10000.0;
  float rms_eps = 1e-6f;
  // Qwen3: an RMSNorm over head_dim on every head of q and k before RoPE (self_attn.q_norm /
  // k_norm, weight [head_dim]), and q/k/v projections without bias. Qwen2: no norm, biases.
  bool qk_norm = false;
  bool qkv_bias = true;
};

// A parameter the backend needs beyond the base model, created by the runtime at load time
// unless the checkpoint already has it. `name` is relative to the layer ("router.weight").
// `init`: "zeros", "ones", or "copy_of:<layer-relative name>" (e.g. "copy_of:input_layernorm.weight").
struct ParamDecl {
  std::string name;
  std::vector<int64_t> shape;
  std::string init;
  std::vector<int> layers;  // the layers that have it; empty: every layer
};

// The weights of one decoder layer, looked up by their Hugging Face names relative to the layer
// ("self_attn.q_proj.weight", "input_layernorm.weight"). Throws rt::Error when missing.
class LayerParams {
 public:
  virtual ~LayerParams() = default;
  virtual TensorView get(const std::string& name) const = 0;
  virtual bool has(const std::string& name) const = 0;
};

// Everything a backend call needs to know about where it runs.
struct LayerContext {
  const ModelDims* dims = nullptr;
  int layer = 0;
  Ops* ops = nullptr;
  const LayerParams* params = nullptr;
};

// Per-layer, per-sequence inference state (the KV cache). Created by the backend, held by the
// runtime, passed back on every call for that sequence.
class AttentionState {
 public:
  virtual ~AttentionState() = default;
  virtual int64_t tokens_seen() const = 0;  // positions consumed so far
  virtual size_t kv_bytes() const = 0;      // device bytes held by the cache
  // A decode step at a device-held position (AttentionBackend::decode_step_at) leaves the host-side
  // count alone, since a replayed step runs no host code; the runtime moves it on with this after
  // each step.
  virtual void advance(int64_t tokens) {
    (void)tokens;
    fail("this attention state cannot be advanced by the runtime (its backend has no decode_step_at)");
  }
  // Routed backends (L2A): of the decode steps (decode_step_at) this state has seen, how many ran
  // global attention. False when the backend routes nothing or has not counted.
  virtual bool decode_routing(int64_t* routed, int64_t* steps) const {
    (void)routed;
    (void)steps;
    return false;
  }
};

enum class KvPolicy : int32_t { Full = 0, RingBuffer = 1, None = 2, Custom = 3 };

struct Capabilities {
  bool cpu = false;
  bool cuda = false;
  bool backward = false;
  bool decode = false;
  bool router = false;  // needs a Router (attach_router before configure)
  KvPolicy kv = KvPolicy::Full;
  bool graph_decode = false;  // decode_step_at: a decode step the runtime can capture and replay
  // What to use instead on a device this backend does not run on (a static string, e.g. "on the
  // CPU, use l2a_dense: the same L2A"), appended to the runtime's refusal.
  const char* other_device_hint = nullptr;

  // What the runtime needs to know about a backend without naming it:
  // The config.json section (a static string) in which an exported model records this backend's
  // options (L2A: "l2a"); loading a checkpoint with that section merges it into the options, and
  // one without a recorded backend runs by default on the first backend, by name, that declares
  // the section and runs on the device.
  const char* config_section = nullptr;
  // Takes the `window` option (--window); backends without it refuse --window.
  bool windowed = false;
  // How the backend maps onto Hugging Face's per-layer attention types: exports write HF's
  // fields (use_sliding_window, sliding_window, layer_types) so that transformers runs them the
  // same way; SlidingWindow also takes a base model's sliding_window as its default window, and
  // Full warns when a checkpoint enables sliding windows.
  enum class HfAttention : int32_t { None = 0, Full = 1, SlidingWindow = 2 };
  HfAttention hf_attention = HfAttention::None;
};

// What a checkpoint shows about a backend's options (AttentionBackend::reconcile_checkpoint).
struct CheckpointFacts {
  std::string config_source;  // the config.json path, for messages
  Options recorded;           // the options the checkpoint records (its config_section)
  struct Tensor {
    std::string name, file;
  };
  std::vector<Tensor> tensors;  // every tensor of the checkpoint; empty for --init random
};

class Router;

class AttentionBackend {
 public:
  virtual ~AttentionBackend() = default;
  virtual Capabilities capabilities() const = 0;
  // Called once before any other call; validates and keeps plugin options (e.g. "window").
  virtual void configure(const Options& options, const ModelDims& dims) = 0;
  virtual std::vector<ParamDecl> extra_params(const ModelDims&) const { return {}; }

  // Called before configure with the options of the run (the checkpoint's recorded ones, then
  // --set): fills the options the checkpoint fixes, and throws rt::Error, naming the file and both
  // values, when an option asked for contradicts what the checkpoint holds (L2A: a layout whose
  // weights it lacks). The default accepts everything.
  virtual void reconcile_checkpoint(const CheckpointFacts& /*ckpt*/, Options& /*options*/) const {}

  // A fresh KV cache for one sequence of at most max_tokens positions.
  virtual std::unique_ptr<AttentionState> new_state(const LayerContext& ctx, int64_t max_tokens) = 0;

  // Training/prefill forward. x: residual stream [T, hidden], f32, updated in place to
  // x + attention_sublayer(x). Row t of x sits at position state ? state->tokens_seen() + t : t.
  // With a state, the new keys/values are appended to it.
  virtual void forward(const LayerContext& ctx, TensorView x, AttentionState* state) = 0;

  // x [T, hidden] holds independent sequences back to back, segments[i] rows each, every one from
  // position 0 and without a state (the documents of a packed evaluation batch): the same as
  // forward(ctx, rows of sequence i, nullptr) for each. The default does just that; a backend can
  // do better by running what is per token (norms, projections) once over all rows.
  virtual void forward_segments(const LayerContext& ctx, TensorView x, std::span<const int64_t> segments) {
    int64_t row = 0;
    for (int64_t n : segments) {
      if (n > 0) forward(ctx, x.rows(row, row + n), nullptr);
      row += n;
    }
  }

  // FLOPs of one forward over T tokens (multiply-adds count 2), for TFLOP/s in `runtime profile`;
  // 0 when unknown.
  virtual double forward_flops(const ModelDims&, int64_t /*T*/) const { return 0.0; }

  // Capabilities::graph_decode: one token x [1, hidden] against the cache, at the position held in
  // device memory pos (I32 [1]; the runtime keeps it equal to state.tokens_seen()). It must queue the
  // same work whatever the position (position-dependent arguments come from pos, through the
  // Ops::*_at ops), because the runtime captures one step and replays it for every token. It must
  // not change host-side state: the runtime calls state.advance(1) after each step.
  virtual void decode_step_at(const LayerContext&, TensorView /*x*/, AttentionState&, TensorView /*pos*/) {
    fail("this attention backend has no decode_step_at (Capabilities::graph_decode is false)");
  }

  // ---- Training (Capabilities::backward) ----
  // Like forward without a state (positions from 0), keeping what backward needs.
  virtual std::unique_ptr<SavedActivations> forward_train(const LayerContext&, TensorView /*x*/,
                                                          const TrainContext&) {
    fail("this attention backend does not support training (no backward)");
  }
  // dx: dL/d(x after forward_train) in, dL/d(x before) out, in place (accum dtype). Adds the
  // gradients of this layer's trainable parameters into grads.
  virtual void backward(const LayerContext&, SavedActivations&, TensorView /*dx*/, const LayerGrads&,
                        const TrainContext&) {
    fail("this attention backend does not support training (no backward)");
  }

  // Routed backends (Capabilities::router): the runtime hands over the router to use, which it
  // owns and has configured with the same options. Called once, before configure.
  virtual void attach_router(Router*) {}
  // Per-layer routing report of the last forward of a sequence (inference), for `runtime
  // sparsity`: d for every position of layer `layer`, or an empty vector when not routed.
  virtual std::vector<float> last_decisions(int /*layer*/) const { return {}; }
};

}  // namespace rt
