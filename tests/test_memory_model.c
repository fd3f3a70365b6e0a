/* The memory model (train/memory_model.h) against values computed by hand for a tiny architecture, every
 * component in every mode; its activation terms against model.c's own layout (model_activation_bytes); the
 * 4-bit term against quant.c's stored sizes and a LLaMA-7B figure; refusals; finetuning on a base
 * already loaded at 4 bits (what the memory experiment measures); and the whole prediction against the
 * bytes the library charges over real steps, fp32 and bf16 compute. */
#include <stdio.h>
#include <string.h>
#include <unistd.h>

#include "tests/check.h"
#include "core/base/memacct.h"
#include "core/base/rng.h"
#include "core/model/lora.h"
#include "core/model/model.h"
#include "experiments/harness/memory_probe.h"
#include "train/finetune.h"
#include "train/memory_model.h"

/* dim 8, hidden 16, 2 layers, 2 heads of 4, 1 kv head (kv width 4), vocab 10, context 12, own classifier.
 * Parameters: embedding 80 + classifier 80 + norms 2*8 + 2*8 + 8 = 200 full precision; per layer
 * q 64, k 32, v 32, o 64, gate 128, up 128, down 128 = 576, so 1152 in projections; 1352 in all. */
static model_config tiny(void) {
    return (model_config){.dim = 8,
                          .hidden_dim = 16,
                          .n_layers = 2,
                          .n_heads = 2,
                          .n_kv_heads = 1,
                          .vocab_size = 10,
                          .seq_len = 12,
                          .norm_eps = 1e-5f,
                          .rope_theta = 10000.0f,
                          .shared_classifier = 0};
}

static void spec_for(memory_model_spec *s, finetune_mode mode) {
    memory_model_spec_qlab(s);
    s->arch = tiny();
    s->mode = mode;
    s->rank = 2;
    s->batch = 2;
    s->seq = 3;
}

