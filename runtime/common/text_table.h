// Plain-text output for a terminal: tables whose columns are as wide as their widest cell (a long
// plugin name widens its column instead of shifting the rest of the row), and status lines cut to
// the terminal's width (a line longer than the terminal wraps, and "\r" then redraws only its last
// part).
#pragma once

#include <string>
#include <vector>

namespace rt {

class TextTable {
 public:
  enum class Align { Left, Right };
  struct Column {
    std::string header;
    Align align = Align::Right;
    // Left out of the output when no row has a value in it (every cell empty or "-"): e.g. the
    // cuDNN column on the CPU.
    bool drop_if_empty = false;
  };

  explicit TextTable(std::vector<Column> columns) : columns_(std::move(columns)) {}
  // One cell per column (missing trailing cells are empty).
  void add_row(std::vector<std::string> cells);
  // Header line and rows, columns separated by `gap` spaces, each line ending in '\n', no trailing
  // blanks.
  std::string str(int gap = 2) const;
  size_t rows() const { return rows_.size(); }

 private:
  std::vector<Column> columns_;
  std::vector<std::vector<std::string>> rows_;
};

// Columns of the terminal on file descriptor fd (TIOCGWINSZ), else $COLUMNS, else 0 (unknown).
int terminal_columns(int fd);
// `line` cut to at most `width` characters (UTF-8 aware; no cut for width <= 0), ending in "..."
// when cut.
std::string fit_to_width(const std::string& line, int width);

}  // namespace rt
