#include "model/qwen2_model.h"

#include <algorithm>
#include <cmath>
#include <cstring>
#include <string>
#include <vector>

#include "loader/qwen2_weights.h"
#include "model/layer_params_view.h"
#include "model/mlp.h"
#include "model/model_dims.h"
#include "model/random_weights.h"
#include "rt/sdk/error.h"

namespace rt {

namespace {
// A host view of a stored tensor. safetensors does not promise aligned data, so a misaligned
// tensor is first copied into `scratch`.
TensorView host_view(const WeightInfo& w, std::vector<uint8_t>& scratch) {
  const auto dt = w.sdk_dtype();
  RT_CHECK(dt.has_value(), "tensor '", w.name, "' in ", w.file, " has dtype ", st_dtype_name(w.dtype),
           "; expected F32, F16 or BF16");
  const void* p = w.data;
  if (reinterpret_cast<uintptr_t>(p) % dtype_size(*dt) != 0) {
    scratch.assign(w.data, w.data + w.nbytes);
    p = scratch.data();
  }
  TensorView v;
  v.data = const_cast<void*>(p);
  v.dtype = *dt;
  v.device = Device::CPU;
  v.ndim = static_cast<int>(w.shape.size());
  RT_CHECK(v.ndim >= 1 && v.ndim <= TensorView::kMaxDims, "tensor '", w.name, "' in ", w.file,
           ": unsupported rank ", v.ndim);
  int64_t stride = 1;
  for (int i = v.ndim - 1; i >= 0; --i) {
    v.shape[i] = w.shape[i];
    v.stride[i] = stride;
    stride *= w.shape[i];
  }
  return v;
}
}  // namespace

Qwen2Model::Qwen2Model(HfConfig config, Ops& ops, AttentionBackend& attention)
    : config_(std::move(config)), dims_(dims_from_config(config_)), ops_(ops), attention_(attention) {
  for (int i = 0; i < dims_.n_layers; ++i) layers_.push_back(std::make_unique<LayerParamsView>(*this, i));
}

Qwen2Model::~Qwen2Model() = default;

TensorView Qwen2Model::weight(const std::string& name) const {
  auto it = weights_.find(name);
  if (it == weights_.end()) fail("model has no parameter '", name, "'");
  return it->second.view;
}

void Qwen2Model::add_weight(const std::string& name, TensorView host) {
  Tensor t;
  switch (host.ndim) {
    case 1: t = ops_.alloc(ops_.activation_dtype(), {host.shape[0]}); break;
    case 2: t = ops_.alloc(ops_.activation_dtype(), {host.shape[0], host.shape[1]}); break;
    default: fail("parameter '", name, "': expected 1 or 2 dimensions, found shape ", host.shape_str());
  }
  ops_.copy(host, t.view);
  weights_[name] = std::move(t);
}

size_t Qwen2Model::parameter_count() const {
  size_t n = 0;
  for (const auto& [name, t] : weights_) n += static_cast<size_t>(t.view.numel());
  return n;
}

void Qwen2Model::load_weights(const WeightStore& store) {
  validate_qwen2_weights(config_, store);
  // Non-finite weights would only surface as NaN (or silently finite) outputs much later: reject
  // them here, naming the tensor. Every float tensor the model may read (a tied model never reads
  // a stored lm_head.weight); one pass each.
  for (const auto& [name, w] : store.all())
    if (!(config_.tie_word_embeddings && name == "lm_head.weight")) check_finite(w);
  std::vector<uint8_t> scratch;
  for (const auto& e : qwen2_expected_tensors(config_)) add_weight(e.name, host_view(store.get(e.name), scratch));
  create_extra_params(&store);
  stack_weight_groups();
}

void Qwen2Model::init_random(uint64_t seed) {
  std::vector<float> host;
  for (const auto& [name, shape] : qwen2_expected_tensors(config_)) {
    int64_t n = 1;
    for (int64_t s : shape) n *= s;
    const DType wt = ops_.activation_dtype();
    Tensor t = shape.size() == 1 ? ops_.alloc(wt, {shape[0]}) : ops_.alloc(wt, {shape[0], shape[1]});
    if (ops_.device() == Device::CPU && wt == DType::F32) {
      random_parameter(name, n, seed, t.ptr<float>());  // straight into place: no second copy
    } else {
      host.resize(static_cast<size_t>(n));
      random_parameter(name, n, seed, host.data());
      TensorView src = t.view;
      src.data = host.data();
      src.device = Device::CPU;
      src.dtype = DType::F32;
      ops_.copy(src, t.view);
    }
    weights_[name] = std::move(t);
  }
  create_extra_params(nullptr);
  stack_weight_groups();
}

// Parameters a plugin declares beyond the base model: taken from the checkpoint when present
// (a trained L2A model), otherwise created by the declared init rule.
void Qwen2Model::create_extra_params(const WeightStore* store) {
  params_from_init_.clear();
  for (const ParamDecl& decl : attention_.extra_params(dims_)) {
    RT_CHECK(decl.shape.size() == 1 || decl.shape.size() == 2, "attention plugin parameter '", decl.name,
             "': expected 1 or 2 dimensions, declared ", decl.shape.size());
    int64_t numel = 1;
    for (int64_t s : decl.shape) numel *= s;
    std::vector<int> from_init;  // layers whose parameter comes from the init rule
    for (size_t li = 0; li < layers_.size(); ++li) {
      if (!decl.layers.empty() && std::find(decl.layers.begin(), decl.layers.end(), static_cast<int>(li)) == decl.layers.end())
        continue;
      const auto& layer = layers_[li];
      const std::string full = layer->prefix() + decl.name;
      if (const WeightInfo* stored = store ? store->find(full) : nullptr) {
        std::vector<uint8_t> scratch;
        TensorView v = host_view(*stored, scratch);
        RT_CHECK(v.numel() == numel && v.ndim == static_cast<int>(decl.shape.size()), "tensor '", full,
                 "' in ", stored->file, " has shape ", v.shape_str(), "; the attention plugin expects ",
                 decl.shape.size() == 1 ? "[" + std::to_string(decl.shape[0]) + "]"
                                        : "[" + std::to_string(decl.shape[0]) + ", " + std::to_string(decl.shape[1]) + "]");
        add_weight(full, v);
        continue;
      }
      from_init.push_back(static_cast<int>(li));
      std::vector<float> host(static_cast<size_t>(numel));
      if (decl.init == "zeros" || decl.init == "ones") {
        std::fill(host.begin(), host.end(), decl.init == "zeros" ? 0.f : 1.f);
      } else if (decl.init.rfind("copy_of:", 0) == 0) {
        const std::string src = layer->prefix() + decl.init.substr(8);
        TensorView s = weight(src);
        RT_CHECK(s.numel() == numel, "attention plugin parameter '", decl.name, "': init '", decl.init,
                 "' copies ", s.shape_str(), " into a parameter of ", numel, " elements");
        TensorView dst = TensorView::contiguous(host.data(), DType::F32, Device::CPU, {numel});
        ops_.copy(s.reshaped({numel}), dst);
      } else {
        fail("attention plugin parameter '", decl.name, "': unknown init rule '", decl.init,
             "' (expected zeros, ones or copy_of:<name>)");
      }
      TensorView v = decl.shape.size() == 1
                         ? TensorView::contiguous(host.data(), DType::F32, Device::CPU, {decl.shape[0]})
                         : TensorView::contiguous(host.data(), DType::F32, Device::CPU, {decl.shape[0], decl.shape[1]});
      add_weight(full, v);
    }
    if (store && !from_init.empty()) {
      std::string layers;
      if (from_init.size() == layers_.size()) {
        layers = "*";
      } else {
        for (int l : from_init) layers += (layers.empty() ? "{" : ",") + std::to_string(l);
        layers += "}";
      }
      params_from_init_.push_back("model.layers." + layers + "." + decl.name + " (" + decl.init + ")");
    }
  }
}

// Moves each layer's q/k/v weights, q/k/v biases and gate/up weights (of every attention the
// plugins declare too, e.g. L2A's global_attn) into one buffer per group, as consecutive rows, so
// that the forward runs one GEMM per group (see stacked_rows). The map keeps a view per Hugging
// Face name, so loading, training and export are unchanged.
void Qwen2Model::stack_weight_groups() {
  static const std::vector<std::vector<std::string>> kGroups = {
      {"q_proj.weight", "k_proj.weight", "v_proj.weight"},
      {"q_proj.bias", "k_proj.bias", "v_proj.bias"},
      {"gate_proj.weight", "up_proj.weight"}};
  std::vector<std::string> names;
  for (const auto& [name, t] : weights_) names.push_back(name);
  for (const auto& group : kGroups) {
    for (const std::string& name : names) {
      if (name.size() < group[0].size() || name.compare(name.size() - group[0].size(), group[0].size(), group[0]) != 0)
        continue;
      const std::string base = name.substr(0, name.size() - group[0].size());
      std::vector<Tensor*> parts;
      for (const std::string& member : group) {
        auto it = weights_.find(base + member);
        if (it == weights_.end()) break;
        parts.push_back(&it->second);
      }
      if (parts.size() != group.size()) continue;
      const TensorView& first = parts[0]->view;
      int64_t rows = 0;
      bool stackable = true;
      for (const Tensor* t : parts) {
        const TensorView& v = t->view;
        stackable = stackable && v.is_contiguous() && v.dtype == first.dtype && v.ndim == first.ndim &&
                    (v.ndim == 1 || v.shape[1] == first.shape[1]);
        rows += v.shape[0];
      }
      if (!stackable || first.ndim > 2) continue;
      Tensor all = first.ndim == 1 ? ops_.alloc(first.dtype, {rows}) : ops_.alloc(first.dtype, {rows, first.shape[1]});
      int64_t r0 = 0;
      for (Tensor* t : parts) {
        const int64_t n = t->view.shape[0];
        ops_.copy(t->view, all.view.rows(r0, r0 + n));
        *t = Tensor{all.view.rows(r0, r0 + n), all.storage};
        r0 += n;
      }
    }
  }
}

Qwen2Model::States Qwen2Model::new_states(int64_t max_tokens) {
  RT_CHECK(max_tokens <= dims_.max_positions, "a sequence of ", max_tokens,
           " tokens is longer than the model supports (max_position_embeddings = ", dims_.max_positions,
           " in config.json)");
  States s;
  for (int i = 0; i < dims_.n_layers; ++i) {
    LayerContext ctx{&dims_, i, &ops_, layers_[i].get()};
    s.push_back(attention_.new_state(ctx, max_tokens));
  }
  return s;
}

void Qwen2Model::attention_layer_forward(int layer, TensorView x) {
  RT_CHECK(layer >= 0 && layer < dims_.n_layers, "layer ", layer, " out of range [0, ", dims_.n_layers, ")");
  LayerContext ctx{&dims_, layer, &ops_, layers_[layer].get()};
  attention_.forward(ctx, x, nullptr);
}

// The ids on the device, after checking them against the vocabulary and the position limit.
Tensor Qwen2Model::upload_ids(std::span<const int32_t> ids, int64_t pos0) {
  check_ids(ids, pos0);
  const int64_t T = static_cast<int64_t>(ids.size());
  Tensor id_dev = ops_.alloc(DType::I32, {T});
  ops_.copy(TensorView::contiguous(const_cast<int32_t*>(ids.data()), DType::I32, Device::CPU, {T}), id_dev);
  return id_dev;
}

void Qwen2Model::check_ids(std::span<const int32_t> ids, int64_t pos0) const {
  const int64_t T = static_cast<int64_t>(ids.size());
  RT_CHECK(T > 0, "forward: no input tokens");
  RT_CHECK(pos0 + T <= dims_.max_positions, "a sequence of ", pos0 + T,
           " tokens is longer than the model supports (max_position_embeddings = ", dims_.max_positions,
           " in config.json)");
  for (int64_t t = 0; t < T; ++t)
    RT_CHECK(ids[t] >= 0 && ids[t] < dims_.vocab, "token id ", ids[t], " at position ", t,
             " is out of range: the vocabulary has ", dims_.vocab, " entries (vocab_size in config.json)");
}

Tensor Qwen2Model::forward(std::span<const int32_t> ids, States* states, bool last_only) {
  const int64_t T = static_cast<int64_t>(ids.size());
  const int64_t pos0 = states && !states->empty() ? (*states)[0]->tokens_seen() : 0;
  Tensor id_dev = upload_ids(ids, pos0);
  Tensor x = ops_.alloc(ops_.accum_dtype(), {T, dims_.hidden});
  ops_.embedding(weight("model.embed_tokens.weight"), id_dev, x);

  for (int i = 0; i < dims_.n_layers; ++i) {
    LayerContext ctx{&dims_, i, &ops_, layers_[i].get()};
    attention_.forward(ctx, x, states ? (*states)[i].get() : nullptr);
    mlp_forward(ctx, x);
  }

  TensorView tail = last_only ? x.view.rows(T - 1, T) : x.view;
  Tensor logits = ops_.alloc(ops_.accum_dtype(), {tail.shape[0], dims_.vocab});
  final_logits(tail, logits);
  return logits;
}

// logits [rows, vocab] = lm_head(RMSNorm_final(x_rows)).
void Qwen2Model::final_logits(TensorView x_rows, TensorView logits) {
  Tensor h = ops_.alloc(ops_.activation_dtype(), {x_rows.shape[0], dims_.hidden});
  ops_.rmsnorm(x_rows, weight("model.norm.weight"), dims_.rms_eps, h);
  const char* head = config_.tie_word_embeddings ? "model.embed_tokens.weight" : "lm_head.weight";
  ops_.linear(h, weight(head), TensorView{}, logits);
}

void Qwen2Model::decode_step_at(TensorView id, TensorView pos, States& states, TensorView logits) {
  RT_CHECK(attention_.capabilities().graph_decode, "decode_step_at: the attention backend has no decode_step_at");
  RT_CHECK(static_cast<int64_t>(states.size()) == dims_.n_layers, "decode_step_at: ", states.size(),
           " layer states for a model of ", dims_.n_layers, " layers");
  Tensor x = ops_.alloc(ops_.accum_dtype(), {1, dims_.hidden});
  ops_.embedding(weight("model.embed_tokens.weight"), id, x);
  for (int i = 0; i < dims_.n_layers; ++i) {
    LayerContext ctx{&dims_, i, &ops_, layers_[i].get()};
    attention_.decode_step_at(ctx, x, *states[i], pos);
    mlp_forward(ctx, x);
  }
  final_logits(x, logits);
}

}  // namespace rt
