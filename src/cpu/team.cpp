#include "cpu/team.hpp"

#include <immintrin.h>
#include <pthread.h>
#include <sched.h>
#include <unistd.h>

#include <algorithm>
#include <array>
#include <atomic>
#include <cstdio>
#include <memory>
#include <mutex>
#include <thread>
#include <vector>

#include "cpu/spin_barrier.hpp"

namespace lstmgrad::cpu {

namespace {

std::atomic<CoreProbe> g_probe{&system_core_use};

// The team this thread is running a share of, if any.
struct Place {
  int thread = 0, threads = 1;
  SpinBarrier* barrier = nullptr;
};
thread_local Place t_place;

// A fork leaves the child only the thread that forked: a pool made before it has no workers
// there, and the child makes its own.
std::atomic<uint64_t> g_fork_epoch{0};
std::once_flag g_atfork_once;

// A team's share of a call. As in an OpenMP region, an exception may not leave it: the other
// threads would wait for this one at the team's barriers, or run on after the call returned.
void run_share(TeamJob job, void* context) noexcept {
  job(context);
}

// One calling thread's workers. Each has its own mailbox: the caller writes a job into the
// mailboxes of the workers it needs and bumps their `posted`; each worker runs what its mailbox
// holds and adds one to `done_`. Workers a call does not need are not touched.
class Pool {
 public:
  explicit Pool(uint64_t epoch) : epoch_(epoch) {}
  ~Pool() {
    for (auto& m : boxes_) {
      m->stop = true;
      post(*m);
    }
    for (auto& m : boxes_) m->thread.join();
  }
  Pool(const Pool&) = delete;
  Pool& operator=(const Pool&) = delete;

  uint64_t epoch() const { return epoch_; }

  void run(int n, TeamJob job, void* context) {
    if (static_cast<int>(boxes_.size()) < n - 1) boxes_.reserve(static_cast<size_t>(n - 1));
    while (static_cast<int>(boxes_.size()) < n - 1) {  // a worker counts once its thread runs
      auto box = std::make_unique<Box>();
      Box* m = box.get();
      const int id = static_cast<int>(boxes_.size()) + 1;
      m->thread = std::thread([this, m, id] { work(*m, id); });  // may throw: nothing is kept
      boxes_.push_back(std::move(box));                          // cannot throw: reserved
    }
    const Clock::time_point start = Clock::now();
    Site& site = site_of(job);
    if (last_site_) last_site_->push(std::chrono::duration<double>(start - last_end_).count());
    const Clock::duration spin = site.spin();
    const int caller_cpu = sched_getcpu();
    done_.store(0, std::memory_order_relaxed);
    for (int i = 0; i + 1 < n; ++i) {
      Box& m = *boxes_[static_cast<size_t>(i)];
      m.job = job, m.context = context, m.threads = n, m.spin = spin, m.caller_cpu = caller_cpu;
      post(m);
    }
    const Place outer = t_place;
    t_place = {0, n, &barrier_};
    run_share(job, context);
    t_place = outer;
    // The workers are on their cores (they spin at the team's barriers): wait for them likewise.
    for (int spins = 0; done_.load(std::memory_order_acquire) != n - 1; ++spins) {
      if (spins < kSpins)
        _mm_pause();
      else
        std::this_thread::yield();
    }
    last_site_ = &site, last_end_ = Clock::now();
  }

 private:
  using Clock = std::chrono::steady_clock;
  static constexpr int kSpins = 1 << 14;

  // How long the workers spin after a call, chosen per call site (the job's function) from the
  // gaps that followed its last calls: about 1.5 times the usual gap where that is at most
  // kMaxSpin (the next call finds them awake: waking a sleeping thread costs tens of
  // microseconds, and on some virtual machines milliseconds), else kMinSpin (the caller has
  // other work first, such as PyTorch's layers between an LSTM's forward and its backward; a
  // spinning worker would take a core from it). A site not seen yet: kFirstSpin.
  static constexpr auto kMinSpin = std::chrono::microseconds(50);
  static constexpr auto kFirstSpin = std::chrono::microseconds(1000);
  static constexpr auto kMaxSpin = std::chrono::microseconds(5000);
  struct Site {
    TeamJob job = nullptr;
    double gaps[3] = {};  // seconds, a ring
    int n = 0, pos = 0;
    void push(double gap) {
      gaps[pos++ % 3] = gap;
      n = std::min(n + 1, 3);
    }
    Clock::duration spin() const {
      if (n == 0) return kFirstSpin;
      const double a = gaps[0], b = gaps[1], c = gaps[2];
      const double usual = n < 3 ? std::min(a, n == 2 ? b : a)
                                 : std::max(std::min(a, b), std::min(std::max(a, b), c));
      const auto want =
          std::chrono::duration_cast<Clock::duration>(std::chrono::duration<double>(1.5 * usual)) +
          kMinSpin;
      return want <= kMaxSpin ? want : Clock::duration(kMinSpin);
    }
  };
  Site& site_of(TeamJob job) {
    for (Site& s : sites_)
      if (s.job == job) return s;
    Site& s = sites_[next_site_++ % sites_.size()];  // a new site takes the oldest one's place
    if (&s == last_site_) last_site_ = nullptr;
    s = Site{job};
    return s;
  }

