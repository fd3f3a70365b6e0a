# CUDA self-test link rule for `make cuda` (the Makefile compiles kernels/*.cu to $(O)/kernels/*.cu.o).
# Linked by the C compiler against the static CUDA runtime, so the binary needs only the driver at run time.
# The CPU emulation of the same kernels is plain C in libqlab.a and is tested by tests/test_cuda_emu.c.

CUDA_HOME ?= $(abspath $(dir $(shell command -v $(NVCC) 2>/dev/null))/..)
CUDA_LDLIBS := -L$(CUDA_HOME)/lib64 -lcudart_static -ldl -lrt -lpthread -lstdc++

# nvcc is not run with -MMD: rebuild every CUDA object when any header it can include changes.
$(CUDA_OBJS): $(wildcard kernels/*.h) $(wildcard core/*/*.h)

$(BUILD)/bin/qlab-cuda-selftest: $(CUDA_OBJS) $(LIB)
	@mkdir -p $(dir $@)
	@echo "LD $@"
	$(Q)$(CC) $(CFLAGS_ALL) $(CUDA_OBJS) $(LIB) $(LDLIBS_ALL) $(CUDA_LDLIBS) -o $@
