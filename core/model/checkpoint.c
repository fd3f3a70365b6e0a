/* Format detection and dispatch for checkpoint_load, plus the helpers every checkpoint reader and writer
 * shares: whole-file mappings, atomic streaming writes, fp16/bf16 widening, and the rotary row
 * permutation between our interleaved order and Hugging Face's half-split order. */
#include "core/model/checkpoint.h"

#include <errno.h>
#include <limits.h>
#include <fcntl.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include "core/model/checkpoint_internal.h"
#include "core/model/model_check.h"
#include "core/base/half.h"
#include "core/formats/gguf_meta.h"

/* Every supported format stores little-endian numbers; the readers copy them as they are. */
_Static_assert(__BYTE_ORDER__ == __ORDER_LITTLE_ENDIAN__, "checkpoint readers assume a little-endian host");

const char *checkpoint_format_name(checkpoint_format f) {
    switch (f) {
    case CHECKPOINT_LLAMA2C:
        return "llama2.c";
    case CHECKPOINT_GGUF:
        return "gguf";
    case CHECKPOINT_HF:
        return "huggingface";
    case CHECKPOINT_UNKNOWN:
        break;
    }
    return "unknown";
}

static int checkpoint_ends_with(const char *s, const char *suffix) {
    size_t n = strlen(s), k = strlen(suffix);
    return n >= k && strcmp(s + n - k, suffix) == 0;
}

qlab_status checkpoint_detect(const char *path, checkpoint_format *out) {
    *out = CHECKPOINT_UNKNOWN;
    struct stat st;
    if (stat(path, &st) != 0) return qlab_fail(QLAB_ERR_IO, "%s: cannot open: %s", path, strerror(errno));
    if (S_ISDIR(st.st_mode) || checkpoint_ends_with(path, "config.json")) {
        *out = CHECKPOINT_HF;
        return QLAB_OK;
    }
    if (!S_ISREG(st.st_mode)) return qlab_fail(QLAB_ERR_IO, "%s: not a regular file", path);
    FILE *f = fopen(path, "rb");
    if (!f) return qlab_fail(QLAB_ERR_IO, "%s: cannot open: %s", path, strerror(errno));
    unsigned char magic[9] = {0};
    size_t got = fread(magic, 1, sizeof magic, f);
    fclose(f);
    /* A safetensors file (an 8-byte little-endian header length, then the JSON header) holds weights but
     * no model configuration: without this check it would be read as a llama2.c header ("hidden_dim = 0"). */
    uint64_t header_len = 0;
    for (int i = 7; i >= 0; i--)
        header_len = header_len << 8 | magic[i];
    if (checkpoint_ends_with(path, ".safetensors") || checkpoint_ends_with(path, ".safetensors.index.json") ||
        (got == sizeof magic && magic[8] == '{' && header_len >= 2 &&
         header_len <= (uint64_t)st.st_size - 8)) {
        char folder[4096];
        snprintf(folder, sizeof folder, "%s", path);
        char *slash = strrchr(folder, '/');
        if (slash)
            *slash = 0;
        else
            snprintf(folder, sizeof folder, ".");
        return qlab_fail(QLAB_ERR_ARG,
                         "%s: a safetensors file holds weights but no model configuration: pass its "
                         "Hugging Face folder (%s, with config.json) instead",
                         path, folder);
    }
    *out = (got >= 4 && memcmp(magic, "GGUF", 4) == 0) ? CHECKPOINT_GGUF : CHECKPOINT_LLAMA2C;
    return QLAB_OK;
}

