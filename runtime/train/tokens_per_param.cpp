#include "train/tokens_per_param.h"

#include <cstdio>
#include <sstream>
#include <string>
#include <vector>

#include "rt/sdk/error.h"
#include "train/progress_bar.h"  // format_count

namespace rt {

namespace {
double ratio(int64_t params, int64_t tokens) {
  RT_CHECK(params > 0, "token budget: trainable parameter count must be > 0, found ", params);
  RT_CHECK(tokens >= 0, "token budget: training token count must be >= 0, found ", tokens);
  return static_cast<double>(tokens) / static_cast<double>(params);
}

std::string fixed(double v, int digits) {
  char buf[64];
  std::snprintf(buf, sizeof buf, "%.*f", digits, v);
  return buf;
}
}  // namespace

std::string budget_line(int64_t trainable_params, int64_t training_tokens) {
  const double r = ratio(trainable_params, training_tokens);
  return "token budget: " + format_count(static_cast<double>(training_tokens)) + " training tokens / " +
         format_count(static_cast<double>(trainable_params)) + " trainable parameters = " + fixed(r, 2) +
         " tokens per parameter";
}

bool below_collapse_threshold(int64_t trainable_params, int64_t training_tokens, BudgetWarning kind,
                              std::string* warning) {
  const double r = ratio(trainable_params, training_tokens);
  if (r >= kCollapseTokensPerParam) return false;
  if (warning) {
    const std::string tokens = format_count(static_cast<double>(training_tokens));
    const std::string params = format_count(static_cast<double>(trainable_params));
    const std::string enough = format_count(kCollapseTokensPerParam * static_cast<double>(trainable_params));
    const std::string rule(76, '=');
    std::vector<std::string> lines = {
        rule,
        "only " + fixed(r, 2) + " training tokens per trainable parameter (" + tokens + " tokens, " +
            params + " trainable parameters).",
    };
    if (kind == BudgetWarning::Routed) {
      lines.insert(lines.end(), {
          "The independent L2A replication found that fine-tuning attention below ~1",
          "training token per trainable parameter COLLAPSES: the loss goes to ~0 (the",
          "model memorizes the data), sparsity goes to 100% (no token attends globally)",
          "and generations loop. The scores of such a run are meaningless.",
          "Train on >= " + enough + " tokens, train fewer parameters (regime = \"router_only\"),",
          "or rely on the collapse detector (train.collapse_*).",
      });
    } else {
      lines.insert(lines.end(), {
          "Below ~1 training token per trainable parameter fine-tuning tends to memorize",
          "the data: the training loss falls toward 0 while the loss on other text does",
          "not, so the training loss says little about the model.",
          "Train on >= " + enough + " tokens or train fewer parameters, and watch the",
          "held-out loss (--val-data FILE logs val_loss).",
      });
    }
    lines.push_back(rule);
    std::string out;
    for (const std::string& l : lines) out += (out.empty() ? "" : "\n") + std::string("WARNING: ") + l;
    *warning = out;
  }
  return true;
}

CollapseDetector::CollapseDetector(double loss_threshold, double sparsity_threshold, int64_t patience)
    : loss_threshold_(loss_threshold), sparsity_threshold_(sparsity_threshold), patience_(patience) {
  RT_CHECK(patience >= 1, "CollapseDetector: patience must be >= 1, found ", patience);
}

bool CollapseDetector::update(int64_t step, double loss, std::optional<double> sparsity) {
  if (collapsed()) return true;
  // NaN fails both comparisons, so it never counts (non-finite loss is the trainer's to handle).
  if (sparsity && loss < loss_threshold_ && *sparsity > sparsity_threshold_) {
    ++streak_;
    last_loss_ = loss;
    last_sparsity_ = *sparsity;
  } else {
    streak_ = 0;
  }
  if (streak_ >= patience_) collapsed_at_ = step;
  return collapsed();
}

std::string CollapseDetector::message() const {
  if (!collapsed()) return "";
  std::ostringstream os;
  os << "training collapsed at step " << collapsed_at_ << ": loss < " << loss_threshold_
     << " and sparsity > " << fixed(100.0 * sparsity_threshold_, 1) << "% for " << patience_
     << " consecutive steps (last: loss " << fixed(last_loss_, 4) << ", sparsity "
     << fixed(100.0 * last_sparsity_, 1) << "%). This is the collapse the L2A replication found when "
     << "attention is fine-tuned on too few tokens (below ~1 per trainable parameter): the model "
     << "memorizes the data and stops attending globally. Train on more tokens, use regime = "
     << "\"router_only\" or a lower lr; train.collapse_action = \"warn\" continues anyway.";
  return os.str();
}

}  // namespace rt
