// The routing sparsity of an L2A model over sequences of a data file, measured the one way
// `runtime sparsity` reports it and `runtime prune --threshold` selects layers by.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include "cli/model_session.h"

namespace rt {

struct SparsityRequest {
  std::string data;       // .txt, .jsonl or .bin
  std::string tokenizer;  // "": the model directory's
  int64_t seq = 1024;
  int64_t max_sequences = 0;  // 0: at least kMinSequences and kMinTokens (see below)
  int64_t buckets = 1;        // position buckets of the heatmap
};

// The default sample (max_sequences 0): at least this many sequences and tokens, whichever needs
// more. Why: sparsity varies from one passage to the next and tokens of one sequence are not
// independent, so the sequence is the sample (32 of them: a standard error of 0.18 of the spread).
constexpr int64_t kMinSparsitySequences = 32;
constexpr int64_t kMinSparsityTokens = 65536;

struct SparsityMeasure {
  int64_t sequences = 0, seq_len = 0, forced = 0, buckets = 0;
  std::vector<double> layer;              // per layer: fraction of decisions with d = 0
  std::vector<double> layer_excl_forced;  // the same over positions force_local does not pin
  std::vector<std::vector<double>> heatmap;  // [layer][bucket]
  std::vector<double> per_sequence;          // overall sparsity of each sequence
  double overall = 0, overall_excl_forced = 0;
  double stderr_overall = 0;  // standard error over sequences; NaN below 2 sequences
};

// Checks the request's paths (before any model work, so call it first), without measuring.
void check_sparsity_inputs(const SparsityRequest& r);

// Runs the model over the data. The session's backend must route (Capabilities::router). A layer
// the backend reports no decisions for is an error; a pruned L2A layer reports all zeros (100% local).
SparsityMeasure measure_sparsity(ModelSession& session, const SparsityRequest& r);

}  // namespace rt
