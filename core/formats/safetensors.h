/* Reading and writing Hugging Face safetensors files: 8-byte little-endian header length N, N bytes of
 * JSON ({"name": {"dtype", "shape", "data_offsets"}, "__metadata__": {string map}}), then the raw
 * little-endian tensor bytes. Files are memory-mapped and validated completely on open (every offset,
 * size and name), so a model loader can trust what it gets; sharded checkpoints (an index JSON with a
 * weight_map) open as one set. Writing is atomic (temp file + rename). */
#ifndef QLAB_SAFETENSORS_H
#define QLAB_SAFETENSORS_H

#include <stddef.h>
#include <stdint.h>

#include "core/base/common.h"

typedef enum {
    SAFETENSORS_BOOL = 0,
    SAFETENSORS_U8,
    SAFETENSORS_I8,
    SAFETENSORS_F8_E4M3, /* "F8_E4M3": readable as bytes only */
    SAFETENSORS_F8_E5M2, /* "F8_E5M2": readable as bytes only */
    SAFETENSORS_I16,
    SAFETENSORS_U16,
    SAFETENSORS_F16,
    SAFETENSORS_BF16,
    SAFETENSORS_I32,
    SAFETENSORS_U32,
    SAFETENSORS_F32,
    SAFETENSORS_I64,
    SAFETENSORS_U64,
    SAFETENSORS_F64,
    SAFETENSORS_DTYPE_COUNT
} safetensors_dtype;

#define SAFETENSORS_MAX_DIMS 8
/* The reference implementation refuses headers above 100 MB; so do we (a corrupt length is caught
 * before we try to parse gigabytes as JSON). */
#define SAFETENSORS_MAX_HEADER_BYTES (100u * 1000u * 1000u)

/* "F32", "BF16", ... as written in the header. */
const char *safetensors_dtype_name(safetensors_dtype dt);
/* Parses a header dtype string; records "unknown safetensors dtype 'X'" on failure. */
qlab_status safetensors_dtype_parse(const char *name, safetensors_dtype *dt);
size_t safetensors_dtype_size(safetensors_dtype dt);

/* One tensor of an open file. `data` points into the mapped file: it is read-only, valid until the file
 * is closed and NOT necessarily aligned for its type (use memcpy or safetensors_tensor_to_f32). */
typedef struct {
    char *name;
    safetensors_dtype dtype;
    int ndim; /* 0 = scalar */
    int64_t shape[SAFETENSORS_MAX_DIMS];
    int64_t count; /* product of shape (1 for a scalar) */
    size_t nbytes; /* count * dtype size */
    size_t offset; /* byte offset of the data inside the file */
    const void *data;
} safetensors_tensor;

/* An open, validated file. Tensors are sorted by name; metadata keeps the header's order. */
typedef struct {
    char *path;
    int n_tensors;
    safetensors_tensor *tensors;
    int n_metadata;
    char **metadata_keys;
    char **metadata_values;
    /* private: the mapping */
    void *map_base;
    size_t map_size;
} safetensors_file;

/* Maps and validates path. Fails (one line naming the file, and the tensor when there is one) when: the
 * file is shorter than 8 bytes; N exceeds the file or SAFETENSORS_MAX_HEADER_BYTES; the header is not
 * UTF-8 or not a JSON object; a tensor lacks dtype/shape/data_offsets or has a wrong type for one; the dtype
 * is unknown; a dimension is negative, non-integer, or the element count overflows; the offsets are reversed,
 * do not equal count * itemsize, overlap, leave a gap, or do not cover the data section exactly (the
 * reference implementation's rules); a name repeats; __metadata__ holds a non-string value. */
qlab_status safetensors_open(safetensors_file *f, const char *path);
void safetensors_close(safetensors_file *f);

/* The tensor called name, or NULL (no error recorded: absence is often expected). */
const safetensors_tensor *safetensors_find(const safetensors_file *f, const char *name);
/* Like safetensors_find but records "<file>: no tensor named 'x'" when absent. */
qlab_status safetensors_require(const safetensors_file *f, const char *name, const safetensors_tensor **out);
/* A metadata value, or NULL. */
const char *safetensors_metadata(const safetensors_file *f, const char *key);

