#!/usr/bin/env bash
# Runs every test program in $1 (default build/tests), each with a time limit, and sums their
# "N passed, M failed, K skipped" lines. A program that crashes, times out or prints no summary counts as
# one failure. Ends with the plain closing line "N passed, M failed, K skipped"; exit 1 if anything failed.
set -u
dir=${1:-build/tests}
limit=${QLAB_TEST_TIMEOUT:-900}
total_pass=0 total_fail=0 total_skip=0
shopt -s nullglob
tests=("$dir"/test_*)
if [ ${#tests[@]} -eq 0 ]; then
    echo "no test programs found in $dir" >&2
    echo "0 passed, 1 failed"
    exit 1
fi
for t in "${tests[@]}"; do
    [ -x "$t" ] || continue
    name=$(basename "$t")
    log=$(mktemp)
    start=$(date +%s.%N)
    # Tests share the machine with whatever else runs: passive OpenMP waiting keeps them from spinning
    # against each other (speed is measured by make bench, not here).
    OMP_WAIT_POLICY=${OMP_WAIT_POLICY:-passive} timeout "$limit" "$t" >"$log" 2>&1
    rc=$?
    secs=$(awk -v s="$start" -v e="$(date +%s.%N)" 'BEGIN{printf "%.1f", e-s}')
    line=$(grep -E '^[0-9]+ passed, [0-9]+ failed' "$log" | tail -n 1)
    if [ -z "$line" ]; then
        cat "$log"
        echo "FAIL $name: exit $rc without a summary line (crash or timeout)"
        total_fail=$((total_fail + 1))
    else
        p=$(echo "$line" | sed -E 's/^([0-9]+) passed.*/\1/')
        f=$(echo "$line" | sed -E 's/^[0-9]+ passed, ([0-9]+) failed.*/\1/')
        s=$(echo "$line" | sed -nE 's/.*, ([0-9]+) skipped.*/\1/p')
        s=${s:-0}
        if [ "$rc" -ne 0 ] && [ "$f" -eq 0 ]; then f=1; fi
        if [ "$f" -ne 0 ]; then grep -E '^(FAIL|SKIP)' "$log" || tail -n 30 "$log"; fi
        grep -E '^SKIP' "$log" | head -n 5 | sed "s/^/  [$name] /" || true
        printf '%-28s %4d passed %3d failed %3d skipped  %6ss\n' "$name" "$p" "$f" "$s" "$secs"
        total_pass=$((total_pass + p)) total_fail=$((total_fail + f)) total_skip=$((total_skip + s))
    fi
    rm -f "$log"
done
echo "$total_pass passed, $total_fail failed, $total_skip skipped"
[ "$total_fail" -eq 0 ]
