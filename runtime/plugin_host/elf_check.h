// Vets a shared object before it is handed to dlopen. The dynamic loader maps a library's
// PT_LOAD segments straight from the file and trusts the sizes in its headers: a truncated copy
// (an interrupted download or install) maps pages past the end of the file, and the first touch
// of one kills the process with SIGBUS inside dlopen, before any error can be reported. So every
// file the runtime dlopens (plugins given or scanned, backend modules) is first checked here:
// a 64-bit little-endian ELF, ET_DYN, for this host's machine, whose program header table, PT_LOAD
// segments, section header table and section contents all lie within the file.
#pragma once

#include <filesystem>
#include <string>

namespace rt {

// What is wrong with `path` as a shared object this process could load, in words (without the
// path); empty when nothing is. Reads the headers with std::ifstream; never maps the file.
std::string elf_shared_object_problem(const std::filesystem::path& path);

// Throws rt::Error "<path>: <problem>" when elf_shared_object_problem() finds one.
void check_elf_shared_object(const std::filesystem::path& path);

}  // namespace rt
