# ---------------------------------------------------------------- fuzzing and sanitizer builds
# make fuzz [FUZZ_SECONDS=N] [FUZZ_TARGETS="npy gguf"]: one libFuzzer target per parser (tests/fuzz/fuzz_*.c),
# built with clang -fsanitize=fuzzer,address,undefined against the library compiled with the same
# sanitizers in build-fuzz/, each run for FUZZ_SECONDS (default 60) from the committed seeds
# (tests/fuzz/corpus/) plus slices of ../shared/data when present; prints executions and findings per
# target and fails on any finding (reproducers are kept in build-fuzz/findings/).
# make test-asan: the whole test suite built with gcc -fsanitize=address,undefined in build-asan/ and run
# (every tests/test_*.c program; the two source checks, layering and format, are left to make test).
FUZZ_SECONDS ?= 60
FUZZ_BUILD   := build-fuzz
FUZZ_SRCS    := $(wildcard tests/fuzz/fuzz_*.c)
FUZZ_NAMES   := $(patsubst tests/fuzz/fuzz_%.c,%,$(FUZZ_SRCS))
FUZZ_TARGETS ?= $(FUZZ_NAMES)
SAN_FLAGS    := -fsanitize=address,undefined -fno-omit-frame-pointer -fno-sanitize-recover=undefined
ASAN_BUILD   := build-asan
.PHONY: fuzz fuzz-build test-asan fuzz-seeds

fuzz: ## libFuzzer+ASan/UBSan on every parser, FUZZ_SECONDS each (default 60); prints executions and findings per target
	@command -v clang >/dev/null 2>&1 || { echo "fuzz: clang not found: run 'make deps'" >&2; exit 1; }
	@$(MAKE) --no-print-directory BUILD=$(FUZZ_BUILD) CC=clang CI= \
	  CFLAGS="$(SAN_FLAGS) -fsanitize=fuzzer-no-link" fuzz-build
	@tests/fuzz/run_fuzz.sh $(FUZZ_BUILD) $(FUZZ_SECONDS) $(FUZZ_TARGETS)

# Inside the build-fuzz make (BUILD=build-fuzz CC=clang): the targets link libFuzzer's main.
fuzz-build: $(LIB) $(patsubst %,$(BUILD)/fuzz/fuzz_%,$(FUZZ_NAMES)) $(BUILD)/fuzz/make_seeds

$(BUILD)/fuzz/fuzz_%: tests/fuzz/fuzz_%.c tests/fuzz/fuzz.h tests/fuzz/fuzz_common_tok.h $(LIB)
	@mkdir -p $(dir $@)
	@echo "LD $@"
	$(Q)$(CC) $(CFLAGS_ALL) -fsanitize=fuzzer $< $(LIB) $(LDLIBS_ALL) -o $@

# The committed seeds (tests/fuzz/corpus/) are written by this program with qlab's own writers.
$(BUILD)/fuzz/make_seeds: tests/fuzz/make_seeds.c tests/fuzz/fuzz.h $(LIB)
	@mkdir -p $(dir $@)
	@echo "LD $@"
	$(Q)$(CC) $(CFLAGS_ALL) $< $(LIB) $(LDLIBS_ALL) -o $@

fuzz-seeds: $(BUILD)/fuzz/make_seeds ## Rewrite the committed fuzz seeds in tests/fuzz/corpus/ with qlab's writers
	$(BUILD)/fuzz/make_seeds tests/fuzz/corpus

test-asan: ## The whole test suite built with -fsanitize=address,undefined in build-asan/ and run (ends like make test)
	@$(MAKE) --no-print-directory BUILD=$(ASAN_BUILD) CFLAGS="$(SAN_FLAGS)" all \
	  $(patsubst tests/%.c,$(ASAN_BUILD)/tests/%,$(TEST_SRCS))
	@rm -f $(ASAN_BUILD)/tests/test_layers $(ASAN_BUILD)/tests/test_format # source checks: make test runs them
	@ASAN_OPTIONS=$${ASAN_OPTIONS:-detect_leaks=1:abort_on_error=0} UBSAN_OPTIONS=$${UBSAN_OPTIONS:-print_stacktrace=1} \
	  QLAB_QUIET=1 QLAB_BUILD=$(ASAN_BUILD) QLAB_TEST_TIMEOUT=$${QLAB_TEST_TIMEOUT:-2700} \
	  tests/run_tests.sh $(ASAN_BUILD)/tests
