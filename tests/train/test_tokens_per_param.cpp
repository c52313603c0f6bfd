// Token budget line, the collapse warning, and the live collapse detector.
#include <cmath>

#include "train/tokens_per_param.h"
#include "test_util.h"

namespace rt::test {
namespace {

TEST(TokenBudget, Line) {
  EXPECT_EQ(budget_line(24'300'000, 10'500'000),
            "token budget: 10.5M training tokens / 24.3M trainable parameters = 0.43 tokens per parameter");
  EXPECT_EQ(budget_line(896, 2'000'000),
            "token budget: 2.0M training tokens / 896 trainable parameters = 2232.14 tokens per parameter");
  EXPECT_HAS(error_of([] { budget_line(0, 5); }), "trainable parameter count must be > 0");
}

TEST(TokenBudget, WarningBelowOneTokenPerParameter) {
  std::string w;
  EXPECT_TRUE(below_collapse_threshold(494'000'000, 10'000'000, BudgetWarning::Routed, &w));
  EXPECT_HAS(w, "only 0.02 training tokens per trainable parameter", "10.0M tokens", "494.0M trainable",
             "~1", "COLLAPSES", "loss goes to ~0", "sparsity goes to 100%", "router_only", ">= 494.0M tokens");
  // Every line is marked, and the block is several lines.
  size_t lines = 0;
  for (size_t p = 0; p != std::string::npos; p = w.find('\n', p + 1), ++lines)
    EXPECT_EQ(w.compare(p == 0 ? 0 : p + 1, 9, "WARNING: "), 0);
  EXPECT_GE(lines, 5u);
  EXPECT_NE(w.back(), '\n');

  std::string none = "untouched";
  EXPECT_FALSE(below_collapse_threshold(1000, 1000, BudgetWarning::Routed, &none));  // exactly 1 is enough
  EXPECT_FALSE(below_collapse_threshold(1000, 5000, BudgetWarning::Plain, &none));
  EXPECT_EQ(none, "untouched");
  EXPECT_TRUE(below_collapse_threshold(1000, 999, BudgetWarning::Plain));
}

// A backend without routing (full_causal, swa) gets the token budget alone: no sparsity, router,
// router_only regime or collapse detector, none of which applies to it.
TEST(TokenBudget, PlainBackendWarningSpeaksOnlyOfTheBudget) {
  std::string w;
  EXPECT_TRUE(below_collapse_threshold(494'000'000, 10'000'000, BudgetWarning::Plain, &w));
  EXPECT_HAS(w, "only 0.02 training tokens per trainable parameter", "10.0M tokens", "494.0M trainable",
             ">= 494.0M tokens", "--val-data");
  for (const char* s : {"sparsity", "router", "collapse", "COLLAPSES", "L2A", "attends"})
    EXPECT_EQ(w.find(s), std::string::npos) << s << "\n" << w;
  size_t lines = 0;
  for (size_t p = 0; p != std::string::npos; p = w.find('\n', p + 1), ++lines)
    EXPECT_EQ(w.compare(p == 0 ? 0 : p + 1, 9, "WARNING: "), 0);
  EXPECT_GE(lines, 4u);
  EXPECT_NE(w.back(), '\n');
}

TEST(CollapseDetector, FiresAfterPatienceConsecutiveSteps) {
  CollapseDetector d(0.05, 0.98, 3);
  EXPECT_FALSE(d.update(1, 0.01, 0.99));
  EXPECT_FALSE(d.update(2, 0.01, 0.99));
  EXPECT_EQ(d.streak(), 2);
  EXPECT_FALSE(d.update(3, 0.01, 0.95));  // sparsity not high enough: streak resets
  EXPECT_EQ(d.streak(), 0);
  EXPECT_FALSE(d.update(4, 0.2, 0.999));  // loss not low enough
  EXPECT_FALSE(d.update(5, 0.04, 0.99));
  EXPECT_FALSE(d.update(6, 0.03, 0.995));
  EXPECT_EQ(d.message(), "");
  EXPECT_TRUE(d.update(7, 0.012, 0.997));
  EXPECT_TRUE(d.collapsed());
  EXPECT_EQ(d.collapsed_at(), 7);
  EXPECT_TRUE(d.update(8, 2.0, 0.1));  // latched
  EXPECT_EQ(d.collapsed_at(), 7);
  EXPECT_HAS(d.message(), "collapsed at step 7", "loss < 0.05", "sparsity > 98.0%", "3 consecutive steps",
             "loss 0.0120", "sparsity 99.7%", "replication", "router_only", "collapse_action = \"warn\"");
}

TEST(CollapseDetector, NoSparsityOrNanNeverCounts) {
  CollapseDetector d(0.05, 0.98, 1);
  EXPECT_FALSE(d.update(1, 0.0, std::nullopt));  // runs without routing
  EXPECT_FALSE(d.update(2, NAN, 1.0));
  EXPECT_FALSE(d.update(3, 0.01, NAN));
  EXPECT_TRUE(d.update(4, 0.01, 1.0));
  EXPECT_HAS(error_of([] { CollapseDetector(0.05, 0.98, 0); }), "patience", ">= 1");
}

}  // namespace
}  // namespace rt::test
