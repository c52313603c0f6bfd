#include "common/text_table.h"

#include <sys/ioctl.h>
#include <unistd.h>

#include <algorithm>
#include <cstdlib>

namespace rt {

namespace {

// Display width of UTF-8 text: one column per code point (names and numbers here are ASCII).
size_t display_width(const std::string& s) {
  size_t n = 0;
  for (unsigned char c : s) n += (c & 0xC0) != 0x80;
  return n;
}

bool is_empty_cell(const std::string& s) { return s.empty() || s == "-"; }

}  // namespace

void TextTable::add_row(std::vector<std::string> cells) {
  cells.resize(columns_.size());
  rows_.push_back(std::move(cells));
}

std::string TextTable::str(int gap) const {
  std::vector<size_t> width(columns_.size(), 0);
  std::vector<bool> shown(columns_.size(), true);
  for (size_t c = 0; c < columns_.size(); ++c) {
    width[c] = display_width(columns_[c].header);
    bool any = false;
    for (const auto& r : rows_) {
      width[c] = std::max(width[c], display_width(r[c]));
      any = any || !is_empty_cell(r[c]);
    }
    shown[c] = any || !columns_[c].drop_if_empty;
  }
  std::string out;
  auto line = [&](auto cell) {
    std::string l;
    bool first = true;
    for (size_t c = 0; c < columns_.size(); ++c) {
      if (!shown[c]) continue;
      if (!first) l.append(static_cast<size_t>(gap), ' ');
      first = false;
      const std::string& s = cell(c);
      const size_t pad = width[c] - display_width(s);
      if (columns_[c].align == Align::Right) l.append(pad, ' ');
      l += s;
      if (columns_[c].align == Align::Left) l.append(pad, ' ');
    }
    while (!l.empty() && l.back() == ' ') l.pop_back();
    out += l + "\n";
  };
  line([&](size_t c) -> const std::string& { return columns_[c].header; });
  for (const auto& r : rows_) line([&](size_t c) -> const std::string& { return r[c]; });
  return out;
}

int terminal_columns(int fd) {
  winsize ws{};
  if (::ioctl(fd, TIOCGWINSZ, &ws) == 0 && ws.ws_col > 0) return ws.ws_col;
  if (const char* env = std::getenv("COLUMNS")) {
    const int n = std::atoi(env);
    if (n > 0) return n;
  }
  return 0;
}

std::string fit_to_width(const std::string& line, int width) {
  if (width <= 0 || display_width(line) <= static_cast<size_t>(width)) return line;
  if (width <= 3) return std::string(static_cast<size_t>(width), '.');
  // Keep width - 3 code points, then "...".
  size_t keep = static_cast<size_t>(width - 3), i = 0, seen = 0;
  for (; i < line.size(); ++i) {
    if ((static_cast<unsigned char>(line[i]) & 0xC0) != 0x80) {
      if (seen == keep) break;
      ++seen;
    }
  }
  return line.substr(0, i) + "...";
}

}  // namespace rt
