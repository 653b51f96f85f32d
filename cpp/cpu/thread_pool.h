// The CPU backend's worker threads.
//
// In a process that has an OpenMP runtime loaded (torch brings one: libgomp on Linux),
// jobs run as parallel regions of that runtime, found at run time with dlsym and never
// linked. Its idle workers spin for milliseconds after each region (libgomp's default spin
// count); a separate pool of actzip threads then shares the cores with torch's spinning
// workers, and in training, where every compression follows one of torch's operators,
// two threads ran no faster than one (digits CNN: 133 ms of compression a step instead of
// 62). In torch's own team the same workers that just ran torch's operator take the job.
//
// Otherwise (no runtime, a forked child, torch set to one thread, or use_own_threads()),
// jobs run on actzip's own pool. Not OpenMP of its own: a second OpenMP runtime's spinning
// workers took the cores torch needed (single-threaded calls ran up to 20x slower after a
// parallel one on this 2-core machine). The pool's workers spin for at most 100
// microseconds after a job, since a compression runs three or four jobs back to back, and
// then block on a condition variable; a caller waiting for its helpers spins as long.
// (Measured on a 2 MB LayerNorm input: two threads compress 1.71x faster than one
// without the spinning, 1.95x with it.)
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

// Where parallel_for() would run a job now: "openmp" (the process's OpenMP runtime) or
// "threads" (actzip's own pool).
const char* parallel_runtime();

// Always use actzip's own pool (true), or the process's OpenMP runtime where usable (false,
// the default). For tests and measurements.
void use_own_threads(bool own);

}  // namespace detail
}  // namespace actzip
