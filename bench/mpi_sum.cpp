// The time of lstmgrad's fixed-order sum (src/cli/mpi_collective.cpp) across the ranks of an MPI
// job, for the sizes training sends: a few doubles (the loss: latency) and the gradients of the
// PTB presets. Run under mpirun; rank 0 prints one line per size: median and best of --runs
// timed sums after warm-up, and the bandwidth that median implies (each rank sends and receives
// 2 (N-1)/N of the vector). docs/scaling.md uses it.
//
//   mpirun -np 2 build/mpi_sum [--runs 30]
//   mpirun -np 2 --mca btl self,tcp build/mpi_sum     (over TCP instead of shared memory)
#include <mpi.h>

#include <algorithm>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <vector>

#include "cli/mpi_collective.hpp"

int main(int argc, char** argv) {
  int runs = 30;
  for (int k = 1; k + 1 < argc; ++k)
    if (std::strcmp(argv[k], "--runs") == 0) runs = std::max(1, std::atoi(argv[k + 1]));
  lstmgrad::cli::Launched job = lstmgrad::cli::launched_job(60);
  if (!job.world) {
    std::fprintf(stderr, "mpi_sum: run it under mpirun with 2 or more processes\n");
    return 2;
  }
  lstmgrad::Collective& world = *job.world;
  struct Size {
    const char* what;
    size_t floats;
  };
  // Parameter counts: zaremba-small 4.65M (V 10000, 200 x 2), medium 19.8M (650 x 2), large
  // 66.0M (1500 x 2).
  const Size sizes[] = {{"loss (3 doubles)", 0},
                        {"zaremba-small gradient", 4'650'000},
                        {"zaremba-medium gradient", 19'775'200},
                        {"zaremba-large gradient", 66'022'000}};
  if (world.rank() == 0)
    std::printf("%d ranks; median and best of %d sums after 3 warm-up\n", world.size(), runs);
  for (const Size& s : sizes) {
    std::vector<float> g(s.floats, 1.0f);
    std::vector<double> loss(3, 1.0);
    std::vector<double> seconds;
    for (int r = 0; r < runs + 3; ++r) {
      MPI_Barrier(MPI_COMM_WORLD);
      const auto t0 = std::chrono::steady_clock::now();
      if (s.floats)
        world.sum(std::span<float>(g), "the benchmark");
      else
        world.sum(std::span<double>(loss), "the benchmark");
      const double t = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
      if (r >= 3) seconds.push_back(t);
    }
    std::sort(seconds.begin(), seconds.end());
    const double median = seconds[seconds.size() / 2];
    const double bytes = static_cast<double>(s.floats ? s.floats * sizeof(float) : 3 * 8);
    const double moved = 2.0 * (world.size() - 1) / world.size() * bytes;
    if (world.rank() == 0)
      std::printf("%-26s %10.0f bytes  median %9.1f us  best %9.1f us  %7.2f GB/s\n", s.what, bytes,
                  median * 1e6, seconds.front() * 1e6, moved / median / 1e9);
  }
  return 0;
}
