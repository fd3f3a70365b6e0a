#!/usr/bin/env python3
"""Cross-check qlab's NF4/FP4 files and quantizer against the real bitsandbytes (CPU), bit for bit.

Checked with bitsandbytes 0.50.2 (CPU backend), torch 2.15.0, transformers 5.25.0, safetensors 0.8.0 and
numpy 2.4.6 on x86-64 (AVX-512).  Usage: check_bnb.py [QLAB] [DATA]  (defaults ./build/bin/qlab, ../shared/data)

Exact, or FAIL: the safetensors layout (keys, dtypes, shapes), the quant_state JSON, the quant_map and
nested_quant_map bits, the fp32 absmax; qlab dequant (fp32/fp16/bf16) of its own files and of files
bitsandbytes wrote (QuantState.as_dict, Linear4bit state_dicts, also with quant_storage bfloat16, and
transformers' save_pretrained) equals the format's definition (quant_map[code] * absmax[i // blocksize],
absmax = nested_map[c] * nested_absmax + offset, then the dtype) computed by torch from the file, and
bitsandbytes' dequantize_4bit of the same file. Where bnb's own CPU kernel departs from that definition the line says so (0.50.2: its scalar path
gives -0.0 for FP4 code 8, its other paths +0.0; its AVX-512 path takes absmax per row, wrongly, when the
last dimension is a multiple of 16 but not of the block size); any other difference FAILs.

Codes: qlab quantizes as bitsandbytes' CUDA kernels do (x * (1/absmax), dQuantizeNF4 / dQuantizeFP4's
literal thresholds, sign-magnitude FP4, the nearest 8-bit code). bnb's CPU backend departs from its own
CUDA kernels, so a code may differ only where the two rules disagree; each differing code is checked:
  fp4 zero sign  |x/absmax| <= 1/384: CUDA codes x < 0 as 8, the CPU (argsort order) codes x > 0 as 8
  threshold      the scaled value lies between a CUDA literal threshold and the CPU's fp32 midpoint
  partial block  the CPU divides x / absmax in a partial last block (CUDA multiplies by the reciprocal)
  tiny absmax    absmax < 1e-38: the CPU clamps it to 1e-38 (CUDA overflows; qlab scales by 2^64)
  8-bit LUT      double quantization: the CPU picks absmax codes from a 65536-bin table, never nearer
                 than qlab's; its offset is torch's fp32 mean (qlab's is correctly rounded, <= 1 ulp apart)
  zero tail      an all-zero partial last block: the CPU stores absmax 1e-38, CUDA and qlab 0
  flat nested    nested absmax 0 (all absmax equal): the CPU writes code 0, qlab the code of 0.0 (CUDA: NaN)
"""
import atexit, json, math, os, shutil, subprocess, sys, tempfile
from fractions import Fraction

os.environ.setdefault("TORCHDYNAMO_DISABLE", "1")  # bnb's CPU fallback is torch.compile'd: same math, eager
os.environ.setdefault("HF_HUB_OFFLINE", "1")  # bnb's CPU backend tries to fetch an optional kernel at import

def skip(why):
    print(f"SKIP bnb: {why}")
    sys.exit(0)

try:
    import numpy as np, torch
    import bitsandbytes as bnb
    import bitsandbytes.functional as F
    from safetensors.numpy import load_file, save_file
    from safetensors.torch import save_file as save_torch
except Exception as e:  # noqa: BLE001 - any import problem means the library is not usable here
    skip(f"needs numpy, torch, bitsandbytes, safetensors ({e})")

QLAB = sys.argv[1] if len(sys.argv) > 1 else "./build/bin/qlab"
DATA = sys.argv[2] if len(sys.argv) > 2 else "../shared/data"
if not os.access(QLAB, os.X_OK):
    skip(f"no qlab binary at {QLAB} (make all)")
