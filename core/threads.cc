#include "core/threads.h"

#include <omp.h>

#include <algorithm>
#include <atomic>
#include <cstdlib>
#include <thread>

extern "C" void openblas_set_num_threads(int);

namespace ringtrain {

namespace {
// Atomic: in-process ranks (tests) each build a trainer, which sets the budget, on their own thread.
std::atomic<int> g_budget{0};
}

int HardwareThreads() {
  unsigned n = std::thread::hardware_concurrency();
  return n == 0 ? 1 : static_cast<int>(n);
}

void SetThreadBudget(int n, int local_ranks) {
  if (n <= 0) {
    const char* env = std::getenv("RINGTRAIN_THREADS");
    if (env && std::atoi(env) > 0) n = std::atoi(env);
  }
  if (n <= 0) n = std::max(1, HardwareThreads() / std::max(1, local_ranks));
  g_budget = n;
  omp_set_num_threads(n);
  openblas_set_num_threads(n);
}

int ThreadBudget() {
  if (g_budget == 0) SetThreadBudget(0);
  return g_budget;
}

}  // namespace ringtrain