static void test_activation_terms(void) {
    model_config c = tiny();
    /* B 2, T 3: N 6. Per layer 5ND 240 + 2N 12 + 2N KV 48 + B NH T T 36 + 3NH 288 = 624; plus encoded 48,
     * res3 L N D 96, lnf 48 + 6, probabilities 60 + losses 6. */
    CHECK(memory_model_activation_elements(&c, 2, 3, 0, 0, 0, 0) == 48 + 2 * 624 + 96 + 54 + 66);
    CHECK(memory_model_activation_elements(&c, 2, 3, 1, 0, 0, 0) == 48 + 624 + 96 + 54 + 66);
    /* 5ND 240 + 3N KV 72 + 3NH 288 (the logits' gradient takes the probabilities' place) */
    CHECK(memory_model_input_gradient_elements(&c, 2, 3, 0) == 600);
    /* model.c's own layout: the same, plus the attention scratch of each thread (T x T) */
    model *m;
    CHECK(model_create(&m, &c) == QLAB_OK);
    int threads = qlab_num_threads() < 1 ? 1 : qlab_num_threads();
    for (int ckpt = 0; ckpt < 2; ckpt++) {
        model_set_checkpointing(m, ckpt);
        size_t expect = (size_t)(memory_model_activation_elements(&c, 2, 3, ckpt, 0, 0, 0) +
                                 memory_model_input_gradient_elements(&c, 2, 3, 0) + (uint64_t)threads * 9) *
                        4;
        CHECKF(model_activation_bytes(m, 2, 3, 1) == expect, "checkpointing %d: model.c %zu, model %zu", ckpt,
               model_activation_bytes(m, 2, 3, 1), expect);
        CHECK(model_activation_bytes(m, 5, 7, 0) ==
              memory_model_activation_elements(&c, 5, 7, ckpt, 0, 0, 0) * 4);
        /* bf16 compute keeps no attention probabilities: B NH T T = 2 * 2 * 9 = 36 per working layer */
        model_set_compute(m, QLAB_COMPUTE_BF16);
        int rows = model_bf16_row_path();
        CHECK(model_activation_bytes(m, 5, 7, 0) ==
              memory_model_activation_elements(&c, 5, 7, ckpt, 1, rows, 0) * 4);
        expect = (size_t)(memory_model_activation_elements(&c, 2, 3, ckpt, 1, rows, 0) +
                          memory_model_input_gradient_elements(&c, 2, 3, rows) + (uint64_t)threads * 9) *
                 4;
        CHECKF(model_activation_bytes(m, 2, 3, 1) == expect, "bf16, checkpointing %d: model.c %zu, model %zu",
               ckpt, model_activation_bytes(m, 2, 3, 1), expect);
        CHECK(memory_model_activation_elements(&c, 2, 3, ckpt, 0, 0, 0) -
                  memory_model_activation_elements(&c, 2, 3, ckpt, 1, 0, 0) ==
              (ckpt ? 1u : 2u) * 36);
        /* the row passes keep no norm outputs (2ND 96; an adapter's row hooks read the chunk's own), no
         * SwiGLU output (NH 96), per working layer; nor the gradients before RoPE (ND 48 + N KV 24) and of
         * the hidden layer (3NH 288) */
        CHECK(memory_model_activation_elements(&c, 2, 3, ckpt, 1, 0, 0) -
                  memory_model_activation_elements(&c, 2, 3, ckpt, 1, 1, 0) ==
              (ckpt ? 1u : 2u) * 192);
        CHECK(memory_model_input_gradient_elements(&c, 2, 3, 0) -
                  memory_model_input_gradient_elements(&c, 2, 3, 1) ==
              360);
        /* T a multiple of 32: the row passes keep q, k, v at 2 bytes, (ND 512 + 2N KV 512) / 2 per working
         * layer of B 2 x T 32, besides the norms' (2ND 1024) and SwiGLU's (NH 1024) outputs */
        CHECK(memory_model_activation_elements(&c, 2, 32, ckpt, 1, 0, 0) -
                  memory_model_activation_elements(&c, 2, 32, ckpt, 1, 1, 0) ==
              (ckpt ? 1u : 2u) * 2560);
        expect = (size_t)(memory_model_activation_elements(&c, 2, 32, ckpt, 1, rows, 0) +
                          memory_model_input_gradient_elements(&c, 2, 32, rows) + (uint64_t)threads * 1024) *
                 4;
        CHECKF(model_activation_bytes(m, 2, 32, 1) == expect,
               "bf16, T 32, checkpointing %d: model.c %zu, "
               "model %zu",
               ckpt, model_activation_bytes(m, 2, 32, 1), expect);
        /* with the classifier frozen the head runs in row chunks (not on the blas path): the forward keeps
         * the classifier's input gradient (ND 48 at B 2 x T 3) besides the logits, which over more than
         * MODEL_HEAD_CHUNK positions are a chunk's (V 10 per row fewer) */
        model_set_trainable(m, MODEL_GROUP_WCLS, 0);
        expect = (size_t)(memory_model_activation_elements(&c, 2, 3, ckpt, 1, rows, rows) +
                          memory_model_input_gradient_elements(&c, 2, 3, rows) + (uint64_t)threads * 9) *
                 4;
        CHECKF(model_activation_bytes(m, 2, 3, 1) == expect,
               "bf16, frozen classifier: model.c %zu, model %zu", model_activation_bytes(m, 2, 3, 1), expect);
        model_set_trainable(m, MODEL_GROUP_WCLS, 1);
        CHECK(memory_model_activation_elements(&c, 2, 3, ckpt, 1, 1, 1) -
                  memory_model_activation_elements(&c, 2, 3, ckpt, 1, 1, 0) ==
              48);
        CHECK(memory_model_activation_elements(&c, 30, 10, ckpt, 1, 1, 1) -
                  memory_model_activation_elements(&c, 30, 10, ckpt, 1, 1, 0) ==
              300 * 8 - (300 - MODEL_HEAD_CHUNK) * 10);
        model_set_compute(m, QLAB_COMPUTE_FP32);
    }
    model_free(m);
}

