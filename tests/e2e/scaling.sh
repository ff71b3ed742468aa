#!/bin/bash
# `ringtrain bench scaling` on an emulated 1 Gbit/s cluster (issue 11):
#  1. GPT-S (smaller batch) over 1, 2 and 4 workers, ring and parameter servers (1 and 2 shards),
#     every worker and server in a network namespace of its own: results.csv has every point, the
#     bytes each worker sent per step equal what ring all-reduce and a PS push move (2(n-1)/n*M
#     and M), the model columns equal the closed forms recomputed here, and the plots are valid
#     images: every PNG is decoded by the decoder below (chunk CRCs, zlib, scanline filters) and is
#     not blank; every SVG parses as XML with drawn paths.
#  2. No namespace of the run is left afterwards. With parallel.tensor=2 (a replica spans 2
#     workers) the bytes sent equal the TP payload plus the replicas' gradient sync, and the TP
#     and DP model terms equal their closed forms.
#  3. A worker killed mid-run (kill -9) makes the run fail with an error naming it, and again no
#     namespace is left.
source "$(dirname "$0")/lib.sh"
command -v ip >/dev/null || skip "iproute2 (ip) not installed"
command -v tc >/dev/null || skip "tc (iproute2) not installed"
command -v gnuplot >/dev/null || skip "gnuplot not installed (scripts/install-deps.sh installs gnuplot-nox)"
probe=rtprobe$$
ip netns add $probe 2>/dev/null || skip "cannot create network namespaces here (ip netns add failed)"
ip netns del $probe
ours() { ip netns list 2>/dev/null | awk '{print $1}' | grep '^rtscale' | sort || true; }
before=$(ours)
cleanup_all() {
  pkill -9 -f "ringtrain bench scaling" 2>/dev/null || true
  for ns in $(comm -13 <(echo "$before") <(ours)); do
    ip netns pids "$ns" 2>/dev/null | xargs -r kill -9 2>/dev/null || true
    ip netns del "$ns" 2>/dev/null || true
  done
  rm -rf "$WORK"
}
trap cleanup_all EXIT
cfg="$REPO/bench/configs/gpt_s.yaml"
[ -f "$cfg" ] || fail "missing $cfg"

