#!/usr/bin/env python3
"""Cross-check qlab's model numerics and Hugging Face / PEFT interop against the real libraries.

Checked with transformers 5.25.0, peft 0.21.2, torch 2.15 (CPU, fp32), gguf 0.19.0, numpy 2.4.

    python3 tests/interop/check_transformers.py [--qlab build/bin/qlab] [--data ../shared/data]
                                                [--work DIR] [--full]

What it runs (same token ids on both sides: tokenized by qlab, fed as ids to transformers):
  * qlab convert --to hf of stories260K.gguf (and, with --full, SmolLM2-135M-Instruct.Q4_1.gguf) loads in
    transformers with no missing/unexpected keys and no warning; its weights equal transformers' own
    dequantization of the GGUF (gguf_file=...); mean NLL of a WikiText-2 window from `qlab ppl` (fp32)
    equals transformers'; the sliding-window protocol of `qlab ppl --stride` is the one its help describes;
  * qlab finetune (LoRA and QLoRA, a few steps on Alpaca rows) -> PeftModel.from_pretrained on the converted
    base gives qlab's NLL, merge_and_unload gives qlab merge's weights, and the merged directory loads cleanly;
  * PEFT adapters made here (random A and B, alpha != r; plain, rslora, a regex target_modules) give the
    same NLL in `qlab ppl --adapter`; a PiSSA adapter (which PEFT re-initialises on load) is refused;
  * bf16: `qlab ppl --compute bf16` vs torch.autocast(bfloat16): the NLL difference is reported (not
    bit-exact: torch rounds activations and logits to bf16, qlab keeps fp32 accumulations).
Prints PASS/FAIL/SKIP lines; exits 1 on any FAIL, 0 otherwise (also when data or packages are missing).
"""
import argparse, json, logging, os, subprocess, sys, tempfile, warnings

os.environ.setdefault("TQDM_DISABLE", "1")  # transformers' GGUF reader draws a progress bar

FAILED = []


def report(ok, name, detail):
    print(("PASS" if ok else "FAIL") + " %s: %s" % (name, detail), flush=True)
    if not ok:
        FAILED.append(name)


def run(args, **kw):
    r = subprocess.run(args, capture_output=True, text=True, **kw)
    if r.returncode != 0 and not kw.get("check") is False:
        raise RuntimeError("%s failed (%d): %s" % (" ".join(args), r.returncode, r.stderr.strip()[-400:]))
    return r


def qlab_nll(qlab, model, tokens, T, *extra):
    r = run([qlab, "ppl", "--model", model, "--tokens", tokens, "--ctx", str(T), "--stride", str(T),
             "--max-tokens", str(T), "--json", *extra])
    return json.loads(r.stdout.strip().splitlines()[-1])["mean_nll"]


class Captured(logging.Handler):
    """Collects transformers' warnings (missing/unexpected keys, config problems) while loading."""
    def __init__(self):
        super().__init__(logging.WARNING)
        self.records = []

    def emit(self, record):
        self.records.append(record.getMessage())


def load_clean(path, **kw):
    import torch
    from transformers import AutoModelForCausalLM
    cap = Captured()
    logging.getLogger("transformers").addHandler(cap)
    with warnings.catch_warnings(record=True) as w:
        warnings.simplefilter("always")
        m, info = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32, output_loading_info=True, **kw)
    logging.getLogger("transformers").removeHandler(cap)
    bad = {k: v for k, v in info.items() if v}
    msgs = cap.records + [str(x.message) for x in w if "deprecated" not in str(x.message)]
    return m.eval(), bad, msgs


def torch_nll(model, ids, autocast=False):
    import torch
    x = torch.tensor(ids, dtype=torch.long)[None]
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16, enabled=autocast):
        logits = model(x).logits[0].double()  # log-softmax in float64: fp32 over 49152 logits is off by ~1e-5
    return torch.nn.functional.cross_entropy(logits[:-1], x[0, 1:], reduction="none").numpy()


