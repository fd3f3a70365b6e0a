#!/usr/bin/env bash
# Every C/CUDA source is formatted as the repository's .clang-format says (clang-format --dry-run --Werror):
# one check per file, plus a self-test that a misformatted snippet is caught. `make format` fixes files.
set -u
if ! command -v clang-format >/dev/null 2>&1; then
    echo "SKIP check_format: clang-format not installed (make deps installs it)"
    echo "0 passed, 0 failed, 1 skipped"
    exit 0
fi
pass=0 fail=0
while IFS= read -r f; do
    if clang-format --dry-run --Werror "$f" >/dev/null 2>&1; then pass=$((pass + 1)); else
        echo "FAIL format $f: not clang-formatted (run make format); first difference:"
        clang-format --dry-run "$f" 2>&1 | head -n 3
        fail=$((fail + 1))
    fi
done < <(find core kernels datasets eval train experiments cli tests -type f \
             \( -name '*.c' -o -name '*.h' -o -name '*.cu' \) 2>/dev/null | sort)
scratch=$(mktemp -d)
trap 'rm -rf "$scratch"' EXIT
cp .clang-format "$scratch/"
printf 'int  f( int x ){return x;}\n' > "$scratch/bad.c"
if (cd "$scratch" && clang-format --dry-run --Werror bad.c >/dev/null 2>&1); then
    echo "FAIL check_format self-test: a misformatted file passed"; fail=$((fail + 1))
else pass=$((pass + 1)); fi
echo "$pass passed, $fail failed, 0 skipped"
[ "$fail" -eq 0 ]
