/* Peak resident memory of a few finetuning steps, measured in a fresh process per configuration: VmHWM is
 * per process and never goes down, so each configuration re-executes the calling program
 * (/proc/self/exe MEMORY_PROBE_FLAG ...) and reads the child's result line. The child records its resident
 * memory before loading anything (the baseline), loads the base (at 4 bits for QLoRA, through
 * checkpoint_load_quantized), records the load's peak, resets the high-water mark
 * (/proc/self/clear_refs "5") and runs the steps through the finetuning job on synthetic rows (memory does
 * not depend on the token values), so the step peak is the training peak. Used by
 * experiments/memory_footprint and tests/bench_memory. */
#ifndef QLAB_MEMORY_PROBE_H
#define QLAB_MEMORY_PROBE_H

#include <stdint.h>

#include "core/base/common.h"
#include "core/model/model.h"
#include "train/finetune.h"
#include "train/memory_model.h"

#define MEMORY_PROBE_FLAG "--memory-probe"

typedef struct {
    char model_path[512];
    finetune_mode mode;
    quant_dtype dtype; /* QLoRA base */
    int blocksize, double_quant;
    int checkpointing;
    int batch, seq, steps, rank;
    double dropout;
    uint64_t seed;
    qlab_compute compute; /* the finetuning job's matrix products (fp32 when zeroed) */
} memory_probe_spec;

typedef struct {
    model_config arch;        /* of the model loaded */
    uint64_t baseline_bytes;  /* VmRSS before the model was loaded */
    uint64_t load_peak_bytes; /* VmHWM once loaded (the load's own peak) */
    uint64_t loaded_bytes;    /* VmRSS once loaded */
    uint64_t peak_bytes;      /* VmHWM over the training steps (from loaded_bytes on when reset) */
    int peak_reset;           /* 1: the high-water mark was reset after loading; 0: peak includes the load */
    double step_seconds;      /* fastest step that ran no held-out evaluation (NaN with fewer than 3 steps) */
    int threads;
} memory_probe_result;

/* Peak resident memory of this process in bytes (VmHWM) and its current resident memory (VmRSS); 0 when
 * /proc/self/status cannot be read. */
uint64_t memory_probe_vmhwm(void);
uint64_t memory_probe_vmrss(void);

/* Runs the configuration in this process (the child's side). */
qlab_status memory_probe_run(const memory_probe_spec *s, memory_probe_result *out);

/* Runs the configuration in a fresh copy of the calling program, which must start its main() with
 * memory_probe_main. Fails with one line naming the model and mode when the child fails. */
qlab_status memory_probe_spawn(const memory_probe_spec *s, memory_probe_result *out);

/* Call first in main(): when argv[1] is MEMORY_PROBE_FLAG, runs the probe, prints its result line and
 * returns the exit code; otherwise returns -1 and the program goes on. */
int memory_probe_main(int argc, char **argv);

/* The memory model's qlab spec for a probe of a model with this architecture (threads and baseline as
 * measured by the probe). */
void memory_probe_model_spec(const memory_probe_spec *s, const memory_probe_result *r,
                             memory_model_spec *out);

/* A llama2.c checkpoint at path with this architecture and seeded random weights (N(0, 0.02), unit norm
 * gains): a stand-in with the exact memory footprint of a model whose trained weights are not at hand. */
qlab_status memory_probe_write_random_model(const model_config *arch, uint64_t seed, const char *path);

/* A model entry of a config: a checkpoint path, or "zoo:NAME" — <zoo_dir>/NAME.bin when `make zoo` has
 * built it, else a llama2.c file of NAME's architecture (from the zoo config) with seeded random weights,
 * written at tmp_path (memory does not depend on the weights). *present is 0 when a path does not exist
 * (the caller skips it); *synthetic 1 when tmp_path was written. name: a display name ("zoo-0.3M",
 * "stories260K", the file's base name without extension). */
qlab_status memory_probe_resolve(const char *entry, const char *zoo_config, const char *zoo_dir,
                                 const char *tmp_path, char *path, size_t path_cap, char *name,
                                 size_t name_cap, int *present, int *synthetic);

#endif
