// cpu/team.hpp: the shares and the tuner that chooses how many threads run them. The tuner is fed
// made-up costs here (a model of a machine, quiet or busy), so its choices can be checked exactly;
// tests/test_bench.cpp checks that its choices change no bit of a model's results.
#include <dirent.h>
#include <gtest/gtest.h>
#include <sched.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <cstdlib>
#include <functional>
#include <thread>
#include <vector>

#include "cpu/team.hpp"
#include "sanitizers.hpp"

namespace lstmgrad::cpu {
namespace {

// Runs `calls` calls of one shape through the tuner, each costing cost(threads); returns the
// threads of every call.
std::vector<int> drive(TeamTuner& tuner, int shares, int64_t shape, int calls,
                       const std::function<double(int)>& cost) {
  std::vector<int> used;
  for (int i = 0; i < calls; ++i) {
    const int t = tuner.threads(shares, shape);
    used.push_back(t);
    tuner.record(cost(t));
  }
  return used;
}

// The machine's idle cores as the tests' model says (the tuner asks while it runs below its
// shares), and the cores this process ran on (< 0: not known, the idle count alone); each test
// sets them through a FakeIdle, which puts the system's probe back after.
double g_idle = 0, g_own = -1;
struct FakeIdle {
  CoreProbe previous;
  explicit FakeIdle(double idle, double own = -1)
      : previous(set_core_probe([] {
          return CoreUse{g_idle, g_own};
        })) {
    g_idle = idle, g_own = own;
  }
  ~FakeIdle() { set_core_probe(previous); }
};

int count(const std::vector<int>& v, int x, size_t from = 0) {
  int n = 0;
  for (size_t i = from; i < v.size(); ++i) n += v[i] == x;
  return n;
}

// Quiet: two threads take 0.55 of one thread's time. The tuner keeps 2 and tries 1 less and less
// often: after the first trial at call 6, the trials' intervals grow 4x (each is a clear loss,
// one call long).
TEST(TeamTuner, KeepsEveryThreadOnAQuietMachine) {
  const FakeIdle idle(0);
  TeamTuner tuner;
  const auto used = drive(tuner, 2, 700, 2000, [](int t) { return t == 2 ? 0.55 : 1.0; });
  EXPECT_EQ(used[0], 2);
  EXPECT_EQ(used[5], 1);  // the first trial
  EXPECT_LE(count(used, 1), 6) << "trials of one thread in 2000 calls";
  EXPECT_EQ(used.back(), 2);
}

// Busy: a thread of the team is often off its core, and two threads take 3x one thread's time.
// The tuner moves to one thread at its first trial and stays. With the machine showing no idle
// core it never tries two threads again; where it cannot tell (no idle count), its trials of two
// threads are single calls (a clear loss ends a trial at once), ever rarer.
TEST(TeamTuner, LeavesTheBusyCoreOnALoadedMachine) {
  const FakeIdle idle(0);  // the other process keeps the core
  TeamTuner tuner;
  auto used = drive(tuner, 2, 700, 2000, [](int t) { return t == 2 ? 3.0 : 1.0; });
  EXPECT_EQ(used[5], 1);
  EXPECT_EQ(used[7], 1);  // chosen after the trial
  EXPECT_EQ(count(used, 2, 7), 0) << "calls on two threads after the switch, no core idle";
  g_idle = -1;
  TeamTuner blind;
  used = drive(blind, 2, 700, 2000, [](int t) { return t == 2 ? 3.0 : 1.0; });
  EXPECT_EQ(used[7], 1);
  EXPECT_GE(count(used, 2, 7), 1) << "no idle count: the trials go on";
  EXPECT_LE(count(used, 2, 7), 6) << "calls on two threads after the switch, no idle count";
}

// Fewer threads win when they are no slower, more threads only when 10% faster: within that band
// the team stays where it is (noise must not make it flap).
TEST(TeamTuner, PrefersFewerThreadsUnlessMorePay) {
  const FakeIdle idle(0);
  TeamTuner down;  // one thread a little faster than two (5%): one
  auto used = drive(down, 2, 700, 500, [](int t) { return t == 2 ? 1.0 : 0.95; });
  EXPECT_EQ(used.back(), 1);
  EXPECT_LE(count(used, 2, 7), 16) << "trials of two threads";
  TeamTuner stay;  // two threads 5% faster: two, not worth leaving, not worth a flap
  used = drive(stay, 2, 700, 500, [](int t) { return t == 2 ? 0.95 : 1.0; });
  EXPECT_EQ(used.back(), 2);
  EXPECT_LE(count(used, 1), 16) << "trials of one thread";
}

// A quiet machine that turns busy: the rise of the 2-thread team's cost triggers a trial at once,
// not after the long interval it had reached.
TEST(TeamTuner, NoticesACoreTakenMidRun) {
  const FakeIdle idle(0);
  TeamTuner tuner;
  bool busy = false;
  const auto cost = [&](int t) { return t == 2 ? (busy ? 3.0 : 0.55) : 1.0; };
  drive(tuner, 2, 700, 600, cost);
  busy = true;
  const auto used = drive(tuner, 2, 700, 10, cost);
  EXPECT_EQ(used.back(), 1) << "still on two threads 10 calls after the core was taken";
}

// Two slow calls in a row just before a trial (a worker woken on an idle vCPU takes milliseconds
// on a VM: both calls of a step after a pause cost twice as much): the trial of one thread, slower
// than two threads' usual calls, does not win against them. With the median of the last three
// calls (two of them slow) it did, and the team then ran one thread for 48 calls.
TEST(TeamTuner, TwoSlowCallsBeforeATrialDoNotDecideIt) {
  const FakeIdle idle(1.0);
  TeamTuner tuner;
  int call = 0;
  const auto used = drive(tuner, 2, 700, 200, [&](int t) {
    const int i = call++;
    if (t == 1) return 1.7;
    return i == 3 || i == 4 ? 8.0 : 1.0;
  });
  EXPECT_EQ(used[5], 1);  // the first trial, right after the slow calls
  EXPECT_EQ(used.back(), 2);
  EXPECT_LE(count(used, 1), 6) << "trials of one thread in 200 calls";
}

// A core freed again: the periodic trial finds two threads faster and takes them back within the
// longest interval.
TEST(TeamTuner, TakesAFreedCoreBack) {
  const FakeIdle idle(-1);  // no idle count (another system): the interval alone
  TeamTuner tuner;
  bool busy = true;
  const auto cost = [&](int t) { return t == 2 ? (busy ? 3.0 : 0.55) : 1.0; };
  drive(tuner, 2, 700, 600, cost);
  busy = false;
  const auto used = drive(tuner, 2, 700, TeamTuner::kMaxInterval + 10, cost);
  EXPECT_EQ(used.back(), 2);
}

// A core freed where the machine shows it idle: the team takes it back within kIdleRetry calls of
// its last trial, not after the long interval it had reached (0.5 idle cores is the threshold).
TEST(TeamTuner, TakesAnIdleCoreBackSoon) {
  const FakeIdle idle(0);
  TeamTuner tuner;
  bool busy = true;
  const auto cost = [&](int t) { return t == 2 ? (busy ? 3.0 : 0.55) : 1.0; };
  const auto before = drive(tuner, 2, 700, 600, cost);
  EXPECT_EQ(count(before, 2, 7), 0) << "no idle core: no trials of two threads";
  busy = false;
  g_idle = 0.4;  // below the threshold: nothing changes
  auto used = drive(tuner, 2, 700, 60, cost);
  EXPECT_EQ(used.back(), 1);
  g_idle = 0.9;
  used = drive(tuner, 2, 700, TeamTuner::kIdleRetry + 5, cost);
  EXPECT_EQ(used.back(), 2) << "still on one thread with a core idle";
}

// An idle core that two threads do not make faster (the idle count misleads, e.g. a container's
// limit): its trials lose and stay at most one per kIdleRetry calls.
TEST(TeamTuner, IdleCoreTrialsThatLoseStayRare) {
  const FakeIdle idle(1.0);
  TeamTuner tuner;
  const auto used = drive(tuner, 2, 700, 2000, [](int t) { return t == 2 ? 3.0 : 1.0; });
  EXPECT_EQ(used.back(), 1);
  EXPECT_LE(count(used, 2, 7), 2000 / TeamTuner::kIdleRetry + 1);
  EXPECT_GE(count(used, 2, 7), 2000 / TeamTuner::kIdleRetry / 2) << "the idle core was ignored";
}

// The system's probe: after half a second it reports counts in [0, cores] (Linux), or < 0. A
// thread of this process that spins through the window shows as this process's.
TEST(TeamTuner, SystemCoreUseIsACount) {
  (void)system_core_use();
  std::atomic<bool> stop{false};
  std::thread spinner([&] {
    while (!stop.load(std::memory_order_relaxed)) {
    }
  });
  std::this_thread::sleep_for(std::chrono::milliseconds(600));
  const CoreUse use = system_core_use();
  stop = true;
  spinner.join();
  if (use.idle < 0) GTEST_SKIP() << "no /proc/stat";
  const double cores = static_cast<double>(std::thread::hardware_concurrency());
  EXPECT_LE(use.idle, cores + 0.5);
  ASSERT_GE(use.own, 0.0);
  EXPECT_LE(use.own, cores + 0.01);
  EXPECT_GE(use.own, 0.5) << "a spinning thread of this process, most of the window";
}

// A core that this process's other threads hold (OpenBLAS's workers yield theirs while they wait
// for work, PyTorch's layers around the LSTM leave them so): the machine shows no core idle, but
// the team's one thread plus them use both, so the core counts as spare and the team takes it back
// within kIdleRetry calls. Where the other process holds it (own = 1: the team alone), it does not.
TEST(TeamTuner, CountsThisProcesssOtherThreadsAsSpare) {
  const FakeIdle idle(0, 1.0);
  TeamTuner tuner;
  bool busy = true;
  const auto cost = [&](int t) { return t == 2 ? (busy ? 3.0 : 0.55) : 1.0; };
  const auto before = drive(tuner, 2, 700, 600, cost);
  EXPECT_EQ(count(before, 2, 7), 0) << "another process's core: no trials of two threads";
  busy = false;
  auto used = drive(tuner, 2, 700, 60, cost);
  EXPECT_EQ(used.back(), 1) << "nothing spare, nothing tried";
  g_own = 1.9;  // this process's other threads beside the team's one
  used = drive(tuner, 2, 700, TeamTuner::kIdleRetry + 5, cost);
  EXPECT_EQ(used.back(), 2) << "still on one thread with this process's own core spare";
}

TEST(TeamTuner, SpareCoresCountIdleAndThisProcesssOthers) {
  const FakeIdle idle(0.25, 1.75);
  EXPECT_DOUBLE_EQ(spare_cores(1), 1.0);
  EXPECT_DOUBLE_EQ(spare_cores(2), 0.25);  // the team's own threads are not spare
  g_own = -1;
  EXPECT_DOUBLE_EQ(spare_cores(1), 0.25);
  g_idle = -1;
  EXPECT_LT(spare_cores(1), 0);
}

// Each shape keeps its own state: a validation pass's shape, busy or not, does not reset what the
// training shape learnt.
TEST(TeamTuner, KeepsShapesApart) {
  const FakeIdle idle(0);
  TeamTuner tuner;
  drive(tuner, 2, 700, 100, [](int t) { return t == 2 ? 3.0 : 1.0; });  // training: one thread
  drive(tuner, 2, 20, 100, [](int t) { return t == 2 ? 0.5 : 1.0; });   // validation: two
  EXPECT_EQ(tuner.threads(2, 700), 1);
  tuner.record(1.0);
  EXPECT_EQ(tuner.threads(2, 20), 2);
  tuner.record(0.5);
}

// Neighbours only, in [1, shares]: with 4 shares and 3 free cores, it walks to 3 and stays.
TEST(TeamTuner, WalksToTheBestTeamOfMany) {
  const FakeIdle idle(0);
  TeamTuner tuner;
  const auto cost = [](int t) { return t == 3 ? 0.4 : t == 4 ? 1.5 : 1.0 / t; };
  const auto used = drive(tuner, 4, 700, 300, cost);
  for (int t : used) {
    EXPECT_GE(t, 1);
    EXPECT_LE(t, 4);
  }
  EXPECT_EQ(used.back(), 3);
}

// In the middle of [1, shares] with no core idle the tuner tries only the smaller neighbour: here
// it walks 4 -> 3 -> 2 and then never runs 3 or 4 threads again.
TEST(TeamTuner, TriesNoMoreThreadsWithNoCoreIdle) {
  const FakeIdle idle(0);
  TeamTuner tuner;
  const auto cost = [](int t) { return t == 1 ? 1.0 : t == 2 ? 0.5 : t == 3 ? 1.6 : 2.0; };
  const auto used = drive(tuner, 4, 700, 1000, cost);
  const auto at2 = std::find(used.begin(), used.end(), 2) - used.begin();
  ASSERT_LT(at2, 50);
  EXPECT_EQ(count(used, 3, static_cast<size_t>(at2)) + count(used, 4, static_cast<size_t>(at2)), 0);
  EXPECT_GE(count(used, 1, static_cast<size_t>(at2)), 1) << "the smaller neighbour is still tried";
  EXPECT_EQ(used.back(), 2);
}

TEST(TeamTuner, OneShareIsOneThread) {
  TeamTuner tuner;
  for (int t : drive(tuner, 1, 700, 50, [](int) { return 1.0; })) EXPECT_EQ(t, 1);
}

// Every share runs exactly once, on one thread, for any team.
TEST(TeamMember, RunsEveryShareOnce) {
  for (int shares = 1; shares <= 5; ++shares)
    for (int threads = 1; threads <= shares; ++threads) {
      std::vector<int> runs(static_cast<size_t>(shares), 0);
      for (int t = 0; t < threads; ++t) {
        const TeamMember tm{t, threads, shares};
        tm.for_shares(100, [&](const TeamSlice& ts) {
          EXPECT_EQ(ts.size, shares);
          ++runs[static_cast<size_t>(ts.id)];
        });
      }
      for (int r : runs) EXPECT_EQ(r, 1) << shares << " shares, " << threads << " threads";
    }
}

// run_team: every thread of the team runs f once, knows its place, and meets the others at each
// barrier (a write before a barrier is seen by every thread after it), call after call, for
// teams that grow and shrink.
TEST(RunTeam, EveryThreadRunsOnceAndMeetsAtBarriers) {
  for (int round = 0; round < 200; ++round) {
    const int n = 1 + round % 4;
    std::vector<int> seen(static_cast<size_t>(n), 0), sums(static_cast<size_t>(n), 0);
    std::atomic<int> calls{0};
    run_team(n, [&] {
      ASSERT_EQ(team_threads(), n);
      const int t = team_thread();
      calls.fetch_add(1);
      seen[static_cast<size_t>(t)] = t + 1;
      team_barrier();  // every thread's write before any thread reads them
      int sum = 0;
      for (int v : seen) sum += v;
      sums[static_cast<size_t>(t)] = sum;
      team_barrier();
    });
    EXPECT_EQ(calls.load(), n);
    for (int v : sums) EXPECT_EQ(v, n * (n + 1) / 2) << "team of " << n;
  }
  EXPECT_EQ(team_thread(), 0);  // outside a team: thread 0 of one, barriers return at once
  EXPECT_EQ(team_threads(), 1);
  team_barrier();
}

// A team started inside a team runs on the thread that asked, alone (as OpenMP's nested regions).
TEST(RunTeam, NestedTeamsRunInline) {
  std::atomic<int> inner{0};
  run_team(2, [&] {
    const int outer = team_thread();
    run_team(3, [&] {
      EXPECT_EQ(team_threads(), 1);
      EXPECT_EQ(team_thread(), 0);
      inner.fetch_add(1);
    });
    EXPECT_EQ(team_thread(), outer);  // its place restored
    EXPECT_EQ(team_threads(), 2);
  });
  EXPECT_EQ(inner.load(), 2);
}

// Each calling thread has its own workers: teams from several threads at once do not mix, and a
// thread that ends takes its workers with it.
TEST(RunTeam, CallersOnSeveralThreadsHaveTheirOwnTeams) {
  std::vector<std::thread> callers;
  std::atomic<int> wrong{0};
  for (int c = 0; c < 3; ++c)
    callers.emplace_back([&, c] {
      for (int round = 0; round < 100; ++round) {
        std::vector<int> mine(2, -1);
        run_team(2, [&] {
          mine[static_cast<size_t>(team_thread())] = c;
          team_barrier();
          if (mine[0] != c || mine[1] != c) wrong.fetch_add(1);
        });
      }
    });
  for (auto& t : callers) t.join();
  EXPECT_EQ(wrong.load(), 0);
}

// Workers that went to sleep (no call for longer than they spin) wake for the next call.
TEST(RunTeam, WakesWorkersThatSlept) {
  for (int round = 0; round < 3; ++round) {
    std::this_thread::sleep_for(std::chrono::milliseconds(5));
    std::atomic<int> calls{0};
    run_team(3, [&] { calls.fetch_add(1); });
    EXPECT_EQ(calls.load(), 3);
  }
}

// In a PyTorch training step OpenBLAS's worker spins on one core, calling sched_yield, for 0.1 s
// after each of torch's GEMMs. The scheduler counts it as a running thread, so a team worker woken
// then joined its caller on the other core, and the two took turns at every barrier (a
// zaremba-small forward 27 ms, against 3). A worker found on its caller's CPU moves off it.
TEST(RunTeam, WorkersLeaveTheCallersCpu) {
  cpu_set_t mine;
  ASSERT_EQ(sched_getaffinity(0, sizeof mine, &mine), 0);
  if (CPU_COUNT(&mine) < 2) GTEST_SKIP() << "one CPU: nowhere else to go";
  int shared = 0, calls = 0;
  std::thread caller([&] {  // a fresh thread: its own pool, its workers made now
    std::atomic<bool> stop{false};
    std::thread yielder([&] {  // as OpenBLAS's idle worker
      while (!stop.load(std::memory_order_relaxed)) sched_yield();
    });
    for (int round = 0; round < 40; ++round) {
      // The caller's own work (torch's layers) for longer than the workers spin: they sleep.
      const auto until = std::chrono::steady_clock::now() + std::chrono::milliseconds(8);
      while (std::chrono::steady_clock::now() < until) {
      }
      int cpu[2] = {-1, -1};
      run_team(2, [&] {
        for (int step = 0; step < 20; ++step) team_barrier();
        cpu[team_thread()] = sched_getcpu();
        team_barrier();
      });
      ++calls;
      shared += cpu[0] == cpu[1];
    }
    stop = true;
    yielder.join();
  });
  caller.join();
  EXPECT_LE(shared, 2) << shared << " of " << calls << " calls ran both on one CPU";
}

// Every thread of this process narrowed from outside to one CPU (`taskset -a -p`): a worker that
// meets its caller there stays, rather than widening its mask back to the CPUs it was made with.
TEST(RunTeam, StepAsideKeepsAMaskNarrowedFromOutside) {
  cpu_set_t all;
  ASSERT_EQ(sched_getaffinity(0, sizeof all, &all), 0);
  if (CPU_COUNT(&all) < 2) GTEST_SKIP() << "one CPU: nothing to narrow";
  const auto set_every_thread = [](const cpu_set_t& mask) {
    DIR* dir = opendir("/proc/self/task");
    ASSERT_NE(dir, nullptr);
    while (const dirent* e = readdir(dir))
      if (e->d_name[0] != '.') (void)sched_setaffinity(std::atoi(e->d_name), sizeof mask, &mask);
    closedir(dir);
  };
  int cpu = -1, elsewhere = 0;
  std::thread caller([&] {
    run_team(2, [] {});  // the workers are made, with every CPU
    cpu = sched_getcpu();
    cpu_set_t one;
    CPU_ZERO(&one);
    CPU_SET(cpu, &one);
    set_every_thread(one);
    for (int round = 0; round < 10; ++round) {
      int seen[2] = {-1, -1};
      run_team(2, [&] {
        team_barrier();
        seen[team_thread()] = sched_getcpu();
        team_barrier();
      });
      elsewhere += seen[1] != cpu;
    }
    set_every_thread(all);
  });
  caller.join();
  EXPECT_EQ(elsewhere, 0) << "the worker left CPU " << cpu << " in " << elsewhere << " of 10 calls";
}

// After fork() the child has only the thread that forked: its teams get workers of their own
// rather than waiting for the parent's.
TEST(RunTeam, WorksInAForkedChild) {
  if (lstmgrad::test::kThreadSanitizer) GTEST_SKIP() << "TSan starts no thread after such a fork";
  run_team(2, [] {});  // the parent's pool exists
  const pid_t pid = fork();
  ASSERT_GE(pid, 0);
  if (pid == 0) {
    std::atomic<int> calls{0};
    run_team(2, [&] { calls.fetch_add(1); });
    _exit(calls.load() == 2 ? 0 : 1);
  }
  int status = 0;
  ASSERT_EQ(waitpid(pid, &status, 0), pid);
  EXPECT_TRUE(WIFEXITED(status) && WEXITSTATUS(status) == 0);
}

}  // namespace
}  // namespace lstmgrad::cpu
