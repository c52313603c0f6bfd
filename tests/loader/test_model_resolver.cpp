// Model resolution: explicit directories, presets, search order and the not-found message.
#include <unistd.h>

#include <cstdlib>
#include <map>

#include "loader/model_resolver.h"
#include "loader/safetensors_writer.h"
#include "loader_test_util.h"

namespace rt::test {
namespace {

const char* const kEnvVars[] = {"RUNTIME_MODELS", "HF_HUB_CACHE", "HF_HOME", "XDG_CACHE_HOME", "HOME"};

// Runs each test in a fresh working directory with the model-related environment cleared, and
// restores both afterwards.
class Resolver : public ::testing::Test {
 protected:
  void SetUp() override {
    for (const char* v : kEnvVars) {
      if (const char* s = std::getenv(v)) saved_[v] = s;
      ::unsetenv(v);
    }
    old_cwd_ = fs::current_path();
    fs::current_path(tmp_.path());
  }
  void TearDown() override {
    fs::current_path(old_cwd_);
    for (const char* v : kEnvVars) {
      auto it = saved_.find(v);
      if (it != saved_.end())
        ::setenv(v, it->second.c_str(), 1);
      else
        ::unsetenv(v);
    }
  }
  // A directory that counts as a model: config.json + (optionally) model.safetensors.
  static void make_model(const fs::path& d, bool weights = true) {
    write_file(d / "config.json", TinyQwen2{}.config_json());
    if (weights) write_file(d / "model.safetensors", serialize_safetensors({}));
  }
  fs::path root() const { return tmp_.path(); }

