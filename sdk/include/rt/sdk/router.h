// Router: decides per token whether a layer's global attention runs (L2A). A router is a plugin
// of its own (PluginKind::Router) so that routed attention backends can be trained or profiled
// with any of them: `linear_sigmoid` (the learned L2A router) or `fixed_rate` (a chosen sparsity,
// no training).
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include "rt/sdk/attention_backend.h"
#include "rt/sdk/options.h"
#include "rt/sdk/training.h"

namespace rt {

struct RouteCall {
  int64_t pos0 = 0;       // position of row 0
  bool training = false;  // training forward (vs. inference)
  int64_t step = 0;       // optimizer step when training (fixed_rate draws per step and layer)
};

class Router {
 public:
  virtual ~Router() = default;
  // The router reads the same options as the attention backend that uses it (tau, threshold,
  // sparsity, ...); unknown keys are the backend's business, not an error here.
  virtual void configure(const Options& options, const ModelDims& dims) = 0;
  // The option keys this router reads beyond tau and threshold (e.g. "sparsity"), so that the
  // backend using it can still refuse keys nobody knows.
  virtual std::vector<std::string> option_names() const { return {}; }
  // Parameters beyond the base model, layer-relative (e.g. "router.weight"), with init rules.
  virtual std::vector<ParamDecl> extra_params(const ModelDims&) const { return {}; }
  // True when the decisions depend on trainable parameters (backward is meaningful).
  virtual bool trainable() const = 0;
  // True when a decision depends on the token's position (RouteCall::pos0), which a decode step
  // replayed as a graph does not have on the host.
  virtual bool reads_position() const { return false; }
  // True when forward_at decides from a position held in device memory, so a decode step can be
  // captured once and replayed (every router that reads no position; fixed_rate's random
  // pattern). A router without it decodes through the forward.
  virtual bool decides_at_device_position() const { return !reads_position(); }
  // One decode token's decision: h [1, hidden], pos I32 [1] on the device (the token's position),
  // p and d [1]; inference (RouteCall{pos0 = position, training = false, step = 0}). Queues work
  // only: no host synchronization, the same launches at every position.
  virtual void forward_at(const LayerContext& ctx, TensorView h, TensorView pos, TensorView p, TensorView d) {
    RT_CHECK(!reads_position(), "router: this router decides from the position and has no forward_at");
    forward(ctx, h, RouteCall{}, p, d);
  }
  // A router whose inference decision is d = (h . w >= z_min), w [1, hidden] one of its
  // parameters, returns true and sets w and z_min, so that a decode step can run the RMSNorm before
  // it and the decision as one op (Ops::rmsnorm_route_at). Other routers keep forward_at.
  virtual bool linear_threshold(const LayerContext& ctx, TensorView* w, float* z_min) const {
    (void)ctx, (void)w, (void)z_min;
    return false;
  }
  // h [T, hidden] (activation dtype): the normalized hidden states the router reads.
  // Writes p [T] (gate probabilities) and d [T] (hard decisions, 1 = global), accum dtype.
  virtual void forward(const LayerContext& ctx, TensorView h, const RouteCall& call, TensorView p,
                       TensorView d) = 0;
  // Straight-through: the caller passes dp = dL/dd (+ dL/dp of the regularizer), accum dtype; the
  // router adds dL/dh into dh ([T, hidden], accum dtype) and its weights' gradients into grads.
  virtual void backward(const LayerContext& ctx, TensorView h, TensorView p, TensorView dp, TensorView dh,
                        const LayerGrads& grads) = 0;
};

}  // namespace rt
