// lstmgrad: training curves of a run as an SVG figure (`lstmgrad plot RUN_DIR`).
//
// In: the text of RUN_DIR/metrics.jsonl (one JSON object per validation, written by the trainer's
// validate(), src/train/trainer.cpp), optionally the test loss from RUN_DIR/results.json and the
// run's level (word or char, from the model file's "lstmgrad.level" metadata). Out: SVG text.
// No I/O here; the command reads and writes the files.
//
// The figure: x = updates with epoch boundaries and learning-rate changes marked above the plot,
// y = loss in nats/token with perplexity (word level, log scale) or bits per character (char
// level) on the right axis; the train curve (mean over the epoch so far) and the validation curve
// with a marker per validation; the best validation point and the test result of the best model
// in a callout. A first-epoch loss far above the rest does not flatten the later curve: the y
// range is cut at a robust upper bound and the points above it are marked at the top edge.
#pragma once
#include <cstdint>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

namespace lstmgrad::plot {

// One line of metrics.jsonl. Losses are nats per token (word or character); a loss the trainer
// could not represent (null: no validation file, or a diverged NaN) is absent.
struct MetricsPoint {
  int64_t epoch = 0;
  int64_t step = 0;  // updates so far
  double lr = 0;     // the learning rate of the epoch this validation ends (or interrupts)
  std::optional<double> train_loss;  // mean over the epoch so far
  std::optional<double> valid_loss;
  std::optional<double> wall_s;  // training time so far
};

enum class Level { unknown, word, character };

// "word" -> word, "char" -> character, anything else -> unknown.
Level parse_level(std::string_view name);

struct RunCurves {
  std::string title;                 // shown at the top: the run folder's name
  Level level = Level::unknown;      // picks the right axis: perplexity, bits per char, none
  std::vector<MetricsPoint> points;  // file order; drawn in order of step
  std::optional<double> test_loss;   // nats/token of the best model on the test file
};

// Parses metrics.jsonl. `file` names the file in errors. Blank lines are skipped. Throws
// InputError "<file>:<line>: <what>" for malformed JSON, a line that is not an object, a missing
// key (epoch, step, lr, train_loss, valid_loss) or a value of the wrong type, and
// "<file>: empty ..." when there is no line at all.
std::vector<MetricsPoint> parse_metrics(std::string_view text, const std::string& file);

// The "test_loss" of results.json, absent when the run had no test file. Throws InputError
// "<file>: ..." for malformed JSON or a non-numeric test_loss.
std::optional<double> parse_test_loss(std::string_view text, const std::string& file);

// The figure as a standalone SVG document (no scripts, no external resources), `width` x
// `height` pixels; laid out for about 800 x 480. `run.points` must not be empty
// (std::invalid_argument).
std::string render_svg(const RunCurves& run, int width = 800, int height = 480);

// About `target` round tick values (1, 2 or 5 times a power of ten apart) from the multiple of
// the step at or below `lo` to the one at or above `hi`. lo < hi, target >= 2.
std::vector<double> nice_ticks(double lo, double hi, int target);

}  // namespace lstmgrad::plot