# --- 1. the run ---------------------------------------------------------------------------------
"$RT" bench scaling --config "$cfg" --set train.batch_size=4 --workers 1,2,4 --sync ring,ps --ps-servers 1,2 \
  --emulate 1gbit,0.1ms --steps 3 --warmup 1 --point-timeout 300 --out run > run.log 2>&1 ||
  { cat run.log; for f in run/logs/*; do echo "== $f"; tail -5 "$f"; done; fail "bench scaling failed"; }
cat run.log
/usr/bin/python3 - run <<'EOF' || fail "results or plots are wrong (above)"
import csv, math, os, struct, sys, zlib
import xml.etree.ElementTree as ET
d = sys.argv[1]
rows = list(csv.DictReader(open(os.path.join(d, "results.csv"))))
pts = sorted((int(r["workers"]), r["sync"], int(r["ps_servers"])) for r in rows)
want = sorted([(n, "ring", 0) for n in (1, 2, 4)] + [(n, "ps", k) for n in (1, 2, 4) for k in (1, 2)])
assert pts == want, f"points {pts} != {want}"
B, alpha = 1e9 / 8, 0.1e-3
for r in rows:
    n, k, sync = int(r["workers"]), int(r["ps_servers"]), r["sync"]
    M = float(r["gradient_bytes"])
    assert M > 3e6, f"gradient bytes {M}: not GPT-S"
    for col in ("step_ms", "items_per_s", "efficiency"):
        assert float(r[col]) > 0, f"{n} {sync} {k}: {col} = {r[col]}"
    sent = float(r["bytes_sent_per_worker"])
    if sync == "ring":
        # the gradient ring moves 2(n-1)/n * M; the 3-double loss/stop all-reduce adds a little
        ref = 2 * (n - 1) / n * M
        assert abs(sent - ref) <= 0.01 * M + 4096, f"ring n={n}: sent {sent} per step, expected {ref}"
        pred = 2 * (n - 1) / n * M / B + 2 * (n - 1) * alpha
    else:
        assert abs(sent - M) <= 0.01 * M, f"ps n={n} k={k}: pushed {sent} per step, expected {M}"
        pred = 2 * (max(M / B, n * M / (k * B)) + alpha)
    if pred > 0:
        got = float(r["predicted_comm_ms"])
        assert abs(got - 1e3 * pred) <= 1e-3 * max(1.0, 1e3 * pred), f"{n} {sync} {k}: model {got} ms, closed form {1e3*pred}"
        assert float(r["comm_ms"]) > 0, f"{n} {sync} {k}: no communication time measured"
        assert float(r["comm_measured_to_predicted"]) > 0

def png(path):
    b = open(path, "rb").read()
    assert b[:8] == b"\x89PNG\r\n\x1a\n", "signature"
    pos, idat, ihdr = 8, b"", None
    while pos < len(b):
        (length,) = struct.unpack(">I", b[pos:pos + 4])
        kind, data = b[pos + 4:pos + 8], b[pos + 8:pos + 8 + length]
        (crc,) = struct.unpack(">I", b[pos + 8 + length:pos + 12 + length])
        assert zlib.crc32(kind + data) & 0xFFFFFFFF == crc, f"CRC of chunk {kind}"
        if kind == b"IHDR": ihdr = struct.unpack(">IIBBBBB", data)
        if kind == b"IDAT": idat += data
        pos += 12 + length
        if kind == b"IEND": break
    w, h, depth, ctype, _, _, interlace = ihdr
    assert depth == 8 and interlace == 0 and ctype in (0, 2, 3, 4, 6), f"unexpected format {ihdr}"
    bpp = {0: 1, 2: 3, 3: 1, 4: 2, 6: 4}[ctype]
    raw = zlib.decompress(idat)
    stride = w * bpp
    assert len(raw) == h * (stride + 1), "image data length"
    prev, seen = bytearray(stride), set()
    for y in range(h):
        f, line = raw[y * (stride + 1)], bytearray(raw[y * (stride + 1) + 1:(y + 1) * (stride + 1)])
        for x in range(stride):
            a = line[x - bpp] if x >= bpp else 0
            up, c = prev[x], (prev[x - bpp] if x >= bpp else 0)
            if f == 1: line[x] = (line[x] + a) & 255
            elif f == 2: line[x] = (line[x] + up) & 255
            elif f == 3: line[x] = (line[x] + (a + up) // 2) & 255
            elif f == 4:
                p = a + up - c; pa, pb, pc = abs(p - a), abs(p - up), abs(p - c)
                line[x] = (line[x] + (a if pa <= pb and pa <= pc else up if pb <= pc else c)) & 255
            else: assert f == 0, f"filter {f}"
        if y % 7 == 0: seen.update(bytes(line[i:i + bpp]) for i in range(0, stride, bpp * 5))
        prev = line
    assert len(seen) > 3, "blank image"
    return w, h

for name in ("throughput", "efficiency", "breakdown"):
    w, h = png(os.path.join(d, name + ".png"))
    assert w >= 400 and h >= 300, f"{name}.png is {w}x{h}"
    root = ET.parse(os.path.join(d, name + ".svg")).getroot()
    assert root.tag.endswith("svg"), f"{name}.svg root {root.tag}"
    assert sum(1 for e in root.iter() if e.tag.endswith("path")) > 5, f"{name}.svg draws nothing"
    print(f"ok: {name}.png {w}x{h} decoded, {name}.svg parsed")
EOF
[ -z "$(comm -13 <(echo "$before") <(ours))" ] || fail "namespaces left after the run: $(comm -13 <(echo "$before") <(ours))"
echo "ok: emulated scaling run, results and plots valid, no namespace left"

# --- tensor parallelism: a replica spans 2 workers ------------------------------------------------
"$RT" bench scaling --config "$cfg" --set train.batch_size=2 --set parallel.tensor=2 --workers 2,4 --sync ring \
  --emulate 1gbit,0.1ms --steps 2 --warmup 1 --point-timeout 300 --out tp > tp.log 2>&1 ||
  { cat tp.log; for f in tp/logs/*; do echo "== $f"; tail -5 "$f"; done; fail "bench scaling with TP failed"; }
layers=$(awk '/n_layer:/ {print $2}' "$cfg")
/usr/bin/python3 - tp/results.csv "$layers" <<'EOF2' || fail "TP results are wrong (above)"
import csv, sys
rows = {int(r["workers"]): r for r in csv.DictReader(open(sys.argv[1]))}
L, B, alpha = int(sys.argv[2]), 1e9 / 8, 0.1e-3
assert sorted(rows) == [2, 4], sorted(rows)
for n, r in rows.items():
    assert int(r["tensor_parallel"]) == 2
    P, M = float(r["tp_bytes_per_worker"]), float(r["gradient_bytes"])
    # a 2-rank ring all-reduce sends its payload once; 4 workers are 2 replicas syncing M
    want = P + (M if n == 4 else 0)
    got = float(r["bytes_sent_per_worker"])
    assert abs(got - want) <= 0.01 * want, f"n={n}: sent {got}, expected {want}"
    tp_ms = 1e3 * (P / B + (4 * L + 3) * 2 * alpha)
    assert abs(float(r["predicted_tp_comm_ms"]) - tp_ms) <= 1e-3 * tp_ms, f"n={n}: TP model {r['predicted_tp_comm_ms']} vs {tp_ms}"
    dp_ms = 1e3 * (M / B + 2 * alpha) if n == 4 else 0.0
    assert abs(float(r["predicted_comm_ms"]) - dp_ms) <= 1e-3 * max(dp_ms, 1), f"n={n}: DP model {r['predicted_comm_ms']} vs {dp_ms}"
print("ok: tensor-parallel points, bytes and model terms")
EOF2
[ -z "$(comm -13 <(echo "$before") <(ours))" ] || fail "namespaces left after the TP run"

# --- 3. a worker dies -----------------------------------------------------------------------------
"$RT" bench scaling --config "$cfg" --set train.batch_size=4 --workers 4 --sync ring \
  --emulate 1gbit --steps 40 --warmup 1 --out fail > fail.log 2>&1 &
bench=$!
victim=""
for _ in $(seq 600); do  # the 4-worker point has started when rank 2's log exists
  [ -f fail/logs/w4-ring-rank2.log ] && break
  sleep 0.1
done
sleep 1.5  # into its training steps
ns=$(comm -13 <(echo "$before") <(ours) | grep -- '-n2$' || true)
[ -n "$ns" ] && victim=$(ip netns pids "$ns" 2>/dev/null | head -1)
[ -n "$victim" ] || { kill -9 $bench; cat fail.log; fail "no worker of the 4-worker point appeared"; }
kill -9 "$victim"
rc=0
wait $bench || rc=$?
cat fail.log
[ "$rc" -ne 0 ] || fail "bench scaling succeeded although a worker was killed"
grep -q "error:.*4 workers, ring" fail.log || fail "the error does not name the point"
grep -qE "error:.*rank [0-9]+ \(namespace rtscale[0-9]+-n[0-9]+\)" fail.log || fail "the error does not name a worker"
[ -z "$(comm -13 <(echo "$before") <(ours))" ] || fail "namespaces left after the failure: $(comm -13 <(echo "$before") <(ours))"
echo "ok: killed worker -> $(grep 'error:' fail.log); no namespace left"

# --- 4. a real cluster's launcher: every point an mpirun job, servers as one-task jobs -----------
if command -v mpirun >/dev/null; then
  export OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1 OMPI_MCA_rmaps_base_oversubscribe=1
  "$RT" bench scaling --config "$cfg" --set train.batch_size=4 --workers 1,2 --sync ring,ps --ps-servers 1 \
    --launcher mpirun --model 1gbit,0.1ms --steps 2 --warmup 1 --point-timeout 300 --out mpi > mpi.log 2>&1 ||
    { cat mpi.log; for f in mpi/logs/*; do echo "== $f"; tail -5 "$f"; done; fail "bench scaling --launcher mpirun failed"; }
  cat mpi.log
  /usr/bin/python3 - mpi/results.csv <<'EOF3' || fail "mpirun results are wrong (above)"
import csv, sys
rows = list(csv.DictReader(open(sys.argv[1])))
pts = sorted((int(r["workers"]), r["sync"], int(r["ps_servers"])) for r in rows)
assert pts == [(1, "ps", 1), (1, "ring", 0), (2, "ps", 1), (2, "ring", 0)], pts
for r in rows:
    n, M, sent = int(r["workers"]), float(r["gradient_bytes"]), float(r["bytes_sent_per_worker"])
    assert float(r["step_ms"]) > 0 and float(r["items_per_s"]) > 0, r
    if r["sync"] == "ps":  # every worker pushed its whole gradient to the server each step
        assert abs(sent - M) <= 0.01 * M, f"ps n={n}: pushed {sent}, expected {M}"
    elif n == 2:
        assert abs(sent - M) <= 0.01 * M + 4096, f"ring n=2: sent {sent}, expected {M}"
print("ok: mpirun points, ring and parameter server")
EOF3
  grep -q "listening on 0.0.0.0:" mpi/logs/w2-ps1-ps0.log || fail "the mpirun PS point's server log lacks its listen line"
  [ -z "$(pgrep -f "$RT ps --listen 0.0.0.0" || true)" ] || fail "a server of the mpirun run is still running"
  echo "ok: --launcher mpirun ran ring and PS points; no server left"
else
  echo "note: mpirun not installed; the --launcher mpirun leg did not run"
fi