qlab_status checkpoint_special_ids(const char *path, int *bos, int *eos) {
    *bos = *eos = -1;
    checkpoint_format fmt;
    QLAB_TRY(checkpoint_detect(path, &fmt));
    if (fmt == CHECKPOINT_LLAMA2C) {
        *bos = 1, *eos = 2; /* run.c's fixed ids */
        return QLAB_OK;
    }
    if (fmt == CHECKPOINT_HF) return checkpoint_special_ids_hf(path, bos, eos);
    checkpoint_mapping map;
    QLAB_TRY(checkpoint_map(path, &map));
    gguf_meta g;
    qlab_status st = gguf_meta_parse(path, map.data, map.size, &g);
    int64_t b = -1, e = -1;
    if (st == QLAB_OK) st = gguf_meta_get_int(&g, "tokenizer.ggml.bos_token_id", &b, NULL);
    if (st == QLAB_OK) st = gguf_meta_get_int(&g, "tokenizer.ggml.eos_token_id", &e, NULL);
    if (st == QLAB_OK) {
        *bos = b >= 0 && b < INT32_MAX ? (int)b : -1; /* llama.cpp writes 2^32-1 for "none" */
        *eos = e >= 0 && e < INT32_MAX ? (int)e : -1;
        gguf_meta_free(&g);
    }
    checkpoint_unmap(&map);
    return st;
}

qlab_status checkpoint_load(const char *path, model **out) {
    *out = NULL;
    checkpoint_format fmt;
    QLAB_TRY(checkpoint_detect(path, &fmt));
    qlab_status st = QLAB_ERR_FORMAT;
    switch (fmt) {
    case CHECKPOINT_HF:
        st = checkpoint_load_hf(path, out);
        break;
    case CHECKPOINT_GGUF:
        st = checkpoint_load_gguf(path, out);
        break;
    case CHECKPOINT_LLAMA2C:
        st = checkpoint_load_llama2c(path, out);
        break;
    case CHECKPOINT_UNKNOWN:
        return qlab_fail(QLAB_ERR_FORMAT, "%s: unknown checkpoint format", path);
    }
    if (st != QLAB_OK) return st;
    /* NaN/Inf weights would only surface as a perplexity of nan or empty generations: refuse them here,
     * naming the tensor */
    st = model_check_finite(*out, 0, path);
    if (st != QLAB_OK) {
        model_free(*out);
        *out = NULL;
    }
    return st;
}

qlab_status checkpoint_load_quantized(const char *path, const checkpoint_quant *quant, model **out) {
    *out = NULL;
    checkpoint_format fmt;
    QLAB_TRY(checkpoint_detect(path, &fmt));
    qlab_status st;
    switch (fmt) {
    case CHECKPOINT_LLAMA2C:
        QLAB_TRY(checkpoint_load_llama2c_quantized(path, quant, out));
        break;
    case CHECKPOINT_GGUF:
        QLAB_TRY(checkpoint_load_gguf_quantized(path, quant, out));
        break;
    case CHECKPOINT_HF:
        QLAB_TRY(checkpoint_load_hf_quantized(path, quant, out));
        break;
    case CHECKPOINT_UNKNOWN:
        return qlab_fail(QLAB_ERR_FORMAT, "%s: unknown checkpoint format", path);
    }
    st = model_check_finite(*out, 0, path); /* the fp32 groups; the projections were checked on load */
    if (st != QLAB_OK) {
        model_free(*out);
        *out = NULL;
    }
    return st;
}

qlab_status checkpoint_quantize_projection(model *m, int layer, model_proj p, const float *w,
                                           const char *path, const char *tensor) {
    int out_f, in_f;
    model_proj_shape(model_get_config(m), p, &out_f, &in_f);
    char what[PATH_MAX + 160];
    snprintf(what, sizeof what, "%s: tensor %s", path, tensor);
    QLAB_TRY(check_finite_floats(w, (size_t)out_f * in_f, (size_t)in_f, what, "row"));
    return model_set_projection(m, layer, p, w);
}

float *checkpoint_projection_scratch(const model_config *c) {
    size_t most = 0;
    for (int p = 0; p < PROJ_COUNT; p++) {
        int out_f, in_f;
        model_proj_shape(c, (model_proj)p, &out_f, &in_f);
        if ((size_t)out_f * in_f > most) most = (size_t)out_f * in_f;
    }
    return qlab_alloc_aligned(most * sizeof(float));
}

/* ---------------------------------------------------------------- mapping */