WORK, CPU, f32 = tempfile.mkdtemp(prefix="check_bnb_"), torch.device("cpu"), np.float32
atexit.register(shutil.rmtree, WORK, ignore_errors=True)
fails = 0

def report(ok, name, detail):
    global fails
    fails += not ok
    print(f"{'PASS' if ok else 'FAIL'} {name}: {detail}", flush=True)

def qlab(*args):
    r = subprocess.run([QLAB, *args], capture_output=True, text=True)
    if r.returncode:
        raise RuntimeError(f"qlab {args[0]} exit {r.returncode}: {r.stderr.strip()}")

def raw(t):  # a tensor's bits as numpy (bf16 as uint16, as qlab reads and writes it)
    t = t.detach().contiguous()
    return t.view(torch.int16).numpy().view(np.uint16) if t.dtype == torch.bfloat16 else t.numpy()

def qlab_quant(t, qt, bs, dq):
    np.save(f"{WORK}/in.npy", raw(t))
    qlab("quant", "--dtype", qt, "--blocksize", str(bs), *(["--input-bf16"] * (t.dtype == torch.bfloat16)),
         *(["--double-quant"] * dq), f"{WORK}/in.npy", f"{WORK}/qlab.safetensors")
    return load_file(f"{WORK}/qlab.safetensors")

def qlab_dequant(path, name=None):
    qlab("dequant", *(["--name", name] if name else []), path, f"{WORK}/out.npy")
    return np.load(f"{WORK}/out.npy")

def bnb_tensors(packed, state, prefix="weight"):  # what Linear4bit's state_dict holds
    return {prefix: raw(packed), **{f"{prefix}.{k}": raw(v) for k, v in state.as_dict(packed=True).items()}}

def bnb_state(d, prefix):  # as Params4bit.from_prequantized rebuilds a weight
    qs = {k[len(prefix) + 1:]: torch.from_numpy(v.copy()) for k, v in d.items() if k.startswith(prefix + ".")}
    return torch.from_numpy(d[prefix].copy()), F.QuantState.from_dict(qs, device=CPU)

def nibbles(packed):
    p = packed.reshape(-1)
    return np.stack([p >> 4, p & 15], 1).reshape(-1).astype(np.int64)

def definition(packed, st):  # quant_map[code] * absmax[i // blocksize] in fp32, then the dtype; torch only
    absmax = st.absmax
    if st.nested:  # nested_quant_map[code] * nested_absmax[b // 256] + offset
        s2 = st.state2
        absmax = s2.code[absmax.long()] * s2.absmax.repeat_interleave(s2.blocksize)[:len(absmax)] + st.offset
    n = math.prod(st.shape)
    codes = torch.from_numpy(nibbles(packed.contiguous().view(torch.uint8).numpy())[:n])
    return raw((st.code[codes] * absmax.repeat_interleave(st.blocksize)[:n]).to(st.dtype))

def same(a, b):  # dtype and bits (bnb's CPU dequantize_4bit returns a 1-D weight as [1, n])
    return a.dtype == b.dtype and a.size == b.size and a.tobytes() == b.tobytes()

def as32(v):
    return ((v.astype(np.uint32) << 16).view(f32) if v.dtype == np.uint16 else v.astype(f32)).ravel()

def maxdiff(a, b):
    return float(np.max(np.abs(as32(a) - as32(b)))) if a.size == b.size and a.size else float("nan")

