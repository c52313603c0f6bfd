// Files that survive a crash: written in full and fsync'ed, and published under their final name
// only by a rename (whose directory is fsync'ed too). Checkpoints, exported models, .npy outputs
// and the metrics log all go through here. Every failure is an rt::Error naming the path.
#pragma once

#include <cstddef>
#include <filesystem>
#include <string_view>
#include <utility>
#include <vector>

namespace rt {

// (pointer, size) pieces written one after another.
using FilePieces = std::vector<std::pair<const void*, size_t>>;

// Creates (or truncates) path, writes the pieces, fsyncs and closes it.
void write_file_durable(const std::filesystem::path& path, const FilePieces& pieces);
// fsync of a directory: makes creates and renames inside it durable.
void fsync_dir(const std::filesystem::path& dir);
void rename_or_fail(const std::filesystem::path& from, const std::filesystem::path& to);

// path appears complete or not at all: a unique temporary file in the same directory, written
// durably, renamed over path, directory synced. The temporary is removed on failure.
// Only a regular file (or nothing) is replaced that way. A symbolic link is followed: its final
// target is written atomically in the target's directory and the link stays a link. An existing
// device, FIFO or socket is opened for writing and written in place (a FIFO blocks until a reader
// comes). "-" means standard output (fd 1, left open). Every error, ENOSPC included, is an
// rt::Error naming the path and strerror.
void write_file_atomic(const std::filesystem::path& path, const FilePieces& pieces);
void write_file_atomic(const std::filesystem::path& path, std::string_view text);
// True for "-", the path that means standard output.
bool is_stdout_path(const std::filesystem::path& path);

}  // namespace rt
