#!/usr/bin/env bash
# The layering rule, checked on every #include "..." of the sources: a file may include headers of its own
# layer or of layers below it, never above, and every include names its path from the repository root
# ("core/quant/quant.h"). The layers, lowest first (ARCHITECTURE.md explains each):
LAYERS=(core/base core/formats core/results core/text core/quant core/model kernels datasets eval train
        experiments/harness cli experiments tests)
# Usage: check_layers.sh [ROOT]   prints one line per violation and "N passed, M failed, 0 skipped".
# With --self-test it also plants an upward include in a scratch tree and requires it to be caught.
set -u
rank_of() { # path -> rank of the longest matching layer prefix, or -1
    local p=$1 best=-1 bestlen=0 i
    for i in "${!LAYERS[@]}"; do
        local l=${LAYERS[$i]}
        if [[ $p == "$l"/* && ${#l} -gt $bestlen ]]; then best=$i bestlen=${#l}; fi
    done
    echo "$best"
}
check_tree() { # root -> prints violations, returns their count via the global `bad`, files via `good`
    local root=$1 f inc fr ir
    bad=0 good=0
    while IFS= read -r f; do
        fr=$(rank_of "$f")
        if [ "$fr" -lt 0 ]; then echo "LAYER $f: not in any layer (add its folder to tests/scripts/check_layers.sh)"; bad=$((bad + 1)); continue; fi
        local ok=1
        while IFS= read -r inc; do
            [ -z "$inc" ] && continue
            if [[ $inc != */* ]]; then
                echo "LAYER $f: #include \"$inc\" must name its layer (path from the repository root)"; ok=0; continue
            fi
            if [ ! -f "$root/$inc" ]; then echo "LAYER $f: #include \"$inc\": no such file"; ok=0; continue; fi
            ir=$(rank_of "$inc")
            if [ "$ir" -gt "$fr" ]; then
                echo "LAYER $f: includes \"$inc\" from a higher layer (${LAYERS[$ir]} above ${LAYERS[$fr]})"; ok=0
            fi
        done < <(sed -nE 's/^[[:space:]]*#[[:space:]]*include[[:space:]]+"([^"]+)".*/\1/p' "$root/$f")
        if [ $ok -eq 1 ]; then good=$((good + 1)); else bad=$((bad + 1)); fi
    done < <(cd "$root" && find core kernels datasets eval train experiments cli tests \
                 -type f \( -name "*.c" -o -name "*.h" -o -name "*.cu" \) 2>/dev/null | sort)
}
root=${1:-.}
[ "$root" = --self-test ] && root=.
check_tree "$root"
pass=$good fail=$bad
# Self-test: the checker must catch an upward include (core/base including eval) and a bare name.
scratch=$(mktemp -d)
trap 'rm -rf "$scratch"' EXIT
mkdir -p "$scratch/core/base" "$scratch/eval"
printf '#include "eval/x.h"\n' > "$scratch/core/base/a.c"
printf '#include "x.h"\n' > "$scratch/core/base/b.c"
printf '#include "core/base/a.h"\n' > "$scratch/eval/c.c"
touch "$scratch/eval/x.h" "$scratch/core/base/a.h"
out=$(check_tree "$scratch"; echo "bad=$bad")
if echo "$out" | grep -q 'bad=2' && echo "$out" | grep -q 'core/base/a.c: includes "eval/x.h" from a higher layer' &&
   echo "$out" | grep -q 'b.c: #include "x.h" must name its layer'; then
    pass=$((pass + 1))
else
    echo "FAIL check_layers self-test: an upward include was not caught: $out"; fail=$((fail + 1))
fi
echo "$pass passed, $fail failed, 0 skipped"
[ "$fail" -eq 0 ]
