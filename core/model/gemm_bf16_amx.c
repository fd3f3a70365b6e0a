/* AMX kernel of the bf16 GEMM (compiled with -mamx-tile -mamx-bf16; used only when CPUID reports AMX-TILE
 * and AMX-BF16, the OS enables the tile state in XCR0 and Linux grants the process the tile data through
 * arch_prctl(ARCH_REQ_XCOMP_PERM, XFEATURE_XTILEDATA)). The kernel itself is gemm_bf16_amx_body.h, here
 * on the AMX instructions. TDPBF16PS's internal summation order within a step is not the reference's, so
 * this path is held to the bound of gemm_bf16.h, not bit-exactness. Also compiled with AVX-512F (every CPU
 * with AMX has it; the usability check asks for both) for the masked write-back of partial tiles. Tested
 * against the reference on machines with AMX; elsewhere the same kernel runs on emulated tiles
 * (gemm_bf16_amx_emu_avx512.c). */
#include <immintrin.h>
#include <stdint.h>
#include <string.h>
#include <unistd.h>
#include <sys/syscall.h>
#if defined(__x86_64__)
#include <cpuid.h>
#endif

#include "core/model/gemm_bf16_kernels.h"

#define AMX_ZERO(t) _tile_zero(t)
#define AMX_LOAD(t, base, stride) _tile_loadd(t, base, stride)
#define AMX_DP(c, a, b) _tile_dpbf16ps(c, a, b)
#define AMX_STORE(t, base, stride) _tile_stored(t, base, stride)
#define AMX_RELEASE() _tile_release()
/* GCC 12's _tile_loadconfig declares an 8-byte memory operand, so stores to the rest of cfg may be dropped
 * as dead (they were, once inlined); this operand is the whole 64-byte struct. */
#define AMX_CONFIG(cfg) __asm__ volatile("ldtilecfg %0" ::"m"(cfg))
#define AMX_NAME(f) f
#include "core/model/gemm_bf16_amx_body.h"

#define ARCH_REQ_XCOMP_PERM 0x1023
#define XFEATURE_XTILEDATA 18

static int amx_state_ = -1;

int gemm_bf16_amx_usable(void) {
    if (amx_state_ >= 0) return amx_state_;
    int ok = 0;
#if defined(__x86_64__) && defined(__linux__)
    unsigned a, b, c, d;
    if (__get_cpuid_count(7, 0, &a, &b, &c, &d) && (d & (1u << 24)) && (d & (1u << 22)) &&
        qlab_cpu_avx512()) {
        unsigned lo, hi;
        __asm__ volatile("xgetbv" : "=a"(lo), "=d"(hi) : "c"(0));
        (void)hi;
        int os_tiles = (lo & (1u << 17)) && (lo & (1u << 18));
        if (os_tiles && syscall(SYS_arch_prctl, ARCH_REQ_XCOMP_PERM, XFEATURE_XTILEDATA) == 0) ok = 1;
    }
#endif
    amx_state_ = ok;
    return ok;
}