static void test_components(void) {
    memory_model_spec s;
    memory_prediction p;
    /* Full finetuning in fp32: 1352 parameters at 4 bytes, their gradients, two moments; activations
     * 1512 floats, input gradients 600; scratch: attention 9 floats (1 thread), RoPE 2*3*2 floats, saved
     * tokens, targets and head rows 18 ints, the job's batch 12 ints. */
    spec_for(&s, FINETUNE_FULL);
    CHECK(memory_model_predict(&s, &p) == QLAB_OK);
    CHECK(p.trainable_params == 1352 && p.adapter_params == 0);
    CHECK(p.bytes[MEMORY_QUANT_WEIGHTS] == 0);
    CHECK(p.bytes[MEMORY_FP_WEIGHTS] == 5408);
    CHECK(p.bytes[MEMORY_ADAPTERS] == 0);
    CHECK(p.bytes[MEMORY_GRADIENTS] == 5408);
    CHECK(p.bytes[MEMORY_INPUT_GRADIENTS] == 2400);
    CHECK(p.bytes[MEMORY_OPTIMIZER] == 10816);
    CHECK(p.bytes[MEMORY_ACTIVATIONS] == 6048);
    CHECK(p.bytes[MEMORY_SCRATCH] == 36 + 48 + 72 + 48);
    CHECK(p.bytes[MEMORY_BASELINE] == 0);
    CHECK(p.total == 30284);

    /* LoRA r 2 on all projections of the fp32 base: per layer q 2(8+8) 32, k and v 2(8+4) 24, o 32, gate,
     * up and down 2(8+16) 48 = 256, 512 in all, over 14 adapters. The adapters keep N 6 rows (not the
     * context's 12) of r hidden values each (14*6*2 floats) and, with dropout, 6 rows of one 64-bit word of
     * mask bits each (every input is at most 64 wide: 14*6*8 bytes); their scratch is 6 r + 6 * 16 (one
     * plane of the widest input, down's 16) + 6 words of mask bits (2 floats each) = 120 floats. */
    spec_for(&s, FINETUNE_LORA);
    CHECK(memory_model_predict(&s, &p) == QLAB_OK);
    CHECK(p.trainable_params == 512 && p.adapter_params == 512);
    CHECK(p.bytes[MEMORY_FP_WEIGHTS] == 5408);
    CHECK(p.bytes[MEMORY_ADAPTERS] == 2048);
    CHECK(p.bytes[MEMORY_GRADIENTS] == 2048);
    CHECK(p.bytes[MEMORY_OPTIMIZER] == 4096);
    CHECK(p.bytes[MEMORY_ACTIVATIONS] == 6048 + 672 + 672);
    CHECK(p.bytes[MEMORY_SCRATCH] == 36 + 480 + 168);
    CHECK(p.total == 24076);
    /* without dropout, LoRA needs no mask plane or bits: 6 r floats */
    s.dropout = 0;
    CHECK(memory_model_predict(&s, &p) == QLAB_OK);
    CHECK(p.bytes[MEMORY_SCRATCH] == 36 + 48 + 168);
    CHECK(p.bytes[MEMORY_ACTIVATIONS] == 6048 + 672);

    /* QLoRA NF4 block 64 without DQ: q 64 values = 32 code bytes + one fp32 absmax = 36; k, v 16 + 4 = 20;
     * o 36; gate, up, down 64 + 2 * 4 = 72: 328 per layer, 656. With DQ: one byte per block, one fp32 per
     * 256 blocks and the offset: q 32 + 1 + 4 + 4 = 41, k, v 25, o 41, gate/up/down 64 + 2 + 4 + 4 = 74:
     * 354 per layer, 708. Full precision: the 200 other parameters. Scratch adds the dequantization tile,
     * 2^18 floats. */
    spec_for(&s, FINETUNE_QLORA);
    s.double_quant = 0;
    CHECK(memory_model_predict(&s, &p) == QLAB_OK);
    CHECK(p.bytes[MEMORY_QUANT_WEIGHTS] == 656);
    s.double_quant = 1;
    CHECK(memory_model_predict(&s, &p) == QLAB_OK);
    CHECK(p.bytes[MEMORY_QUANT_WEIGHTS] == 708);
    CHECK(p.bytes[MEMORY_FP_WEIGHTS] == 800);
    CHECK(p.bytes[MEMORY_SCRATCH] == 36 + 480 + 168 + 1048576);
    CHECK(p.total == 708 + 800 + 2048 + 2048 + 4096 + 7392 + 2400 + 684 + 1048576);
    /* checkpointing keeps one block's working set: 624 floats less */
    s.checkpointing = 1;
    memory_prediction q;
    CHECK(memory_model_predict(&s, &q) == QLAB_OK);
    CHECK(p.bytes[MEMORY_ACTIVATIONS] - q.bytes[MEMORY_ACTIVATIONS] == 624 * 4);
    /* a paged optimizer holds its resident part; the baseline is added as given */
    s.optimizer_resident_bytes = 1000;
    s.baseline_bytes = 12345;
    CHECK(memory_model_predict(&s, &q) == QLAB_OK);
    CHECK(q.bytes[MEMORY_OPTIMIZER] == 1000 && q.bytes[MEMORY_BASELINE] == 12345);
    /* 16-bit elements halve every element-sized term (fp_weights of full finetuning: 1352 * 2) */
    spec_for(&s, FINETUNE_FULL);
    s.fp_bytes = s.base_bytes = s.grad_bytes = s.activation_bytes = 2;
    CHECK(memory_model_predict(&s, &p) == QLAB_OK);
    CHECK(p.bytes[MEMORY_FP_WEIGHTS] == 2704 && p.bytes[MEMORY_GRADIENTS] == 2704);
    CHECK(p.bytes[MEMORY_ACTIVATIONS] == 3024 && p.bytes[MEMORY_OPTIMIZER] == 10816);
}

