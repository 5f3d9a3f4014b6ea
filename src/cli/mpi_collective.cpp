// The processes of a job over MPI: sums in a fixed order, gathers, and a timeout on every wait.
//
// A sum is a reduce-scatter and an all-gather made of point-to-point messages: the vector is cut
// into one contiguous chunk per rank; each rank receives every other rank's copy of its own chunk
// and adds the copies in rank order (rank 0's, plus rank 1's, ...), then sends the summed chunk to
// every rank. Each rank sends and receives 2 (N-1)/N of the vector, as a ring all-reduce does, and
// the additions are the same whatever order the messages arrive in, so the result is the same bits
// on every rank and every run (MPI_Allreduce promises neither). Every wait polls with a deadline:
// a rank that died, hangs or was stopped ends the job with a message naming it, instead of
// leaving the others blocked in a collective forever.
#include "cli/mpi_collective.hpp"

#include <fmt/format.h>

#include <algorithm>
#include <chrono>
#include <climits>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <string>
#include <thread>
#include <vector>

#include "lstmgrad/error.hpp"

#if LSTMGRAD_WITH_MPI
#include <mpi.h>
#endif

namespace lstmgrad::cli {

namespace {

// The job's size as a launcher announces it in the environment: Open MPI's mpirun
// (OMPI_COMM_WORLD_SIZE), Slurm's srun with PMI-2 (PMI_SIZE); -1 for PMIx (srun --mpi=pmix),
// which announces the rank only; 0 when no launcher started this process.
int announced_size() {
  for (const char* name : {"OMPI_COMM_WORLD_SIZE", "PMI_SIZE"})
    if (const char* v = std::getenv(name)) return std::max(0, std::atoi(v));
  return std::getenv("PMIX_RANK") ? -1 : 0;
}

#if LSTMGRAD_WITH_MPI

template <class T>
MPI_Datatype mpi_type();
template <>
MPI_Datatype mpi_type<float>() {
  return MPI_FLOAT;
}
template <>
MPI_Datatype mpi_type<double>() {
  return MPI_DOUBLE;
}

class MpiJob final : public Collective {
 public:
  explicit MpiJob(double timeout_s) : timeout_(timeout_s) {
    int provided = 0;
    // Only the main thread calls MPI; the engine's own threads never do.
    MPI_Init_thread(nullptr, nullptr, MPI_THREAD_FUNNELED, &provided);
    MPI_Comm_rank(MPI_COMM_WORLD, &rank_);
    MPI_Comm_size(MPI_COMM_WORLD, &size_);
    MPI_Comm local;
    MPI_Comm_split_type(MPI_COMM_WORLD, MPI_COMM_TYPE_SHARED, rank_, MPI_INFO_NULL, &local);
    MPI_Comm_size(local, &local_size_);
    MPI_Comm_free(&local);
  }
  ~MpiJob() override { MPI_Finalize(); }
  MpiJob(const MpiJob&) = delete;
  MpiJob& operator=(const MpiJob&) = delete;

  int rank() const override { return rank_; }
  int size() const override { return size_; }
  int local_size() const { return local_size_; }

  void sum(std::span<float> data, const char* what) override { sum_in_order(data, what); }
  void sum(std::span<double> data, const char* what) override { sum_in_order(data, what); }

  std::vector<std::byte> all_gather(std::span<const std::byte> mine, const char* what) override {
    const size_t n = mine.size();
    std::vector<std::byte> all(n * static_cast<size_t>(size_));
    std::copy(mine.begin(), mine.end(), all.begin() + static_cast<ptrdiff_t>(n * rank_));
    start();
    for (int q = 0; q < size_; ++q) {
      if (q == rank_) continue;
      post_recv(all.data() + n * static_cast<size_t>(q), n, MPI_BYTE, q, kGatherTag);
      post_send(mine.data(), n, MPI_BYTE, q, kGatherTag);
    }
    wait(what);
    return all;
  }

  void abort(int code) override { MPI_Abort(MPI_COMM_WORLD, code); }

 private:
  static constexpr int kScatterTag = 1, kGatherTag = 2;
  // The largest message in elements (MPI counts are int): longer ones go as several, in order.
  static constexpr size_t kMaxPiece = size_t{1} << 30;

  // [begin, end) of rank q's chunk of n elements.
  size_t chunk_begin(size_t n, int q) const {
    return n * static_cast<size_t>(q) / static_cast<size_t>(size_);
  }