  TempDir tmp_;
  fs::path old_cwd_;
  std::map<std::string, std::string> saved_;
};

TEST_F(Resolver, ExplicitDirectory) {
  make_model(root() / "mymodel", /*weights=*/false);
  auto r = resolve_model((root() / "mymodel").string(), {});
  ASSERT_TRUE(r.dir.has_value());
  EXPECT_EQ(r.name, "mymodel");
  EXPECT_FALSE(r.has_weights);
  EXPECT_EQ(r.config_path(), root() / "mymodel" / "config.json");
  auto msg = error_of([&] { require_weights(r); });
  EXPECT_HAS(msg, (root() / "mymodel").string());
  EXPECT_HAS(msg, "no weights");
  EXPECT_HAS(msg, "--init random");

  make_model(root() / "mymodel");
  r = resolve_model((root() / "mymodel").string(), {});
  EXPECT_TRUE(r.has_weights);
  EXPECT_EQ(require_weights(r), root() / "mymodel");
}

TEST_F(Resolver, DirectoryWithoutConfig) {
  fs::create_directories(root() / "empty");
  auto msg = error_of([&] { resolve_model((root() / "empty").string(), {}); });
  EXPECT_HAS(msg, (root() / "empty").string());
  EXPECT_HAS(msg, "no config.json");
}

TEST_F(Resolver, UnknownName) {
  auto msg = error_of([&] { resolve_model("gpt-5", {}); });
  EXPECT_HAS(msg, "unknown model \"gpt-5\"");
  EXPECT_HAS(msg, "qwen2.5-0.5b, qwen2.5-1.5b, qwen2.5-3b");
  msg = error_of([&] { resolve_model("./no/such/dir", {}); });
  EXPECT_HAS(msg, "./no/such/dir");
  EXPECT_HAS(msg, "does not exist");
}

TEST_F(Resolver, PresetNamesCaseInsensitive) {
  for (const char* spec : {"qwen2.5-0.5b", "Qwen2.5-0.5B", "Qwen/Qwen2.5-0.5B"}) {
    auto r = resolve_model(spec, {});
    EXPECT_EQ(r.name, "qwen2.5-0.5b") << spec;
    EXPECT_EQ(r.hf_repo, "Qwen/Qwen2.5-0.5B");
    EXPECT_FALSE(r.dir.has_value());
  }
}

TEST_F(Resolver, PresetConfigFromPresetDirs) {
  auto r = resolve_model("qwen2.5-1.5b", {root() / "nothing", fs::path(RT_SOURCE_DIR) / "configs" / "models"});
  ASSERT_TRUE(r.preset_config.has_value());
  EXPECT_EQ(*r.preset_config, fs::path(RT_SOURCE_DIR) / "configs" / "models" / "qwen2.5-1.5b.json");
  EXPECT_EQ(r.config_path(), *r.preset_config);  // no weights: architecture from the preset
  // The default search finds the source tree's presets too.
  EXPECT_TRUE(resolve_model("qwen2.5-3b").preset_config.has_value());
}

TEST_F(Resolver, SearchOrder) {
  const std::string snap = "models--Qwen--Qwen2.5-0.5B/snapshots/abc123";
  const fs::path env_dir = root() / "env_models" / "qwen2.5-0.5b";
  const fs::path local = fs::path("models") / "qwen2.5-0.5b";
  const fs::path hub = root() / "hub_cache" / snap;
  const fs::path hf_home = root() / "hf_home" / "hub" / snap;
  const fs::path xdg = root() / "xdg" / "huggingface" / "hub" / snap;
  const fs::path home = root() / "home" / ".cache" / "huggingface" / "hub" / snap;
  for (const auto& d : {env_dir, local, hub, hf_home, xdg, home}) make_model(d);
  ::setenv("RUNTIME_MODELS", (root() / "env_models").c_str(), 1);
  ::setenv("HF_HUB_CACHE", (root() / "hub_cache").c_str(), 1);
  ::setenv("HF_HOME", (root() / "hf_home").c_str(), 1);
  ::setenv("XDG_CACHE_HOME", (root() / "xdg").c_str(), 1);
  ::setenv("HOME", (root() / "home").c_str(), 1);

  for (const fs::path& expected : {env_dir, local, hub, hf_home, xdg, home}) {
    auto r = resolve_model("qwen2.5-0.5b", {});
    ASSERT_TRUE(r.dir.has_value());
    EXPECT_EQ(*r.dir, expected);
    EXPECT_EQ(require_weights(r), expected);
    fs::remove_all(expected);  // next time the next place wins
  }
  EXPECT_FALSE(resolve_model("qwen2.5-0.5b", {}).dir.has_value());
}

TEST_F(Resolver, LocalDirWithoutWeightsIsSkipped) {
  make_model(fs::path("models") / "qwen2.5-0.5b", /*weights=*/false);
  make_model(fs::path("models") / "Qwen2.5-0.5B");  // the repo's own spelling also counts
  auto r = resolve_model("qwen2.5-0.5b", {});
  ASSERT_TRUE(r.dir.has_value());
  EXPECT_EQ(*r.dir, fs::path("models") / "Qwen2.5-0.5B");
}

TEST_F(Resolver, HubCachePrefersRefsMain) {
  const fs::path repo = root() / "hub" / "models--Qwen--Qwen2.5-3B";
  make_model(repo / "snapshots" / "aaa");
  make_model(repo / "snapshots" / "bbb");
  make_model(repo / "snapshots" / "ccc", /*weights=*/false);
  ::setenv("HF_HUB_CACHE", (root() / "hub").c_str(), 1);
  EXPECT_EQ(*resolve_model("qwen2.5-3b", {}).dir, repo / "snapshots" / "aaa");  // no refs/main
  write_file(repo / "refs" / "main", std::string("bbb\n"));
  EXPECT_EQ(*resolve_model("qwen2.5-3b", {}).dir, repo / "snapshots" / "bbb");
  // refs/main naming an incomplete snapshot: fall back to a complete one.
  write_file(repo / "refs" / "main", std::string("ccc"));
  EXPECT_EQ(*resolve_model("qwen2.5-3b", {}).dir, repo / "snapshots" / "aaa");
  // refs/main that tries to leave snapshots/ is ignored.
  write_file(repo / "refs" / "main", std::string("../../x"));
  EXPECT_EQ(*resolve_model("qwen2.5-3b", {}).dir, repo / "snapshots" / "aaa");
}

TEST_F(Resolver, NotFoundListsEveryPlace) {
  ::setenv("RUNTIME_MODELS", (root() / "env_models").c_str(), 1);
  ::setenv("HF_HUB_CACHE", (root() / "hub_cache").c_str(), 1);
  ::setenv("HOME", (root() / "home").c_str(), 1);
  auto r = resolve_model("qwen2.5-1.5b", {fs::path(RT_SOURCE_DIR) / "configs" / "models"});
  EXPECT_FALSE(r.dir.has_value());
  auto msg = error_of([&] { require_weights(r); });
  EXPECT_HAS(msg, "no weights found for model qwen2.5-1.5b");
  EXPECT_HAS(msg, (root() / "env_models" / "qwen2.5-1.5b").string());
  EXPECT_HAS(msg, "models/qwen2.5-1.5b");
  EXPECT_HAS(msg, (root() / "hub_cache" / "models--Qwen--Qwen2.5-1.5B").string());
  EXPECT_HAS(msg, (root() / "home" / ".cache" / "huggingface" / "hub" / "models--Qwen--Qwen2.5-1.5B").string());
  EXPECT_HAS(msg, "hf download Qwen/Qwen2.5-1.5B --local-dir models/qwen2.5-1.5b");
  EXPECT_HAS(msg, "--init random");
  EXPECT_HAS(msg, "qwen2.5-1.5b.json");

  ::unsetenv("RUNTIME_MODELS");
  msg = error_of([&] { require_weights(resolve_model("qwen2.5-1.5b", {})); });
  EXPECT_HAS(msg, "$RUNTIME_MODELS is not set");
}

}  // namespace
}  // namespace rt::test
