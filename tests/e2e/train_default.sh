#!/usr/bin/env bash
# The built-in default (synthetic Markov source), as the demo runs it: data-parallel on 2 local
# processes through `ringtrain launch`. Trains to within 0.1 nats of the source's entropy rate,
# writes summary.json, metrics.jsonl and the model, and `generate` samples from it.
source "$(dirname "$0")/lib.sh"
unset RINGTRAIN_THREADS  # the two ranks split the cores (the default)
"$RT" launch --nproc 2 -- train --run-dir run >train.log 2>&1 || { cat train.log; fail "launch/train exited non-zero"; }
grep -q "1 threads per rank" train.log || fail "2 local ranks on 2 cores should get 1 thread each"
cat train.log
grep -q "entropy rate" train.log || fail "the entropy rate is not printed"
for k in final_train_loss final_val_loss steps tokens_per_s wall_s entropy_rate; do
  json_get run/summary.json "$k" >/dev/null || fail "summary.json lacks $k"
done
val=$(json_get run/summary.json final_val_loss)
h=$(json_get run/summary.json entropy_rate)
/usr/bin/python3 -c "import sys; v,h=float(sys.argv[1]),float(sys.argv[2]); sys.exit(0 if h <= v + 0.01 and v - h <= 0.1 else 1)" "$val" "$h" \
  || fail "final val loss $val is not within 0.1 nats of the entropy rate $h"
echo "val loss $val, entropy rate $h"
grep -q '"val_loss"' run/metrics.jsonl || fail "metrics.jsonl has no validation rows"
[[ $(grep -c '"loss"' run/metrics.jsonl) -ge 10 ]] || fail "metrics.jsonl has too few training rows"
"$RT" generate --model run --prompt "1 2" --tokens 20 --seed 3 >gen.txt || fail "generate failed"
[[ $(wc -w <gen.txt) == 22 ]] || { cat gen.txt; fail "generate did not print prompt + 20 tokens"; }
echo "generated: $(cat gen.txt)"
