// The Qwen2 decoder graph: embedding -> N x (attention plugin, MLP) -> final norm -> lm_head.
//
// The model owns the weights on the compute device (fp32 on the CPU backend) and the MLP; the
// attention sublayer of every layer is the plugin's (see sdk/include/rt/sdk/attention_backend.h).
#pragma once

#include <cstdint>
#include <functional>
#include <memory>
#include <span>
#include <string>
#include <unordered_map>
#include <vector>

#include "loader/hf_config.h"
#include "loader/weight_store.h"
#include "rt/sdk/attention_backend.h"

namespace rt {

class Qwen2Model {
 public:
  // `attention` must already be configured; the model does not own it or `ops`.
  Qwen2Model(HfConfig config, Ops& ops, AttentionBackend& attention);
  ~Qwen2Model();

  // Copies (and converts to fp32) every tensor the graph needs from a validated store, then
  // creates the plugin's extra parameters that the store lacks from their init rules.
  void load_weights(const WeightStore& store);
  // The attention plugin's extra parameters that load_weights did not find in the checkpoint and
  // created by their declared init rules instead (untrained: e.g. a base model run with L2A), one
  // entry per declaration: "model.layers.*.router.weight (zeros)", or with the layer numbers when
  // only some layers lacked it. Empty after init_random or when the checkpoint had them all.
  const std::vector<std::string>& params_from_init_rules() const { return params_from_init_; }
  // The architecture's exact shapes with random weights (normal(0, 0.02) matrices, unit norms,
  // zero biases, as transformers initializes Qwen2), for profiling without a checkpoint.
  void init_random(uint64_t seed);

  const HfConfig& config() const { return config_; }
  const ModelDims& dims() const { return dims_; }
  size_t parameter_count() const;
  Ops& ops() const { return ops_; }
  AttentionBackend& attention() const { return attention_; }

  // One KV-cache state per layer for a sequence of at most max_tokens positions.
  using States = std::vector<std::unique_ptr<AttentionState>>;
  States new_states(int64_t max_tokens);

  // Runs `ids` (positions continue from the states, or start at 0 without states) and returns
  // fp32 logits [T, vocab], or only the last row's [1, vocab] when last_only.
  Tensor forward(std::span<const int32_t> ids, States* states, bool last_only);

  // The work of one decode step with the token id and its position in device memory (I32 [1] each,
  // the position equal to the states' tokens_seen()): what DecodeSession captures once and replays.
  // Writes logits [1, vocab] f32. Needs Capabilities::graph_decode; host-side state is not advanced.
  void decode_step_at(TensorView id, TensorView pos, States& states, TensorView logits);

  // Only the attention plugin's sublayer of one layer, on a residual stream x [T, hidden] f32
  // (positions from 0, no cache): what `runtime profile` times per backend.
  void attention_layer_forward(int layer, TensorView x);

  // ---- Training (qwen2_train.cpp) ----
  // Every parameter by full name, sorted: the base model's and the plugin's extra ones.
  std::vector<std::string> parameter_names() const;
  TensorView parameter(const std::string& name) const { return weight(name); }
  // Gradient buffers by full name (accum dtype, shaped like the parameter). A parameter absent
  // from the map is frozen: it still passes activation gradients, but gets none itself.
  using GradMap = std::unordered_map<std::string, Tensor>;
  // Forward and backward of one sequence for the language-model loss mean_t CE(logits[t], ids[t+1])
  // (t < T-1, the Hugging Face labels = input_ids convention) times tc.loss_scale, plus what the
  // attention plugin adds (the L2A regularizer). Adds the scaled LM loss to lm_loss[0] ([1], accum
  // dtype, on the device) and the gradients into grads. recompute: keep only each layer's input
  // and recompute its activations during the backward (gradient checkpointing).
  // grads_final (optional) is called as gradients become final during the backward: with n_layers
  // after the head (lm_head, final norm), with i after layer i, with -1 after the embedding (data
  // parallelism starts summing them over ranks meanwhile).
  void train_sequence(std::span<const int32_t> ids, const TrainContext& tc, const GradMap& grads, bool recompute,
                      TensorView lm_loss, const std::function<void(int stage)>& grads_final = nullptr);
  // Sum of the token losses of one sequence (no gradients) and the number of predicted tokens.
  double sequence_loss(std::span<const int32_t> ids, int64_t* predicted);
  // Log-likelihood scoring (runtime eval): the model runs `ids`, and the last targets.size() rows
  // are scored against `targets` (row t predicts the token after ids[t]): the summed
  // log-probability, computed on the device by the fused lm-head cross-entropy (no [T, vocab]
  // logits leave the device), and whether every target is the row's argmax.
  struct TargetScore {
    double logprob = 0;
    bool greedy = true;
  };
  TargetScore score_targets(std::span<const int32_t> ids, std::span<const int32_t> targets);
  // Many requests in one forward (packing): their tokens are concatenated, every per-token op runs
  // once over all of them, and the attention backend gets them as segments with positions from 0
  // (AttentionBackend::forward_segments: each request attends only to itself, as scored alone), for
  // every backend. One score per request, as score_targets gives it up to rounding (the GEMMs see
  // more rows); greedy comes from the same Ops::lm_head_cross_entropy pass as the losses.
  // share_prefix: consecutive requests whose inputs start with the same tokens (a multiple-choice
  // item's context) run that prefix once: its rows go through every per-token op once, and each
  // request's remaining rows attend to it through a KV cache (AttentionBackend::forward with a
  // state, the prefix replayed into a fresh state per request), so each still sees only itself
  // and its own prefix at the same positions. Scores then agree with unshared ones up to rounding.
  struct ScoreRequest {
    std::span<const int32_t> ids, targets;
  };
  std::vector<TargetScore> score_targets_packed(std::span<const ScoreRequest> requests, bool share_prefix = false);
  // Fewest tokens two requests must share for score_targets_packed to run them as one prefix.
  static constexpr int64_t kMinSharedPrefix = 8;

 private:
  class LayerParamsView;
  class LayerGradsView;
  void final_logits(TensorView x_rows, TensorView logits);
  Tensor hidden_states(std::span<const int32_t> ids);
  // The residual stream after the last layer of ids holding documents of these lengths, back to
  // back, each attending only to itself from position 0.
  Tensor hidden_states_packed(std::span<const int32_t> ids, std::span<const int64_t> lengths);
  // Documents that share a prefix: the group's rows are the prefix, then each document's rest
  // (branches[i] rows, possibly 0), back to back; document i is prefix + its branch.
  struct PrefixGroup {
    int64_t prefix = 0;
    std::vector<int64_t> branches;
  };
  Tensor hidden_states_grouped(std::span<const int32_t> ids, std::span<const PrefixGroup> groups);
  Tensor upload_ids(std::span<const int32_t> ids, int64_t pos0);
  void check_ids(std::span<const int32_t> ids, int64_t pos0) const;  // vocabulary and position limit
  Tensor lm_head_loss(TensorView x, std::span<const int32_t> ids, float grad_scale, TensorView dx,
                      const GradMap* grads);
  void add_weight(const std::string& name, TensorView host);
  void create_extra_params(const WeightStore* store);
  void stack_weight_groups();
  TensorView weight(const std::string& name) const;

  HfConfig config_;
  ModelDims dims_;
  Ops& ops_;
  AttentionBackend& attention_;
  std::unordered_map<std::string, Tensor> weights_;
  std::vector<std::unique_ptr<LayerParamsView>> layers_;
  std::vector<std::string> params_from_init_;
};

}  // namespace rt
