/* Throughput of the batched model on a ~6.5M-parameter LLaMA (dim 256, hidden 688, 8 layers, 8 heads,
 * vocab 512, batch 4 x 256 tokens): a training step (forward + backward) and an evaluation forward, in
 * tokens/s and in achieved GFLOP/s against OpenBLAS sgemm measured in the same run on the model's own
 * largest projection shape (B*T, hidden) x (dim). Also the NF4-quantized forward for reference.
 *
 * FLOPs counted (multiply-add = 2): with N = B*T tokens, P_mm = L (4 D^2 + 3 D Hd) + V D the weights
 * used in matrix products (the embedding lookup is free), and causal attention at T(T+1)/2 score pairs
 * per head, forward = 2 N P_mm + 4 B L D T(T+1)/2 (scores and weighted sum); a training step counts
 * 3x forward (backward: input and weight gradients of every product, four attention products). */
#include <string.h>

#include "tests/bench.h"
#include "tests/bench_dnnl.h"
#include "core/model/model.h"
#include "core/base/rng.h"

static double forward_flops(const model_config *c, int B, int T) {
    double D = c->dim, Hd = c->hidden_dim, L = c->n_layers, V = c->vocab_size, N = (double)B * T;
    double p_mm = L * (4 * D * D + 3 * D * Hd) + V * D;
    return 2 * N * p_mm + 4 * B * L * D * (T * (T + 1.0) / 2);
}

int main(int argc, char **argv) {
    (void)argc;
    qlab_runtime_restart(argv); /* the wait policy and OpenBLAS kernels the programs run with */
    model_config c = bench_model_config();
    const int B = 4, T = 256, N = B * T;
    model *m;
    if (model_create(&m, &c) != QLAB_OK) return qlab_report_error("bench_train");
    size_t count;
    float *p = model_get_param_buffer(m, &count);
    rng_state rng;
    rng_seed(&rng, 7);
    for (size_t i = 0; i < count; i++)
        p[i] = (float)(0.05 * rng_normal(&rng));
    for (int i = 0; i < c.n_layers * c.dim; i++)
        model_get_params(m)->rms_att[i] = model_get_params(m)->rms_ffn[i] = 1;
    int *tokens = malloc(sizeof(int) * N), *targets = malloc(sizeof(int) * N);
    for (int i = 0; i < N; i++)
        tokens[i] = (int)rng_below(&rng, 512), targets[i] = (int)rng_below(&rng, 512);

    /* The limit: best of many sgemm calls, measured before and after the model runs (the larger kept), so
     * a burst of other work on a shared machine does not lower it and flatter the ratios. */
    double sgemm = bench_sgemm_gflops(N, c.hidden_dim, c.dim, 30), dnnl = 0;
#ifdef QLAB_HAVE_DNNL
    dnnl = bench_dnnl_sgemm_gflops(N, c.hidden_dim, c.dim, 30);
#endif
    const char *core = "?";
#ifdef QLAB_HAVE_OPENBLAS
    core = openblas_get_corename();
#endif
    printf(
        "bench_train: %zu parameters, B=%d T=%d, %d threads (OpenMP wait %s); sgemm (%d x %d x %d, OpenBLAS "
        "%s kernels) %.1f GFLOP/s\n",
        count, B, T, qlab_num_threads(), qlab_openmp_wait_policy(), N, c.hidden_dim, c.dim, core, sgemm);
    double fwd = forward_flops(&c, B, T);

    /* each the best over BENCH_ROUNDS windows taken in turn (bench.h) */
    double t_train = 0, t_eval = 0;
    for (int round = 0; round < BENCH_ROUNDS; round++) {
        double a = bench_time_steps(m, tokens, targets, B, T, 1, 6.0 / BENCH_ROUNDS);
        double b = bench_time_steps(m, tokens, targets, B, T, 0, 4.0 / BENCH_ROUNDS);
        if (a < 0 || b < 0) return qlab_report_error("bench_train");
        if (round == 0 || a < t_train) t_train = a;
        if (round == 0 || b < t_eval) t_eval = b;
    }
    double sgemm_after = bench_sgemm_gflops(N, c.hidden_dim, c.dim, 30);
    if (sgemm_after > sgemm) sgemm = sgemm_after;
    printf("bench_train: sgemm limit after the runs %.1f GFLOP/s; oneDNN sgemm (same shape) %.1f GFLOP/s\n",
           sgemm_after, dnnl);
    /* the limit: the machine's best fp32 GEMM, OpenBLAS's (qlab's fp32 products) or oneDNN's */
    bench_emit("oneDNN sgemm (same shape)", dnnl, "GFLOP/s", "OpenBLAS sgemm", sgemm, 0);
    if (dnnl > sgemm) sgemm = dnnl;
    bench_emit("train step (fwd+bwd) tokens/s", N / t_train, "tok/s", "-", 0, 0);
    bench_emit("train step (fwd+bwd) GFLOP/s", 3 * fwd / t_train / 1e9, "GFLOP/s", "best sgemm GFLOP/s",
               sgemm, 0.40);
    bench_emit("eval forward tokens/s", N / t_eval, "tok/s", "-", 0, 0);
    bench_emit("eval forward GFLOP/s", fwd / t_eval / 1e9, "GFLOP/s", "best sgemm GFLOP/s", sgemm, 0.50);
    /* Generation reads every weight once per token: its limit is memcpy bandwidth over the weights' bytes
     * (they may sit in cache: a ratio above 1 is possible). No target; it guards the cache's speed. */
    float *logits = malloc(sizeof(float) * c.vocab_size);
    double gen = logits ? bench_time_generation(m, tokens, T, logits) : -1;
    free(logits);
    if (gen < 0) return qlab_report_error("bench_train");
    double weight_reads = bench_memcpy_gbps((size_t)1 << 28, 5) * 1e9 / (4.0 * (double)count);
    bench_emit("cached generation tokens/s", gen, "tok/s", "memcpy / weight bytes", weight_reads, 0);

    /* NF4 projections dequantized tile by tile (no target: shows the dequantization overhead). */
    if (model_quantize(m, QUANT_NF4, 64, 1) != QLAB_OK) return qlab_report_error("bench_train");
    double t_q = bench_time_steps(m, tokens, targets, B, T, 0, 3.0);
    double t_qtrain = bench_time_steps(m, tokens, targets, B, T, 1, 3.0);
    bench_emit("nf4 eval forward GFLOP/s", fwd / t_q / 1e9, "GFLOP/s", "best sgemm GFLOP/s", sgemm, 0);
    /* Frozen NF4 projections form no weight gradients: 2x forward of work rather than 3x. */
    bench_emit("nf4 train step (frozen proj) tokens/s", N / t_qtrain, "tok/s", "-", 0, 0);
    free(tokens), free(targets);
    model_free(m);
    return 0;
}
