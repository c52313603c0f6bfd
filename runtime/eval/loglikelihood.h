// Log-likelihood requests scored the way lm-evaluation-harness's HF backend scores them:
//   encode_pair       (context, continuation): trailing whitespace of the context moves to the
//                     continuation; context + continuation is tokenized as one string and split at
//                     the token count of the context alone; an empty context is the model's prefix
//                     token (EOS for Qwen, which has no BOS)
//   score             the model sees (context + continuation)[-(max_length + 1):][:-1]; the
//                     continuation's log-probabilities are summed (and is_greedy: every token the
//                     argmax)
//   rolling windows   loglikelihood_rolling: disjoint windows of at most max_length predicted
//                     tokens, the first preceded by the prefix token, each later one conditioned on
//                     the tokens before it (get_rolling_token_windows with context_len 1)
#pragma once

#include <cstdint>
#include <span>
#include <string>
#include <utility>
#include <vector>

namespace rt {
class Qwen2Model;
class Tokenizer;
}  // namespace rt

namespace rt::eval {

struct TokenPair {
  std::vector<int32_t> context, continuation;
};

struct Loglikelihood {
  double logprob = 0;   // summed over the continuation
  bool is_greedy = true;
  int64_t tokens = 0;   // continuation tokens
};

// (context window, predicted tokens) pairs of loglikelihood_rolling, disjoint.
std::vector<TokenPair> rolling_windows(std::span<const int32_t> tokens, int32_t prefix_token, int64_t max_length);

// The model input of a request, (context + continuation)[-(max_length + 1):][:-1]: its length.
int64_t model_input_tokens(const TokenPair& request, int64_t max_length);
// The rows a request adds to a packed forward right after `previous` (nullptr: first of its
// batch): its model input tokens, less the prefix its input shares with previous's when
// share_prefix runs a shared prefix once (Qwen2Model::kMinSharedPrefix tokens or more). What a
// batch budget in rows counts.
int64_t packed_rows(const TokenPair& request, const TokenPair* previous, int64_t max_length, bool share_prefix);

class LoglikelihoodScorer {
 public:
  LoglikelihoodScorer(Qwen2Model& model, const Tokenizer& tokenizer, int64_t max_length);
  TokenPair encode_pair(const std::string& context, const std::string& continuation) const;
  Loglikelihood score(const TokenPair& request);
  // Several requests in one packed forward (Qwen2Model::score_targets_packed): each scored as
  // score() scores it alone, up to rounding. With share_prefix (set_share_prefix), consecutive
  // requests whose inputs start with the same tokens (a document's choices) run them once.
  std::vector<Loglikelihood> score_batch(std::span<const TokenPair> requests);
  void set_share_prefix(bool on) { share_prefix_ = on; }
  bool share_prefix() const { return share_prefix_; }
  // The model input score() builds for a request: its token count.
  int64_t input_tokens(const TokenPair& request) const;
  // packed_rows() with this scorer's max_length and share_prefix.
  int64_t batch_rows(const TokenPair& request, const TokenPair* previous) const {
    return packed_rows(request, previous, max_length_, share_prefix_);
  }
  // The summed log-likelihood of a text under loglikelihood_rolling (and the tokens predicted).
  Loglikelihood score_rolling(const std::string& text);
  int64_t max_length() const { return max_length_; }
  int32_t prefix_token() const { return prefix_; }

 private:
  Qwen2Model& model_;
  const Tokenizer& tok_;
  int64_t max_length_;
  int32_t prefix_;
  bool share_prefix_ = false;
};

}  // namespace rt::eval
