/* The one definition of every 4-bit code book and decision threshold used by qlab, as initializer-list
 * macros so that the same header serves C (core and kernels C files) and CUDA (kernels .cu files): no
 * functions, no libc, only float/int literals and constant expressions evaluated in fp32. Usage: `static
 * const float nf4[16] = QUANT_TABLE_NF4;` or `__constant__ float nf4[16] = QUANT_TABLE_NF4;` */
#ifndef QLAB_QUANT_TABLES_H
#define QLAB_QUANT_TABLES_H

/* Midpoint between two adjacent code values, computed in fp32 exactly as the quantizers do: the sum is
 * rounded to fp32, the halving is exact. Types without literal thresholds below use this. */
#define QUANT_MIDPOINT(a, b) (((a) + (b)) * 0.5f)

/* ---------------------------------------------------------------- NF4 (bitsandbytes)
 * index = code, ascending. Values are bitsandbytes' float literals (dDequantizeNF4). */
#define QUANT_TABLE_NF4                                                                                      \
    {                                                                                                        \
        -1.0f, -0.6961928009986877f, -0.5250730514526367f, -0.39491748809814453f, -0.28444138169288635f,     \
            -0.18477343022823334f, -0.09105003625154495f, 0.0f, 0.07958029955625534f, 0.16093020141124725f,  \
            0.24611230194568634f, 0.33791524171829224f, 0.44070982933044434f, 0.5626170039176941f,           \
            0.7229568362236023f, 1.0f                                                                        \
    }

/* bitsandbytes' dQuantizeNF4 compares against these typed float literals, not midpoints computed at run
 * time, and they are not all the same fp32 numbers: 4 of the 15 are 1 ulp away from the fp32 midpoint
 * QUANT_MIDPOINT of adjacent table entries (tests/test_quant.c prints the count and checks <= 1 ulp). We
 * use the literals, since bit-exactness with bitsandbytes is the point. Code = number of thresholds t
 * with x > t (strict, so a tie goes to the lower code). */
#define QUANT_THRESHOLDS_NF4                                                                                 \
    {                                                                                                        \
        -0.8480964004993439f, -0.6106329262256622f, -0.4599952697753906f, -0.33967943489551544f,             \
            -0.23460740596055984f, -0.13791173323988914f, -0.045525018125772476f, 0.03979014977812767f,      \
            0.1202552504837513f, 0.2035212516784668f, 0.2920137718319893f, 0.3893125355243683f,              \
            0.5016634166240692f, 0.6427869200706482f, 0.8614784181118011f                                    \
    }

/* ---------------------------------------------------------------- FP4 (bitsandbytes)
 * Sign-magnitude: bit 3 = sign, bits 2-0 index the magnitudes {0, 1/16, 8, 12, 4, 6, 2, 3}/12.
 * Values are bitsandbytes' literals (dDequantizeFP4Tree). Code 8 is +0.0, as in bitsandbytes'
 * get_4bit_type("fp4") (its Python literal -0 is the integer 0): the quant_map every bitsandbytes file
 * stores, and what its CPU dequantization gives for code 8 (its CUDA tree gives -0.0; equal as numbers). */
#define QUANT_TABLE_FP4                                                                                      \
    {                                                                                                        \
        0.0f, 5.208333333e-03f, 0.66666667f, 1.0f, 0.33333333f, 0.5f, 0.16666667f, 0.25f, 0.0f,              \
            -5.208333333e-03f, -0.66666667f, -1.0f, -0.33333333f, -0.5f, -0.16666667f, -0.25f                \
    }

/* dQuantizeFP4's magnitude thresholds, ascending, as bitsandbytes types them (note 0.583333f is NOT the
 * fp32 midpoint of 1/2 and 2/3, 0.5833333f; we keep bitsandbytes' value). sign = (scaled x < 0); the
 * magnitude rank r = number of thresholds t with |x| > t (a tie goes to the SMALLER magnitude, on both
 * signs); code = QUANT_RANK_TO_CODE_FP4[r] | sign. */
#define QUANT_THRESHOLDS_FP4                                                                                 \
    { 0.00260417f, 0.0859375f, 0.20833333f, 0.29166667f, 0.4166667f, 0.583333f, 0.8333333f }
#define QUANT_RANK_TO_CODE_FP4                                                                               \
    { 0, 1, 6, 7, 4, 5, 2, 3 }

/* ---------------------------------------------------------------- FP4 E2M1 (OCP values / 6)
 * Sign-magnitude with the standard E2M1 bit layout (code & 7 = E2M1 bits, ascending magnitude), so
 * QUANT_RANK_TO_CODE_IDENTITY8 applies. Thresholds = fp32 midpoints of adjacent magnitudes; ties go to the
 * smaller magnitude, as for bitsandbytes FP4. */