static void test_quant_sizes(void) {
    /* The stored size of real tensors equals the model's term, every type, with and without DQ. */
    rng_state rng;
    rng_seed(&rng, 3);
    float w[4160];
    for (int i = 0; i < 4160; i++)
        w[i] = (float)rng_normal(&rng);
    for (int t = 0; t < QUANT_DTYPE_COUNT; t++) {
        const quant_type_traits *tr = quant_type_traits_get((quant_dtype)t);
        int bs = tr->blocksize_default;
        for (int dq = 0; dq < 2; dq++) {
            if (dq && !quant_dtype_has_fp32_absmax((quant_dtype)t)) continue;
            quant_tensor qt;
            CHECK(quant_tensor_quantize(&qt, w, 4160, (quant_dtype)t, bs, dq) == QLAB_OK);
            CHECKF(quant_tensor_bytes(&qt) == memory_model_quant_tensor_bytes((quant_dtype)t, bs, dq, 4160),
                   "%s dq %d", tr->name, dq);
            quant_tensor_free(&qt);
        }
    }
    /* LLaMA-7B's projections in NF4+DQ block 64: per layer 4 tensors of 4096^2 (8,388,608 code bytes,
     * 262,144 block bytes, 1,024 fp32 second-level constants, the offset: 8,654,852) and 3 of 4096 x 11008
     * (22,544,384 + 704,512 + 4 * 2,752 + 4 = 23,259,908): 104,399,132 per layer, 32 layers. */
    memory_model_spec s;
    memory_prediction p;
    memory_model_spec_paper(&s, FINETUNE_QLORA);
    s.arch = (model_config){.dim = 4096,
                            .hidden_dim = 11008,
                            .n_layers = 32,
                            .n_heads = 32,
                            .n_kv_heads = 32,
                            .vocab_size = 32000,
                            .seq_len = 512};
    CHECK(memory_model_predict(&s, &p) == QLAB_OK);
    CHECK(p.bytes[MEMORY_QUANT_WEIGHTS] == 32ull * 104399132ull);
    /* embeddings and classifier in 16 bits: 2 * 32000 * 4096 + norms 65 * 4096, at 2 bytes */
    CHECK(p.bytes[MEMORY_FP_WEIGHTS] == (2ull * 32000 * 4096 + 65ull * 4096) * 2);
    /* r 64 on all seven: 64 (4 * 8192 + 3 * 15104) = 4,997,120 per layer */
    CHECK(p.adapter_params == 32ull * 4997120ull);
}

