// Training data: a file turned into one stream of token ids (TokenDataset), and the order in which
// fixed-length sequences are cut from it (SequenceSampler). The order is a pure function of
// (seed, epoch), so a run resumed from a checkpoint's cursor sees exactly the sequences an
// uninterrupted run would.
#pragma once

#include <cstdint>
#include <filesystem>
#include <string>
#include <string_view>
#include <vector>

#include "tokenizer/tokenizer.h"

namespace rt {

class TokenDataset {
 public:
  // By extension:
  //  .txt   the whole text, tokenized in chunks of lines (memory stays bounded on large files);
  //         no EOS is inserted.
  //  .jsonl one JSON object per line with a string field "text" (blank lines are skipped); each
  //         document's tokens are followed by the tokenizer's EOS id when it has one.
  //  .bin   raw little-endian uint32 ids; the size must be a multiple of 4. `tok` may be null.
  // Every id must be < vocab_size. Errors name the file (and line or token index).
  static TokenDataset load(const std::filesystem::path& file, const Tokenizer* tok, int64_t vocab_size);
  // Already tokenized data (tests, synthetic runs). Ids are checked against vocab_size.
  static TokenDataset from_tokens(std::vector<int32_t> tokens, int64_t vocab_size,
                                  std::string source = "<memory>");

  const std::vector<int32_t>& tokens() const { return tokens_; }
  int64_t size() const { return static_cast<int64_t>(tokens_.size()); }
  int64_t documents() const { return documents_; }  // .jsonl lines; 1 for .txt and .bin
  const std::string& source() const { return source_; }

 private:
  std::vector<int32_t> tokens_;
  int64_t documents_ = 0;
  std::string source_;
};

// Tokenizes `text` in pieces of about `chunk_bytes`, cut only right after a '\n' whose next
// line starts with optional spaces/tabs and then a printable ASCII character. For byte-level BPE
// tokenizers (Qwen2, GPT-2 pre-tokenizer regexes) such a point is always a pre-token boundary,
// so the result equals tok.encode(text) while no more than a chunk's worth is in flight per
// thread. Chunks are encoded in parallel, in order. SentencePiece may differ at chunk starts.
std::vector<int32_t> encode_chunked(const Tokenizer& tok, std::string_view text,
                                    size_t chunk_bytes = size_t{1} << 20);

// A fixed, deterministic evaluation set: of the n = size / seq_len whole sequences (sequence i is
// tokens[i * seq_len, (i + 1) * seq_len), as SequenceSampler cuts them), min(n, max_sequences)
// spread evenly over the data: sequence floor(k * n / count) for k = 0..count-1, in order. Needs at
// least one sequence (an rt::Error naming the data's source, its size and seq_len).
std::vector<std::vector<int32_t>> evaluation_sequences(const TokenDataset& data, int64_t seq_len,
                                                       int64_t max_sequences);

class SequenceSampler {
 public:
  // Position in the stream of sequences: the next sequence returned is order(epoch)[index].
  struct Cursor {
    int64_t epoch = 0;
    int64_t index = 0;
    bool operator==(const Cursor&) const = default;
  };

  // Sequence i is tokens[i * seq_len, (i + 1) * seq_len); the tail that does not fill a sequence
  // is never used. Needs at least one sequence. Keeps a reference to `data`.
  SequenceSampler(const TokenDataset& data, int64_t seq_len, uint64_t seed, bool shuffle);

  int64_t num_sequences() const { return n_; }
  int64_t seq_len() const { return seq_len_; }

  // Copies the next sequence into `out` (resized to seq_len) and advances; after the last
  // sequence of an epoch the cursor moves to (epoch + 1, 0).
  void next(std::vector<int32_t>& out);
  // The index of the next sequence without advancing.
  int64_t peek_index() const;

  Cursor cursor() const { return cursor_; }
  // Continues exactly where cursor() was taken. index must be in [0, num_sequences()].
  void set_cursor(Cursor c);
  int64_t epochs_completed() const { return cursor_.epoch; }

  // Epoch e's order: identity without shuffle, else a Fisher-Yates shuffle driven by
  // std::mt19937_64(seed + e) with an unbiased bounded draw. Both are fully specified by the
  // C++ standard, so the order is the same with every compiler and standard library.
  static std::vector<int64_t> epoch_order(int64_t n, uint64_t seed, int64_t epoch, bool shuffle);

 private:
  void ensure_order() const;

  const TokenDataset* data_;
  int64_t seq_len_;
  int64_t n_;
  uint64_t seed_;
  bool shuffle_;
  Cursor cursor_;
  mutable std::vector<int64_t> order_;
  mutable int64_t order_epoch_ = -1;
};

}  // namespace rt
