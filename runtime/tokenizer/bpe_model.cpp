#include "tokenizer/bpe_model.h"

#include <cstdio>
#include <mutex>
#include <queue>

#include <nlohmann/json.hpp>

#include "rt/sdk/error.h"
#include "tokenizer/utf8.h"

namespace rt::tok {

using nlohmann::json;

namespace {

std::string optional_string(const json& spec, const char* key) {
  if (!spec.contains(key) || spec[key].is_null()) return {};
  RT_CHECK(spec[key].is_string(), "model.", key, " must be a string or null");
  return spec[key].get<std::string>();
}

}  // namespace

BpeModel::BpeModel(const json& spec) {
  RT_CHECK(spec.contains("vocab") && spec["vocab"].is_object(), "model.vocab must be an object");
  RT_CHECK(spec.contains("merges") && spec["merges"].is_array(), "model.merges must be an array");
  const json& vocab = spec["vocab"];
  int64_t max_id = -1;
  vocab_.reserve(vocab.size());
  for (auto it = vocab.begin(); it != vocab.end(); ++it) {
    RT_CHECK(it.value().is_number_integer(), "model.vocab['", it.key(), "'] must be an integer id");
    const int64_t id = it.value().get<int64_t>();
    RT_CHECK(id >= 0 && id < (int64_t{1} << 31) - 1, "model.vocab['", it.key(), "'] has id ", id,
             " out of range");
    vocab_[it.key()] = static_cast<int32_t>(id);
    max_id = std::max(max_id, id);
  }
  id_to_token_.resize(static_cast<size_t>(max_id + 1));
  has_token_.assign(static_cast<size_t>(max_id + 1), false);
  for (const auto& [tok, id] : vocab_) {
    id_to_token_[id] = tok;
    has_token_[id] = true;
  }

  continuing_subword_prefix_ = optional_string(spec, "continuing_subword_prefix");
  end_of_word_suffix_ = optional_string(spec, "end_of_word_suffix");
  fuse_unk_ = spec.value("fuse_unk", false);
  byte_fallback_ = spec.value("byte_fallback", false);
  ignore_merges_ = spec.value("ignore_merges", false);
  if (spec.contains("dropout") && !spec["dropout"].is_null()) {
    // Dropout makes encoding random; it is a training-time augmentation, not inference.
    RT_CHECK(spec["dropout"].is_number() && spec["dropout"].get<double>() == 0.0,
             "model.dropout ", spec["dropout"].dump(), " is not supported (only null or 0)");
  }
  const std::string unk = optional_string(spec, "unk_token");
  if (!unk.empty()) {
    auto it = vocab_.find(unk);
    RT_CHECK(it != vocab_.end(), "model.unk_token '", unk, "' is not in the vocabulary");
    unk_id_ = it->second;
  }

  // Merges come as "a b" strings (older files) or as [a, b] pairs (tokenizers >= 0.20).
  const json& merges = spec["merges"];
  merges_.reserve(merges.size());
  for (size_t rank = 0; rank < merges.size(); ++rank) {
    const json& m = merges[rank];
    if (m.is_string()) {
      const std::string& s = m.get_ref<const std::string&>();
      const size_t sp = s.find(' ');
      RT_CHECK(sp != std::string::npos && s.find(' ', sp + 1) == std::string::npos,
               "model.merges[", rank, "] = '", s, "' is not two tokens separated by one space");
      add_merge(s.substr(0, sp), s.substr(sp + 1), static_cast<uint32_t>(rank));
    } else if (m.is_array() && m.size() == 2 && m[0].is_string() && m[1].is_string()) {
      add_merge(m[0].get<std::string>(), m[1].get<std::string>(), static_cast<uint32_t>(rank));
    } else {
      fail("model.merges[", rank, "] must be a string \"a b\" or a pair [\"a\", \"b\"], got ", m.dump());
    }
  }
}

void BpeModel::add_merge(const std::string& a, const std::string& b, uint32_t rank) {
  auto ia = vocab_.find(a), ib = vocab_.find(b);
  RT_CHECK(ia != vocab_.end(), "model.merges[", rank, "]: token '", a, "' is not in the vocabulary");
  RT_CHECK(ib != vocab_.end(), "model.merges[", rank, "]: token '", b, "' is not in the vocabulary");
  // As in HF, the right part loses its continuing-subword prefix in the merged token.
  const size_t plen = continuing_subword_prefix_.size();
  RT_CHECK(b.compare(0, plen, continuing_subword_prefix_) == 0, "model.merges[", rank, "]: token '",
           b, "' lacks the continuing_subword_prefix '", continuing_subword_prefix_, "'");
  const std::string merged = a + b.substr(plen);
  auto im = vocab_.find(merged);
  RT_CHECK(im != vocab_.end(), "model.merges[", rank, "]: merged token '", merged,
           "' is not in the vocabulary");
  // A repeated pair keeps its last rank, as HF's HashMap collection does.
  merges_[pair_key(ia->second, ib->second)] = {rank, im->second};
}

std::optional<int32_t> BpeModel::token_to_id(std::string_view token) const {
  auto it = vocab_.find(av(token));
  if (it == vocab_.end()) return std::nullopt;
  return it->second;
}

const std::string* BpeModel::id_to_token(int32_t id) const {
  if (id < 0 || static_cast<size_t>(id) >= id_to_token_.size() || !has_token_[id]) return nullptr;
  return &id_to_token_[id];
}

void BpeModel::tokenize(std::string_view word, std::vector<int32_t>& out) const {
  if (word.empty()) return;
  if (ignore_merges_) {  // a word that is itself a token skips merging (Llama 3 style)
    if (auto it = vocab_.find(av(word)); it != vocab_.end()) {
      out.push_back(it->second);
      return;
    }
  }
  const bool cacheable = word.size() <= kCacheMaxWordBytes;
  if (cacheable) {
    std::shared_lock lock(cache_mutex_);
    if (auto it = cache_.find(av(word)); it != cache_.end()) {
      out.insert(out.end(), it->second.begin(), it->second.end());
      return;
    }
  }
  const size_t mark = out.size();
  merge_word(word, out);
  if (cacheable) {
    std::unique_lock lock(cache_mutex_);
    if (cache_.size() < kCacheMaxEntries) {
      cache_.try_emplace(std::string(word), out.begin() + static_cast<ptrdiff_t>(mark), out.end());
    }
  }
}

void BpeModel::merge_word(std::string_view word, std::vector<int32_t>& out) const {
  // Symbols form a doubly linked list over the initial characters; a merged symbol keeps the
  // position of its left part and the right part is marked dead (len 0), as in HF's Word.
  struct Symbol {
    int32_t id;
    int32_t prev, next;
    size_t len;
  };
  std::vector<Symbol> symbols;
  symbols.reserve(word.size());
  auto add = [&](int32_t id, size_t len) {
    const auto n = static_cast<int32_t>(symbols.size());
    if (n > 0) symbols.back().next = n;
    symbols.push_back({id, n - 1, -1, len});
  };

  std::optional<std::pair<int32_t, size_t>> unk;  // pending unknown run (id, bytes)
  std::string s;
  for (size_t i = 0; i < word.size();) {
    size_t len;
    decode_utf8(word, i, len);
    const bool first = i == 0, last = i + len == word.size();
    s.assign(first ? "" : continuing_subword_prefix_);
    s.append(word.substr(i, len));
    if (last) s += end_of_word_suffix_;
    i += len;
    if (auto it = vocab_.find(s); it != vocab_.end()) {
      if (unk) add(unk->first, unk->second), unk.reset();
      add(it->second, len);
      continue;
    }
    if (byte_fallback_) {  // <0xAB> tokens for each byte, only if all of them exist
      std::vector<int32_t> bytes;
      for (unsigned char b : s) {
        char name[8];
        std::snprintf(name, sizeof(name), "<0x%02X>", b);
        auto it = vocab_.find(absl::string_view(name));
        if (it == vocab_.end()) break;
        bytes.push_back(it->second);
      }
      if (bytes.size() == s.size()) {
        for (int32_t b : bytes) add(b, 1);
        continue;
      }
    }
    if (unk_id_) {
      if (unk && fuse_unk_) {
        unk->second += len;
      } else {
        if (unk) add(unk->first, unk->second);
        unk = std::make_pair(*unk_id_, len);
      }
    }
    // Without an unk token an unknown character is dropped, as in HF.
  }
  if (unk) add(unk->first, unk->second);

  struct Merge {
    uint32_t rank;
    int32_t pos;
    int32_t new_id;
    bool operator<(const Merge& o) const {  // max-heap order: lowest rank, then leftmost, on top
      return rank != o.rank ? rank > o.rank : pos > o.pos;
    }
  };
  auto lookup = [&](int32_t a, int32_t b) -> const MergeTarget* {
    auto it = merges_.find(pair_key(a, b));
    return it == merges_.end() ? nullptr : &it->second;
  };
  std::priority_queue<Merge> queue;
  for (size_t k = 0; k + 1 < symbols.size(); ++k) {
    if (auto m = lookup(symbols[k].id, symbols[k + 1].id)) {
      queue.push({m->rank, static_cast<int32_t>(k), m->id});
    }
  }
  while (!queue.empty()) {
    const Merge top = queue.top();
    queue.pop();
    Symbol& cur = symbols[top.pos];
    if (cur.len == 0 || cur.next < 0) continue;
    const int32_t next_pos = cur.next;
    const Symbol right = symbols[next_pos];
    // Skip stale entries: the pair at this position must still merge into the same token.
    const MergeTarget* m = lookup(cur.id, right.id);
    if (!m || m->id != top.new_id) continue;
    cur.id = top.new_id;
    cur.len += right.len;
    cur.next = right.next;
    symbols[next_pos].len = 0;
    if (right.next >= 0) symbols[right.next].prev = top.pos;
    if (cur.prev >= 0) {
      if (auto pm = lookup(symbols[cur.prev].id, cur.id)) queue.push({pm->rank, cur.prev, pm->id});
    }
    if (cur.next >= 0) {
      if (auto nm = lookup(cur.id, symbols[cur.next].id)) queue.push({nm->rank, top.pos, nm->id});
    }
  }
  for (const Symbol& sym : symbols) {
    if (sym.len != 0) out.push_back(sym.id);
  }
}

}  // namespace rt::tok
