// Tokenizer tests: exact parity with Hugging Face `tokenizers` (fixtures written by
// tools/make_tokenizer_fixtures.py), the whole WikiText-2 test file, the API and every error path.
#include <gtest/gtest.h>

#include <cstdio>
#include <fstream>
#include <random>
#include <sstream>
#include <thread>

#include <nlohmann/json.hpp>

#include "rt/sdk/error.h"
#include "test_util.h"
#include "tokenizer/tokenizer.h"

namespace fs = std::filesystem;
using nlohmann::json;

namespace {

const fs::path kTokenizerDir = fs::path(RT_SHARED_DATA_DIR) / "qwen2.5-tokenizer";
const fs::path kTokenizerJson = kTokenizerDir / "tokenizer.json";
const fs::path kParity = fs::path(RT_FIXTURES_DIR) / "tokenizer" / "parity.json";

std::string read_file(const fs::path& p) {
  std::ifstream in(p, std::ios::binary);
  EXPECT_TRUE(in) << "cannot open " << p;
  std::ostringstream ss;
  ss << in.rdbuf();
  return ss.str();
}

void write_file(const fs::path& p, const std::string& s) {
  std::ofstream out(p, std::ios::binary);
  out << s;
}

const json& parity() {
  static const json j = json::parse(read_file(kParity));
  return j;
}

const json& base_doc() {
  static const json j = json::parse(read_file(kTokenizerJson));
  return j;
}

const rt::Tokenizer& qwen() {
  static const auto tok = rt::load_tokenizer(kTokenizerJson);
  return *tok;
}

using rt::test::TempDir;

// Mirror of apply_patch() in tools/make_tokenizer_fixtures.py.
json apply_patch(json doc, const json& patch) {
  for (const char* key : {"normalizer", "pre_tokenizer", "decoder"}) {
    if (patch.contains(key)) doc[key] = patch[key];
  }
  if (patch.contains("model")) {
    for (auto it = patch["model"].begin(); it != patch["model"].end(); ++it) doc["model"][it.key()] = it.value();
  }
  if (patch.value("merges_as_strings", false)) {
    for (auto& m : doc["model"]["merges"]) m = m[0].get<std::string>() + " " + m[1].get<std::string>();
  }
  if (patch.contains("added_tokens")) {
    for (const auto& t : patch["added_tokens"]) doc["added_tokens"].push_back(t);
  }
  return doc;
}

// Printable form of a test string for failure messages.
std::string escaped(const std::string& s) { return json(s).dump(); }

std::string ids_str(const std::vector<int32_t>& ids) { return json(ids).dump(); }

void check_cases(const rt::Tokenizer& tok, const json& cases, int& checked) {
  for (const auto& c : cases) {
    const std::string text = c["text"];
    const auto want = c["ids"].get<std::vector<int32_t>>();
    const auto got = tok.encode(text);
    EXPECT_EQ(got, want) << "case " << c["name"].get<std::string>() << " text " << escaped(text)
                         << "\n  got  " << ids_str(got) << "\n  want " << ids_str(want);
    const std::string decoded = c.value("decoded", text);
    EXPECT_EQ(tok.decode(want), decoded) << "decode, case " << c["name"].get<std::string>();
    ++checked;
  }
}

template <typename F>
std::string error_of(F&& f) {
  try {
    f();
  } catch (const rt::Error& e) {
    return e.what();
  }
  ADD_FAILURE() << "expected rt::Error";
  return {};
}

// Writes `doc` as tokenizer.json into `dir` and loads it.
std::unique_ptr<rt::Tokenizer> load_doc(const TempDir& dir, const json& doc) {
  write_file(dir.path() / "tokenizer.json", doc.dump());
  return rt::load_tokenizer(dir.path() / "tokenizer.json");
}

}  // namespace

TEST(TokenizerParity, AllVariantsMatchHuggingFace) {
  int checked = 0;
  for (const auto& v : parity()["variants"]) {
    const std::string name = v["name"];
    SCOPED_TRACE("variant " + name);
    if (name == "qwen") {
      check_cases(qwen(), v["cases"], checked);
    } else {
      TempDir dir;
      auto tok = load_doc(dir, apply_patch(base_doc(), v["patch"]));
      check_cases(*tok, v["cases"], checked);
    }
  }
  std::printf("[ parity   ] %d cases checked\n", checked);
  EXPECT_GT(checked, 500);
}

