#include "tokenizer/hf_tokenizer.h"

#include <fstream>
#include <sstream>

#include <absl/container/flat_hash_map.h>
#include <nlohmann/json.hpp>

#include "rt/sdk/error.h"
#include "tokenizer/added_tokens.h"
#include "tokenizer/bpe_model.h"
#include "tokenizer/byte_level.h"
#include "tokenizer/normalizer.h"
#include "tokenizer/pre_tokenizer.h"
#include "tokenizer/utf8.h"

namespace rt::tok {
namespace {

using nlohmann::json;
namespace fs = std::filesystem;

json read_json(const fs::path& path) {
  std::ifstream in(path, std::ios::binary);
  RT_CHECK(in, "cannot open ", path.string());
  std::ostringstream ss;
  ss << in.rdbuf();
  try {
    return json::parse(ss.str());
  } catch (const json::parse_error& e) {
    fail(path.string(), ": malformed JSON: ", e.what());
  }
}

enum class DecoderKind { None, ByteLevel };

DecoderKind parse_decoder(const json& spec) {
  if (spec.is_null()) return DecoderKind::None;
  RT_CHECK(spec.is_object() && spec.contains("type") && spec["type"].is_string(),
           "decoder must be null or an object with a string 'type'");
  const std::string type = spec["type"];
  if (type == "ByteLevel") return DecoderKind::ByteLevel;
  fail("decoder type '", type, "' is not supported (supported: ByteLevel, null)");
}

AddedToken parse_added_token(const json& j, size_t index) {
  RT_CHECK(j.is_object() && j.contains("content") && j["content"].is_string(),
           "added_tokens[", index, "] needs a string 'content'");
  AddedToken t;
  t.content = j["content"];
  t.special = j.value("special", false);
  t.single_word = j.value("single_word", false);
  t.lstrip = j.value("lstrip", false);
  t.rstrip = j.value("rstrip", false);
  t.normalized = j.value("normalized", !t.special);
  return t;
}

class HfTokenizer final : public Tokenizer {
 public:
  HfTokenizer(const json& doc, const fs::path& path)
      : normalizer_(doc.value("normalizer", json())),
        pre_tokenizer_(make_pre_tokenizer(doc.value("pre_tokenizer", json()))),
        model_(model_spec(doc)),
        decoder_(parse_decoder(doc.value("decoder", json()))) {
    load_added_tokens(doc);
    vocab_size_ = model_.size();
    for (const auto& t : added_) vocab_size_ = std::max<int64_t>(vocab_size_, int64_t{t.id} + 1);
    load_eos(path);
  }

  std::vector<int32_t> encode(std::string_view raw) const override {
    // Invalid UTF-8 is repaired first (U+FFFD per maximal invalid subsequence), so every later
    // stage sees valid text; see tokenizer.h.
    std::string repaired;
    std::string_view text = raw;
    if (!is_valid_utf8(raw)) {
      repaired = to_valid_utf8(raw);
      text = repaired;
    }
    std::vector<int32_t> ids;
    ids.reserve(text.size() / 3 + 4);
    // 1. Tokens that match the raw text; 2. normalize the rest and find normalized tokens in it.
    std::vector<Segment> raw_segments;
    raw_matcher_.split(text, raw_segments);
    std::vector<Segment> segments;
    for (const Segment& seg : raw_segments) {
      if (seg.id >= 0) {
        ids.push_back(seg.id);
        continue;
      }
      if (seg.end <= seg.begin) continue;
      const std::string_view piece = text.substr(seg.begin, seg.end - seg.begin);
      std::string normalized;
      std::string_view norm = piece;
      if (!normalizer_.empty()) {
        normalized = normalizer_.normalize(piece);
        norm = normalized;
      }
      segments.clear();
      normalized_matcher_.split(norm, segments);
      for (const Segment& s : segments) {
        if (s.id >= 0) ids.push_back(s.id);
        else if (s.end > s.begin) tokenize_words(norm.substr(s.begin, s.end - s.begin), ids);
      }
    }
    return ids;
  }

  std::string decode(std::span<const int32_t> ids) const override {
    std::string out;
    bool first = true;
    for (int32_t id : ids) {
      RT_CHECK(id >= 0 && id < vocab_size_, "decode: token id ", id, " is out of range [0, ",
               vocab_size_, ")");
      const std::string* tok = nullptr;
      if (auto it = added_by_id_.find(id); it != added_by_id_.end()) tok = &it->second;
      else tok = model_.id_to_token(id);
      if (!tok) continue;  // a hole in the id range: HF skips it too
      if (decoder_ == DecoderKind::ByteLevel) {
        // A token whose characters are not all byte-level characters (e.g. an added token
        // holding a plain space) contributes its own UTF-8 bytes, as in HF.
        if (!unicode_string_to_bytes(*tok, out)) out += *tok;
      } else {
        if (!first) out += ' ';  // HF joins tokens with spaces when there is no decoder
        out += *tok;
      }
      first = false;
    }
    return decoder_ == DecoderKind::ByteLevel ? to_valid_utf8(out) : out;
  }

  int64_t vocab_size() const override { return vocab_size_; }

  std::optional<int32_t> token_to_id(std::string_view token) const override {
    if (auto it = added_by_content_.find(av(token)); it != added_by_content_.end()) return it->second;
    return model_.token_to_id(token);
  }

  std::optional<int32_t> eos_id() const override { return eos_; }

