// Token-by-token decoding of one sequence: a prompt through the batched forward, then one step
// per token.
//
// Each step reads the token id and its position from device memory, so its kernels and their
// arguments are the same at every position. On a backend that can record work (CUDA graphs) and
// a plugin with Capabilities::graph_decode, the step is therefore captured once (embedding to
// logits, ~245 kernels at 0.5B) and replayed for every token: one launch per token instead of one per
// kernel. The replayed step and the same step launched op by op give bit-identical logits.
#pragma once

#include <cstdint>
#include <memory>
#include <span>

#include "model/qwen2_model.h"

namespace rt {

class DecodeSession {
 public:
  // How step() runs.
  enum class Mode {
    Graph,    // the captured step, replayed
    Eager,    // the same device-position step, launched op by op (no capture on this backend, or
              // graphs = false)
    Forward,  // the plugin has no decode_step_at: the batched forward with one token
  };

  // A KV cache for up to max_tokens positions. graphs = false launches every step op by op.
  DecodeSession(Qwen2Model& model, int64_t max_tokens, bool graphs = true);
  ~DecodeSession();
  DecodeSession(const DecodeSession&) = delete;
  DecodeSession& operator=(const DecodeSession&) = delete;

  // Tokens at the next positions through the batched forward (a prompt, or any chunk). Returns the
  // last token's logits [1, vocab] f32, valid until the next call.
  TensorView prefill(std::span<const int32_t> ids);
  // One token at the next position. Returns its logits [1, vocab] f32, valid until the next call.
  TensorView step(int32_t id);

  int64_t position() const { return states_.front()->tokens_seen(); }
  int64_t max_tokens() const { return max_tokens_; }
  Mode mode() const { return mode_; }
  static const char* mode_name(Mode m);
  const Qwen2Model::States& states() const { return states_; }
  size_t kv_bytes() const;
  // A routed backend's decode steps so far, summed over layers: (layer, step) pairs that ran global
  // attention and all pairs; {0, 0} for a backend without routing.
  struct Routing {
    int64_t routed = 0, steps = 0;
  };
  Routing routing() const;

 private:
  Qwen2Model& model_;
  Ops& ops_;
  int64_t max_tokens_;
  Mode mode_;
  bool stepped_ = false;  // a first step ran op by op (graphs are captured from the second)
  Qwen2Model::States states_;
  Tensor io_;      // I32 [2] on the device: the step's token id, then its position
  Tensor logits_;  // [1, vocab] f32: what step() writes (the graph's output)
  Tensor forward_logits_;
  std::unique_ptr<Ops::CapturedWork> graph_;
};

}  // namespace rt
