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
//
// Started sums (start_sum, progress, finish_sums) are the same exchange, its two phases driven by
// polls: the caller starts a sum as soon as a piece of the gradient is final and polls between
// the steps of the backward that computes the rest, so that the messages travel (and, on a
// network, the wire works) while the engine computes. Each started sum has tags of its own.
#include "cli/mpi_collective.hpp"

#include <fmt/format.h>

#include <algorithm>
#include <chrono>
#include <climits>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <string>
#include <thread>
#include <type_traits>
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

  void start_sum(std::span<float> data, const char* what) override { begin_sum(data, what); }
  void start_sum(std::span<double> data, const char* what) override { begin_sum(data, what); }

  // Each started sum whose scatter has arrived: its additions, then its gather posted; each
  // whose gather has arrived: done. Never waits.
  void progress() override {
    for (size_t k = done_; k < active_; ++k) advance(started_[k]);
    while (done_ < active_ && started_[done_].phase == Phase::done) ++done_;
  }

  void finish_sums() override {
    using Clock = std::chrono::steady_clock;
    const auto t0 = Clock::now();
    for (uint64_t polls = 0; done_ < active_; ++polls) {
      progress();
      if (done_ == active_ || polls % 64 != 0) continue;
      const double waited = std::chrono::duration<double>(Clock::now() - t0).count();
      if (waited < 0.05) continue;
      if (waited > timeout_) {
        Started& s = started_[done_];
        requests_.assign(s.requests.begin(), s.requests.end());
        peers_.assign(s.peers.begin(), s.peers.end());
        timed_out(s.what);
      }
      std::this_thread::sleep_for(std::chrono::microseconds(100));
    }
    active_ = done_ = 0;
  }

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
  // Started sums: scatter tags [kStartedTag, + kStartedTags), gather tags the next as many.
  static constexpr int kStartedTag = 16, kStartedTags = 4096;
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
    add_in_rank_order(own, slots, mine);
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

  // A started sum: its scatter in flight, then its gather, then done. Its messages carry a tag of
  // their own (sums in flight at once must not take each other's messages).
  enum class Phase { scatter, gather, done };
  struct Started {
    std::byte* data = nullptr;
    size_t n = 0;
    bool is_double = false;
    const char* what = "";
    int tag = 0;
    Phase phase = Phase::scatter;
    std::vector<MPI_Request> requests;
    std::vector<int> peers;
    std::vector<std::byte> slots;  // the other ranks' copies of this rank's chunk
  };

  template <class Real>
  void begin_sum(std::span<Real> data, const char* what) {
    if (size_ == 1) return;
    // The buffers of the last update's sums are reused: the same pieces come every update.
    if (active_ == started_.size()) started_.emplace_back();
    Started& s = started_[active_++];
    s.data = reinterpret_cast<std::byte*>(data.data()), s.n = data.size();
    s.is_double = std::is_same_v<Real, double>, s.what = what, s.phase = Phase::scatter;
    s.tag = kStartedTag + static_cast<int>(next_tag_++ % kStartedTags);
    const size_t n = data.size(), mine = chunk_begin(n, rank_ + 1) - chunk_begin(n, rank_);
    s.slots.resize(mine * static_cast<size_t>(size_) * sizeof(Real));
    Real* slots = reinterpret_cast<Real*>(s.slots.data());
    start();
    for (int q = 0; q < size_; ++q) {
      if (q == rank_) continue;
      post_recv(slots + mine * static_cast<size_t>(q), mine, mpi_type<Real>(), q, s.tag);
      const size_t b = chunk_begin(n, q), e = chunk_begin(n, q + 1);
      post_send(data.data() + b, e - b, mpi_type<Real>(), q, s.tag);
    }
    s.requests.swap(requests_), s.peers.swap(peers_);
    advance(s);
  }

  void advance(Started& s) {
    if (s.phase == Phase::done) return;
    int arrived = 0;
    MPI_Testall(static_cast<int>(s.requests.size()), s.requests.data(), &arrived,
                MPI_STATUSES_IGNORE);
    if (!arrived) return;
    if (s.phase == Phase::gather) {
      s.phase = Phase::done;
      return;
    }
    if (s.is_double) {
      gather_posted<double>(s);
    } else {
      gather_posted<float>(s);
    }
  }

  // The scatter of `s` has arrived: this rank's chunk summed in rank order, sent to every rank,
  // and the other chunks awaited.
  template <class Real>
  void gather_posted(Started& s) {
    Real* data = reinterpret_cast<Real*>(s.data);
    const size_t n = s.n, my0 = chunk_begin(n, rank_), mine = chunk_begin(n, rank_ + 1) - my0;
    add_in_rank_order(data + my0, reinterpret_cast<Real*>(s.slots.data()), mine);
    start();
    for (int q = 0; q < size_; ++q) {
      if (q == rank_) continue;
      const size_t b = chunk_begin(n, q), e = chunk_begin(n, q + 1);
      post_recv(data + b, e - b, mpi_type<Real>(), q, s.tag + kStartedTags);
      post_send(data + my0, mine, mpi_type<Real>(), q, s.tag + kStartedTags);
    }
    s.requests.swap(requests_), s.peers.swap(peers_);
    s.phase = Phase::gather;
  }

  // own (this rank's copy of its chunk) = rank 0's copy + rank 1's + ... in rank order, the
  // other ranks' copies in slot q of `slots`.
  template <class Real>
  void add_in_rank_order(Real* own, Real* slots, size_t mine) const {
    Real* acc = rank_ == 0 ? own : slots;  // slot 0 holds rank 0's copy
    for (int q = 1; q < size_; ++q) {
      const Real* add = q == rank_ ? own : slots + mine * static_cast<size_t>(q);
      for (size_t k = 0; k < mine; ++k) acc[k] += add[k];
    }
    if (acc != own) std::copy_n(acc, mine, own);
  }

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
  // Polls without pause for the first 50 ms: the shared-memory transport moves a large message in
  // fragments, each needing a poll on both sides, so a pause between polls throttles it (50 us
  // pauses made the PTB-small gradient's sum take 27 ms instead of a few). After that this rank
  // is waiting for a slower one, not for data: it sleeps 100 us between polls and leaves its core
  // to the machine's other work.
  void wait(const char* what) {
    using Clock = std::chrono::steady_clock;
    const auto t0 = Clock::now();
    for (uint64_t polls = 0;; ++polls) {
      int done = 0;
      MPI_Testall(static_cast<int>(requests_.size()), requests_.data(), &done, MPI_STATUSES_IGNORE);
      if (done) return;
      if (polls % 64 != 0) continue;  // the clock every 64 polls
      const double waited = std::chrono::duration<double>(Clock::now() - t0).count();
      if (waited < 0.05) continue;
      if (waited > timeout_) timed_out(what);
      std::this_thread::sleep_for(std::chrono::microseconds(100));
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
  // [0, active_) the sums started since the last finish_sums, in order, [0, done_) of them
  // complete; the entries after active_ keep their buffers for the next ones.
  std::vector<Started> started_;
  size_t active_ = 0, done_ = 0;
  uint64_t next_tag_ = 0;
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