 private:
  static const json& model_spec(const json& doc) {
    RT_CHECK(doc.contains("model") && doc["model"].is_object(), "missing 'model' field");
    const json& m = doc["model"];
    // HF accepts a model without "type" when its fields identify it; BPE is the one with merges.
    const std::string type = m.contains("type") && m["type"].is_string() ? m["type"].get<std::string>()
                             : m.contains("merges")                      ? "BPE"
                                                                          : "(none)";
    RT_CHECK(type == "BPE", "model type '", type, "' is not supported (supported: BPE in "
             "tokenizer.json, or a SentencePiece tokenizer.model)");
    return m;
  }

  void load_added_tokens(const json& doc) {
    if (!doc.contains("added_tokens") || doc["added_tokens"].is_null()) return;
    RT_CHECK(doc["added_tokens"].is_array(), "'added_tokens' must be an array");
    const json& arr = doc["added_tokens"];
    added_.reserve(arr.size());
    // Ids are assigned the way HF does when it loads the file, which ignores the "id" written
    // there: a token already in the vocabulary (or added before) keeps that id, any other gets
    // the next id after the model vocabulary / the last added token. For files HF wrote itself
    // this is the id in the file.
    const int64_t model_entries = model_.num_tokens();
    int64_t max_added = -1;
    for (size_t i = 0; i < arr.size(); ++i) {
      AddedToken t = parse_added_token(arr[i], i);
      if (t.content.empty()) continue;  // HF ignores empty tokens
      if (auto it = added_by_content_.find(av(t.content)); it != added_by_content_.end()) {
        for (auto& old : added_) {  // the same content again: its flags replace the old ones
          if (old.content == t.content) old = AddedToken{t.content, old.id, t.single_word, t.lstrip,
                                                         t.rstrip, t.normalized, t.special || old.special};
        }
        continue;
      }
      if (auto id = model_.token_to_id(t.content)) {
        t.id = *id;
      } else {
        t.id = static_cast<int32_t>(max_added < 0 ? model_entries
                                    : (max_added >= model_entries || model_entries == 0) ? max_added + 1
                                                                                          : model_entries);
      }
      max_added = std::max<int64_t>(max_added, t.id);
      added_by_content_[t.content] = t.id;
      added_.push_back(std::move(t));
    }
    // Decoding uses a normalized token's normalized form (HF >= 0.22 does so, so that e.g. a
    // byte-level decoder sees what encoding matched), other tokens' content as written.
    for (const auto& t : added_) {
      added_by_id_[t.id] = t.normalized && !normalizer_.empty() ? normalizer_.normalize(t.content) : t.content;
    }
    // HF orders the match patterns special tokens first, then the others, each in file order.
    std::vector<const AddedToken*> raw, norm;
    std::vector<std::string> raw_pat, norm_pat;
    for (int pass = 0; pass < 2; ++pass) {
      for (const auto& t : added_) {
        if (t.special != (pass == 0)) continue;
        if (t.normalized) {
          norm.push_back(&t);
          norm_pat.push_back(normalizer_.empty() ? t.content : normalizer_.normalize(t.content));
        } else {
          raw.push_back(&t);
          raw_pat.push_back(t.content);
        }
      }
    }
    raw_matcher_.build(std::move(raw), std::move(raw_pat));
    normalized_matcher_.build(std::move(norm), std::move(norm_pat));
  }

  void load_eos(const fs::path& path) {
    const fs::path config = path.parent_path() / "tokenizer_config.json";
    if (fs::exists(config)) {
      const json cfg = read_json(config);
      if (cfg.is_object() && cfg.contains("eos_token") && !cfg["eos_token"].is_null()) {
        const json& e = cfg["eos_token"];
        std::string name;
        if (e.is_string()) name = e;
        else if (e.is_object() && e.contains("content") && e["content"].is_string()) name = e["content"];
        else fail(config.string(), ": eos_token must be a string or an object with 'content'");
        eos_ = token_to_id(name);
        RT_CHECK(eos_.has_value(), config.string(), ": eos_token '", name, "' is not in the vocabulary");
        return;
      }
    }
    eos_ = token_to_id("<|endoftext|>");
  }

  // Runs the pre-tokenizer and the model on one normalized stretch of text.
  void tokenize_words(std::string_view text, std::vector<int32_t>& ids) const {
    if (!pre_tokenizer_) {
      model_.tokenize(text, ids);
      return;
    }
    pre_tokenizer_->split(text, [&](std::string_view word) { model_.tokenize(word, ids); });
  }

  Normalizer normalizer_;
  std::unique_ptr<PreTokenizer> pre_tokenizer_;
  BpeModel model_;
  DecoderKind decoder_;
  std::vector<AddedToken> added_;  // stable: the matchers point into it
  absl::flat_hash_map<std::string, int32_t> added_by_content_;
  absl::flat_hash_map<int32_t, std::string> added_by_id_;  // id -> string fed to the decoder
  AddedTokenMatcher raw_matcher_, normalized_matcher_;
  int64_t vocab_size_ = 0;
  std::optional<int32_t> eos_;
};

}  // namespace

std::unique_ptr<Tokenizer> load_hf_tokenizer(const fs::path& path) {
  const json doc = read_json(path);
  try {
    RT_CHECK(doc.is_object(), "the top level is not a JSON object");
    return std::make_unique<HfTokenizer>(doc, path);
  } catch (const json::exception& e) {  // a field of an unexpected JSON type
    fail("tokenizer ", path.string(), ": ", e.what());
  } catch (const Error& e) {
    const std::string msg = e.what();
    // Messages about tokenizer_config.json already name that file.
    if (msg.find("tokenizer_config.json") != std::string::npos) throw;
    fail("tokenizer ", path.string(), ": ", msg);
  }
}

}  // namespace rt::tok
