// lstmgrad: write a file so that readers see either the old content or the complete new content,
// never a partial file (docs/design.md, "Errors and data safety").
//
// The data goes to a temporary file in the same folder as the target, named `.<name>.tmp.<pid>`,
// which is flushed to disk (fsync) and then renamed over the target; the folder is fsynced after
// the rename so that the new name survives a crash. If anything fails the temporary file is removed
// and an InputError naming the target path is thrown. A process killed in the middle may leave the
// temporary file behind, but never a truncated target.
#pragma once
#include <cstddef>
#include <filesystem>
#include <span>
#include <string_view>

namespace lstmgrad::io {

// A file being written; it becomes visible under `path` only when commit() succeeds. Destroying an
// uncommitted AtomicFile (e.g. while an exception unwinds) removes the temporary file.
class AtomicFile {
 public:
  // Creates the temporary file next to `path`; throws InputError if that is impossible (missing
  // folder, no permission).
  explicit AtomicFile(std::filesystem::path path);
  ~AtomicFile();
  AtomicFile(const AtomicFile&) = delete;
  AtomicFile& operator=(const AtomicFile&) = delete;

  void write(std::span<const std::byte> bytes);
  void write(std::string_view text);
  // fsync, close, rename over the target, fsync the folder. Throws InputError on failure, after
  // removing the temporary file. Call at most once; no writes after it.
  void commit();

  const std::filesystem::path& path() const { return path_; }
  const std::filesystem::path& temp_path() const { return temp_; }

 private:
  void discard() noexcept;

  std::filesystem::path path_;
  std::filesystem::path temp_;
  int fd_ = -1;
};

// One-shot helpers: the whole content at once.
void write_file_atomic(const std::filesystem::path& path, std::span<const std::byte> bytes);
void write_text_atomic(const std::filesystem::path& path, std::string_view text);

}  // namespace lstmgrad::io