def windows(n, ctx, stride):
    """qlab ppl --stride's plan (its --help): the first window scores everything; each later one is the
    ctx tokens ending `stride` further on (ctx-1 when stride == ctx) and scores only new targets."""
    out, prev = [(0, min(ctx, n), 0)], min(ctx, n)
    step = stride if stride < ctx else ctx - 1
    while prev < n:
        end = min(prev + step, n)
        out.append((end - ctx, ctx, prev - (end - ctx) - 1))
        prev = end
    return out


def check_model(a, name, gguf_path, tok, T, work):
    import numpy as np
    hf = os.path.join(work, name + "_hf")
    run([a.qlab, "convert", "--to", "hf", gguf_path, hf])
    m, bad, msgs = load_clean(hf)
    report(not bad and not msgs, name + " convert_loads",
           "loading info %s, %d warnings %s" % (bad or "clean", len(msgs), msgs[:2]))
    try:
        import gguf  # noqa: F401  (transformers' GGUF reader needs it)
        kw = {"pad_token_id": None} if "stories" in gguf_path else {}  # its GGUF says pad id 2^32-1
        g, _, _ = load_clean(os.path.dirname(gguf_path), gguf_file=os.path.basename(gguf_path), **kw)
        sd, sg = m.state_dict(), g.state_dict()
        diff = max((sd[k] - sg[k]).abs().max().item() for k in sd if k in sg)
        report(set(sd) == set(sg) and diff == 0, name + " weights_vs_transformers_gguf",
               "%d tensors, max |diff| %g" % (len(sd), diff))
        del g
    except ImportError:
        print("SKIP %s weights_vs_transformers_gguf: python package gguf missing" % name)
    text = os.path.join(work, "wiki.txt")
    with open(os.path.join(a.data, "eval/wiki.test.raw"), "rb") as f:
        open(text, "wb").write(f.read(8000))
    ids_path = os.path.join(work, name + "_ids.npy")
    run([a.qlab, "tokenize", "--quiet", "--tokenizer", tok, "--bos", text, ids_path])
    ids = np.load(ids_path)[:T].astype(np.int32)
    np.save(ids_path, ids)
    ref = torch_nll(m, ids)
    q = qlab_nll(a.qlab, hf, ids_path, T)
    rel = abs(q - ref.mean()) / ref.mean()
    report(rel < 1e-5, name + " nll_fp32",
           "qlab %.7f transformers %.7f over %d tokens, rel diff %.2e" % (q, ref.mean(), T - 1, rel))
    qb = qlab_nll(a.qlab, hf, ids_path, T, "--compute", "bf16")
    tb = torch_nll(m, ids, autocast=True).mean()
    report(abs(qb - tb) < 0.05, name + " nll_bf16",
           "qlab bf16 %.5f (fp32 %+.1e) vs torch autocast bf16 %.5f (fp32 %+.1e): |diff| %.1e nats"
           % (qb, qb - q, tb, tb - ref.mean(), abs(qb - tb)))
    return m, hf, ids_path, ids


def check_sliding(a, m, hf, ids_path, ids, ctx=128, stride=48):
    import numpy as np
    total = []
    for start, length, score_from in windows(len(ids), ctx, stride):
        total.extend(torch_nll(m, ids[start:start + length])[score_from:])
    r = run([a.qlab, "ppl", "--model", hf, "--tokens", ids_path, "--ctx", str(ctx), "--stride", str(stride), "--json"])
    got = json.loads(r.stdout.strip().splitlines()[-1])
    ok = got["n_scored"] == len(total) == len(ids) - 1 and abs(got["mean_nll"] - np.mean(total)) < 1e-5 * np.mean(total)
    report(ok, "stories260K ppl_sliding", "ctx %d stride %d: %d scored (qlab %d), NLL %.7f vs %.7f"
           % (ctx, stride, len(total), got["n_scored"], np.mean(total), got["mean_nll"]))


