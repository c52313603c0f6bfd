// The BPE model of tokenizer.json: vocabulary, merges ranked by position, and the merge loop of
// HF's BPE (models/bpe/word.rs), reproduced step for step so that ids match exactly. Words are
// cached, since natural text repeats them constantly.
#pragma once

#include <cstdint>
#include <optional>
#include <shared_mutex>
#include <string>
#include <string_view>
#include <vector>

#include <absl/container/flat_hash_map.h>
#include <absl/strings/string_view.h>
#include <nlohmann/json_fwd.hpp>

namespace rt::tok {

// Debian's Abseil is built with its own absl::string_view class, so heterogeneous lookups in
// absl hash maps need one rather than a std::string_view.
inline absl::string_view av(std::string_view s) { return {s.data(), s.size()}; }

class BpeModel {
 public:
  // `spec` is the "model" object (type BPE). Throws rt::Error on malformed vocab or merges.
  explicit BpeModel(const nlohmann::json& spec);

  // Appends the ids of one pre-tokenized word (valid UTF-8). Thread-safe.
  void tokenize(std::string_view word, std::vector<int32_t>& out) const;

  std::optional<int32_t> token_to_id(std::string_view token) const;
  // nullptr when no vocabulary entry has this id.
  const std::string* id_to_token(int32_t id) const;
  // Number of vocabulary entries (HF's BPE get_vocab_size()).
  int64_t num_tokens() const { return static_cast<int64_t>(vocab_.size()); }
  // Largest vocabulary id + 1.
  int64_t size() const { return static_cast<int64_t>(id_to_token_.size()); }

 private:
  struct MergeTarget {
    uint32_t rank;
    int32_t id;
  };
  static uint64_t pair_key(int32_t a, int32_t b) {
    return (static_cast<uint64_t>(static_cast<uint32_t>(a)) << 32) | static_cast<uint32_t>(b);
  }
  void add_merge(const std::string& a, const std::string& b, uint32_t rank);
  void merge_word(std::string_view word, std::vector<int32_t>& out) const;

  absl::flat_hash_map<std::string, int32_t> vocab_;
  std::vector<std::string> id_to_token_;
  std::vector<bool> has_token_;
  absl::flat_hash_map<uint64_t, MergeTarget> merges_;
  std::optional<int32_t> unk_id_;
  bool fuse_unk_ = false;
  bool byte_fallback_ = false;
  bool ignore_merges_ = false;
  std::string continuing_subword_prefix_;
  std::string end_of_word_suffix_;

  // Word -> ids. Bounded so that adversarial input cannot grow it without limit.
  static constexpr size_t kCacheMaxEntries = 1 << 18;
  static constexpr size_t kCacheMaxWordBytes = 256;
  mutable std::shared_mutex cache_mutex_;
  mutable absl::flat_hash_map<std::string, std::vector<int32_t>> cache_;
};

}  // namespace rt::tok
