// Reading text files and turning them into token ids (word and char level; rules in data.hpp).
#include <fcntl.h>
#include <fmt/format.h>
#include <sys/stat.h>
#include <unistd.h>

#include <array>
#include <cerrno>
#include <cstring>
#include <system_error>

#include "data/scan.hpp"
#include "lstmgrad/data.hpp"
#include "lstmgrad/error.hpp"

namespace lstmgrad::data {
namespace {

[[noreturn]] void fail_errno(const std::filesystem::path& path, std::string_view what, int err) {
  throw InputError(
      fmt::format("{}: {}: {}", path.string(), what, std::generic_category().message(err)));
}

// The whole file in one read (PTB train is 5 MB). Rejects folders and empty files.
std::string read_file(const std::filesystem::path& path) {
  const int fd = ::open(path.c_str(), O_RDONLY | O_CLOEXEC);
  if (fd < 0) fail_errno(path, "cannot open", errno);
  struct stat st {};
  if (::fstat(fd, &st) != 0) {
    const int err = errno;
    ::close(fd);
    fail_errno(path, "cannot stat", err);
  }
  if (S_ISDIR(st.st_mode)) {
    ::close(fd);
    throw InputError(fmt::format("{}: is a directory, expected a text file", path.string()));
  }
  std::string text;
  text.resize(S_ISREG(st.st_mode) ? static_cast<size_t>(st.st_size) : 0);
  size_t got = 0;
  for (;;) {
    if (got == text.size()) text.resize(text.size() < 4096 ? 4096 : 2 * text.size());
    const ssize_t r = ::read(fd, text.data() + got, text.size() - got);
    if (r < 0 && errno == EINTR) continue;
    if (r < 0) {
      const int err = errno;
      ::close(fd);
      fail_errno(path, "read failed", err);
    }
    if (r == 0) break;
    got += static_cast<size_t>(r);
  }
  ::close(fd);
  text.resize(got);
  if (text.empty()) throw InputError(fmt::format("{}: empty file", path.string()));
  return text;
}

// NUL anywhere, or invalid UTF-8 at word level: not a text file for this level.
void check_text(std::string_view text, Level level, std::string_view where) {
  if (const void* z = std::memchr(text.data(), 0, text.size())) {
    const auto pos = static_cast<size_t>(static_cast<const char*>(z) - text.data());
    throw InputError(fmt::format("{}:{}: NUL byte at offset {} (looks binary)", where,
                                 scan::line_of(text, pos), pos));
  }
  if (level == Level::words) {
    const size_t pos = scan::find_invalid_utf8(text);
    if (pos != std::string_view::npos)
      throw InputError(fmt::format(
          "{}:{}: invalid UTF-8 at offset {} (looks binary; word level reads UTF-8 text, char "
          "level reads any bytes)",
          where, scan::line_of(text, pos), pos));
  }
}

// Calls f(word, line, false) for each word of each line and f(kEos, line, true) at the end of
// each line
// (Python's `line.split() + ['<eos>']` over the file's lines). `text` is valid UTF-8.
template <class F>
void for_each_word(std::string_view text, F&& f) {
  const size_t n = text.size();
  size_t i = 0;
  int64_t line = 1;
  while (i < n) {  // one line per pass; a line that starts before the end is never empty
    size_t start = std::string_view::npos;
    bool ended = false;
    while (i < n && !ended) {
      const char c = text[i];
      size_t len = 0;
      if (c == '\n' || c == '\r') {
        ended = true;
        len = (c == '\r' && i + 1 < n && text[i + 1] == '\n') ? 2 : 1;
      } else {
        len = scan::space_length(text, i);
      }
      if (len == 0) {  // part of a word
        if (start == std::string_view::npos) start = i;
        ++i;
        continue;
      }
      if (start != std::string_view::npos) f(text.substr(start, i - start), line, false);
      start = std::string_view::npos;
      i += len;
    }
    if (start != std::string_view::npos) f(text.substr(start), line, false);
    f(kEos, line, true);
    ++line;
  }
}

[[noreturn]] void fail_unknown(std::string_view where, int64_t line, Level level,
                               std::string_view token) {
  if (level == Level::chars)
    throw InputError(fmt::format(
        "{}:{}: unknown character '{}' (byte 0x{:02x}; not in the training vocabulary, which has "
        "no {})",
        where, line, scan::printable(token),
        static_cast<unsigned>(static_cast<unsigned char>(token[0])), kUnk));
  if (token == kEos)
    throw InputError(fmt::format(
        "{}:{}: the vocabulary has no {} (word level ends each line with it)", where, line, kEos));
  throw InputError(
      fmt::format("{}:{}: unknown word '{}' (not in the training vocabulary, which has no {})",
                  where, line, scan::printable(token), kUnk));
}

}  // namespace

TrainingText tokenize_training(std::string_view text, Level level, std::string_view where) {
  check_text(text, level, where);
  TrainingText out{Vocabulary(level), {}};
  if (level == Level::chars) {
    std::array<bool, 256> seen{};
    for (const char c : text) seen[static_cast<unsigned char>(c)] = true;
    std::array<int64_t, 256> id{};
    for (int b = 0; b < 256; ++b)  // sorted by byte value, as char-rnn
      if (seen[b]) id[b] = out.vocab.add(std::string(1, static_cast<char>(b)));
    out.ids.resize(text.size());
    for (size_t k = 0; k < text.size(); ++k) out.ids[k] = id[static_cast<unsigned char>(text[k])];
    return out;
  }
  out.ids.reserve(text.size() / 4);
  for_each_word(text,
                [&](std::string_view w, int64_t, bool) { out.ids.push_back(out.vocab.add(w)); });
  return out;
}

std::vector<int64_t> encode(std::string_view text, const Vocabulary& vocab,
                            std::string_view where) {
  const Level level = vocab.level();
  check_text(text, level, where);
  std::vector<int64_t> ids;
  if (level == Level::chars) {
    ids.resize(text.size());
    for (size_t k = 0; k < text.size(); ++k) {
      ids[k] = vocab.find(text.substr(k, 1));
      if (ids[k] < 0) fail_unknown(where, scan::line_of(text, k), level, text.substr(k, 1));
    }
    return ids;
  }
  ids.reserve(text.size() / 4);
  const int64_t unk = vocab.unk();
  for_each_word(text, [&](std::string_view w, int64_t line, bool eol) {
    int64_t k = eol ? vocab.eos() : vocab.find(w);
    if (k < 0 && !eol) k = unk;
    if (k < 0) fail_unknown(where, line, level, w);
    ids.push_back(k);
  });
  return ids;
}

TrainingText read_training_text(const std::filesystem::path& path, Level level) {
  return tokenize_training(read_file(path), level, path.string());
}

std::vector<int64_t> read_text(const std::filesystem::path& path, const Vocabulary& vocab) {
  return encode(read_file(path), vocab, path.string());
}

std::string decode(std::span<const int64_t> ids, const Vocabulary& vocab) {
  std::string out;
  if (vocab.level() == Level::chars) {
    out.reserve(ids.size());
    for (const int64_t k : ids) out += vocab.word(k);
    return out;
  }
  bool line_start = true;
  for (const int64_t k : ids) {
    if (k == vocab.eos()) {
      out += '\n';
      line_start = true;
      continue;
    }
    if (!line_start) out += ' ';
    out += vocab.word(k);
    line_start = false;
  }
  return out;
}

}  // namespace lstmgrad::data
