/* llama.cpp's (ggml's) block-quantized tensor types, dequantized to fp32 exactly as ggml's reference
 * dequantize_row_* functions in ggml-quants.c do (same block layouts, same order of float operations, no
 * fused multiply-add), so a GGUF file's quantized weights load bit for bit as llama.cpp sees them.
 * Legacy types use blocks of 32 values, K-quants super-blocks of 256. */
#ifndef QLAB_GGML_QUANTS_H
#define QLAB_GGML_QUANTS_H

#include <stddef.h>
#include <stdint.h>

/* ggml_type numbers as stored in GGUF tensor infos. */
enum {
    GGML_TYPE_F32 = 0,
    GGML_TYPE_F16 = 1,
    GGML_TYPE_Q4_0 = 2,
    GGML_TYPE_Q4_1 = 3,
    GGML_TYPE_Q5_0 = 6,
    GGML_TYPE_Q5_1 = 7,
    GGML_TYPE_Q8_0 = 8,
    GGML_TYPE_Q2_K = 10,
    GGML_TYPE_Q3_K = 11,
    GGML_TYPE_Q4_K = 12,
    GGML_TYPE_Q5_K = 13,
    GGML_TYPE_Q6_K = 14,
    GGML_TYPE_BF16 = 30,
};

/* Elements per block and bytes per block of a type qlab can read (F32/F16/BF16: block of 1); returns 0
 * (and leaves the outputs alone) for any other type. */
int ggml_type_block(uint32_t type, size_t *block_elems, size_t *block_bytes);
/* "Q4_1", "Q6_K", ...; for an unknown type "type N" is not produced here: returns NULL. */
const char *ggml_type_name(uint32_t type);

/* Dequantizes n values (a multiple of the type's block size) from src (any alignment) into dst.
 * Returns 0 when the type is not supported or n is not a whole number of blocks. */
int ggml_dequantize(uint32_t type, const void *src, float *dst, size_t n);

#endif
