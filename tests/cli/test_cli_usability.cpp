// Issue 11, "Messages" and "Usability", through the `runtime` binary and the tools:
//   - a bad file path names its flag ("--json /no/dir/x.json: cannot create file: ..."), and is
//     refused before the command does its work;
//   - a missing matplotlib in tools/plot_*.py is one line saying how to install it, exit code 1;
//   - --window and --set ...window with different values is an error;
//   - `runtime sparsity` runs enough sequences by default and names the model as given;
//   - table columns fit long plugin names; status lines fit the terminal;
//   - `runtime profile` on the CPU prints no column of zero FLOP rates.
#include <gtest/gtest.h>

#include <algorithm>
#include <cstdlib>
#include <sstream>

#include "cli_test_util.h"
#include "common/text_table.h"

namespace {

using namespace rt::test;

const std::string kModel = "gqa_untied_f32";

fs::path l2a_model() { return fs::path(RT_FIXTURES_DIR) / "l2a" / "paper"; }
fs::path l2a_tokens() { return fs::path(RT_FIXTURES_DIR) / "l2a" / "tokens.bin"; }  // 4096 uint32 ids

std::vector<std::string> lines_of(const std::string& text) {
  std::vector<std::string> out;
  std::istringstream in(text);
  for (std::string l; std::getline(in, l);) out.push_back(l);
  return out;
}

// The path is named with its flag, and the message says what failed, in one line.
::testing::AssertionResult names_flag(const RunResult& r, const std::string& flag, const std::string& path,
                                      const std::string& what) {
  auto ok = is_clean_error(r, {flag + " " + path + ": " + what});
  if (!ok) return ok;
  if (std::count(r.err.begin(), r.err.end(), '\n') != 1) return ::testing::AssertionFailure() << "not one line: " << r.err;
  if (r.err.find(".tmp") != std::string::npos)
    return ::testing::AssertionFailure() << "names the temporary file: " << r.err;
  return ::testing::AssertionSuccess();
}

// ---- 1. filesystem errors name the flag ----------------------------------------------------------

TEST(FlagPaths, OutputsInAMissingDirectory) {
  ASSERT_TRUE(runtime_available());
  TempDir tmp("rt_usability");
  const std::string model = fixture_model(kModel).string();
  const std::string bad = (tmp / "no_such_dir" / "x.out").string();
  const std::string what = "cannot create file: No such file or directory";
  EXPECT_TRUE(names_flag(run_runtime({"logits", "--model", model, "--ids", "1,2", "--out", bad}), "--out", bad, what));
  for (const char* flag : {"--json", "--csv"}) {
    SCOPED_TRACE(flag);
    const RunResult p = run_runtime({"profile", "--model", model, "--init", "checkpoint", "--attention", "full_causal",
                                     "--seq", "8", "--repeats", "1", "--kernels-only", flag, bad});
    EXPECT_TRUE(names_flag(p, flag, bad, what));
    EXPECT_TRUE(p.out.empty()) << "measured before checking the path:\n" << p.out;
    const RunResult s = run_runtime({"sparsity", "--model", l2a_model().string(), "--data", l2a_tokens().string(),
                                     "--seq", "8", "--max-sequences", "1", flag, bad});
    EXPECT_TRUE(names_flag(s, flag, bad, what));
    EXPECT_TRUE(s.out.empty()) << "ran the model before checking the path:\n" << s.out;
  }
  const RunResult png = run_runtime({"sparsity", "--model", l2a_model().string(), "--data", l2a_tokens().string(),
                                     "--seq", "8", "--max-sequences", "1", "--json", (tmp / "s.json").string(),
                                     "--png", bad});
  EXPECT_TRUE(names_flag(png, "--png", bad, what));
  // A directory where a file should go.
  EXPECT_TRUE(names_flag(run_runtime({"logits", "--model", model, "--ids", "1,2", "--out", tmp.path().string()}),
                         "--out", tmp.path().string(), "is a directory"));
}

TEST(FlagPaths, MissingInputs) {
  ASSERT_TRUE(runtime_available());
  TempDir tmp("rt_usability");
  const std::string missing = (tmp / "missing").string();
  const std::string what = "cannot open: No such file or directory";
  EXPECT_TRUE(names_flag(run_runtime({"sparsity", "--model", l2a_model().string(), "--data", missing + ".bin",
                                      "--seq", "8"}),
                         "--data", missing + ".bin", what));
  write_text(tmp / "text.txt", "some text to tokenize");
  EXPECT_TRUE(names_flag(run_runtime({"sparsity", "--model", l2a_model().string(), "--data",
                                      (tmp / "text.txt").string(), "--tokenizer", missing, "--seq", "8"}),
                         "--tokenizer", missing, what));
  EXPECT_TRUE(names_flag(run_runtime({"tokenize", "--tokenizer", missing}), "--tokenizer", missing, what));
  EXPECT_TRUE(names_flag(run_runtime({"detokenize", "--tokenizer", missing}), "--tokenizer", missing, what));
  EXPECT_TRUE(names_flag(run_runtime({"generate", "--model", fixture_model(kModel).string(), "--prompt", "hi",
                                      "--tokenizer", missing}),
                         "--tokenizer", missing, what));
  // runtime train: its inputs, and a --out that is a file, before any work.
  EXPECT_TRUE(names_flag(run_runtime({"train", "--model", fixture_model(kModel).string(), "--data", missing + ".bin",
                                      "--steps", "1", "--out", (tmp / "run").string()}),
                         "--data", missing + ".bin", what));
  EXPECT_TRUE(names_flag(run_runtime({"train", "--model", fixture_model(kModel).string(), "--data",
                                      l2a_tokens().string(), "--val-data", missing + ".bin", "--steps", "1", "--out",
                                      (tmp / "run").string()}),
                         "--val-data", missing + ".bin", what));
  write_text(tmp / "a_file", "x");
  const RunResult out_file = run_runtime({"train", "--model", fixture_model(kModel).string(), "--data",
                                          l2a_tokens().string(), "--steps", "1", "--out", (tmp / "a_file").string()});
  EXPECT_TRUE(is_clean_error(out_file, {"--out " + (tmp / "a_file").string(), "not a directory"}))
      << out_file.describe();
  // A tokenizer that exists but is not one: the loader's message, named by the flag.
  write_text(tmp / "tokenizer.json", "{ not json");
  const RunResult bad = run_runtime({"tokenize", "--tokenizer", (tmp / "tokenizer.json").string()});
  EXPECT_TRUE(is_clean_error(bad, {"--tokenizer " + (tmp / "tokenizer.json").string() + ": "})) << bad.describe();
}

// ---- 2. a missing matplotlib --------------------------------------------------------------------

TEST(PlotTools, MissingMatplotlibIsOneLine) {
  TempDir tmp("rt_usability");
  // A matplotlib package that cannot be imported, first on the path.
  fs::create_directories(tmp / "shim" / "matplotlib");
  write_text(tmp / "shim" / "matplotlib" / "__init__.py", "raise ImportError(\"No module named 'matplotlib'\")\n");
  const char* old = std::getenv("PYTHONPATH");
  const std::string saved = old ? old : "";
  setenv("PYTHONPATH", (tmp / "shim").c_str(), 1);
  write_text(tmp / "in.json", "{}");
  for (const char* script : {"plot_profile.py", "plot_sparsity.py", "plot_l2a_speedup.py", "plot_eval.py", "plot_niah.py"}) {
    SCOPED_TRACE(script);
    const RunResult r = run_process({"/usr/bin/env", "python3", (fs::path(RT_SOURCE_DIR) / "tools" / script).string(),
                                     (tmp / "in.json").string(), (tmp / "out.png").string()},
                                    60);
    EXPECT_TRUE(r.exited && r.exit_code == 1) << r.describe();
    EXPECT_EQ(std::count(r.err.begin(), r.err.end(), '\n'), 1) << r.err;
    EXPECT_EQ(r.err.find("Traceback"), std::string::npos) << r.err;
    EXPECT_NE(r.err.find("matplotlib"), std::string::npos) << r.err;
    EXPECT_NE(r.err.find("pip install matplotlib"), std::string::npos) << r.err;
    EXPECT_NE(r.err.find("bash tools/setup.sh --python"), std::string::npos) << r.err;
  }
  // Through `runtime sparsity --png`: the script's line, then one error naming --png.
  if (runtime_available()) {
    const RunResult s = run_runtime({"sparsity", "--model", l2a_model().string(), "--data", l2a_tokens().string(),
                                     "--seq", "8", "--max-sequences", "1", "--json", (tmp / "s.json").string(), "--png",
                                     (tmp / "s.png").string()});
    EXPECT_FALSE(s.ok()) << s.describe();
    EXPECT_NE(s.err.find("pip install matplotlib"), std::string::npos) << s.err;
    EXPECT_NE(s.err.find("error: --png " + (tmp / "s.png").string()), std::string::npos) << s.err;
    EXPECT_EQ(s.err.find("Traceback"), std::string::npos) << s.err;
  }
  if (old) setenv("PYTHONPATH", saved.c_str(), 1);
  else unsetenv("PYTHONPATH");
}

// ---- 3. --window against --set window -----------------------------------------------------------

TEST(WindowOptions, DisagreeingWindowsAreAnError) {
  ASSERT_TRUE(runtime_available());
  TempDir tmp("rt_usability");
  const std::string model = fixture_model(kModel).string();
  const std::string out = (tmp / "x.npy").string();
  for (const std::string set : {"window=8", "swa.window=8", "attention.window=8"}) {
    SCOPED_TRACE(set);
    const RunResult r = run_runtime({"logits", "--model", model, "--ids", "1,2,3", "--out", out, "--attention", "swa",
                                     "--window", "4", "--set", set});
    EXPECT_TRUE(is_clean_error(r, {"--window 4", "--set " + set})) << r.describe();
    EXPECT_FALSE(fs::exists(out));
  }
  // Train too (--set attention.window is its config syntax); refused before any work.
  const RunResult t = run_runtime({"train", "--model", model, "--attention", "swa", "--window", "4", "--set",
                                   "attention.window=8", "--data", l2a_tokens().string(), "--steps", "1", "--out",
                                   (tmp / "run").string()});
  EXPECT_TRUE(is_clean_error(t, {"--window 4", "--set attention.window=8"})) << t.describe();
  EXPECT_FALSE(fs::exists(tmp / "run" / "metrics.jsonl"));
  // --window against the config file's [attention] window.
  write_text(tmp / "w8.toml", "[train]\nseq_len = 16\nbatch_size = 1\n[attention]\nwindow = 8\n");
  const RunResult c = run_runtime({"train", "--model", model, "--attention", "swa", "--window", "4", "--config",
                                   (tmp / "w8.toml").string(), "--data", l2a_tokens().string(), "--steps", "1",
                                   "--out", (tmp / "run").string()});
  EXPECT_TRUE(is_clean_error(c, {"--window 4", "window = 8", "w8.toml"})) << c.describe();
  EXPECT_FALSE(fs::exists(tmp / "run" / "metrics.jsonl"));
  // The same window twice is fine.
  const RunResult same = run_runtime({"logits", "--model", model, "--ids", "1,2,3", "--out", out, "--attention", "swa",
                                      "--window", "4", "--set", "swa.window=4"});
  EXPECT_TRUE(same.ok()) << same.describe();
}

// ---- 4. runtime sparsity: default sample size, model name ---------------------------------------

TEST(Sparsity, DefaultSampleAndModelName) {
  ASSERT_TRUE(runtime_available());
  TempDir tmp("rt_usability");
  const std::string given = l2a_model().string();
  // 4096 tokens = 64 sequences of 64: fewer than the default asks for, so all of them run.
  const RunResult r = run_runtime({"sparsity", "--model", given, "--data", l2a_tokens().string(), "--seq", "64",
                                   "--json", (tmp / "s.json").string()});
  ASSERT_TRUE(r.ok()) << r.describe();
  const nlohmann::json rep = read_json(tmp / "s.json");
  EXPECT_EQ(rep["sequences"], 64) << rep.dump();
  EXPECT_EQ(rep["model"], given) << "the model as the user named it";
  EXPECT_EQ(fs::path(rep["model_dir"].get<std::string>()).filename(), "paper");
  ASSERT_TRUE(rep["sparsity_stderr"].is_number()) << rep.dump();
  EXPECT_GE(rep["sparsity_stderr"].get<double>(), 0.0);
  EXPECT_NE(r.out.find("standard error"), std::string::npos) << r.out;
  // An explicit --max-sequences still wins.
  const RunResult few = run_runtime({"sparsity", "--model", given, "--data", l2a_tokens().string(), "--seq", "64",
                                     "--max-sequences", "3", "--json", (tmp / "s3.json").string()});
  ASSERT_TRUE(few.ok()) << few.describe();
  EXPECT_EQ(read_json(tmp / "s3.json")["sequences"], 3);
  // A sequence longer than the data names --seq, not the trainer's train.seq_len.
  const RunResult longer = run_runtime({"sparsity", "--model", given, "--data", l2a_tokens().string(), "--seq", "8192"});
  EXPECT_TRUE(is_clean_error(longer, {"--seq 8192", "4096 tokens"})) << longer.describe();
  EXPECT_EQ(longer.err.find("train.seq_len"), std::string::npos) << longer.err;
  // --json -: standard output is the JSON alone (the table goes to stderr).
  const RunResult to_stdout = run_runtime({"sparsity", "--model", given, "--data", l2a_tokens().string(), "--seq",
                                           "64", "--max-sequences", "2", "--json", "-"});
  ASSERT_TRUE(to_stdout.ok()) << to_stdout.describe();
  EXPECT_EQ(nlohmann::json::parse(to_stdout.out)["sequences"], 2) << to_stdout.out;
  // --help explains the default.
  const RunResult help = run_runtime({"sparsity", "--help"});
  EXPECT_NE(help.out.find("standard error"), std::string::npos) << help.out;
  EXPECT_NE(help.out.find("32 sequences"), std::string::npos) << help.out;
}

// ---- 5. tables and status lines -----------------------------------------------------------------

// In the table that follows the line `title`, every row's cell in the column headed `header` ends
// where the header ends (right-aligned columns stay aligned).
void expect_column_aligned(const std::string& text, const std::string& title, const std::string& header) {
  const auto lines = lines_of(text);
  auto it = std::find(lines.begin(), lines.end(), title);
  ASSERT_NE(it, lines.end()) << text;
  ASSERT_NE(++it, lines.end());
  size_t at = it->find(" " + header + " ");
  if (at == std::string::npos && it->size() >= header.size() + 1 &&
      it->compare(it->size() - header.size() - 1, std::string::npos, " " + header) == 0)
    at = it->size() - header.size() - 1;  // the last column
  ASSERT_NE(at, std::string::npos) << *it;
  const size_t end = at + 1 + header.size();  // one past the header's last character
  int rows = 0;
  for (++it; it != lines.end() && !it->empty(); ++it, ++rows) {
    ASSERT_GE(it->size(), end) << *it;
    EXPECT_NE((*it)[end - 1], ' ') << "column '" << header << "' misaligned:\n" << text;
    EXPECT_TRUE(it->size() == end || (*it)[end] == ' ') << "column '" << header << "' misaligned:\n" << text;
  }
  EXPECT_GT(rows, 0) << text;
}

TEST(Tables, ColumnsFitLongPluginNames) {
  ASSERT_TRUE(runtime_available());
  const std::string name = "causal_attention_with_a_rather_long_plugin_name";
  const RunResult r = run_runtime({"profile", "--model", fixture_model(kModel).string(), "--init", "checkpoint",
                                   "--attention", "full_causal," + name, "--plugin", RT_TEST_LONG_NAME_PLUGIN, "--seq",
                                   "8,16", "--repeats", "1", "--decode-tokens", "1", "--train", "attention"});
  ASSERT_TRUE(r.ok()) << r.describe();
  ASSERT_NE(r.out.find(name), std::string::npos) << r.out;
  for (const char* col : {"seq", "sublayer ms", "prefill ms", "peak MiB"}) expect_column_aligned(r.out, "Backends", col);
  for (const char* col : {"seq", "step ms", "tok/s"})
    expect_column_aligned(r.out, "Training step (forward + backward of one sequence, no optimizer update)", col);
}

// `runtime plugins`: the version column starts at the same offset on every plugin's row, however
// long a name is.
TEST(Tables, PluginListFitsLongNames) {
  ASSERT_TRUE(runtime_available());
  const std::string name = "causal_attention_with_a_rather_long_plugin_name";
  const RunResult r = run_runtime({"plugins", "--plugin", RT_TEST_LONG_NAME_PLUGIN});
  ASSERT_TRUE(r.ok()) << r.describe();
  const auto lines = lines_of(r.out);
  ASSERT_FALSE(lines.empty());
  const size_t col = lines[0].find("version");
  ASSERT_NE(col, std::string::npos) << r.out;
  int rows = 0;
  for (const auto& l : lines) {
    if (l.rfind("full_causal ", 0) != 0 && l.rfind(name + " ", 0) != 0 && l.rfind("swa ", 0) != 0) continue;
    ASSERT_GT(l.size(), col) << l;
    EXPECT_EQ(l[col - 1], ' ') << l;
    EXPECT_NE(l[col], ' ') << "version column misaligned:\n" << r.out;
    ++rows;
  }
  EXPECT_EQ(rows, 3) << r.out;
}

TEST(Tables, TextTableWidthsAndTerminalFit) {
  rt::TextTable t({{"name", rt::TextTable::Align::Left}, {"n"}, {"opt", rt::TextTable::Align::Right, true}});
  t.add_row({"a_very_long_backend_name", "1", "-"});
  t.add_row({"b", "12345", ""});
  EXPECT_EQ(t.str(), "name                          n\n"
                     "a_very_long_backend_name      1\n"
                     "b                         12345\n");
  EXPECT_EQ(rt::fit_to_width("[profile] decode at T=4096", 12), "[profile]...");
  EXPECT_EQ(rt::fit_to_width("short", 12), "short");
  EXPECT_EQ(rt::fit_to_width("short", 0), "short");  // unknown width: no cut
  EXPECT_EQ(rt::fit_to_width("\xc3\xa9\xc3\xa9\xc3\xa9\xc3\xa9\xc3\xa9", 4), "\xc3\xa9...");  // code points, not bytes
}

// ---- 6. FLOP rates on the CPU -------------------------------------------------------------------

TEST(ProfileCpu, NoColumnOfZeroFlopRates) {
  ASSERT_TRUE(runtime_available());
  const RunResult r = run_runtime({"profile", "--model", fixture_model(kModel).string(), "--init", "checkpoint",
                                   "--attention", "full_causal,swa", "--window", "4", "--seq", "16,32", "--repeats",
                                   "1", "--decode-tokens", "1"});
  ASSERT_TRUE(r.ok()) << r.describe();
  const auto lines = lines_of(r.out);
  int rate_columns = 0;
  for (size_t i = 0; i + 1 < lines.size(); ++i) {
    const std::string& h = lines[i];
    if (h.find("FLOP/s") == std::string::npos) continue;
    // Each FLOP-rate column of this header: its cells are right-aligned under it, and not zero.
    for (size_t at = h.find("FLOP/s"); at != std::string::npos; at = h.find("FLOP/s", at + 1)) {
      ++rate_columns;
      const size_t end = at + 6;
      for (size_t j = i + 1; j < lines.size() && !lines[j].empty(); ++j) {
        const std::string& row = lines[j];
        ASSERT_GE(row.size(), end) << row;
        const size_t start = row.rfind(' ', end - 1) + 1;
        const std::string cell = row.substr(start, end - start);
        if (cell == "-") continue;
        EXPECT_GT(std::atof(cell.c_str()), 0.0) << "a zero FLOP rate ('" << cell << "'):\n" << r.out;
      }
    }
  }
  EXPECT_GT(rate_columns, 0) << "expected GFLOP/s columns on the CPU:\n" << r.out;
}

}  // namespace
