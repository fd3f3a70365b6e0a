"""Peer benchmark: the bench model of qlab's `make bench` (LLaMA, dim 256, 8 layers, 8 heads, hidden 688,
vocab 512, batch 4 x 256) in PyTorch + transformers, bitsandbytes and PEFT on this CPU -- what a researcher
would otherwise run. Prints tokens/s of: fp32 training step, bf16 (autocast) training step, fp32 and bf16
evaluation forward, and the QLoRA step (NF4+DQ base via bitsandbytes, bf16 compute, PEFT LoRA r 8 alpha 16
dropout 0.05 on all linear layers). Same timing rule as qlab's bench: best step over >= MIN seconds and >= 3
calls after a warm-up."""
import os, sys, time, json
import torch

def best(fn, min_s):
    fn()
    t_start, n, b = time.perf_counter(), 0, 1e30
    while time.perf_counter() - t_start < min_s or n < 3:
        t0 = time.perf_counter(); fn(); b = min(b, time.perf_counter() - t0); n += 1
    return b

def main():
    threads = int(os.environ.get("OMP_NUM_THREADS", "2")); torch.set_num_threads(threads)
    min_s = float(os.environ.get("MIN_SECONDS", "3"))
    from transformers import LlamaConfig, LlamaForCausalLM
    cfg = LlamaConfig(hidden_size=256, intermediate_size=688, num_hidden_layers=8, num_attention_heads=8,
                      num_key_value_heads=8, vocab_size=512, max_position_embeddings=256, rms_norm_eps=1e-5,
                      rope_theta=10000.0, tie_word_embeddings=True)
    B, T = 4, 256
    torch.manual_seed(7)
    ids = torch.randint(0, 512, (B, T)); labels = torch.randint(0, 512, (B, T))
    out = {"torch": torch.__version__, "threads": threads}
    m = LlamaForCausalLM(cfg).float()
    def train(ac):
        def step():
            m.zero_grad(set_to_none=False)
            with torch.autocast("cpu", dtype=torch.bfloat16, enabled=ac):
                loss = m(input_ids=ids, labels=labels).loss
            loss.backward()
        return step
    def evaluate(mm):
        def step():
            with torch.inference_mode():
                mm(input_ids=ids).logits
        return step
    n = B * T
    out["fp32 train step tok/s"] = n / best(train(False), min_s)
    out["bf16 autocast train step tok/s"] = n / best(train(True), min_s)
    m.eval(); out["fp32 eval forward tok/s"] = n / best(evaluate(m), min_s)
    mb = LlamaForCausalLM(cfg).to(torch.bfloat16).eval()
    out["bf16 eval forward tok/s"] = n / best(evaluate(mb), min_s)
    try:
        import bitsandbytes, peft
        from transformers import BitsAndBytesConfig
        from peft import LoraConfig, get_peft_model
        import tempfile
        with tempfile.TemporaryDirectory() as d:
            LlamaForCausalLM(cfg).save_pretrained(d)
            q = LlamaForCausalLM.from_pretrained(d, device_map="cpu", quantization_config=BitsAndBytesConfig(
                load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_use_double_quant=True,
                bnb_4bit_compute_dtype=torch.bfloat16))
        q = get_peft_model(q, LoraConfig(r=8, lora_alpha=16, lora_dropout=0.05, task_type="CAUSAL_LM",
                                         target_modules=["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj",
                                                         "up_proj", "down_proj"]))
        q.train()
        def qstep():
            q.zero_grad(set_to_none=False)
            with torch.autocast("cpu", dtype=torch.bfloat16):
                loss = q(input_ids=ids, labels=labels).loss
            loss.backward()
        out["bnb nf4+dq peft r8 qlora step tok/s"] = n / best(qstep, min_s)
        out["bitsandbytes"] = bitsandbytes.__version__; out["peft"] = peft.__version__
    except Exception as e:  # report, do not hide
        out["qlora error"] = repr(e)[:300]
    import transformers; out["transformers"] = transformers.__version__
    for k, v in out.items():
        print(f"{k:40s} {v:.1f}" if isinstance(v, float) else f"{k:40s} {v}")

main()
