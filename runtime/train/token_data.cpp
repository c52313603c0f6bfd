#include "train/token_data.h"

#include <algorithm>
#include <atomic>
#include <cerrno>
#include <cstring>
#include <exception>
#include <fstream>
#include <limits>
#include <random>
#include <thread>

#include "loader/json_util.h"
#include "rt/sdk/error.h"

namespace rt {

namespace {

// Encodes every text on a few threads (the tokenizer is thread-safe); results in input order.
std::vector<std::vector<int32_t>> encode_all(const Tokenizer& tok, const std::vector<std::string>& texts) {
  std::vector<std::vector<int32_t>> out(texts.size());
  const size_t n_threads =
      std::min<size_t>({texts.size(), std::max(1u, std::thread::hardware_concurrency()), 16});
  if (n_threads <= 1) {
    for (size_t i = 0; i < texts.size(); ++i) out[i] = tok.encode(texts[i]);
    return out;
  }
  std::atomic<size_t> next{0};
  std::vector<std::exception_ptr> errors(n_threads);
  std::vector<std::thread> threads;
  for (size_t t = 0; t < n_threads; ++t)
    threads.emplace_back([&, t] {
      try {
        for (size_t i; (i = next.fetch_add(1)) < texts.size();) out[i] = tok.encode(texts[i]);
      } catch (...) {
        errors[t] = std::current_exception();
      }
    });
  for (auto& th : threads) th.join();
  for (auto& e : errors)
    if (e) std::rethrow_exception(e);
  return out;
}

size_t batch_threads() { return std::min(16u, std::max(1u, std::thread::hardware_concurrency())); }

bool is_safe_cut(std::string_view s, size_t p) {
  if (p == 0 || p >= s.size() || s[p - 1] != '\n') return false;
  while (p < s.size() && (s[p] == ' ' || s[p] == '\t')) ++p;
  // ASCII graphic: not whitespace of any kind, not the start of a multi-byte (maybe Unicode
  // whitespace) character, and not a newline that would extend the previous pre-token.
  return p < s.size() && s[p] >= '!' && s[p] <= '~';
}

// The last safe cut in (0, target], else the first one after target, else npos.
size_t find_cut(std::string_view s, size_t target) {
  size_t q = std::min(target, s.size());
  while (q > 0) {
    const size_t nl = s.rfind('\n', q - 1);
    if (nl == std::string_view::npos) break;
    if (is_safe_cut(s, nl + 1)) return nl + 1;
    q = nl;
  }
  for (size_t nl = s.find('\n', target); nl != std::string_view::npos; nl = s.find('\n', nl + 1))
    if (is_safe_cut(s, nl + 1)) return nl + 1;
  return std::string_view::npos;
}

// Collects chunks and encodes them a batch at a time, appending to `out` in order.
class ChunkEncoder {
 public:
  ChunkEncoder(const Tokenizer& tok, std::vector<int32_t>& out) : tok_(tok), out_(out) {}
  void add(std::string chunk) {
    pending_.push_back(std::move(chunk));
    if (pending_.size() >= batch_threads()) flush();
  }
  void flush() {
    for (auto& ids : encode_all(tok_, pending_)) out_.insert(out_.end(), ids.begin(), ids.end());
    pending_.clear();
  }

