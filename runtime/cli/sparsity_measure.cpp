#include "cli/sparsity_measure.h"

#include <unistd.h>

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <iostream>

#include "common/flag_paths.h"
#include "common/text_table.h"
#include "rt/sdk/error.h"
#include "train/token_data.h"

namespace rt {

void check_sparsity_inputs(const SparsityRequest& r) {
  check_input_path("--data", r.data, /*directory_ok=*/false);
  if (!r.tokenizer.empty()) check_input_path("--tokenizer", r.tokenizer, /*directory_ok=*/true);
}

SparsityMeasure measure_sparsity(ModelSession& session, const SparsityRequest& r) {
  RT_CHECK(session.attention->capabilities().router, "sparsity: attention backend '", session.attention_name,
           "' does not route tokens; use an L2A model (--attention l2a_dense)");
  const ModelDims& d = session.model->dims();
  std::unique_ptr<Tokenizer> tok;
  if (std::filesystem::path(r.data).extension() != ".bin") {
    RT_CHECK(!r.tokenizer.empty() || !session.model_dir.empty(), "--data ", r.data,
             ": text data needs a tokenizer, and a model built with --init random has no directory to take "
             "one from; pass --tokenizer");
    tok = with_flag(r.tokenizer.empty() ? "" : "--tokenizer", r.tokenizer, [&] {
      return load_tokenizer(r.tokenizer.empty() ? session.model_dir : std::filesystem::path(r.tokenizer));
    });
  }
  TokenDataset data = with_flag("--data", r.data, [&] { return TokenDataset::load(r.data, tok.get(), d.vocab); });
  RT_CHECK(data.size() >= r.seq, "--seq ", r.seq, ": ", r.data, " holds ", data.size(),
           " tokens, fewer than one sequence; use a shorter --seq or more data");
  SequenceSampler sampler = with_flag("--data", r.data, [&] { return SequenceSampler(data, r.seq, 0, /*shuffle=*/false); });
  const int64_t wanted = r.max_sequences > 0
                             ? r.max_sequences
                             : std::max(kMinSparsitySequences, (kMinSparsityTokens + r.seq - 1) / r.seq);
  const int64_t nseq = std::min(wanted, sampler.num_sequences());
  if (nseq < wanted && r.max_sequences == 0)
    std::cerr << "note: " << r.data << " holds " << nseq << " sequences of " << r.seq << " tokens, fewer than the "
              << wanted << " of a stable estimate; see the standard error below\n";
  const Options& opts = session.attention_options;
  const bool parallel = opts.get_string("layout", "paper") == "parallel";

  SparsityMeasure m;
  m.sequences = nseq;
  m.seq_len = r.seq;
  m.forced = opts.get_bool("force_local", parallel) ? std::min(opts.get_int("window", 0), r.seq) : 0;
  const int64_t L = d.n_layers, B = std::min(r.buckets, r.seq);
  m.buckets = B;
  std::vector<double> global(static_cast<size_t>(L * B), 0), count(static_cast<size_t>(L * B), 0);
  std::vector<double> layer_global(static_cast<size_t>(L), 0), layer_global_free(static_cast<size_t>(L), 0);
  std::vector<int32_t> ids;
  const bool tty = isatty(fileno(stderr));
  for (int64_t s = 0; s < nseq; ++s) {
    sampler.next(ids);
    session.model->forward(ids, nullptr, /*last_only=*/true);
    double seq_global = 0;
    for (int64_t l = 0; l < L; ++l) {
      const std::vector<float> dec = session.attention->last_decisions(static_cast<int>(l));
      RT_CHECK(static_cast<int64_t>(dec.size()) == r.seq, "sparsity: backend reported ", dec.size(),
               " decisions for layer ", l, ", expected ", r.seq);
      for (int64_t t = 0; t < r.seq; ++t) {
        const double g = dec[static_cast<size_t>(t)];
        const size_t cell = static_cast<size_t>(l * B + t * B / r.seq);
        global[cell] += g;
        count[cell] += 1;
        seq_global += g;
        layer_global[static_cast<size_t>(l)] += g;
        if (t >= m.forced) layer_global_free[static_cast<size_t>(l)] += g;
      }
    }
    m.per_sequence.push_back(1.0 - seq_global / static_cast<double>(L * r.seq));
    if (tty)
      std::cerr << "\r\033[K"
                << fit_to_width("sparsity: sequence " + std::to_string(s + 1) + "/" + std::to_string(nseq),
                                terminal_columns(fileno(stderr)) - 1)
                << std::flush;
  }
  std::cerr << (tty ? "\r\033[K" : "") << "sparsity: " << nseq << " sequences of " << r.seq << " tokens\n";

  const double per_layer_tokens = static_cast<double>(nseq * r.seq);
  const double free_tokens = static_cast<double>(nseq * (r.seq - m.forced));
  for (int64_t l = 0; l < L; ++l) {
    const double sp = 1.0 - layer_global[static_cast<size_t>(l)] / per_layer_tokens;
    const double spf = free_tokens > 0 ? 1.0 - layer_global_free[static_cast<size_t>(l)] / free_tokens : 0.0;
    m.layer.push_back(sp);
    m.layer_excl_forced.push_back(spf);
    m.overall += sp;
    m.overall_excl_forced += spf;
    std::vector<double> row;
    for (int64_t b = 0; b < B; ++b) {
      const size_t c = static_cast<size_t>(l * B + b);
      row.push_back(count[c] > 0 ? 1.0 - global[c] / count[c] : 0.0);
    }
    m.heatmap.push_back(row);
  }
  m.overall /= static_cast<double>(L);
  m.overall_excl_forced /= static_cast<double>(L);
  // Sample standard deviation over sequences / sqrt(n).
  double mean = 0, var = 0;
  for (double x : m.per_sequence) mean += x / static_cast<double>(nseq);
  for (double x : m.per_sequence) var += (x - mean) * (x - mean);
  m.stderr_overall = nseq > 1 ? std::sqrt(var / static_cast<double>(nseq - 1) / static_cast<double>(nseq)) : NAN;
  return m;
}

}  // namespace rt
