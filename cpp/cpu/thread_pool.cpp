#include "cpu/thread_pool.h"

#include <algorithm>
#include <atomic>
#include <chrono>
#include <condition_variable>
#include <exception>
#include <mutex>
#include <thread>
#include <vector>

#if defined(__linux__)
#include <dlfcn.h>
#include <pthread.h>
#include <sched.h>
#include <unistd.h>
#endif

namespace actzip {
namespace detail {

int available_processors() {
#if defined(__linux__)
  cpu_set_t set;
  if (sched_getaffinity(0, sizeof set, &set) == 0) return std::max(1, CPU_COUNT(&set));
#endif
  return std::max(1u, std::thread::hardware_concurrency());
}

namespace {

constexpr std::chrono::microseconds kCallerSpin{100};  // waiting for helpers still at work
constexpr std::chrono::microseconds kWorkerSpin{100};  // waiting for the next job after one

inline void cpu_relax() {
#if defined(__x86_64__) || defined(__i386__)
  __builtin_ia32_pause();
#endif
}

class Pool {
 public:
  void run(int64_t count, int threads, const std::function<void(int64_t, int)>& body) {
    std::unique_lock<std::mutex> busy(run_mu_, std::try_to_lock);
    if (!busy.owns_lock()) return serial(count, body);
    ensure_workers(threads - 1);
    {
      std::lock_guard<std::mutex> lk(mu_);
      job_ = &body;
      next_.store(0, std::memory_order_relaxed);
      count_ = count;
      helpers_ = int(std::min<int64_t>(threads - 1, count - 1));
      pending_ = helpers_;
      ++generation_;
      published_.store(generation_, std::memory_order_release);
    }
    work_cv_.notify_all();
    work(0);
    // The helpers are busy with the job's last items: wait for them spinning, for a while,
    // rather than through the condition variable, whose wake-up costs tens of
    // microseconds here (several times per compression). Idle workers never spin.
    const auto until = std::chrono::steady_clock::now() + kCallerSpin;
    for (int i = 0; pending_done_.load(std::memory_order_acquire) != generation_; ++i) {
      cpu_relax();
      if ((i & 63) == 63 && std::chrono::steady_clock::now() >= until) break;
    }
    std::unique_lock<std::mutex> lk(mu_);
    done_cv_.wait(lk, [&] { return pending_ == 0; });
    job_ = nullptr;
  }

  static void serial(int64_t count, const std::function<void(int64_t, int)>& body) {
    for (int64_t i = 0; i < count; ++i) body(i, 0);
  }

 private:
  void ensure_workers(int wanted) {
    std::lock_guard<std::mutex> lk(mu_);
    while (int(workers_) < wanted) {
      const int slot = int(workers_) + 1;
      std::thread(&Pool::worker_loop, this, slot).detach();
      ++workers_;
    }
  }

  void work(int slot) {
    for (int64_t i; (i = next_.fetch_add(1, std::memory_order_relaxed)) < count_;) (*job_)(i, slot);
  }

  void worker_loop(int slot) {
    uint64_t seen = 0;
    bool worked = false;
    for (;;) {
      // Right after a job, the next one usually follows within microseconds (a
      // compression runs three or four): spin for it briefly instead of sleeping.
      if (worked) {
        const auto until = std::chrono::steady_clock::now() + kWorkerSpin;
        for (int i = 0; published_.load(std::memory_order_acquire) == seen; ++i) {
          cpu_relax();
          if ((i & 63) == 63 && std::chrono::steady_clock::now() >= until) break;
        }
      }
      std::unique_lock<std::mutex> lk(mu_);
      work_cv_.wait(lk, [&] { return generation_ != seen; });
      seen = generation_;
      worked = slot <= helpers_;
      if (!worked) continue;
      lk.unlock();
      work(slot);
      lk.lock();
      if (--pending_ == 0) {
        pending_done_.store(generation_, std::memory_order_release);
        done_cv_.notify_one();
      }
    }
  }

