// Text corpora, the vocabulary and the batcher: tokenization as word_language_model / char-rnn
// do it, every error message, and the batcher's streams and windows checked by reconstruction.
#include <gtest/gtest.h>
#include <unistd.h>

#include <algorithm>
#include <chrono>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <functional>
#include <stdexcept>
#include <string>
#include <vector>

#include "lstmgrad/data.hpp"
#include "lstmgrad/error.hpp"
#include "temp_dir.hpp"

namespace fs = std::filesystem;
using lstmgrad::InputError;
using namespace lstmgrad::data;
using namespace std::string_literals;

using lstmgrad::test::TempDir;

namespace {

std::vector<std::string> tokens_of(const TrainingText& t) {
  std::vector<std::string> out;
  for (const int64_t k : t.ids) out.push_back(t.vocab.word(k));
  return out;
}

// Runs `f` and checks that it throws InputError, on one line, containing every `parts`.
void expect_input_error(const std::function<void()>& f, const std::vector<std::string>& parts) {
  try {
    f();
    ADD_FAILURE() << "expected InputError containing '" << parts.front() << "'";
  } catch (const InputError& e) {
    const std::string msg = e.what();
    EXPECT_EQ(msg.find('\n'), std::string::npos) << "message is not one line: " << msg;
    for (const std::string& part : parts)
      EXPECT_NE(msg.find(part), std::string::npos) << "'" << part << "' missing from: " << msg;
  }
}

std::vector<int64_t> iota_ids(int64_t N) {
  std::vector<int64_t> v(static_cast<size_t>(N));
  for (int64_t k = 0; k < N; ++k) v[static_cast<size_t>(k)] = 1000 + k;
  return v;
}

}  // namespace

TEST(Data, WordTokensBlankLinesAndSpaces) {
  // Python: [w for line in f for w in line.split() + ['<eos>']]
  const TrainingText t = tokenize_training("a  b\n\n  c a\t\n \n", Level::words, "t.txt");
  const std::vector<std::string> want = {"a", "b", "<eos>", "<eos>", "c", "a", "<eos>", "<eos>"};
  EXPECT_EQ(tokens_of(t), want);
  // First appearance: a, b, <eos>, c.
  EXPECT_EQ(t.vocab.words(), (std::vector<std::string>{"a", "b", "<eos>", "c"}));
  EXPECT_EQ(t.vocab.eos(), 2);
  EXPECT_EQ(t.vocab.unk(), -1);
  EXPECT_EQ(std::count(t.ids.begin(), t.ids.end(), t.vocab.eos()), 4);  // one per line
}

TEST(Data, WordLineEndsAndUnicodeSpaces) {
  // A last line without "\n" still ends with <eos>; "\r\n" and a lone "\r" end lines (universal
  // newlines); \v, \f and U+00A0 / U+2003 / U+3000 split words as Python's str.split() does.
  const std::string text = "x y\r\nz\rp\vq\fr s\xc2\xa0t\xe2\x80\x83u\xe3\x80\x80v \xc3\xa9";
  const TrainingText t = tokenize_training(text, Level::words, "t.txt");
  const std::vector<std::string> want = {"x", "y", "<eos>", "z", "<eos>", "p",        "q",
                                         "r", "s", "t",     "u", "v",     "\xc3\xa9", "<eos>"};
  EXPECT_EQ(tokens_of(t), want);
}

TEST(Data, CharVocabularySortedByByte) {
  const TrainingText t = tokenize_training("hello\nHe\xc3\xa9", Level::chars, "t.txt");
  ASSERT_EQ(t.vocab.size(), 8);
  const std::vector<std::string> raw = {"\n", "H", "e", "h", "l", "o", "\xa9", "\xc3"};
  for (int64_t k = 0; k < t.vocab.size(); ++k) EXPECT_EQ(t.vocab.word(k), raw[k]) << k;
  EXPECT_EQ(t.ids.size(), 10u);
  EXPECT_EQ(t.ids[0], 3);  // 'h'
  EXPECT_EQ(t.ids[5], 0);  // '\n'
  EXPECT_EQ(t.vocab.eos(), -1);
  // Stored form: bytes >= 0x80 as "\xHH" (JSON holds only UTF-8), read back by from_words.
  const std::vector<std::string> stored = t.vocab.words();
  EXPECT_EQ(stored[6], "\\xa9");
  EXPECT_EQ(stored[7], "\\xc3");
  const Vocabulary back = Vocabulary::from_words(Level::chars, stored);
  for (int64_t k = 0; k < t.vocab.size(); ++k) EXPECT_EQ(back.word(k), raw[k]) << k;
}

