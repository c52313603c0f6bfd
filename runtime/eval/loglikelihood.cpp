#include "eval/loglikelihood.h"

#include <algorithm>

#include "eval/python_text.h"
#include "model/qwen2_model.h"
#include "rt/sdk/error.h"
#include "tokenizer/tokenizer.h"

namespace rt::eval {

std::vector<TokenPair> rolling_windows(std::span<const int32_t> tokens, int32_t prefix_token, int64_t max_length) {
  std::vector<TokenPair> out;
  const int64_t n = static_cast<int64_t>(tokens.size());
  if (n == 0) return out;
  // The first window predicts every token it holds, after the prefix token.
  const int64_t first = std::min(max_length, n);
  TokenPair w;
  w.context = {prefix_token};
  w.continuation.assign(tokens.begin(), tokens.begin() + first);
  out.push_back(std::move(w));
  int64_t predicted = first;
  while (predicted < n) {
    const int64_t pred = std::min(n - predicted, max_length);
    const int64_t end = predicted + pred;
    // context tokens [end - max_length - 1, end - 1), made disjoint from the predicted ones
    // (make_disjoint_window): it keeps the tokens before the first predicted one.
    const int64_t ctx_begin = std::max<int64_t>(0, end - max_length - 1);
    TokenPair p;
    p.context.assign(tokens.begin() + ctx_begin, tokens.begin() + (end - pred));
    p.continuation.assign(tokens.begin() + (end - pred), tokens.begin() + end);
    out.push_back(std::move(p));
    predicted = end;
  }
  return out;
}

int64_t model_input_tokens(const TokenPair& r, int64_t max_length) {
  if (r.continuation.empty()) return 0;
  return std::min<int64_t>(static_cast<int64_t>(r.context.size() + r.continuation.size()), max_length + 1) - 1;
}

int64_t packed_rows(const TokenPair& r, const TokenPair* previous, int64_t max_length, bool share_prefix) {
  const int64_t n = model_input_tokens(r, max_length);
  if (!share_prefix || previous == nullptr) return n;
  // Token j of a request's model input: (context + continuation)[first + j], first as score_batch cuts it.
  auto token = [max_length](const TokenPair& q, int64_t j) {
    const auto all = static_cast<int64_t>(q.context.size() + q.continuation.size());
    const int64_t at = all - std::min(all, max_length + 1) + j;
    const auto ctx = static_cast<int64_t>(q.context.size());
    return at < ctx ? q.context[static_cast<size_t>(at)] : q.continuation[static_cast<size_t>(at - ctx)];
  };
  const int64_t limit = std::min(n, model_input_tokens(*previous, max_length));
  int64_t shared = 0;
  while (shared < limit && token(r, shared) == token(*previous, shared)) ++shared;
  return shared >= Qwen2Model::kMinSharedPrefix ? n - shared : n;
}

LoglikelihoodScorer::LoglikelihoodScorer(Qwen2Model& model, const Tokenizer& tokenizer, int64_t max_length)
    : model_(model), tok_(tokenizer), max_length_(max_length) {
  RT_CHECK(max_length >= 1, "eval: the maximum length must be >= 1, found ", max_length);
  const auto eos = tok_.eos_id();
  RT_CHECK(eos.has_value(), "eval: the tokenizer has no end-of-text token, which an empty context is scored after");
  prefix_ = *eos;
}

TokenPair LoglikelihoodScorer::encode_pair(const std::string& context, const std::string& continuation) const {
  TokenPair p;
  if (context.empty()) {
    p.context = {prefix_};
    p.continuation = tok_.encode(continuation);
    return p;
  }
  const size_t ws = py_rstrip_bytes(context);
  const std::string ctx = context.substr(0, context.size() - ws);
  const std::string cont = context.substr(context.size() - ws) + continuation;
  const std::vector<int32_t> whole = tok_.encode(ctx + cont);
  const size_t n_ctx = tok_.encode(ctx).size();
  p.context.assign(whole.begin(), whole.begin() + std::min(n_ctx, whole.size()));
  p.continuation.assign(whole.begin() + std::min(n_ctx, whole.size()), whole.end());
  return p;
}

Loglikelihood LoglikelihoodScorer::score(const TokenPair& r) {
  return score_batch(std::span<const TokenPair>(&r, 1))[0];
}

int64_t LoglikelihoodScorer::input_tokens(const TokenPair& r) const { return model_input_tokens(r, max_length_); }

std::vector<Loglikelihood> LoglikelihoodScorer::score_batch(std::span<const TokenPair> requests) {
  std::vector<Loglikelihood> out(requests.size());
  std::vector<std::vector<int32_t>> inputs;
  std::vector<Qwen2Model::ScoreRequest> packed;
  std::vector<size_t> which;
  inputs.reserve(requests.size());
  for (size_t i = 0; i < requests.size(); ++i) {
    const TokenPair& r = requests[i];
    out[i].tokens = static_cast<int64_t>(r.continuation.size());
    if (r.continuation.empty()) continue;
    std::vector<int32_t> all(r.context);
    all.insert(all.end(), r.continuation.begin(), r.continuation.end());
    // The model input: the last max_length + 1 tokens without the last one.
    const int64_t keep = std::min<int64_t>(static_cast<int64_t>(all.size()), max_length_ + 1);
    inputs.emplace_back(all.end() - keep, all.end() - 1);
    const int64_t n_cont = std::min<int64_t>(out[i].tokens, static_cast<int64_t>(inputs.back().size()));
    packed.push_back({inputs.back(), std::span<const int32_t>(r.continuation).last(static_cast<size_t>(n_cont))});
    which.push_back(i);
  }
  const std::vector<Qwen2Model::TargetScore> scores = model_.score_targets_packed(packed, share_prefix_);
  for (size_t k = 0; k < which.size(); ++k) {
    out[which[k]].logprob = scores[k].logprob;
    out[which[k]].is_greedy = scores[k].greedy;
  }
  return out;
}

Loglikelihood LoglikelihoodScorer::score_rolling(const std::string& text) {
  Loglikelihood total;
  for (const TokenPair& w : rolling_windows(tok_.encode(text), prefix_, max_length_)) {
    const Loglikelihood ll = score(w);
    total.logprob += ll.logprob;
    total.tokens += ll.tokens;
    total.is_greedy = total.is_greedy && ll.is_greedy;
  }
  return total;
}

}  // namespace rt::eval
