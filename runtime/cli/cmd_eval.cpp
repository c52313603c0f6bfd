// runtime eval: perplexity and multiple-choice accuracy scored exactly as lm-evaluation-harness
// 0.4.13 scores them (runtime/eval/), for several attention backends on the same weights.
#include <unistd.h>

#include <algorithm>
#include <chrono>
#include <cstdio>
#include <fstream>
#include <cmath>
#include <iomanip>
#include <iostream>
#include <map>
#include <sstream>

#include <nlohmann/json.hpp>

#include "cli/commands.h"
#include "cli/validators.h"
#include "cli/model_session.h"
#include "cli/plot_script.h"
#include "common/durable_file.h"
#include "common/flag_paths.h"
#include "common/text_table.h"
#include "dist/process_group.h"
#include "eval/eval_metrics.h"
#include "eval/eval_tasks.h"
#include "eval/loglikelihood.h"
#include "eval/niah.h"
#include "eval/python_text.h"
#include "eval/sharded.h"
#include "model/qwen2_model.h"
#include "tokenizer/tokenizer.h"

namespace rt {
namespace {

using json = nlohmann::ordered_json;

std::vector<std::string> split_list(const std::string& s, char sep) {
  std::vector<std::string> out;
  std::stringstream ss(s);
  for (std::string item; std::getline(ss, item, sep);)
    if (!item.empty()) out.push_back(item);
  return out;
}

// The ranks of a launched eval (runtime launch, torchrun, mpirun; null group: one process). Rank 0
// (the lead) shows progress and writes the outputs.
struct Ranks {
  dist::ProcessGroup* group = nullptr;
  bool lead() const { return !group || group->rank() == 0; }
  int size() const { return group ? group->size() : 1; }
};

// One line on stderr, redrawn: done/total, rate, ETA (of this rank's share: the lead's line).
class EvalProgress {
 public:
  EvalProgress(std::string what, int64_t total, const char* unit, const Ranks& ranks)
      : what_(std::move(what)), unit_(unit), total_(total), tty_(isatty(STDERR_FILENO)), on_(ranks.lead()),
        ranks_(ranks.size()) {}
  void update(int64_t done) {
    if (!on_) return;
    const double s = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0_).count();
    if (!tty_ && done < total_) return;
    const double rate = s > 0 ? done / s : 0;
    std::ostringstream os;
    os << "[eval] " << what_ << "  " << done << "/" << total_ << " " << unit_ << "  " << std::fixed
       << std::setprecision(1) << rate << " " << unit_ << "/s";
    if (ranks_ > 1) os << " on rank 0 of " << ranks_;
    if (rate > 0 && done < total_) os << "  ETA " << std::setprecision(0) << (total_ - done) / rate << "s";
    std::cerr << (tty_ ? "\r\033[K" : "") << fit_to_width(os.str(), tty_ ? terminal_columns(STDERR_FILENO) - 1 : 0)
              << (tty_ && done < total_ ? "" : "\n") << std::flush;
  }