TEST(TokenizerParity, LossyDecodeMatchesHuggingFace) {
  for (const auto& c : parity()["decode_cases"]) {
    const auto ids = c["ids"].get<std::vector<int32_t>>();
    EXPECT_EQ(qwen().decode(ids), c["decoded"].get<std::string>()) << "ids " << ids_str(ids);
  }
}

TEST(TokenizerParity, WholeWikitextTestFile) {
  const json& w = parity()["whole_file"];
  const std::string text = read_file(fs::path(RT_SHARED_DATA_DIR) / w["path"].get<std::string>());
  qwen();  // load outside the timed region
  const rt::test::Stopwatch watch;
  const auto ids = qwen().encode(text);
  const double secs = watch.seconds();
  std::printf("[ speed    ] encoded %zu bytes -> %zu tokens in %.3f s (%.2f MB/s)\n", text.size(),
              ids.size(), secs, text.size() / secs / 1e6);
  ASSERT_EQ(static_cast<int64_t>(ids.size()), w["count"].get<int64_t>());
  uint64_t hash = 0;
  for (size_t i = 0; i < ids.size(); ++i) hash += static_cast<uint64_t>(ids[i]) * (i + 1);
  EXPECT_EQ(hash & ((uint64_t{1} << 61) - 1), w["hash"].get<uint64_t>());
  const auto first = w["first"].get<std::vector<int32_t>>();
  const auto last = w["last"].get<std::vector<int32_t>>();
  EXPECT_EQ(std::vector<int32_t>(ids.begin(), ids.begin() + first.size()), first);
  EXPECT_EQ(std::vector<int32_t>(ids.end() - last.size(), ids.end()), last);
  EXPECT_EQ(qwen().decode(ids), text);  // wikitext is NFC already, so decoding round-trips
#ifdef NDEBUG
  EXPECT_LT(secs, 2.0) << "encoding is too slow";
#endif
}

TEST(Tokenizer, QwenBasics) {
  const auto& t = qwen();
  EXPECT_EQ(t.vocab_size(), 151665);
  EXPECT_EQ(t.token_to_id("<|endoftext|>"), 151643);
  EXPECT_EQ(t.token_to_id("<|im_end|>"), 151645);
  EXPECT_EQ(t.token_to_id("hello"), 14990);
  EXPECT_EQ(t.token_to_id("Ġ"), 220);
  EXPECT_EQ(t.token_to_id("definitely not a token"), std::nullopt);
  EXPECT_EQ(t.eos_id(), 151643);  // tokenizer_config.json: eos_token <|endoftext|>
  EXPECT_TRUE(t.encode("").empty());
  EXPECT_EQ(t.decode(std::vector<int32_t>{}), "");
  const std::vector<int32_t> chat = t.encode("<|im_start|>user\nhi<|im_end|>");
  EXPECT_EQ(chat.front(), 151644);
  EXPECT_EQ(chat.back(), 151645);
}

// NFC as Hugging Face tokenizers computes it, with Unicode 9.0's tables: a mark assigned later
// (U+1DF6, U+1DFA: Unicode 10 and 14; U+1ABF: 14) neither reorders nor lets a mark after it compose.
// ids from tokenizers.Tokenizer.from_file(tokenizer.json).encode(text, add_special_tokens=False).
TEST(Tokenizer, NormalizesWithHuggingFacesUnicodeVersion) {
  const auto& t = qwen();
  EXPECT_EQ(t.encode("a\u1DF6\u0301"), (std::vector<int32_t>{64, 157, 115, 114, 53839}));
  EXPECT_EQ(t.encode("a\u0316\u1DFA"), (std::vector<int32_t>{64, 136, 244, 157, 115, 118}));
  EXPECT_EQ(t.encode("1\u1ABF\u031B"), (std::vector<int32_t>{16, 157, 103, 123, 136, 249}));
  EXPECT_EQ(t.encode("e\u0301"), (std::vector<int32_t>{963}));  // an old mark still composes: é
}

