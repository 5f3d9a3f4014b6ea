#include "cpu/team.hpp"

#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <cstdio>
#include <mutex>

namespace lstmgrad::cpu {

namespace {

std::atomic<IdleProbe> g_probe{&system_idle_cores};

}  // namespace

double system_idle_cores() {
  using Clock = std::chrono::steady_clock;
  static std::mutex mutex;
  static Clock::time_point last;
  static unsigned long long last_idle = 0, last_total = 0;
  static std::atomic<double> value{-1.0};
  std::unique_lock lock(mutex, std::try_to_lock);
  if (!lock.owns_lock()) return value.load();
  const Clock::time_point now = Clock::now();
  if (last != Clock::time_point{} && now - last < std::chrono::milliseconds(500))
    return value.load();
  // The first line: cpu user nice system idle iowait irq softirq steal ... (clock ticks, all CPUs)
  std::FILE* f = std::fopen("/proc/stat", "r");
  if (!f) return value.load();
  unsigned long long t[8] = {};
  const int got = std::fscanf(f, "cpu %llu %llu %llu %llu %llu %llu %llu %llu", &t[0], &t[1], &t[2],
                              &t[3], &t[4], &t[5], &t[6], &t[7]);
  std::fclose(f);
  if (got < 5) return value.load();
  unsigned long long total = 0;
  for (int k = 0; k < got; ++k) total += t[k];
  const unsigned long long idle = t[3] + t[4];
  const long cores = sysconf(_SC_NPROCESSORS_ONLN);
  if (last != Clock::time_point{} && total > last_total && cores > 0)
    value.store(static_cast<double>(idle - last_idle) / static_cast<double>(total - last_total) *
                static_cast<double>(cores));
  last = now, last_idle = idle, last_total = total;
  return value.load();
}

IdleProbe set_idle_probe(IdleProbe probe) {
  return g_probe.exchange(probe);
}

double idle_cores() {
  return g_probe.load()();
}

double TeamTuner::State::recent_median() const {
  const double a = recent[0], b = recent[1], c = recent[2];
  if (recent_n == 1) return a;
  if (recent_n == 2) return std::min(a, b);  // the better of two (the first may be cold)
  return std::max(std::min(a, b), std::min(std::max(a, b), c));
}

void TeamTuner::State::push(double cost) {
  recent[recent_pos++ % 3] = cost;
  recent_n = std::min(recent_n + 1, 3);
}

int TeamTuner::threads(int shares, int64_t shape) {
  State* st = nullptr;
  for (State& s : states_)
    if (s.shares == shares && s.shape == shape) st = &s;
  if (!st) {  // a new shape: the least recently used state starts over, one thread per share
    st = std::min_element(std::begin(states_), std::end(states_),
                          [](const State& a, const State& b) { return a.used < b.used; });
    *st = State{};
    st->shares = shares, st->shape = shape, st->cur = shares;
    st->interval = 3, st->next_trial = 5;  // calls 3-5 (past the cold first ones) for its median
  }
  st->used = ++uses_;
  last_ = st;
  if (shares <= 1) return last_threads_ = 1;
  if (st->trial == 0 && st->calls >= st->next_trial) {
    int trial = st->cur == shares ? st->cur - 1 : st->cur == 1 ? 2 : st->cur + st->direction;
    // Another thread needs a core to run on: where the machine shows none idle, a trial of more
    // threads can only lose (and costs a slow call), so the other neighbour is tried, or none.
    if (trial > st->cur) {
      const double idle = idle_cores();
      if (idle >= 0 && idle < 0.5) trial = st->cur > 1 ? st->cur - 1 : 0;
    }
    if (trial == 0) {  // postponed as if it had lost: record() watches the idle count meanwhile
      st->interval = std::min(st->interval * 2, kMaxInterval);
      st->next_trial = st->calls + st->interval, st->last_trial = st->calls;
    } else {
      st->trial = trial, st->trial_calls = 0, st->trial_best = 0;
    }
  }
  return last_threads_ = st->trial != 0 ? st->trial : st->cur;
}

void TeamTuner::record(double cost) {
  State* st = last_;
  if (!st) return;
  ++st->calls;
  if (st->shares <= 1) return;
  if (st->trial != 0 && last_threads_ == st->trial) {
    st->trial_best = st->trial_calls++ == 0 ? cost : std::min(st->trial_best, cost);
    const double now = st->recent_n > 0 ? st->recent_median() : st->trial_best;
    const bool clear_loss = st->trial_best > 1.5 * now;
    if (st->trial_calls < kTrial && !clear_loss) return;
    // Fewer threads win when they are no slower; more must be 10% faster (a thread should pay
    // for itself: an idle member of the team spins, and on a busy machine takes a share of a
    // core from this process's other work and from other processes).
    if (st->trial_best < (st->trial < st->cur ? 0.97 : 0.9) * now) {  // the neighbour wins
      // Walk on the same way soon; at an end of [1, shares] the only neighbour is the team just
      // left, so its next trial waits as if it had lost clearly twice.
      st->direction = st->trial > st->cur ? 1 : -1;
      st->cur = st->trial, st->recent_n = 0, st->recent_pos = 0;
      st->push(st->trial_best);
      st->level = st->trial_best;
      st->interval = st->cur == 1 || st->cur == st->shares ? 48 : 3;
    } else {
      st->level = now;
      st->direction = -st->direction;  // in the middle: the other neighbour next
      st->interval = std::min(st->interval * (clear_loss ? 4 : 2), kMaxInterval);
    }
    st->trial = 0, st->next_trial = st->calls + st->interval, st->last_trial = st->calls;
    return;
  }
  st->push(cost);
  // Below its shares while a core stands idle: the process that took it may have left.
  if (st->cur < st->shares && st->trial == 0 && st->next_trial > st->last_trial + kIdleRetry &&
      idle_cores() >= 0.5)
    st->next_trial = st->last_trial + kIdleRetry, st->direction = 1;
  // A team of several threads that got slower: another process may have taken a core.
  if (st->cur > 1 && st->level > 0 && st->recent_n == 3 && st->trial == 0 &&
      st->recent_median() > 1.5 * st->level)
    st->next_trial = st->calls, st->interval = 3;
}

}  // namespace lstmgrad::cpu
