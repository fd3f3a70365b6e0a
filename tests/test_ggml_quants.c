/* ggml's block-quantized types (core/quant/ggml_quants.h) against ggml's reference dequantization.
 *
 * Golden values: for each type, two blocks of bytes from xorshift32 (x ^= x << 13; x ^= x >> 17;
 * x ^= x << 5; byte = x & 0xff, seed 0x9E3779B9 + ggml type number), with the fp16 scale fields set to
 * fixed values (block 0: 0.0123 then 0.0045; block 1: -3.5e-6, a subnormal, then -0.75), dequantized once by
 * gguf-py 0.x (gguf.quants.dequantize, the numpy port of ggml-quants.c's dequantize_row_*) and pinned here
 * as the sha256 of the little-endian fp32 output plus six values bit for bit. The generating script is
 * in the comment at the end of this file. */
#include <stdint.h>
#include <string.h>

#include "tests/check.h"
#include "core/base/half.h"
#include "core/base/sha256.h"
#include "core/quant/ggml_quants.h"

typedef struct {
    uint32_t type;
    const char *sha256;
    int idx[6];
    uint32_t bits[6];
} golden;

static const golden goldens[] = {
    {GGML_TYPE_Q4_0,
     "0d2425703e673ee72687a01ff725aa1ec04a125ed98d5df70953267205426bca",
     {0, 1, 17, 31, 35, 63},
     {0x00000000, 0xbd7be000, 0x3d172000, 0xbd972000, 0xb7310000, 0x37ce8000}},
    {GGML_TYPE_Q4_1,
     "127004bb948ac965866cd2aa1f1a1aa074af144b5d0a08ce373b9eca0bb47f52",
     {0, 1, 17, 31, 35, 63},
     {0x3e028c00, 0x3b938000, 0x3dd2b800, 0x3dd2b800, 0xbf4002c4, 0xbf4001d8}},
    {GGML_TYPE_Q5_0,
     "2bd8327f3046d0e136a0429d3113b79ed35daac47edd6f564b3a1119148b5e43",
     {0, 1, 17, 31, 35, 63},
     {0xbe498000, 0xbd972000, 0xbe0a8800, 0xbe3ce800, 0x37ce8000, 0x385d4000}},
    {GGML_TYPE_Q5_1,
     "2febe4d2b9301e2e228bd288329fbdea870fd44b9f80e2ddf7b286f4d1c83825",
     {0, 1, 17, 31, 35, 63},
     {0x3eb29e00, 0x3eb29e00, 0x3d5bf000, 0x3e4e1c00, 0xbf400725, 0xbf4002ff}},
    {GGML_TYPE_Q8_0,
     "ef8b6e10e099f53ac87da364df642c55a8a9e7601e604d1bda73197ab7a97856",
     {0, 1, 17, 31, 35, 63},
     {0x3f2d2a00, 0x3f972000, 0x3de2b000, 0x3f5c6400, 0xb9811000, 0xb9c19800}},
    {GGML_TYPE_Q2_K,
     "d3ee966e05ba140e3466b45028a04a62098fab09a72980b214855069be03c1d2",
     {0, 1, 17, 31, 259, 511},
     {0xbb9e0000, 0x3dbfa000, 0x3dfdb000, 0x3dfdb000, 0x4103ffd0, 0x4127ffdb}},
    {GGML_TYPE_Q3_K,
     "34d73d2566fc31de6efa4dfa677dab81f23539d4c9cc416c8ea30651b6a48b3b",
     {0, 1, 17, 31, 259, 511},
     {0x3eb05000, 0xbf305000, 0x00000000, 0x00000000, 0xb93c1000, 0x38310000}},
    {GGML_TYPE_Q4_K,
     "304465d6286f98e61e8547715faeaac3e926b8479f5c3b0856e8bfe266701945",
     {0, 1, 17, 31, 259, 511},
     {0x4022d040, 0x404d5140, 0x4022d040, 0x3ff09e80, 0x4200ffd4, 0x400ff51c}},
    {GGML_TYPE_Q5_K,
     "54e42967d331f8a6b027170fe85c682d02ef303d2f7aaf763f9f2ded3f8f73ff",
     {0, 1, 17, 31, 259, 511},
     {0x413e7860, 0x41327780, 0x41567a20, 0x416e7be0, 0x4195fd2d, 0x41f5fe46}},
    {GGML_TYPE_Q6_K,
     "cb2c843424413aae4b52d6dfdac08c974747084c1662d0c9e8a5e975d2338683",
     {0, 1, 17, 31, 259, 511},
     {0xc1369c00, 0x404d6f80, 0xbffbe000, 0xc0172000, 0x3aa8b400, 0xbbb04f00}},
};

