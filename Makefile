# qlab — reproducible QLoRA ablations in C.   `make help` lists the targets.
#
# Layout (ARCHITECTURE.md draws the layers): core/{base,formats,results,text,quant,model}, kernels/ (CUDA),
# datasets/, eval/, train/ and experiments/harness/ all go into one static library build/lib/libqlab.a;
# cli/ is the `qlab` tool; each experiments/NAME.c is one program; each tests/test_*.c one test program;
# each tests/bench_*.c one benchmark. Includes name their layer ("core/quant/quant.h"): one include root,
# and tests/scripts/check_layers.sh (part of make test) fails on an include that points upward. Extra rules: mk/*.mk.

# CUDA=1 links the CUDA kernels into the library and programs (kernels/accel.c registers them at run time);
# it builds in its own folder so the CPU and CUDA builds never mix objects.
ifeq ($(CUDA),1)
BUILD ?= build-cuda
endif
BUILD ?= build
CC ?= gcc
NVCC ?= nvcc
O := $(BUILD)/obj

# ---------------------------------------------------------------- dependency detection
have = $(shell pkg-config --exists $(1) 2>/dev/null && echo yes)
HAVE_CJSON    := $(call have,libcjson)
HAVE_HDF5     := $(call have,hdf5)
HAVE_OPENBLAS := $(call have,openblas)
HAVE_OPENMP   := $(shell echo 'int main(void){return 0;}' | $(CC) -fopenmp -x c - -o /dev/null 2>/dev/null && echo yes)
HAVE_NVCC     := $(shell command -v $(NVCC) >/dev/null 2>&1 && echo yes)
HAVE_GNUPLOT  := $(shell command -v gnuplot >/dev/null 2>&1 && echo yes)
# oneDNN (libdnnl-dev): linked by the benchmarks only: the bf16 ones measure its bf16 matmul beside qlab's kernels, bench_train its sgemm (the fp32 limit is the better of it and OpenBLAS's).
HAVE_DNNL     := $(if $(wildcard /usr/include/oneapi/dnnl/dnnl.h),yes)
GIT_COMMIT    := $(shell git rev-parse --short=12 HEAD 2>/dev/null || echo unknown)

# OpenBLAS: prefer Debian's OpenMP build, which shares libgomp's thread pool with qlab's own OpenMP loops.
# The pthread build spins its own threads against OpenMP's spinning workers and runs small GEMMs up to
# ~30x slower on 2 cores. The rpath makes the loader take that build, whatever the system alternative is.
MULTIARCH       := $(shell $(CC) -print-multiarch 2>/dev/null)
OPENBLAS_OMP_LIB := /usr/lib/$(MULTIARCH)/openblas-openmp
ifneq ($(and $(HAVE_OPENMP),$(wildcard $(OPENBLAS_OMP_LIB)/libopenblas.so),$(wildcard /usr/include/$(MULTIARCH)/openblas-openmp/cblas.h)),)
  BLAS_CFLAGS := -I/usr/include/$(MULTIARCH)/openblas-openmp
  BLAS_LIBS   := -L$(OPENBLAS_OMP_LIB) -Wl,-rpath,$(OPENBLAS_OMP_LIB) -lopenblas
  BLAS_KIND   := openmp
else
  BLAS_CFLAGS := $(shell pkg-config --cflags openblas 2>/dev/null)
  BLAS_LIBS   := $(shell pkg-config --libs openblas 2>/dev/null)
  BLAS_KIND   := pthread
endif

mark = $(if $(1),✓,✗)

CSTD      := -std=c11 -D_GNU_SOURCE
WARN      := -Wall -Wextra -Wno-unused-parameter -Wshadow -Wstrict-prototypes -Wvla
OPT       ?= -O2 -g
# CI (CI=true) builds with warnings as errors; a user's build with another compiler only warns.
WERROR    := $(if $(CI),-Werror)
DEPFLAGS   = -MMD -MP
INCLUDES  := -I.
CFLAGS_ALL = $(CSTD) $(OPT) $(WARN) $(WERROR) $(INCLUDES) $(DEPFLAGS) \
             $(if $(HAVE_OPENMP),-fopenmp) \
             $(shell pkg-config --cflags libcjson hdf5 2>/dev/null) $(BLAS_CFLAGS) \
             $(if $(HAVE_OPENBLAS),-DQLAB_HAVE_OPENBLAS) $(if $(filter 1,$(CUDA)),-DQLAB_HAVE_CUDA) $(CFLAGS)