TEST(Data, VocabularyRoundTripThroughWords) {
  const TrainingText t = tokenize_training("the cat <unk> sat\non the mat\n", Level::words, "t");
  const Vocabulary v = Vocabulary::from_words(Level::words, t.vocab.words(), "model: vocab");
  ASSERT_EQ(v.size(), t.vocab.size());
  for (int64_t k = 0; k < v.size(); ++k) {
    EXPECT_EQ(v.word(k), t.vocab.word(k));
    EXPECT_EQ(v.id(v.word(k)), k);
  }
  EXPECT_EQ(v.eos(), t.vocab.eos());
  EXPECT_EQ(v.unk(), 2);
  EXPECT_EQ(v.id("dog"), v.unk());
  EXPECT_EQ(v.find("dog"), -1);
  EXPECT_EQ(encode("the cat sat\non the mat\n", v, "x"),
            encode("the cat sat\non the mat\n", t.vocab, "x"));
}

TEST(Data, FromWordsRejectsBadEntries) {
  expect_input_error(
      [] {
        Vocabulary::from_words(Level::words, {"a", "b", "a"}, "m.st: vocab");
      },
      {"m.st: vocab: entry 2 'a' repeats entry 0"});
  expect_input_error(
      [] {
        Vocabulary::from_words(Level::words, {"a", ""}, "m");
      },
      {"m: entry 1 is empty"});
  expect_input_error([] { Vocabulary::from_words(Level::words, {"a b"}, "m"); },
                     {"entry 0 'a b' contains whitespace"});
  expect_input_error(
      [] {
        Vocabulary::from_words(Level::chars, {"a", "bc"}, "m");
      },
      {"entry 1 'bc' is not one character"});
  expect_input_error(
      [] {
        Vocabulary::from_words(Level::chars, {"a", "\\x61"}, "m");
      },
      {"entry 1 '\\x61' repeats entry 0"});
  expect_input_error([] { Vocabulary().id("zz"); }, {"unknown word 'zz'", "no <unk>"});
  EXPECT_THROW(Vocabulary(Level::chars).add("ab"), std::invalid_argument);
  EXPECT_EQ(parse_level("char"), Level::chars);
  expect_input_error([] { parse_level("byte"); },
                     {"--level: expected 'char' or 'word', got 'byte'"});
}

TEST(Data, ReadFilesAndUnknownWordMapsToUnk) {
  TempDir dir;
  const TrainingText t =
      read_training_text(dir.file("train.txt", " a <unk> b \n b a \n"), Level::words);
  EXPECT_EQ(t.ids.size(), 7u);
  EXPECT_EQ(t.vocab.size(), 4);
  const std::vector<int64_t> v = read_text(dir.file("valid.txt", "a zz b\nqq\n"), t.vocab);
  const std::vector<int64_t> want = {0, 1, 2, 3, 1, 3};  // a <unk> b <eos> <unk> <eos>
  EXPECT_EQ(v, want);
  EXPECT_EQ(decode(v, t.vocab), "a <unk> b\n<unk>\n");
}

TEST(Data, UnknownWordWithoutUnkNamesFileWordLine) {
  TempDir dir;
  const TrainingText t = read_training_text(dir.file("train.txt", "a b\nb a\n"), Level::words);
  const fs::path valid = dir.file("valid.txt", "a\nb\r\na zz b\n");
  expect_input_error([&] { read_text(valid, t.vocab); },
                     {"valid.txt:3: unknown word 'zz' (not in the training vocabulary, which has "
                      "no <unk>)"});
  // A vocabulary without <eos> cannot encode word-level text.
  const Vocabulary no_eos = Vocabulary::from_words(Level::words, {"a", "b"});
  expect_input_error([&] { encode("a b\n", no_eos, "--prime"); },
                     {"--prime:1: the vocabulary has no <eos>"});
}

