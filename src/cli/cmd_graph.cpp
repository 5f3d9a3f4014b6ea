// `lstmgrad graph`: the handout's Figure 1 (missing from its text), or the graph unrolled over T
// steps, as Graphviz DOT or SVG, with forward values and gradients on it.
#include <fcntl.h>
#include <spawn.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cerrno>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <iostream>
#include <sstream>
#include <stdexcept>
#include <string>
#include <string_view>

#include "cli/commands.hpp"
#include "lstmgrad/atomic_file.hpp"
#include "lstmgrad/error.hpp"
#include "lstmgrad/exercise.hpp"
#include "lstmgrad/graph.hpp"

extern char** environ;

namespace lstmgrad::cli {

namespace {

namespace fs = std::filesystem;

struct GraphOptions {
  std::string values;
  int steps = 1;
  std::string format = "dot";
  std::string output;
};

// Graphviz's `dot` as execvp would find it on PATH; empty if there is none.
fs::path find_dot() {
  const char* env = std::getenv("PATH");
  std::string_view rest = env ? env : "/bin:/usr/bin";
  for (;;) {
    const size_t colon = rest.find(':');
    const std::string_view dir = rest.substr(0, colon);
    const fs::path candidate = fs::path(dir.empty() ? "." : std::string(dir)) / "dot";
    std::error_code ec;
    if (fs::is_regular_file(candidate, ec) && ::access(candidate.c_str(), X_OK) == 0)
      return candidate;
    if (colon == std::string_view::npos) return {};
    rest.remove_prefix(colon + 1);
  }
}

std::string slurp(const fs::path& p) {
  std::ifstream in(p, std::ios::binary);
  std::stringstream ss;
  ss << in.rdbuf();
  return ss.str();
}

// A private temporary folder, removed with everything in it when the object dies.
struct ScratchDir {
  fs::path path;
  ScratchDir() {
    std::string templ = (fs::temp_directory_path() / "lstmgrad-graph-XXXXXX").string();
    if (::mkdtemp(templ.data()) == nullptr)
      throw std::runtime_error("graph: cannot create a temporary folder in " +
                               fs::temp_directory_path().string());
    path = templ;
  }
  ~ScratchDir() {
    std::error_code ec;
    fs::remove_all(path, ec);
  }
  ScratchDir(const ScratchDir&) = delete;
  ScratchDir& operator=(const ScratchDir&) = delete;
};

// Runs `dot -Tsvg -o out.svg in.dot` (no shell) and returns the SVG. dot's warnings go to our
// stderr; a failure of dot is not the user's input, so it is an internal error.
std::string render_svg(const fs::path& dot, const std::string& dot_text) {
  ScratchDir tmp;
  const fs::path in = tmp.path / "graph.dot", out = tmp.path / "graph.svg";
  const fs::path err = tmp.path / "stderr.txt";
  std::ofstream(in, std::ios::binary) << dot_text;
  posix_spawn_file_actions_t actions;
  posix_spawn_file_actions_init(&actions);
  posix_spawn_file_actions_addopen(&actions, 2, err.c_str(), O_WRONLY | O_CREAT | O_TRUNC, 0600);
  const std::string dot_s = dot.string();
  std::string a0 = dot_s, a1 = "-Tsvg", a2 = "-o", a3 = out.string(), a4 = in.string();
  char* argv[] = {a0.data(), a1.data(), a2.data(), a3.data(), a4.data(), nullptr};
  pid_t pid = 0;
  const int spawn_rc = posix_spawn(&pid, dot_s.c_str(), &actions, nullptr, argv, environ);
  posix_spawn_file_actions_destroy(&actions);
  if (spawn_rc != 0) throw std::runtime_error("graph: cannot run " + dot_s);
  int status = 0;
  while (::waitpid(pid, &status, 0) < 0 && errno == EINTR) {
  }
  const std::string messages = slurp(err);
  if (!WIFEXITED(status) || WEXITSTATUS(status) != 0) {
    const std::string first = messages.substr(0, messages.find('\n'));
    throw std::runtime_error("graph: " + dot_s +
                             " -Tsvg failed: " + (first.empty() ? "no message" : first));
  }
  std::cerr << messages;
  return slurp(out);
}

void run(const GraphOptions& o) {
  if (!o.values.empty() && o.steps >= 2)
    throw InputError(
        "graph: --values sets Exercise 2's numbers for Figure 1 (--steps 1); --steps N >= 2 "
        "draws the consistent example, which takes no values");
  fs::path dot;
  if (o.format == "svg") {
    dot = find_dot();
    if (dot.empty())
      throw InputError(
          "graph: --format svg needs Graphviz's 'dot' (Debian: apt-get install graphviz); use "
          "--format dot");
  }
  const ComputationGraph g =
      o.steps >= 2
          ? unrolled_graph(o.steps)
          : figure1_graph(o.values.empty() ? HandoutValues{} : read_handout_values(o.values));
  const std::string dot_text = to_dot(g);
  const std::string text = o.format == "svg" ? render_svg(dot, dot_text) : dot_text;
  if (o.output.empty())
    std::cout << text << std::flush;
  else
    io::write_text_atomic(o.output, text);
}

}  // namespace

void register_graph(CLI::App& app);
const CommandRegistrar kRegistrar(20, register_graph);

void register_graph(CLI::App& app) {
  auto opts = std::make_shared<GraphOptions>();
  CLI::App* cmd = app.add_subcommand(
      "graph", "The handout's Figure 1 as a Graphviz graph, with forward values and gradients");
  cmd->add_option("--values", opts->values,
                  "JSON file with other numbers for Exercise 2 (as for `lstmgrad exercise`)");
  cmd->add_option("--steps", opts->steps,
                  "1: Figure 1 with Exercise 2's numbers; T >= 2: the consistent example unrolled "
                  "over T steps, full BPTT, with the paths Equation 3 misses")
      ->check(CLI::Range(1, 10))
      ->capture_default_str();
  cmd->add_option("--format", opts->format,
                  "dot: Graphviz source; svg: drawn by Graphviz's `dot -Tsvg`")
      ->check(CLI::IsMember({"dot", "svg"}))
      ->capture_default_str();
  cmd->add_option("-o,--output", opts->output,
                  "Write to this file (atomically: temporary file, then rename); default stdout");
  cmd->callback([opts] { run(*opts); });
}

}  // namespace lstmgrad::cli