 private:
  std::string what_;
  const char* unit_;
  int64_t total_;
  bool tty_, on_;
  int ranks_;
  std::chrono::steady_clock::time_point t0_ = std::chrono::steady_clock::now();
};

std::string read_text_file(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  RT_CHECK(in.good(), path, ": cannot open");
  std::ostringstream ss;
  ss << in.rdbuf();
  return ss.str();
}

// Runs f(); its error (which names the file, the line and the field) is prefixed with the flag
// that gave the file: "--data piqa=FILE:2: missing field 'sol2'".
template <class F>
auto data_flag(const std::string& task, F&& f) {
  try {
    return f();
  } catch (const Error& e) {
    throw Error("--data " + task + "=" + e.what());
  }
}

json stderr_json(const std::optional<double>& s) { return s ? json(*s) : json("N/A"); }

// Multiple choice: results and one sample line per document. The requests (one per choice) are
// packed into batches of consecutive requests up to batch_tokens rows (one forward each, a shared
// prefix counted once;
// the batches depend on nothing else, so neither do the scores), and the batches are dealt out
// over the ranks; each request's (log-likelihood, is_greedy) comes back to every rank.
json eval_choice(eval::LoglikelihoodScorer& scorer, const std::string& task, const std::vector<eval::ChoiceDoc>& docs,
                 int64_t batch_tokens, const Ranks& ranks, std::string& samples) {
  std::vector<eval::TokenPair> requests;
  for (const eval::ChoiceDoc& d : docs)
    for (size_t k = 0; k < d.choices.size(); ++k) {
      requests.push_back(scorer.encode_pair(d.context, " " + d.choices[k]));
      // lm-eval asserts this too: a choice cut to its last max_length tokens would be scored on part of it.
      const auto n = static_cast<int64_t>(requests.back().continuation.size());
      RT_CHECK(n <= scorer.max_length(), task, ": document ", d.doc_id, ", choice ", k, ": the continuation is ", n,
               " tokens, more than the maximum length ", scorer.max_length(),
               " (--seq); lm-evaluation-harness refuses it too");
    }
  std::vector<size_t> starts;  // batch b: requests [starts[b], starts[b + 1])
  size_t widest = 0;
  for (size_t i = 0, tokens = 0; i < requests.size(); ++i) {
    auto t = static_cast<size_t>(scorer.batch_rows(requests[i], starts.empty() ? nullptr : &requests[i - 1]));
    if (starts.empty() || tokens + t > static_cast<size_t>(batch_tokens)) {
      if (!starts.empty()) widest = std::max(widest, i - starts.back());
      starts.push_back(i);
      tokens = 0;
      t = static_cast<size_t>(scorer.input_tokens(requests[i]));  // first of its batch: all its rows
    }
    tokens += t;
  }
  if (!starts.empty()) widest = std::max(widest, requests.size() - starts.back());
  starts.push_back(requests.size());
  const int64_t batches = static_cast<int64_t>(starts.size()) - 1;
  int64_t mine = 0;  // this rank's requests, for the progress total
  for (int64_t b = ranks.group ? ranks.group->rank() : 0; b < batches; b += ranks.size())
    mine += static_cast<int64_t>(starts[static_cast<size_t>(b) + 1] - starts[static_cast<size_t>(b)]);
  EvalProgress bar(task, mine, "requests", ranks);
  int64_t done = 0;
  const int width = static_cast<int>(2 * widest);
  const std::vector<double> by_batch = eval::sharded_items(ranks.group, batches, width, [&](int64_t b, double* out) {
    const size_t first = starts[static_cast<size_t>(b)], last = starts[static_cast<size_t>(b) + 1];
    const std::vector<eval::Loglikelihood> lls =
        scorer.score_batch(std::span<const eval::TokenPair>(requests).subspan(first, last - first));
    for (size_t k = 0; k < lls.size(); ++k) {
      out[2 * k] = lls[k].logprob;
      out[2 * k + 1] = lls[k].is_greedy ? 1.0 : 0.0;
    }
    bar.update(done += static_cast<int64_t>(lls.size()));
  });
  std::vector<double> scored;  // (log-likelihood, is_greedy) per request, in request order
  for (int64_t b = 0; b < batches; ++b)
    for (size_t k = 0; k < starts[static_cast<size_t>(b) + 1] - starts[static_cast<size_t>(b)]; ++k) {
      scored.push_back(by_batch[static_cast<size_t>(b * width) + 2 * k]);
      scored.push_back(by_batch[static_cast<size_t>(b * width) + 2 * k + 1]);
    }
  std::vector<double> acc, acc_norm;
  size_t next = 0;
  for (const eval::ChoiceDoc& d : docs) {
    std::vector<double> lls, norm;
    json s;
    s["doc_id"] = d.doc_id;
    s["target"] = d.target;
    s["context"] = d.context;
    json conts = json::array(), greedy = json::array();
    for (const std::string& c : d.choices) {
      const double ll = scored[2 * next], is_greedy = scored[2 * next + 1];
      ++next;
      lls.push_back(ll);
      norm.push_back(ll / static_cast<double>(eval::py_len(c)));
      conts.push_back(" " + c);
      greedy.push_back(is_greedy != 0.0);
    }
    acc.push_back(eval::argmax_first(lls) == d.target ? 1.0 : 0.0);
    acc_norm.push_back(eval::argmax_first(norm) == d.target ? 1.0 : 0.0);
    s["continuations"] = conts;
    s["lls"] = lls;
    s["is_greedy"] = greedy;
    s["acc"] = acc.back();
    s["acc_norm"] = acc_norm.back();
    samples += s.dump() + "\n";
  }
  const eval::MeanStderr a = eval::mean_stderr(acc), m = eval::mean_stderr(acc_norm);
  json r;
  r["alias"] = task;
  r["acc,none"] = a.mean;
  r["acc_stderr,none"] = stderr_json(a.stderr_);
  r["acc_norm,none"] = m.mean;
  r["acc_norm_stderr,none"] = stderr_json(m.stderr_);
  r["samples"] = static_cast<int64_t>(docs.size());
  return r;
}

json eval_wikitext(eval::LoglikelihoodScorer& scorer, const std::vector<eval::PageDoc>& docs, const Ranks& ranks,
                   std::string& samples) {
  double ll = 0;
  int64_t words = 0, bytes = 0;
  const int64_t n = static_cast<int64_t>(docs.size());
  EvalProgress bar("wikitext", eval::items_of_rank(ranks.group, n), "docs", ranks);
  const std::vector<double> pages = eval::sharded_items(
      ranks.group, n, 2,
      [&](int64_t i, double* out) {
        const eval::Loglikelihood r = scorer.score_rolling(docs[static_cast<size_t>(i)].text);
        out[0] = r.logprob;
        out[1] = static_cast<double>(r.tokens);
      },
      [&](int64_t done) { bar.update(done); });
  for (size_t i = 0; i < docs.size(); ++i) {
    const eval::PageDoc& d = docs[i];
    ll += pages[2 * i];
    words += d.words;
    bytes += d.bytes;
    json s;
    s["doc_id"] = d.doc_id;
    s["loglikelihood"] = pages[2 * i];
    s["tokens"] = static_cast<int64_t>(pages[2 * i + 1]);
    s["words"] = d.words;
    s["bytes"] = d.bytes;
    samples += s.dump() + "\n";
  }
  json r;
  r["alias"] = "wikitext";
  r["word_perplexity,none"] = std::exp(-ll / static_cast<double>(words));
  r["word_perplexity_stderr,none"] = "N/A";
  r["byte_perplexity,none"] = std::exp(-ll / static_cast<double>(bytes));
  r["byte_perplexity_stderr,none"] = "N/A";
  r["bits_per_byte,none"] = -ll / static_cast<double>(bytes) / std::log(2.0);
  r["bits_per_byte_stderr,none"] = "N/A";
  r["samples"] = static_cast<int64_t>(docs.size());
  return r;
}

json eval_ppl(eval::LoglikelihoodScorer& scorer, const Tokenizer& tok, const std::string& path, int64_t seq,
              int64_t stride, const Ranks& ranks, std::string& samples) {
  const std::string text = read_text_file(path);
  eval::check_utf8(text, path);
  const std::vector<int32_t> ids = tok.encode(text);
  RT_CHECK(ids.size() >= 2, "--data ppl=", path, ": ", ids.size(), " tokens; perplexity needs at least 2");
  const auto windows = eval::ppl_windows(static_cast<int64_t>(ids.size()), seq, stride);
  double nll = 0;
  int64_t scored = 0;
  const int64_t n = static_cast<int64_t>(windows.size());
  EvalProgress bar("ppl", eval::items_of_rank(ranks.group, n), "windows", ranks);
  const std::vector<double> per_window = eval::sharded_items(
      ranks.group, n, 2,
      [&](int64_t i, double* out) {
        const eval::PplWindow& w = windows[static_cast<size_t>(i)];
        eval::TokenPair p;
        p.context.assign(ids.begin() + w.begin, ids.begin() + (w.end - w.scored));
        p.continuation.assign(ids.begin() + (w.end - w.scored), ids.begin() + w.end);
        const eval::Loglikelihood ll = scorer.score(p);
        out[0] = ll.logprob;
        out[1] = static_cast<double>(ll.tokens);
      },
      [&](int64_t done) { bar.update(done); });
  for (size_t i = 0; i < windows.size(); ++i) {
    const eval::PplWindow& w = windows[i];
    const double logprob = per_window[2 * i];
    nll -= logprob;
    scored += static_cast<int64_t>(per_window[2 * i + 1]);
    json s;
    s["window"] = static_cast<int64_t>(i);
    s["begin"] = w.begin;
    s["end"] = w.end;
    s["scored"] = w.scored;
    s["nll"] = -logprob;
    samples += s.dump() + "\n";
  }
  json r;
  r["alias"] = "ppl";
  r["token_perplexity,none"] = std::exp(nll / static_cast<double>(scored));
  r["token_perplexity_stderr,none"] = "N/A";
  r["tokens_scored"] = scored;
  r["nll_sum"] = nll;
  r["seq"] = seq;
  r["stride"] = stride;
  return r;
}

struct NiahSettings {
  std::vector<int64_t> lengths;
  std::vector<double> depths;  // percent
  int64_t samples = 3;
  uint64_t seed = 0;
  int64_t max_new = 16;
};

json eval_niah(Qwen2Model& model, const Tokenizer& tok, const std::string& path, const NiahSettings& ns,
               const Ranks& ranks, std::string& samples) {
  const std::vector<std::string> sentences = eval::haystack_sentences(read_text_file(path), path);
  std::optional<int32_t> eos = model.config().eos_token_id ? std::optional<int32_t>(static_cast<int32_t>(*model.config().eos_token_id))
                                                           : tok.eos_id();
  // A cell's prompt is its length in tokens, except where the answer would then run past the
  // model's positions: there the prompt is max_position_embeddings - max_new tokens (what lm-eval's
  // generate_until leaves the context, and RULER's sizing), so the default 32K cell runs on a
  // 32K-position model. samples_niah.jsonl records each prompt's length.
  const int64_t max_prompt = model.dims().max_positions - ns.max_new;
  RT_CHECK(max_prompt > 0, "niah: the model's max_position_embeddings (", model.dims().max_positions,
           ") leaves no room for a prompt before the ", ns.max_new, " generated tokens");
  for (int64_t len : ns.lengths) {
    RT_CHECK(len <= model.dims().max_positions, "niah: length ", len, " exceeds the model's max_position_embeddings (",
             model.dims().max_positions, "); pass --niah-lengths up to ", model.dims().max_positions);
    if (len > max_prompt && ranks.lead())
      std::fprintf(stderr, "[eval] niah: length %lld: the prompt is %lld tokens, so that the %lld generated tokens fit "
                   "in max_position_embeddings (%lld)\n", static_cast<long long>(len), static_cast<long long>(max_prompt),
                   static_cast<long long>(ns.max_new), static_cast<long long>(model.dims().max_positions));
  }
  struct Item {
    int64_t len;
    double depth;
    int64_t k;
  };
  std::vector<Item> items;
  for (int64_t len : ns.lengths)
    for (double depth : ns.depths)
      for (int64_t k = 0; k < ns.samples; ++k) items.push_back({len, depth, k});
  // The same prompt for every backend and rank: seeded by (seed, length, depth, sample).
  auto prompt = [&](const Item& it) {
    const uint64_t seed = ns.seed * 0x9E3779B97F4A7C15ull ^ (static_cast<uint64_t>(it.len) << 20) ^
                          (static_cast<uint64_t>(it.depth * 100) << 8) ^ static_cast<uint64_t>(it.k);
    return eval::build_niah_prompt(tok, sentences, std::min(it.len, max_prompt), it.depth / 100.0, seed);
  };
  // Each item's greedy output: its length, then the ids (padded to max_new).
  const int width = static_cast<int>(1 + ns.max_new);
  std::map<int64_t, eval::NiahPrompt> built;  // this rank's prompts, reused for the samples
  const int64_t n = static_cast<int64_t>(items.size());
  EvalProgress bar("niah", eval::items_of_rank(ranks.group, n), "samples", ranks);
  const std::vector<double> outputs = eval::sharded_items(
      ranks.group, n, width,
      [&](int64_t i, double* out) {
        eval::NiahPrompt p = prompt(items[static_cast<size_t>(i)]);
        const std::vector<int32_t> ids = eval::greedy_generate(model, p.ids, ns.max_new, eos);
        out[0] = static_cast<double>(ids.size());
        for (size_t j = 0; j < ids.size(); ++j) out[1 + j] = ids[j];
        built.emplace(i, std::move(p));
      },
      [&](int64_t done) { bar.update(done); });

  json cells = json::array();
  double total = 0;
  for (size_t c = 0; c < items.size(); c += static_cast<size_t>(ns.samples)) {
    double cell = 0;
    for (size_t i = c; i < c + static_cast<size_t>(ns.samples); ++i) {
      const Item& it = items[i];
      auto mine = built.find(static_cast<int64_t>(i));
      const eval::NiahPrompt p = mine != built.end() ? mine->second : prompt(it);
      const double* o = outputs.data() + i * static_cast<size_t>(width);
      std::vector<int32_t> out(static_cast<size_t>(o[0]));
      for (size_t j = 0; j < out.size(); ++j) out[j] = static_cast<int32_t>(o[1 + j]);
      const std::string text = tok.decode(out);
      const bool hit = eval::niah_score(text, p.number);
      cell += hit;
      json s;
      s["length"] = it.len;
      s["depth"] = it.depth;
      s["sample"] = it.k;
      s["prompt_tokens"] = static_cast<int64_t>(p.ids.size());
      s["depth_actual"] = p.depth_actual * 100;
      s["key"] = p.key;
      s["target"] = p.number;
      s["output"] = text;
      s["output_ids"] = out;
      s["score"] = hit ? 1 : 0;
      samples += s.dump() + "\n";
    }
    cells.push_back({{"length", items[c].len}, {"depth", items[c].depth}, {"score", cell / static_cast<double>(ns.samples)}});
    total += cell;
  }
  json r;
  r["alias"] = "niah";
  r["niah,none"] = total / static_cast<double>(items.size());
  r["niah_stderr,none"] = "N/A";
  r["cells"] = cells;
  r["samples_per_cell"] = ns.samples;
  return r;
}

// The headline metric of a task (summary tables).
std::pair<std::string, double> headline(const std::string& task, const json& r) {
  if (task == "wikitext") return {"word_perplexity", r["word_perplexity,none"].get<double>()};
  if (task == "ppl") return {"token_perplexity", r["token_perplexity,none"].get<double>()};
  if (task == "niah") return {"retrieval", r["niah,none"].get<double>()};
  return {task == "hellaswag" || task.rfind("arc", 0) == 0 ? "acc_norm" : "acc",
          r[task == "hellaswag" || task.rfind("arc", 0) == 0 ? "acc_norm,none" : "acc,none"].get<double>()};
}

}  // namespace

