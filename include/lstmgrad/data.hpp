// lstmgrad: text corpora, the vocabulary and the batcher (docs/design.md "Data flow": text ->
// vocabulary -> batcher).
//
// Tokenization follows the two programs whose published numbers we reproduce:
// - word level (pytorch/examples word_language_model data.py, Zaremba's PTB reader): each line
//   gives `line.split() + ['<eos>']`, so a blank line still gives one <eos>. Lines end at "\n",
//   "\r\n" or a lone "\r" (Python's universal newlines); a last line without a line end counts.
//   Words are split at Python's str.split() whitespace (ASCII whitespace, \x1c-\x1f, and the
//   Unicode spaces U+0085, U+00A0, U+1680, U+2000-U+200A, U+2028, U+2029, U+202F, U+205F,
//   U+3000). The text must be UTF-8. The vocabulary is in order of first appearance.
// - char level (char-rnn): every byte is a token; the vocabulary is sorted by byte value. Any
//   byte but NUL is accepted (UTF-8 multi-byte characters are several tokens).
// A NUL byte, or invalid UTF-8 at word level, is reported as "looks binary".
//
// Size letters: N tokens in a stream, B streams (batch), T steps in a window.
#pragma once
#include <array>
#include <cstdint>
#include <filesystem>
#include <functional>
#include <span>
#include <string>
#include <string_view>
#include <unordered_map>
#include <vector>

namespace lstmgrad::data {

enum class Level { chars, words };

// "char" -> chars, "word" -> words; anything else throws InputError naming `flag`.
Level parse_level(std::string_view s, std::string_view flag = "--level");
// "char" or "word".
const char* level_name(Level level);

inline constexpr std::string_view kEos = "<eos>";
inline constexpr std::string_view kUnk = "<unk>";

// Token <-> id. Ids are 0..size()-1 in the order the tokens were added.
class Vocabulary {
 public:
  explicit Vocabulary(Level level = Level::words) : level_(level) {}

  // From a stored list (a model file's "lstmgrad.vocab"), the inverse of words(). Entry i gets
  // id i. Throws InputError naming `where` and the entry: an empty entry, a duplicate, at word
  // level whitespace or invalid UTF-8 inside an entry, at char level an entry that is not one
  // byte (or its "\xHH" form).
  static Vocabulary from_words(Level level, const std::vector<std::string>& words,
                               std::string_view where = "vocabulary");

  Level level() const { return level_; }
  int64_t size() const { return static_cast<int64_t>(words_.size()); }

  // The id of `w`; -1 when absent (no <unk> fallback).
  int64_t find(std::string_view w) const;
  // The id of `w`; the id of <unk> when absent and the vocabulary has <unk>; otherwise throws
  // InputError "unknown word 'foo' (not in the vocabulary, which has no <unk>)".
  int64_t id(std::string_view w) const;
  bool contains(std::string_view w) const { return find(w) >= 0; }
  // The id of <unk> / <eos>, -1 when absent (always -1 at char level, whose tokens are bytes).
  int64_t unk() const { return unk_; }
  int64_t eos() const { return eos_; }

  // The token with id `id` (0 <= id < size(), unchecked): a word, or a one-byte string at char
  // level.
  const std::string& word(int64_t id) const { return words_[static_cast<size_t>(id)]; }
  // Every token in id order, in the form that goes into a model file's JSON metadata: as word()
  // except that at char level a byte >= 0x80 (not UTF-8 on its own, which JSON cannot hold) is
  // written as the four characters "\xHH". from_words() reads it back.
  std::vector<std::string> words() const;

  // Adds `w` if new; returns its id either way. std::invalid_argument if `w` is empty or, at char
  // level, not one byte.
  int64_t add(std::string_view w);

 private:
  struct Hash {
    using is_transparent = void;
    size_t operator()(std::string_view s) const { return std::hash<std::string_view>{}(s); }
  };

  Level level_;
  std::vector<std::string> words_;
  std::unordered_map<std::string, int64_t, Hash, std::equal_to<>> index_;
  std::array<int32_t, 256> byte_id_ = filled(-1);  // char level: byte -> id
  int64_t unk_ = -1, eos_ = -1;

