/* bf16 compute on the bench model (tests/bench_train.c's: dim 256, hidden 688, 8 layers, 8 heads, vocab
 * 512, batch 4 x 256 tokens): a training step, an evaluation forward and a QLoRA step (NF4 + DQ base,
 * LoRA r 8 on all seven linear layers, forward + backward), each in tokens/s and GFLOP/s against the
 * machine's best bf16 GEMM measured in the same run (qlab's active bf16 path or oneDNN's matmul where it
 * is installed, at the model's own product shapes, best of repetitions before and after the model runs), and
 * the speed-up over the same step in fp32 compute. The evaluation forward is eval/ppl.c's: weights packed for
 * the evaluation, logits without targets (the training and QLoRA steps compute the loss and keep what
 * backward needs).
 *
 * FLOPs counted as in bench_train.c (multiply-add = 2; N = B*T; P_mm = L (4 D^2 + 3 D Hd) + V D;
 * attention forward 4 B L D T(T+1)/2): forward = 2 N P_mm + attention; training step = 3x forward. The
 * QLoRA step forms no weight gradient of the frozen base: 2 N P_mm (forward) + 2 N P_mm (input gradients)
 * + 3x the attention forward (two products forward, four backward), plus the adapters: 2 N r (IC + OC) per
 * adapted projection forward, 3x that for the step. */
#include <string.h>

#include "tests/bench.h"
#include "tests/bench_dnnl.h"
#include "core/base/rng.h"
#include "core/model/gemm_bf16.h"
#include "core/model/lora.h"
#include "core/model/model.h"

static double attention_flops(const model_config *c, int B, int T) {
    return 4.0 * B * c->n_layers * c->dim * (T * (T + 1.0) / 2);
}

static double matmul_params(const model_config *c) {
    double D = c->dim, Hd = c->hidden_dim, L = c->n_layers, V = c->vocab_size;
    return L * (4 * D * D + 3 * D * Hd) + V * D;
}

static double lora_forward_flops(const model_config *c, int N, int r) {
    double D = c->dim, Hd = c->hidden_dim;
    double in_plus_out = 4 * (D + D) + 2 * (D + Hd) + (Hd + D); /* q k v o, gate up, down (n_kv = n_heads) */
    return 2.0 * N * r * in_plus_out * c->n_layers;
}

/* The best bf16 GEMM rate over the model's product shapes (forward, input gradient and weight gradient of
 * the 256 -> 688, 688 -> 256 and 256 -> 256 projections over 1024 tokens): every qlab path this CPU has
 * and oneDNN's bf16 matmul where it is installed (on bf16 inputs), whichever is fastest; which names the
 * winner and *lib says whose it was: -1 oneDNN, else the qlab path (bf16_path). */
static double best_bf16_gemm(int N, int D, int H, char *which, size_t n, int *lib) {
    struct {
        const char *what;
        int ta, tb, M, Nn, K;
    } shapes[] = {{"fwd %dx%dx%d", 0, 1, N, H, D}, {"fwd %dx%dx%d", 0, 1, N, D, H},
                  {"fwd %dx%dx%d", 0, 1, N, D, D}, {"dinp %dx%dx%d", 0, 0, N, D, H},
                  {"dW %dx%dx%d", 1, 0, H, D, N},  {"dW %dx%dx%d", 1, 0, D, D, N}};
    double best = 0;
    for (size_t s = 0; s < sizeof shapes / sizeof *shapes; s++) {
        char what[32], impl[64] = "";
        snprintf(what, sizeof what, shapes[s].what, shapes[s].M, shapes[s].Nn, shapes[s].K);
        /* every qlab path this CPU has (blas: OpenBLAS sgemm on the bf16-rounded inputs), then oneDNN's */
        static const bf16_path paths[] = {BF16_PATH_AMX, BF16_PATH_AVX512BF16, BF16_PATH_AVX512FMA,
                                          BF16_PATH_BLAS};
        double g;
        for (int p = 0; p < (int)(sizeof paths / sizeof *paths); p++) {
            if (!bf16_path_available(paths[p]) || bf16_force_path(bf16_path_name(paths[p])) != QLAB_OK)
                continue;
            g = bench_bf16_gflops(shapes[s].ta, shapes[s].tb, shapes[s].M, shapes[s].Nn, shapes[s].K, 30);
            if (g > best)
                best = g, *lib = (int)paths[p],
                snprintf(which, n, "qlab %s %s", bf16_path_name(paths[p]), what);
        }
        bf16_force_path("auto");
#ifdef QLAB_DNNL_MEASURED
        g = dnnl_bf16_gflops(shapes[s].ta, shapes[s].tb, shapes[s].M, shapes[s].Nn, shapes[s].K, 30, impl,
                             sizeof impl);
        if (g > best) best = g, *lib = -1, snprintf(which, n, "oneDNN %s %s", impl, what);
#endif
    }
    return best;
}

