/* Quantized tensors in safetensors files, in the layout Hugging Face transformers writes for a bitsandbytes
 * 4-bit model (bitsandbytes QuantState.as_dict(packed=True)), so NF4/FP4 files load in either world, with
 * a documented extension of the same scheme for the formats bitsandbytes lacks.
 *
 * For a tensor named P (e.g. "model.layers.0.self_attn.q_proj.weight"; "weight" for a single tensor):
 *   P                     U8  [ceil(n/2), 1]   packed codes, element 2j in the high nibble, 2j+1 in the low.
 *                                            Read: any dtype holding those ceil(n/2) bytes (bitsandbytes'
 *                                            quant_storage, e.g. BF16 [ceil(n/2)/2, 1] for FSDP)
 *   P.absmax              F32 [nblocks]        absmax types without double quantization
 *                         U8  [nblocks]        with double quantization: indices into nested_quant_map
 *   P.quant_map           F32 [16]             the code book, quant_codebook(dtype) (checked on load to
 *                                            4 ulp; a differing one decodes, as bnb's CPU path does)
 *   P.nested_absmax       F32 [ceil(nblocks/256)]   double quantization only
 *   P.nested_quant_map    F32 [256]            double quantization only: the signed dynamic map. Read: any
 *                                            ascending map within 4 ulp of quant_dynamic_map_signed() per
 *                                            entry is accepted and used to decode, as bitsandbytes does
 *                                            (qt->dq_map); written: the tensor's map
 *   P.quant_state.<quant_state>  U8 [len]: UTF-8 JSON, exactly as bitsandbytes writes it, where
 *     <quant_state> is the descriptor row's (quant_type_traits): bitsandbytes__nf4 / __fp4 for the
 *     bitsandbytes-compatible types:
 *       {"quant_type": "nf4", "blocksize": 64, "dtype": "float32", "shape": [rows, cols]
 *        [, "nested_blocksize": 256, "nested_dtype": "float32", "nested_offset": <mean absmax>]}
 *     "shape" is the original (logical) shape; "dtype" the dtype the weight had before quantization
 *     (quant_tensor.orig_dtype: float32, float16 or bfloat16; dequantization defaults to it). nested_offset
 * is printed as the shortest decimal that reads back to the same fp32 value, so the round trip is bit-exact.
 * Extension for the types bitsandbytes lacks (`qlab dtypes` lists them): the state tensor is named
 *   P.quant_state.qlab__<name> with the same JSON keys (quant_type = the type's name), and
 *   fp32-absmax types: exactly the tensors above (DQ allowed);
 *   types with a 1-byte block scale (mxfp4: E8M0 exponents, nvfp4: E4M3): P.scale8 U8 [nblocks] instead
 *     of P.absmax; with a 2-byte one (iq4_nl: fp16): P.scale16 F16 [nblocks];
 *   types with a per-tensor scale (nvfp4): also P.tensor_scale F32 [1].
 *   P.quant_map holds the type's 16 code values (raw E2M1 values for mxfp4/nvfp4, the int8 table for
 *   iq4_nl). bitsandbytes' loader rejects unknown quant_state keys, so extension files are not loadable by
 *   it; the names keep them recognisable and distinct. */
#ifndef QLAB_QUANT_IO_H
#define QLAB_QUANT_IO_H

#include <stddef.h>

#include "core/base/common.h"
#include "core/quant/quant.h"
#include "core/formats/safetensors.h"

/* Adds every tensor of qt under name to w. The codes and constants are borrowed (qt must outlive the
 * write); the small tensors (JSON, code books) are copied. Fails on an inconsistent qt (shape product not
 * n, missing constants, non-finite dq_offset) naming the tensor. */
qlab_status quant_io_add(safetensors_writer *w, const char *name, const quant_tensor *qt);

/* Reads the quantized tensor name from f into qt (allocating; free with quant_tensor_free), validating
 * every tensor's dtype and size against the JSON state, the block size, the code book and the dynamic map.
 * Errors name the file and the tensor. */
qlab_status quant_io_read(const safetensors_file *f, const char *name, quant_tensor *qt);

/* Whether f holds a quantized tensor called name (it has a name.quant_state.* entry). */
int quant_io_has(const safetensors_file *f, const char *name);
/* Number of quantized tensors in f, and the name of the index-th one (in name order). */
int quant_io_count(const safetensors_file *f);
qlab_status quant_io_name_at(const safetensors_file *f, int index, char *out, size_t cap);

/* One-tensor convenience wrappers: write path atomically / open, read name, close. */
qlab_status quant_io_save(const char *path, const char *name, const quant_tensor *qt);
qlab_status quant_io_load(const char *path, const char *name, quant_tensor *qt);

#endif