qlab_status checkpoint_map(const char *path, checkpoint_mapping *map) {
    map->data = NULL;
    map->size = 0;
    int fd = open(path, O_RDONLY);
    if (fd < 0) return qlab_fail(QLAB_ERR_IO, "%s: cannot open: %s", path, strerror(errno));
    struct stat st;
    if (fstat(fd, &st) != 0) {
        int e = errno;
        close(fd);
        return qlab_fail(QLAB_ERR_IO, "%s: cannot stat: %s", path, strerror(e));
    }
    if (!S_ISREG(st.st_mode)) {
        close(fd);
        return qlab_fail(QLAB_ERR_IO, "%s: %s", path,
                         S_ISDIR(st.st_mode) ? "is a directory" : "not a regular file");
    }
    if (st.st_size == 0) { /* mmap refuses length 0; an empty file is simply too short for every format */
        close(fd);
        return QLAB_OK;
    }
    if ((uint64_t)st.st_size > SIZE_MAX) {
        close(fd);
        return qlab_fail(QLAB_ERR_UNSUPPORTED, "%s: file too large to map", path);
    }
    void *p = mmap(NULL, (size_t)st.st_size, PROT_READ, MAP_PRIVATE, fd, 0);
    int e = errno;
    close(fd); /* the mapping keeps the file alive */
    if (p == MAP_FAILED) return qlab_fail(QLAB_ERR_IO, "%s: cannot map: %s", path, strerror(e));
    map->data = p;
    map->size = (size_t)st.st_size;
    return QLAB_OK;
}

void checkpoint_unmap(checkpoint_mapping *map) {
    if (map->data) munmap((void *)map->data, map->size);
    map->data = NULL;
    map->size = 0;
}

size_t checkpoint_dtype_size(checkpoint_dtype dtype) {
    return dtype == CHECKPOINT_F32 ? 4 : 2;
}

void checkpoint_writer_write_floats(checkpoint_writer *w, const float *x, size_t n, checkpoint_dtype dtype) {
    if (dtype == CHECKPOINT_F32) {
        atomic_file_write(w, x, n * sizeof(float));
        return;
    }
    uint16_t chunk[4096];
    for (size_t i = 0; i < n;) {
        size_t k = n - i < 4096 ? n - i : 4096;
        for (size_t j = 0; j < k; j++)
            chunk[j] = dtype == CHECKPOINT_F16 ? f32_to_fp16(x[i + j]) : f32_to_bf16(x[i + j]);
        atomic_file_write(w, chunk, k * sizeof(uint16_t));
        i += k;
    }
}

/* ---------------------------------------------------------------- element types and rotary order */

void checkpoint_widen(float *dst, const void *src, size_t n, checkpoint_dtype dtype) {
    const uint8_t *s = src;
    if (dtype == CHECKPOINT_F32) {
        memcpy(dst, s, n * sizeof(float));
        return;
    }
    for (size_t i = 0; i < n; i++) {
        uint16_t h;
        memcpy(&h, s + 2 * i, 2);
        dst[i] = dtype == CHECKPOINT_F16 ? fp16_to_f32(h) : bf16_to_f32(h);
    }
}

qlab_status checkpoint_permute_rotary_rows(float *w, int n_heads, int head_size, int cols, int to_hf) {
    size_t row = (size_t)cols, half = (size_t)head_size / 2;
    float *scratch = qlab_calloc((size_t)head_size * row, sizeof(float));
    if (!scratch) return QLAB_ERR_NOMEM;
    for (int h = 0; h < n_heads; h++) {
        float *head = w + (size_t)h * (size_t)head_size * row;
        memcpy(scratch, head, (size_t)head_size * row * sizeof(float));
        /* Interleaved row 2i+j (j = 0, 1: the two members of rotary pair i) is half-split row j*half + i. */
        for (size_t i = 0; i < half; i++)
            for (size_t j = 0; j < 2; j++) {
                size_t inter = 2 * i + j, split = j * half + i;
                if (to_hf)
                    memcpy(head + split * row, scratch + inter * row, row * sizeof(float));
                else
                    memcpy(head + inter * row, scratch + split * row, row * sizeof(float));
            }
    }
    free(scratch);
    return QLAB_OK;
}
