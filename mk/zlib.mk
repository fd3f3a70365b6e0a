# core/base/gzip.c and tar.c read .gz and .tar.gz files (ratings, MMLU, OASST1) with zlib.
LDLIBS += -lz
