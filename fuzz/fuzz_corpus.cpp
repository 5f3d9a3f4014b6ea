// Fuzz target: text corpora at both levels: the training reader that builds the vocabulary, then
// a validation text read with that vocabulary, and the vocabulary's round trip through a model
// file's word list.
#include "fuzz_input.hpp"
#include "lstmgrad/data.hpp"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  return lstmgrad::fuzz::read_bytes(data, size, ".txt", [](const auto& path) {
    using lstmgrad::data::Level;
    for (Level level : {Level::words, Level::chars}) {
      try {
        const lstmgrad::data::TrainingText t = lstmgrad::data::read_training_text(path, level);
        (void)lstmgrad::data::read_text(path, t.vocab);
        (void)lstmgrad::data::Vocabulary::from_words(level, t.vocab.words(), path.string());
      } catch (const lstmgrad::InputError&) {
      }
    }
  });
}
