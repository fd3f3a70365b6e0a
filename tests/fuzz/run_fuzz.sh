#!/usr/bin/env bash
# Runs each libFuzzer target of BUILD/fuzz for SECONDS seconds: tests/fuzz/run_fuzz.sh BUILD SECONDS [NAMES...].
# Seeds: the committed tests/fuzz/corpus/<name>/ plus small slices of ../shared/data generated here when that
# folder exists; new inputs go to BUILD/corpus/<name>/ (kept between runs), reproducers of findings to
# BUILD/findings/. Prints one row per target (executions, exec/s, corpus, findings) and exits 1 on any
# finding. Memory: 2 GiB RSS and a 2 GiB single-allocation limit (larger is an "oom" finding: no loader
# should allocate that much for a file of at most FUZZ_MAX_LEN bytes).
set -u
build=${1:?usage: run_fuzz.sh BUILD SECONDS [NAMES...]}
secs=${2:?usage: run_fuzz.sh BUILD SECONDS [NAMES...]}
shift 2
names=("$@")
[ ${#names[@]} -gt 0 ] || names=($(ls tests/fuzz/fuzz_*.c | sed -E 's|.*/fuzz_(.*)\.c|\1|'))
shared=${QLAB_SHARED_DATA:-../shared/data}
max_len=${FUZZ_MAX_LEN:-65536}
mkdir -p "$build/findings" "$build/corpus" "$build/seeds"

# Small slices of the real files (never copied into the repository).
slice() { # slice TARGET NAME SOURCE BYTES
    local dir="$build/seeds/$1"
    mkdir -p "$dir"
    [ -f "$3" ] && head -c "$4" "$3" >"$dir/$2"
}
slice_gz_lines() { # slice_gz_lines TARGET NAME SOURCE LINES: the first lines of a gzip'd file, re-gzip'd
    local dir="$build/seeds/$1"
    mkdir -p "$dir"
    [ -f "$3" ] && { gzip -dc "$3" 2>/dev/null | head -n "$4" | gzip -n >"$dir/$2"; }
}
if [ -d "$shared" ]; then
    slice llama2c stories260K.head "$shared/models/stories260K.bin" 65536
    slice gguf stories260K.head "$shared/models/stories260K.gguf" 65536
    slice gguf smollm2.head "$shared/models/SmolLM2-135M-Instruct.Q4_1.gguf" 65536
    slice tokenizer_bin tok512.bin "$shared/models/tok512.bin" 65536
    slice tokenizer_bin llama2.head "$shared/models/tokenizer.bin" 16384
    slice instruct alpaca.head "$shared/finetune/alpaca_data_1k.json" 8192
    slice_gz_lines instruct alpaca_5k.jsonl.gz "$shared/finetune/paper_datasets/alpaca_5k.jsonl.gz" 8
    slice_gz_lines instruct flan.jsonl.gz "$shared/finetune/paper_datasets/flan_v2_cot_zs_3k.jsonl.gz" 8
    slice_gz_lines instruct hh.jsonl.gz "$shared/finetune/paper_datasets/hh-rlhf_test_5k.jsonl.gz" 8
    slice gzip_tar alpaca_5k.gz.head "$shared/finetune/paper_datasets/alpaca_5k.jsonl.gz" 16384
    slice mmlu qlora_val.head "$shared/mmlu/qlora_zero_shot_mmlu_val.json" 8192
    if [ -f "$shared/mmlu/mmlu_dev_test_csv.tar.gz" ]; then
        mkdir -p "$build/seeds/mmlu" "$build/seeds/gzip_tar"
        member=$(tar -tzf "$shared/mmlu/mmlu_dev_test_csv.tar.gz" 2>/dev/null | grep -m1 '_dev.csv$')
        [ -n "$member" ] && tar -xzOf "$shared/mmlu/mmlu_dev_test_csv.tar.gz" "$member" >"$build/seeds/mmlu/dev.csv"
        [ -n "$member" ] && (cd "$build/seeds" && rm -rf tarsrc && mkdir -p tarsrc/data/dev &&
            cp mmlu/dev.csv tarsrc/data/dev/x_dev.csv && tar -C tarsrc -czf gzip_tar/mmlu_one.tar.gz data &&
            tar -C tarsrc -cf gzip_tar/mmlu_one.tar data && rm -rf tarsrc)
    fi
else
    echo "fuzz: $shared absent: seeds from tests/fuzz/corpus only"
fi
mkdir -p "$build/seeds/config"
cp experiments/*.json "$build/seeds/config/" 2>/dev/null

printf '%-16s %8s %12s %9s %8s %9s\n' target seconds executions exec/s corpus findings
total_exec=0 total_find=0
for n in "${names[@]}"; do
    bin="$build/fuzz/fuzz_$n"
    if [ ! -x "$bin" ]; then
        echo "fuzz: $bin not built" >&2
        total_find=$((total_find + 1))
        continue
    fi
    work="$build/corpus/$n"
    mkdir -p "$work"
    dirs=("$work")
    [ -d "tests/fuzz/corpus/$n" ] && dirs+=("tests/fuzz/corpus/$n")
    [ -d "$build/seeds/$n" ] && dirs+=("$build/seeds/$n")
    log="$build/fuzz_$n.log"
    # HDF5 itself asks for huge blocks on some corrupt files (an attribute's size read from the file), and
    # its trial read runs in a child that inherits libFuzzer's malloc hook: for the results target, an
    # allocation above 2 GiB returns NULL (ASan's max_allocation_size_mb) instead of counting as a finding.
    # HDF5 also grows the resident set to ~1.9 GB on some 11 KB files (inside the library, then the read
    # fails), so that target gets 3 GiB of RSS.
    malloc_limit=2048 rss_limit=2048 asan_extra=""
    if [ "$n" = results ]; then malloc_limit=1048576 rss_limit=3072 asan_extra=":max_allocation_size_mb=2048"; fi
    before=$(ls "$build/findings" | grep -c "^$n-" || true)
    start=$(date +%s)
    ASAN_OPTIONS=${ASAN_OPTIONS:-detect_leaks=1:allocator_may_return_null=1}$asan_extra \
    UBSAN_OPTIONS=${UBSAN_OPTIONS:-print_stacktrace=1:halt_on_error=1} \
    LSAN_OPTIONS=${LSAN_OPTIONS:-suppressions=$PWD/tests/fuzz/lsan.supp:print_suppressions=0} \
    QLAB_QUIET=1 OMP_NUM_THREADS=1 \
        "$bin" -max_total_time="$secs" -max_len="$max_len" -timeout=30 -rss_limit_mb="$rss_limit" \
        -malloc_limit_mb="$malloc_limit" -print_final_stats=1 -artifact_prefix="$build/findings/$n-" "${dirs[@]}" \
        >"$log" 2>&1
    rc=$?
    took=$(($(date +%s) - start))
    execs=$(sed -nE 's/^stat::number_of_executed_units: *([0-9]+).*/\1/p' "$log" | tail -n 1)
    execs=${execs:-0}
    after=$(ls "$build/findings" | grep -c "^$n-" || true)
    found=$((after - before))
    if [ "$rc" -ne 0 ] && [ "$found" -eq 0 ]; then found=1; fi
    corpus=$(ls "$work" | wc -l)
    rate=$((execs / (took > 0 ? took : 1)))
    printf '%-16s %8d %12d %9d %8d %9d\n' "$n" "$took" "$execs" "$rate" "$corpus" "$found"
    grep -h '^fuzz_results: ' "$log" | tail -n 1 | sed 's/^/    /'
    if [ "$found" -ne 0 ]; then
        grep -m1 -E 'ERROR|runtime error|==[0-9]+==' "$log" | sed 's/^/    /'
        echo "    log: $log; reproducers: $build/findings/$n-*"
    fi
    total_exec=$((total_exec + execs)) total_find=$((total_find + found))
done
echo "fuzz: ${#names[@]} targets, $total_exec executions, $total_find findings"
[ "$total_find" -eq 0 ]
