/* NumPy .npy files (format versions 1.0, 2.0 and 3.0), so tensors move between qlab and Python without
 * either side needing the other. Reading validates the whole header and refuses anything it cannot
 * represent exactly; writing produces the same bytes numpy.save does and is atomic (temp + rename).
 *
 * Supported dtypes: '<f4', '<f2', '<f8', '<i4', '<i8', '|u1', '|i1', '<u2' (bf16 is stored as '<u2' because
 * numpy has no bfloat16; the caller says when it means bf16). C order only. Trailing bytes after the data
 * are an error (numpy ignores them, but in practice they mean the header and the data disagree). */
#ifndef QLAB_NPY_H
#define QLAB_NPY_H

#include <stddef.h>
#include <stdint.h>

#include "core/base/common.h"

#define NPY_MAX_DIMS 8
/* numpy refuses headers above 10000 bytes by default; we allow more (long shapes) but stay bounded. */
#define NPY_MAX_HEADER_BYTES (1u << 20)

typedef struct {
    char dtype[8]; /* canonical descr, e.g. "<f4", "|u1" */
    int ndim;      /* 0 = scalar */
    int64_t shape[NPY_MAX_DIMS];
    int64_t count;        /* product of shape (1 for a scalar) */
    size_t itemsize;      /* bytes per element */
    void *data;           /* count * itemsize bytes, 64-byte aligned, owned: release with npy_free */
    char source_dtype[8]; /* npy_read_f32: the file's descr before conversion ("<f2", "<u2", ...) */
} npy_array;

/* Bytes per element of a descr ("<f4" -> 4), or 0 if qlab does not support it. "<u1" is accepted as a
 * synonym of "|u1" and "<i1" of "|i1". */
size_t npy_dtype_size(const char *dtype);

/* Reads a whole .npy file. Errors (one line naming the file): cannot open, bad magic, unknown version,
 * truncated header, header length beyond the file or above NPY_MAX_HEADER_BYTES, malformed header dict
 * (missing/extra keys, bad syntax), unknown or structured dtype, big-endian dtype, fortran_order True,
 * more than NPY_MAX_DIMS dimensions, shape product overflow, data shorter or longer than the shape says. */
qlab_status npy_read(const char *path, npy_array *arr);
/* Reads a float array and converts it to fp32: '<f4', '<f2', '<f8', and '<u2' when u2_is_bf16 is set.
 * On success arr->dtype is "<f4" and arr->data holds count floats. Integer dtypes are refused. */
qlab_status npy_read_f32(const char *path, int u2_is_bf16, npy_array *arr);
void npy_free(npy_array *arr);

/* Writes count = prod(shape) elements of dtype from data, version 1.0 (2.0 if the header needs it),
 * header padded with spaces to a multiple of 64 bytes like numpy >= 1.24 (including its spare space for
 * growing the first axis). ndim 0..NPY_MAX_DIMS. Atomic. */
qlab_status npy_write(const char *path, const char *dtype, int ndim, const int64_t *shape, const void *data);

/* Formats the complete header (magic, version, length, dict, padding) into buf; *len receives its size.
 * Exposed for tests that compare against numpy's bytes. */
qlab_status npy_format_header(const char *dtype, int ndim, const int64_t *shape, char *buf, size_t cap,
                              size_t *len);

#endif
