// Qwen2 weight validation against config.json.
#include "loader/hf_config.h"
#include "loader/qwen2_weights.h"
#include "loader/weight_store.h"
#include "loader_test_util.h"

namespace rt::test {
namespace {

struct Model {
  TempDir dir;
  HfConfig cfg;
  WeightStore ws;
};

// Writes config.json + model.safetensors for `m` (after `edit` changes the tensor set), loads both.
void build(Model& out, const TinyQwen2& m, StDType dtype,
           const std::function<void(TensorSet&)>& edit = {}) {
  write_file(out.dir / "config.json", m.config_json());
  TensorSet s = qwen2_tensors(m, dtype);
  if (edit) edit(s);
  s.save(out.dir / "model.safetensors");
  out.cfg = parse_hf_config(out.dir / "config.json");
  out.ws = WeightStore::open(out.dir.path());
}

TEST(Qwen2Weights, ValidUntiedBf16AndF32) {
  for (StDType dt : {StDType::BF16, StDType::F32, StDType::F16}) {
    Model md;
    build(md, TinyQwen2{}, dt);
    auto r = validate_qwen2_weights(md.cfg, md.ws);
    EXPECT_EQ(r.expected, 1u + 12u * 2u + 1u + 1u);
    EXPECT_EQ(r.extra, 0u);
    EXPECT_FALSE(r.lm_head_ignored);
  }
}

TEST(Qwen2Weights, TiedWithAndWithoutLmHead) {
  TinyQwen2 m;
  m.tied = true;
  Model md;
  build(md, m, StDType::BF16);
  auto r = validate_qwen2_weights(md.cfg, md.ws);
  EXPECT_EQ(r.expected, 1u + 12u * 2u + 1u);
  EXPECT_FALSE(r.lm_head_ignored);

  // A tied checkpoint that still stores lm_head.weight: allowed, ignored, not counted as extra.
  Model md2;
  build(md2, m, StDType::BF16, [&](TensorSet& s) { s.add("lm_head.weight", {m.vocab, m.hidden}, StDType::BF16); });
  r = validate_qwen2_weights(md2.cfg, md2.ws);
  EXPECT_TRUE(r.lm_head_ignored);
  EXPECT_EQ(r.extra, 0u);

  // transformers' tying at load: a stored head equal to the embedding stays tied...
  Model md_copy;
  build(md_copy, m, StDType::BF16, [](TensorSet& s) { s.add_copy("lm_head.weight", "model.embed_tokens.weight"); });
  EXPECT_EQ(reconcile_tied_head(md_copy.cfg, md_copy.ws), "");
  EXPECT_TRUE(md_copy.cfg.tie_word_embeddings);
  // ...a different one runs untied, with a warning, and the model then expects it.
  Model& md4 = md2;
  const std::string note = reconcile_tied_head(md4.cfg, md4.ws);
  EXPECT_HAS(note, "running untied");
  EXPECT_FALSE(md4.cfg.tie_word_embeddings);
  EXPECT_EQ(md4.cfg.raw["tie_word_embeddings"], false);
  EXPECT_EQ(validate_qwen2_weights(md4.cfg, md4.ws).expected, 1u + 12u * 2u + 2u);
  // ...and a head stored without the embedding is the embedding too.
  Model md5;
  build(md5, m, StDType::BF16, [&](TensorSet& s) {
    s.add("lm_head.weight", {m.vocab, m.hidden}, StDType::BF16);
    s.remove("model.embed_tokens.weight");
  });
  EXPECT_EQ(reconcile_tied_head(md5.cfg, md5.ws), "");
  EXPECT_TRUE(md5.cfg.tie_word_embeddings);
  EXPECT_EQ(validate_qwen2_weights(md5.cfg, md5.ws).expected, 1u + 12u * 2u + 1u);

  // Untied config without lm_head.weight: missing.
  TinyQwen2 untied;
  Model md3;
  build(md3, untied, StDType::BF16, [](TensorSet& s) { s.remove("lm_head.weight"); });
  auto msg = error_of([&] { validate_qwen2_weights(md3.cfg, md3.ws); });
  EXPECT_HAS(msg, "lm_head.weight");
  EXPECT_HAS(msg, "missing");
}

TEST(Qwen2Weights, ExtraTensorsCounted) {
  Model md;
  build(md, TinyQwen2{}, StDType::BF16, [](TensorSet& s) {
    s.add("model.layers.0.l2a.router.weight", {8}, StDType::F32);
    s.add("model.layers.1.l2a.router.weight", {8}, StDType::F32);
  });
  auto r = validate_qwen2_weights(md.cfg, md.ws);
  EXPECT_EQ(r.extra, 2u);
  EXPECT_EQ(r.extra_names[0], "model.layers.0.l2a.router.weight");
}

TEST(Qwen2Weights, WrongDtype) {
  Model md;
  build(md, TinyQwen2{}, StDType::BF16, [](TensorSet& s) {
    s.remove("model.norm.weight");
    s.add("model.norm.weight", {8}, StDType::I32);
  });
  auto msg = error_of([&] { validate_qwen2_weights(md.cfg, md.ws); });
  EXPECT_HAS(msg, (md.dir / "model.safetensors").string());
  EXPECT_HAS(msg, "\"model.norm.weight\"");
  EXPECT_HAS(msg, "dtype I32");
  EXPECT_HAS(msg, "allowed: F32, F16, BF16");
}

TEST(Qwen2Weights, ShapeContradictsConfig) {
  Model md;
  build(md, TinyQwen2{}, StDType::BF16, [](TensorSet& s) {
    s.remove("model.layers.1.self_attn.k_proj.weight");
    s.add("model.layers.1.self_attn.k_proj.weight", {8, 8}, StDType::BF16);  // MHA-sized, config says GQA
  });
  auto msg = error_of([&] { validate_qwen2_weights(md.cfg, md.ws); });
  EXPECT_HAS(msg, (md.dir / "config.json").string());
  EXPECT_HAS(msg, (md.dir / "model.safetensors").string());
  EXPECT_HAS(msg, "\"model.layers.1.self_attn.k_proj.weight\" has shape [8, 8] but config.json implies [4, 8]");

  // The same file against a config claiming a bigger model: every mismatch is reported at once.
  TinyQwen2 big;
  big.hidden = 16;
  auto cfg = parse_hf_config_text(big.config_json(), "big/config.json");
  msg = error_of([&] { validate_qwen2_weights(cfg, md.ws); });
  EXPECT_HAS(msg, "big/config.json");
  EXPECT_HAS(msg, "\"model.embed_tokens.weight\" has shape [16, 8] but config.json implies [16, 16]");
  EXPECT_HAS(msg, "more");
}

TEST(Qwen2Weights, MissingTensor) {
  Model md;
  build(md, TinyQwen2{}, StDType::BF16, [](TensorSet& s) { s.remove("model.layers.0.mlp.up_proj.weight"); });
  auto msg = error_of([&] { validate_qwen2_weights(md.cfg, md.ws); });
  EXPECT_HAS(msg, "1 missing tensor(s): model.layers.0.mlp.up_proj.weight");
  EXPECT_HAS(msg, (md.dir / "model.safetensors").string());

  // Wrong layer count: names past the last layer are missing.
  TinyQwen2 deeper;
  deeper.layers = 3;
  auto cfg = parse_hf_config_text(deeper.config_json(), "deep/config.json");
  msg = error_of([&] { validate_qwen2_weights(cfg, md.ws); });
  EXPECT_HAS(msg, "model.layers.2.input_layernorm.weight");
}

TEST(Qwen2Weights, ExpectedNamesMatchHuggingFace) {
  TinyQwen2 m;
  auto cfg = parse_hf_config_text(m.config_json(), "x");
  auto ex = qwen2_expected_tensors(cfg);
  auto s = qwen2_tensors(m);
  ASSERT_EQ(ex.size(), s.names.size());
  for (size_t i = 0; i < ex.size(); ++i) {
    EXPECT_EQ(ex[i].name, s.names[i]);
    EXPECT_EQ(ex[i].shape, s.shapes[i]);
  }
}

}  // namespace
}  // namespace rt::test
