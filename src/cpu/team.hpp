// The engine's thread teams: a fixed split of the work into shares, and the threads that run it.
//
// Every split among threads (the rows of a GEMM, the hidden units of a step, the weight rows of a
// gradient) is a split into `shares`: the thread count asked for, or the default for the shapes.
// Every sum's order depends on the shares alone. How many threads run them is a second choice:
// one per share on a quiet machine; fewer on a busy one, where a thread of the team is often off
// its core and each per-step barrier waits for it (TeamTuner). The results do not change a bit
// with that choice, so a run stays reproducible while its team follows the machine's load.
#pragma once
#include <algorithm>
#include <chrono>
#include <cstdint>
#include <functional>
#include <type_traits>

namespace lstmgrad::cpu {

// The engine's own threads. run_team(n, f) runs f() on n threads at once: the calling thread as
// thread 0 and n - 1 workers of the calling thread's own pool (made when first needed, kept for
// the thread's life), and returns when all have returned. Inside, team_thread() and
// team_threads() say who and how many, and team_barrier() waits for the whole team (a
// SpinBarrier: it spins, then yields, and never sleeps). Called inside a team, or with n <= 1,
// it runs f() on the calling thread alone.
//
// A worker that has finished spins for the next call about as long as the gap after that call
// site usually is (the engine's calls follow one another closely: forward, readout, backward,
// the update), at most 5 ms, then sleeps until one comes. OpenMP's runtime (libgomp) spins for
// several milliseconds whatever follows, on the cores the caller's next work needs: in a PyTorch
// training step it made the GEMM after the LSTM 20-25% slower. A worker that finds itself on
// the caller's CPU when a call starts moves to another CPU it may run on, and stays off that one
// (its affinity) until it meets the caller there again: two members of a team on one core take
// turns at every barrier. f must not throw: on a team of
// several threads, as in an OpenMP region, an exception that leaves it ends the process.
using TeamJob = void (*)(void* context);
void run_team_job(int threads, TeamJob job, void* context);
template <class F>
void run_team(int threads, F&& f) {
  using Fn = std::remove_reference_t<F>;
  run_team_job(
      threads, [](void* c) { (*static_cast<Fn*>(c))(); }, &f);
}
int team_thread();    // this thread's place in its team, 0 .. team_threads() - 1 (0 outside one)
int team_threads();   // the size of this thread's team (1 outside one)
void team_barrier();  // every thread of this thread's team has called it (outside one: returns)

// Boundary p of `total` split among `size` shares, on a multiple of 16 (0 and total at the ends).
// The BLAS treats an edge of fewer rows or columns with other kernels (another order of the
// same sums), so every boundary sits where a one-thread call would have a kernel edge too.
inline int64_t split_edge(int64_t total, int p, int size) {
  if (p <= 0) return 0;
  if (p >= size) return total;
  return std::min(total, (total * p / size + 8) / 16 * 16);
}

// The shares for work of `flops` between two barriers: one per ~2 MFLOP (tens of microseconds),
// at most `max_threads`; tiny models run as one share, where a barrier would cost more than the
// step.
inline int team_size_for(double flops, int max_threads) {
  return std::max(1, std::min(max_threads, static_cast<int>(flops / 2e6)));
}

// Share `id` of `size`: its hidden units [j0, j1) (whole vectors for the gate pass too), and its
// rows [row0, row1) of N for the row-split GEMMs.
struct TeamSlice {
  int id = 0, size = 1;
  int64_t j0 = 0, j1 = 0;  // hidden units [j0, j1)
  int64_t n() const { return j1 - j0; }
  int64_t row0(int64_t N) const { return split_edge(N, id, size); }
  int64_t row1(int64_t N) const { return split_edge(N, id + 1, size); }
  // Rows [even0, even1) of B split as evenly as can be (at B = 20 on 2 shares: 10 and 10, where
  // the edges on multiples of 16 give 16 and 4). The sums of a row then depend on the split (a
  // GEMM's row edges), so float64, whose results depend on no split, keeps row0/row1.
  int64_t even0(int64_t B) const { return B * id / size; }
  int64_t even1(int64_t B) const { return B * (id + 1) / size; }
};

inline TeamSlice team_slice(int id, int size, int64_t H) {
  return {id, size, split_edge(H, id, size), split_edge(H, id + 1, size)};
}

// One thread's place in a team of `threads` that runs `shares` (threads <= shares): thread t
// runs shares t, t + threads, t + 2 threads, ...
struct TeamMember {
  int thread = 0, threads = 1, shares = 1;
  // Work outside the engine that wants the CPU now and then during a long call (the sums of a
  // data-parallel update: docs/scaling.md), or null: thread 0 (the calling thread) runs it
  // between steps.
  const std::function<void()>* poll = nullptr;

  void poll_outside() const {
    if (poll && thread == 0) (*poll)();
  }

