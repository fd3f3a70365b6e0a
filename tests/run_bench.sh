#!/usr/bin/env bash
# Runs every benchmark program in $1/bench and gathers their records into results/bench.json together with
# the machine: CPU model, thread count, and the settings that change BLAS speed.
set -eu
build=${1:-build}
out=results/bench.json
records=$(mktemp)
trap 'rm -f "$records"' EXIT
cpu=$(grep -m1 'model name' /proc/cpuinfo | sed 's/.*: //' || echo unknown)
threads=${OMP_NUM_THREADS:-$(nproc)}
printf '%-44s %10s %-8s %-26s %10s\n' figure value unit "limit (same run)" "limit"
shopt -s nullglob
status=0
for b in "$build"/bench/bench_*; do
    QLAB_BENCH_OUT="$records" "$b" || { echo "benchmark $(basename "$b") failed" >&2; status=1; }
done
mkdir -p results
{
    printf '{\n  "cpu": "%s",\n  "threads": %s,\n  "nproc": %s,\n' "$cpu" "$threads" "$(nproc)"
    printf '  "env": {"OMP_NUM_THREADS": "%s", "OPENBLAS_NUM_THREADS": "%s", "OPENBLAS_CORETYPE": "%s", "OPENBLAS_L2_SIZE": "%s", "OMP_WAIT_POLICY": "%s", "GOMP_SPINCOUNT": "%s"},\n' \
        "${OMP_NUM_THREADS:-}" "${OPENBLAS_NUM_THREADS:-}" "${OPENBLAS_CORETYPE:-}" "${OPENBLAS_L2_SIZE:-}" "${OMP_WAIT_POLICY:-}" "${GOMP_SPINCOUNT:-}"
    printf '  "git_commit": "%s",\n  "time_utc": "%s",\n  "records": [\n' \
        "$(git rev-parse HEAD 2>/dev/null || echo unknown)" "$(date -u +%Y-%m-%dT%H:%M:%SZ)"
    sed '$!s/$/,/; s/^/    /' "$records"
    printf '  ]\n}\n'
} >"$out.tmp" && mv "$out.tmp" "$out"
echo "wrote $out ($(wc -l <"$records") records)"
exit $status
