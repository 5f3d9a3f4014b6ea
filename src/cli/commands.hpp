// The subcommands of the lstmgrad command. Each cmd_*.cpp registers its own subcommand with a
// static CommandRegistrar, so adding a command touches no shared file.
#pragma once
#include <CLI/CLI.hpp>

namespace lstmgrad::cli {

using Registration = void (*)(CLI::App& app);

// `order` sets the position in `lstmgrad --help`.
struct CommandRegistrar {
  CommandRegistrar(int order, Registration registration);
};

void register_all(CLI::App& app);

// A command that ran but found a problem (check above tolerance) sets a non-zero exit code.
void set_exit_code(int code);
int exit_code();

}  // namespace lstmgrad::cli