  std::mutex run_mu_;  // one job at a time
  std::mutex mu_;
  std::condition_variable work_cv_, done_cv_;
  const std::function<void(int64_t, int)>* job_ = nullptr;
  std::atomic<int64_t> next_{0};
  int64_t count_ = 0;
  int helpers_ = 0;
  int pending_ = 0;
  uint64_t generation_ = 0;
  std::atomic<uint64_t> pending_done_{0};  // the last generation whose helpers all finished
  std::atomic<uint64_t> published_{0};     // generation_, for workers spinning without the lock
  size_t workers_ = 0;
};

// The pool lives for the whole process (its threads are detached and block when idle).
// After fork() the child has none of the parent's threads, so it starts a new pool.
Pool* g_pool = nullptr;
#if defined(__linux__)
pid_t g_pool_pid = 0;
#endif
std::mutex g_pool_mu;

Pool& pool() {
  std::lock_guard<std::mutex> lk(g_pool_mu);
#if defined(__linux__)
  if (g_pool == nullptr || g_pool_pid != getpid()) {
    g_pool = new Pool;  // a pool inherited through fork() is abandoned, never used
    g_pool_pid = getpid();
  }
#else
  if (g_pool == nullptr) g_pool = new Pool;
#endif
  return *g_pool;
}

// ---------------------------------------------------------------------------------------
// The process's OpenMP runtime (see thread_pool.h): looked up, never linked.

#if defined(__linux__)
struct OpenMPRuntime {
  void (*parallel)(void (*)(void*), void*, unsigned, unsigned) = nullptr;  // GOMP_parallel
  int (*thread_num)() = nullptr;                                           // omp_get_thread_num
  int (*max_threads)() = nullptr;                                          // omp_get_max_threads
  int (*in_parallel)() = nullptr;                                          // omp_in_parallel
};

// A child forked after this library was loaded never uses the runtime: libgomp's workers
// do not survive fork(), and a parallel region in the child would wait for them forever.
std::atomic<bool> g_forked{false};
const bool g_atfork_registered = [] {
  pthread_atfork(nullptr, nullptr, [] { g_forked.store(true, std::memory_order_relaxed); });
  return true;
}();

// The runtime, with all four entry points taken from the library that defines
// GOMP_parallel; null when the process has none loaded.
const OpenMPRuntime* find_openmp() {
  static std::mutex mu;
  static OpenMPRuntime found;
  static std::atomic<bool> known{false};
  if (known.load(std::memory_order_acquire)) return &found;
  std::lock_guard<std::mutex> lk(mu);
  if (known.load(std::memory_order_relaxed)) return &found;
  void* parallel = dlsym(RTLD_DEFAULT, "GOMP_parallel");
  Dl_info info;
  if (parallel == nullptr || dladdr(parallel, &info) == 0 || info.dli_fname == nullptr) return nullptr;
  void* lib = dlopen(info.dli_fname, RTLD_LAZY | RTLD_NOLOAD);
  if (lib == nullptr) return nullptr;  // (a reference to an already loaded library: never closed)
  OpenMPRuntime r;
  r.parallel = reinterpret_cast<decltype(r.parallel)>(dlsym(lib, "GOMP_parallel"));
  r.thread_num = reinterpret_cast<decltype(r.thread_num)>(dlsym(lib, "omp_get_thread_num"));
  r.max_threads = reinterpret_cast<decltype(r.max_threads)>(dlsym(lib, "omp_get_max_threads"));
  r.in_parallel = reinterpret_cast<decltype(r.in_parallel)>(dlsym(lib, "omp_in_parallel"));
  if (!r.parallel || !r.thread_num || !r.max_threads || !r.in_parallel) return nullptr;
  found = r;
  known.store(true, std::memory_order_release);
  return &found;
}

// The runtime to run a job on now, or null for actzip's own pool: none loaded, a forked
// child, a caller already inside a parallel region, or a runtime its owner set to one
// thread (torch.set_num_threads(1)), whose team then has no idle workers to lend.
const OpenMPRuntime* usable_openmp() {
  (void)g_atfork_registered;
  if (g_forked.load(std::memory_order_relaxed)) return nullptr;
  const OpenMPRuntime* omp = find_openmp();
  if (omp == nullptr || omp->in_parallel() || omp->max_threads() < 2) return nullptr;
  return omp;
}

struct OpenMPJob {
  const std::function<void(int64_t, int)>* body;
  int64_t count;
  int (*thread_num)();
  std::atomic<int64_t> next{0};
  std::mutex mu;
  std::exception_ptr error;
};

void openmp_worker(void* arg) {
  auto* job = static_cast<OpenMPJob*>(arg);
  const int slot = job->thread_num();
  try {
    for (int64_t i; (i = job->next.fetch_add(1, std::memory_order_relaxed)) < job->count;) (*job->body)(i, slot);
  } catch (...) {  // an exception must not leave a parallel region: the caller rethrows it
    std::lock_guard<std::mutex> lk(job->mu);
    if (!job->error) job->error = std::current_exception();
    job->next.store(job->count, std::memory_order_relaxed);
  }
}

void run_openmp(const OpenMPRuntime& omp, int64_t count, int threads,
                const std::function<void(int64_t, int)>& body) {
  OpenMPJob job;
  job.body = &body;
  job.count = count;
  job.thread_num = omp.thread_num;
  omp.parallel(&openmp_worker, &job, unsigned(std::min<int64_t>(threads, count)), 0);
  if (job.error) std::rethrow_exception(job.error);
}
#endif

std::atomic<int> g_runtime_choice{0};  // 0: automatic, 1: always actzip's own pool

}  // namespace

void parallel_for(int64_t count, int threads, const std::function<void(int64_t, int)>& body) {
  if (count <= 0) return;
  if (threads <= 1 || count == 1) return Pool::serial(count, body);
#if defined(__linux__)
  if (g_runtime_choice.load(std::memory_order_relaxed) == 0) {
    if (const OpenMPRuntime* omp = usable_openmp()) return run_openmp(*omp, count, threads, body);
  }
#endif
  pool().run(count, threads, body);
}

const char* parallel_runtime() {
#if defined(__linux__)
  if (g_runtime_choice.load(std::memory_order_relaxed) == 0 && usable_openmp() != nullptr) return "openmp";
#endif
  return "threads";
}

void use_own_threads(bool own) { g_runtime_choice.store(own ? 1 : 0, std::memory_order_relaxed); }

}  // namespace detail
}  // namespace actzip
