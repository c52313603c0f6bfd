// NumPy .npy files: write float32 arrays (atomically) and read the few dtypes the tests and tools
// exchange with Python. Format: https://numpy.org/doc/stable/reference/generated/numpy.lib.format.html
#pragma once

#include <cstdint>
#include <filesystem>
#include <string>
#include <vector>

namespace rt {

struct NpyArray {
  std::vector<int64_t> shape;  // empty for a 0-d array
  std::string descr;           // as stored: "<f4", "<f8", "<i4", "<i8"
  std::vector<float> data;     // every dtype, converted to float32 (C order)
  std::vector<int64_t> ints;   // integer dtypes only: the exact values (C order); empty otherwise
  int64_t numel() const;
};

// Writes a little-endian float32, C-order .npy (format 1.0, or 2.0 when the header needs it).
// The file appears complete or not at all: it is written to a temporary file in the same
// directory, fsync'ed, then renamed over `path` (see write_file_atomic: a symlink is followed, a
// device or FIFO is written in place, "-" is standard output). Fails with rt::Error naming the path.
void write_npy_f32(const std::filesystem::path& path, const float* data, std::vector<int64_t> shape);

// Reads a .npy of '<f4', '<f8', '<i4' or '<i8' ('=' is taken as '<': hosts are little-endian),
// C order, format 1.0 / 2.0 / 3.0. Fails with rt::Error naming the
// file and what is wrong (bad magic, truncated header or data, Fortran order, unsupported dtype...).
NpyArray read_npy(const std::filesystem::path& path);

}  // namespace rt
