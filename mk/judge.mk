# The GPT-4 judge module (eval/judge_archive.c) reads the released rating .tar.gz directly with zlib.
LDLIBS += -lz
