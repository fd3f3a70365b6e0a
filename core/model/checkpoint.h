/* Loading and saving LLaMA-architecture models in the three checkpoint formats a QLoRA run meets:
 * llama2.c's legacy .bin, GGUF (llama.cpp; F32/F16/BF16 and block-quantized Q4_0..Q8_0, Q2_K..Q6_K tensors)
 * and Hugging Face (config.json + safetensors, possibly sharded). Every loader validates each size, count and
 * offset against the file and refuses a mismatch with one line naming the file and the field. */
#ifndef QLAB_CHECKPOINT_H
#define QLAB_CHECKPOINT_H

#include "core/base/common.h"
#include "core/model/model.h"

typedef enum {
    CHECKPOINT_UNKNOWN = 0,
    CHECKPOINT_LLAMA2C, /* 7 int32 header + fp32 weights (llama2.c run.c's read_checkpoint) */
    CHECKPOINT_GGUF,    /* llama.cpp's GGUF v2/v3 */
    CHECKPOINT_HF,      /* a Hugging Face directory: config.json + model.safetensors[.index.json] */
} checkpoint_format;

/* Element type of stored tensors, for the writers that can narrow the weights. */
typedef enum { CHECKPOINT_F32 = 0, CHECKPOINT_F16, CHECKPOINT_BF16 } checkpoint_dtype;

const char *checkpoint_format_name(checkpoint_format f); /* "llama2.c", "gguf", "huggingface", "unknown" */

/* Which format path holds: a directory or a path ending in config.json -> Hugging Face; a file that
 * starts with "GGUF" -> GGUF; any other readable file -> llama2.c. Fails only when path cannot be read. */
qlab_status checkpoint_detect(const char *path, checkpoint_format *out);

/* Detects the format and loads the model (fp32 parameters; fp16/bf16 tensors are widened exactly). */
qlab_status checkpoint_load(const char *path, model **out);

/* The 4-bit data type of a quantized load (model_quantize's arguments). */
typedef struct {
    quant_dtype dtype;
    int blocksize;
    int double_quant;
} checkpoint_quant;
/* Loads the model with its projections quantized (model_create_quantized): the result equals
 * checkpoint_load followed by model_quantize, bit for bit, and keeps no fp32 copy of the projections.
 * Every format is quantized tensor by tensor from the mapped file(s), so the fp32 projections are never all
 * in memory: llama2.c's straight from the mapping, GGUF's (F32/F16/BF16/ggml block types) and Hugging
 * Face's (F32/F16/BF16, Q/K rows permuted back to our rotary order) through one projection-sized fp32
 * buffer; each is checked for NaN/Inf before it is quantized. Embeddings, norms and the classifier
 * stay fp32 (model_full_precision_groups names them). */
qlab_status checkpoint_load_quantized(const char *path, const checkpoint_quant *quant, model **out);
qlab_status checkpoint_load_llama2c_quantized(const char *path, const checkpoint_quant *quant, model **out);
qlab_status checkpoint_load_gguf_quantized(const char *path, const checkpoint_quant *quant, model **out);
qlab_status checkpoint_load_hf_quantized(const char *path, const checkpoint_quant *quant, model **out);
qlab_status checkpoint_load_llama2c(const char *path, model **out);
qlab_status checkpoint_load_gguf(const char *path, model **out);
/* path: the directory, or its config.json. */
qlab_status checkpoint_load_hf(const char *path, model **out);

/* llama2.c legacy layout, RoPE tables included as llama2.c writes them; atomic (temp file + rename). */
qlab_status checkpoint_save_llama2c(const model *m, const char *path);
/* config.json + model.safetensors (fp32) in dir (created if missing), each written atomically. Q/K rows
 * are permuted to Hugging Face's half-split rotary order, as llama2.c's export does. */
qlab_status checkpoint_save_hf(const model *m, const char *dir);
/* As checkpoint_save_hf with the tensors stored as dtype (fp16/bf16 round to nearest even). */
qlab_status checkpoint_save_hf_dtype(const model *m, const char *dir, checkpoint_dtype dtype);
/* As checkpoint_save_hf_dtype, with the tokenizer's BOS/EOS ids (-1: unknown) written into config.json
 * and a generation_config.json (so transformers' generate() stops at the EOS). config.json always holds
 * rope_theta both top-level and in rope_parameters (transformers 5), attention_bias/mlp_bias false. */
qlab_status checkpoint_save_hf_ids(const model *m, const char *dir, checkpoint_dtype dtype, int bos, int eos);
/* The BOS/EOS ids the checkpoint at path declares (-1 each when it does not): GGUF tokenizer.ggml.bos/
 * eos_token_id; Hugging Face config.json (else generation_config.json) bos/eos_token_id (the first of a
 * list); llama2.c: 1 and 2, its fixed convention. */
qlab_status checkpoint_special_ids(const char *path, int *bos, int *eos);
/* GGUF v3 with general.architecture "llama"; the 1-D norm weights stay F32 (as llama.cpp stores them),
 * the matrices are stored as dtype. No vocabulary is written. Atomic. */
qlab_status checkpoint_save_gguf(const model *m, const char *path, checkpoint_dtype dtype);

/* The row permutation between our interleaved rotary order (llama2.c, Meta, GGUF: pairs (2i, 2i+1) of a
 * head rotate together) and Hugging Face's half-split order (pairs (i, i + head_size/2)). w is
 * (n_heads * head_size, cols), row-major. to_hf = 1 applies llama2.c export's permute; 0 its inverse.
 * Returns QLAB_ERR_NOMEM if the scratch row buffer cannot be allocated. */
qlab_status checkpoint_permute_rotary_rows(float *w, int n_heads, int head_size, int cols, int to_hf);

#endif
