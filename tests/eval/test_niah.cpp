// Needle in a haystack: the prompt has the requested length in tokens (or one fewer), holds the
// needle once at the requested depth (to within a sentence), the score function, and the
// generation equals `runtime generate` on the same prompt.
#include <gtest/gtest.h>

#include <array>
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <map>
#include <sstream>
#include <string>

#include <nlohmann/json.hpp>

#include "eval/niah.h"
#include "rt/sdk/error.h"
#include "tokenizer/tokenizer.h"

namespace {

namespace fs = std::filesystem;
const fs::path kTokenizer = fs::path(RT_SHARED_DATA_DIR) / "qwen2.5-tokenizer";
const fs::path kHaystack = fs::path(RT_SHARED_DATA_DIR) / "wikitext-2" / "test.txt";

std::string read_text(const fs::path& p) {
  std::ifstream in(p, std::ios::binary);
  std::ostringstream ss;
  ss << in.rdbuf();
  return ss.str();
}

std::string run(const std::string& cmd, bool merge_stderr = true) {
  std::string out;
  FILE* p = ::popen((cmd + (merge_stderr ? " 2>&1" : " 2>/dev/null")).c_str(), "r");
  std::array<char, 4096> buf{};
  for (size_t n; p && (n = std::fread(buf.data(), 1, buf.size(), p)) > 0;) out.append(buf.data(), n);
  const int status = p ? ::pclose(p) : -1;
  EXPECT_EQ(status, 0) << cmd << "\n" << out;
  return out;
}

TEST(Niah, PromptLengthNeedleAndDepth) {
  const auto tok = rt::load_tokenizer(kTokenizer);
  // The haystack's first 40 KB: the longest sentence bounds how close to a depth the needle can sit.
  const std::string text = read_text(kHaystack).substr(0, 40000);
  const auto sentences = rt::eval::haystack_sentences(text, "haystack");
  for (int64_t len : {100, 257, 1000, 4096}) {
    for (double depth : {0.0, 0.25, 0.5, 0.75, 1.0}) {
      SCOPED_TRACE("length " + std::to_string(len) + " depth " + std::to_string(depth));
      const auto p = rt::eval::build_niah_prompt(*tok, sentences, len, depth, 42 + len);
      const int64_t n = static_cast<int64_t>(p.ids.size());
      EXPECT_TRUE(n == len || n == len - 1) << n;
      EXPECT_EQ(p.ids, tok->encode(p.text));
      const size_t at = p.text.find(p.needle);
      ASSERT_NE(at, std::string::npos);
      EXPECT_EQ(p.text.find(p.needle, at + 1), std::string::npos) << "the needle appears once";
      EXPECT_EQ(p.number.size(), 7u);
      EXPECT_NE(p.text.find("special magic number for " + p.key + " mentioned"), std::string::npos);
      // Short haystacks have few sentence boundaries; at 1000+ tokens the needle is within 10%.
      if (len >= 1000) EXPECT_NEAR(p.depth_actual, depth, 0.1);
    }
  }
  // The same seed gives the same prompt (every backend is asked the same).
  EXPECT_EQ(rt::eval::build_niah_prompt(*tok, sentences, 300, 0.5, 7).text,
            rt::eval::build_niah_prompt(*tok, sentences, 300, 0.5, 7).text);
  // Too short for the instructions, needle and question: a clear error.
  try {
    (void)rt::eval::build_niah_prompt(*tok, sentences, 40, 0.5, 1);
    ADD_FAILURE() << "no error";
  } catch (const rt::Error& e) {
    EXPECT_NE(std::string(e.what()).find("cannot hold"), std::string::npos) << e.what();
  }
}

TEST(Niah, Score) {
  EXPECT_TRUE(rt::eval::niah_score(" 1234567.", "1234567"));
  EXPECT_TRUE(rt::eval::niah_score("The number is 1234567 and", "1234567"));
  EXPECT_FALSE(rt::eval::niah_score("123456 7", "1234567"));
  EXPECT_FALSE(rt::eval::niah_score("", "1234567"));
  EXPECT_FALSE(rt::eval::niah_score("anything", ""));
}

TEST(Niah, GenerationEqualsRuntimeGenerate) {
  const fs::path out = fs::temp_directory_path() / ("rt_niah_" + std::to_string(::getpid()));
  fs::remove_all(out);
  const std::string model = (fs::path(RT_SOURCE_DIR) / "tests" / "fixtures" / "eval" / "model").string();
  run(std::string(RT_BIN_DIR) + "/runtime eval --model '" + model + "' --tokenizer '" + kTokenizer.string() +
      "' --attention full_causal --tasks niah --data niah='" + kHaystack.string() +
      "' --niah-lengths 150 --niah-depths 50 --niah-samples 1 --output '" + out.string() + "'");
  std::ifstream in(out / "full_causal" / "samples_niah.jsonl");
  std::string line;
  ASSERT_TRUE(std::getline(in, line));
  const auto s = nlohmann::json::parse(line);
  // The prompt ids, rebuilt as eval built them, through runtime generate.
  const auto tok = rt::load_tokenizer(kTokenizer);
  const auto sentences = rt::eval::haystack_sentences(read_text(kHaystack), "haystack");
  const uint64_t seed = (uint64_t{150} << 20) ^ (uint64_t{5000} << 8);
  const auto p = rt::eval::build_niah_prompt(*tok, sentences, 150, 0.5, seed);
  EXPECT_EQ(s["prompt_tokens"].get<int64_t>(), static_cast<int64_t>(p.ids.size()));
  ASSERT_EQ(p.number, s["target"].get<std::string>()) << "the test rebuilds the prompt with eval's seed";
  std::string ids;
  for (int32_t id : p.ids) ids += (ids.empty() ? "" : ",") + std::to_string(id);
  const std::string gen = run(std::string(RT_BIN_DIR) + "/runtime generate --model '" + model + "' --ids " + ids +
                              " --max-new-tokens " + std::to_string(s["output_ids"].size()) + " --print-ids --ignore-eos",
                              /*merge_stderr=*/false);
  std::string want;
  for (const auto& id : s["output_ids"]) want += (want.empty() ? "" : " ") + std::to_string(id.get<int32_t>());
  EXPECT_EQ(gen.substr(0, gen.find('\n')), want);
  fs::remove_all(out);
}

}  // namespace

