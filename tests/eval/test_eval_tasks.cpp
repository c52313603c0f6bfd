// The pieces of `runtime eval` that must equal lm-evaluation-harness 0.4.13 character for
// character: Python string semantics, HellaSwag's preprocessing, the task documents (and their
// errors), WikiText's detokenizer and counts, the rolling and fixed-stride windows, and the metrics.
#include <gtest/gtest.h>

#include <filesystem>
#include <fstream>
#include <functional>
#include <string>

#include "eval/eval_metrics.h"
#include "eval/eval_tasks.h"
#include "eval/loglikelihood.h"
#include "eval/python_text.h"
#include "test_util.h"
#include "rt/sdk/error.h"

namespace {

namespace fs = std::filesystem;
using namespace rt::eval;

using rt::test::error_of;

fs::path write_tmp(const std::string& name, const std::string& text) {
  const fs::path p = fs::temp_directory_path() / ("rt_eval_" + std::to_string(::getpid()) + "_" + name);
  std::ofstream(p, std::ios::binary) << text;
  return p;
}

TEST(PythonText, StripCapitalizeLen) {
  EXPECT_EQ(py_strip("  \t a b \n"), "a b");
  EXPECT_EQ(py_strip(" \xc2\xa0x\xe3\x80\x80"), "x");  // NBSP and ideographic space are whitespace
  EXPECT_EQ(py_rstrip_bytes("Answer: \n"), 2u);
  EXPECT_EQ(py_rstrip_bytes("   "), 3u);
  EXPECT_EQ(py_capitalize("fILL IT With Water"), "Fill it with water");  // the rest is lower-cased
  EXPECT_EQ(py_capitalize(""), "");
  EXPECT_EQ(py_capitalize("\xc3\xa9T\xc3\x89"), "\xc3\x89t\xc3\xa9");  // éTÉ -> Été
  EXPECT_EQ(py_capitalize("\xc3\x9f" "a"), "Ssa");                     // ß title-cases to Ss (full mapping)
  EXPECT_EQ(py_len("h\xc3\xa9llo"), 5);
  EXPECT_EQ(py_split_ws_count(" a  b\nc "), 5);  // ['', 'a', 'b', 'c', '']
  EXPECT_EQ(py_split_ws_count("abc"), 1);
  EXPECT_EQ(py_re_sub("\\[.*?\\]", "", "a [x] b [y]"), "a  b ");
  EXPECT_EQ(py_re_sub("\\(\\s*([^\\)]*?)\\s*\\)", "(\\1)", "f ( x y ) $"), "f (x y) $");
  // capitalize() lower-cases the rest in context: a final capital sigma becomes the final form.
  EXPECT_EQ(py_capitalize("\xce\x8c\xce\xa3 x"), "\xce\x8c\xcf\x82 x");          // ΌΣ x -> Ός x
  EXPECT_EQ(py_capitalize("\xce\x91\xce\xa3\xce\x91"), "\xce\x91\xcf\x83\xce\xb1");  // ΑΣΑ -> Ασα
  EXPECT_EQ(py_capitalize("\xce\xa3\xce\xa3"), "\xce\xa3\xcf\x82");              // ΣΣ -> Σς
  EXPECT_EQ(py_capitalize("a.\xce\xa3"), "A.\xcf\x82");  // '.' is case-ignorable: still final
  EXPECT_EQ(py_capitalize("\xc4\xb0X"), "\xc4\xb0x");     // İX -> İx (the first maps alone)
}

// \s in a pattern is Python's str.isspace(), code point by code point (PCRE2's differs).
TEST(PythonText, RegexSpaceIsPythonsIsspace) {
  auto utf8 = [](char32_t c) {
    std::string o;
    if (c < 0x80) {
      o += static_cast<char>(c);
    } else if (c < 0x800) {
      o += static_cast<char>(0xC0 | (c >> 6));
      o += static_cast<char>(0x80 | (c & 0x3F));
    } else {
      o += static_cast<char>(0xE0 | (c >> 12));
      o += static_cast<char>(0x80 | ((c >> 6) & 0x3F));
      o += static_cast<char>(0x80 | (c & 0x3F));
    }
    return o;
  };
  for (char32_t c = 1; c < 0x3100; ++c) {
    const std::string ch = utf8(c);
    const bool py = py_isspace(c);
    EXPECT_EQ(py_re_sub("\\s", "", "a" + ch + "b"), py ? "ab" : "a" + ch + "b") << "U+" << std::hex << static_cast<uint32_t>(c);
    EXPECT_EQ(py_re_sub("[\\s]", "", ch), py ? "" : ch) << "U+" << std::hex << static_cast<uint32_t>(c);
    EXPECT_EQ(py_re_sub("\\S", "", ch), py ? ch : "") << "U+" << std::hex << static_cast<uint32_t>(c);
  }
  EXPECT_EQ(py_re_sub("\\\\s", "", "a\\sb"), "ab");  // an escaped backslash, then a literal s
}

TEST(HellaSwag, Preprocess) {
  // strip, " [title]" -> ". ", drop [...], one pass of "  " -> " " (three spaces leave two).
  EXPECT_EQ(hellaswag_preprocess("  How to clean [title] Get a bucket.  "), "How to clean. Get a bucket.");
  EXPECT_EQ(hellaswag_preprocess("[header] a [step] b"), " a b");
  EXPECT_EQ(hellaswag_preprocess("a   b"), "a  b");
  const fs::path f = write_tmp(
      "hs.jsonl",
      R"({"activity_label": "Home", "ctx_a": "[header] Clean [title] Get  a bucket.", "ctx_b": "fILL IT", "endings": ["a [step] b", "c", "d", "e"], "label": "2"})"
      "\n"
      R"({"activity_label": "X", "ctx_a": "A.", "ctx_b": "", "endings": ["e1", "e2"], "label": "0"})"
      "\n");
  const auto docs = load_choice_docs("hellaswag", f, -1);
  ASSERT_EQ(docs.size(), 2u);
  EXPECT_EQ(docs[0].context, "Home: Clean. Get a bucket. Fill it");
  EXPECT_EQ(docs[0].choices[0], "a b");
  EXPECT_EQ(docs[0].target, 2);
  EXPECT_EQ(docs[1].context, "X: A.");  // empty ctx_b: the trailing space is stripped
  EXPECT_EQ(load_choice_docs("hellaswag", f, 1).size(), 1u);  // --limit
  fs::remove(f);
}

// A file that is one JSON array of rows, as Hugging Face datasets' json loader reads it too.
TEST(Tasks, JsonArrayFile) {
  const fs::path f = write_tmp(
      "piqa.json", " [\n {\"goal\": \"g1\", \"sol1\": \"a\", \"sol2\": \"b\", \"label\": 1},\n"
                   " {\"goal\": \"g2\", \"sol1\": \"c\", \"sol2\": \"d\", \"label\": 0}\n]\n");
  const auto docs = load_choice_docs("piqa", f, -1);
  ASSERT_EQ(docs.size(), 2u);
  EXPECT_EQ(docs[0].context, "Question: g1\nAnswer:");
  EXPECT_EQ(docs[0].target, 1);
  EXPECT_EQ(docs[1].choices[1], "d");
  EXPECT_EQ(load_choice_docs("piqa", f, 1).size(), 1u);  // --limit
  fs::remove(f);
}

TEST(Arc, DigitLabelsAndChoiceCounts) {
  const fs::path f = write_tmp(
      "arc.jsonl",
      R"({"question": "Q1?", "choices": {"text": ["a", "b", "c"], "label": ["1", "2", "3"]}, "answerKey": "3"})"
      "\n"
      R"({"question": "Q2?", "choices": {"text": ["a", "b", "c", "d", "e"], "label": ["A", "B", "C", "D", "E"]}, "answerKey": "E"})"
      "\n");
  const auto docs = load_choice_docs("arc_challenge", f, -1);
  ASSERT_EQ(docs.size(), 2u);
  EXPECT_EQ(docs[0].context, "Question: Q1?\nAnswer:");
  EXPECT_EQ(docs[0].choices.size(), 3u);
  EXPECT_EQ(docs[0].target, 2);
  EXPECT_EQ(docs[1].choices.size(), 5u);
  EXPECT_EQ(docs[1].target, 4);
  fs::remove(f);
}

TEST(Tasks, BadInputsNameFileLineAndField) {
  struct Case {
    const char* task;
    const char* text;
    std::vector<std::string> expect;
  } cases[] = {
      {"piqa", "{\"goal\": \"g\", \"sol1\": \"a\", \"label\": 0}\n", {":1", "missing field 'sol2'"}},
      {"piqa", "{\"goal\": \"g\", \"sol1\": \"a\", \"sol2\": \"b\", \"label\": 2}\n", {":1", "'label' is 2", "2 choices"}},
      {"hellaswag", "\n{\"activity_label\": \"a\", \"ctx_a\": \"b\", \"ctx_b\": \"c\", \"endings\": [\"x\"], \"label\": \"one\"}\n",
       {":2", "'label'", "integer"}},
      {"arc_easy", "{\"question\": \"q\", \"choices\": {\"text\": [\"a\"], \"label\": [\"A\"]}, \"answerKey\": \"B\"}\n",
       {"answerKey \"B\""}},
      {"piqa", "{\"goal\": \"g\", \"sol1\": \"a\", \"sol2\": \"b\", \"label\": \"0\"}\n",
       {":1", "'label' must be an integer label (0 to 1), found the string \"0\""}},
      {"piqa", "", {"no documents"}},
      {"piqa", "[{\"goal\": \"g\", \"sol1\": \"a\", \"sol2\": \"b\", \"label\": 0}, 3]", {": row 1", "expected a JSON object"}},
      {"piqa", "[{\"goal\": \"g\",", {"not a JSON array of rows"}},
      {"piqa", "[]", {"no documents"}},
      {"piqa", "not json\n", {":1", "not a JSON object"}},
      {"piqa", "{\"goal\": \"\xff\"}\n", {":1", "invalid UTF-8"}},
  };
  int i = 0;
  for (const Case& c : cases) {
    const fs::path f = write_tmp("bad" + std::to_string(i++) + ".jsonl", c.text);
    const std::string err = error_of([&] { (void)load_choice_docs(c.task, f, -1); });
    EXPECT_NE(err.find(f.string()), std::string::npos) << err;
    for (const auto& e : c.expect) EXPECT_NE(err.find(e), std::string::npos) << "want '" << e << "' in: " << err;
    fs::remove(f);
  }
}

TEST(WikiText, DetokenizerAndRawCounts) {
  EXPECT_EQ(wikitext_detokenize(" = = Gameplay = = \n 3 @-@ 4 , a ( b ) it 's \" q \" . "),
            " == Gameplay ==\n3-4, a (b) it's \"q\". ");  // a leading space stays (only "\n " goes)
  const fs::path f = write_tmp("wiki.jsonl", R"({"page": " = T = \n a @-@ b . "})" "\n");
  const auto docs = load_wikitext_docs(f, -1);
  ASSERT_EQ(docs.size(), 1u);
  EXPECT_EQ(docs[0].words, 9);  // re.split(r"\s+") of the raw page: ['', '=', 'T', '=', 'a', '@-@', 'b', '.', '']
  EXPECT_EQ(docs[0].bytes, 19);
  fs::remove(f);
}

TEST(Windows, RollingAsTheHarness) {
  const std::vector<int32_t> t = {10, 11, 12, 13, 14, 15, 16, 17, 18, 19};
  const auto w = rolling_windows(t, 0, 4);
  // First window: prefix + t[0:3] predicting t[0:4]; then disjoint windows of up to 4 predicted
  // tokens, each with the tokens before them (up to max_length + 1 in all).
  ASSERT_EQ(w.size(), 3u);
  EXPECT_EQ(w[0].context, (std::vector<int32_t>{0}));
  EXPECT_EQ(w[0].continuation, (std::vector<int32_t>{10, 11, 12, 13}));
  EXPECT_EQ(w[1].context, (std::vector<int32_t>{13}));
  EXPECT_EQ(w[1].continuation, (std::vector<int32_t>{14, 15, 16, 17}));
  // t[end - 5 : end - 1] made disjoint from the 2 predicted tokens: t[5:8].
  EXPECT_EQ(w[2].context, (std::vector<int32_t>{15, 16, 17}));
  EXPECT_EQ(w[2].continuation, (std::vector<int32_t>{18, 19}));
  EXPECT_TRUE(rolling_windows({}, 0, 4).empty());
}

TEST(Windows, PackedRowsCountASharedPrefixOnce) {
  // Two choices of one document: a 10-token context, then 3 and 2 continuation tokens.
  const TokenPair a{{1, 2, 3, 4, 5, 6, 7, 8, 9, 10}, {11, 12, 13}}, b{{1, 2, 3, 4, 5, 6, 7, 8, 9, 10}, {21, 22}};
  EXPECT_EQ(model_input_tokens(a, 100), 12);  // the last token is only predicted
  EXPECT_EQ(packed_rows(b, nullptr, 100, true), 11);
  EXPECT_EQ(packed_rows(b, &a, 100, false), 11);
  EXPECT_EQ(packed_rows(b, &a, 100, true), 1);  // the 10 context tokens run once, with a
  // Shorter than the fewest tokens a forward shares: counted whole.
  const TokenPair c{{1, 2, 3}, {4, 5}}, d{{1, 2, 3}, {6, 7}};
  EXPECT_EQ(packed_rows(d, &c, 100, true), 4);
  // Truncation to the last max_length + 1 tokens: the inputs are compared as the model sees them.
  // a's input at max_length 8: tokens 5..12; b's: 4..10 + 21 -> nothing shared at the start.
  EXPECT_EQ(packed_rows(b, &a, 8, true), 8);
  // An empty continuation adds no rows.
  EXPECT_EQ(packed_rows(TokenPair{{1, 2}, {}}, &a, 100, true), 0);
}

TEST(Windows, TokenPerplexityStrides) {
  // stride = seq: each window's first token goes unscored.
  auto w = ppl_windows(10, 4, 4);
  ASSERT_EQ(w.size(), 3u);
  EXPECT_EQ(w[0].scored, 3);
  EXPECT_EQ(w[1].scored, 3);
  EXPECT_EQ(w[2].begin, 8);
  EXPECT_EQ(w[2].scored, 1);
  // stride < seq: every token after the first scored exactly once.
  w = ppl_windows(10, 4, 2);
  int64_t scored = 0;
  for (const auto& x : w) scored += x.scored;
  EXPECT_EQ(scored, 9);
  EXPECT_NE(error_of([] { (void)ppl_windows(10, 4, 5); }).find("--stride"), std::string::npos);
}

TEST(Metrics, ArgmaxTiesAndStderr) {
  EXPECT_EQ(argmax_first({1.0, 3.0, 3.0}), 1);
  const MeanStderr m = mean_stderr({1, 0, 1, 1});
  EXPECT_DOUBLE_EQ(m.mean, 0.75);
  ASSERT_TRUE(m.stderr_.has_value());
  EXPECT_NEAR(*m.stderr_, 0.25, 1e-12);  // sample std 0.5 / sqrt(4)
  EXPECT_FALSE(mean_stderr({1}).stderr_.has_value());
}

}  // namespace
