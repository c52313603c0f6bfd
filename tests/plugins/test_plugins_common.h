// A minimal backend for the misbehaving test plugins: it only reports capabilities.
#pragma once

#include "rt/sdk/plugin.h"

class CapsOnlyBackend : public rt::AttentionBackend {
 public:
  explicit CapsOnlyBackend(bool cpu, bool cuda) { caps_.cpu = cpu; caps_.cuda = cuda; }
  rt::Capabilities capabilities() const override { return caps_; }
  void configure(const rt::Options&, const rt::ModelDims&) override {}
  std::unique_ptr<rt::AttentionState> new_state(const rt::LayerContext&, int64_t) override { return nullptr; }
  void forward(const rt::LayerContext&, rt::TensorView, rt::AttentionState*) override {}

 private:
  rt::Capabilities caps_;
};