namespace {
// A cell at the model's whole length (512 positions in the fixture): the prompt leaves room for the
// 16 answer tokens (512 - 16, or one fewer), and eval says so; shorter cells keep their length.
TEST(Niah, CellAtTheModelsLengthLeavesRoomForTheAnswer) {
  const fs::path out = fs::temp_directory_path() / ("rt_niah_full_" + std::to_string(::getpid()));
  fs::remove_all(out);
  const std::string model = (fs::path(RT_SOURCE_DIR) / "tests" / "fixtures" / "eval" / "model").string();
  const std::string log = run(std::string(RT_BIN_DIR) + "/runtime eval --model '" + model + "' --tokenizer '" +
                              kTokenizer.string() + "' --attention full_causal --tasks niah --data niah='" +
                              kHaystack.string() + "' --niah-lengths 200,512 --niah-depths 50 --niah-samples 1 --output '" +
                              out.string() + "'");
  EXPECT_NE(log.find("length 512: the prompt is 496 tokens"), std::string::npos) << log;
  std::ifstream in(out / "full_causal" / "samples_niah.jsonl");
  std::map<int64_t, int64_t> prompt;
  for (std::string line; std::getline(in, line);) {
    const auto s = nlohmann::json::parse(line);
    prompt[s["length"].get<int64_t>()] = s["prompt_tokens"].get<int64_t>();
  }
  ASSERT_EQ(prompt.size(), 2u);
  EXPECT_GE(prompt[200], 199);
  EXPECT_LE(prompt[200], 200);
  EXPECT_GE(prompt[512], 495);
  EXPECT_LE(prompt[512], 496);
  fs::remove_all(out);
}
}  // namespace
