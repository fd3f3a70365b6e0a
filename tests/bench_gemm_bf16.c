/* bf16 GEMM throughput (core/model/gemm_bf16.h) at the bench model's projection shapes (B*T = 1024 tokens,
 * dim 256, hidden 688): forward (x W^T), input gradient (dy W) and weight gradient (dy^T x), on every bf16
 * path this CPU has except the scalar reference, each against OpenBLAS sgemm measured in the same run at
 * the same shape (the limit). Best of repetitions on both sides, so a shared machine disturbs them alike. */
#include <string.h>

#include "tests/bench.h"
#include "core/model/gemm_bf16.h"

static double bf16_gflops(int ta, int tb, int M, int N, int K, int reps) {
    int lda = ta ? M : K, ldb = tb ? K : N;
    float *A = qlab_alloc_aligned(sizeof(float) * (size_t)M * K);
    float *B = qlab_alloc_aligned(sizeof(float) * (size_t)K * N);
    float *C = qlab_alloc_aligned(sizeof(float) * (size_t)M * N);
    if (!A || !B || !C) return 0;
    for (size_t i = 0; i < (size_t)M * K; i++)
        A[i] = (float)((i * 37) % 101) / 101.0f - 0.5f;
    for (size_t i = 0; i < (size_t)K * N; i++)
        B[i] = (float)((i * 53) % 97) / 97.0f - 0.5f;
    double best = 1e30;
    for (int r = 0; r < reps + 1; r++) {
        double t0 = qlab_now();
        if (bf16_gemm(ta, tb, M, N, K, A, lda, B, ldb, 0, C, N) != QLAB_OK) return 0;
        double dt = qlab_now() - t0;
        if (r > 0 && dt < best) best = dt;
    }
    qlab_free_aligned(A);
    qlab_free_aligned(B);
    qlab_free_aligned(C);
    return 2.0 * M * N * (double)K / best / 1e9;
}

int main(void) {
    const int N = 1024, D = 256, H = 688, reps = 40;
    struct {
        const char *what;
        int ta, tb, M, Nn, K;
    } shapes[] = {{"fwd 1024x688x256", 0, 1, N, H, D},
                  {"dinp 1024x256x688", 0, 0, N, D, H},
                  {"dW 688x256x1024", 1, 0, H, D, N}};
    printf("bench_gemm_bf16: %d threads, best path here: %s\n", qlab_num_threads(),
           bf16_path_name(bf16_active_path()));
    for (size_t s = 0; s < sizeof shapes / sizeof *shapes; s++) {
        double sg = bench_sgemm_gflops(shapes[s].M, shapes[s].Nn, shapes[s].K, reps);
        for (int p = BF16_PATH_BLAS; p < BF16_PATH_COUNT; p++) {
            if (!bf16_path_available((bf16_path)p)) continue;
            bf16_force_path(bf16_path_name((bf16_path)p));
            double g = bf16_gflops(shapes[s].ta, shapes[s].tb, shapes[s].M, shapes[s].Nn, shapes[s].K, reps);
            bf16_force_path("auto");
            double sg2 = bench_sgemm_gflops(shapes[s].M, shapes[s].Nn, shapes[s].K, reps);
            char name[96];
            snprintf(name, sizeof name, "bf16 gemm %s %s", bf16_path_name((bf16_path)p), shapes[s].what);
            bench_emit(name, g, "GFLOP/s", "sgemm same shape", sg2 > sg ? sg2 : sg, 0);
        }
    }
    return 0;
}
