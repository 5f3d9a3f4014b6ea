// The processes of a job started by mpirun or srun, as a Collective over MPI (docs/scaling.md).
#pragma once
#include <memory>

#include "lstmgrad/collective.hpp"

namespace lstmgrad::cli {

// What a launcher started: `world`, the job this process belongs to, when mpirun or srun started
// several processes (nullptr when it runs alone), and `local`, how many of them run on this
// machine (each trains with hardware threads / local threads unless --threads says otherwise).
struct Launched {
  std::unique_ptr<Collective> world;
  int local = 1;
};

// `timeout_s`: how long an exchange waits for a rank before it ends the whole job with a message
// naming that rank (a rank that died, hangs or was stopped). Throws InputError when a launcher
// started several processes and this build has no MPI.
Launched launched_job(double timeout_s);

}  // namespace lstmgrad::cli
