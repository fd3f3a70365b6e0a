/* Loading evaluation token streams; see tokens.h. */
#include "eval/tokens.h"

#include <stdlib.h>
#include <string.h>

#include "core/formats/npy.h"
#include "core/text/tokenizer.h"

static qlab_status load_npy_ids(const char *path, int **ids, int64_t *n) {
    npy_array arr;
    QLAB_TRY(npy_read(path, &arr));
    if (strcmp(arr.dtype, "<i4") != 0 && strcmp(arr.dtype, "<i8") != 0) {
        qlab_status st = qlab_fail(QLAB_ERR_FORMAT, "%s: token ids must be int32 or int64, file holds %s",
                                   path, arr.dtype);
        npy_free(&arr);
        return st;
    }
    int *out = qlab_calloc((size_t)arr.count, sizeof(int));
    if (!out) {
        npy_free(&arr);
        return QLAB_ERR_NOMEM;
    }
    for (int64_t i = 0; i < arr.count; i++) {
        int64_t v = arr.itemsize == 4 ? ((const int32_t *)arr.data)[i] : ((const int64_t *)arr.data)[i];
        if (v < 0 || v > INT32_MAX) {
            free(out);
            npy_free(&arr);
            return qlab_fail(QLAB_ERR_FORMAT, "%s: token id %lld at index %lld is negative or too large",
                             path, (long long)v, (long long)i);
        }
        out[i] = (int)v;
    }
    *n = arr.count;
    *ids = out;
    npy_free(&arr);
    return QLAB_OK;
}

qlab_status eval_load_tokens(const char *text_path, const char *npy_path, const char *tokenizer_path,
                             int **ids, int64_t *n) {
    *ids = NULL;
    *n = 0;
    if ((text_path == NULL) == (npy_path == NULL))
        return qlab_fail(QLAB_ERR_ARG,
                         "eval_load_tokens: give exactly one of a text file and a .npy token file");
    if (npy_path) return load_npy_ids(npy_path, ids, n);
    if (!tokenizer_path)
        return qlab_fail(QLAB_ERR_ARG, "%s: a text file needs a tokenizer to encode it", text_path);
    tokenizer *tok = NULL;
    char *text = NULL;
    size_t len = 0, n_ids = 0;
    qlab_status st = tokenizer_load(tokenizer_path, &tok);
    if (st == QLAB_OK) st = qlab_read_file(text_path, &text, &len);
    if (st == QLAB_OK) st = tokenizer_encode(tok, text, len, tokenizer_add_bos(tok), ids, &n_ids);
    if (st == QLAB_OK) *n = (int64_t)n_ids;
    free(text);
    tokenizer_free(tok);
    return st;
}
