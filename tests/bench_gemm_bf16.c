/* bf16 GEMM throughput (core/model/gemm_bf16.h) at the bench model's projection shapes (B*T = 1024 tokens,
 * dim 256, hidden 688): forward (x W^T), input gradient (dy W) and weight gradient (dy^T x), on every bf16
 * path this CPU has except the scalar reference, each against OpenBLAS sgemm measured in the same run at
 * the same shape (the limit). Best of repetitions on both sides, so a shared machine disturbs them alike.
 * Where oneDNN is installed (make deps installs libdnnl-dev), its bf16 matmul at the same shapes against
 * qlab's best path: the measurement behind using qlab's own kernels. (OpenBLAS would be the other library:
 * Debian's build exports no sbgemm, which this program checks at run time.) */
#include <dlfcn.h>
#include <string.h>

#include "tests/bench.h"
#include "tests/bench_dnnl.h"
#include "core/model/gemm_bf16.h"

/* Whether the OpenBLAS this program loaded has a bf16 GEMM (cblas_sbgemm, built with BUILD_BFLOAT16). */
static int openblas_has_sbgemm(void) {
    void *self = dlopen(NULL, RTLD_NOW);
    int has = self && dlsym(self, "cblas_sbgemm") != NULL;
    if (self) dlclose(self);
    return has;
}

int main(int argc, char **argv) {
    (void)argc;
    qlab_runtime_restart(argv); /* the wait policy and OpenBLAS kernels the programs run with */
    const int N = 1024, D = 256, H = 688, reps = 40;
    struct {
        const char *what;
        int ta, tb, M, Nn, K;
    } shapes[] = {{"fwd 1024x688x256", 0, 1, N, H, D},
                  {"dinp 1024x256x688", 0, 0, N, D, H},
                  {"dW 688x256x1024", 1, 0, H, D, N}};
    printf("bench_gemm_bf16: %d threads (OpenMP wait %s), best path here: %s\n", qlab_num_threads(),
           qlab_openmp_wait_policy(), bf16_path_name(bf16_active_path()));
    printf("bench_gemm_bf16: OpenBLAS cblas_sbgemm %s\n",
           openblas_has_sbgemm() ? "exported (not used by qlab)" : "not exported by this build");
#ifndef QLAB_DNNL_MEASURED
    printf("bench_gemm_bf16: oneDNN 2.x not found at build time (make deps installs libdnnl-dev); not "
           "compared\n");
#endif
    for (size_t s = 0; s < sizeof shapes / sizeof *shapes; s++) {
        double sg = bench_sgemm_gflops(shapes[s].M, shapes[s].Nn, shapes[s].K, reps), best = 0;
        for (int p = BF16_PATH_BLAS; p < BF16_PATH_COUNT; p++) {
            if (!bf16_path_available((bf16_path)p)) continue;
            bf16_force_path(bf16_path_name((bf16_path)p));
            double g =
                bench_bf16_gflops(shapes[s].ta, shapes[s].tb, shapes[s].M, shapes[s].Nn, shapes[s].K, reps);
            bf16_force_path("auto");
            double sg2 = bench_sgemm_gflops(shapes[s].M, shapes[s].Nn, shapes[s].K, reps);
            char name[96];
            snprintf(name, sizeof name, "bf16 gemm %s %s", bf16_path_name((bf16_path)p), shapes[s].what);
            bench_emit(name, g, "GFLOP/s", "sgemm same shape", sg2 > sg ? sg2 : sg, 0);
            if (g > best) best = g;
        }
#ifdef QLAB_DNNL_MEASURED
        char impl[64], name[96];
        double d = dnnl_bf16_gflops(shapes[s].ta, shapes[s].tb, shapes[s].M, shapes[s].Nn, shapes[s].K, reps,
                                    impl, sizeof impl);
        if (d <= 0) {
            printf("bench_gemm_bf16: oneDNN %d.%d gives no usable bf16 matmul for %s on this CPU (%s: none, "
                   "only its reference, or a wrong product); not compared\n",
                   DNNL_VERSION_MAJOR, DNNL_VERSION_MINOR, shapes[s].what, impl);
            continue;
        }
        printf("bench_gemm_bf16: oneDNN %d.%d matmul %s runs %s\n", DNNL_VERSION_MAJOR, DNNL_VERSION_MINOR,
               shapes[s].what, impl);
        snprintf(name, sizeof name, "oneDNN bf16 matmul %s", shapes[s].what);
        bench_emit(name, d, "GFLOP/s", "qlab best path same shape", best, 0);
#endif
    }
    return 0;
}