static void init_params(model *m, const model_config *c) {
    size_t count;
    float *p = model_get_param_buffer(m, &count);
    rng_state rng;
    rng_seed(&rng, 7);
    for (size_t i = 0; i < count; i++)
        p[i] = (float)(0.05 * rng_normal(&rng));
    for (int i = 0; i < c->n_layers * c->dim; i++)
        model_get_params(m)->rms_att[i] = model_get_params(m)->rms_ffn[i] = 1;
}

/* The evaluation forward as eval/ppl.c runs it: weights packed once for the evaluation (bf16 panels;
 * nothing with fp32 compute), logits out without targets, so nothing is kept for a backward pass. The best
 * of repeated forwards after one warm-up, in seconds; -1 on failure. */
static double time_evaluation(model *m, const int *tokens, float *logits, int B, int T, double min_seconds) {
    if (model_pack_weights(m) != QLAB_OK || model_forward(m, tokens, NULL, B, T, logits, NULL) != QLAB_OK)
        return -1;
    int calls = 0;
    double start = qlab_now(), best = 1e30;
    do {
        double t0 = qlab_now();
        if (model_forward(m, tokens, NULL, B, T, logits, NULL) != QLAB_OK) return -1;
        double dt = qlab_now() - t0;
        best = dt < best ? dt : best;
        calls++;
    } while (qlab_now() - start < min_seconds || calls < 3);
    model_unpack_weights(m);
    return best;
}