/* The fp16 fields of each type's block (byte offsets), as in ggml's block_* structs. */
static int half_fields(uint32_t type, int off[2]) {
    switch (type) {
    case GGML_TYPE_Q4_0:
    case GGML_TYPE_Q5_0:
    case GGML_TYPE_Q8_0:
        off[0] = 0;
        return 1;
    case GGML_TYPE_Q4_1:
    case GGML_TYPE_Q5_1:
    case GGML_TYPE_Q4_K:
    case GGML_TYPE_Q5_K:
        off[0] = 0, off[1] = 2;
        return 2;
    case GGML_TYPE_Q2_K:
        off[0] = 80, off[1] = 82;
        return 2;
    case GGML_TYPE_Q3_K:
        off[0] = 108;
        return 1;
    case GGML_TYPE_Q6_K:
        off[0] = 208;
        return 1;
    default:
        return 0;
    }
}

static void test_golden(const golden *g) {
    size_t be = 0, bb = 0;
    CHECK(ggml_type_block(g->type, &be, &bb));
    uint8_t bytes[2 * 210];
    uint32_t x = 0x9E3779B9u + g->type;
    for (size_t i = 0; i < 2 * bb; i++) {
        x ^= x << 13;
        x ^= x >> 17;
        x ^= x << 5;
        bytes[i] = (uint8_t)(x & 0xff);
    }
    static const float halves[2][2] = {{0.0123f, 0.0045f}, {-3.5e-6f, -0.75f}};
    int off[2], nh = half_fields(g->type, off);
    for (int blk = 0; blk < 2; blk++)
        for (int k = 0; k < nh; k++) {
            uint16_t h = f32_to_fp16(halves[blk][k]);
            memcpy(bytes + blk * bb + off[k], &h, 2);
        }
    float y[512];
    CHECK(ggml_dequantize(g->type, bytes, y, 2 * be));
    char hex[65];
    sha256_hex(y, 2 * be * sizeof(float), hex);
    CHECKF(strcmp(hex, g->sha256) == 0, "%s: sha256 of the output %s, gguf-py gives %s",
           ggml_type_name(g->type), hex, g->sha256);
    for (int i = 0; i < 6; i++) {
        uint32_t u;
        memcpy(&u, &y[g->idx[i]], 4);
        CHECKF(u == g->bits[i], "%s value %d: 0x%08x (%.9g), gguf-py gives 0x%08x", ggml_type_name(g->type),
               g->idx[i], u, y[g->idx[i]], g->bits[i]);
    }
}