def dequant_problems(path, d, prefix="weight"):
    """qlab dequant of file `path` (tensors d) vs the definition and bnb's dequantize_4bit: (problems, notes)."""
    packed, st = bnb_state(d, prefix)
    got, want, theirs = qlab_dequant(path, prefix), definition(packed, st), raw(F.dequantize_4bit(packed, st))
    if not same(got, want):
        return [f"{prefix}: qlab dequant vs the definition max diff {maxdiff(got, want)}"], []
    if same(theirs, want):
        return [], []
    a, b = as32(theirs), as32(want)
    bad = a.view(np.uint32) != b.view(np.uint32)
    zeros, rows = int(np.sum(bad & (a == 0) & (b == 0))), int(np.sum(bad & (a != b)))
    row_local = st.shape[-1] % 16 == 0 and st.shape[-1] % st.blocksize and st.blocksize % 16 == 0
    notes = [f"bnb's dequantize_4bit gives -0.0 for {zeros} code-8 zeros (its scalar CPU path)"] * bool(zeros)
    notes += [f"bnb's dequantize_4bit is off in {rows} values, max diff {maxdiff(theirs, want)} (its AVX-512 "
              f"path takes absmax per row of {st.shape[-1]})"] * bool(rows)
    problems = [f"{prefix}: bnb's dequantize_4bit differs in {zeros} zeros, not explained"] * bool(
        zeros and st.quant_type != "fp4") + [f"{prefix}: bnb's dequantize_4bit differs in {rows} values, "
                                             "not explained"] * bool(rows and not row_local)
    return problems, notes

def state_json(d):
    return json.loads(bytes(next(v for k, v in d.items() if ".quant_state." in k)))

def layout_problems(ql, bn):
    out = [f"keys differ: {sorted(set(ql) ^ set(bn))}"] if set(ql) != set(bn) else []
    for k in sorted(set(ql) & set(bn)):  # (the JSON's length follows nested_offset: compared below)
        if ql[k].dtype != bn[k].dtype or ql[k].shape != bn[k].shape and ".quant_state." not in k:
            out.append(f"{k} {ql[k].dtype}{ql[k].shape} vs {bn[k].dtype}{bn[k].shape}")
        elif "quant_map" in k and not same(ql[k], bn[k]):
            out.append(f"{k} bits differ in {int(np.sum(ql[k].view(np.uint32) != bn[k].view(np.uint32)))}")
        elif ".quant_state." in k:  # the JSON bytes, bnb's offset set to qlab's (compared in the codes check)
            b = state_json(bn)
            b.update({"nested_offset": state_json(ql)["nested_offset"]} if "nested_offset" in b else {})
            out += [f"JSON {bytes(ql[k])!r} vs bnb {json.dumps(b)!r}"] * (json.dumps(b).encode() != bytes(ql[k]))
    return out

# ---- the two bitsandbytes rules for a 4-bit code (used only to explain differing codes)
def c_float(text):  # a C float literal: the decimal rounded once to fp32 (np.float32(float(text)) rounds twice)
    f = np.float32(float(text))
    return min((f, np.nextafter(f, f32(-np.inf)), np.nextafter(f, f32(np.inf))),
               key=lambda c: abs(Fraction(float(c)) - Fraction(text)))

NF4_CUDA = f32([c_float(t) for t in (  # kernels.cu dQuantizeNF4
    "-0.8480964004993439 -0.6106329262256622 -0.4599952697753906 -0.33967943489551544 -0.23460740596055984 "
    "-0.13791173323988914 -0.045525018125772476 0.03979014977812767 0.1202552504837513 0.2035212516784668 "
    "0.2920137718319893 0.3893125355243683 0.5016634166240692 0.6427869200706482 0.8614784181118011").split()])
FP4_CUDA = f32([c_float(t) for t in "0.00260417 0.0859375 0.20833333 0.29166667 0.4166667 0.583333 0.8333333".split()])
FP4_RANK = np.array([0, 1, 6, 7, 4, 5, 2, 3])  # dQuantizeFP4's magnitude order

def cuda_code(s, qt):
    if qt == "nf4":
        return int(np.sum(s > NF4_CUDA))
    return int(FP4_RANK[np.sum(abs(s) > FP4_CUDA)]) | (8 if s < 0 else 0)

def cpu_code(s, qt):  # backends/default/ops.py: bucketize on the fp32 midpoints of the sorted code book
    code = F.get_4bit_type(qt, device=CPU)
    order = torch.argsort(code)
    mids = ((code[order[:-1]] + code[order[1:]]) / 2).numpy()
    return int(order[int(np.searchsorted(mids, np.clip(s, -1, 1), side="left"))])

