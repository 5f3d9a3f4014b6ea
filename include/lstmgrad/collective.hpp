// lstmgrad: the processes that train one model together (data-parallel training), as the trainer
// sees them. The library holds no transport of its own: the command-line tool gives it one over
// MPI (src/cli/mpi_collective.cpp) when launched by mpirun or srun; a single process is the
// default. docs/scaling.md says what travels and when.
#pragma once
#include <cstddef>
#include <cstdint>
#include <span>
#include <stdexcept>
#include <string>
#include <vector>

namespace lstmgrad {

class Collective {
 public:
  virtual ~Collective() = default;

  virtual int rank() const = 0;
  virtual int size() const = 0;

  // Every rank's `data` summed element by element, left in `data` on every rank. The order of the
  // additions is fixed (rank 0's value, plus rank 1's, ..., in rank order, whatever the
  // network does), so every rank holds the same bits and a run repeats bit for bit. `what` names
  // the exchange in a timeout's message.
  virtual void sum(std::span<float> data, const char* what) = 0;
  virtual void sum(std::span<double> data, const char* what) = 0;

  // A sum that overlaps other work: start_sum begins summing `data` as sum() does (the same
  // bits) and returns; progress() moves the started sums along without waiting (call it now and
  // then while computing); finish_sums() waits until every started sum is complete. `data` must
  // stay untouched until then. Every rank starts the same sums, of the same lengths, in the same
  // order. The defaults sum at once (a transport without non-blocking messages).
  virtual void start_sum(std::span<float> data, const char* what) { sum(data, what); }
  virtual void start_sum(std::span<double> data, const char* what) { sum(data, what); }
  virtual void progress() {}
  virtual void finish_sums() {}

  // Every rank's `mine` (the same length on every rank), concatenated in rank order, on every
  // rank.
  virtual std::vector<std::byte> all_gather(std::span<const std::byte> mine, const char* what) = 0;

  // Ends every process of the job now with exit code `code` (after an error on this rank that the
  // others cannot learn of by themselves). Returns only for a single process.
  virtual void abort(int code) = 0;
};

// One process alone: the sums and gathers are what this rank holds.
class SingleProcess final : public Collective {
 public:
  int rank() const override { return 0; }
  int size() const override { return 1; }
  void sum(std::span<float>, const char*) override {}
  void sum(std::span<double>, const char*) override {}
  std::vector<std::byte> all_gather(std::span<const std::byte> mine, const char*) override {
    return {mine.begin(), mine.end()};
  }
  void abort(int) override {}
};

// Thrown on a rank other than 0 when the job stops for an error that rank 0 reports (a bad input
// on some rank, found when the ranks compare their start): the process exits with `code`
// without a message of its own, so that the job prints the error once.
class StoppedByOtherRank : public std::runtime_error {
 public:
  explicit StoppedByOtherRank(int code)
      : std::runtime_error("stopped: another rank reported the error"), code_(code) {}
  int code() const { return code_; }

 private:
  int code_;
};

}  // namespace lstmgrad