TEST(Data, UnknownCharNamesLine) {
  TempDir dir;
  const TrainingText t = read_training_text(dir.file("train.txt", "abc\nab\n"), Level::chars);
  EXPECT_EQ(read_text(dir.file("ok.txt", "cab\n"), t.vocab).size(), 4u);
  expect_input_error([&] { read_text(dir.file("valid.txt", "ab\nc\n\tb\n"), t.vocab); },
                     {"valid.txt:3: unknown character '\\t' (byte 0x09"});
}

TEST(Data, EmptyMissingAndBinaryFiles) {
  TempDir dir;
  expect_input_error([&] { read_training_text(dir.file("train.txt", ""), Level::words); },
                     {"train.txt: empty file"});
  const TrainingText t = read_training_text(dir.file("t.txt", "a\n"), Level::words);
  expect_input_error([&] { read_text(dir.file("test.txt", ""), t.vocab); },
                     {"test.txt: empty file"});
  expect_input_error(
      [&] { read_training_text(dir.file("x", "a").parent_path() / "nope.txt", Level::chars); },
      {"nope.txt: cannot open"});
  expect_input_error(
      [&] { read_training_text(dir.file("bin.dat", "text\nmore\x00\x01junk"s), Level::chars); },
      {"bin.dat:2: NUL byte at offset 9 (looks binary)"});
  // Latin-1 is not UTF-8: binary for word level, fine for char level (bytes).
  const fs::path latin1 = dir.file("latin1.txt", "ok\ncaf\xe9\n");
  expect_input_error([&] { read_training_text(latin1, Level::words); },
                     {"latin1.txt:2: invalid UTF-8 at offset 6 (looks binary"});
  EXPECT_EQ(read_training_text(latin1, Level::chars).vocab.size(), 7);
  expect_input_error([&] { read_training_text(dir.file("dir", "a").parent_path(), Level::words); },
                     {"is a directory"});
}

TEST(Data, BatcherStreamsAreContiguous) {
  // N = 103, B = 4: streams of 25 (3 tokens dropped); seq 5 -> windows of 5,5,5,5,4.
  const std::vector<int64_t> ids = iota_ids(103);
  Batcher batcher(ids, 4, 5, false, "t.txt");
  ASSERT_EQ(batcher.stream_length(), 25);
  std::vector<std::vector<int64_t>> streams(4);
  std::vector<int64_t> x, y;
  for (int64_t k = 0; k < batcher.windows(); ++k) {
    const int64_t T = batcher.window(k, x, y);
    for (int64_t t = 0; t < T; ++t)
      for (int64_t b = 0; b < 4; ++b) streams[b].push_back(x[t * 4 + b]);
    if (k + 1 == batcher.windows())
      for (int64_t b = 0; b < 4; ++b) streams[b].push_back(y[(T - 1) * 4 + b]);
  }
  for (int64_t b = 0; b < 4; ++b)
    EXPECT_EQ(streams[b], std::vector<int64_t>(ids.begin() + b * 25, ids.begin() + (b + 1) * 25))
        << "stream " << b;
}

TEST(Data, BatcherTargetsAreInputsShifted) {
  const std::vector<int64_t> ids = iota_ids(203);
  Batcher batcher(ids, 3, 7, false, "t.txt");
  std::vector<int64_t> x, y, x_next, y_next;
  for (int64_t k = 0; k < batcher.windows(); ++k) {
    const int64_t T = batcher.window(k, x, y);
    for (int64_t t = 0; t + 1 < T; ++t)
      for (int64_t b = 0; b < 3; ++b) EXPECT_EQ(y[t * 3 + b], x[(t + 1) * 3 + b]);
    for (int64_t i = 0; i < T * 3; ++i) EXPECT_EQ(y[i], x[i] + 1);  // ids are consecutive
    if (k + 1 < batcher.windows()) {  // the last target row is the next window's first input row
      batcher.window(k + 1, x_next, y_next);
      for (int64_t b = 0; b < 3; ++b) EXPECT_EQ(y[(T - 1) * 3 + b], x_next[b]);
    }
  }
}

