// The CPU backend's worker threads.
//
// Why not OpenMP: libgomp's idle workers spin after each parallel region, and torch ships
// its own OpenMP runtime with its own spinning pool. Between torch's operators, actzip's
// spinning workers took the cores torch needed (single-threaded calls ran up to 20x
// slower after a parallel one on this 2-core machine). These workers spin for at most 100
// microseconds after a job, since a compression runs three or four jobs back to back, and
// then block on a condition variable; a caller waiting for its helpers spins as long.
// (Measured on a 2 MB LayerNorm input: two threads compress 1.71x faster than one
// without the spinning, 1.95x with it; the step time of training with compression did
// not change within the machine's noise.)
#pragma once

#include <cstdint>
#include <functional>

namespace actzip {
namespace detail {

// Processors this process may run on (its affinity mask), at least 1.
int available_processors();

// Runs body(index, slot) for every index in [0, count) on up to `threads` threads, the
// caller's included, and returns when all are done. `slot` in [0, threads) identifies the
// thread, for per-thread scratch. Jobs from concurrent callers do not wait for each other:
// a caller that finds the workers busy runs its job alone. Safe across fork().
void parallel_for(int64_t count, int threads, const std::function<void(int64_t index, int slot)>& body);

}  // namespace detail
}  // namespace actzip