#define QUANT_TABLE_FP4_E2M1                                                                                 \
    {                                                                                                        \
        0.0f, 0.5f / 6.0f, 1.0f / 6.0f, 1.5f / 6.0f, 2.0f / 6.0f, 3.0f / 6.0f, 4.0f / 6.0f, 1.0f, -0.0f,     \
            -0.5f / 6.0f, -1.0f / 6.0f, -1.5f / 6.0f, -2.0f / 6.0f, -3.0f / 6.0f, -4.0f / 6.0f, -1.0f        \
    }

/* ---------------------------------------------------------------- FP4 E3M0
 * Sign-magnitude: sign + 3 exponent bits, magnitudes {0, 2^-6, 2^-5, ..., 2^-1, 1}, ascending. */
#define QUANT_TABLE_FP4_E3M0                                                                                 \
    {                                                                                                        \
        0.0f, 0.015625f, 0.03125f, 0.0625f, 0.125f, 0.25f, 0.5f, 1.0f, -0.0f, -0.015625f, -0.03125f,         \
            -0.0625f, -0.125f, -0.25f, -0.5f, -1.0f                                                          \
    }

#define QUANT_RANK_TO_CODE_IDENTITY8                                                                         \
    { 0, 1, 2, 3, 4, 5, 6, 7 }

/* ---------------------------------------------------------------- Int4 (symmetric absmax)
 * Offset binary: code = q + 8 for q in -7..7, value q/7, ascending. Code 0 (-8/7) is part of the table
 * so that the code book stays ascending (thresholds work unchanged) but is never produced: the scaled
 * input is >= -1 (within 1 ulp) and the -8/7|-1 threshold is -15/14. Dequantizing a stray code 0
 * gives -8/7 * absmax, as a two's-complement int4 -8 would. */
#define QUANT_TABLE_INT4                                                                                     \
    {                                                                                                        \
        -8.0f / 7.0f, -1.0f, -6.0f / 7.0f, -5.0f / 7.0f, -4.0f / 7.0f, -3.0f / 7.0f, -2.0f / 7.0f,           \
            -1.0f / 7.0f, 0.0f, 1.0f / 7.0f, 2.0f / 7.0f, 3.0f / 7.0f, 4.0f / 7.0f, 5.0f / 7.0f,             \
            6.0f / 7.0f, 1.0f                                                                                \
    }

/* ---------------------------------------------------------------- AF4 (Yoshida 2023, block size 64)
 * Ascending; thresholds = fp32 midpoints, ties to the lower code. */
#define QUANT_TABLE_AF4                                                                                      \
    {                                                                                                        \
        -1.0f, -0.69441008f, -0.51243739f, -0.3736951f, -0.25607552f, -0.14982478f, -0.04934812f, 0.0f,      \
            0.04273164f, 0.12934483f, 0.21961274f, 0.31675666f, 0.42563882f, 0.55496234f, 0.72424863f, 1.0f  \
    }

/* ---------------------------------------------------------------- E2M1 raw values (MXFP4, NVFP4)
 * Standard E2M1 encoding: bit 3 sign, bits 2-0 = magnitude index. Rounding of a scaled value to E2M1:
 * nearest, ties to the even code (IEEE round-half-even on the 1-bit mantissa, as the OCP MX spec's
 * conversions do), magnitudes above 6 saturate to 6. Magnitude thresholds below; a tie at threshold k
 * (between magnitude codes k and k+1) goes up when k is odd, down when k is even. */
#define QUANT_TABLE_E2M1                                                                                     \
    { 0.0f, 0.5f, 1.0f, 1.5f, 2.0f, 3.0f, 4.0f, 6.0f, -0.0f, -0.5f, -1.0f, -1.5f, -2.0f, -3.0f, -4.0f, -6.0f }
#define QUANT_THRESHOLDS_E2M1                                                                                \
    { 0.25f, 0.75f, 1.25f, 1.75f, 2.5f, 3.5f, 5.0f }

#define QUANT_MXFP4_BLOCKSIZE 32
#define QUANT_MXFP4_E8M0_BIAS 127
#define QUANT_NVFP4_BLOCKSIZE 16
#define QUANT_NVFP4_E4M3_MAX 448.0f
#define QUANT_E2M1_MAX 6.0f

/* ---------------------------------------------------------------- IQ4_NL (llama.cpp kvalues_iq4nl)
 * Ascending int8 values; value = table[code] * d with the block's fp16 scale d. No exact zero. */
#define QUANT_TABLE_IQ4_NL_INT8                                                                              \
    { -127, -104, -83, -65, -49, -35, -22, -10, 1, 13, 25, 38, 53, 69, 89, 113 }
#define QUANT_TABLE_IQ4_NL                                                                                   \
    {                                                                                                        \
        -127.0f, -104.0f, -83.0f, -65.0f, -49.0f, -35.0f, -22.0f, -10.0f, 1.0f, 13.0f, 25.0f, 38.0f, 53.0f,  \
            69.0f, 89.0f, 113.0f                                                                             \
    }
#define QUANT_IQ4_NL_BLOCKSIZE 32

#endif
