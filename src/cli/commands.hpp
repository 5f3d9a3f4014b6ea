// The subcommands of the lstmgrad command. Each cmd_*.cpp registers its own subcommand with a
// static CommandRegistrar, so adding a command touches no shared file.
#pragma once
#include <CLI/CLI.hpp>
#include <string>

#include "lstmgrad/regularize.hpp"

namespace lstmgrad::cli {

using Registration = void (*)(CLI::App& app);

// `order` sets the position in `lstmgrad --help`.
struct CommandRegistrar {
  CommandRegistrar(int order, Registration registration);
};

void register_all(CLI::App& app);

// --device cpu|cuda (default cpu), with `what` as its help text.
CLI::Option* add_device_option(CLI::App* cmd, std::string& device,
                               const std::string& what = "cpu, or cuda (float32 on an NVIDIA GPU)");
// --recurrence auto|persistent|steps: the CUDA engine's recurrent path.
CLI::Option* add_recurrence_option(CLI::App* cmd, std::string& recurrence);
// AWD-LSTM's regularisers and --tie-weights, the same flags on check and train
// (lstmgrad/regularize.hpp; docs/cli.md).
void add_regularization_options(CLI::App* cmd, Regularization& r, bool& tie_weights);
// --zoneout-h, --zoneout-s (check and train): the model's zoneout rates.
void add_zoneout_options(CLI::App* cmd, double& zoneout_h, double& zoneout_s);

// A command that ran but found a problem (check above tolerance) sets a non-zero exit code.
void set_exit_code(int code);
int exit_code();

}  // namespace lstmgrad::cli
