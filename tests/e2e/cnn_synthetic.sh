#!/usr/bin/env bash
# ResNet-8 (BatchNorm) on the built-in synthetic image set reaches >= 95% test accuracy, prints
# per-class metrics, writes them to metrics.jsonl, and `eval --json` reproduces the accuracy.
source "$(dirname "$0")/lib.sh"
export RINGTRAIN_THREADS=2
"$RT" train --config "$REPO/examples/resnet8_synthetic.yaml" --run-dir run >train.log 2>&1 || { cat train.log; fail "train failed"; }
tail -16 train.log
grep -q "precision  recall" train.log || fail "no per-class metrics printed"
grep -q '"macro_f1"' run/metrics.jsonl || fail "metrics.jsonl lacks classification metrics"
acc=$(json_get run/summary.json final_accuracy)
/usr/bin/python3 -c "import sys; sys.exit(0 if float(sys.argv[1]) >= 0.95 else 1)" "$acc" || fail "accuracy $acc < 0.95"
"$RT" eval --model run --json >eval.json || fail "eval failed"
/usr/bin/python3 - "$acc" <<'PY' || fail "eval --json does not match the training run"
import json, sys
e = json.load(open("eval.json"))
assert abs(e["accuracy"] - float(sys.argv[1])) < 1e-9, (e["accuracy"], sys.argv[1])
assert len(e["per_class"]) == 10 and len(e["confusion"]) == 10
assert sum(map(sum, e["confusion"])) == e["count"] == 1000
PY
echo "ResNet-8 synthetic accuracy $acc >= 0.95"
