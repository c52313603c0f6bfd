// `runtime eval`'s bad inputs: each a one-line error naming what is wrong (flag, file, line, field)
// and a non-zero exit, never a crash; nothing is written for a run refused before it starts.
#include <gtest/gtest.h>

#include <sys/wait.h>

#include <array>
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <string>
#include <vector>

namespace {

namespace fs = std::filesystem;
const fs::path kEval = fs::path(RT_SOURCE_DIR) / "tests" / "fixtures" / "eval";
const std::string kTokenizer = (fs::path(RT_SHARED_DATA_DIR) / "qwen2.5-tokenizer").string();

struct Result {
  int code = -1;
  bool signaled = false;
  std::string out;
};

Result eval(const std::string& args) {
  const std::string cmd = std::string(RT_BIN_DIR) + "/runtime eval --model '" + (kEval / "model").string() +
                          "' --tokenizer '" + kTokenizer + "' " + args + " 2>&1";
  Result r;
  FILE* p = ::popen(cmd.c_str(), "r");
  std::array<char, 4096> buf{};
  for (size_t n; p && (n = std::fread(buf.data(), 1, buf.size(), p)) > 0;) r.out.append(buf.data(), n);
  const int st = p ? ::pclose(p) : -1;
  r.signaled = WIFSIGNALED(st);
  r.code = WIFEXITED(st) ? WEXITSTATUS(st) : -1;
  return r;
}

void expect_error(const Result& r, const std::vector<std::string>& parts) {
  EXPECT_FALSE(r.signaled) << r.out;
  EXPECT_NE(r.code, 0) << r.out;
  EXPECT_NE(r.out.find("error: "), std::string::npos) << r.out;
  for (const auto& p : parts) EXPECT_NE(r.out.find(p), std::string::npos) << "missing '" << p << "' in:\n" << r.out;
}

TEST(EvalCli, BadInputsAreClearErrors) {
  const fs::path tmp = fs::temp_directory_path() / ("rt_eval_cli_" + std::to_string(::getpid()));
  fs::create_directories(tmp);
  const std::string out = " --output '" + (tmp / "out").string() + "'";
  const std::string piqa = (kEval / "data" / "piqa.jsonl").string();
  expect_error(eval("--tasks piqa,mmlu --data piqa=" + piqa + out), {"unknown task 'mmlu'", "hellaswag"});
  expect_error(eval("--tasks piqa" + out + " --data hellaswag=" + piqa), {"--tasks piqa: no data"});
  expect_error(eval("--tasks piqa --data piqa=" + piqa + " --data arc_easy=" + piqa + out),
               {"--data arc_easy=", "not in --tasks"});
  expect_error(eval("--tasks piqa --data piqa" + out), {"--data 'piqa'", "TASK=FILE"});
  expect_error(eval("--tasks piqa,piqa --data piqa=" + piqa + out), {"--tasks: 'piqa' is listed twice"});
  expect_error(eval("--tasks piqa --data piqa=" + piqa + " --data piqa=" + piqa + out), {"--data piqa: given twice"});
  expect_error(eval("--tasks piqa --data piqa=" + (tmp / "none.jsonl").string() + out),
               {"--data piqa ", "none.jsonl", "No such file"});
  // A bad row: file, line and field, named by the flag.
  std::ofstream(tmp / "bad.jsonl") << "{\"goal\": \"g\", \"sol1\": \"a\", \"sol2\": \"b\", \"label\": 0}\n"
                                   << "{\"goal\": \"g\", \"sol1\": \"a\", \"label\": 1}\n";
  expect_error(eval("--tasks piqa --data piqa=" + (tmp / "bad.jsonl").string() + out),
               {"--data piqa=", "bad.jsonl:2", "missing field 'sol2'"});
  std::ofstream(tmp / "empty.jsonl") << "";
  expect_error(eval("--tasks piqa --data piqa=" + (tmp / "empty.jsonl").string() + out), {"no documents"});
  // A choice longer than the maximum length (lm-eval asserts on it too): task, document and choice.
  std::ofstream(tmp / "long.jsonl") << "{\"goal\": \"g\", \"sol1\": \"a\", \"sol2\": \"b\", \"label\": 0}\n"
                                    << "{\"goal\": \"g\", \"sol1\": \"one two three four five six seven eight nine "
                                       "ten eleven twelve\", \"sol2\": \"b\", \"label\": 1}\n";
  expect_error(eval("--tasks piqa --seq 8 --data piqa=" + (tmp / "long.jsonl").string() + out),
               {"piqa: document 1, choice 0: the continuation is 12 tokens, more than the maximum length 8"});
  // niah: a length too short for the prompt, or past the model's positions; a bad depth.
  const std::string hay = (fs::path(RT_SHARED_DATA_DIR) / "wikitext-2" / "test.txt").string();
  expect_error(eval("--tasks niah --data niah=" + hay + " --niah-lengths 40" + out), {"cannot hold"});
  expect_error(eval("--tasks niah --data niah=" + hay + " --niah-lengths 100000" + out), {"max_position_embeddings"});
  expect_error(eval("--tasks niah --data niah=" + hay + " --niah-depths 120" + out), {"--niah-depths", "120"});
  // ppl: a stride longer than the window.
  expect_error(eval("--tasks ppl --data ppl=" + (kEval / "data" / "ppl.txt").string() + " --seq 32 --stride 64" + out),
               {"--stride"});
  // --output that is a file.
  std::ofstream(tmp / "a_file") << "x";
  expect_error(eval("--tasks piqa --data piqa=" + piqa + " --output '" + (tmp / "a_file").string() + "'"),
               {"--output", "not a directory"});
  fs::remove_all(tmp);
}

}  // namespace
