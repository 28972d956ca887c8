#!/bin/bash
# The web load tests of bench/RESULTS.md ("The load test against the real main"), back to back:
# an older checkout against this one, on fresh copies of one atlas, each run's summary printed as it ends.
#
#   bench/web_series.sh BEFORE_CHECKOUT [AFTER_CHECKOUT] [ATLAS_WORKSPACE]
#
# BEFORE_CHECKOUT: e.g. `mkdir /tmp/main && git archive 5a3e09d | tar -x -C /tmp/main` (served without httptools and
# uvloop, as its own dependencies installed it). AFTER_CHECKOUT: default this one. ATLAS_WORKSPACE: default the
# synthetic atlas `bench/web.py` builds under bench/out/ (run `bench/web.py` once first). Needs a quiet machine:
# the server and the load client share it. Results: bench/out/web-load-atlas-RUN-*.json.
set -euo pipefail
here=$(cd "$(dirname "$0")/.." && pwd)
before=$(realpath "$1")
after=$(realpath "${2:-$here}")
atlas=$(realpath "${3:-$here/bench/out/web-atlas-163840-8192}")
runs=$(mktemp -d)
trap 'rm -rf "$runs"' EXIT
no_search=generate,search_json,search_page

run() {  # run NAME CHECKOUT [bench/web.py flags...]
    local name=$1 code=$2
    shift 2
    cp -r "$atlas" "$runs/atlas-$name"  # a fresh copy: opening an atlas may add an index to it
    (cd "$here" && PYTHONPATH=. OMP_NUM_THREADS=1 timeout 900 .venv/bin/python bench/web.py --load 10000 --clients 50 \
        --workspace "$runs/atlas-$name" --code "$code" "$@" > "$runs/$name.json")
    "$here/.venv/bin/python" - "$name" "$runs/$name.json" <<'PY'
import json, sys
r = json.load(open(sys.argv[2]))
print(f"{sys.argv[1]:10s} {r['requests']:6d} requests {r['requests_per_s']:7.0f} req/s  p50 {r['p50_ms']:5.0f}  "
      f"p99 {r['p99_ms']:6.0f} ms  errors {r['errors']}  server {r['server_cores']:.2f} cores "
      f"({1000 * r['server_cpu_s'] / r['requests']:.2f} ms a request)  client {r['client_cores']:.2f} cores  "
      f"load {r['load_average_before'][0]:.2f} -> {r['load_average_after'][0]:.2f}", flush=True)
PY
    rm -rf "$runs/atlas-$name"
}

echo "== $(date -u +%T) $(uptime)"
run before_ns "$before" --without httptools,uvloop --skip $no_search
run after_ns "$after" --skip $no_search
run after_ns_w2 "$after" --workers 2 --skip $no_search
run after_pages "$after" --skip generate
run after_pages_w2 "$after" --workers 2 --skip generate
run after_full "$after"
run after_full_w2 "$after" --workers 2
# The older checkout's label search takes seconds a query: its run of the whole pages mix is kept short.
run before_pages_1k "$before" --without httptools,uvloop --skip generate --load 1000
run after_pages_1k "$after" --skip generate --load 1000
echo "== $(date -u +%T) $(uptime)"
