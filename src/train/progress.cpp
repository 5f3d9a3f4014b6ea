#include "train/progress.hpp"

#include <fmt/format.h>
#include <unistd.h>

#include <cmath>
#include <cstdio>

namespace lstmgrad::train {

namespace {

std::string clock(double seconds) {
  const int64_t s = static_cast<int64_t>(std::max(0.0, seconds));
  return s >= 3600 ? fmt::format("{}:{:02}:{:02}", s / 3600, s / 60 % 60, s % 60)
                   : fmt::format("{}:{:02}", s / 60, s % 60);
}

}  // namespace

Progress::Progress(bool quiet) : quiet_(quiet), tty_(isatty(fileno(stderr)) != 0) {}

void Progress::update(int64_t epoch, int64_t epochs, int64_t k, int64_t n, double loss,
                      double tokens_per_s, double lr, double elapsed_s) {
  if (quiet_) return;
  const double frac = static_cast<double>(k) / static_cast<double>(n);
  const double eta = k > 0 ? elapsed_s * static_cast<double>(n - k) / static_cast<double>(k) : 0;
  if (tty_) {
    const auto now = std::chrono::steady_clock::now();
    if (k != n && now - last_draw_ < std::chrono::milliseconds(100)) return;
    last_draw_ = now;
    constexpr int kWidth = 30;
    const int filled = static_cast<int>(frac * kWidth);
    fmt::print(stderr,
               "\repoch {}/{} [{}{}] {:3.0f}% loss {:.3f} ppl {:.1f} | {:.1f}k tok/s | lr {:.3g} | "
               "ETA {} ",
               epoch, epochs, std::string(static_cast<size_t>(filled), '#'),
               std::string(static_cast<size_t>(kWidth - filled), '.'), 100 * frac, loss,
               std::exp(loss), tokens_per_s / 1e3, lr, clock(eta));
    std::fflush(stderr);
    return;
  }
  const int64_t tenth = k * 10 / n;
  if (tenth == last_tenth_) return;
  last_tenth_ = tenth;
  fmt::print(stderr,
             "epoch {}/{} {:3.0f}% window {}/{} loss {:.4f} ppl {:.2f} {:.0f} tok/s lr {:.4g} "
             "ETA {}\n",
             epoch, epochs, 100 * frac, k, n, loss, std::exp(loss), tokens_per_s, lr, clock(eta));
}

void Progress::line(const std::string& text) {
  if (quiet_) return;
  if (tty_) fmt::print(stderr, "\r\033[K");
  fmt::print(stderr, "{}\n", text);
  last_tenth_ = -1;
}

}  // namespace lstmgrad::train