  template <class Real>
  void sum_in_order(std::span<Real> data, const char* what) {
    if (size_ == 1) return;
    const size_t n = data.size();
    const size_t my0 = chunk_begin(n, rank_), my1 = chunk_begin(n, rank_ + 1), mine = my1 - my0;
    // Slot q of the scratch: rank q's copy of this rank's chunk.
    scratch_.resize(mine * static_cast<size_t>(size_) * sizeof(Real));
    Real* slots = reinterpret_cast<Real*>(scratch_.data());
    const MPI_Datatype type = mpi_type<Real>();
    start();
    for (int q = 0; q < size_; ++q) {
      if (q == rank_) continue;
      post_recv(slots + mine * static_cast<size_t>(q), mine, type, q, kScatterTag);
      const size_t b = chunk_begin(n, q), e = chunk_begin(n, q + 1);
      post_send(data.data() + b, e - b, type, q, kScatterTag);
    }
    wait(what);
    // rank 0's copy + rank 1's + ... in rank order: the same additions on every run.
    Real* own = data.data() + my0;
    Real* acc = rank_ == 0 ? own : slots;  // slot 0 holds rank 0's copy
    for (int q = 1; q < size_; ++q) {
      const Real* add = q == rank_ ? own : slots + mine * static_cast<size_t>(q);
      for (size_t k = 0; k < mine; ++k) acc[k] += add[k];
    }
    if (acc != own) std::copy_n(acc, mine, own);
    start();
    for (int q = 0; q < size_; ++q) {
      if (q == rank_) continue;
      const size_t b = chunk_begin(n, q), e = chunk_begin(n, q + 1);
      post_recv(data.data() + b, e - b, type, q, kGatherTag);
      post_send(own, mine, type, q, kGatherTag);
    }
    wait(what);
  }

  void start() { requests_.clear(), peers_.clear(); }

  template <class T>
  void post_recv(T* buf, size_t n, MPI_Datatype type, int peer, int tag) {
    int width = 0;
    MPI_Type_size(type, &width);
    auto* bytes = reinterpret_cast<char*>(buf);
    for (size_t k = 0; k < n || k == 0; k += kMaxPiece) {
      const int count = static_cast<int>(std::min(kMaxPiece, n - k));
      requests_.emplace_back();
      peers_.push_back(peer);
      MPI_Irecv(bytes + k * static_cast<size_t>(width), count, type, peer, tag, MPI_COMM_WORLD,
                &requests_.back());
      if (n == 0) break;
    }
  }

  template <class T>
  void post_send(const T* buf, size_t n, MPI_Datatype type, int peer, int tag) {
    int width = 0;
    MPI_Type_size(type, &width);
    const auto* bytes = reinterpret_cast<const char*>(buf);
    for (size_t k = 0; k < n || k == 0; k += kMaxPiece) {
      const int count = static_cast<int>(std::min(kMaxPiece, n - k));
      requests_.emplace_back();
      peers_.push_back(peer);
      MPI_Isend(bytes + k * static_cast<size_t>(width), count, type, peer, tag, MPI_COMM_WORLD,
                &requests_.back());
      if (n == 0) break;
    }
  }

  // Completes every posted request, or ends the job once a rank has not answered for timeout_.
  // Polls: spinning for about a millisecond (an exchange on shared memory takes microseconds),
  // then sleeping 50 us between polls, so that a rank waiting for a slower one leaves its core
  // to the machine's other work.
  void wait(const char* what) {
    using Clock = std::chrono::steady_clock;
    const auto t0 = Clock::now();
    for (int polls = 0;; ++polls) {
      int done = 0;
      MPI_Testall(static_cast<int>(requests_.size()), requests_.data(), &done, MPI_STATUSES_IGNORE);
      if (done) return;
      if (polls < 2000) continue;
      std::this_thread::sleep_for(std::chrono::microseconds(50));
      if (std::chrono::duration<double>(Clock::now() - t0).count() > timeout_) timed_out(what);
    }
  }

  [[noreturn]] void timed_out(const char* what) {
    std::vector<int> silent;
    for (size_t k = 0; k < requests_.size(); ++k) {
      int done = 0;
      MPI_Test(&requests_[k], &done, MPI_STATUS_IGNORE);
      if (!done && std::find(silent.begin(), silent.end(), peers_[k]) == silent.end())
        silent.push_back(peers_[k]);
    }
    std::string who;
    for (int q : silent) who += (who.empty() ? "" : ", ") + std::to_string(q);
    std::fprintf(stderr,
                 "lstmgrad: error: rank %d: no answer from rank %s for %g s while exchanging %s; "
                 "ending the job (a rank died, hangs or was stopped; --comm-timeout sets the "
                 "wait)\n",
                 rank_, who.c_str(), timeout_, what);
    std::fflush(stderr);
    MPI_Abort(MPI_COMM_WORLD, 1);
    std::_Exit(1);
  }

  double timeout_;
  int rank_ = 0, size_ = 1, local_size_ = 1;
  std::vector<MPI_Request> requests_;
  std::vector<int> peers_;  // the rank each request waits on
  std::vector<std::byte> scratch_;
};

#endif

}  // namespace

Launched launched_job(double timeout_s) {
  const int announced = announced_size();
  if (announced == 0 || announced == 1) return {};
#if LSTMGRAD_WITH_MPI
  auto job = std::make_unique<MpiJob>(timeout_s);
  Launched l;
  l.local = job->local_size();
  if (job->size() > 1) l.world = std::move(job);  // else: finalized here, the run is alone
  return l;
#else
  (void)timeout_s;
  throw InputError(
      "a launcher (mpirun, srun) started several processes, and this lstmgrad was built without "
      "MPI (LSTMGRAD_WITH_MPI=OFF): install libopenmpi-dev and rebuild, or run one process");
#endif
}

}  // namespace lstmgrad::cli
