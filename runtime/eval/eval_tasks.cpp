#include "eval/eval_tasks.h"

#include <fstream>
#include <iterator>

#include <nlohmann/json.hpp>

#include "eval/python_text.h"
#include "rt/sdk/error.h"

namespace rt::eval {
namespace {

using json = nlohmann::json;

// Calls fn(row, where, index) for each row of a JSON-lines file (blank lines skipped), or of a file
// that is one JSON array of rows (as Hugging Face datasets' json loader also reads), stopping after
// `limit` rows. `where` names the file and the line (or the array element).
template <class Fn>
void for_each_row(const std::filesystem::path& path, int64_t limit, Fn&& fn) {
  std::ifstream in(path, std::ios::binary);
  RT_CHECK(in.good(), path.string(), ": cannot open");
  int64_t rows = 0;
  auto row_of = [&](json row, const std::string& where) {
    RT_CHECK(row.is_object(), where, ": expected a JSON object per row, found ", row.type_name());
    fn(row, where, rows);
    ++rows;
  };
  in >> std::ws;
  if (in.peek() == '[') {
    const std::string text((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
    check_utf8(text, path.string());
    json all;
    try {
      all = json::parse(text);
    } catch (const json::parse_error& e) {
      fail(path.string(), ": not a JSON array of rows (", e.what(), ")");
    }
    RT_CHECK(all.is_array(), path.string(), ": expected a JSON array of rows");
    for (size_t i = 0; i < all.size() && (limit < 0 || rows < limit); ++i)
      row_of(std::move(all[i]), path.string() + ": row " + std::to_string(i));
  } else {
    in.clear();
    in.seekg(0);
    std::string line;
    int64_t lineno = 0;
    while ((limit < 0 || rows < limit) && std::getline(in, line)) {
      ++lineno;
      if (!line.empty() && line.back() == '\r') line.pop_back();
      if (line.find_first_not_of(" \t") == std::string::npos) continue;
      const std::string where = path.string() + ":" + std::to_string(lineno);
      check_utf8(line, where);
      json row;
      try {
        row = json::parse(line);
      } catch (const json::parse_error& e) {
        fail(where, ": not a JSON object (", e.what(), ")");
      }
      row_of(std::move(row), where);
    }
  }
  RT_CHECK(rows > 0, path.string(), ": no documents (the file is empty)");
}

const json& field(const json& row, const char* name, const std::string& where) {
  const auto it = row.find(name);
  RT_CHECK(it != row.end(), where, ": missing field '", name, "'");
  return *it;
}

std::string str_field(const json& row, const char* name, const std::string& where) {
  const json& v = field(row, name, where);
  RT_CHECK(v.is_string(), where, ": field '", name, "' must be a string, found ", v.type_name());
  return v.get<std::string>();
}

std::vector<std::string> str_list(const json& v, const std::string& what, const std::string& where) {
  RT_CHECK(v.is_array() && !v.empty(), where, ": field '", what, "' must be a non-empty list of strings");
  std::vector<std::string> out;
  for (const auto& x : v) {
    RT_CHECK(x.is_string(), where, ": field '", what, "' must hold strings, found ", x.type_name());
    out.push_back(x.get<std::string>());
  }
  return out;
}

// A label in [0, n): an int, or with digit_strings a string of digits (Rowan/hellaswag stores "2",
// which lm-eval's template "{{label}}" turns into an index). piqa's "doc_to_target: label" takes
// the value as it is, and a string would be looked up among the choices' texts: refused.
int int_label(const json& v, const char* name, size_t n, const std::string& where, bool digit_strings) {
  int64_t x = -1;
  if (v.is_number_integer()) {
    x = v.get<int64_t>();
  } else if (v.is_string() && !digit_strings) {
    fail(where, ": field '", name, "' must be an integer label (0 to ", n - 1, "), found the string \"",
         v.get<std::string>(), "\"");
  } else if (v.is_string()) {
    const std::string s = v.get<std::string>();
    RT_CHECK(!s.empty() && s.find_first_not_of("0123456789") == std::string::npos && s.size() < 10, where,
             ": field '", name, "' must be an integer label, found \"", s, "\"");
    x = std::stoll(s);
  } else {
    fail(where, ": field '", name, "' must be an integer label, found ", v.type_name());
  }
  RT_CHECK(x >= 0 && x < static_cast<int64_t>(n), where, ": field '", name, "' is ", x, ", out of range for ", n,
           " choices");
  return static_cast<int>(x);
}

ChoiceDoc hellaswag_doc(const json& row, const std::string& where) {
  ChoiceDoc d;
  const std::string ctx = str_field(row, "ctx_a", where) + " " + py_capitalize(str_field(row, "ctx_b", where));
  d.context = hellaswag_preprocess(str_field(row, "activity_label", where) + ": " + ctx);
  for (const auto& e : str_list(field(row, "endings", where), "endings", where)) d.choices.push_back(hellaswag_preprocess(e));
  d.target = int_label(field(row, "label", where), "label", d.choices.size(), where, /*digit_strings=*/true);
  return d;
}

ChoiceDoc piqa_doc(const json& row, const std::string& where) {
  ChoiceDoc d;
  d.context = "Question: " + str_field(row, "goal", where) + "\nAnswer:";
  d.choices = {str_field(row, "sol1", where), str_field(row, "sol2", where)};
  d.target = int_label(field(row, "label", where), "label", 2, where, /*digit_strings=*/false);
  return d;
}

ChoiceDoc arc_doc(const json& row, const std::string& where) {
  ChoiceDoc d;
  d.context = "Question: " + str_field(row, "question", where) + "\nAnswer:";
  const json& ch = field(row, "choices", where);
  RT_CHECK(ch.is_object(), where, ": field 'choices' must be an object {text: [...], label: [...]}");
  d.choices = str_list(field(ch, "text", where + ": choices"), "choices.text", where);
  const auto labels = str_list(field(ch, "label", where + ": choices"), "choices.label", where);
  RT_CHECK(labels.size() == d.choices.size(), where, ": choices.label has ", labels.size(), " entries but choices.text ",
           d.choices.size());
  const std::string key = str_field(row, "answerKey", where);
  d.target = -1;
  for (size_t i = 0; i < labels.size(); ++i)
    if (labels[i] == key && d.target < 0) d.target = static_cast<int>(i);
  RT_CHECK(d.target >= 0, where, ": answerKey \"", key, "\" is not one of choices.label");
  return d;
}

}  // namespace

bool is_choice_task(const std::string& task) {
  return task == "hellaswag" || task == "piqa" || task == "arc_challenge" || task == "arc_easy";
}

const char* known_tasks() { return "hellaswag, piqa, arc_challenge, arc_easy, wikitext, ppl, niah"; }

std::string hellaswag_preprocess(const std::string& text) {
  std::string s = py_strip(text);
  s = py_replace(s, " [title]", ". ");  // brackets are artifacts of the WikiHow part of the data
  s = py_re_sub("\\[.*?\\]", "", s);
  return py_replace(s, "  ", " ");
}

std::vector<ChoiceDoc> load_choice_docs(const std::string& task, const std::filesystem::path& path, int64_t limit) {
  RT_CHECK(is_choice_task(task), "eval: '", task, "' is not a multiple-choice task");
  std::vector<ChoiceDoc> docs;
  for_each_row(path, limit, [&](const json& row, const std::string& where, int64_t i) {
    ChoiceDoc d = task == "hellaswag" ? hellaswag_doc(row, where) : task == "piqa" ? piqa_doc(row, where)
                                                                                   : arc_doc(row, where);
    d.doc_id = i;
    docs.push_back(std::move(d));
  });
  return docs;
}

std::string wikitext_detokenize(const std::string& page) {
  std::string s = page;
  s = py_replace(s, "s '", "s'");  // contractions
  s = py_re_sub("/' [0-9]/", "/'[0-9]/", s);
  s = py_replace(s, " @-@ ", "-");  // number separators
  s = py_replace(s, " @,@ ", ",");
  s = py_replace(s, " @.@ ", ".");
  for (const char* p : {" : ", " ; ", " . ", " ! ", " ? ", " , "})  // punctuation
    s = py_replace(s, p, std::string(p + 1));
  s = py_re_sub("\\(\\s*([^\\)]*?)\\s*\\)", "(\\1)", s);  // double brackets
  s = py_re_sub("\\[\\s*([^\\]]*?)\\s*\\]", "[\\1]", s);
  s = py_re_sub("{\\s*([^}]*?)\\s*}", "{\\1}", s);
  s = py_re_sub("\\\"\\s*([^\\\"]*?)\\s*\\\"", "\"\\1\"", s);
  s = py_re_sub("'\\s*([^']*?)\\s*'", "'\\1'", s);
  s = py_replace(s, "= = = =", "====");  // miscellaneous
  s = py_replace(s, "= = =", "===");
  s = py_replace(s, "= =", "==");
  s = py_replace(s, " \xc2\xb0 ", "\xc2\xb0");
  s = py_replace(s, " \n", "\n");
  s = py_replace(s, "\n ", "\n");
  s = py_replace(s, " N ", " 1 ");
  return py_replace(s, " 's", "'s");
}

std::vector<PageDoc> load_wikitext_docs(const std::filesystem::path& path, int64_t limit) {
  std::vector<PageDoc> docs;
  for_each_row(path, limit, [&](const json& row, const std::string& where, int64_t i) {
    const std::string page = str_field(row, "page", where);
    PageDoc d;
    d.doc_id = i;
    d.text = wikitext_detokenize(page);
    d.words = py_split_ws_count(page);
    d.bytes = static_cast<int64_t>(page.size());
    docs.push_back(std::move(d));
  });
  return docs;
}

}  // namespace rt::eval
