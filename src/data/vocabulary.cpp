// The vocabulary: token <-> id, and its stored form (a model file's "lstmgrad.vocab").
#include <fmt/format.h>

#include <stdexcept>

#include "data/scan.hpp"
#include "lstmgrad/data.hpp"
#include "lstmgrad/error.hpp"

namespace lstmgrad::data {

Level parse_level(std::string_view s, std::string_view flag) {
  if (s == "char") return Level::chars;
  if (s == "word") return Level::words;
  throw InputError(
      fmt::format("{}: expected 'char' or 'word', got '{}'", flag, scan::printable(s)));
}

const char* level_name(Level level) {
  return level == Level::chars ? "char" : "word";
}

int64_t Vocabulary::find(std::string_view w) const {
  if (level_ == Level::chars)
    return w.size() == 1 ? byte_id_[static_cast<unsigned char>(w[0])] : -1;
  const auto it = index_.find(w);
  return it == index_.end() ? -1 : it->second;
}

int64_t Vocabulary::id(std::string_view w) const {
  const int64_t k = find(w);
  if (k >= 0) return k;
  if (unk_ >= 0) return unk_;
  throw InputError(fmt::format("unknown {} '{}' (not in the vocabulary, which has no {})",
                               level_ == Level::chars ? "character" : "word", scan::printable(w),
                               kUnk));
}

int64_t Vocabulary::add(std::string_view w) {
  if (w.empty() || (level_ == Level::chars && w.size() != 1))
    throw std::invalid_argument(fmt::format("Vocabulary::add: '{}' is not a {}-level token",
                                            scan::printable(w), level_name(level_)));
  const int64_t known = find(w);
  if (known >= 0) return known;
  const auto k = static_cast<int64_t>(words_.size());
  words_.emplace_back(w);
  if (level_ == Level::chars) {
    byte_id_[static_cast<unsigned char>(w[0])] = static_cast<int32_t>(k);
  } else {
    index_.emplace(words_.back(), k);
    if (w == kUnk) unk_ = k;
    if (w == kEos) eos_ = k;
  }
  return k;
}

std::vector<std::string> Vocabulary::words() const {
  if (level_ == Level::words) return words_;
  std::vector<std::string> out;
  out.reserve(words_.size());
  for (const std::string& w : words_) {
    const auto c = static_cast<unsigned char>(w[0]);
    out.push_back(c >= 0x80 ? scan::hex_escape(c) : w);
  }
  return out;
}

namespace {

int hex_digit(char c) {
  if (c >= '0' && c <= '9') return c - '0';
  if (c >= 'a' && c <= 'f') return c - 'a' + 10;
  if (c >= 'A' && c <= 'F') return c - 'A' + 10;
  return -1;
}

// A stored char-level entry: one byte, or "\xHH". Returns -1 when it is neither.
int stored_byte(std::string_view e) {
  if (e.size() == 1) return static_cast<unsigned char>(e[0]);
  if (e.size() == 4 && e[0] == '\\' && e[1] == 'x' && hex_digit(e[2]) >= 0 && hex_digit(e[3]) >= 0)
    return hex_digit(e[2]) * 16 + hex_digit(e[3]);
  return -1;
}

void check_word_entry(std::string_view where, size_t i, std::string_view e) {
  if (scan::find_invalid_utf8(e) != std::string_view::npos)
    throw InputError(
        fmt::format("{}: entry {} '{}' is not valid UTF-8", where, i, scan::printable(e)));
  for (size_t k = 0; k < e.size(); ++k)
    if (scan::space_length(e, k) > 0)
      throw InputError(fmt::format("{}: entry {} '{}' contains whitespace (a word never does)",
                                   where, i, scan::printable(e)));
}

}  // namespace

Vocabulary Vocabulary::from_words(Level level, const std::vector<std::string>& words,
                                  std::string_view where) {
  Vocabulary v(level);
  for (size_t i = 0; i < words.size(); ++i) {
    const std::string& e = words[i];
    if (e.empty()) throw InputError(fmt::format("{}: entry {} is empty", where, i));
    std::string token = e;
    if (level == Level::chars) {
      const int b = stored_byte(e);
      if (b < 0)
        throw InputError(fmt::format(
            "{}: entry {} '{}' is not one character (a char-level vocabulary holds single bytes)",
            where, i, scan::printable(e)));
      token = std::string(1, static_cast<char>(b));
    } else {
      check_word_entry(where, i, e);
    }
    const int64_t before = v.find(token);
    if (before >= 0)
      throw InputError(
          fmt::format("{}: entry {} '{}' repeats entry {}", where, i, scan::printable(e), before));
    v.add(token);
  }
  return v;
}

}  // namespace lstmgrad::data
