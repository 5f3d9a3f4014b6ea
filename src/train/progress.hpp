// Training progress on stderr: a bar redrawn in place on a terminal, plain log lines otherwise.
#pragma once
#include <chrono>
#include <cstdint>
#include <string>

namespace lstmgrad::train {

class Progress {
 public:
  explicit Progress(bool quiet);
  // Called after each update: window k of n in `epoch`; loss is the running mean nats/token.
  void update(int64_t epoch, int64_t epochs, int64_t k, int64_t n, double loss, double tokens_per_s,
              double lr, double elapsed_s);
  // A line that stays (validation results); ends any bar in progress.
  void line(const std::string& text);

 private:
  bool quiet_, tty_;
  int64_t last_tenth_ = -1;
  std::chrono::steady_clock::time_point last_draw_{};
};

}  // namespace lstmgrad::train