int main(int argc, char **argv) {
    (void)argc;
    qlab_runtime_restart(argv); /* as the programs do: wait policy, OpenBLAS kernels */
    model_config c = bench_model_config();
    const int B = 4, T = 256, N = B * T, rank = 8;
    const char *path = bf16_path_name(bf16_active_path());
    model *m = NULL, *q = NULL;
    lora_set *lora = NULL;
    lora_config lc = {.targets = LORA_TARGETS_ALL, .rank = rank, .alpha = 16.0f, .dropout = 0.05f, .seed = 1};
    if (model_create(&m, &c) != QLAB_OK) return qlab_report_error("bench_bf16_model");
    init_params(m, &c);
    if (model_clone(m, &q) != QLAB_OK || model_quantize(q, QUANT_NF4, 64, 1) != QLAB_OK ||
        lora_create(&lora, &c, &lc) != QLAB_OK || lora_attach(lora, q, 1) != QLAB_OK)
        return qlab_report_error("bench_bf16_model");
    /* B = 0 would make the adapters' output zero but not their cost; give B values so nothing is special */
    size_t n_lora;
    float *lp = lora_get_param_buffer(lora, &n_lora);
    for (size_t i = 0; i < n_lora; i++)
        if (lp[i] == 0) lp[i] = 1e-3f * (float)((int)(i % 7) - 3);
    rng_state rng;
    rng_seed(&rng, 11);
    int *tokens = malloc(sizeof(int) * N), *targets = malloc(sizeof(int) * N);
    float *logits = malloc(sizeof(float) * N * c.vocab_size);
    for (int i = 0; i < N; i++)
        tokens[i] = (int)rng_below(&rng, 512), targets[i] = (int)rng_below(&rng, 512);

    char which[96] = "", which2[96] = "";
    int lib = 0, lib2 = 0;
    double limit = best_bf16_gemm(N, c.dim, c.hidden_dim, which, sizeof which, &lib);
    printf("bench_bf16_model: B=%d T=%d, %d threads (OpenMP wait %s), bf16 path %s; best bf16 gemm %.1f "
           "GFLOP/s (%s)\n",
           B, T, qlab_num_threads(), qlab_openmp_wait_policy(), path, limit, which);

    double fwd = 2.0 * N * matmul_params(&c) + attention_flops(&c, B, T);
    double qlora =
        4.0 * N * matmul_params(&c) + 3 * attention_flops(&c, B, T) + 3 * lora_forward_flops(&c, N, rank);
    /* Each figure is the best over BENCH_ROUNDS short windows taken in turn with the others, so a burst of
     * other work on a shared machine slows one window of every figure, not all of one figure. */
    double t[2][3]; /* [fp32, bf16][train, eval, qlora] */
    for (int round = 0; round < BENCH_ROUNDS; round++)
        for (int k = 0; k < 2; k++) {
            qlab_compute cm = k ? QLAB_COMPUTE_BF16 : QLAB_COMPUTE_FP32;
            model_set_compute(m, cm);
            model_set_compute(q, cm);
            double w[3] = {bench_time_steps(m, tokens, targets, B, T, 1, 4.0 / BENCH_ROUNDS),
                           time_evaluation(m, tokens, logits, B, T, 3.0 / BENCH_ROUNDS),
                           bench_time_steps(q, tokens, targets, B, T, 1, 4.0 / BENCH_ROUNDS)};
            for (int j = 0; j < 3; j++) {
                if (w[j] < 0) return qlab_report_error("bench_bf16_model");
                if (round == 0 || w[j] < t[k][j]) t[k][j] = w[j];
            }
        }
    /* cached generation (one position per product: the few-row kernels), fp32 then bf16 on packed weights */
    double gen[2];
    for (int k = 0; k < 2; k++) {
        model_set_compute(m, k ? QLAB_COMPUTE_BF16 : QLAB_COMPUTE_FP32);
        if (k && model_pack_weights(m) != QLAB_OK) return qlab_report_error("bench_bf16_model");
        if ((gen[k] = bench_time_generation(m, tokens, T, logits)) < 0)
            return qlab_report_error("bench_bf16_model");
        model_unpack_weights(m);
    }
    double limit_after = best_bf16_gemm(N, c.dim, c.hidden_dim, which2, sizeof which2, &lib2);
    if (limit_after > limit) limit = limit_after, lib = lib2, memcpy(which, which2, sizeof which);
    printf("bench_bf16_model: best bf16 gemm after the runs %.1f GFLOP/s; limit %.1f GFLOP/s (%s)\n",
           limit_after, limit, which);

    char name[96], lim[64];
    const char *winner = lib < 0 ? "oneDNN" : bf16_path_name((bf16_path)lib);
    snprintf(lim, sizeof lim, "best bf16 gemm (%s)", winner);
    snprintf(name, sizeof name, "bf16 gemm best, %s", lib < 0 ? "oneDNN matmul" : winner);
    bench_emit(name, limit, "GFLOP/s", "-", 0, 0);
    static const char *const what[3] = {"train step (fwd+bwd)", "eval forward", "qlora step nf4+dq r8 all"};
    const double flops[3] = {3 * fwd, fwd, qlora}, targets_ratio[3] = {0.50, 0.50, 0};
    for (int j = 0; j < 3; j++) {
        snprintf(name, sizeof name, "bf16 %s tokens/s", what[j]);
        bench_emit(name, N / t[1][j], "tok/s", "-", 0, 0);
        snprintf(name, sizeof name, "bf16 %s GFLOP/s", what[j]);
        bench_emit(name, flops[j] / t[1][j] / 1e9, "GFLOP/s", lim, limit, targets_ratio[j]);
        snprintf(name, sizeof name, "bf16 %s speed-up", what[j]);
        bench_emit(name, t[0][j] / t[1][j], "x", "-", 0, 0);
        snprintf(name, sizeof name, "fp32 %s tokens/s", what[j]);
        bench_emit(name, N / t[0][j], "tok/s", "-", 0, 0);
    }
    bench_emit("bf16 cached generation tokens/s", gen[1], "tok/s", "fp32 cached generation", gen[0], 0);
    free(tokens), free(targets), free(logits);
    model_free(q);
    lora_free(lora);
    model_free(m);
    return 0;
}
