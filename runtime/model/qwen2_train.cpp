// Training forward and backward of the Qwen2 graph, one sequence at a time:
//   embedding -> N x (attention plugin, MLP) -> final norm -> lm_head + cross-entropy (fused)
// and back. The plugin owns its sublayer's backward (forward_train / backward); the MLP, the final
// norm, the head and the embedding are here.
#include <algorithm>
#include <vector>

#include "model/host_values.h"
#include "model/layer_params_view.h"
#include "model/mlp.h"
#include "model/qwen2_model.h"
#include "rt/sdk/error.h"

namespace rt {

namespace {
constexpr int32_t kIgnore = -100;
}

// Layer-relative names -> gradient buffers; frozen parameters give an empty view.
class Qwen2Model::LayerGradsView final : public LayerGrads {
 public:
  LayerGradsView(const GradMap& g, std::string prefix) : grads_(g), prefix_(std::move(prefix)) {}
  TensorView get(const std::string& name) const override {
    auto it = grads_.find(prefix_ + name);
    return it == grads_.end() ? TensorView{} : it->second.view;
  }

 private:
  const GradMap& grads_;
  std::string prefix_;
};

std::vector<std::string> Qwen2Model::parameter_names() const {
  std::vector<std::string> names;
  names.reserve(weights_.size());
  for (const auto& [name, t] : weights_) names.push_back(name);
  std::sort(names.begin(), names.end());
  return names;
}

// Final norm + lm_head + cross-entropy against ids shifted by one. Returns the per-token losses
// [T] (0 at the last position, which predicts nothing). With dx: dx += dL/dx for the loss scaled by
// grad_scale, and the head's / final norm's gradients go to grads.
Tensor Qwen2Model::lm_head_loss(TensorView x, std::span<const int32_t> ids, float grad_scale, TensorView dx,
                                const GradMap* grads) {
  const int64_t T = x.shape[0];
  std::vector<int32_t> targets(static_cast<size_t>(T), kIgnore);
  for (int64_t t = 0; t + 1 < T; ++t) targets[static_cast<size_t>(t)] = ids[static_cast<size_t>(t + 1)];
  Tensor tgt = ops_.alloc(DType::I32, {T});
  ops_.copy(TensorView::contiguous(targets.data(), DType::I32, Device::CPU, {T}), tgt);

  Tensor h = ops_.alloc(ops_.activation_dtype(), {T, dims_.hidden});
  ops_.rmsnorm(x, weight("model.norm.weight"), dims_.rms_eps, h);
  const char* head = config_.tie_word_embeddings ? "model.embed_tokens.weight" : "lm_head.weight";
  auto grad_of = [&](const std::string& n) -> TensorView {
    if (!grads) return {};
    auto it = grads->find(n);
    return it == grads->end() ? TensorView{} : it->second.view;
  };
  Tensor losses = ops_.alloc(ops_.accum_dtype(), {T});
  if (!dx.data) {
    ops_.lm_head_cross_entropy(h, weight(head), tgt, grad_scale, losses, TensorView{}, TensorView{});
    return losses;
  }
  Tensor dh = ops_.alloc(ops_.activation_dtype(), {T, dims_.hidden});
  ops_.lm_head_cross_entropy(h, weight(head), tgt, grad_scale, losses, dh, grad_of(head));
  ops_.rmsnorm_backward(x, weight("model.norm.weight"), dims_.rms_eps, dh, dx, grad_of("model.norm.weight"));
  return losses;
}

void Qwen2Model::train_sequence(std::span<const int32_t> ids, const TrainContext& tc, const GradMap& grads,
                                bool recompute, TensorView lm_loss, const std::function<void(int)>& grads_final) {
  const int64_t T = static_cast<int64_t>(ids.size());
  RT_CHECK(T >= 2, "train: a training sequence needs at least 2 tokens, found ", T);
  Tensor id_dev = upload_ids(ids, 0);
  const int L = static_cast<int>(dims_.n_layers);
  std::vector<LayerGradsView> layer_grads;
  layer_grads.reserve(static_cast<size_t>(L));
  for (int i = 0; i < L; ++i) layer_grads.emplace_back(grads, layers_[i]->prefix());
  auto ctx_of = [&](int i) { return LayerContext{&dims_, i, &ops_, layers_[i].get()}; };

  Tensor x = ops_.alloc(ops_.accum_dtype(), {T, dims_.hidden});
  ops_.embedding(weight("model.embed_tokens.weight"), id_dev, x);

  std::vector<Tensor> inputs(static_cast<size_t>(L));  // recompute: each layer's input
  std::vector<std::unique_ptr<SavedActivations>> attn(static_cast<size_t>(L));
  std::vector<MlpActivations> mlp(static_cast<size_t>(L));
  for (int i = 0; i < L; ++i) {
    const LayerContext ctx = ctx_of(i);
    if (recompute) {
      inputs[i] = ops_.alloc(x.view.dtype, {T, dims_.hidden});
      ops_.copy(x, inputs[i]);
    }
    auto a = attention_.forward_train(ctx, x, tc);
    auto m = mlp_forward_train(ctx, x);
    if (!recompute) {
      attn[i] = std::move(a);
      mlp[i] = std::move(m);
    }
  }

  Tensor dx = ops_.alloc(ops_.accum_dtype(), {T, dims_.hidden});
  ops_.fill(dx, 0.f);
  const float scale = tc.loss_scale / static_cast<float>(T - 1);
  Tensor losses = lm_head_loss(x, ids, scale, dx, &grads);
  Tensor sum = ops_.alloc(ops_.accum_dtype(), {1});
  ops_.fill(sum, 0.f);
  ops_.reduce_sum(losses, 1, sum);
  ops_.axpby(scale, sum, 1.f, lm_loss, lm_loss);
  if (grads_final) grads_final(L);

  // Recomputation replays the forward exactly, but must not count routing statistics twice.
  TrainContext replay = tc;
  replay.route_stats = TensorView{};
  replay.route_counts = nullptr;
  for (int i = L - 1; i >= 0; --i) {
    const LayerContext ctx = ctx_of(i);
    if (recompute) {
      Tensor xi = ops_.alloc(x.view.dtype, {T, dims_.hidden});
      ops_.copy(inputs[i], xi);
      attn[i] = attention_.forward_train(ctx, xi, replay);
      mlp[i] = mlp_forward_train(ctx, xi);
      inputs[i] = Tensor{};
    }
    mlp_backward(ctx, mlp[i], dx, layer_grads[i]);
    mlp[i] = MlpActivations{};
    attention_.backward(ctx, *attn[i], dx, layer_grads[i], tc);
    attn[i].reset();
    if (grads_final) grads_final(i);
  }
  auto emb = grads.find("model.embed_tokens.weight");
  if (emb != grads.end()) ops_.embedding_backward(id_dev, dx, emb->second);
  if (grads_final) grads_final(-1);
}

// The residual stream after the last layer (before the final norm), positions from 0, no cache,
// no gradients: what the scoring paths below share.
Tensor Qwen2Model::hidden_states(std::span<const int32_t> ids) {
  const int64_t T = static_cast<int64_t>(ids.size());
  return hidden_states_packed(ids, std::span<const int64_t>(&T, 1));
}

Tensor Qwen2Model::hidden_states_packed(std::span<const int32_t> ids, std::span<const int64_t> lengths) {
  std::vector<PrefixGroup> groups;
  groups.reserve(lengths.size());
  for (int64_t n : lengths) groups.push_back({0, {n}});
  return hidden_states_grouped(ids, groups);
}

Tensor Qwen2Model::hidden_states_grouped(std::span<const int32_t> ids, std::span<const PrefixGroup> groups) {
  const int64_t T = static_cast<int64_t>(ids.size());
  int64_t total = 0;
  for (const PrefixGroup& g : groups) {
    RT_CHECK(g.prefix >= 0 && !g.branches.empty(), "forward: a packed group needs a prefix >= 0 and documents");
    for (int64_t b : g.branches) {
      RT_CHECK(b >= 0 && g.prefix + b >= 1 && total + g.prefix + b <= T, "forward: packed document lengths do not ",
               "add up to the ", T, " tokens");
      RT_CHECK(g.prefix + b <= dims_.max_positions, "a sequence of ", g.prefix + b,
               " tokens is longer than the model supports (max_position_embeddings = ", dims_.max_positions,
               " in config.json)");
    }
    int64_t rows = g.prefix;
    for (int64_t b : g.branches) rows += b;
    total += rows;
  }
  RT_CHECK(total == T, "forward: packed document lengths sum to ", total, ", expected the ", T, " tokens");
  for (int64_t row = 0; const PrefixGroup& g : groups) {  // vocabulary, segment by segment (positions: above)
    if (g.prefix > 0) check_ids(ids.subspan(static_cast<size_t>(row), static_cast<size_t>(g.prefix)), 0);
    row += g.prefix;
    for (int64_t b : g.branches) {
      if (b > 0) check_ids(ids.subspan(static_cast<size_t>(row), static_cast<size_t>(b)), 0);
      row += b;
    }
  }
  Tensor id_dev = ops_.alloc(DType::I32, {T});
  ops_.copy(TensorView::contiguous(const_cast<int32_t*>(ids.data()), DType::I32, Device::CPU, {T}), id_dev);
  Tensor x = ops_.alloc(ops_.accum_dtype(), {T, dims_.hidden});
  ops_.embedding(weight("model.embed_tokens.weight"), id_dev, x);
  for (int i = 0; i < dims_.n_layers; ++i) {
    LayerContext ctx{&dims_, i, &ops_, layers_[i].get()};
    int64_t row = 0;
    std::vector<int64_t> alone;  // consecutive documents without a shared prefix, each from position 0
    int64_t alone_row = 0;
    auto flush_alone = [&] {  // one pass over their rows (the backend's forward_segments)
      if (!alone.empty()) attention_.forward_segments(ctx, x.view.rows(alone_row, row), alone);
      alone.clear();
    };
    for (const PrefixGroup& g : groups) {
      if (g.prefix == 0) {
        if (alone.empty()) alone_row = row;
        for (int64_t n : g.branches) {
          alone.push_back(n);
          row += n;
        }
        continue;
      }
      flush_alone();
      // The prefix once into x (and a cache); every further document replays it into a fresh
      // cache from a copy of the prefix's rows as they were before, so each branch attends to its
      // own prefix at positions 0 .. prefix - 1 and continues from position prefix.
      const TensorView pre = x.view.rows(row, row + g.prefix);
      const int64_t longest = *std::max_element(g.branches.begin(), g.branches.end());
      const auto runs = std::count_if(g.branches.begin(), g.branches.end(), [](int64_t b) { return b > 0; });
      Tensor pre_in;  // the prefix's rows before its sublayer, for the replays
      if (runs > 1) {
        pre_in = ops_.alloc(x.view.dtype, {g.prefix, dims_.hidden});
        ops_.copy(pre, pre_in);
      }
      std::unique_ptr<AttentionState> first = attention_.new_state(ctx, g.prefix + longest);
      attention_.forward(ctx, pre, first.get());
      row += g.prefix;
      int64_t k = 0;  // branches with rows so far
      for (int64_t b : g.branches) {
        if (b > 0) {
          std::unique_ptr<AttentionState> replay;
          if (k++ > 0) {
            replay = attention_.new_state(ctx, g.prefix + longest);
            Tensor scratch = ops_.alloc(x.view.dtype, {g.prefix, dims_.hidden});
            ops_.copy(pre_in, scratch);
            attention_.forward(ctx, scratch, replay.get());
          }
          attention_.forward(ctx, x.view.rows(row, row + b), replay ? replay.get() : first.get());
        }
        row += b;
      }
    }
    flush_alone();
    mlp_forward(ctx, x);
  }
  return x;
}

double Qwen2Model::sequence_loss(std::span<const int32_t> ids, int64_t* predicted) {
  const int64_t T = static_cast<int64_t>(ids.size());
  RT_CHECK(T >= 2, "loss: a sequence needs at least 2 tokens, found ", T);
  Tensor x = hidden_states(ids);
  Tensor losses = lm_head_loss(x, ids, 1.f, TensorView{}, nullptr);
  Tensor sum = ops_.alloc(ops_.accum_dtype(), {1});
  ops_.fill(sum, 0.f);
  ops_.reduce_sum(losses, 1, sum);
  if (predicted) *predicted = T - 1;
  return host_doubles(ops_, sum)[0];
}


Qwen2Model::TargetScore Qwen2Model::score_targets(std::span<const int32_t> ids, std::span<const int32_t> targets) {
  const ScoreRequest one{ids, targets};
  return score_targets_packed(std::span<const ScoreRequest>(&one, 1))[0];
}

std::vector<Qwen2Model::TargetScore> Qwen2Model::score_targets_packed(std::span<const ScoreRequest> requests,
                                                                      bool share_prefix) {
  for (const ScoreRequest& q : requests) {
    const int64_t T = static_cast<int64_t>(q.ids.size()), n = static_cast<int64_t>(q.targets.size());
    RT_CHECK(n >= 1 && n <= T, "score: ", n, " targets for ", T, " input tokens");
    for (int32_t t : q.targets)
      RT_CHECK(t >= 0 && t < dims_.vocab, "score: target token ", t, " is out of range for a vocabulary of ",
               dims_.vocab);
  }
  std::vector<TargetScore> out(requests.size());
  if (requests.empty()) return out;
  // Groups of consecutive requests and their shared prefix (0: each alone). A request may be the
  // prefix alone (a branch of 0 rows): its scored rows are then the prefix's.
  auto common = [](std::span<const int32_t> a, std::span<const int32_t> b) {
    int64_t k = 0;
    while (k < static_cast<int64_t>(std::min(a.size(), b.size())) && a[static_cast<size_t>(k)] == b[static_cast<size_t>(k)])
      ++k;
    return k;
  };
  std::vector<PrefixGroup> groups;
  std::vector<int32_t> ids;
  std::vector<int64_t> scored_row;  // packed row of every scored position, request by request
  std::vector<int32_t> tgt_host;
  int64_t row0 = 0;
  for (size_t r = 0; r < requests.size();) {
    size_t end = r + 1;
    int64_t p = static_cast<int64_t>(requests[r].ids.size());
    if (share_prefix) {
      while (end < requests.size()) {
        const int64_t c = std::min(p, common(requests[r].ids, requests[end].ids));
        if (c < kMinSharedPrefix) break;
        p = c;
        ++end;
      }
    }
    if (end == r + 1) p = 0;  // alone: no prefix
    PrefixGroup g{p, {}};
    const std::span<const int32_t> head = requests[r].ids.first(static_cast<size_t>(p));
    ids.insert(ids.end(), head.begin(), head.end());
    int64_t branch0 = row0 + p;
    for (size_t k = r; k < end; ++k) {
      const ScoreRequest& q = requests[k];
      const int64_t T = static_cast<int64_t>(q.ids.size()), n = static_cast<int64_t>(q.targets.size());
      g.branches.push_back(T - p);
      ids.insert(ids.end(), q.ids.begin() + p, q.ids.end());
      for (int64_t j = T - n; j < T; ++j) scored_row.push_back(j < p ? row0 + j : branch0 + (j - p));
      tgt_host.insert(tgt_host.end(), q.targets.begin(), q.targets.end());
      branch0 += T - p;
    }
    row0 = branch0;
    groups.push_back(std::move(g));
    r = end;
  }
  Tensor x = hidden_states_grouped(ids, groups);
  // Only the scored rows go through the head: each request's last n positions, gathered back to
  // back (a position inside a shared prefix is the prefix's row).
  const int64_t N = static_cast<int64_t>(tgt_host.size());
  Tensor rows = ops_.alloc(x.view.dtype, {N, dims_.hidden});
  for (int64_t at = 0; at < N;) {  // runs of consecutive packed rows, one copy each
    int64_t len = 1;
    while (at + len < N && scored_row[static_cast<size_t>(at + len)] == scored_row[static_cast<size_t>(at)] + len) ++len;
    const int64_t src = scored_row[static_cast<size_t>(at)];
    ops_.copy(x.view.rows(src, src + len), rows.view.rows(at, at + len));
    at += len;
  }
  int64_t at = 0;
  Tensor tgt = ops_.alloc(DType::I32, {N});
  ops_.copy(TensorView::contiguous(tgt_host.data(), DType::I32, Device::CPU, {N}), tgt);
  Tensor h = ops_.alloc(ops_.activation_dtype(), {N, dims_.hidden});
  ops_.rmsnorm(rows, weight("model.norm.weight"), dims_.rms_eps, h);
  const char* head = config_.tie_word_embeddings ? "model.embed_tokens.weight" : "lm_head.weight";
  Tensor losses = ops_.alloc(ops_.accum_dtype(), {N});
  // Greedy (whether each scored row's target is its logits' argmax) from the same logits.
  Tensor greedy = ops_.alloc(DType::I32, {N});
  ops_.lm_head_cross_entropy(h, weight(head), tgt, 1.f, losses, TensorView{}, TensorView{}, greedy);
  std::vector<int32_t> greedy_host(static_cast<size_t>(N));
  ops_.copy(greedy, TensorView::contiguous(greedy_host.data(), DType::I32, Device::CPU, {N}));
  const std::vector<double> loss = host_doubles(ops_, losses);
  for (size_t r = 0; r < requests.size(); ++r) {
    const int64_t n = static_cast<int64_t>(requests[r].targets.size());
    double sum = 0;  // in row order, in double: the same whatever else shares the batch
    for (int64_t i = 0; i < n; ++i) {
      sum += loss[static_cast<size_t>(at + i)];
      out[r].greedy = out[r].greedy && greedy_host[static_cast<size_t>(at + i)] != 0;
    }
    out[r].logprob = -sum;
    at += n;
  }
  return out;
}

}  // namespace rt
