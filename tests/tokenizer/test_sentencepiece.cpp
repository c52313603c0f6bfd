// SentencePiece behind rt::Tokenizer: a small model is trained here (SentencePiece's C++
// trainer, first 200 lines of WikiText-2 valid) and the wrapper is checked against the
// SentencePiece processor itself.
#include <gtest/gtest.h>

#include <sentencepiece_processor.h>
#include <sentencepiece_trainer.h>

#include <filesystem>
#include <fstream>
#include <random>

#include "rt/sdk/error.h"
#include "tokenizer/tokenizer.h"

namespace fs = std::filesystem;

namespace {

// Trains once per test binary into a temp dir; the dir holds tokenizer.model.
class SentencePieceTest : public ::testing::Test {
 protected:
  static void SetUpTestSuite() {
    dir_ = new fs::path(fs::temp_directory_path() / ("rt_spm_" + std::to_string(std::random_device{}())));
    fs::create_directories(*dir_);
    std::ifstream in(fs::path(RT_SHARED_DATA_DIR) / "wikitext-2" / "valid.txt");
    ASSERT_TRUE(in);
    const fs::path corpus = *dir_ / "corpus.txt";
    std::ofstream out(corpus);
    std::string line;
    for (int i = 0; i < 200 && std::getline(in, line); ++i) out << line << "\n";
    out.close();
    // Identity normalization and byte fallback make decode(encode(x)) == x for any text;
    // <|sep|> is a user-defined symbol, which SentencePiece recognizes inside text.
    const auto status = sentencepiece::SentencePieceTrainer::Train(
        "--input=" + corpus.string() + " --model_prefix=" + (*dir_ / "tokenizer").string() +
        " --vocab_size=600 --model_type=bpe --byte_fallback=true --character_coverage=1.0"
        " --normalization_rule_name=identity --remove_extra_whitespaces=false"
        " --user_defined_symbols=<|sep|> --minloglevel=2");
    ASSERT_TRUE(status.ok()) << status.ToString();
    processor_ = new sentencepiece::SentencePieceProcessor();
    ASSERT_TRUE(processor_->Load((*dir_ / "tokenizer.model").string()).ok());
  }
  static void TearDownTestSuite() {
    delete processor_;
    fs::remove_all(*dir_);
    delete dir_;
  }
  static fs::path* dir_;
  static sentencepiece::SentencePieceProcessor* processor_;
};
fs::path* SentencePieceTest::dir_ = nullptr;
sentencepiece::SentencePieceProcessor* SentencePieceTest::processor_ = nullptr;

const std::vector<std::string> kTexts = {
    "Homarus gammarus , known as the European lobster",
    "Hello world!  Two  spaces and\ttabs\nnewlines.",
    "Ünïcödé text, 中文, 日本語, emoji 😀 all via byte fallback",
    "numbers 1234567890 and <|sep|> a user symbol<|sep|>inside",
    "",
    " leading and trailing ",
};

}  // namespace

TEST_F(SentencePieceTest, MatchesProcessorAndRoundTrips) {
  auto tok = rt::load_tokenizer(*dir_ / "tokenizer.model");
  for (const auto& s : kTexts) {
    std::vector<int> want;
    ASSERT_TRUE(processor_->Encode(s, &want).ok());
    const auto got = tok->encode(s);
    EXPECT_EQ(std::vector<int>(got.begin(), got.end()), want) << s;
    EXPECT_EQ(tok->decode(got), s);
  }
  // The user-defined symbol is one token.
  const auto sep = tok->token_to_id("<|sep|>");
  ASSERT_TRUE(sep.has_value());
  const auto ids = tok->encode("a<|sep|>b");
  EXPECT_NE(std::find(ids.begin(), ids.end(), *sep), ids.end());
}

TEST_F(SentencePieceTest, DirectoryLoadAndVocab) {
  auto tok = rt::load_tokenizer(*dir_);  // no tokenizer.json there: tokenizer.model is used
  EXPECT_EQ(tok->vocab_size(), 600);
  EXPECT_EQ(tok->vocab_size(), processor_->GetPieceSize());
  EXPECT_EQ(tok->eos_id(), processor_->eos_id());
  EXPECT_EQ(tok->token_to_id("</s>"), processor_->eos_id());
  EXPECT_EQ(tok->token_to_id("no such piece here"), std::nullopt);
  EXPECT_EQ(tok->token_to_id("<unk>"), processor_->unk_id());
}

TEST_F(SentencePieceTest, InvalidUtf8AndDecodeRange) {
  auto tok = rt::load_tokenizer(*dir_ / "tokenizer.model");
  EXPECT_EQ(tok->encode("a\xff" "b"), tok->encode("a\xEF\xBF\xBD" "b"));
  EXPECT_THROW(tok->decode(std::vector<int32_t>{600}), rt::Error);
  EXPECT_THROW(tok->decode(std::vector<int32_t>{-1}), rt::Error);
}

TEST_F(SentencePieceTest, CorruptModelIsAClearError) {
  const fs::path bad = *dir_ / "broken.model";
  std::ofstream(bad) << "this is not a protobuf";
  try {
    rt::load_tokenizer(bad);
    FAIL() << "expected rt::Error";
  } catch (const rt::Error& e) {
    EXPECT_NE(std::string(e.what()).find(bad.string()), std::string::npos) << e.what();
  }
}
