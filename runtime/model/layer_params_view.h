// Qwen2Model's per-layer view of its weights (what plugins see as LayerParams). Private to
// runtime/model: shared by the inference (qwen2_model.cpp) and training (qwen2_train.cpp) graphs.
#pragma once

#include <string>

#include "model/qwen2_model.h"

namespace rt {

// Layer-relative names ("self_attn.q_proj.weight") -> the model's weights.
class Qwen2Model::LayerParamsView final : public LayerParams {
 public:
  LayerParamsView(const Qwen2Model& m, int layer)
      : model_(m), prefix_("model.layers." + std::to_string(layer) + ".") {}
  TensorView get(const std::string& name) const override { return model_.weight(prefix_ + name); }
  bool has(const std::string& name) const override { return model_.weights_.count(prefix_ + name) != 0; }
  const std::string& prefix() const { return prefix_; }

 private:
  const Qwen2Model& model_;
  std::string prefix_;
};

}  // namespace rt
