#include "tokenizer/regex.h"

#define PCRE2_CODE_UNIT_WIDTH 8
#include <pcre2.h>

#include "rt/sdk/error.h"

namespace rt::tok {
namespace {

std::string pcre2_message(int code) {
  PCRE2_UCHAR buf[256];
  const int n = pcre2_get_error_message(code, buf, sizeof(buf));
  return n < 0 ? "PCRE2 error " + std::to_string(code) : std::string(reinterpret_cast<char*>(buf));
}

// Per-thread JIT stack: PCRE2's default 32 KiB machine stack can overflow on long inputs, so
// each thread gets a larger one (reserved lazily by sljit, grown up to 16 MiB).
struct JitContext {
  pcre2_jit_stack* stack = nullptr;
  pcre2_match_context* ctx = nullptr;
  JitContext() {
    stack = pcre2_jit_stack_create(64 * 1024, 16 * 1024 * 1024, nullptr);
    ctx = pcre2_match_context_create(nullptr);
    if (ctx && stack) pcre2_jit_stack_assign(ctx, nullptr, stack);
  }
  ~JitContext() {
    if (ctx) pcre2_match_context_free(ctx);
    if (stack) pcre2_jit_stack_free(stack);
  }
};

pcre2_match_context* thread_match_context() {
  thread_local JitContext jc;
  return jc.ctx;
}

struct MatchData {
  pcre2_match_data* md;
  explicit MatchData(const pcre2_code* code) : md(pcre2_match_data_create_from_pattern(code, nullptr)) {
    RT_CHECK(md != nullptr, "out of memory allocating PCRE2 match data");
  }
  ~MatchData() { pcre2_match_data_free(md); }
};

// tokenizer.json patterns are Oniguruma patterns (HF compiles them with onig). Where the two
// dialects disagree on an escape that such patterns use, rewrite it to what Oniguruma means:
//  - \s / \S: Oniguruma uses the Unicode White_Space property; PCRE2's UCP \s also matches
//    U+180E MONGOLIAN VOWEL SEPARATOR (no longer White_Space since Unicode 6.3), which changed
//    ids against HF on text containing it.
//  - \h / \H: a hex digit in Oniguruma, horizontal space in PCRE2.
// Property escapes work inside character classes too, so no class parsing is needed.
std::string onig_to_pcre2(const std::string& p) {
  std::string out;
  out.reserve(p.size() + 16);
  for (size_t i = 0; i < p.size(); ++i) {
    if (p[i] != '\\' || i + 1 == p.size()) {
      out += p[i];
      continue;
    }
    const char c = p[++i];
    if (c == 's') out += "\\p{White_Space}";
    else if (c == 'S') out += "\\P{White_Space}";
    else if (c == 'h') out += "\\p{AHex}";
    else if (c == 'H') out += "\\P{AHex}";
    else if (c == 'Q') {  // \Q...\E is literal text: copy it untouched
      const size_t end = p.find("\\E", i + 1);
      const size_t stop = end == std::string::npos ? p.size() : end + 2;
      out += p.substr(i - 1, stop - (i - 1));
      i = stop - 1;
    } else {
      out += '\\';
      out += c;
    }
  }
  return out;
}

pcre2_code* compile(const std::string& pattern, uint32_t opts) {
  int err = 0;
  PCRE2_SIZE offset = 0;
  pcre2_code* code = pcre2_compile(reinterpret_cast<PCRE2_SPTR>(pattern.data()), pattern.size(),
                                   opts, &err, &offset, nullptr);
  if (!code) fail("regex '", pattern, "' does not compile: ", pcre2_message(err), " at offset ", offset);
  return code;
}

}  // namespace

Regex::Regex(const std::string& pattern, bool literal) : pattern_(pattern) {
  // PCRE2_LITERAL refuses PCRE2_UCP (it only affects classes, which a literal has none of).
  const uint32_t opts = literal ? PCRE2_UTF | PCRE2_LITERAL : PCRE2_UTF | PCRE2_UCP;
  // The pattern as written is compiled first so that error offsets point into it.
  code_ = compile(pattern, opts);
  if (!literal) {
    const std::string translated = onig_to_pcre2(pattern);
    if (translated != pattern) {
      pcre2_code_free(code_);
      code_ = nullptr;
      code_ = compile(translated, opts);
    }
  }
  // JIT is an optimization only: without it (unsupported CPU, or a pattern JIT rejects) the
  // interpreter gives the same matches.
  jit_ = pcre2_jit_compile(code_, PCRE2_JIT_COMPLETE) == 0;
}

Regex::~Regex() { pcre2_code_free(code_); }

void Regex::find_all(std::string_view text, std::vector<std::pair<size_t, size_t>>& out) const {
  MatchData data(code_);
  auto subject = reinterpret_cast<PCRE2_SPTR>(text.data());
  pcre2_match_context* mctx = jit_ ? thread_match_context() : nullptr;
  size_t pos = 0;
  bool have_last = false;
  size_t last_end = 0;
  while (pos <= text.size()) {
    // The text was made valid UTF-8 up front, so PCRE2's own check is skipped.
    int rc = pcre2_match(code_, subject, text.size(), pos, PCRE2_NO_UTF_CHECK, data.md, mctx);
    if (rc == PCRE2_ERROR_JIT_STACKLIMIT) {  // retry in the interpreter, which uses the heap
      rc = pcre2_match(code_, subject, text.size(), pos, PCRE2_NO_UTF_CHECK | PCRE2_NO_JIT,
                       data.md, nullptr);
    }
    if (rc == PCRE2_ERROR_NOMATCH) break;
    if (rc < 0) fail("regex '", pattern_, "' failed on the input: ", pcre2_message(rc));
    const PCRE2_SIZE* ov = pcre2_get_ovector_pointer(data.md);
    const size_t s = ov[0], e = ov[1];
    if (s == e && have_last && last_end == e) {
      // Empty match where the previous one ended: step over one character and search again.
      if (pos >= text.size()) break;
      size_t step = 1;
      while (pos + step < text.size() && (static_cast<unsigned char>(text[pos + step]) & 0xC0) == 0x80) ++step;
      pos += step;
      continue;
    }
    out.emplace_back(s, e);
    have_last = true;
    last_end = e;
    pos = e;
  }
}

}  // namespace rt::tok
