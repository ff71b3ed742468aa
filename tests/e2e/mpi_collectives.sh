#!/bin/bash
# Every collective operation x algorithm x count over the MPI transport under a real mpirun, for
# world sizes 1 to 8 (tests/collectives/mpi_check.cc), then `ringtrain bench allreduce --check`
# under mpirun with its JSON fields. $2: the collectives_mpi_check binary.
CHECK=$(realpath "${2:?usage: $0 ringtrain collectives_mpi_check}")
source "$(dirname "$0")/lib.sh"
command -v mpirun >/dev/null || skip "mpirun not installed"
export OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1
MPIRUN=(mpirun --allow-run-as-root --oversubscribe --mca btl self,vader,tcp)
for n in 1 2 3 4 5 6 7 8; do
  timeout 600 "${MPIRUN[@]}" -np $n "$CHECK" > check_$n.log 2>&1 || { cat check_$n.log; fail "collectives_mpi_check failed with $n ranks"; }
  grep -q "$n ranks, .* 0 failures" check_$n.log || { cat check_$n.log; fail "no success line with $n ranks"; }
  echo "mpi collectives, $n ranks: ok"
done
for n in 2 3; do
  timeout 300 "${MPIRUN[@]}" -np $n "$RT" bench allreduce --sizes 1K:4M --factor 16 --iters 2 --warmup 1 --check --json > bench_$n.json 2> bench_$n.err ||
    { cat bench_$n.err; fail "bench allreduce --check under mpirun -np $n"; }
  /usr/bin/python3 - bench_$n.json <<'PY' || fail "bench allreduce JSON under mpirun -np $n"
import json, sys
rows = json.load(open(sys.argv[1]))
assert [r["bytes"] for r in rows] == [1024, 16384, 262144, 4194304], rows
for r in rows:
    for k in ("time_us", "algbw_gbps", "busbw_gbps", "mpi_busbw_gbps"):
        assert isinstance(r[k], (int, float)) and r[k] > 0, (k, r)
PY
  echo "bench allreduce under mpirun -np $n: ok"
done
