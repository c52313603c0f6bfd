// Guards against the failure the independent L2A replication found: fine-tuning attention on
// fewer than ~1 training token per trainable parameter collapses (loss -> 0, sparsity -> 100%,
// looping generations). Up front: the token budget and a loud warning below the threshold. Live:
// a detector that fires when loss and sparsity both sit past their thresholds for several steps.
#pragma once

#include <cstdint>
#include <optional>
#include <string>

namespace rt {

// The replication's threshold, in training tokens per trainable parameter.
inline constexpr double kCollapseTokensPerParam = 1.0;

// "token budget: 10.5M training tokens / 24.3M trainable parameters = 0.43 tokens per parameter"
std::string budget_line(int64_t trainable_params, int64_t training_tokens);

// Which warning applies: a routed (L2A) backend's, about the router/sparsity collapse and the
// collapse detector; or any other backend's, about the token budget alone.
enum class BudgetWarning { Routed, Plain };

// True when training_tokens / trainable_params < kCollapseTokensPerParam; then, if `warning` is
// given, it receives a multi-line WARNING block (each line starts with "WARNING: ", no trailing
// newline) explaining the risk and what to do. Only a Routed warning speaks of sparsity, the
// router and the collapse detector (which only watches routed runs).
bool below_collapse_threshold(int64_t trainable_params, int64_t training_tokens, BudgetWarning kind,
                              std::string* warning = nullptr);

class CollapseDetector {
 public:
  // Collapse: loss < loss_threshold and sparsity > sparsity_threshold (a fraction) on `patience`
  // consecutive updates. TrainConfig's collapse_loss, collapse_sparsity, collapse_patience.
  CollapseDetector(double loss_threshold, double sparsity_threshold, int64_t patience);

  // Feed every step (or every logged step: "consecutive" counts updates). sparsity nullopt (a
  // run without routing) never counts toward collapse. Returns collapsed(); once collapsed it
  // stays so.
  bool update(int64_t step, double loss, std::optional<double> sparsity);

  bool collapsed() const { return collapsed_at_ >= 0; }
  int64_t collapsed_at() const { return collapsed_at_; }  // the step it fired at, or -1
  int64_t streak() const { return streak_; }              // current run of suspicious updates
  // Empty until collapsed; then what happened, why it matters and what to do.
  std::string message() const;

 private:
  double loss_threshold_, sparsity_threshold_;
  int64_t patience_;
  int64_t streak_ = 0, collapsed_at_ = -1;
  double last_loss_ = 0, last_sparsity_ = 0;
};

}  // namespace rt