  struct alignas(64) Box {
    std::atomic<uint32_t> posted{0};
    std::atomic<bool> asleep{false};
    TeamJob job = nullptr;
    void* context = nullptr;
    int threads = 1;
    Clock::duration spin{};
    int caller_cpu = -1;  // the CPU the caller posted from (-1: unknown)
    bool stop = false;
    std::thread thread;
  };

  static void post(Box& m) {
    m.posted.fetch_add(1, std::memory_order_seq_cst);  // publishes the mailbox's job
    if (m.asleep.load(std::memory_order_seq_cst)) m.posted.notify_one();
  }

  void work(Box& m, int id) {
    Aside aside;
    Clock::duration spin = kFirstSpin;
    for (uint32_t seen = 0;;) {
      seen = await(m, seen, spin);
      if (m.stop) return;
      aside.step(m.caller_cpu);
      t_place = {id, m.threads, &barrier_};
      run_share(m.job, m.context);
      t_place = {};
      spin = m.spin;  // read before the caller may post again (after done_)
      done_.fetch_add(1, std::memory_order_release);
    }
  }

  // A worker woken on the caller's CPU moves to another CPU it may use. The two would take turns
  // on one core at every barrier of the call, each step waiting out the other's spin, while the
  // other core runs something the scheduler counts as equal work: in a PyTorch training step,
  // OpenBLAS's worker, which calls sched_yield there for 0.1 s after torch's GEMM. The scheduler
  // wakes a thread near its waker and keeps three threads on two cores as two and one, so it
  // never parts them itself: a zaremba-small forward took 27 ms so, 3 ms apart. Off the caller's
  // CPU the worker takes the yielding thread's core. Its affinity stays so (its mask but that
  // CPU) until it meets the caller on its CPU again; then the CPU it left comes back into its
  // mask, unless the mask was changed from outside since (`taskset -a -p`): that one is kept.
  struct Aside {
    cpu_set_t set{};  // the mask it last set, read when left >= 0
    int left = -1;    // the CPU it took out of its mask (-1: none, or its mask was changed since)
    void step(int caller_cpu) {
      if (caller_cpu < 0 || caller_cpu >= CPU_SETSIZE || sched_getcpu() != caller_cpu) return;
      cpu_set_t now;
      if (pthread_getaffinity_np(pthread_self(), sizeof now, &now) != 0) return;
      if (left >= 0 && CPU_EQUAL(&now, &set)) CPU_SET(left, &now);
      CPU_CLR(caller_cpu, &now);
      if (CPU_COUNT(&now) == 0 || pthread_setaffinity_np(pthread_self(), sizeof now, &now) != 0)
        return;
      set = now, left = caller_cpu;
    }
  };

  // Spin up to `spin` for a new post, then sleep until one comes.
  static uint32_t await(Box& m, uint32_t seen, Clock::duration spin) {
    Clock::time_point start = Clock::now();
    for (uint32_t spins = 1;; ++spins) {
      const uint32_t p = m.posted.load(std::memory_order_acquire);
      if (p != seen) return p;
      if (spins % 256 != 0 || Clock::now() - start < spin) {
        _mm_pause();
        continue;
      }
      m.asleep.store(true, std::memory_order_seq_cst);
      m.posted.wait(seen, std::memory_order_seq_cst);
      m.asleep.store(false, std::memory_order_relaxed);
      start = Clock::now();
    }
  }

