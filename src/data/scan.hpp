// lstmgrad data: byte-level scanning shared by the text reader and the vocabulary (UTF-8
// validity, Python's whitespace, line ends, quoting tokens for messages). Internal header.
#pragma once
#include <cstddef>
#include <cstdint>
#include <string>
#include <string_view>

namespace lstmgrad::data::scan {

// Offset of the first invalid UTF-8 sequence in `s` (overlong forms, surrogates and code points
// above U+10FFFF are invalid, as for Python's decoder), or npos.
size_t find_invalid_utf8(std::string_view s);

// Length in bytes of the Python str.isspace() character starting at s[i] (which must be valid
// UTF-8 from i on), or 0 when s[i] does not start whitespace.
inline size_t space_length(std::string_view s, size_t i) {
  const auto c = static_cast<unsigned char>(s[i]);
  if (c < 0x80) return (c == ' ' || (c >= '\t' && c <= '\r') || (c >= 0x1c && c <= 0x1f)) ? 1 : 0;
  auto at = [&](size_t k) -> unsigned {
    return i + k < s.size() ? static_cast<unsigned char>(s[i + k]) : 0u;
  };
  if (c == 0xc2) return (at(1) == 0x85 || at(1) == 0xa0) ? 2 : 0;  // U+0085, U+00A0
  if (c == 0xe1) return (at(1) == 0x9a && at(2) == 0x80) ? 3 : 0;  // U+1680
  if (c == 0xe2) {
    const unsigned b1 = at(1), b2 = at(2);
    if (b1 == 0x80 && (b2 <= 0x8a || b2 == 0xa8 || b2 == 0xa9 || b2 == 0xaf))
      return 3;  // U+2000-U+200A, U+2028, U+2029, U+202F (b2 >= 0x80: valid continuation)
    if (b1 == 0x81 && b2 == 0x9f) return 3;  // U+205F
    return 0;
  }
  if (c == 0xe3) return (at(1) == 0x80 && at(2) == 0x80) ? 3 : 0;  // U+3000
  return 0;
}

// 1-based line number of byte offset `pos` (lines end at "\n", "\r\n" or a lone "\r").
int64_t line_of(std::string_view text, size_t pos);

// A token as it appears in a message: printable ASCII and (at word level) UTF-8 unchanged,
// control characters as \n, \t, \r or \xHH, and stray bytes >= 0x80 as \xHH.
std::string printable(std::string_view token);

// "\xHH" for a byte: the stored form of a char-level token >= 0x80.
std::string hex_escape(unsigned char c);

}  // namespace lstmgrad::data::scan
