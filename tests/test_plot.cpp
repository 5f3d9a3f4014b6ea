// `lstmgrad plot`: the SVG is well formed and shows what the metrics hold (both curves, the best
// validation point, the test result, learning-rate drops, off-scale points); odd runs (one point,
// no validation file, hundreds of points) still give a figure; bad metrics files get one line
// naming the file and the line.
//
// docs/figures/training_curves_example.svg is the example run below through the command; to
// redraw it, run Plot.CommandPlotsARunFolder with LSTMGRAD_PLOT_EXAMPLE_OUT set to its path.
#include <fmt/format.h>
#include <gtest/gtest.h>

#include <algorithm>
#include <cctype>
#include <cmath>
#include <cstdlib>
#include <fstream>
#include <string>
#include <vector>

#include "cli_runner.hpp"
#include "lstmgrad/error.hpp"
#include "lstmgrad/model_io.hpp"
#include "lstmgrad/plot.hpp"

namespace lstmgrad::test {
namespace {

using plot::Level;
using plot::MetricsPoint;
using plot::RunCurves;

// A PTB-like word-level run in metrics.jsonl's format: Zaremba et al.'s small model (1,327
// updates per epoch of 20 x 35 tokens), lr 1 for four epochs, then halved before every epoch;
// validation bottoms out at epoch 11.
std::string example_metrics() {
  const double train[] = {6.50, 5.42, 5.10,  4.93,  4.72,  4.61, 4.55,
                          4.51, 4.49, 4.475, 4.468, 4.464, 4.462};
  const double valid[] = {5.62,  5.28,  5.12,   5.05,   4.86,   4.80,  4.772,
                          4.757, 4.749, 4.7452, 4.7441, 4.7448, 4.7460};
  std::string out;
  double lr = 1, wall = 0;
  for (int e = 1; e <= 13; ++e) {
    if (e > 4) lr /= 2;
    wall += 94.8 + 0.3 * e;
    out += fmt::format(
        R"({{"epoch":{},"step":{},"lr":{},"train_loss":{},"tokens_per_s":9800.0,"wall_s":{},)"
        R"("valid_loss":{},"valid_ppl":{}}})"
        "\n",
        e, 1327 * e, lr, train[e - 1], wall, valid[e - 1], std::exp(valid[e - 1]));
  }
  return out;
}

const char* const kExampleResults =
    R"({"valid_loss": 4.7441, "valid_ppl": 114.92, "updates": 17251, "wall_s": 1260.0,)"
    R"( "test_loss": 4.709, "test_ppl": 110.93, "test_bpc": 6.7937})";

// A loose XML check: the text starts with <svg, every tag is closed in order, attribute quotes
// pair up, '&' starts an entity, nothing follows the root. Returns what is wrong, or "".
std::string xml_problem(const std::string& s) {
  if (s.rfind("<svg", 0) != 0) return "does not start with <svg";
  std::vector<std::string> open;
  for (size_t i = s.find('<'); i != std::string::npos; i = s.find('<', i)) {
    const size_t end = s.find('>', i);
    if (end == std::string::npos) return "unterminated tag at byte " + std::to_string(i);
    const std::string tag = s.substr(i + 1, end - i - 1);
    if (std::count(tag.begin(), tag.end(), '"') % 2) return "unpaired quote in <" + tag + ">";
    if (tag.empty()) return "empty tag at byte " + std::to_string(i);
    if (tag[0] == '/') {
      if (open.empty() || open.back() != tag.substr(1)) return "unexpected <" + tag + ">";
      open.pop_back();
    } else if (tag.back() != '/') {
      open.push_back(tag.substr(0, tag.find_first_of(" \n\t")));
    } else if (open.empty()) {
      return "self-closed root";
    }
    i = end + 1;
    if (open.empty() && s.find_first_not_of(" \n", i) != std::string::npos)
      return "content after the root element";
  }
  if (!open.empty()) return "unclosed <" + open.back() + ">";
  for (size_t a = s.find('&'); a != std::string::npos; a = s.find('&', a + 1)) {
    const size_t semi = s.find(';', a);
    if (semi == std::string::npos || semi - a > 8) return "bare '&' at byte " + std::to_string(a);
  }
  return "";
}

size_t occurrences(const std::string& s, const std::string& what) {
  size_t n = 0;
  for (size_t i = s.find(what); i != std::string::npos; i = s.find(what, i + 1)) ++n;
  return n;
}

RunCurves example_run() {
  RunCurves r;
  r.title = "ptb-small";
  r.level = Level::word;
  r.points = plot::parse_metrics(example_metrics(), "metrics.jsonl");
  r.test_loss = plot::parse_test_loss(kExampleResults, "results.json");
  return r;
}

TEST(Plot, ParsesTheTrainersMetricsLines) {
  const std::vector<MetricsPoint> p = plot::parse_metrics(
      example_metrics() + "\n" +
          R"({"epoch":14,"step":18578,"lr":0.001,"train_loss":null,"valid_loss":null})" + "\n",
      "metrics.jsonl");
  ASSERT_EQ(p.size(), 14u);
  EXPECT_EQ(p[0].epoch, 1);
  EXPECT_EQ(p[0].step, 1327);
  EXPECT_DOUBLE_EQ(p[4].lr, 0.5);
  EXPECT_DOUBLE_EQ(*p[0].train_loss, 6.5);
  EXPECT_DOUBLE_EQ(*p[10].valid_loss, 4.7441);
  EXPECT_FALSE(p[13].train_loss.has_value());
  EXPECT_FALSE(p[13].valid_loss.has_value());
  EXPECT_FALSE(p[13].wall_s.has_value());
  EXPECT_DOUBLE_EQ(*plot::parse_test_loss(kExampleResults, "results.json"), 4.709);
  EXPECT_FALSE(plot::parse_test_loss(R"({"valid_loss": 4.7})", "results.json").has_value());
}

TEST(Plot, NiceTicksAreOneTwoFiveStepsCoveringTheRange) {
  const std::vector<double> t = plot::nice_ticks(4.38, 6.58, 6);
  ASSERT_EQ(t.size(), 7u);  // 4.0, 4.5, ..., 7.0
  EXPECT_DOUBLE_EQ(t.front(), 4.0);
  EXPECT_DOUBLE_EQ(t.back(), 7.0);
  const std::vector<double> x = plot::nice_ticks(0, 17251, 7);
  EXPECT_DOUBLE_EQ(x[1] - x[0], 2000);
  EXPECT_DOUBLE_EQ(x.back(), 18000);
  const std::vector<double> small = plot::nice_ticks(1.02, 1.07, 6);
  EXPECT_NEAR(small[1] - small[0], 0.01, 1e-12);
  EXPECT_THROW(plot::nice_ticks(1, 1, 5), std::invalid_argument);
}

TEST(Plot, ExampleRunIsWellFormedAndShowsEverything) {
  const std::string svg = plot::render_svg(example_run());
  EXPECT_EQ(xml_problem(svg), "") << svg;
  EXPECT_EQ(svg.find("<script"), std::string::npos);
  EXPECT_EQ(svg.find("href"), std::string::npos);  // self-contained
  EXPECT_EQ(occurrences(svg, R"(class="train")"), 1u);
  EXPECT_EQ(occurrences(svg, R"(class="valid")"), 1u);
  EXPECT_NE(svg.find(">ptb-small</text>"), std::string::npos);
  EXPECT_NE(svg.find("perplexity (log scale)"), std::string::npos);
  EXPECT_NE(svg.find("best valid ppl 114.9"), std::string::npos);  // exp(4.7441), epoch 11
  EXPECT_NE(svg.find("epoch 11"), std::string::npos);
  EXPECT_NE(svg.find("test ppl 110.9"), std::string::npos);
  for (const char* lr : {">0.5<", ">0.25<", ">0.00195<"})
    EXPECT_NE(svg.find(lr), std::string::npos);
  EXPECT_EQ(occurrences(svg, "stroke-dasharray"), 9u);   // one line per lr drop
  EXPECT_NE(svg.find(">13</text>"), std::string::npos);  // the last epoch is labelled
  EXPECT_NE(svg.find("21m 00s training"), std::string::npos);
}

TEST(Plot, SinglePointAndNullValidationLossStillGiveAFigure) {
  RunCurves one;
  one.points = plot::parse_metrics(R"({"epoch":1,"step":0,"lr":1,"train_loss":5.9,)"
                                   R"("valid_loss":null})",
                                   "metrics.jsonl");
  const std::string svg = plot::render_svg(one);
  EXPECT_EQ(xml_problem(svg), "") << svg;
  EXPECT_EQ(occurrences(svg, R"(class="train")"), 1u);
  EXPECT_EQ(occurrences(svg, R"(class="valid")"), 0u);
  EXPECT_EQ(svg.find("best valid"), std::string::npos);
  EXPECT_EQ(svg.find("validation"), std::string::npos);  // nor in the legend

  // No validation file, but a test file: the test result is that of the last model.
  RunCurves train_only;
  train_only.level = Level::character;
  train_only.test_loss = 1.3;
  for (int e = 1; e <= 5; ++e)
    train_only.points.push_back({e, 100 * e, 0.002, 1 + 1.0 / e, {}, {}});
  const std::string svg2 = plot::render_svg(train_only);
  EXPECT_EQ(xml_problem(svg2), "") << svg2;
  EXPECT_NE(svg2.find("test 1.876 bits/char"), std::string::npos);
  EXPECT_NE(svg2.find("bits per character"), std::string::npos);
  EXPECT_THROW(plot::render_svg(RunCurves{}), std::invalid_argument);
}

TEST(Plot, HugeFirstLossIsMarkedOffScaleAndDoesNotFlattenTheRest) {
  RunCurves r;
  for (int e = 1; e <= 30; ++e)
    r.points.push_back({e, 50 * e, 1.0, e == 1 ? 9.2 : 4.5 + 1.0 / e, 4.7 + 0.8 / e, {}});
  const std::string svg = plot::render_svg(r);
  EXPECT_EQ(xml_problem(svg), "") << svg;
  EXPECT_NE(svg.find(">9.20</text>"), std::string::npos);  // the off-scale value, at the top
  // The loss axis stops well below 9: its highest tick label is under 6.
  double top_tick = 0;
  for (size_t i = svg.find("text-anchor=\"end\""); i != std::string::npos;
       i = svg.find("text-anchor=\"end\"", i + 1)) {
    const size_t gt = svg.find('>', i), lt = svg.find('<', gt);
    const std::string label = svg.substr(gt + 1, lt - gt - 1);
    if (!label.empty() && std::isdigit(static_cast<unsigned char>(label[0])))
      top_tick = std::max(top_tick, std::stod(label));
  }
  EXPECT_GT(top_tick, 4.5);
  EXPECT_LT(top_tick, 6.0);
}

TEST(Plot, HundredsOfPointsDropTheMarkersAndStaySmall) {
  RunCurves r;
  r.level = Level::character;
  for (int e = 1; e <= 500; ++e)
    r.points.push_back({e, 20 * e, e > 300 ? 1e-4 : 1e-3, 1 + 2 * std::exp(-e / 50.0),
                        1.2 + 1.6 * std::exp(-e / 40.0), 3.0 * e});
  const std::string svg = plot::render_svg(r);
  EXPECT_EQ(xml_problem(svg), "");
  EXPECT_LT(occurrences(svg, "<circle"), 10u);  // legend and best point only
  EXPECT_LT(occurrences(svg, "<text"), 80u);    // epoch labels thinned out
  EXPECT_LT(svg.size(), 60000u);
}

TEST(Plot, TextIsEscaped) {
  RunCurves r = example_run();
  r.title = "a<b & \"c\"";
  const std::string svg = plot::render_svg(r);
  EXPECT_EQ(xml_problem(svg), "");
  EXPECT_NE(svg.find("a&lt;b &amp; &quot;c&quot;"), std::string::npos);
}

// Each bad metrics file gives an InputError naming the file and the line.
TEST(Plot, BadMetricsNameTheFileAndLine) {
  const std::string good = R"({"epoch":1,"step":10,"lr":1,"train_loss":5,"valid_loss":4.9})";
  const struct {
    std::string text, must_name;
  } cases[] = {
      {good + "\n" + good + "\n{\"epoch\":2,\"step\":\n", "metrics.jsonl:3: malformed JSON"},
      {good + "\n" + R"({"epoch":2,"step":20,"lr":1,"train_loss":5})",
       "metrics.jsonl:2: missing key 'valid_loss'"},
      {R"({"epoch":1,"lr":1,"train_loss":5,"valid_loss":4.9})",
       "metrics.jsonl:1: missing key 'step'"},
      {R"({"epoch":"1","step":1,"lr":1,"train_loss":5,"valid_loss":4.9})",
       "metrics.jsonl:1: 'epoch' must be an integer"},
      {"\n" + std::string(R"({"epoch":1,"step":1,"lr":1,"train_loss":"x","valid_loss":4.9})"),
       "metrics.jsonl:2: 'train_loss' must be a number or null"},
      {"[1, 2]\n", "metrics.jsonl:1: expected a JSON object"},
      {"", "metrics.jsonl:1: empty"},
      {"\n  \n", "metrics.jsonl:1: empty"},
  };
  for (const auto& c : cases) {
    try {
      plot::parse_metrics(c.text, "metrics.jsonl");
      ADD_FAILURE() << "no error for: " << c.text;
    } catch (const InputError& e) {
      EXPECT_NE(std::string(e.what()).find(c.must_name), std::string::npos)
          << e.what() << "\nwanted: " << c.must_name;
    }
  }
  EXPECT_THROW(plot::parse_test_loss("{oops", "results.json"), InputError);
  EXPECT_THROW(plot::parse_test_loss(R"({"test_loss": "4.7"})", "results.json"), InputError);
}

// ---- the command ----

bool have_cli() {
  return std::string(LSTMGRAD_CLI_PATH).size() > 0;
}

// A run folder as lstmgrad train leaves it: metrics, results, a (tiny) model carrying the level.
void write_run(const std::filesystem::path& dir, const std::string& metrics,
               const std::string& results, const std::string& level) {
  std::filesystem::create_directories(dir);
  std::ofstream(dir / "metrics.jsonl") << metrics;
  if (!results.empty()) std::ofstream(dir / "results.json") << results;
  const ModelConfig cfg{InputKind::embedding, Readout::linear, 3, 2, 2, 1};
  const std::vector<float> params(parameter_count(cfg), 0.01f);
  save_model<float>(dir / "model.safetensors", cfg, params, {}, {{"lstmgrad.level", level}});
}

TEST(Plot, CommandPlotsARunFolder) {
  if (!have_cli()) GTEST_SKIP() << "built without the command";
  TempDir tmp;
  const auto run = tmp / "ptb-small";
  write_run(run, example_metrics(), kExampleResults, "word");
  const CliResult r = run_cli("plot '" + run.string() + "'");
  ASSERT_EQ(r.rc, 0) << r.err;
  EXPECT_NE(r.out.find("13 validations"), std::string::npos) << r.out;
  const std::string svg = slurp(run / "curves.svg");
  EXPECT_EQ(xml_problem(svg), "");
  EXPECT_NE(svg.find(">ptb-small</text>"), std::string::npos);       // title from the folder
  EXPECT_NE(svg.find("perplexity (log scale)"), std::string::npos);  // level from the model
  EXPECT_NE(svg.find("test ppl 110.9"), std::string::npos);
  EXPECT_EQ(svg, plot::render_svg(example_run()));  // the command adds nothing of its own
  if (const char* out = std::getenv("LSTMGRAD_PLOT_EXAMPLE_OUT")) {
    const CliResult d = run_cli("plot '" + run.string() + "/' -o '" + out + "'");
    EXPECT_EQ(d.rc, 0) << d.err;
  }

  // -o elsewhere; a char-level run gets bits per character.
  const auto chars = tmp / "chars";
  write_run(chars, example_metrics(), "", "char");
  const CliResult c =
      run_cli("plot '" + chars.string() + "' -o '" + (tmp / "c.svg").string() + "'");
  ASSERT_EQ(c.rc, 0) << c.err;
  EXPECT_FALSE(std::filesystem::exists(chars / "curves.svg"));
  const std::string svg_c = slurp(tmp / "c.svg");
  EXPECT_NE(svg_c.find("bits per character"), std::string::npos);
  EXPECT_EQ(svg_c.find(">test "), std::string::npos);  // no results.json, no test result
}

TEST(Plot, CommandErrorsAreOneLineNamingTheFile) {
  if (!have_cli()) GTEST_SKIP() << "built without the command";
  TempDir tmp;
  const auto run = tmp / "run";
  const struct {
    std::string metrics, must_name;
  } cases[] = {
      {"", "metrics.jsonl:1: empty"},
      {example_metrics() + "{\"epoch\": 14,\n", "metrics.jsonl:14: malformed JSON"},
  };
  for (const auto& c : cases) {
    write_run(run, c.metrics, "", "word");
    const CliResult r = run_cli("plot '" + run.string() + "'");
    EXPECT_EQ(r.rc, 2) << r.err;
    EXPECT_EQ(count_lines(r.err), 1u) << r.err;
    EXPECT_NE(r.err.find((run / c.must_name).string()), std::string::npos) << r.err;
    EXPECT_FALSE(std::filesystem::exists(run / "curves.svg"));
  }
  const CliResult missing_dir = run_cli("plot '" + (tmp / "nope").string() + "'");
  EXPECT_EQ(missing_dir.rc, 2);
  EXPECT_NE(missing_dir.err.find("nope: no such folder"), std::string::npos) << missing_dir.err;
  std::filesystem::remove(run / "metrics.jsonl");
  const CliResult missing_file = run_cli("plot '" + run.string() + "'");
  EXPECT_EQ(missing_file.rc, 2);
  EXPECT_NE(missing_file.err.find("metrics.jsonl: no such file"), std::string::npos)
      << missing_file.err;
  write_run(run, example_metrics(), "{\"test_loss\": ", "word");
  const CliResult bad_results = run_cli("plot '" + run.string() + "'");
  EXPECT_EQ(bad_results.rc, 2);
  EXPECT_NE(bad_results.err.find("results.json: malformed JSON"), std::string::npos)
      << bad_results.err;
}

}  // namespace
}  // namespace lstmgrad::test