TEST(Tokenizer, DirectoryLoadEqualsFileLoad) {
  auto dir_tok = rt::load_tokenizer(kTokenizerDir);
  const std::string s = "Directory and file loads must agree: 42 <|im_end|>";
  EXPECT_EQ(dir_tok->encode(s), qwen().encode(s));
  EXPECT_EQ(dir_tok->vocab_size(), qwen().vocab_size());
}

TEST(Tokenizer, EosFromConfigOrEndOfText) {
  TempDir dir;
  fs::copy_file(kTokenizerJson, dir.path() / "tokenizer.json");
  // No tokenizer_config.json: <|endoftext|>.
  EXPECT_EQ(rt::load_tokenizer(dir.path())->eos_id(), 151643);
  // The config's eos_token, in its object form.
  write_file(dir.path() / "tokenizer_config.json", R"({"eos_token": {"content": "<|im_end|>"}})");
  EXPECT_EQ(rt::load_tokenizer(dir.path())->eos_id(), 151645);
  write_file(dir.path() / "tokenizer_config.json", R"({"eos_token": "<|nope|>"})");
  const std::string msg = error_of([&] { rt::load_tokenizer(dir.path()); });
  EXPECT_NE(msg.find("tokenizer_config.json"), std::string::npos) << msg;
  EXPECT_NE(msg.find("<|nope|>"), std::string::npos) << msg;
  // Neither config nor <|endoftext|>: none.
  json doc = base_doc();
  doc["added_tokens"] = json::array();
  fs::remove(dir.path() / "tokenizer_config.json");
  EXPECT_EQ(load_doc(dir, doc)->eos_id(), std::nullopt);
}

TEST(Tokenizer, InvalidUtf8IsReplacedNotFatal) {
  const auto& t = qwen();
  // Each maximal invalid subsequence becomes one U+FFFD before tokenization (documented).
  EXPECT_EQ(t.encode("a\xff" "b"), t.encode("a\xEF\xBF\xBD" "b"));
  EXPECT_EQ(t.encode("\xE6\x88"), t.encode("\xEF\xBF\xBD"));             // truncated 3-byte char
  EXPECT_EQ(t.encode("x\xC0\xAFy"), t.encode("x\xEF\xBF\xBD\xEF\xBF\xBDy"));  // overlong: two
  EXPECT_EQ(t.encode("\xED\xA0\x80"), t.encode("\xEF\xBF\xBD\xEF\xBF\xBD\xEF\xBF\xBD"));  // surrogate
  EXPECT_EQ(t.decode(t.encode("a\xff" "b")), "a\xEF\xBF\xBD" "b");
  // Embedded NULs are ordinary characters.
  const std::string nul("a\0b", 3);
  EXPECT_EQ(t.decode(t.encode(nul)), nul);
}

TEST(Tokenizer, RandomBytesNeverThrow) {
  std::mt19937 rng(7);
  for (int i = 0; i < 300; ++i) {
    std::string s(rng() % 64, '\0');
    for (auto& c : s) c = static_cast<char>(rng());
    std::vector<int32_t> ids;
    ASSERT_NO_THROW(ids = qwen().encode(s));
    ASSERT_NO_THROW(qwen().decode(ids));
  }
}

TEST(Tokenizer, ConcurrentEncodeIsConsistent) {
  const std::string text = read_file(fs::path(RT_SHARED_DATA_DIR) / "wikitext-2" / "valid.txt").substr(0, 200000);
  const auto want = qwen().encode(text);
  std::vector<std::vector<int32_t>> got(4);
  std::vector<std::thread> threads;
  for (int k = 0; k < 4; ++k) threads.emplace_back([&, k] { got[k] = qwen().encode(text); });
  for (auto& th : threads) th.join();
  for (const auto& g : got) EXPECT_EQ(g, want);
}

TEST(TokenizerErrors, MissingFile) {
  const std::string msg = error_of([] { rt::load_tokenizer("/nonexistent/dir/tokenizer.json"); });
  EXPECT_NE(msg.find("/nonexistent/dir/tokenizer.json"), std::string::npos) << msg;
  EXPECT_NE(msg.find("does not exist"), std::string::npos) << msg;
}

TEST(TokenizerErrors, DirectoryWithoutTokenizer) {
  TempDir dir;
  const std::string msg = error_of([&] { rt::load_tokenizer(dir.path()); });
  EXPECT_NE(msg.find(dir.path().string()), std::string::npos) << msg;
  EXPECT_NE(msg.find("neither tokenizer.json nor tokenizer.model"), std::string::npos) << msg;
}

