// The subcommands of the lstmgrad command; each file registers one.
#pragma once
#include <CLI/CLI.hpp>

namespace lstmgrad::cli {

void register_all(CLI::App& app);

void register_exercise(CLI::App& app);

// A command that ran but found a problem (check above tolerance) sets a non-zero exit code.
void set_exit_code(int code);
int exit_code();

}  // namespace lstmgrad::cli
