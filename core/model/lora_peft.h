/* LoRA adapters as Hugging Face PEFT directories: adapter_config.json + adapter_model.safetensors, exactly
 * as PeftModel.save_pretrained writes them for a LlamaForCausalLM (peft_type LORA, task_type CAUSAL_LM,
 * tensors base_model.model.model.layers.N.self_attn.q_proj.lora_A.weight, ..., rows of q_proj/k_proj's
 * lora_B in Hugging Face's half-split rotary order, which lora_save/lora_load take care of), so
 * PeftModel.from_pretrained on the Hugging Face copy of the same base gives the same outputs as qlab, and
 * an adapter trained by PEFT loads here (rank-stabilised ones too: use_rslora, scale alpha / sqrt(r)). What
 * qlab cannot apply (DoRA, an initialisation PEFT redoes on load such as PiSSA, biases,
 * modules_to_save, embed_tokens/lm_head targets, per-layer ranks, ...) is refused with a message naming
 * it, never ignored. */
#ifndef QLAB_LORA_PEFT_H
#define QLAB_LORA_PEFT_H

#include "core/base/common.h"
#include "core/model/lora.h"
#include "core/model/model.h"

#define LORA_PEFT_CONFIG "adapter_config.json"
#define LORA_PEFT_WEIGHTS "adapter_model.safetensors"

/* Writes dir/adapter_model.safetensors (lora_save) and dir/adapter_config.json, each atomically (a
 * temporary name renamed when complete); creates dir if missing. base_model (may be NULL: JSON null) is
 * recorded as base_model_name_or_path. */
qlab_status lora_save_peft(const lora_set *l, const char *dir, const char *base_model);

/* Reads dir/adapter_config.json (dir may also be the path of that file) into *out (seed 0), refusing with
 * one line naming the file and the key anything qlab would not apply exactly. target_modules is matched
 * as PEFT does (a list entry: the module name or its end after a dot; a string: a regular expression over
 * the whole name) against a LlamaForCausalLM's module names; knowing no model, this matches those of a
 * one-layer model (lora_load_peft matches every layer of the model's). base_model, when non-NULL,
 * receives a malloc'd copy of base_model_name_or_path (NULL when absent or null). */
qlab_status lora_read_peft_config(const char *dir, lora_config *out, char **base_model);

/* lora_read_peft_config, then a new set for a model of configuration mc, loaded from
 * dir/adapter_model.safetensors: every adapter of every layer must be present with its shape, and a
 * tensor the set would not use (another module, a DoRA magnitude, an embedding adapter) is refused by
 * name. The set starts in evaluation mode (no dropout). */
qlab_status lora_load_peft(const char *dir, const model_config *mc, lora_set **out);

#endif
