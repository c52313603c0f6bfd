// The evaluation tasks as lm-evaluation-harness 0.4.13 defines them: documents read from JSON
// lines in the Hugging Face dataset row formats, turned into the harness's requests.
//   hellaswag      Rowan/hellaswag rows; query = preprocess(activity_label + ": " + ctx_a + " " +
//                  ctx_b.capitalize()), choices = preprocess(ending), gold = int(label)
//   piqa           "Question: {goal}\nAnswer:", choices sol1 / sol2, gold = label
//   arc_challenge, arc_easy   allenai/ai2_arc rows: "Question: {question}\nAnswer:", choices.text,
//                  gold = choices.label.index(answerKey) (letters or digits, 3 to 5 choices)
//   wikitext       rows with "page": the page detokenized (wikitext_detokenizer), scored as a
//                  rolling log-likelihood; words and bytes counted on the raw page
// Each multiple-choice request is (context, " " + choice). Bad rows are errors naming the file,
// the line and the field.
#pragma once

#include <cstdint>
#include <filesystem>
#include <string>
#include <vector>

namespace rt::eval {

struct ChoiceDoc {
  int64_t doc_id = 0;
  std::string context;
  std::vector<std::string> choices;  // as the task defines them (no leading delimiter)
  int target = 0;
};

struct PageDoc {
  int64_t doc_id = 0;
  std::string text;  // detokenized: what is scored
  int64_t words = 0, bytes = 0;  // of the raw page
};

bool is_choice_task(const std::string& task);
// The tasks `runtime eval` knows, for messages: "hellaswag, piqa, arc_challenge, arc_easy, wikitext, ppl, niah".
const char* known_tasks();

// The first `limit` documents (limit < 0: all) of a multiple-choice task.
std::vector<ChoiceDoc> load_choice_docs(const std::string& task, const std::filesystem::path& path, int64_t limit);
std::vector<PageDoc> load_wikitext_docs(const std::filesystem::path& path, int64_t limit);

// Pieces, public for tests.
std::string hellaswag_preprocess(const std::string& text);
std::string wikitext_detokenize(const std::string& page);

}  // namespace rt::eval