static void test_refusals(void) {
    memory_model_spec s;
    memory_prediction p;
    spec_for(&s, FINETUNE_LORA);
    s.rank = 0;
    CHECK(memory_model_predict(&s, &p) != QLAB_OK && strstr(qlab_last_error(), "rank"));
    spec_for(&s, FINETUNE_FULL);
    s.arch.n_heads = 3;
    CHECK(memory_model_predict(&s, &p) != QLAB_OK && strstr(qlab_last_error(), "architecture"));
    spec_for(&s, FINETUNE_FULL);
    s.batch = 0;
    CHECK(memory_model_predict(&s, &p) != QLAB_OK && strstr(qlab_last_error(), "batch"));
    spec_for(&s, FINETUNE_QLORA);
    s.blocksize = 3;
    CHECK(memory_model_predict(&s, &p) != QLAB_OK);
    CHECK(!strcmp(memory_component_name(MEMORY_INPUT_GRADIENTS), "input_gradients"));
    CHECK(!strcmp(memory_component_name(MEMORY_COMPONENT_COUNT), "unknown"));
}

/* finetune on a base quantized before the job: taken as it is when the type matches, refused otherwise. */
static void test_prequantized_base(void) {
    model_config c = tiny();
    c.dim = 64, c.hidden_dim = 128, c.n_heads = 4, c.n_kv_heads = 2;
    model *m;
    CHECK(model_create(&m, &c) == QLAB_OK);
    size_t count;
    float *w = model_get_param_buffer(m, &count);
    rng_state rng;
    rng_seed(&rng, 5);
    for (size_t i = 0; i < count; i++)
        w[i] = (float)(0.05 * rng_normal(&rng));
    CHECK(model_quantize(m, QUANT_NF4, 64, 1) == QLAB_OK);
    quant_dtype dt;
    int bs, dq;
    CHECK(model_get_quantization(m, &dt, &bs, &dq) == 1 && dt == QUANT_NF4 && bs == 64 && dq == 1);
    int tokens[2 * 6], targets[2 * 6];
    for (int i = 0; i < 12; i++)
        tokens[i] = i % 10, targets[i] = (i + 1) % 10;
    finetune_rows rows = {tokens, targets, 2, 6};
    finetune_options o;
    finetune_options_default(&o);
    o.batch = 2, o.eval_batch = 2, o.steps = 2, o.eval_every = 0, o.state_kind = OPTIM_STATE_HOST;
    finetune_result r;
    memset(&r, 0, sizeof r);
    CHECK(finetune_run(m, &rows, &rows, &o, NULL, NULL, NULL, &r) == QLAB_OK);
    CHECK(r.trainable_params > 0 && isfinite(r.final_heldout_nll));
    finetune_result_free(&r);
    o.double_quant = 0;
    CHECK(finetune_run(m, &rows, &rows, &o, NULL, NULL, NULL, &r) != QLAB_OK &&
          strstr(qlab_last_error(), "already quantized"));
    o.double_quant = 1;
    o.mode = FINETUNE_FULL;
    CHECK(finetune_run(m, &rows, &rows, &o, NULL, NULL, NULL, &r) != QLAB_OK &&
          strstr(qlab_last_error(), "quantized"));
    model_free(m);
    model *f;
    CHECK(model_create(&f, &c) == QLAB_OK);
    CHECK(model_get_quantization(f, &dt, &bs, &dq) == 0);
    model_free(f);
}

