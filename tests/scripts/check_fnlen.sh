#!/usr/bin/env bash
# No function body longer than 100 lines in the library, the tool or the experiments (tests are exempt): a
# longer one is hiding named steps. Lists each offender as FILE:LINE: NAME N lines and fails on any.
# The sources are clang-formatted, so a definition is recognised by its layout: its signature starts in
# column 0 with a letter (continuation lines are indented), its body opens with "{" at the end of a line
# ending in ")" (or alone on the next line) and closes at the next "}" in column 0. The length counts the
# lines from that "{" to that "}". Usage: check_fnlen.sh [ROOT]; a self-test checks the detector on a
# planted 101-line function, a 100-line one, a multi-line signature and an initializer table.
set -u
LIMIT=100
FNLEN_AWK='
function reset() { cand = 0; sig = "" }
FNR == 1 { infn = 0; reset(); prev = "" }
infn {
    if ($0 ~ /^}/) {
        n = FNR - open + 1
        if (n > limit) printf "%s:%d: %s %d lines\n", FILENAME, cand, name, n
        infn = 0; reset()
    }
    next
}
/^#/ { reset(); prev = $0; next }
/^[A-Za-z_]/ { cand = FNR; sig = $0 }
cand && FNR > cand { sig = sig " " $0 }
cand && /;[[:space:]]*$/ { reset(); prev = $0; next }
cand && (/\)[[:space:]]*\{[[:space:]]*$/ || (/^\{[[:space:]]*$/ && prev ~ /\)[[:space:]]*$/)) {
    s = sig; sub(/\(.*/, "", s); k = split(s, w, /[^A-Za-z0-9_]+/); name = w[k]; if (name == "") name = w[k-1]
    if (s !~ /=/) { infn = 1; open = FNR } else reset()
    prev = $0; next
}
{ prev = $0 }
'
long_functions() { # root -> one line per function over LIMIT lines
    (cd "$1" && find core kernels datasets eval train experiments cli -type f \
         \( -name '*.c' -o -name '*.h' -o -name '*.cu' \) 2>/dev/null | sort |
         xargs -r awk -v limit="$LIMIT" "$FNLEN_AWK")
}
root=${1:-.}
pass=0 fail=0
out=$(long_functions "$root")
if [ -n "$out" ]; then
    echo "$out" | sed 's/^/FAIL function longer than '"$LIMIT"' lines (split it into named steps): /'
    fail=$((fail + $(echo "$out" | wc -l)))
else
    pass=$((pass + 1))
fi
# Self-test: a 101-line body is caught, a 100-line one is not, nor is an initializer table.
scratch=$(mktemp -d)
trap 'rm -rf "$scratch"' EXIT
mkdir -p "$scratch/core/base"
body() { for ((i = 0; i < $1; i++)); do echo "    x += $i;"; done; }
{
    echo "static int too_long(int a,"
    echo "                    int b) {"
    echo "    int x = a + b;"
    body 98
    echo "}"
    echo "int just_fits(void)"
    echo "{"
    body 98
    echo "}"
    echo "static const int table[] = {"
    body 120
    echo "};"
} > "$scratch/core/base/planted.c"
got=$(long_functions "$scratch")
if [ "$got" = "core/base/planted.c:1: too_long 101 lines" ]; then pass=$((pass + 1)); else
    echo "FAIL check_fnlen self-test: expected only too_long (101 lines) to be listed, got: ${got:-nothing}"
    fail=$((fail + 1))
fi
echo "$pass passed, $fail failed, 0 skipped"
[ "$fail" -eq 0 ]
