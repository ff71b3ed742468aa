# Shared helpers for end-to-end test scripts. Source it; $1 of the script is the ringtrain binary.
# Exit code 77 means "skipped" (mapped to CTest's SKIP_RETURN_CODE); say why before using it.
set -euo pipefail
RT=${1:?usage: $0 path/to/ringtrain}
RT=$(cd "$(dirname "$RT")" && pwd)/$(basename "$RT")
# The repository root and the shared data folder beside it (resolved before leaving the cwd).
REPO=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
DATA=${RINGTRAIN_DATA:-$REPO/../shared/data}
WORK=$(mktemp -d /tmp/ringtrain-e2e.XXXXXX)
trap 'rm -rf "$WORK"' EXIT
cd "$WORK"
export RINGTRAIN_THREADS=${RINGTRAIN_THREADS:-1}
fail() { echo "FAIL: $*" >&2; exit 1; }
skip() { echo "SKIP: $*"; exit 77; }
json_get() { /usr/bin/python3 -c "import json,sys; print(json.load(open(sys.argv[1]))[sys.argv[2]])" "$1" "$2"; }
# The transport `dist.transport=auto` picks for ranks that share this host: shared memory when
# /dev/shm holds twice the rings of 4 ranks (ShmTransport::Fits), else TCP (say so).
if [ "$(df -k --output=avail /dev/shm 2>/dev/null | tail -1 || echo 0)" -ge 131072 ] 2>/dev/null; then
  LOCAL_TRANSPORT=shm
else
  LOCAL_TRANSPORT=tcp
  echo "note: /dev/shm is too small for the shared-memory transport here; local ranks use TCP"
fi