def block_absmax(x, bs):
    blocks = -(-len(x) // bs)
    return np.abs(np.concatenate([x, np.zeros(blocks * bs - len(x), f32)])).reshape(blocks, bs).max(1)

def count(why, reason, k=1):
    if k:
        why[reason] = why.get(reason, 0) + int(k)

def explain_codes(x, bs, qt, cq, cb, why):
    """Sorts each differing 4-bit code (qlab cq, bnb cb) by the reason the two bnb rules disagree."""
    n, amax = len(x), block_absmax(x, bs)
    x = np.concatenate([x, f32([0] * (len(cq) - n))])  # the padding nibble of an odd count codes 0.0
    for i in np.nonzero(cq != cb)[0]:
        b = min(i // bs, len(amax) - 1)
        if amax[b] < 1e-38:
            count(why, "tiny absmax")
            continue
        s_cuda = f32(x[i] * (f32(1) / amax[b]))
        s_cpu = f32(x[i] / amax[b]) if b == len(amax) - 1 and n % bs else s_cuda
        ok = cuda_code(s_cuda, qt) == cq[i] and cpu_code(s_cpu, qt) == cb[i]
        zero = qt == "fp4" and cq[i] & 7 == 0 and cb[i] & 7 == 0
        count(why, "UNEXPLAINED" if not ok else "fp4 zero sign" if zero else
              "partial block" if s_cpu != s_cuda else "threshold")

def ulps(a, b):
    ia, ib = (int(np.array([v], f32).view(np.int32)[0]) for v in (a, b))
    return abs((ia if ia >= 0 else -(ia & 0x7FFFFFFF)) - (ib if ib >= 0 else -(ib & 0x7FFFFFFF)))

def explain_stats(ql, bn, s, amax, n, bs, why):
    """The block constants: fp32 absmax, or with double quantization offset, nested absmax, 8-bit codes."""
    a, b = ql["weight.absmax"], bn["weight.absmax"]
    if a.dtype == f32:
        for i in np.nonzero(a.view(np.uint32) != b.view(np.uint32))[0]:
            tail = i == len(a) - 1 and n % bs and a[i] == 0 and b[i] == f32(1e-38)
            count(why, "zero tail" if tail else "UNEXPLAINED absmax")
        return ""
    off = f32(state_json(ql)["nested_offset"])
    d = ulps(off, f32(s.offset.item()))
    count(why, "UNEXPLAINED offset", d > 1)
    na_q, na_b = ql["weight.nested_absmax"], bn["weight.nested_absmax"]
    count(why, "UNEXPLAINED nested absmax",
          not (same(na_q, na_b) if d == 0 else np.allclose(na_q, na_b, rtol=1e-6, atol=0)))
    m, diff = ql["weight.nested_quant_map"], np.nonzero(a != b)[0]
    flat = na_q[diff // 256] == 0  # every absmax of the nested block equals the offset: any code gives it
    count(why, "flat nested block", flat.sum())
    diff = diff[~flat]
    v = f32((amax[diff] - off) * (f32(1) / na_q[diff // 256]))  # the value an absmax code stands for
    nearer = np.abs(m[a[diff]] - v) <= np.abs(m[b[diff]] - v)
    count(why, "8-bit LUT", nearer.sum())
    count(why, "UNEXPLAINED 8-bit", (~nearer).sum())
    return f", offset {d} ulp apart"

# ---- the checks
def check_tensor(name, t, qt, bs, dq):
    """qlab quant vs bnb quantize_4bit on one tensor: the files (exact) and the codes (explained)."""
    tag = f"{qt} {str(t.dtype)[6:]} bs{bs}{' dq' if dq else ''} {name}"
    ql = qlab_quant(t, qt, bs, dq)
    packed, s = F.quantize_4bit(t, blocksize=bs, quant_type=qt, compress_statistics=dq)
    bn = bnb_tensors(packed, s)
    save_file(bn, f"{WORK}/bnb.safetensors")
    p1, n1 = dequant_problems(f"{WORK}/qlab.safetensors", ql)
    p2, n2 = dequant_problems(f"{WORK}/bnb.safetensors", bn)
    problems = layout_problems(ql, bn) + [f"qlab's file: {p}" for p in p1] + [f"bnb's file: {p}" for p in p2]
    notes = [f"qlab's file: {'; '.join(n1)}"] * bool(n1) + [f"bnb's file: {'; '.join(n2)}"] * bool(n2)
    report(not problems, f"file {tag}", "; ".join(problems) or "layout, JSON and maps bit-exact; qlab dequant "
           f"of both files = the definition{'' if notes else ' = bnb dequantize_4bit'}, max diff 0 "
           f"({t.numel()} values)" + "".join(f"; {n}" for n in notes))
    x, why = t.float().reshape(-1).numpy(), {}
    cq, cb = nibbles(ql["weight"]), nibbles(bn["weight"])
    explain_codes(x, bs, qt, cq, cb, why)
    extra = explain_stats(ql, bn, s, block_absmax(x, bs), len(x), bs, why)
    a, b = ql["weight.absmax"], bn["weight.absmax"]
    diff = int(np.sum(a.view(np.uint32) != b.view(np.uint32)) if a.dtype == f32 else np.sum(a != b))
    report(not any(k.startswith("UNEXPLAINED") for k in why), f"codes {tag}",
           f"{int(np.sum(cq != cb))}/{len(cq)} 4-bit codes and {diff}/{len(a)} absmax entries differ from "
           f"bnb's CPU backend{extra}; by reason: {why or 'none'}")

def inputs(dt):
    """Named test tensors in dtype dt: partial last blocks, zeros, ties, huge and tiny values."""
    g, fi = torch.Generator().manual_seed(0), torch.finfo(dt)
    z = torch.randn(64 * 5 + 10, generator=g)
    z[64:128] = 0; z[-10:] = 0; z[::3] = 0; z[0] = -0.0  # noqa: E702 - all-zero blocks, -0.0
    h = torch.randn(64 * 5 + 6, generator=g)
    h[:64] *= fi.max / 8; h[64:128] *= fi.tiny / 16; h[128:192] *= fi.tiny * 2  # noqa: E702
    h[192:256] = fi.tiny * 0.5 ** torch.arange(64.0)
    ties = [1.0]
    for qt in ("nf4", "fp4"):  # the CPU's fp32 midpoints, the code values, the CUDA literals, +-0
        c = torch.sort(F.get_4bit_type(qt, device=CPU))[0]
        ties += ((c[:-1] + c[1:]) / 2).tolist() + c.tolist()
    ties += NF4_CUDA.tolist() + FP4_CUDA.tolist() + (-FP4_CUDA).tolist() + [0.0, -0.0, 1e-30, -1e-30]
    tern = torch.randint(-1, 2, (64, 96), generator=g) * 2.0  # every absmax 2: offset "2.0", nested absmax 0
    tern.view(-1)[::64] = 2.0
    blocks = []
    for sc in (1.0, 0.125, 2.0, 3.0):  # each block of 64 holds sc (its absmax) and 63 tie values * sc
        for k in range(0, len(ties), 63):
            chunk = [sc] + [v * sc for v in ties[k:k + 63]]
            blocks += chunk + [0.0] * (64 - len(chunk))
    return [(n, v.to(dt)) for n, v in (
        ("randn 300x257", torch.randn(300, 257, generator=g)), ("odd 7x11", torch.randn(7, 11, generator=g)),
        ("zeros", z), ("huge/tiny", h), ("ties", torch.tensor(blocks).reshape(-1, 64)), ("ternary", tern))]

def check_linear4bit(qt, dq, dt, storage=torch.uint8):
    """A Linear4bit's state_dict (what bnb and transformers save) against qlab quant of the same weight;
    with another quant_storage (bfloat16 for FSDP) the packed codes are saved in that dtype."""
    w = torch.nn.Linear(130, 6).weight.data.to(dt)
    l4 = bnb.nn.Linear4bit(130, 6, compute_dtype=dt, compress_statistics=dq, quant_type=qt, quant_storage=storage)
    l4.weight = bnb.nn.Params4bit(w.clone(), requires_grad=False, compress_statistics=dq, quant_type=qt,
                                  quant_storage=storage)
    l4 = l4.to("cpu")  # Params4bit quantizes on .to()
    save_torch({k: v.contiguous() for k, v in l4.state_dict().items()}, f"{WORK}/linear.safetensors")
    sd = {k: raw(v) for k, v in l4.state_dict().items()}
    problems, notes = dequant_problems(f"{WORK}/linear.safetensors", sd)
    if storage == torch.uint8:
        problems += layout_problems(qlab_quant(w, qt, 64, dq), {k: v for k, v in sd.items() if k.startswith("w")})
    tag = f"{qt} {str(dt)[6:]}{' dq' if dq else ''}{' storage ' + str(storage)[6:] if storage != torch.uint8 else ''}"
    report(not problems, f"Linear4bit {tag}", "; ".join(problems) or
           f"state_dict {sorted(sd)} (weight {l4.weight.dtype}{tuple(l4.weight.shape)}): "
           f"{'qlab layout and JSON; ' if storage == torch.uint8 else ''}qlab dequant of it = the definition"
           f"{'' if notes else ' = bnb dequantize_4bit'}, max diff 0" + "".join(f"; {n}" for n in notes))

def check_transformers(qt, dq):
    """transformers' save_pretrained of a tiny 4-bit Llama: every quantized weight read by qlab and bnb."""
    try:
        from transformers import BitsAndBytesConfig, LlamaConfig, LlamaForCausalLM
    except Exception as e:  # noqa: BLE001
        return print(f"SKIP transformers: {e}")
    torch.manual_seed(1)
    cfg = LlamaConfig(vocab_size=128, hidden_size=64, intermediate_size=160, num_hidden_layers=1,
                      num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=64)
    LlamaForCausalLM(cfg).save_pretrained(f"{WORK}/tiny")
    q = LlamaForCausalLM.from_pretrained(f"{WORK}/tiny", device_map="cpu", quantization_config=BitsAndBytesConfig(
        load_in_4bit=True, bnb_4bit_quant_type=qt, bnb_4bit_use_double_quant=dq))
    q.save_pretrained(f"{WORK}/tiny4")
    path = f"{WORK}/tiny4/model.safetensors"
    d = load_file(path)
    names = sorted(k.split(".quant_state.")[0] for k in d if ".quant_state." in k)
    results = [dequant_problems(path, d, n) for n in names]
    problems = [p for r in results for p in r[0]]
    notes = [f"{n}: {'; '.join(r[1])}" for n, r in zip(names, results) if r[1]]
    report(names and not problems, f"transformers save_pretrained {qt}{' dq' if dq else ''}",
           f"{len(names)} quantized weights; " + ("; ".join(problems) or "qlab dequant of each = the "
           "definition, max diff 0 (= bnb dequantize_4bit but where noted)") + "".join(f"; {n}" for n in notes))

def check_values(qt, x):
    """int4 / af4 are not bnb file formats (quantize_4bit refuses them), but bnb's CPU kernel takes their
    code books (get_4bit_type): the dequantized values must agree."""
    try:
        code = F.get_4bit_type(qt, device=CPU).numpy()
    except Exception as e:  # noqa: BLE001 - 0.50.2: int4's integer list cannot be divided in place
        return print(f"SKIP values {qt}: bnb's get_4bit_type({qt!r}) fails: {e}")
    packed, absmax = torch.ops.bitsandbytes.quantize_4bit.default(x, 64, qt, torch.uint8)
    want = (code[nibbles(packed.numpy())[:x.numel()]].reshape(-1, 64) * absmax.numpy()[:, None]).astype(f32)
    qlab_quant(x, qt, 64, False)
    got = qlab_dequant(f"{WORK}/qlab.safetensors").reshape(-1, 64)
    report(same(got, want), f"values {qt}", f"qlab dequant vs bnb's CPU {qt} code book: "
           f"{int(np.sum(got != want))}/{got.size} differ, max diff {maxdiff(got, want)}")

def check_e3m0():
    """The paper's FP4 (E3M0): qlab's fp4_e3m0 code book is bnb's create_fp8_map(signed, 3 exponent bits,
    0 mantissa bits, 4 bits) scaled to [-1, 1] (as value sets: the code order is qlab's own)."""
    m = F.create_fp8_map(signed=True, exponent_bits=3, precision_bits=0, total_bits=4)
    want = np.unique((m / m.abs().max()).numpy())
    got = np.unique(qlab_quant(torch.randn(64), "fp4_e3m0", 64, False)["weight.quant_map"])
    report(same(got, want), "codebook fp4_e3m0", f"{len(got)} distinct values vs bnb's {len(want)}, "
           f"max diff {maxdiff(got, want)}")

def stories260k():
    path = os.path.join(DATA, "models", "stories260K.bin")
    if not os.path.exists(path):
        print(f"SKIP stories260K: {path} missing")
        return []
    w = np.fromfile(path, dtype=f32, offset=28)  # llama2.c: 7 int32 header, then fp32 tensors
    dim, hidden, layers, vocab, kv = 64, 172, 5, 512, 32  # 4 of 8 heads for k and v
    wq = vocab * dim + layers * dim
    w1 = wq + layers * (dim * dim * 2 + 2 * kv * dim) + layers * dim
    return [(n, torch.from_numpy(w[o:o + r * dim].reshape(r, dim).copy())) for n, o, r in (
        ("stories260K tok_embeddings", 0, vocab), ("stories260K wq[0]", wq, dim), ("stories260K w1[0]", w1, hidden))]

def run(check, *args):  # a check that raises (qlab refused a file, bnb failed) is a FAIL line, not a crash
    try:
        check(*args)
    except Exception as e:  # noqa: BLE001
        name = " ".join(str(a).replace("torch.", "") for a in args if isinstance(a, (str, int, torch.dtype)))
        report(False, f"{check.__name__} {name}", f"{type(e).__name__}: {e}")

def main():
    torch.set_num_threads(1)
    print(f"bitsandbytes {bnb.__version__}, torch {torch.__version__}, numpy {np.__version__}, qlab {QLAB}")
    for qt in ("nf4", "fp4"):
        for dt in (torch.float32, torch.float16, torch.bfloat16):
            for name, t in inputs(dt):
                for dq in (False, True):
                    run(check_tensor, name, t, qt, 64, dq)
        for bs in (32, 128, 256, 512, 1024, 2048, 4096):
            for dq in (False, True):
                run(check_tensor, "randn 300x257", inputs(torch.float32)[0][1], qt, bs, dq)
        for name, t in stories260k():
            run(check_tensor, name, t, qt, 64, True)
        for dq in (False, True):
            for dt in (torch.float32, torch.bfloat16):
                run(check_linear4bit, qt, dq, dt)
            run(check_linear4bit, qt, dq, torch.bfloat16, torch.bfloat16)
            run(check_transformers, qt, dq)
    run(check_e3m0)
    for qt in ("int4", "af4"):
        run(check_values, qt, torch.randn(96, 320, generator=torch.Generator().manual_seed(3)))
    print(f"{'FAIL' if fails else 'PASS'} bnb: {fails} check(s) failed")
    return 1 if fails else 0

if __name__ == "__main__":
    sys.exit(main())