TEST(Data, BatcherLayoutTimeMajor) {
  const std::vector<int64_t> ids = iota_ids(60);  // B = 3: streams of 20
  Batcher batcher(ids, 3, 4, false, "t.txt");
  std::vector<int64_t> x, y;
  const int64_t T = batcher.window(2, x, y);
  ASSERT_EQ(T, 4);
  ASSERT_EQ(x.size(), 12u);
  for (int64_t t = 0; t < T; ++t)
    for (int64_t b = 0; b < 3; ++b) {
      EXPECT_EQ(x[t * 3 + b], 1000 + b * 20 + 2 * 4 + t) << "t=" << t << " b=" << b;
      EXPECT_EQ(y[t * 3 + b], 1000 + b * 20 + 2 * 4 + t + 1) << "t=" << t << " b=" << b;
    }
}

TEST(Data, BatcherLastShortWindowAndDropLast) {
  const std::vector<int64_t> ids = iota_ids(103);  // streams of 25: 24 predictions each
  Batcher all(ids, 4, 5, false, "t.txt");
  EXPECT_EQ(all.windows(), 5);
  EXPECT_EQ(all.steps(4), 4);
  std::vector<int64_t> x, y;
  EXPECT_EQ(all.window(4, x, y), 4);
  EXPECT_EQ(x.size(), 16u);
  EXPECT_EQ(all.predictions(), 24 * 4);
  Batcher full(ids, 4, 5, true, "t.txt");
  EXPECT_EQ(full.windows(), 4);
  EXPECT_EQ(full.window(3, x, y), 5);
  EXPECT_EQ(full.predictions(), 20 * 4);
  EXPECT_THROW(full.window(4, x, y), std::out_of_range);
}

TEST(Data, BatcherWindowCountFormula) {
  for (int64_t N = 2; N <= 40; ++N)
    for (int64_t B = 1; B <= N / 2; ++B)
      for (int64_t seq = 1; seq <= 9; ++seq) {
        const std::vector<int64_t> ids = iota_ids(N);
        const int64_t n = N / B;
        Batcher all(ids, B, seq, false, "t");
        EXPECT_EQ(all.windows(), (n - 1 + seq - 1) / seq) << N << " " << B << " " << seq;
        int64_t steps = 0;
        for (int64_t k = 0; k < all.windows(); ++k) steps += all.steps(k);
        EXPECT_EQ(steps, n - 1);
        EXPECT_EQ(all.predictions(), steps * B);
        if ((n - 1) / seq == 0) {
          EXPECT_THROW(Batcher(ids, B, seq, true, "t"), InputError);
        } else {
          EXPECT_EQ(Batcher(ids, B, seq, true, "t").windows(), (n - 1) / seq);
        }
      }
  // PTB train (929,589 tokens, batch 20): Zaremba's 1,327 steps at seq 35 and 2,323 at seq 20.
  const std::vector<int64_t> ptb(929589, 0);
  EXPECT_EQ(Batcher(ptb, 20, 35, true, "ptb").windows(), 1327);
  EXPECT_EQ(Batcher(ptb, 20, 20, true, "ptb").windows(), 2323);
  EXPECT_EQ(Batcher(ptb, 20, 35, false, "ptb").windows(), 1328);
}

TEST(Data, BatcherTooShortStreams) {
  const std::vector<int64_t> ids = iota_ids(37);
  expect_input_error(
      [&] { Batcher(ids, 20, 35, false, "train.txt"); },
      {"train.txt: 37 tokens make streams of 1 token for batch 20; need at least 2"});
  expect_input_error([&] { Batcher(ids, 3, 35, true, "train.txt"); },
                     {"train.txt: 37 tokens make streams of 12 tokens for batch 3; a full window "
                      "of 35 steps needs 36 tokens"});
  expect_input_error([&] { Batcher(ids, 0, 35, false, "train.txt"); }, {"batch must be >= 1"});
  expect_input_error([&] { Batcher(ids, 2, 0, false, "train.txt"); }, {">= 1, got 0"});
  EXPECT_EQ(Batcher(ids, 18, 35, false, "t").windows(), 1);  // streams of 2: one step
}