void register_eval(CLI::App& app) {
  struct Args {
    ModelOptions model;
    std::string attention_list;
    std::string tasks;
    std::vector<std::string> data;
    std::string tokenizer;
    int64_t limit = -1;
    int64_t seq = 0;
    int64_t stride = 0;
    std::string output;
    std::string png;
    std::string niah_lengths = "1024,2048,4096,8192,16384,32768";
    std::string niah_depths = "0,25,50,75,100";
    int64_t niah_samples = 3;
    uint64_t niah_seed = 0;
    int64_t batch_tokens = 4096;
    std::string share_prefix = "auto";
  };
  auto args = std::make_shared<Args>();
  CLI::App* cmd = app.add_subcommand(
      "eval", "Evaluate attention backends on perplexity and multiple-choice tasks, scored as lm-evaluation-harness");
  cmd->footer(
      "\nTasks (0-shot, lm-eval 0.4.13 definitions; --data TASK=FILE gives each its JSON lines in the Hugging Face\n"
      "row format, tools/export_eval_data.py writes them from a datasets cache):\n"
      "  hellaswag, piqa, arc_challenge, arc_easy   acc and acc_norm (log-likelihood per choice, / characters)\n"
      "  wikitext   word/byte perplexity and bits per byte (rolling log-likelihood, windows of --seq tokens)\n"
      "  ppl        token perplexity of a text file (windows of --seq tokens every --stride tokens)\n"
      "  niah       needle in a haystack (RULER's single needle) in a text file's sentences, per length and depth;\n"
      "             greedy generation of 16 tokens, a cell scores when the needle's number appears\n"
      "Outputs: OUTPUT/<backend>/results.json (lm-eval's layout), OUTPUT/<backend>/samples_<task>.jsonl,\n"
      "OUTPUT/summary.csv and summary.md (backends side by side, deltas against the first), --png a bar chart.\n"
      "Example:\n  runtime eval --model runs/l2a/model --attention full_causal,swa,l2a_dense --window 2048 \\\n"
      "      --tasks ppl,hellaswag --data ppl=wiki.test.raw --data hellaswag=hellaswag.jsonl --limit 500 --output ev");
  add_model_options(*cmd, args->model);
  cmd->remove_option(cmd->get_option("--attention"));
  cmd->add_option("--attention,-a", args->attention_list,
                  "Comma-separated attention backends, evaluated one after the other on the same weights (default: "
                  "the model's own)");
  cmd->add_option("--tasks", args->tasks, std::string("Comma-separated tasks: ") + eval::known_tasks())->required();
  cmd->add_option("--data", args->data, "TASK=FILE (repeatable): the task's data")->required();
  cmd->add_option("--tokenizer", args->tokenizer, "tokenizer.json / directory (default: the model directory's)");
  cmd->add_option("--limit", args->limit, "Only the first N documents of each task (as lm-eval's --limit)")
      ->check(CLI::Range(int64_t{1}, int64_t{1} << 40));
  cmd->add_option("--seq", args->seq,
                  "Maximum length in tokens (wikitext windows, ppl windows, choice truncation; default: the model's "
                  "max_position_embeddings)")
      ->check(CLI::Range(int64_t{2}, int64_t{1} << 30));
  cmd->add_option("--stride", args->stride, "ppl: tokens between window starts (default: --seq)")
      ->check(CLI::Range(int64_t{1}, int64_t{1} << 30));
  cmd->add_option("--output,-o", args->output, "Output directory")->required()->check(non_empty_path());
  cmd->add_option("--batch-tokens", args->batch_tokens,
                  "Multiple choice: requests packed into one forward, up to this many rows (input tokens, a prefix "
                  "shared by --share-prefix counted once; each request attends only to itself; 1 scores them one "
                  "by one)")
      ->check(CLI::Range(int64_t{1}, int64_t{1} << 30))
      ->capture_default_str();
  cmd->add_option("--share-prefix", args->share_prefix,
                  "Multiple choice: a document's choices run their common context once in a batch (on), or each "
                  "request whole (off: fewer, larger launches, the norms and projections in one pass over the "
                  "batch); auto: on on the CPU, where the arithmetic dominates, off on CUDA, where the launches do. "
                  "The scores agree up to rounding")
      ->check(CLI::IsMember({"auto", "on", "off"}))
      ->capture_default_str();
  cmd->add_option("--niah-lengths", args->niah_lengths,
                  "niah: prompt lengths in tokens (where the 16 answer tokens would pass the model's\n"
                  "max_position_embeddings, the prompt is 16 tokens shorter)")
      ->capture_default_str();
  cmd->add_option("--niah-depths", args->niah_depths, "niah: needle depths in percent of the haystack")
      ->capture_default_str();
  cmd->add_option("--niah-samples", args->niah_samples, "niah: seeded samples per (length, depth) cell")
      ->check(CLI::Range(int64_t{1}, int64_t{1000}))
      ->capture_default_str();
  cmd->add_option("--niah-seed", args->niah_seed, "niah: seed of the keys and numbers")->capture_default_str();
  cmd->add_option("--png", args->png, "Bar chart of the summary (runs tools/plot_eval.py; needs matplotlib)");
  cmd->callback([args] {
    const std::vector<std::string> tasks = split_list(args->tasks, ',');
    RT_CHECK(!tasks.empty(), "--tasks: no task given (known: ", eval::known_tasks(), ")");
    std::map<std::string, std::string> data;
    for (const std::string& d : args->data) {
      const size_t eq = d.find('=');
      RT_CHECK(eq != std::string::npos && eq > 0 && eq + 1 < d.size(), "--data '", d, "': expected TASK=FILE");
      RT_CHECK(!data.count(d.substr(0, eq)), "--data ", d.substr(0, eq), ": given twice");
      data[d.substr(0, eq)] = d.substr(eq + 1);
    }
    for (size_t i = 0; i < tasks.size(); ++i)
      RT_CHECK(std::find(tasks.begin(), tasks.begin() + static_cast<std::ptrdiff_t>(i), tasks[i]) ==
                   tasks.begin() + static_cast<std::ptrdiff_t>(i),
               "--tasks: '", tasks[i], "' is listed twice");
    for (const std::string& t : tasks) {
      RT_CHECK(eval::is_choice_task(t) || t == "wikitext" || t == "ppl" || t == "niah", "--tasks: unknown task '", t,
               "' (known: ", eval::known_tasks(), ")");
      RT_CHECK(data.count(t), "--tasks ", t, ": no data; pass --data ", t, "=FILE");
      check_input_path("--data " + t, data[t], false);
    }
    for (const auto& [t, f] : data)
      RT_CHECK(std::find(tasks.begin(), tasks.end(), t) != tasks.end(), "--data ", t, "=", f,
               ": task '", t, "' is not in --tasks");
    if (!args->tokenizer.empty()) check_input_path("--tokenizer", args->tokenizer, true);
    {
      std::error_code ec;
      RT_CHECK(!std::filesystem::exists(args->output, ec) || std::filesystem::is_directory(args->output, ec),
               "--output ", args->output, ": exists and is not a directory");
    }
    NiahSettings niah;
    for (const std::string& x : split_list(args->niah_lengths, ',')) {
      char* end = nullptr;
      const long long v = std::strtoll(x.c_str(), &end, 10);
      RT_CHECK(*end == '\0' && v >= 16, "--niah-lengths: '", x, "' is not a length of at least 16 tokens");
      niah.lengths.push_back(v);
    }
    for (const std::string& x : split_list(args->niah_depths, ',')) {
      char* end = nullptr;
      const double v = std::strtod(x.c_str(), &end);
      RT_CHECK(*end == '\0' && v >= 0 && v <= 100, "--niah-depths: '", x, "' is not a depth in [0, 100] percent");
      niah.depths.push_back(v);
    }
    if (std::find(tasks.begin(), tasks.end(), "niah") != tasks.end()) {
      RT_CHECK(!niah.lengths.empty(), "--niah-lengths: no length given");
      RT_CHECK(!niah.depths.empty(), "--niah-depths: no depth given");
    }
    niah.samples = args->niah_samples;
    niah.seed = args->niah_seed;
    std::vector<std::string> backends = split_list(args->attention_list, ',');
    if (backends.empty()) backends.push_back("");  // the model's own backend
    check_backend_list(args->model, backends);
    // The documents, read (and checked) once, before anything is written.
    std::map<std::string, std::vector<eval::ChoiceDoc>> choice_docs;
    std::vector<eval::PageDoc> wikitext_docs;
    for (const std::string& t : tasks) {
      if (eval::is_choice_task(t))
        choice_docs[t] = data_flag(t, [&] { return eval::load_choice_docs(t, data[t], args->limit); });
      else if (t == "wikitext")
        wikitext_docs = data_flag(t, [&] { return eval::load_wikitext_docs(data[t], args->limit); });
    }
    // Only now, with every flag checked, the output directory (a failure below leaves what it made).
    std::filesystem::create_directories(args->output);
    if (!args->png.empty()) check_output_path("--png", args->png);  // may sit in the output directory
    // Launched over several ranks: each scores its share of every task's items (on its own GPU with
    // --device cuda); the scores meet on the CPU (Gloo), and rank 0 writes the outputs.
    Ranks ranks;
    std::unique_ptr<dist::ProcessGroup> group;
    if (const auto world = dist::world_from_env(); world && world->world_size > 1) {
      if (args->model.device == "cuda") dist::use_local_gpu(world->local_rank);
      group = dist::join_process_group(*world, Device::CPU);
      ranks.group = group.get();
    }
    std::vector<std::pair<std::string, json>> all;  // backend -> results
    for (const std::string& backend : backends) {
      ModelOptions mo = args->model;
      mo.attention = backend;
      if (backends.size() > 1) mo.run_backends = backends;
      auto session = open_model_session(mo);
      const std::string name = session->attention_name;
      std::filesystem::path src = args->tokenizer.empty() ? session->model_dir : std::filesystem::path(args->tokenizer);
      RT_CHECK(!src.empty(), "eval: the model has no directory to take a tokenizer from; pass --tokenizer");
      const auto tok = with_flag(args->tokenizer.empty() ? "" : "--tokenizer", src.string(), [&] { return load_tokenizer(src); });
      RT_CHECK(tok->vocab_size() <= session->model->dims().vocab, "eval: the tokenizer (", src.string(), ") has ",
               tok->vocab_size(), " tokens but the model only ", session->model->dims().vocab,
               " (vocab_size in its config.json): they do not belong together");
      const int64_t max_len = args->seq > 0 ? args->seq : session->model->dims().max_positions;
      eval::LoglikelihoodScorer scorer(*session->model, *tok, max_len);
      scorer.set_share_prefix(args->share_prefix == "on" ||
                              (args->share_prefix == "auto" && args->model.device != "cuda"));
      const std::filesystem::path dir = std::filesystem::path(args->output) / name;
      std::filesystem::create_directories(dir);
      json results = json::object();
      json timings = json::object();
      for (const std::string& task : tasks) {
        const auto t0 = std::chrono::steady_clock::now();
        std::string samples;
        json r;
        const std::string& file = data[task];
        if (eval::is_choice_task(task))
          r = eval_choice(scorer, task, choice_docs.at(task), args->batch_tokens, ranks, samples);
        else if (task == "wikitext")
          r = eval_wikitext(scorer, wikitext_docs, ranks, samples);
        else if (task == "niah")
          r = eval_niah(*session->model, *tok, file, niah, ranks, samples);
        else
          r = eval_ppl(scorer, *tok, file, max_len, args->stride > 0 ? args->stride : max_len, ranks, samples);
        results[task] = r;
        timings[task] = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
        if (ranks.lead()) write_file_atomic(dir / ("samples_" + task + ".jsonl"), samples);
      }
      json out;
      out["results"] = results;
      json cfg;
      cfg["model"] = args->model.model;
      cfg["attention"] = name;
      json opts = json::object();
      for (const auto& [k, v] : session->attention_options.all()) opts[k] = v;
      cfg["attention_options"] = opts;
      cfg["device"] = args->model.device;
      cfg["max_length"] = max_len;
      cfg["batch_tokens"] = args->batch_tokens;
      cfg["share_prefix"] = scorer.share_prefix();
      cfg["limit"] = args->limit > 0 ? json(args->limit) : json(nullptr);
      cfg["num_fewshot"] = 0;
      cfg["ranks"] = ranks.size();
      out["config"] = cfg;
      out["versions"] = {{"runtime_eval", 1}, {"lm_eval_reference", "0.4.13"}};
      out["timings_s"] = timings;
      all.emplace_back(name, results);
      if (ranks.lead()) {
        write_file_atomic(dir / "results.json", out.dump(2) + "\n");
        std::cerr << "[eval] " << name << ": wrote " << (dir / "results.json").string() << "\n";
      }
    }
    if (!ranks.lead()) return;

    // Side by side, deltas against the first backend.
    std::ostringstream csv, md;
    csv << "backend,task,metric,value,delta\n";
    md << "| backend |";
    for (const auto& t : tasks) md << " " << t << " (" << headline(t, all[0].second[t]).first << ") |";
    md << "\n|---|";
    for (size_t i = 0; i < tasks.size(); ++i) md << "---|";
    md << "\n";
    for (const auto& [name, res] : all) {
      md << "| " << name << " |";
      for (const auto& t : tasks) {
        const auto [metric, v] = headline(t, res[t]);
        const double base = headline(t, all[0].second[t]).second;
        csv << name << "," << t << "," << metric << "," << std::setprecision(10) << v << "," << (v - base) << "\n";
        md << " " << std::setprecision(6) << v;
        if (&res != &all[0].second) md << " (" << std::showpos << v - base << std::noshowpos << ")";
        md << " |";
      }
      md << "\n";
    }
    write_file_atomic(std::filesystem::path(args->output) / "summary.csv", csv.str());
    write_file_atomic(std::filesystem::path(args->output) / "summary.md", md.str());
    std::cout << md.str();
    if (!args->png.empty()) {
      run_plot_script("plot_eval.py", (std::filesystem::path(args->output) / "summary.csv").string(), args->png);
      // niah: a depth x length heatmap per backend, next to its results.
      if (std::find(tasks.begin(), tasks.end(), "niah") != tasks.end())
        for (const auto& [name, res] : all) {
          const std::filesystem::path dir = std::filesystem::path(args->output) / name;
          run_plot_script("plot_niah.py", (dir / "results.json").string(), (dir / "niah.png").string());
        }
    }
  });
}

}  // namespace rt