  uint64_t epoch_;
  std::vector<std::unique_ptr<Box>> boxes_;
  std::array<Site, 16> sites_{};
  size_t next_site_ = 0;
  Site* last_site_ = nullptr;  // the last call's site, and when it ended
  Clock::time_point last_end_;
  alignas(64) std::atomic<int> done_{0};
  SpinBarrier barrier_;
};

Pool& this_threads_pool() {
  std::call_once(g_atfork_once,
                 [] { pthread_atfork(nullptr, nullptr, [] { g_fork_epoch.fetch_add(1); }); });
  thread_local std::unique_ptr<Pool> pool;
  const uint64_t epoch = g_fork_epoch.load();
  if (pool && pool->epoch() != epoch)
    (void)pool.release();  // its threads are not in this process: nothing to join or free safely
  if (!pool) pool = std::make_unique<Pool>(epoch);
  return *pool;
}

}  // namespace

void run_team_job(int threads, TeamJob job, void* context) {
  if (threads <= 1 || t_place.barrier) {  // alone, or inside a team (nested): inline
    const Place outer = t_place;
    t_place = {0, 1, nullptr};
    job(context);
    t_place = outer;
    return;
  }
  this_threads_pool().run(threads, job, context);
}

int team_thread() {
  return t_place.thread;
}
int team_threads() {
  return t_place.threads;
}
void team_barrier() {
  if (t_place.threads > 1) t_place.barrier->wait(t_place.threads);
}

CoreUse system_core_use() {
  using Clock = std::chrono::steady_clock;
  static std::mutex mutex;
  static Clock::time_point last;
  static unsigned long long last_idle = 0, last_total = 0;
  static double last_own = 0;
  static std::atomic<double> idle_value{-1.0}, own_value{-1.0};
  const auto latest = [] { return CoreUse{idle_value.load(), own_value.load()}; };
  std::unique_lock lock(mutex, std::try_to_lock);
  if (!lock.owns_lock()) return latest();
  const Clock::time_point now = Clock::now();
  if (last != Clock::time_point{} && now - last < std::chrono::milliseconds(500)) return latest();
  // The first line: cpu user nice system idle iowait irq softirq steal ... (clock ticks, all CPUs)
  std::FILE* f = std::fopen("/proc/stat", "r");
  if (!f) return latest();
  unsigned long long t[8] = {};
  const int got = std::fscanf(f, "cpu %llu %llu %llu %llu %llu %llu %llu %llu", &t[0], &t[1], &t[2],
                              &t[3], &t[4], &t[5], &t[6], &t[7]);
  std::fclose(f);
  if (got < 5) return latest();
  timespec cpu{};
  const bool own_known = clock_gettime(CLOCK_PROCESS_CPUTIME_ID, &cpu) == 0;
  const double own = static_cast<double>(cpu.tv_sec) + 1e-9 * static_cast<double>(cpu.tv_nsec);
  unsigned long long total = 0;
  for (int k = 0; k < got; ++k) total += t[k];
  const unsigned long long idle = t[3] + t[4];
  const long cores = sysconf(_SC_NPROCESSORS_ONLN);
  if (last != Clock::time_point{} && total > last_total && cores > 0) {
    idle_value.store(static_cast<double>(idle - last_idle) /
                     static_cast<double>(total - last_total) * static_cast<double>(cores));
    const double wall = std::chrono::duration<double>(now - last).count();
    own_value.store(own_known ? std::clamp((own - last_own) / wall, 0.0, static_cast<double>(cores))
                              : -1.0);
  }
  last = now, last_idle = idle, last_total = total, last_own = own;
  return latest();
}

CoreProbe set_core_probe(CoreProbe probe) {
  return g_probe.exchange(probe);
}

CoreUse core_use() {
  return g_probe.load()();
}

double spare_cores(int running) {
  const CoreUse use = core_use();
  if (use.idle < 0) return -1;
  return use.idle + (use.own >= 0 ? std::max(0.0, use.own - running) : 0.0);
}

// The lower median: of two, the better (one may be cold); of four, the second best.
double TeamTuner::State::recent_median() const {
  double sorted[kRecent];
  for (int i = 0; i < recent_n; ++i) {  // insertion sort: at most kRecent values
    int j = i;
    for (; j > 0 && sorted[j - 1] > recent[i]; --j) sorted[j] = sorted[j - 1];
    sorted[j] = recent[i];
  }
  return sorted[(recent_n - 1) / 2];
}

void TeamTuner::State::push(double cost) {
  recent[recent_pos++ % kRecent] = cost;
  recent_n = std::min(recent_n + 1, kRecent);
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
    // Another thread needs a core to run on: where the machine shows none spare, a trial of more
    // threads can only lose (and costs a slow call), so the other neighbour is tried, or none.
    if (trial > st->cur) {
      const double spare = spare_cores(st->cur);
      if (spare >= 0 && spare < 0.5) trial = st->cur > 1 ? st->cur - 1 : 0;
    }
    if (trial == 0) {  // postponed as if it had lost: record() watches the spare count meanwhile
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
  // Below its shares while a core stands spare: the process that took it may have left.
  if (st->cur < st->shares && st->trial == 0 && st->next_trial > st->last_trial + kIdleRetry &&
      spare_cores(st->cur) >= 0.5)
    st->next_trial = st->last_trial + kIdleRetry, st->direction = 1;
  // A team of several threads that got slower: another process may have taken a core.
  if (st->cur > 1 && st->level > 0 && st->recent_n == kRecent && st->trial == 0 &&
      st->recent_median() > 1.5 * st->level)
    st->next_trial = st->calls, st->interval = 3;
}

}  // namespace lstmgrad::cpu