/* Blocks worked out by hand from ggml's definitions. */
static void test_hand_blocks(void) {
    /* Q4_0: d = 0.5, byte j = (hi << 4) | lo; y[j] = (lo - 8) d, y[j + 16] = (hi - 8) d */
    uint8_t q40[18] = {0};
    uint16_t h = f32_to_fp16(0.5f);
    memcpy(q40, &h, 2);
    q40[2] = 0x0F; /* lo 15 -> 3.5, hi 0 -> -4 */
    q40[3] = 0x98; /* lo 8 -> 0, hi 9 -> 0.5 */
    float y[256];
    CHECK(ggml_dequantize(GGML_TYPE_Q4_0, q40, y, 32));
    CHECK(y[0] == 3.5f && y[16] == -4.0f && y[1] == 0.0f && y[17] == 0.5f && y[2] == -4.0f);
    /* Q4_1: d = 0.25, m = -1: y = q d + m */
    uint8_t q41[20] = {0};
    h = f32_to_fp16(0.25f);
    memcpy(q41, &h, 2);
    h = f32_to_fp16(-1.0f);
    memcpy(q41 + 2, &h, 2);
    q41[4] = 0xF4;
    CHECK(ggml_dequantize(GGML_TYPE_Q4_1, q41, y, 32));
    CHECK(y[0] == 0.0f && y[16] == 2.75f && y[5] == -1.0f);
    /* Q5_0: the fifth bit of value j is bit j of qh (j < 16), of value j + 16 bit j + 16 */
    uint8_t q50[22] = {0};
    h = f32_to_fp16(1.0f);
    memcpy(q50, &h, 2);
    uint32_t qh = (1u << 3) | (1u << 20);
    memcpy(q50 + 2, &qh, 4);
    q50[6 + 3] = 0x21; /* value 3: lo 1 | 16 -> 17 - 16 = 1; value 19: hi 2 -> 2 - 16 */
    q50[6 + 4] = 0x00; /* value 4: 0 - 16; value 20: bit 20 set -> 16 - 16 = 0 */
    CHECK(ggml_dequantize(GGML_TYPE_Q5_0, q50, y, 32));
    CHECK(y[3] == 1.0f && y[19] == -14.0f && y[4] == -16.0f && y[20] == 0.0f);
    /* Q8_0: y = q d */
    uint8_t q80[34] = {0};
    h = f32_to_fp16(-0.125f);
    memcpy(q80, &h, 2);
    q80[2] = 0x80; /* -128 */
    q80[3] = 0x7f;
    CHECK(ggml_dequantize(GGML_TYPE_Q8_0, q80, y, 32));
    CHECK(y[0] == 16.0f && y[1] == -15.875f);
    /* Q6_K: ql/qh give q = 0..63, minus 32, times d * scale[sub-block of 16] */
    uint8_t q6[210] = {0};
    h = f32_to_fp16(0.5f);
    memcpy(q6 + 208, &h, 2);
    q6[192 + 0] = 2;              /* scale of values 0..15 */
    q6[192 + 2] = -3;             /* values 32..47 */
    q6[0] = 0x0A;                 /* value 0 low 4 bits 10, value 64 low bits 0 */
    q6[128] = 0x03 | (0x01 << 2); /* value 0 high bits 3 (q = 58), value 32 high bits 1 (q = 16) */
    CHECK(ggml_dequantize(GGML_TYPE_Q6_K, q6, y, 256));
    CHECK(y[0] == 0.5f * 2 * (58 - 32) && y[32] == 0.5f * -3 * (16 - 32));
    /* Q4_K: sub-block 0 scale 3 and min 5 (6-bit fields in bytes 0 and 4 of scales) */
    uint8_t q4k[144] = {0};
    h = f32_to_fp16(0.5f);
    memcpy(q4k, &h, 2);
    h = f32_to_fp16(0.25f);
    memcpy(q4k + 2, &h, 2);
    q4k[4 + 0] = 3;
    q4k[4 + 4] = 5;
    q4k[16] = 0x07;
    CHECK(ggml_dequantize(GGML_TYPE_Q4_K, q4k, y, 256));
    CHECK(y[0] == 1.5f * 7 - 1.25f && y[1] == -1.25f);
    /* not a whole number of blocks, unknown types */
    CHECK(!ggml_dequantize(GGML_TYPE_Q4_0, q40, y, 31));
    CHECK(!ggml_dequantize(16 /* IQ2_XXS */, q40, y, 256));
    size_t be, bb;
    CHECK(!ggml_type_block(16, &be, &bb));
    CHECK(ggml_type_block(GGML_TYPE_Q6_K, &be, &bb) && be == 256 && bb == 210);
}

int main(void) {
    for (size_t i = 0; i < sizeof goldens / sizeof goldens[0]; i++)
        test_golden(&goldens[i]);
    test_hand_blocks();
    return check_summary();
}

/* The generating script (gguf-py 0.x, numpy):
 *
 * import numpy as np, hashlib, struct
 * from gguf import GGMLQuantizationType as T, quants
 * def xs(seed, n):
 *     x = seed & 0xffffffff; out = bytearray()
 *     for _ in range(n):
 *         x ^= (x << 13) & 0xffffffff; x ^= x >> 17; x ^= (x << 5) & 0xffffffff
 *         out.append(x & 0xff)
 *     return out
 * spec = [(T.Q4_0,18,[0]),(T.Q4_1,20,[0,2]),(T.Q5_0,22,[0]),(T.Q5_1,24,[0,2]),(T.Q8_0,34,[0]),
 *         (T.Q2_K,84,[80,82]),(T.Q3_K,110,[108]),(T.Q4_K,144,[0,2]),(T.Q5_K,176,[0,2]),(T.Q6_K,210,[208])]
 * halves = [[0.0123, 0.0045], [-3.5e-6, -0.75]]
 * for t, bs, offs in spec:
 *     b = xs(0x9E3779B9 + int(t), 2*bs)
 *     for blk in range(2):
 *         for k, o in enumerate(offs):
 *             b[blk*bs+o:blk*bs+o+2] = np.float16(halves[blk][k]).tobytes()
 *     y = quants.dequantize(np.frombuffer(bytes(b), np.uint8), t).astype(np.float32).ravel()
 *     print(t.name, hashlib.sha256(y.astype('<f4').tobytes()).hexdigest(),
 *           [hex(struct.unpack('<I', struct.pack('<f', y[i]))[0]) for i in idx])
 *     # idx = [0, 1, 17, 31, len(y)//2 + 3, len(y) - 1]
 */
