// File paths given on the command line, checked before a command does its work and named by their
// flag in every error: "--json /no/such/dir/x.json: cannot create file: No such file or directory".
// A run that would compute for minutes and then fail to write its report fails at once instead.
#pragma once

#include <string>
#include <utility>

#include "rt/sdk/error.h"

namespace rt {

// An output path (--out, --json, --csv, --png): "-" (standard output) passes; otherwise the file
// must be creatable, or writable where it exists (a device, a FIFO), and not be a directory.
void check_output_path(const std::string& flag, const std::string& path);

// An input path (--data, --tokenizer): it must exist and be readable; a directory only when
// `directory_ok` (a tokenizer directory).
void check_input_path(const std::string& flag, const std::string& path, bool directory_ok);

// "FLAG PATH: message", with message's own leading "PATH: " (if any) dropped, so that the path is
// not repeated.
std::string flag_message(const std::string& flag, const std::string& path, const std::string& message);

// Runs f(); an rt::Error it throws comes back as flag_message(flag, path, what()). With an empty
// flag (the path was not given by the user but derived, e.g. the model's own tokenizer) it changes
// nothing.
template <typename F>
decltype(auto) with_flag(const std::string& flag, const std::string& path, F&& f) {
  if (flag.empty()) return std::forward<F>(f)();
  try {
    return std::forward<F>(f)();
  } catch (const Error& e) {
    throw Error(flag_message(flag, path, e.what()));
  }
}

}  // namespace rt
