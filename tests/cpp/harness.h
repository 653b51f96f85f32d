// A minimal test harness for the C++ tests: no framework to download, one executable per area.
//
//   ACTZIP_TEST(quantizer_bound_holds) { ACTZIP_CHECK(x == y, "x=%d y=%d", x, y); }
//
// ACTZIP_CHECK records a failure (file, line, a printf-style message) and lets the test go
// on, so one run reports many failures; only the first few per test are printed so a sweep
// over millions of values stays readable. ACTZIP_REQUIRE also returns from the test.
// Each test runs in a child process where fork() exists, so a crash fails that test alone.
// The executable returns non-zero when any check failed; `prog FILTER` runs only the tests
// whose name contains FILTER.
#pragma once

#include <cstdint>
#include <cstdio>

namespace actzip_test {

using TestFn = void (*)();

// Adds a test to the registry; used by ACTZIP_TEST at static-initialization time.
int register_test(const char* name, TestFn fn);

// Records a failed check. Returns normally; the caller decides whether to go on.
void report_failure(const char* file, int line, const char* expr, const char* fmt, ...)
#if defined(__GNUC__)
    __attribute__((format(printf, 4, 5)))
#endif
    ;

// Number of failed checks in the running test so far.
uint64_t failures_in_current_test();

}  // namespace actzip_test

#define ACTZIP_TEST(name)                                                                  \
  static void actzip_test_##name();                                                        \
  [[maybe_unused]] static const int actzip_test_reg_##name =                               \
      ::actzip_test::register_test(#name, &actzip_test_##name);                            \
  static void actzip_test_##name()

#define ACTZIP_CHECK(cond, ...)                                                            \
  do {                                                                                     \
    if (!(cond)) ::actzip_test::report_failure(__FILE__, __LINE__, #cond, __VA_ARGS__);    \
  } while (0)

#define ACTZIP_REQUIRE(cond, ...)                                                          \
  do {                                                                                     \
    if (!(cond)) {                                                                         \
      ::actzip_test::report_failure(__FILE__, __LINE__, #cond, __VA_ARGS__);               \
      return;                                                                              \
    }                                                                                      \
  } while (0)
