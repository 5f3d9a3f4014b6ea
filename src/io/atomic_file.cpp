#include "lstmgrad/atomic_file.hpp"

#include <fcntl.h>
#include <fmt/format.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cerrno>
#include <string>
#include <system_error>
#include <utility>

#include "lstmgrad/error.hpp"

namespace lstmgrad::io {
namespace {

std::string errno_text(int err) {
  return std::generic_category().message(err);
}

[[noreturn]] void fail(const std::filesystem::path& path, std::string_view what, int err) {
  throw InputError(fmt::format("{}: {}: {}", path.string(), what, errno_text(err)));
}

std::filesystem::path folder_of(const std::filesystem::path& path) {
  std::filesystem::path dir = path.parent_path();
  return dir.empty() ? std::filesystem::path(".") : dir;
}

// `.<name>.tmp.<pid>` beside the target; a numbered suffix only if that name is already taken
// (a leftover of a killed process that had the same pid, or a second writer in this process).
int open_temp(const std::filesystem::path& path, std::filesystem::path& temp) {
  const std::string base =
      fmt::format(".{}.tmp.{}", path.filename().string(), static_cast<long>(::getpid()));
  for (int k = 0; k < 100; ++k) {
    temp = folder_of(path) / (k == 0 ? base : fmt::format("{}.{}", base, k));
    const int fd = ::open(temp.c_str(), O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, 0666);
    if (fd >= 0) return fd;
    if (errno != EEXIST) fail(path, fmt::format("cannot create {}", temp.string()), errno);
  }
  fail(path, fmt::format("cannot create a temporary file beside it ({}*)", base), EEXIST);
}

void write_all(int fd, const std::byte* data, size_t n, const std::filesystem::path& path) {
  while (n > 0) {
    const ssize_t w = ::write(fd, data, n);
    if (w < 0 && errno == EINTR) continue;
    if (w < 0) fail(path, "write failed", errno);
    data += w;
    n -= static_cast<size_t>(w);
  }
}

// Best effort: some file systems refuse fsync on a folder (EINVAL); the rename has already
// happened, so the target holds the complete new content either way.
void sync_folder(const std::filesystem::path& dir) noexcept {
  const int fd = ::open(dir.c_str(), O_RDONLY | O_DIRECTORY | O_CLOEXEC);
  if (fd < 0) return;
  ::fsync(fd);
  ::close(fd);
}

}  // namespace

AtomicFile::AtomicFile(std::filesystem::path path) : path_(std::move(path)) {
  if (path_.filename().empty()) {
    throw InputError(fmt::format("{}: not a file name", path_.string()));
  }
  fd_ = open_temp(path_, temp_);
}

AtomicFile::~AtomicFile() {
  discard();
}

void AtomicFile::discard() noexcept {
  if (fd_ < 0) return;
  ::close(fd_);
  fd_ = -1;
  std::error_code ignored;
  std::filesystem::remove(temp_, ignored);
}

void AtomicFile::write(std::span<const std::byte> bytes) {
  if (fd_ < 0) throw InputError(fmt::format("{}: write after commit", path_.string()));
  try {
    write_all(fd_, bytes.data(), bytes.size(), path_);
  } catch (...) {
    discard();
    throw;
  }
}

void AtomicFile::write(std::string_view text) {
  write(std::as_bytes(std::span(text)));
}

void AtomicFile::commit() {
  if (fd_ < 0) throw InputError(fmt::format("{}: commit twice", path_.string()));
  if (::fsync(fd_) != 0) {
    const int err = errno;
    discard();
    fail(path_, "fsync failed", err);
  }
  const int fd = std::exchange(fd_, -1);
  if (::close(fd) != 0) {
    const int err = errno;
    std::error_code ignored;
    std::filesystem::remove(temp_, ignored);
    fail(path_, "close failed", err);
  }
  if (::rename(temp_.c_str(), path_.c_str()) != 0) {
    const int err = errno;
    std::error_code ignored;
    std::filesystem::remove(temp_, ignored);
    fail(path_, fmt::format("cannot rename {} over it", temp_.filename().string()), err);
  }
  sync_folder(folder_of(path_));
}

void write_file_atomic(const std::filesystem::path& path, std::span<const std::byte> bytes) {
  AtomicFile file(path);
  file.write(bytes);
  file.commit();
}

void write_text_atomic(const std::filesystem::path& path, std::string_view text) {
  write_file_atomic(path, std::as_bytes(std::span(text)));
}

}  // namespace lstmgrad::io