  // f(TeamSlice) for each of this thread's shares, H hidden units split among them.
  template <class F>
  void for_shares(int64_t H, F&& f) const {
    for (int s = thread; s < shares; s += threads) f(team_slice(s, shares, H));
  }
};

// How many threads run one site's shares (the stack's forward, its backward, the readout, an
// optimizer pass), chosen by measuring. Before each call the site asks threads(shares, shape);
// after it, record() takes the call's seconds per unit of work. Each shape (a site sees a few:
// training's batches, the last short one, validation's) keeps its own state, so that a shape's
// costs are compared only with its own.
//
// A state runs one choice (one thread per share at first) and now and then tries a neighbour,
// one thread fewer or more, for up to kTrial calls. The neighbour replaces the choice when its
// best call beats the median of the choice's last kRecent calls (5: on a VM two calls in a row
// may each take twice their time, a thread woken on an idle vCPU, and a median of three then
// let one slow trial look like a win): by 3% for fewer threads, by 10% for more (threads
// must pay for themselves; the band keeps noise from making the team flap); a first call
// that costs 1.5 times the choice's is a clear loss and ends the trial at once (a trial should cost
// little: a thread off its core makes a team several times slower). The first trial comes after 5
// calls, then at intervals that grow while the choice holds (4x after a clear loss, else 2x; at
// most kMaxInterval calls). A neighbour that won is followed by a trial one step further the same
// way; at an end of [1, shares] (where the only neighbour is the team just left) the next trial
// waits 48 calls. A choice of several threads whose cost rises by half over its level at the last
// decision (another process took a core) is tried again at the next call. A team below its shares
// whose machine shows a core spare (spare_cores(): the other process left) tries more threads
// within kIdleRetry calls of its last trial rather than at the long interval; where the machine
// shows no core spare, it does not try more threads at all (the extra thread would have no core:
// the trial could only lose), so on a loaded machine the team runs as a smaller fixed team would.
class TeamTuner {
 public:
  static constexpr int kTrial = 2, kStates = 4, kRecent = 5;
  static constexpr int64_t kMaxInterval = 1024, kIdleRetry = 48;

  // The threads for the next call, in [1, shares]. `shape`: the call's shape (any number that
  // tells the site's shapes apart).
  int threads(int shares, int64_t shape);
  // The cost of the call that threads() was asked for (seconds per unit of work).
  void record(double cost);

 private:
  struct State {
    int shares = 0;
    int64_t shape = -1, used = 0;
    int cur = 1, trial = 0, trial_calls = 0, direction = -1;
    int64_t calls = 0, next_trial = 0, interval = 0, last_trial = 0;
    double trial_best = 0, level = 0;
    double recent[kRecent] = {};  // the choice's last costs, a ring
    int recent_n = 0, recent_pos = 0;
    double recent_median() const;
    void push(double cost);
  };
  State states_[kStates];
  State* last_ = nullptr;  // the state of the last threads()
  int last_threads_ = 1;
  int64_t uses_ = 0;
};

// What the machine's cores did over about the last half second: `idle`, the cores idle; `own`,
// the cores this process's threads ran on (< 0: unknown). The default reads /proc/stat and this
// process's CPU time (Linux; the tuner reads it only while a team runs below its shares); tests
// install their own. set_core_probe returns the previous probe.
struct CoreUse {
  double idle = -1, own = -1;
};
using CoreProbe = CoreUse (*)();
CoreUse system_core_use();
CoreProbe set_core_probe(CoreProbe probe);
CoreUse core_use();

// The cores a team that runs `running` threads could add (< 0: unknown): the idle ones, and what
// this process's other threads run beyond the team's. Those run beside the team in this process,
// and a runtime's idle threads among them give their core up: OpenBLAS's workers call
// sched_yield while they wait for work, about 0.1 s after each GEMM, so in a PyTorch training
// step (the LSTM between torch's GEMMs) the machine shows no core idle although one is the
// team's for the taking.
double spare_cores(int running);

// One call of a site: its team, `running` threads (at most `shares`) when running >= 1, else
// the tuner's choice, timed from construction to destruction and recorded per unit of `work`.
class TeamCall {
 public:
  // The call's shape is its work, rounded (calls of one shape do the same work).
  TeamCall(TeamTuner& tuner, int shares, int running, double work)
      : tuner_(running > 0 ? nullptr : &tuner),
        work_(work),
        threads_(running > 0 ? std::min(running, shares)
                             : tuner.threads(shares, static_cast<int64_t>(work))) {}
  ~TeamCall() {
    if (tuner_)
      tuner_->record(std::chrono::duration<double>(Clock::now() - start_).count() / work_);
  }
  TeamCall(const TeamCall&) = delete;
  TeamCall& operator=(const TeamCall&) = delete;

  int threads() const { return threads_; }

 private:
  using Clock = std::chrono::steady_clock;
  TeamTuner* tuner_;
  double work_;
  int threads_;
  Clock::time_point start_ = Clock::now();
};

}  // namespace lstmgrad::cpu