def peft_nll(hf, adapter, ids):
    from transformers import AutoModelForCausalLM
    from peft import PeftModel
    import torch
    base = AutoModelForCausalLM.from_pretrained(hf, dtype=torch.float32)
    p = PeftModel.from_pretrained(base, adapter).eval()
    return p, torch_nll(p, ids).mean()


def check_finetune(a, hf, ids_path, ids, work):
    data = os.path.join(work, "alpaca40.json")
    json.dump(json.load(open(os.path.join(a.data, "finetune/alpaca_data_1k.json")))[:40], open(data, "w"))
    for kind, dtype in (("lora", "fp32"), ("qlora", "nf4")):
        out = os.path.join(work, "ft_" + kind)
        run([a.qlab, "finetune", "--model", hf, "--tokenizer", os.path.join(a.data, "models/tok512.bin"),
             "--data", data, "--out", out, "--dtype", dtype, "--steps", "5", "--batch", "4", "--lr", "1e-2",
             "--lora-r", "4", "--lora-alpha", "12", "--threads", "1"], env=dict(os.environ, OMP_NUM_THREADS="1"))
        from peft import LoraConfig
        cfg = json.load(open(os.path.join(out, "adapter_config.json")))
        unknown = set(cfg) - set(LoraConfig.__dataclass_fields__)
        report(not unknown, kind + " adapter_config_keys",
               "%d keys, unknown to LoraConfig: %s" % (len(cfg), sorted(unknown) or "none"))
        p, ref = peft_nll(hf, out, ids)
        q = qlab_nll(a.qlab, hf, ids_path, len(ids), "--adapter", out)
        report(abs(q - ref) < 1e-5 * ref, kind + " peft_nll", "PeftModel %.7f qlab ppl --adapter %.7f" % (ref, q))
        merged = os.path.join(work, "merged_" + kind)
        run([a.qlab, "merge", "--model", hf, "--adapter", out, "--out", merged])
        mq, bad, msgs = load_clean(merged)
        sd, sq = p.merge_and_unload().state_dict(), mq.state_dict()
        diff = max((sd[k] - sq[k]).abs().max().item() for k in sd)
        base_cfg = p.base_model.model.config  # stories260K's ids are LlamaConfig's defaults: check the file too
        ids_kept = (os.path.exists(os.path.join(merged, "generation_config.json"))
                    and (mq.config.bos_token_id, mq.config.eos_token_id) == (base_cfg.bos_token_id, base_cfg.eos_token_id))
        report(not bad and not msgs and set(sd) == set(sq) and diff < 1e-6 and ids_kept,
               kind + " merge_vs_merge_and_unload",
               "loading %s, max |W diff| %.2g, BOS/EOS %s" % (bad or "clean", diff, "kept" if ids_kept else "lost"))


def make_adapter(hf, out, **kw):
    import torch
    from transformers import AutoModelForCausalLM
    from peft import LoraConfig, get_peft_model
    torch.manual_seed(0)
    base = AutoModelForCausalLM.from_pretrained(hf, dtype=torch.float32)
    args = dict(r=4, lora_alpha=10, lora_dropout=0.0, task_type="CAUSAL_LM", bias="none",
                target_modules=["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"])
    args.update(kw)
    p = get_peft_model(base, LoraConfig(**args))
    with torch.no_grad():
        for n, w in p.named_parameters():
            if "lora_" in n:
                w.normal_(0, 0.05)  # non-zero B too: every row of q/k's permuted B matters
    p.save_pretrained(out)


