// One thread budget shared by OpenBLAS and the project's own OpenMP loops (OpenBLAS is linked in
// its OpenMP flavour, so a BLAS call inside one of our parallel regions runs single-threaded and
// nothing oversubscribes the cores).
#pragma once

namespace ringtrain {

// Sets the budget for BLAS and OpenMP. n <= 0 means: RINGTRAIN_THREADS if set, else the cores
// split evenly between the `local_ranks` processes of this job on this node (at least 1 each).
void SetThreadBudget(int n, int local_ranks = 1);
int ThreadBudget();
int HardwareThreads();

}  // namespace ringtrain