 private:
  const Tokenizer& tok_;
  std::vector<int32_t>& out_;
  std::vector<std::string> pending_;
};

void check_ids(const std::vector<int32_t>& ids, size_t from, int64_t vocab_size, const std::string& what) {
  for (size_t i = from; i < ids.size(); ++i)
    if (ids[i] < 0 || ids[i] >= vocab_size)
      fail(what, ": token index ", i, " has id ", ids[i], ", not below the vocabulary size ", vocab_size);
}

std::vector<int32_t> load_txt(const std::filesystem::path& file, const Tokenizer& tok) {
  constexpr size_t kChunk = size_t{1} << 20;
  std::ifstream in(file, std::ios::binary);
  if (!in) fail(file.string(), ": cannot open: ", std::strerror(errno));
  std::vector<int32_t> ids;
  ChunkEncoder enc(tok, ids);
  std::string carry, block(kChunk, '\0');
  while (in) {
    in.read(block.data(), static_cast<std::streamsize>(block.size()));
    carry.append(block.data(), static_cast<size_t>(in.gcount()));
    while (carry.size() > kChunk) {
      const size_t cut = find_cut(carry, kChunk);
      if (cut == std::string::npos) break;  // one very long line: read on
      enc.add(carry.substr(0, cut));
      carry.erase(0, cut);
    }
  }
  if (in.bad()) fail(file.string(), ": read error");
  if (!carry.empty()) enc.add(std::move(carry));
  enc.flush();
  return ids;
}

std::vector<int32_t> load_jsonl(const std::filesystem::path& file, const Tokenizer& tok,
                                int64_t vocab_size, int64_t& documents) {
  std::ifstream in(file, std::ios::binary);
  if (!in) fail(file.string(), ": cannot open: ", std::strerror(errno));
  const std::optional<int32_t> eos = tok.eos_id();
  std::vector<int32_t> ids;
  std::vector<std::string> texts;
  std::vector<int64_t> lines;
  size_t batch_bytes = 0;
  auto flush = [&] {
    const auto encoded = encode_all(tok, texts);
    for (size_t d = 0; d < encoded.size(); ++d) {
      const size_t from = ids.size();
      ids.insert(ids.end(), encoded[d].begin(), encoded[d].end());
      if (eos) ids.push_back(*eos);
      check_ids(ids, from, vocab_size, file.string() + ":" + std::to_string(lines[d]));
    }
    texts.clear();
    lines.clear();
    batch_bytes = 0;
  };
  std::string line;
  for (int64_t line_no = 1; std::getline(in, line); ++line_no) {
    if (!line.empty() && line.back() == '\r') line.pop_back();
    if (line.find_first_not_of(" \t") == std::string::npos) continue;
    const std::string what = file.string() + ":" + std::to_string(line_no);
    const nlohmann::json j = parse_json_strict(line, what);
    if (!j.is_object()) fail(what, ": expected a JSON object with a string field \"text\", found ", json_type_name(j));
    const auto it = j.find("text");
    if (it == j.end()) fail(what, ": missing required field \"text\"");
    if (!it->is_string())
      fail(what, ": field \"text\" must be a string, found ", json_type_name(*it), " ", json_brief(*it));
    texts.push_back(it->get<std::string>());
    lines.push_back(line_no);
    batch_bytes += texts.back().size();
    ++documents;
    if (batch_bytes >= (size_t{1} << 20) * batch_threads()) flush();
  }
  if (in.bad()) fail(file.string(), ": read error");
  flush();
  return ids;
}

std::vector<int32_t> load_bin(const std::filesystem::path& file, int64_t vocab_size) {
  std::error_code ec;
  const uintmax_t size = std::filesystem::file_size(file, ec);
  if (ec) fail(file.string(), ": cannot read: ", ec.message());
  if (size % 4 != 0)
    fail(file.string(), ": size ", size, " bytes is not a multiple of 4 (expected little-endian uint32 token ids)");
  std::ifstream in(file, std::ios::binary);
  if (!in) fail(file.string(), ": cannot open: ", std::strerror(errno));
  std::vector<int32_t> ids(size / 4);
  std::vector<unsigned char> buf(size_t{1} << 22);
  size_t done = 0;
  while (done < ids.size()) {
    const size_t n = std::min(buf.size() / 4, ids.size() - done);
    if (!in.read(reinterpret_cast<char*>(buf.data()), static_cast<std::streamsize>(n * 4)))
      fail(file.string(), ": read error (file changed while reading?)");
    for (size_t i = 0; i < n; ++i) {
      const unsigned char* b = &buf[4 * i];
      const uint32_t v = uint32_t{b[0]} | uint32_t{b[1]} << 8 | uint32_t{b[2]} << 16 | uint32_t{b[3]} << 24;
      if (v >= static_cast<uint64_t>(vocab_size))
        fail(file.string(), ": token index ", done + i, " has id ", v, ", not below the vocabulary size ", vocab_size);
      ids[done + i] = static_cast<int32_t>(v);
    }
    done += n;
  }
  return ids;
}

}  // namespace

std::vector<int32_t> encode_chunked(const Tokenizer& tok, std::string_view text, size_t chunk_bytes) {
  RT_CHECK(chunk_bytes > 0, "encode_chunked: chunk_bytes must be > 0");
  std::vector<int32_t> ids;
  ChunkEncoder enc(tok, ids);
  while (text.size() > chunk_bytes) {
    const size_t cut = find_cut(text, chunk_bytes);
    if (cut == std::string_view::npos) break;
    enc.add(std::string(text.substr(0, cut)));
    text.remove_prefix(cut);
  }
  if (!text.empty()) enc.add(std::string(text));
  enc.flush();
  return ids;
}

TokenDataset TokenDataset::load(const std::filesystem::path& file, const Tokenizer* tok, int64_t vocab_size) {
  RT_CHECK(vocab_size >= 1 && vocab_size <= std::numeric_limits<int32_t>::max() + int64_t{1},
           file.string(), ": vocabulary size ", vocab_size, " is out of range");
  const std::string ext = file.extension().string();
  if (ext != ".txt" && ext != ".jsonl" && ext != ".bin")
    fail(file.string(), ": unsupported data file extension \"", ext, "\" (expected .txt, .jsonl or .bin)");
  if (!std::filesystem::is_regular_file(file)) fail(file.string(), ": no such data file");
  if (ext != ".bin" && !tok)
    fail(file.string(), ": a ", ext, " data file needs a tokenizer (only .bin holds token ids)");
  TokenDataset d;
  d.source_ = file.string();
  d.documents_ = 1;
  if (ext == ".txt") {
    d.tokens_ = load_txt(file, *tok);
    check_ids(d.tokens_, 0, vocab_size, d.source_);
  } else if (ext == ".jsonl") {
    d.documents_ = 0;
    d.tokens_ = load_jsonl(file, *tok, vocab_size, d.documents_);
  } else {
    d.tokens_ = load_bin(file, vocab_size);
  }
  return d;
}

TokenDataset TokenDataset::from_tokens(std::vector<int32_t> tokens, int64_t vocab_size, std::string source) {
  check_ids(tokens, 0, vocab_size, source);
  TokenDataset d;
  d.tokens_ = std::move(tokens);
  d.documents_ = 1;
  d.source_ = std::move(source);
  return d;
}

// --- SequenceSampler ---

namespace {

// Uniform in [0, bound) by rejection: values below 2^64 mod bound are drawn again, so every
// residue is equally likely (std::uniform_int_distribution's algorithm is not specified).
uint64_t bounded(std::mt19937_64& g, uint64_t bound) {
  const uint64_t threshold = (0 - bound) % bound;
  for (;;) {
    const uint64_t r = g();
    if (r >= threshold) return r % bound;
  }
}

}  // namespace

std::vector<int64_t> SequenceSampler::epoch_order(int64_t n, uint64_t seed, int64_t epoch, bool shuffle) {
  std::vector<int64_t> order(static_cast<size_t>(n));
  for (int64_t i = 0; i < n; ++i) order[static_cast<size_t>(i)] = i;
  if (!shuffle) return order;
  std::mt19937_64 g(seed + static_cast<uint64_t>(epoch));
  for (int64_t i = n - 1; i > 0; --i)
    std::swap(order[static_cast<size_t>(i)], order[bounded(g, static_cast<uint64_t>(i) + 1)]);
  return order;
}

std::vector<std::vector<int32_t>> evaluation_sequences(const TokenDataset& data, int64_t seq_len,
                                                       int64_t max_sequences) {
  RT_CHECK(seq_len >= 1, "evaluation_sequences: seq_len must be >= 1, found ", seq_len);
  RT_CHECK(max_sequences >= 1, "evaluation_sequences: max_sequences must be >= 1, found ", max_sequences);
  const int64_t n = data.size() / seq_len;
  if (n < 1)
    fail(data.source(), ": ", data.size(), " tokens do not fill one sequence of train.seq_len = ", seq_len,
         " (need at least ", seq_len, " tokens)");
  const int64_t count = std::min(n, max_sequences);
  std::vector<std::vector<int32_t>> out;
  out.reserve(static_cast<size_t>(count));
  for (int64_t k = 0; k < count; ++k) {
    // floor(k * n / count) without forming k * n (k * (n % count) < count^2 cannot overflow).
    const int64_t i = k * (n / count) + (k * (n % count)) / count;
    const auto b = data.tokens().begin() + i * seq_len;
    out.emplace_back(b, b + seq_len);
  }
  return out;
}

SequenceSampler::SequenceSampler(const TokenDataset& data, int64_t seq_len, uint64_t seed, bool shuffle)
    : data_(&data), seq_len_(seq_len), n_(0), seed_(seed), shuffle_(shuffle) {
  RT_CHECK(seq_len >= 1, "SequenceSampler: seq_len must be >= 1, found ", seq_len);
  n_ = data.size() / seq_len;
  if (n_ < 1)
    fail(data.source(), ": ", data.size(), " tokens do not fill one sequence of train.seq_len = ", seq_len,
         " (need at least ", seq_len, " tokens)");
}

void SequenceSampler::ensure_order() const {
  if (order_epoch_ == cursor_.epoch) return;
  order_ = epoch_order(n_, seed_, cursor_.epoch, shuffle_);
  order_epoch_ = cursor_.epoch;
}

int64_t SequenceSampler::peek_index() const {
  ensure_order();
  return order_[static_cast<size_t>(cursor_.index)];
}

void SequenceSampler::next(std::vector<int32_t>& out) {
  const int64_t seq = peek_index();
  const auto begin = data_->tokens().begin() + seq * seq_len_;
  out.assign(begin, begin + seq_len_);
  if (++cursor_.index == n_) cursor_ = {cursor_.epoch + 1, 0};
}

void SequenceSampler::set_cursor(Cursor c) {
  if (c.epoch < 0 || c.index < 0 || c.index > n_)
    fail("data cursor (epoch ", c.epoch, ", index ", c.index, ") is out of range for ", n_,
         " sequences (a checkpoint from a different data file or seq_len?)");
  if (c.index == n_) c = {c.epoch + 1, 0};
  cursor_ = c;
}

}  // namespace rt
