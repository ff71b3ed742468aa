#!/bin/bash
# The TCP transport between two network namespaces on addresses of their own: two namespaces
# joined by a veth pair (10.231.0.1/24 and 10.231.0.2/24), one rank in each, a checked all-reduce
# across them with each rank bound to its own veth interface. Skips where namespaces cannot be made.
source "$(dirname "$0")/lib.sh"
command -v ip >/dev/null || skip "iproute2 (ip) not installed"
A=rtA$$ B=rtB$$
cleanup() {
  ip netns pids $A 2>/dev/null | xargs -r kill -9 2>/dev/null || true
  ip netns pids $B 2>/dev/null | xargs -r kill -9 2>/dev/null || true
  ip netns del $A 2>/dev/null || true
  ip netns del $B 2>/dev/null || true
  rm -rf "$WORK"
}
trap cleanup EXIT
ip netns add $A 2>/dev/null || skip "cannot create network namespaces here (ip netns add failed)"
ip netns add $B || skip "cannot create a second network namespace"
ip link add vA$$ netns $A type veth peer name vB$$ netns $B || skip "cannot create a veth pair"
ip -n $A addr add 10.231.0.1/24 dev vA$$
ip -n $B addr add 10.231.0.2/24 dev vB$$
ip -n $A link set vA$$ up; ip -n $A link set lo up
ip -n $B link set vB$$ up; ip -n $B link set lo up
ip netns exec $A env RANK=0 WORLD_SIZE=2 MASTER_ADDR=10.231.0.1 MASTER_PORT=29611 \
  "$RT" bench allreduce --transport tcp --bind vA$$ --sizes 4K:4M --factor 32 --iters 3 --warmup 1 --check --deadline 60 > out_0.log 2> err_0.log &
p0=$!
ip netns exec $B env RANK=1 WORLD_SIZE=2 MASTER_ADDR=10.231.0.1 MASTER_PORT=29611 \
  "$RT" bench allreduce --transport tcp --bind vB$$ --sizes 4K:4M --factor 32 --iters 3 --warmup 1 --check --deadline 60 > out_1.log 2> err_1.log &
p1=$!
wait $p0 || { cat err_0.log err_1.log; fail "rank 0 (namespace $A) failed"; }
wait $p1 || { cat err_0.log err_1.log; fail "rank 1 (namespace $B) failed"; }
cat out_0.log
grep -q "2 ranks" out_0.log || fail "rank 0 did not report a 2-rank run"
[ "$(grep -c '^ ' out_0.log)" -eq 3 ] || fail "expected 3 size rows"
echo "netns tcp: 2-rank checked allreduce across namespaces ok"
