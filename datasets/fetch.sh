#!/usr/bin/env bash
# Downloads files listed in datasets/fetch.sha256 for the `make fetch-*` targets: every file goes to a
# temporary name in its own folder, is checked against its sha256, and only when ALL files of the target
# are good are they renamed into place. On any failure the temporaries are removed, so nothing is written.
# Usage: datasets/fetch.sh LABEL PATH...   (run from the repository root; PATHs as in datasets/fetch.sha256)
set -u
label=$1
shift
list=${QLAB_FETCH_LIST:-datasets/fetch.sha256} # override for testing the script
tmps=()
finals=()
zips=()

made_dirs=()
made_tmpdirs=()
cleanup() {
    for f in "${tmps[@]}" "${zips[@]}"; do rm -f "$f"; done
    for d in "${made_tmpdirs[@]}"; do rm -rf "$d"; done
    # Folders this run created, deepest first; rmdir leaves any that are not empty.
    for d in "${made_dirs[@]}"; do rmdir "$d" 2>/dev/null; done
}
fail() {
    cleanup
    echo "$label: $*" >&2
    exit 1
}
trap 'fail "interrupted; nothing was written"' INT TERM

command -v curl >/dev/null 2>&1 || fail "curl is not installed (run 'make deps'); nothing was written"
command -v sha256sum >/dev/null 2>&1 || fail "sha256sum is not installed; nothing was written"

# curl exit codes that mean the host could not be reached at all.
unreachable() { case $1 in 5 | 6 | 7 | 28 | 35 | 56) return 0 ;; *) return 1 ;; esac; }
host_of() { echo "$1" | sed -E 's#^[a-z]+://([^/]+).*#\1#'; }

# A wheel from the Python package index, "pip:NAME==VERSION?sha256=HEX": `pip download --no-deps` into a
# private temporary folder, the wheel's own sha256 checked, then moved to out.
download_wheel() {
    local spec=${1#pip:} want dir wheel got
    want=${spec#*\?sha256=}
    spec=${spec%%\?*}
    local pip_cmd=(python3 -m pip)
    "${pip_cmd[@]}" --version >/dev/null 2>&1 || fail "pip is not available (python3 -m pip); nothing was written"
    dir=$(mktemp -d "${TMPDIR:-/tmp}/qlab-fetch.XXXXXX") || fail "cannot create a temporary folder; nothing was written"
    made_tmpdirs+=("$dir")
    echo "$label: pip download --no-deps $spec"
    if ! "${pip_cmd[@]}" download --no-deps --no-cache-dir --only-binary=:all: -q -d "$dir" "$spec" >"$dir/pip.log" 2>&1; then
        fail "pip download $spec failed (no access to the Python package index?): $(grep -m1 -E 'ERROR|Error' "$dir/pip.log" || tail -n1 "$dir/pip.log"); nothing was written"
    fi
    wheel=$(find "$dir" -name '*.whl' | head -n1)
    [ -n "$wheel" ] || fail "pip download $spec gave no wheel; nothing was written"
    got=$(sha256sum "$wheel" | cut -d' ' -f1)
    [ "$got" = "$want" ] || fail "$(basename "$wheel"): sha256 $got does not match $want; nothing was written"
    mv -f "$wheel" "$out" || fail "cannot move the wheel to $out; nothing was written"
}

# Downloads url to out; on failure prints the one-line reason and exits.
download() {
    local url=$1 out=$2 rc
    case $url in pip:*)
        download_wheel "$url" "$out"
        return 0
        ;;
    esac
    curl -fL --retry 2 --connect-timeout 20 -sS -o "$out" "$url" 2>/dev/null
    rc=$?
    [ $rc -eq 0 ] && return 0
    rm -f "$out"
    if unreachable $rc; then fail "cannot reach $(host_of "$url") (no internet?); nothing was written"; fi
    fail "download of $url failed (curl exit $rc); nothing was written"
}

entry() { awk -v p="$1" '$1 !~ /^#/ && $2 == p { print; exit }' "$list"; }

# Check every entry before downloading anything.
for path in "$@"; do
    line=$(entry "$path")
    [ -n "$line" ] || fail "$path is not listed in $list; nothing was written"
    if [ "$(echo "$line" | awk '{print $1}')" = "-" ] && [ "${QLAB_ALLOW_UNVERIFIED:-0}" != 1 ]; then
        fail "$path has no trusted sha256 in $list; refusing to accept it unverified (set QLAB_ALLOW_UNVERIFIED=1 to accept it); nothing was written"
    fi
done

declare -A zip_of_url
for path in "$@"; do
    line=$(entry "$path")
    want=$(echo "$line" | awk '{print $1}')
    url=$(echo "$line" | awk '{print $3}')
    if [ -f "$path" ] && [ "$want" != "-" ] && [ "$(sha256sum "$path" | cut -d' ' -f1)" = "$want" ]; then
        echo "$label: $path already present and verified"
        continue
    fi
    dir=$(dirname "$path")
    d=$dir
    while [ ! -d "$d" ]; do
        made_dirs+=("$d")
        d=$(dirname "$d")
    done
    mkdir -p "$dir" || fail "cannot create $dir; nothing was written"
    tmp="$path.part.$$"
    tmps+=("$tmp")
    case $url in
    *#*)
        # A member of a zip: fetch the zip once per run (beside the first file that needs it).
        zip_url=${url%%#*}
        member=${url#*#}
        zip=${zip_of_url[$zip_url]:-}
        if [ -z "$zip" ]; then
            zip="$dir/.fetch.$$.$(basename "$zip_url")"
            zips+=("$zip")
            echo "$label: downloading $zip_url"
            download "$zip_url" "$zip"
            zip_of_url[$zip_url]=$zip
        fi
        if command -v unzip >/dev/null 2>&1; then
            unzip -p "$zip" "$member" >"$tmp" 2>/dev/null || fail "$zip_url has no member $member; nothing was written"
        else
            python3 -c 'import sys, zipfile; sys.stdout.buffer.write(zipfile.ZipFile(sys.argv[1]).read(sys.argv[2]))' \
                "$zip" "$member" >"$tmp" 2>/dev/null || fail "cannot extract $member (install unzip); nothing was written"
        fi
        ;;
    *)
        echo "$label: downloading $url"
        download "$url" "$tmp"
        ;;
    esac
    got=$(sha256sum "$tmp" | cut -d' ' -f1)
    if [ "$want" = "-" ]; then
        echo "$label: WARNING: $path accepted UNVERIFIED (QLAB_ALLOW_UNVERIFIED=1); its sha256 is $got — record it in $list"
    elif [ "$got" != "$want" ]; then
        fail "$path: sha256 $got does not match $want from $list; nothing was written"
    fi
    finals+=("$path")
done

# Every file is good: move them into place.
for i in "${!finals[@]}"; do
    mv -f "${tmps[$i]}" "${finals[$i]}" || fail "cannot move ${tmps[$i]} to ${finals[$i]}"
done
for z in "${zips[@]}"; do rm -f "$z"; done
for d in "${made_tmpdirs[@]}"; do rm -rf "$d"; done
[ ${#finals[@]} -gt 0 ] && echo "$label: wrote ${finals[*]}"
exit 0
