#!/usr/bin/env bash
# examples/mnist_lenet.yaml (LeNet-5, Adam 1e-3, batch 64, 10 epochs of the first 8,000 t10k
# images) reaches >= 98.0% on the last 2,000 and prints per-class metrics. Skips without the data.
source "$(dirname "$0")/lib.sh"
export RINGTRAIN_THREADS=2
mn=$DATA/mnist
[[ -f $mn/t10k-images-idx3-ubyte.gz ]] || skip "MNIST not found in $mn (set RINGTRAIN_DATA)"
"$RT" train --config "$REPO/examples/mnist_lenet.yaml" --set "data.images=$mn/t10k-images-idx3-ubyte.gz" \
  --set "data.labels=$mn/t10k-labels-idx1-ubyte.gz" --run-dir run >train.log 2>&1 || { cat train.log; fail "train failed"; }
tail -14 train.log
acc=$(json_get run/summary.json final_accuracy)
/usr/bin/python3 -c "import sys; sys.exit(0 if float(sys.argv[1]) >= 0.98 else 1)" "$acc" || fail "accuracy $acc < 0.98"
"$RT" eval --model run >eval.txt || fail "eval failed"
grep -q "macro-F1" eval.txt || fail "eval printed no metrics"
echo "LeNet-5 MNIST accuracy $acc >= 0.98"
