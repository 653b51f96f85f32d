#include "harness.h"

#include <chrono>
#include <cstdarg>
#include <cstdlib>
#include <cstring>
#include <vector>

#if defined(__unix__) || defined(__APPLE__)
#include <sys/wait.h>
#include <unistd.h>
#define ACTZIP_TEST_CAN_FORK 1
#endif

namespace actzip_test {
namespace {

struct Entry {
  const char* name;
  TestFn fn;
};

std::vector<Entry>& registry() {
  static std::vector<Entry> tests;
  return tests;
}

constexpr uint64_t kPrintedFailuresPerTest = 10;
uint64_t g_failures = 0;  // in the running test

}  // namespace

int register_test(const char* name, TestFn fn) {
  registry().push_back({name, fn});
  return 0;
}

void report_failure(const char* file, int line, const char* expr, const char* fmt, ...) {
  ++g_failures;
  if (g_failures > kPrintedFailuresPerTest) return;
  std::fprintf(stderr, "  %s:%d: check failed: %s\n    ", file, line, expr);
  va_list args;
  va_start(args, fmt);
  std::vfprintf(stderr, fmt, args);
  va_end(args);
  std::fputc('\n', stderr);
}

uint64_t failures_in_current_test() { return g_failures; }

namespace {

// Runs one test and returns its number of failed checks. Where fork() exists the test runs in
// a child process, so a crash fails that test alone and the others still run; set
// ACTZIP_TEST_NO_FORK=1 to run in-process (for a debugger).
uint64_t run_one(const Entry& t) {
  g_failures = 0;
#if defined(ACTZIP_TEST_CAN_FORK)
  const char* no_fork = std::getenv("ACTZIP_TEST_NO_FORK");
  if (!(no_fork && no_fork[0] == '1')) {
    std::fflush(nullptr);
    const pid_t pid = fork();
    if (pid == 0) {
      t.fn();
      std::fflush(nullptr);
      _exit(g_failures ? 1 : 0);
    }
    int status = 0;
    if (pid < 0 || waitpid(pid, &status, 0) != pid) {
      std::fprintf(stderr, "  could not run the test in a child process\n");
      return 1;
    }
    if (WIFSIGNALED(status)) {
      std::fprintf(stderr, "  crashed with signal %d\n", WTERMSIG(status));
      return 1;
    }
    return WIFEXITED(status) && WEXITSTATUS(status) == 0 ? 0 : 1;
  }
#endif
  t.fn();
  return g_failures;
}

}  // namespace

}  // namespace actzip_test

int main(int argc, char** argv) {
  using namespace actzip_test;
  const char* filter = argc > 1 ? argv[1] : nullptr;
  int run = 0, failed = 0;
  for (const Entry& t : registry()) {
    if (filter && !std::strstr(t.name, filter)) continue;
    const auto start = std::chrono::steady_clock::now();
    std::fprintf(stderr, "[ run  ] %s\n", t.name);
    const uint64_t failures = run_one(t);
    const double ms =
        std::chrono::duration<double, std::milli>(std::chrono::steady_clock::now() - start).count();
    ++run;
    if (failures) {
      ++failed;
      std::fprintf(stderr, "[ FAIL ] %s (%.0f ms)\n", t.name, ms);
    } else {
      std::fprintf(stderr, "[  ok  ] %s (%.0f ms)\n", t.name, ms);
    }
  }
  std::fprintf(stderr, "%d tests, %d failed\n", run, failed);
  if (run == 0) {
    std::fprintf(stderr, "no test matches the filter\n");
    return 1;
  }
  return failed ? 1 : 0;
}