TEST(Data, BatcherCursorResumesExactlyWithoutReallocating) {
  const std::vector<int64_t> ids = iota_ids(500);
  Batcher a(ids, 4, 6, false, "t.txt");
  std::vector<int64_t> x, y;
  x.reserve(4 * 6);
  y.reserve(4 * 6);
  const int64_t* x_data = x.data();
  std::vector<std::vector<int64_t>> seen;
  while (a.next(x, y) > 0) {
    EXPECT_EQ(x.data(), x_data) << "reallocated at window " << a.position() - 1;
    seen.push_back(x);
  }
  EXPECT_EQ(static_cast<int64_t>(seen.size()), a.windows());
  EXPECT_EQ(a.position(), a.windows());
  EXPECT_EQ(a.next(x, y), 0);
  // "Checkpoint" at window 9, then a fresh batcher resumes there.
  Batcher b(ids, 4, 6, false, "t.txt");
  b.seek(9);
  for (int64_t k = 9; k < b.windows(); ++k) {
    ASSERT_GT(b.next(x, y), 0);
    EXPECT_EQ(x, seen[k]) << "window " << k;
  }
  b.rewind();
  b.next(x, y);
  EXPECT_EQ(x, seen[0]);
  b.seek(b.windows());  // an epoch that was done
  EXPECT_EQ(b.next(x, y), 0);
  expect_input_error([&] { b.seek(b.windows() + 1); }, {"t.txt: window position"});
}

TEST(Data, DecodeInvertsEncode) {
  const std::string text = "the cat sat\non the mat\n";
  const TrainingText w = tokenize_training(text, Level::words, "t");
  EXPECT_EQ(decode(w.ids, w.vocab), text);
  const std::string bytes = "To be,\r\nor not\xc3\xa9\n";
  const TrainingText c = tokenize_training(bytes, Level::chars, "t");
  EXPECT_EQ(decode(c.ids, c.vocab), bytes);
  EXPECT_EQ(encode(bytes, c.vocab, "t"), c.ids);
}

// The published corpus statistics (/work/shared/data/README.md); runs only when
// LSTMGRAD_CORPORA points at a folder with ptb/, wikitext-2/ and tinyshakespeare/.
TEST(Data, CorpusCountsWhenAvailable) {
  const char* root = std::getenv("LSTMGRAD_CORPORA");
  if (root == nullptr || !fs::exists(fs::path(root) / "ptb" / "ptb.train.txt"))
    GTEST_SKIP() << "set LSTMGRAD_CORPORA to the benchmark corpora folder";
  const fs::path dir(root);
  const auto start = std::chrono::steady_clock::now();
  const TrainingText ptb = read_training_text(dir / "ptb" / "ptb.train.txt", Level::words);
  const double ms =
      std::chrono::duration<double, std::milli>(std::chrono::steady_clock::now() - start).count();
  std::printf("PTB train load + tokenize: %.1f ms\n", ms);
  EXPECT_EQ(ptb.ids.size(), 929589u);
  EXPECT_EQ(ptb.vocab.size(), 10000);
  EXPECT_EQ(read_text(dir / "ptb" / "ptb.valid.txt", ptb.vocab).size(), 73760u);
  EXPECT_EQ(read_text(dir / "ptb" / "ptb.test.txt", ptb.vocab).size(), 82430u);
  const TrainingText wt2 = read_training_text(dir / "wikitext-2" / "train.txt", Level::words);
  EXPECT_EQ(wt2.ids.size(), 2088628u);
  EXPECT_EQ(wt2.vocab.size(), 33278);
  EXPECT_EQ(read_text(dir / "wikitext-2" / "valid.txt", wt2.vocab).size(), 217646u);
  EXPECT_EQ(read_text(dir / "wikitext-2" / "test.txt", wt2.vocab).size(), 245569u);
  const TrainingText shakespeare =
      read_training_text(dir / "tinyshakespeare" / "input.txt", Level::chars);
  EXPECT_EQ(shakespeare.ids.size(), 1115394u);
  EXPECT_EQ(shakespeare.vocab.size(), 65);
}
