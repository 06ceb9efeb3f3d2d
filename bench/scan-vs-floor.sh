#!/usr/bin/env bash
# Scan benchmark: `finops scan` (discovery, metrics, storage, evaluation) against the floor
# (../shared/bench/floor.py: the least AWS work that answers the pack) on one seeded account.
#
#   bench/scan-vs-floor.sh [SCALE] [ROUNDS]     # SCALE: EC2 instances per region (default 1000)
#
# Needs the project's venv on PATH (`make bench` does that). Prints the median wall time of
# each and their ratio; quote the ratio, not the seconds (a moto server is not AWS).
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
shared=${FINOPS_SHARED:-$here/../../shared}
scale=${1:-1000}
rounds=${2:-3}
work=$(mktemp -d -t finops-scanbench.XXXX)
port=$(python -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
moto_server -H 127.0.0.1 -p "$port" >"$work/moto.log" 2>&1 &
moto_pid=$!
trap 'kill $moto_pid 2>/dev/null; wait $moto_pid 2>/dev/null || true' EXIT
for _ in $(seq 100); do curl -sf "http://127.0.0.1:$port/moto-api/" >/dev/null && break; sleep 0.2; done

export AWS_ENDPOINT_URL=http://127.0.0.1:$port AWS_ACCESS_KEY_ID=testing AWS_SECRET_ACCESS_KEY=testing
export AWS_DEFAULT_REGION=us-east-1 FINOPS_DATA_DIR=$work/data
python "$shared/bench/seed_account.py" --endpoint "$AWS_ENDPOINT_URL" --scale "$scale" \
  --truth "$work/truth.json"

for r in $(seq "$rounds"); do
  for name in floor finops; do
    t0=$(date +%s.%N)
    if [ "$name" = floor ]; then
      python "$shared/bench/floor.py" >"$work/floor.log" 2>&1
    else
      finops scan --dry-run --policies "$here/reference-pack.yml" --region us-east-1 \
        --region us-west-2 --selection-out "$work/selection.json" >"$work/finops.log" 2>&1
    fi
    t1=$(date +%s.%N)
    echo "$name $(python -c "print($t1 - $t0)")" >>"$work/times"
  done
done
python "$shared/bench/compare.py" "$work/truth.json" "$work/selection.json" || true
python - "$work/times" <<'PY'
import statistics, sys
rows = {}
for line in open(sys.argv[1]):
    name, secs = line.split()
    rows.setdefault(name, []).append(float(secs))
med = {k: statistics.median(v) for k, v in rows.items()}
for k, v in rows.items():
    print(f"{k:7} median {med[k]:6.2f}s  runs " + " ".join(f"{x:.2f}" for x in v))
print(f"ratio finops/floor {med['finops'] / med['floor']:.2f}")
PY
echo "work dir: $work"
