// An attention backend that is exactly one Qwen2 attention sublayer with a fixed mask: full_causal
// (window 0) and swa (window W). Subclasses only parse their options into spec_ in configure().
#pragma once

#include <memory>

#include "rt/sdk/attention_sublayer.h"

namespace rt {

class SingleSublayerBackend : public AttentionBackend {
 public:
  Capabilities capabilities() const override {
    Capabilities c;
    c.cpu = true;
    c.cuda = true;  // the shared sublayer runs on any Ops
    c.backward = true;
    c.decode = true;
    c.graph_decode = true;
    c.kv = ring_cache() ? KvPolicy::RingBuffer : KvPolicy::Full;
    c.windowed = ring_cache();
    c.hf_attention = ring_cache() ? Capabilities::HfAttention::SlidingWindow : Capabilities::HfAttention::Full;
    return c;
  }
  std::unique_ptr<AttentionState> new_state(const LayerContext& ctx, int64_t max_tokens) override {
    return std::make_unique<KvCache>(*ctx.ops, *ctx.dims, max_tokens, spec_.window);
  }
  double forward_flops(const ModelDims& d, int64_t T) const override {
    return attention_sublayer_flops(d, T, spec_.window);
  }
  void forward(const LayerContext& ctx, TensorView x, AttentionState* state) override {
    attention_sublayer_forward(ctx, spec_, x, static_cast<KvCache*>(state));
  }
  void decode_step_at(const LayerContext& ctx, TensorView x, AttentionState& state, TensorView pos) override {
    attention_sublayer_decode_at(ctx, spec_, x, static_cast<KvCache&>(state), pos);
  }
  std::unique_ptr<SavedActivations> forward_train(const LayerContext& ctx, TensorView x,
                                                  const TrainContext&) override {
    auto saved = std::make_unique<Saved>();
    saved->act = attention_sublayer_forward_train(ctx, spec_, x, TensorView{});
    return saved;
  }
  void backward(const LayerContext& ctx, SavedActivations& saved, TensorView dx, const LayerGrads& grads,
                const TrainContext&) override {
    attention_sublayer_backward(ctx, spec_, static_cast<Saved&>(saved).act, dx, grads, TensorView{},
                                TensorView{});
  }

 protected:
  virtual bool ring_cache() const = 0;  // a ring buffer of spec_.window positions, or every token
  AttentionSublayerSpec spec_;

 private:
  struct Saved final : SavedActivations {
    SublayerActivations act;
  };
};

}  // namespace rt
