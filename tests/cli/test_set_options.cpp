// --set key=value and backend.key=value (runtime/cli/plugin_settings.h): how arguments split into
// scopes, which options each backend of a run gets, and the error for a scope outside the run.
#include <gtest/gtest.h>

#include <functional>
#include <string>
#include <vector>

#include "cli/plugin_settings.h"
#include "test_util.h"
#include "rt/sdk/error.h"

namespace {

using rt::Options;
using rt::SetOption;

using rt::test::error_of;

TEST(SetOptions, SplitsScopeKeyAndValue) {
  const auto s = rt::parse_set_options({"sparsity=0.8", "l2a_fused.router=fixed_rate", "train.lr=3e-4",
                                        "attention.window=1024", "window=a=b", "l2a_dense.rope_theta=5e6"});
  ASSERT_EQ(s.size(), 6u);
  EXPECT_EQ(s[0].scope, "");
  EXPECT_EQ(s[0].key, "sparsity");
  EXPECT_EQ(s[0].value, "0.8");
  EXPECT_EQ(s[1].scope, "l2a_fused");
  EXPECT_EQ(s[1].key, "router");
  EXPECT_EQ(s[1].value, "fixed_rate");
  EXPECT_EQ(s[1].arg, "l2a_fused.router=fixed_rate");
  // The train command's config sections are not scopes: they pass through whole.
  EXPECT_EQ(s[2].scope, "");
  EXPECT_EQ(s[2].key, "train.lr");
  EXPECT_EQ(s[2].value, "3e-4");
  EXPECT_EQ(s[3].scope, "");
  EXPECT_EQ(s[3].key, "attention.window");
  EXPECT_EQ(s[4].key, "window");  // only the first '=' splits
  EXPECT_EQ(s[4].value, "a=b");
  EXPECT_EQ(s[5].scope, "l2a_dense");  // a dot in the value is not a scope
  EXPECT_EQ(s[5].value, "5e6");
}

TEST(SetOptions, ScopedOverridesUnscopedForItsBackendOnly) {
  const std::vector<std::string> set = {"l2a_dense.sparsity=0.8", "sparsity=0.5", "router=fixed_rate",
                                        "swa.window=16", "train.lr=3e-4"};
  const std::vector<std::string> run = {"full_causal", "swa", "l2a_dense"};
  const Options dense = rt::backend_set_options(set, "l2a_dense", run);
  EXPECT_EQ(dense.get_string("sparsity", ""), "0.8");  // scoped wins though given first
  EXPECT_EQ(dense.get_string("router", ""), "fixed_rate");
  EXPECT_FALSE(dense.has("window"));  // scoped to swa
  EXPECT_EQ(dense.get_string("train.lr", ""), "3e-4");  // untouched: not a scope
  const Options swa = rt::backend_set_options(set, "swa", run);
  EXPECT_EQ(swa.get_string("sparsity", ""), "0.5");
  EXPECT_EQ(swa.get_string("window", ""), "16");
  const Options full = rt::backend_set_options({"l2a_dense.router=fixed_rate", "swa.window=8"}, "full_causal", run);
  EXPECT_TRUE(full.all().empty());  // nothing reaches a backend that was not named
}

TEST(SetOptions, UnknownScopeNamesKeyScopeAndBackends) {
  const std::vector<std::string> run = {"full_causal", "l2a_dense"};
  const std::string e = error_of([&] {
    rt::backend_set_options({"l2a_dense.router=fixed_rate", "l2a_fuse.router=fixed_rate"}, "l2a_dense", run);
  });
  EXPECT_NE(e.find("--set l2a_fuse.router=fixed_rate: 'l2a_fuse' is not one of the backends of this run "
                   "(full_causal, l2a_dense)"),
            std::string::npos)
      << e;
  // A real plugin that this run does not use is refused the same way.
  const std::string e2 = error_of([&] {
    rt::backend_set_options({"swa.window=8"}, "full_causal", run, {"full_causal", "swa", "l2a_dense"});
  });
  EXPECT_NE(e2.find("'swa' is not one of the backends of this run (full_causal, l2a_dense)"), std::string::npos)
      << e2;
  EXPECT_EQ(e2.find("no attention plugin"), std::string::npos) << e2;
  // A name no plugin has gets the list of those that exist.
  const std::string e3 = error_of([&] {
    rt::backend_set_options({"l2a_fuse.router=x"}, "full_causal", run, {"full_causal", "swa", "l2a_dense"});
  });
  EXPECT_NE(e3.find("no attention plugin has that name (found: full_causal, swa, l2a_dense)"), std::string::npos)
      << e3;
}

TEST(SetOptions, MalformedArgumentsFail) {
  for (const char* bad : {"router", "=x", "l2a_dense.=x", ".router=x"}) {
    const std::string e = error_of([&] { rt::parse_set_options({bad}); });
    EXPECT_NE(e.find("--set"), std::string::npos) << bad << ": " << e;
    EXPECT_NE(e.find(bad), std::string::npos) << bad << ": " << e;
  }
}

}  // namespace

// --window and a --set that gives the window too must agree (issue 11: not a silent choice).
namespace {
TEST(SetOptions, WindowConflictsWithSetWindow) {
  for (const std::string set : {"window=8", "attention.window=8", "swa.window=8", "l2a_dense.window=08x"}) {
    SCOPED_TRACE(set);
    const std::string err = error_of([&] { rt::check_window_conflict(4, {set}); });
    EXPECT_NE(err.find("--window 4"), std::string::npos) << err;
    EXPECT_NE(err.find("--set " + set), std::string::npos) << err;
  }
  // The same value twice, no --window, or a --set of another key: fine.
  EXPECT_EQ(error_of([] { rt::check_window_conflict(4, {"window=4", "swa.window=4", "attention.window=4"}); }), "");
  EXPECT_EQ(error_of([] { rt::check_window_conflict(0, {"window=8"}); }), "");
  EXPECT_EQ(error_of([] { rt::check_window_conflict(4, {"sparsity=0.8", "train.lr=3e-4"}); }), "");
}
}  // namespace
