/* The cached model family of `make zoo` (models/zoo/ by default): the files it holds and the manifest that
 * names them. build/bin/zoo writes the folder; experiments read it through zoo_manifest_load, which checks
 * every model file against the sha256 recorded for it. */
#ifndef QLAB_EVAL_ZOO_MANIFEST_H
#define QLAB_EVAL_ZOO_MANIFEST_H

#include <stdint.h>

#include "core/base/common.h"

#define ZOO_MANIFEST_FILE "manifest.json"
#define ZOO_MANIFEST_FORMAT "qlab-zoo-1"
#define ZOO_TOKENIZER_FILE "tokenizer.bin"
#define ZOO_TRAIN_TEXT_FILE "train.txt"
#define ZOO_HELDOUT_TEXT_FILE "heldout.txt"

typedef struct {
    char *name;   /* "zoo-0.3M" */
    char *path;   /* <dir>/<file>, a llama2.c .bin */
    char *sha256; /* of the file, as recorded (and verified) */
    int64_t params;
    double final_train_loss, final_heldout_loss;
} zoo_model_entry;

typedef struct {
    char *dir;
    char *tokenizer_path; /* <dir>/tokenizer.bin */
    char *heldout_path;   /* <dir>/heldout.txt */
    int n_models;
    zoo_model_entry *models; /* in the order of the zoo config (smallest first by convention) */
} zoo_manifest;

/* Reads <dir>/manifest.json. Fails with a message that says to run `make zoo` when the folder or manifest
 * is missing, and names the file when a model's sha256 no longer matches (verify = 1). */
qlab_status zoo_manifest_load(const char *dir, int verify, zoo_manifest *out);
void zoo_manifest_free(zoo_manifest *m);

#endif
