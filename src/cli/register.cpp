#include <algorithm>
#include <utility>
#include <vector>

#include "cli/commands.hpp"

namespace lstmgrad::cli {

namespace {

int g_exit_code = 0;

std::vector<std::pair<int, Registration>>& registry() {
  static std::vector<std::pair<int, Registration>> r;  // built during static initialisation
  return r;
}

}  // namespace

CommandRegistrar::CommandRegistrar(int order, Registration registration) {
  registry().emplace_back(order, registration);
}

CLI::Option* add_device_option(CLI::App* cmd, std::string& device, const std::string& what) {
  return cmd->add_option("--device", device, what)
      ->check(CLI::IsMember({"cpu", "cuda"}))
      ->capture_default_str();
}

CLI::Option* add_recurrence_option(CLI::App* cmd, std::string& recurrence) {
  return cmd
      ->add_option("--recurrence", recurrence,
                   "--device cuda: the recurrent path (auto, persistent, steps)")
      ->check(CLI::IsMember({"auto", "persistent", "steps"}))
      ->capture_default_str();
}

void set_exit_code(int code) {
  g_exit_code = code;
}
int exit_code() {
  return g_exit_code;
}

void register_all(CLI::App& app) {
  auto& r = registry();
  std::sort(r.begin(), r.end(), [](const auto& a, const auto& b) { return a.first < b.first; });
  for (const auto& [order, registration] : r) registration(app);
}

}  // namespace lstmgrad::cli