LDLIBS_ALL = $(shell pkg-config --libs libcjson hdf5 2>/dev/null) $(BLAS_LIBS) $(if $(HAVE_OPENMP),-fopenmp) -lm -lpthread \
             $(if $(filter 1,$(CUDA)),$(CUDA_LDLIBS)) $(LDLIBS)

# Per-file instruction sets: kernels named *_avx2.c / *_avx512.c are compiled for that ISA only and are
# called through run-time CPU dispatch, so the binaries still run on any x86-64.
AVX2_FLAGS   := -mavx2 -mfma -mf16c
AVX512_FLAGS := -mavx512f -mavx512bw -mavx512vl -mavx512dq -mfma -mf16c
# *_avx512bf16.c: AVX-512 with the BF16 extension (vdpbf16ps); *_amx.c: AMX tiles with bf16 (Intel).
AVX512BF16_FLAGS := $(AVX512_FLAGS) -mavx512bf16
AMX_FLAGS    := $(AVX512_FLAGS) -mamx-tile -mamx-bf16

LIB_DIRS   := core/base core/formats core/results core/text core/quant core/model kernels datasets eval train \
              experiments/harness
LIB_SRCS   := $(foreach d,$(LIB_DIRS),$(wildcard $(d)/*.c))
LIB_HDRS   := $(foreach d,$(LIB_DIRS),$(wildcard $(d)/*.h))
CLI_SRCS   := $(wildcard cli/*.c)
EXP_SRCS   := $(wildcard experiments/*.c)
TEST_SRCS  := $(wildcard tests/test_*.c)
BENCH_SRCS := $(wildcard tests/bench_*.c)
CUDA_SRCS  := $(wildcard kernels/*.cu)

LIB_OBJS  := $(LIB_SRCS:%.c=$(O)/%.o)
CUDA_OBJS := $(CUDA_SRCS:%.cu=$(O)/%.cu.o)
ifeq ($(CUDA),1)
  LIB_OBJS += $(filter-out %/cuda_selftest.cu.o,$(CUDA_OBJS))
endif
CLI_OBJS  := $(CLI_SRCS:%.c=$(O)/%.o)
LIB       := $(BUILD)/lib/libqlab.a
QLAB      := $(BUILD)/bin/qlab
EXP_BINS  := $(patsubst experiments/%.c,$(BUILD)/bin/%,$(EXP_SRCS))
TEST_BINS := $(patsubst tests/%.c,$(BUILD)/tests/%,$(TEST_SRCS))
# Source-tree checks run as tests: the include layering, the clang-format style and the function length.
SCRIPT_TESTS := $(BUILD)/tests/test_layers $(BUILD)/tests/test_format $(BUILD)/tests/test_fnlen
BENCH_BINS:= $(patsubst tests/%.c,$(BUILD)/bench/%,$(BENCH_SRCS))

.DEFAULT_GOAL := all
.SECONDARY:
V ?= 0
Q := $(if $(filter 1,$(V)),,@)
.PHONY: all help deps test bench cuda clean clean-results summary check-deps format format-check experiments

all: summary $(LIB) $(QLAB) $(EXP_BINS) ## Build the library, the qlab tool and every experiment program

summary:
	@printf 'qlab build: cJSON %s  HDF5 %s  OpenBLAS %s (%s)  OpenMP %s  nvcc %s  gnuplot %s\n' \
	  '$(call mark,$(HAVE_CJSON))' '$(call mark,$(HAVE_HDF5))' '$(call mark,$(HAVE_OPENBLAS))' '$(BLAS_KIND)' \
	  '$(call mark,$(HAVE_OPENMP))' '$(call mark,$(HAVE_NVCC))' '$(call mark,$(HAVE_GNUPLOT))'
	@if [ -z "$(HAVE_CJSON)" ] || [ -z "$(HAVE_HDF5)" ] || [ -z "$(HAVE_OPENBLAS)" ]; then \
	  echo "qlab build: cJSON, HDF5 and OpenBLAS are required: run 'make deps' first" >&2; exit 1; fi

help: ## List the targets
	@echo "qlab — make targets:"
	@grep -hE '^[a-zA-Z0-9_%-]+:.*## ' $(MAKEFILE_LIST) | sed -E 's/^([^:]+):.*## (.*)/  \1\t\2/' | \
	  awk -F'\t' '{printf "  %-26s %s\n", $$1, $$2}' | sed 's/^    /  /'
	@echo ""
	@echo "Experiments (make experiment-NAME; CONFIG=path for another config):"
	@for c in $(EXP_SRCS); do n=$$(basename $$c .c); \
	  d=$$(sed -n '1s|^/\* *||; 1s| *\*/$$||; 1s/ *[(:.].*//; 1p' $$c); \
	  printf "  %-26s %s\n" "experiment-$$(echo $$n | tr _ -)" "$$d"; done
	@echo ""
	@echo "Variables: BUILD=dir (default build), CONFIG=path (experiment config), OMP_NUM_THREADS=n,"
	@echo "           CUDA=1 (link the CUDA kernels into every program; builds in build-cuda/)"
	@echo ""
	@echo "Layout: core/{base,formats,results,text,quant,model} kernels datasets eval train experiments/harness cli"
	@echo "        experiments tests, each including only the ones before it (make test checks); see ARCHITECTURE.md"

deps: ## Install the Debian/Ubuntu packages qlab needs (safe to run twice)
	@pkgs="build-essential pkg-config libcjson-dev libhdf5-dev hdf5-tools gnuplot-nox libopenblas-dev libdnnl-dev libopenblas-openmp-dev zlib1g-dev curl ca-certificates clang-format clang libclang-rt-14-dev"; \
	missing=""; for p in $$pkgs; do dpkg -s $$p >/dev/null 2>&1 || missing="$$missing $$p"; done; \
	if [ -z "$$missing" ]; then echo "deps: all packages present"; exit 0; fi; \
	echo "deps: installing$$missing"; \
	SUDO=""; [ "$$(id -u)" -eq 0 ] || SUDO=sudo; \
	$$SUDO apt-get update -qq && DEBIAN_FRONTEND=noninteractive $$SUDO apt-get install -y -qq --no-install-recommends $$missing

# ---------------------------------------------------------------- compilation
$(O)/%_avx2.o: %_avx2.c
	@mkdir -p $(dir $@)
	@echo "CC $<"
	$(Q)$(CC) $(CFLAGS_ALL) $(AVX2_FLAGS) -c $< -o $@

$(O)/%_avx512.o: %_avx512.c
	@mkdir -p $(dir $@)
	@echo "CC $<"
	$(Q)$(CC) $(CFLAGS_ALL) $(AVX512_FLAGS) -c $< -o $@

$(O)/%_avx512bf16.o: %_avx512bf16.c
	@mkdir -p $(dir $@)
	@echo "CC $<"
	$(Q)$(CC) $(CFLAGS_ALL) $(AVX512BF16_FLAGS) -c $< -o $@

$(O)/%_amx.o: %_amx.c
	@mkdir -p $(dir $@)
	@echo "CC $<"
	$(Q)$(CC) $(CFLAGS_ALL) $(AMX_FLAGS) -c $< -o $@

$(O)/%.o: %.c
	@mkdir -p $(dir $@)
	@echo "CC $<"
	$(Q)$(CC) $(CFLAGS_ALL) -c $< -o $@

$(LIB): $(LIB_OBJS)
	@mkdir -p $(dir $@)
	@rm -f $@
	@echo "AR $@"
	$(Q)ar rcs $@ $^

# The CLI objects are linked directly (not through an archive) so every command's registration survives.
$(QLAB): $(CLI_OBJS) $(LIB)
	@mkdir -p $(dir $@)
	@echo "LD $@"
	$(Q)$(CC) $(CFLAGS_ALL) $(CLI_OBJS) $(LIB) $(LDLIBS_ALL) -o $@

$(BUILD)/bin/%: $(O)/experiments/%.o $(LIB)
	@mkdir -p $(dir $@)
	@echo "LD $@"
	$(Q)$(CC) $(CFLAGS_ALL) $< $(LIB) $(LDLIBS_ALL) -o $@

$(BUILD)/tests/%: $(O)/tests/%.o $(LIB)
	@mkdir -p $(dir $@)
	@echo "LD $@"
	$(Q)$(CC) $(CFLAGS_ALL) $< $(LIB) $(LDLIBS_ALL) -o $@

$(BUILD)/bench/%: $(O)/tests/%.o $(LIB)
	@mkdir -p $(dir $@)
	@echo "LD $@"
	$(Q)$(CC) $(CFLAGS_ALL) $< $(LIB) $(LDLIBS_ALL) $(BENCH_LIBS) -o $@

ifeq ($(HAVE_DNNL),yes)
$(O)/tests/bench_gemm_bf16.o $(O)/tests/bench_bf16_model.o $(O)/tests/bench_train.o: CFLAGS_ALL += -DQLAB_HAVE_DNNL
$(BUILD)/bench/bench_gemm_bf16 $(BUILD)/bench/bench_bf16_model $(BUILD)/bench/bench_train: BENCH_LIBS := -ldnnl
endif

# ---------------------------------------------------------------- tests and benchmarks
$(BUILD)/tests/test_layers: tests/scripts/check_layers.sh
	@mkdir -p $(dir $@)
	@printf '#!/bin/sh\ncd "%s" && exec tests/scripts/check_layers.sh\n' "$(CURDIR)" > $@ && chmod +x $@

$(BUILD)/tests/test_format: tests/scripts/check_format.sh
	@mkdir -p $(dir $@)
	@printf '#!/bin/sh\ncd "%s" && exec tests/scripts/check_format.sh\n' "$(CURDIR)" > $@ && chmod +x $@

$(BUILD)/tests/test_fnlen: tests/scripts/check_fnlen.sh
	@mkdir -p $(dir $@)
	@printf '#!/bin/sh\ncd "%s" && exec tests/scripts/check_fnlen.sh\n' "$(CURDIR)" > $@ && chmod +x $@

format-check: ## Check every C/CUDA source against .clang-format (also part of make test)
	@tests/scripts/check_format.sh

test: all $(TEST_BINS) $(SCRIPT_TESTS) ## Run the whole test suite and the source checks: layers, format, function length (ends with "N passed, M failed")
	@QLAB_QUIET=1 QLAB_BUILD=$(BUILD) tests/run_tests.sh $(BUILD)/tests

bench: all $(BENCH_BINS) ## Run the benchmarks; prints a table and writes results/bench.json
	@tests/run_bench.sh $(BUILD)

# ---------------------------------------------------------------- CUDA (compiled and linked here; run on a GPU)
NVCC_FLAGS ?= -O2 -std=c++17 -I. -gencode arch=compute_75,code=sm_75 -gencode arch=compute_80,code=sm_80 -gencode arch=compute_90,code=sm_90 -gencode arch=compute_90,code=compute_90 -Xcompiler -Wall

$(O)/%.cu.o: %.cu
	@mkdir -p $(dir $@)
	@echo "NVCC $<"
	$(Q)$(NVCC) $(NVCC_FLAGS) -c $< -o $@

cuda: ## Compile the CUDA kernels with nvcc (needs the CUDA toolkit, not a GPU)
ifeq ($(HAVE_NVCC),yes)
	@$(MAKE) --no-print-directory $(CUDA_OBJS) $(BUILD)/bin/qlab-cuda-selftest
else
	@echo "cuda: nvcc not found; skipping the CUDA kernels"
endif

experiments: $(EXP_BINS)

# ---------------------------------------------------------------- experiments
# make experiment-double-quant runs experiments/double_quant.json (or CONFIG=...) through
# build/bin/double_quant, then renders results/double_quant.md and plots/double_quant.png. Each config writes
# under its own name (the config file's name without .json): CONFIG=experiments/nf4_vs_fp4_real.json writes
# results/nf4_vs_fp4_real.{h5,md} and plots/nf4_vs_fp4_real.png, so runs never overwrite each other.
experiment-%: all ## Run experiments/NAME.json (NAME with - for _) or CONFIG=path; results/RUN.{h5,md}, plots/RUN.png (RUN: the config's name)
	@name=$(subst -,_,$*); \
	cfg=$${CONFIG:-experiments/$$name.json}; \
	[ -x $(BUILD)/bin/$$name ] || { echo "experiment-$*: no program experiments/$$name.c" >&2; exit 2; }; \
	[ -f "$$cfg" ] || { echo "experiment-$*: CONFIG $$cfg: no such file" >&2; exit 2; }; \
	run=$$(basename "$$cfg" .json); \
	mkdir -p results plots && \
	$(BUILD)/bin/$$name --config "$$cfg" --out results/$$run.h5 && \
	$(QLAB) report results/$$run.h5 --md results/$$run.md --plot plots/$$run.png

clean-results: ## Remove every run's results (results/*.h5, *.md, bench.json) and figures (plots/*.png, *.svg, *.dat), temporary files included
	rm -f results/*.h5 results/*.md results/.*.key results/*.json results/*.tmp.* plots/*.png plots/*.svg plots/*.dat plots/*.tmp.*

clean: ## Remove the build folders (build/, build-cuda/, build-asan/, build-fuzz/ and BUILD)
	rm -rf $(BUILD) build build-cuda build-asan build-fuzz

format: ## Reformat the C and CUDA sources with clang-format (.clang-format)
	clang-format -i $(LIB_SRCS) $(LIB_HDRS) $(CLI_SRCS) $(EXP_SRCS) $(TEST_SRCS) $(BENCH_SRCS) $(CUDA_SRCS) \
	  $(wildcard cli/*.h tests/*.h)

-include mk/*.mk
-include $(shell find $(O) -name '*.d' 2>/dev/null)
