#include "model/decode_session.h"

#include "rt/sdk/error.h"

namespace rt {

DecodeSession::DecodeSession(Qwen2Model& model, int64_t max_tokens, bool graphs)
    : model_(model),
      ops_(model.ops()),
      max_tokens_(max_tokens),
      mode_(!model.attention().capabilities().graph_decode ? Mode::Forward : graphs ? Mode::Graph : Mode::Eager),
      states_(model.new_states(max_tokens)) {
  io_ = ops_.alloc(DType::I32, {2});
  logits_ = ops_.alloc(ops_.accum_dtype(), {1, model.dims().vocab});
}

DecodeSession::~DecodeSession() = default;

const char* DecodeSession::mode_name(Mode m) {
  switch (m) {
    case Mode::Graph: return "graph";
    case Mode::Eager: return "eager";
    case Mode::Forward: return "forward";
  }
  return "?";
}

size_t DecodeSession::kv_bytes() const {
  size_t n = 0;
  for (const auto& s : states_) n += s->kv_bytes();
  return n;
}

DecodeSession::Routing DecodeSession::routing() const {
  Routing total;
  for (const auto& s : states_) {
    int64_t r = 0, n = 0;
    if (s->decode_routing(&r, &n)) {
      total.routed += r;
      total.steps += n;
    }
  }
  return total;
}

TensorView DecodeSession::prefill(std::span<const int32_t> ids) {
  RT_CHECK(position() + static_cast<int64_t>(ids.size()) <= max_tokens_, "decode: ", ids.size(),
           " tokens at position ", position(), " overflow the KV cache, sized for ", max_tokens_, " positions");
  forward_logits_ = model_.forward(ids, &states_, /*last_only=*/true);
  return forward_logits_.view;
}

TensorView DecodeSession::step(int32_t id) {
  const int64_t pos = position();
  RT_CHECK(pos < max_tokens_, "decode: position ", pos, " is past the KV cache, sized for ", max_tokens_,
           " positions");
  RT_CHECK(id >= 0 && id < model_.dims().vocab, "token id ", id, " at position ", pos,
           " is out of range: the vocabulary has ", model_.dims().vocab, " entries (vocab_size in config.json)");
  if (mode_ == Mode::Forward) {
    forward_logits_ = model_.forward(std::span<const int32_t>(&id, 1), &states_, true);
    return forward_logits_.view;
  }
  int32_t host[2] = {id, static_cast<int32_t>(pos)};
  ops_.copy(TensorView::contiguous(host, DType::I32, Device::CPU, {2}), io_);
  const TensorView id_dev = io_.view.rows(0, 1), pos_dev = io_.view.rows(1, 2);
  auto work = [&] { model_.decode_step_at(id_dev, pos_dev, states_, logits_); };
  // The first step runs op by op: it also initializes what is created lazily on first use
  // (shared-memory limits, library handles), which has no place inside a capture.
  if (mode_ == Mode::Graph && stepped_ && !graph_) {
    graph_ = ops_.capture(work);
    if (!graph_) mode_ = Mode::Eager;  // this backend cannot record work
  }
  if (graph_) graph_->replay();
  else work();
  for (auto& s : states_) s->advance(1);
  stepped_ = true;
  return logits_.view;
}

}  // namespace rt
