/* libFuzzer target: gzip streams (gzip_inflate_limit in memory with a 16 MiB cap, gzip_read_file) and tar
 * archives, plain or gzip'd (tar_archive_read). */
#include "core/base/gzip.h"
#include "core/base/tar.h"
#include "tests/fuzz/fuzz.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
    char *out = NULL;
    size_t out_len = 0;
    if (gzip_inflate_limit("fuzz.gz", data, size, (size_t)16 << 20, &out, &out_len) == QLAB_OK) free(out);
    const char *path = fuzz_write("gzip_tar", "a.tar.gz", data, size, 0);
    out = NULL;
    if (gzip_read_file(path, &out, &out_len) == QLAB_OK) free(out);
    tar_archive a;
    if (tar_archive_read(path, &a) == QLAB_OK) tar_archive_free(&a);
    return 0;
}