  static std::array<int32_t, 256> filled(int32_t v) {
    std::array<int32_t, 256> a;
    a.fill(v);
    return a;
  }
};

// A training file's vocabulary and its tokens as ids.
struct TrainingText {
  Vocabulary vocab;
  std::vector<int64_t> ids;  // [N]
};

// Reads a training file and builds the vocabulary from it (word level: first appearance, <eos>
// included; char level: sorted by byte value). InputError: missing or unreadable file, "empty
// file", "looks binary" (with the line).
TrainingText read_training_text(const std::filesystem::path& path, Level level);
// Reads a file with a fixed vocabulary (valid/test, or a model's vocabulary; the level is the
// vocabulary's). An unknown token maps to <unk> when the vocabulary has it, else InputError
// "valid.txt:12: unknown word 'foo' (not in the training vocabulary, which has no <unk>)".
std::vector<int64_t> read_text(const std::filesystem::path& path, const Vocabulary& vocab);

// The same on text in memory; `where` names the source in messages (a file name, "--prime").
// Empty text gives no tokens here (only files must not be empty).
TrainingText tokenize_training(std::string_view text, Level level, std::string_view where);
std::vector<int64_t> encode(std::string_view text, const Vocabulary& vocab, std::string_view where);
// Ids back to text: char level concatenates the bytes; word level joins words with single
// spaces and writes <eos> as a line end. Ids must be valid (unchecked).
std::string decode(std::span<const int64_t> ids, const Vocabulary& vocab);

// Cuts a token stream into B contiguous streams and walks windows of `seq` steps along them
// (word_language_model's batchify + get_batch; Zaremba's ptb_iterator):
// - the N tokens become B streams of n = floor(N/B) tokens (the remainder is dropped); stream b
//   holds tokens [b*n, (b+1)*n);
// - window k (0-based) has T = min(seq, n-1 - k*seq) steps; input row t holds every stream's
//   token at position k*seq + t, target row t the token after it (position k*seq + t + 1);
// - windows per epoch: ceil((n-1)/seq), or floor((n-1)/seq) with drop_last (every window then
//   has T = seq, as in Zaremba's reader).
// Layout: time-major [T,B] int64, row t = the B streams at step t (Batch::tokens / target).
// Consecutive windows continue each stream, so the LSTM state carries across them.
class Batcher {
 public:
  // `where` names the source in messages. Throws InputError when B < 1, seq < 1, a stream is
  // shorter than 2 tokens ("train.txt: 37 tokens make streams of 1 token for batch 20; need at
  // least 2") or, with drop_last, shorter than one full window.
  Batcher(std::span<const int64_t> ids, int64_t B, int64_t seq, bool drop_last = false,
          std::string where = "text");
  // The checks of the constructor on N tokens without making the windows: the windows per epoch.
  static int64_t check(int64_t N, int64_t B, int64_t seq, bool drop_last, const std::string& where);

  int64_t B() const { return B_; }
  int64_t seq() const { return seq_; }
  bool drop_last() const { return drop_last_; }
  int64_t stream_length() const { return n_; }  // n = floor(N/B)
  int64_t windows() const { return windows_; }  // per epoch
  // Targets scored in one epoch: the sum over windows of T*B.
  int64_t predictions() const;
  // T of window k (0 <= k < windows(), unchecked).
  int64_t steps(int64_t k) const;

  // Fills `inputs` and `targets` with window k as [T,B] and returns T. The vectors are resized,
  // which does not reallocate when their capacity suffices (B*seq). Throws std::out_of_range
  // unless 0 <= k < windows().
  int64_t window(int64_t k, std::vector<int64_t>& inputs, std::vector<int64_t>& targets) const;
  // Variable-length windows (train --bptt-jitter): the window of up to `len` steps starting at
  // stream position `pos`, T = min(len, stream_length() - 1 - pos), filled and returned as
  // window() does. Throws std::out_of_range unless 0 <= pos < stream_length() - 1 and len >= 1.
  int64_t window_at(int64_t pos, int64_t len, std::vector<int64_t>& inputs,
                    std::vector<int64_t>& targets) const;

  // The cursor through one epoch. next() fills the window at position() and advances; it returns
  // T, or 0 (leaving the vectors alone) once the epoch's windows are done. rewind() starts the
  // next epoch. For exact resume save position() with the checkpoint (and the LSTM state carried
  // into that window) and seek() to it.
  int64_t next(std::vector<int64_t>& inputs, std::vector<int64_t>& targets);
  int64_t position() const { return pos_; }
  // 0 <= k <= windows() (windows() = the epoch is done); InputError naming where otherwise.
  void seek(int64_t k);
  void rewind() { pos_ = 0; }

 private:
  std::vector<int64_t> data_;  // [n, B] time-major: data_[p*B + b] = stream b at position p
  int64_t B_, seq_, n_ = 0, windows_ = 0, pos_ = 0;
  bool drop_last_;
  std::string where_;
};

}  // namespace lstmgrad::data
