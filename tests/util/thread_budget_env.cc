// Applies RINGTRAIN_THREADS (set per test by CTest) to OpenMP and OpenBLAS before any test runs,
// since most unit tests call kernels directly rather than through the trainer.
#include <cstdlib>

#include "core/threads.h"

namespace {
struct ApplyThreadBudget {
  ApplyThreadBudget() {
    if (std::getenv("RINGTRAIN_THREADS")) ringtrain::SetThreadBudget(0);
  }
} apply_thread_budget;
}  // namespace