TEST(TokenizerErrors, MalformedJson) {
  TempDir dir;
  const fs::path p = dir.path() / "tokenizer.json";
  write_file(p, R"({"model": {"type": "BPE", "vocab": {"a": 0,}})");
  const std::string msg = error_of([&] { rt::load_tokenizer(p); });
  EXPECT_NE(msg.find(p.string()), std::string::npos) << msg;
  EXPECT_NE(msg.find("malformed JSON"), std::string::npos) << msg;
  EXPECT_NE(msg.find("parse error"), std::string::npos) << msg;  // nlohmann's own diagnosis
}

TEST(TokenizerErrors, MissingModel) {
  TempDir dir;
  json doc = base_doc();
  doc.erase("model");
  const std::string msg = error_of([&] { load_doc(dir, doc); });
  EXPECT_NE(msg.find((dir.path() / "tokenizer.json").string()), std::string::npos) << msg;
  EXPECT_NE(msg.find("missing 'model'"), std::string::npos) << msg;
}

TEST(TokenizerErrors, UnsupportedModelType) {
  TempDir dir;
  json doc = base_doc();
  doc["model"] = {{"type", "WordPiece"}, {"vocab", {{"a", 0}}}, {"unk_token", "a"}};
  const std::string msg = error_of([&] { load_doc(dir, doc); });
  EXPECT_NE(msg.find((dir.path() / "tokenizer.json").string()), std::string::npos) << msg;
  EXPECT_NE(msg.find("model type 'WordPiece' is not supported"), std::string::npos) << msg;
}

TEST(TokenizerErrors, BadRegexReportsPcre2MessageAndOffset) {
  TempDir dir;
  json doc = base_doc();
  doc["pre_tokenizer"]["pretokenizers"][0]["pattern"]["Regex"] = "(?i:'s|'t";
  const std::string msg = error_of([&] { load_doc(dir, doc); });
  EXPECT_NE(msg.find((dir.path() / "tokenizer.json").string()), std::string::npos) << msg;
  EXPECT_NE(msg.find("missing closing parenthesis"), std::string::npos) << msg;
  EXPECT_NE(msg.find("at offset 9"), std::string::npos) << msg;
}

TEST(TokenizerErrors, UnsupportedComponents) {
  TempDir dir;
  json doc = base_doc();
  doc["normalizer"] = {{"type", "Lowercase"}};
  std::string msg = error_of([&] { load_doc(dir, doc); });
  EXPECT_NE(msg.find("normalizer type 'Lowercase' is not supported"), std::string::npos) << msg;
  doc = base_doc();
  doc["pre_tokenizer"] = {{"type", "Whitespace"}};
  msg = error_of([&] { load_doc(dir, doc); });
  EXPECT_NE(msg.find("pre_tokenizer type 'Whitespace' is not supported"), std::string::npos) << msg;
  doc = base_doc();
  doc["decoder"] = {{"type", "WordPiece"}};
  msg = error_of([&] { load_doc(dir, doc); });
  EXPECT_NE(msg.find("decoder type 'WordPiece' is not supported"), std::string::npos) << msg;
  doc = base_doc();
  doc["model"]["merges"][5] = json::array({"Ġ", "not-a-token"});
  msg = error_of([&] { load_doc(dir, doc); });
  EXPECT_NE(msg.find("model.merges[5]"), std::string::npos) << msg;
  doc = base_doc();
  doc["model"]["vocab"] = json::array();
  msg = error_of([&] { load_doc(dir, doc); });
  EXPECT_NE(msg.find("model.vocab must be an object"), std::string::npos) << msg;
  EXPECT_NE(msg.find((dir.path() / "tokenizer.json").string()), std::string::npos) << msg;
}

TEST(TokenizerErrors, DecodeIdOutOfRange) {
  for (int32_t bad : {-1, 151665, 1 << 30}) {
    const std::vector<int32_t> ids{14990, bad};
    const std::string msg = error_of([&] { qwen().decode(ids); });
    EXPECT_NE(msg.find("token id " + std::to_string(bad) + " is out of range [0, 151665)"),
              std::string::npos) << msg;
  }
}