def check_python_adapters(a, hf, ids_path, ids, work):
    cases = {"plain": {}, "rslora": {"use_rslora": True},
             "regex_targets": {"target_modules": r".*\.(q_proj|k_proj|down_proj)", "lora_alpha": 6}}
    for name, kw in cases.items():
        out = os.path.join(work, "py_" + name)
        make_adapter(hf, out, **kw)
        _, ref = peft_nll(hf, out, ids)
        r = run([a.qlab, "ppl", "--model", hf, "--tokens", ids_path, "--ctx", str(len(ids)), "--json",
                 "--stride", str(len(ids)), "--adapter", out], check=False)
        if r.returncode != 0:
            report(False, "peft_to_qlab " + name, r.stderr.strip()[-200:])
            continue
        q = json.loads(r.stdout.strip().splitlines()[-1])["mean_nll"]
        report(abs(q - ref) < 1e-5 * ref, "peft_to_qlab " + name,
               "PeftModel %.7f qlab %.7f (|diff| %.1e)" % (ref, q, abs(q - ref)))
    out = os.path.join(work, "py_pissa")
    make_adapter(hf, out, init_lora_weights="pissa")
    r = run([a.qlab, "ppl", "--model", hf, "--tokens", ids_path, "--ctx", str(len(ids)), "--adapter", out], check=False)
    report(r.returncode == 1 and "init_lora_weights" in r.stderr, "peft_to_qlab pissa_refused",
           "exit %d: %s" % (r.returncode, r.stderr.strip()[-120:]))


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--qlab", default="./build/bin/qlab")
    ap.add_argument("--data", default="../shared/data")
    ap.add_argument("--work", default=None, help="scratch directory (default: a temporary one)")
    ap.add_argument("--full", action="store_true", help="also SmolLM2-135M (about a minute more)")
    a = ap.parse_args()
    try:
        import numpy, torch, transformers, peft  # noqa: F401
    except ImportError as e:
        print("SKIP all: python package missing (%s)" % e.name)
        return 0
    need = ["models/stories260K.gguf", "models/tok512.bin", "eval/wiki.test.raw", "finetune/alpaca_data_1k.json"]
    missing = [p for p in need if not os.path.exists(os.path.join(a.data, p))]
    if missing or not os.access(a.qlab, os.X_OK):
        print("SKIP all: missing %s" % (missing or a.qlab))
        return 0
    torch.set_num_threads(1)
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    transformers.logging.disable_progress_bar()
    transformers.logging.disable_default_handler()  # warnings reach load_clean's handler only
    warnings.simplefilter("ignore", FutureWarning)
    work = a.work or tempfile.mkdtemp(prefix="qlab_check_transformers_")
    os.makedirs(work, exist_ok=True)
    print("transformers %s, peft %s, torch %s; scratch %s"
          % (transformers.__version__, peft.__version__, torch.__version__, work))
    m, hf, ids_path, ids = check_model(a, "stories260K", os.path.join(a.data, "models/stories260K.gguf"),
                                       os.path.join(a.data, "models/tok512.bin"), 256, work)
    long_ids = os.path.join(work, "stories260K_ids400.npy")
    run([a.qlab, "tokenize", "--quiet", "--tokenizer", os.path.join(a.data, "models/tok512.bin"), "--bos",
         os.path.join(work, "wiki.txt"), long_ids])
    import numpy as np
    np.save(long_ids, np.load(long_ids)[:400].astype(np.int32))
    check_sliding(a, m, hf, long_ids, np.load(long_ids))
    check_finetune(a, hf, ids_path, ids, work)
    check_python_adapters(a, hf, ids_path, ids, work)
    smol = os.path.join(a.data, "models/SmolLM2-135M-Instruct.Q4_1.gguf")
    if not a.full:
        print("SKIP SmolLM2-135M: run with --full")
    elif not os.path.exists(smol):
        print("SKIP SmolLM2-135M: %s missing" % smol)
    else:
        check_model(a, "SmolLM2-135M", smol, smol, 256, work)
    print("%d failed" % len(FAILED) if FAILED else "all checks passed")
    return 1 if FAILED else 0


if __name__ == "__main__":
    sys.exit(main())