/* One probe run (two finetuning steps of the model at path) against the memory model: the model counts every
 * buffer the steps charge, and at most 16 KiB more. */
static void probe_against_model(const char *path, finetune_mode mode, qlab_compute compute, int ckpt, int B,
                                int T) {
    memory_probe_spec s;
    memset(&s, 0, sizeof s);
    snprintf(s.model_path, sizeof s.model_path, "%s", path);
    s.mode = mode, s.compute = compute;
    s.dtype = QUANT_NF4, s.blocksize = 64, s.double_quant = 1;
    s.checkpointing = ckpt, s.batch = B, s.seq = T, s.steps = 2;
    s.rank = 4, s.dropout = 0.1, s.seed = 2;
    memacct_reset();
    memory_probe_result r;
    CHECK(memory_probe_run(&s, &r) == QLAB_OK);
    memory_model_spec ms;
    memory_probe_model_spec(&s, &r, &ms);
    memory_prediction p;
    CHECK(memory_model_predict(&ms, &p) == QLAB_OK);
    double charged = (double)memacct_process_peak_total(),
           predicted = (double)(p.total - p.bytes[MEMORY_BASELINE]);
    CHECKF(predicted >= charged && predicted - charged < 16384,
           "%s %s ckpt %d, %d x %d: charged %.0f, model %.0f", finetune_mode_name(s.mode),
           qlab_compute_name(s.compute), ckpt, B, T, charged, predicted);
}

/* The model against what the library itself charges (core/base/memacct) over real finetuning steps, every
 * mode with fp32 and bf16 compute, with and without checkpointing, at a shape where the attention's
 * operands are packed ahead (T 64) and one where they are not (T 40), and one of fewer positions than the
 * model's context (1 x 32 of 64: nothing is sized by the context): each buffer the steps allocate is
 * charged, so a buffer the model leaves out or sizes wrongly shows as a gap. What the model counts that is
 * not charged (the job's batch, the saved tokens) is under 4 KiB here. Then a vocabulary large enough that
 * the classifier's backward sets the bf16 workspace: with room for its weight gradient's operand only when
 * that weight trains (full finetuning, not LoRA or QLoRA), over fewer and more positions than the head's
 * chunk of rows when frozen. */
static void test_against_accounting(void) {
    model_config c = tiny(); /* widths where every packing pads: 172 is no multiple of 16 or 32 */
    c.dim = 64, c.hidden_dim = 172, c.n_heads = 4, c.n_kv_heads = 2, c.vocab_size = 96, c.seq_len = 64;
    c.shared_classifier = 1;
    char path[96];
    snprintf(path, sizeof path, "/tmp/qlab_test_memory_model_%ld.bin", (long)getpid());
    CHECK(memory_probe_write_random_model(&c, 3, path) == QLAB_OK);
    static const finetune_mode modes[] = {FINETUNE_FULL, FINETUNE_LORA, FINETUNE_QLORA};
    static const int shapes[][2] = {{3, 64}, {2, 40}, {1, 32}};
    for (int mi = 0; mi < 3; mi++)
        for (int cp = 0; cp < 2; cp++)
            for (int k = 0; k < 3; k++)
                probe_against_model(path, modes[mi], cp ? QLAB_COMPUTE_BF16 : QLAB_COMPUTE_FP32, k == 1,
                                    shapes[k][0], shapes[k][1]);
    c.vocab_size = 4000;
    CHECK(memory_probe_write_random_model(&c, 3, path) == QLAB_OK);
    for (int mi = 0; mi < 3; mi++) { /* and over more positions than one chunk of the head's rows */
        probe_against_model(path, modes[mi], QLAB_COMPUTE_BF16, 0, 2, 64);
        probe_against_model(path, modes[mi], QLAB_COMPUTE_BF16, 1, 5, 64);
    }
    unlink(path);
}

int main(void) {
    test_activation_terms();
    test_components();
    test_quant_sizes();
    test_refusals();
    test_prequantized_base();
    test_against_accounting();
    return check_summary();
}
