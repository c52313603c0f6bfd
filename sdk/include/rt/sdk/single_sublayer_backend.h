// An attention backend that is exactly one Qwen2 attention sublayer with a fixed mask: full_causal
// (window 0) and swa (window W, except in the layers set_full_layers names: Hugging Face's
// "full_attention" layers of a checkpoint that slides only some). Subclasses only parse their
// options into spec_ (and the full layers) in configure().
#pragma once

#include <algorithm>
#include <memory>
#include <vector>

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
    return std::make_unique<KvCache>(*ctx.ops, *ctx.dims, max_tokens, spec_at(ctx.layer).window);
  }
  double forward_flops(const ModelDims& d, int64_t T) const override {  // the mean over the layers
    const auto full = static_cast<int64_t>(std::count(full_layer_.begin(), full_layer_.end(), true));
    if (full == 0 || d.n_layers <= 0) return attention_sublayer_flops(d, T, spec_.window);
    return (static_cast<double>(full) * attention_sublayer_flops(d, T, 0) +
            static_cast<double>(d.n_layers - full) * attention_sublayer_flops(d, T, spec_.window)) /
           static_cast<double>(d.n_layers);
  }
  void forward(const LayerContext& ctx, TensorView x, AttentionState* state) override {
    attention_sublayer_forward(ctx, spec_at(ctx.layer), x, static_cast<KvCache*>(state));
  }
  void forward_segments(const LayerContext& ctx, TensorView x, std::span<const int64_t> segments) override {
    attention_sublayer_forward_segments(ctx, spec_at(ctx.layer), x, segments);
  }
  void decode_step_at(const LayerContext& ctx, TensorView x, AttentionState& state, TensorView pos) override {
    attention_sublayer_decode_at(ctx, spec_at(ctx.layer), x, static_cast<KvCache&>(state), pos);
  }
  std::unique_ptr<SavedActivations> forward_train(const LayerContext& ctx, TensorView x,
                                                  const TrainContext&) override {
    auto saved = std::make_unique<Saved>();
    saved->act = attention_sublayer_forward_train(ctx, spec_at(ctx.layer), x, TensorView{});
    return saved;
  }
  void backward(const LayerContext& ctx, SavedActivations& saved, TensorView dx, const LayerGrads& grads,
                const TrainContext&) override {
    attention_sublayer_backward(ctx, spec_at(ctx.layer), static_cast<Saved&>(saved).act, dx, grads, TensorView{},
                                TensorView{});
  }

 protected:
  virtual bool ring_cache() const = 0;  // a ring buffer of spec_.window positions, or every token
  AttentionSublayerSpec spec_;
  // The layers (0-based) that attend to every past token whatever spec_.window says; call after
  // setting spec_.
  void set_full_layers(const std::vector<int>& layers, int64_t n_layers) {
    full_layer_.assign(static_cast<size_t>(std::max<int64_t>(n_layers, 0)), false);
    for (int l : layers)
      if (l >= 0 && l < n_layers) full_layer_[static_cast<size_t>(l)] = true;
    full_spec_ = spec_;
    full_spec_.window = 0;
  }
  const AttentionSublayerSpec& spec_at(int layer) const {
    return layer >= 0 && static_cast<size_t>(layer) < full_layer_.size() && full_layer_[static_cast<size_t>(layer)]
               ? full_spec_
               : spec_;
  }

 private:
  struct Saved final : SavedActivations {
    SublayerActivations act;
  };
  std::vector<bool> full_layer_;
  AttentionSublayerSpec full_spec_;
};

}  // namespace rt
