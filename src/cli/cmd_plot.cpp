// `lstmgrad plot RUN_DIR`: a run's training and validation curves as an SVG figure.
#include <fmt/format.h>

#include <cerrno>
#include <cstdint>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <nlohmann/json.hpp>
#include <sstream>

#include "cli/commands.hpp"
#include "lstmgrad/atomic_file.hpp"
#include "lstmgrad/error.hpp"
#include "lstmgrad/plot.hpp"

namespace lstmgrad::cli {

namespace {

namespace fs = std::filesystem;

struct PlotOptions {
  std::string run_dir, out;
};

std::string read_text(const fs::path& p) {
  std::ifstream in(p, std::ios::binary);
  if (!in) throw InputError(fmt::format("{}: cannot open ({})", p.string(), std::strerror(errno)));
  std::ostringstream ss;
  ss << in.rdbuf();
  return ss.str();
}

// The run's level from the "lstmgrad.level" metadata of its model file. Only the safetensors
// header is read (8 bytes little-endian length, then JSON), not the tensors: a figure needs no
// weights. A run without a readable model file is plotted without the level's right axis.
plot::Level run_level(const fs::path& dir) {
  for (const char* name : {"model.safetensors", "best.safetensors"}) {
    std::ifstream in(dir / name, std::ios::binary);
    unsigned char n8[8];
    if (!in.read(reinterpret_cast<char*>(n8), sizeof n8)) continue;
    uint64_t n = 0;
    for (int k = 7; k >= 0; --k) n = n << 8 | n8[k];
    if (n > (uint64_t{100} << 20)) continue;  // the format's own limit on the header
    std::string header(n, '\0');
    if (!in.read(header.data(), static_cast<std::streamsize>(n))) continue;
    const nlohmann::json j = nlohmann::json::parse(header, nullptr, /*allow_exceptions=*/false);
    if (!j.is_object() || !j.contains("__metadata__")) continue;
    const nlohmann::json& meta = j["__metadata__"];
    if (meta.is_object() && meta.contains("lstmgrad.level") && meta["lstmgrad.level"].is_string())
      return plot::parse_level(meta["lstmgrad.level"].get<std::string>());
  }
  return plot::Level::unknown;
}

// "runs/ptb-small/" -> "ptb-small"; "." -> the current folder's name.
std::string run_name(const fs::path& dir) {
  fs::path p = fs::absolute(dir).lexically_normal();
  if (p.filename().empty()) p = p.parent_path();
  return p.filename().string();
}

void run_plot(const PlotOptions& o) {
  const fs::path dir = o.run_dir;
  if (!fs::is_directory(dir))
    throw InputError(
        fmt::format("{}: no such folder (expected a run folder of lstmgrad train)", dir.string()));
  const fs::path metrics = dir / "metrics.jsonl";
  if (!fs::exists(metrics))
    throw InputError(fmt::format("{}: no such file (lstmgrad train writes it at each validation)",
                                 metrics.string()));
  plot::RunCurves run;
  run.title = run_name(dir);
  run.points = plot::parse_metrics(read_text(metrics), metrics.string());
  const fs::path results = dir / "results.json";
  if (fs::exists(results))
    run.test_loss = plot::parse_test_loss(read_text(results), results.string());
  run.level = run_level(dir);
  const fs::path out = o.out.empty() ? dir / "curves.svg" : fs::path(o.out);
  io::write_text_atomic(out, plot::render_svg(run));
  fmt::print("{} validation{} over {} updates; wrote {}\n", run.points.size(),
             run.points.size() == 1 ? "" : "s", run.points.back().step, out.string());
}

void register_plot(CLI::App& app) {
  auto o = std::make_shared<PlotOptions>();
  CLI::App* cmd = app.add_subcommand(
      "plot", "Training and validation curves of a run as an SVG figure (from metrics.jsonl)");
  cmd->add_option("run_dir", o->run_dir,
                  "Run folder of lstmgrad train: metrics.jsonl, optionally results.json and "
                  "model.safetensors (for the level)")
      ->required();
  cmd->add_option("-o,--out", o->out, "SVG file to write (atomically); default RUN_DIR/curves.svg");
  cmd->callback([o] { run_plot(*o); });
}

}  // namespace

const CommandRegistrar kPlotRegistrar(60, register_plot);

}  // namespace lstmgrad::cli