/* Converts a tensor's elements to fp32 into out (t->count floats). F32/F16/BF16/F64 and the integer types
 * convert by value; BOOL and F8 fail with QLAB_ERR_UNSUPPORTED. */
qlab_status safetensors_tensor_to_f32(const safetensors_tensor *t, float *out);
/* Finds name in f, checks it holds exactly `count` elements, converts to fp32. Errors name the file and
 * the tensor ("m.safetensors: tensor 'x' has 12 elements, expected 16"). */
qlab_status safetensors_read_f32(const safetensors_file *f, const char *name, float *out, int64_t count);
/* Same, allocating the output (free() it); *count receives the element count. */
qlab_status safetensors_read_f32_alloc(const safetensors_file *f, const char *name, float **out,
                                       int64_t *count);
/* Copies the raw bytes of a tensor of the given dtype into out (t->nbytes), checking the dtype and the
 * element count (pass count < 0 to accept any). For codes, scales and other non-float payloads. */
qlab_status safetensors_read_raw(const safetensors_file *f, const char *name, safetensors_dtype dt, void *out,
                                 int64_t count);

/* A checkpoint that may be split into shards. path may be: a .safetensors file; an index JSON
 * (model.safetensors.index.json, {"weight_map": {"tensor": "shard file"}}); or a directory holding
 * model.safetensors.index.json or model.safetensors. Shard names must be plain file names beside the
 * index. Every weight_map entry must exist in its shard, and a tensor name may appear in one shard only. */
typedef struct {
    int n_files;
    safetensors_file *files;
} safetensors_checkpoint;

qlab_status safetensors_checkpoint_open(safetensors_checkpoint *ck, const char *path);
void safetensors_checkpoint_close(safetensors_checkpoint *ck);
/* The tensor called name in any shard, or NULL; *file (if non-NULL) receives its shard. */
const safetensors_tensor *safetensors_checkpoint_find(const safetensors_checkpoint *ck, const char *name,
                                                      const safetensors_file **file);
/* Finds, checks the element count and converts to fp32; errors name the shard and the tensor. */
qlab_status safetensors_checkpoint_read_f32(const safetensors_checkpoint *ck, const char *name, float *out,
                                            int64_t count);

/* Writer: collect tensors and metadata, then write once. The bytes match the reference implementation's
 * serialize(): compact JSON, __metadata__ first, tensors ordered by its dtype ranking (8-byte types
 * first, down to 1-byte types) then by name, header padded with spaces to a multiple of 8 — so every
 * tensor's data is aligned to its item size. */
typedef struct safetensors_writer safetensors_writer;

safetensors_writer *safetensors_writer_new(void); /* NULL (error recorded) when out of memory */
void safetensors_writer_free(safetensors_writer *w);
/* Adds a tensor whose bytes stay owned by the caller and must remain valid until write. Fails on an
 * empty name, the name "__metadata__", ndim outside 0..8, a negative dimension; a duplicate name is
 * reported by safetensors_writer_write (checking there keeps adding thousands of tensors linear). */
qlab_status safetensors_writer_add(safetensors_writer *w, const char *name, safetensors_dtype dt, int ndim,
                                   const int64_t *shape, const void *data);
/* Same, but the writer copies the bytes (for small temporaries such as a JSON blob). */
qlab_status safetensors_writer_add_copy(safetensors_writer *w, const char *name, safetensors_dtype dt,
                                        int ndim, const int64_t *shape, const void *data);
/* Sets (or replaces) a __metadata__ entry. */
qlab_status safetensors_writer_set_metadata(safetensors_writer *w, const char *key, const char *value);
/* Writes path atomically (path.tmp.<pid>, then rename). */
qlab_status safetensors_writer_write(safetensors_writer *w, const char *path);

#endif
