// lstmgrad: one command, many subcommands (CLI11).
#include <CLI/CLI.hpp>
#include <cstdio>
#include <exception>

#include "cli/commands.hpp"
#include "lstmgrad/error.hpp"

int main(int argc, char** argv) {
  CLI::App app{"lstmgrad: LSTM networks with hand-derived, triple-checked gradients"};
  app.require_subcommand(1);
  app.set_version_flag("--version", "lstmgrad 0.1.0");
  lstmgrad::cli::register_all(app);
  // One line for a bad flag, like every other bad input.
  app.failure_message([](const CLI::App* a, const CLI::Error& e) {
    return "lstmgrad: error: " + std::string(e.what()) + " (see " + a->get_name() + " --help)\n";
  });
  try {
    app.parse(argc, argv);
  } catch (const CLI::ParseError& e) {
    // CLI11 prints help (exit 0) or the error; bad flags exit 2 like every other bad input.
    const int rc = app.exit(e);
    return rc == 0 ? 0 : 2;
  } catch (const lstmgrad::InputError& e) {
    std::fprintf(stderr, "lstmgrad: error: %s\n", e.what());
    return 2;
  } catch (const std::exception& e) {
    std::fprintf(stderr, "lstmgrad: internal error: %s\n", e.what());
    return 3;
  }
  return lstmgrad::cli::exit_code();
}
