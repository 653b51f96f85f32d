#include "cpu/thread_pool.h"

#include <algorithm>
#include <atomic>
#include <chrono>
#include <condition_variable>
#include <mutex>
#include <thread>
#include <vector>

#if defined(__linux__)
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

}  // namespace

void parallel_for(int64_t count, int threads, const std::function<void(int64_t, int)>& body) {
  if (count <= 0) return;
  if (threads <= 1 || count == 1) return Pool::serial(count, body);
  pool().run(count, threads, body);
}

}  // namespace detail
}  // namespace actzip
