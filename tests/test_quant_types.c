/* Tests of the 4-bit data types' descriptor table (core/quant/quant_types.c) and of everything that must be
 * derived from it: every row's invariants (index, name <-> enum, block sizes, scale format and entry points,
 * code book shape, file state name, plot style), the derived name lists and block-size rules, the CLI help
 * texts, experiment defaults and gnuplot styles (each must show every type), a scan of the sources for a
 * hand-typed list of type names, and the quant layer refusing misuse (dequantizing outside a tensor, or an
 * inconsistent tensor) with a message instead of silently writing nothing. */
#include <cjson/cJSON.h>
#include <ctype.h>
#include <dirent.h>
#include <fcntl.h>
#include <math.h>
#include <stdarg.h>
#include <stdint.h>
#include <string.h>
#include <strings.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include "tests/check.h"
#include "core/base/common.h"
#include "core/quant/quant.h"
#include "tests/test_util.h"

static int is_pow2(int v) {
    return v > 0 && !(v & (v - 1));
}

/* Whether word occurs in text delimited by non-identifier characters (so "nf4" is not found in
 * "nf4_vs_fp4"). */
static int has_word(const char *text, const char *word) {
    size_t wl = strlen(word);
    for (const char *p = text; (p = strstr(p, word)) != NULL; p++) {
        int before = p == text || !(isalnum((unsigned char)p[-1]) || p[-1] == '_');
        int after = !(isalnum((unsigned char)p[wl]) || p[wl] == '_');
        if (before && after) return 1;
    }
    return 0;
}

/* ---------------------------------------------------------------- the rows */

static void test_rows(void) {
    int rows = 0, absmax_rows = 0, own_scale_rows = 0, bnb_rows = 0;
    CHECK(QUANT_DTYPE_COUNT >= 9); /* nf4 .. iq4_nl: the table cannot shrink unnoticed */
    for (int d = 0; d < QUANT_DTYPE_COUNT; d++) {
        const quant_type_traits *t = quant_type_traits_get((quant_dtype)d);
        CHECKF(t != NULL, "row %d missing", d);
        if (!t) continue;
        rows++;
        CHECKF(t->dtype == (quant_dtype)d, "row %d holds dtype %d: rows must follow the enum's order", d,
               (int)t->dtype);
        /* name: lower-case identifier, unique, round-trips through the parser (any case) */
        CHECKF(t->name && t->name[0] && strlen(t->name) < 24, "row %d: bad name", d);
        if (!t->name) continue;
        int ident = 1;
        for (const char *c = t->name; *c; c++)
            ident &= (*c >= 'a' && *c <= 'z') || (*c >= '0' && *c <= '9') || *c == '_';
        CHECKF(ident, "%s: a name must be lower-case [a-z0-9_]", t->name);
        CHECK(strcmp(quant_dtype_name((quant_dtype)d), t->name) == 0);
        quant_dtype back = QUANT_DTYPE_COUNT;
        CHECKF(quant_dtype_parse(t->name, &back) == QLAB_OK && back == (quant_dtype)d, "%s: parse", t->name);
        char upper[32];
        for (size_t i = 0; i <= strlen(t->name); i++)
            upper[i] = (char)toupper((unsigned char)t->name[i]);
        back = QUANT_DTYPE_COUNT;
        CHECKF(quant_dtype_parse(upper, &back) == QLAB_OK && back == (quant_dtype)d, "%s: parse", upper);
        for (int e = 0; e < d; e++)
            CHECKF(strcasecmp(quant_dtype_name((quant_dtype)e), t->name) != 0, "%s: name used twice",
                   t->name);
        CHECKF(t->label && t->label[0] && t->description && t->description[0], "%s: label/description",
               t->name);

        /* block sizes: powers of two inside the global range; check_blocksize agrees on every value */
        CHECKF(is_pow2(t->blocksize_min) && is_pow2(t->blocksize_max) && is_pow2(t->blocksize_default) &&
                   t->blocksize_min >= QUANT_MIN_BLOCKSIZE / 2 && t->blocksize_max <= QUANT_MAX_BLOCKSIZE &&
                   t->blocksize_min <= t->blocksize_default && t->blocksize_default <= t->blocksize_max,
               "%s: block sizes %d..%d default %d", t->name, t->blocksize_min, t->blocksize_max,
               t->blocksize_default);
        CHECK(quant_default_blocksize((quant_dtype)d) == t->blocksize_default);
        int agree = 1, accepted = 0;
        for (int bs = -1; bs <= 2 * QUANT_MAX_BLOCKSIZE; bs++) {
            int want = is_pow2(bs) && bs >= t->blocksize_min && bs <= t->blocksize_max;
            int got = quant_check_blocksize((quant_dtype)d, bs) == QLAB_OK;
            agree &= want == got;
            accepted += got;
        }
        CHECKF(agree && accepted >= 1, "%s: quant_check_blocksize disagrees with the row", t->name);
        CHECKF(quant_check_blocksize((quant_dtype)d, t->blocksize_max * 2) == QLAB_ERR_ARG &&
                   strstr(qlab_last_error(), t->name),
               "%s: block size error must name the type", t->name);

        /* scale format, bytes and entry points agree */
        static const int bytes_of[] = {[QUANT_SCALE_FP32_ABSMAX] = 4,
                                       [QUANT_SCALE_E8M0] = 1,
                                       [QUANT_SCALE_E4M3] = 1,
                                       [QUANT_SCALE_FP16] = 2};
        CHECKF((unsigned)t->scale_format <= QUANT_SCALE_FP16 && t->scale_bytes == bytes_of[t->scale_format],
               "%s: scale_bytes %d for its scale format", t->name, t->scale_bytes);
        CHECKF(t->scale_name && t->scale_name[0], "%s: scale_name", t->name);
        int absmax = t->scale_format == QUANT_SCALE_FP32_ABSMAX;
        CHECK(quant_dtype_has_fp32_absmax((quant_dtype)d) == absmax);
        CHECKF(t->quantize_kernels && strstr(t->quantize_kernels, "scalar"), "%s: kernels", t->name);
        if (absmax) {
            absmax_rows++;
            CHECKF(!t->quantize && !t->block_scale && !t->tensor_scale,
                   "%s: fp32-absmax types use the generic kernels", t->name);
        } else {
            own_scale_rows++;
            CHECKF(t->quantize && t->block_scale, "%s: needs a quantizer and a scale decoder", t->name);
            CHECKF(!t->thresholds && !t->rank_to_code, "%s: thresholds are for absmax types", t->name);
            CHECKF(!t->bnb_compatible, "%s: bitsandbytes only has absmax types", t->name);
        }
        CHECKF(!t->tensor_scale == (t->scale_format != QUANT_SCALE_E4M3),
               "%s: the E4M3 scale is relative to a tensor scale (and only it)", t->name);

        /* the file state name follows the rule quant_io.h documents */
        char state[64];
        snprintf(state, sizeof state, "%s__%s", t->bnb_compatible ? "bitsandbytes" : "qlab", t->name);
        CHECKF(t->quant_state && !strcmp(t->quant_state, state), "%s: quant_state '%s', want '%s'", t->name,
               t->quant_state ? t->quant_state : "(null)", state);
        bnb_rows += t->bnb_compatible;

        /* plot style: a colour #rrggbb and a point type whose filled variant (+1) gnuplot has */
        int color_ok = t->plot_color && strlen(t->plot_color) == 7 && t->plot_color[0] == '#';
        for (int i = 1; color_ok && i < 7; i++)
            color_ok &= isxdigit((unsigned char)t->plot_color[i]) != 0;
        CHECKF(color_ok, "%s: plot colour", t->name);
        CHECKF(t->plot_point >= 1 && t->plot_point + 1 <= 15, "%s: plot point %d", t->name, t->plot_point);
        for (int e = 0; e < d && color_ok; e++)
            CHECKF(strcasecmp(quant_type_traits_get((quant_dtype)e)->plot_color, t->plot_color) != 0,
                   "%s: colour shared with %s", t->name, quant_dtype_name((quant_dtype)e));
    }
    CHECK(rows == QUANT_DTYPE_COUNT);
    CHECK(absmax_rows >= 6 && own_scale_rows >= 3 && bnb_rows == 2);
    /* outside the table */
    CHECK(quant_type_traits_get(QUANT_DTYPE_COUNT) == NULL && quant_type_traits_get((quant_dtype)-1) == NULL);
    CHECK(!strcmp(quant_dtype_name(QUANT_DTYPE_COUNT), "unknown") &&
          quant_codebook(QUANT_DTYPE_COUNT) == NULL);
    CHECK(quant_default_blocksize(QUANT_DTYPE_COUNT) == 0 && !quant_dtype_has_fp32_absmax(QUANT_DTYPE_COUNT));
    CHECK(quant_check_blocksize(QUANT_DTYPE_COUNT, 64) == QLAB_ERR_ARG);
    quant_dtype dummy;
    CHECK(quant_dtype_parse("nf5", &dummy) == QLAB_ERR_ARG && strstr(qlab_last_error(), quant_dtype_list(0)));
    CHECK(quant_dtype_parse(NULL, &dummy) == QLAB_ERR_ARG);
}

/* ---------------------------------------------------------------- code books */

static void test_codebooks(void) {
    for (int d = 0; d < QUANT_DTYPE_COUNT; d++) {
        const quant_type_traits *t = quant_type_traits_get((quant_dtype)d);
        const float *cb = t->codebook;
        CHECKF(cb && quant_codebook((quant_dtype)d) == cb, "%s: code book", t->name);
        if (!cb) continue;
        int finite = 1;
        for (int c = 0; c < 16; c++)
            finite &= isfinite(cb[c]) != 0;
        CHECKF(finite, "%s: non-finite code value", t->name);
        if (t->scale_format != QUANT_SCALE_FP32_ABSMAX) continue;
        float max = cb[0];
        for (int c = 1; c < 16; c++)
            max = cb[c] > max ? cb[c] : max;
        CHECKF(max == 1.0f, "%s: an absmax code book must reach +1 (got %g)", t->name, (double)max);
        if (t->rank_to_code) {
            /* sign-magnitude: codes 8..15 are the negatives of 0..7 (code 8 a zero of either sign: +0.0 in
             * bitsandbytes' FP4 table); rank_to_code orders the magnitudes */
            int perm = 0, ascending = 1, symmetric = 1;
            for (int r = 0; r < 8; r++)
                perm |= t->rank_to_code[r] < 8 ? 1 << t->rank_to_code[r] : 1 << 8;
            for (int r = 0; r + 1 < 8 && perm == 0xFF; r++)
                ascending &= cb[t->rank_to_code[r]] < cb[t->rank_to_code[r + 1]];
            for (int c = 0; c < 8; c++)
                symmetric &= cb[c] >= 0.0f && cb[c | 8] == -cb[c] && (c == 0 || signbit(cb[c | 8]));
            CHECKF(perm == 0xFF && ascending && symmetric, "%s: sign-magnitude layout", t->name);
            for (int k = 0; t->thresholds && k < 7 && perm == 0xFF; k++)
                CHECKF(cb[t->rank_to_code[k]] < t->thresholds[k] &&
                           t->thresholds[k] < cb[t->rank_to_code[k + 1]],
                       "%s: threshold %d outside its magnitudes", t->name, k);
        } else {
            int ascending = 1;
            for (int c = 0; c + 1 < 16; c++)
                ascending &= cb[c] < cb[c + 1];
            CHECKF(ascending, "%s: an ascending code book must be strictly ascending", t->name);
            for (int k = 0; t->thresholds && k < 15; k++)
                CHECKF(cb[k] < t->thresholds[k] && t->thresholds[k] < cb[k + 1],
                       "%s: threshold %d outside its codes", t->name, k);
        }
    }
}

/* ---------------------------------------------------------------- derived lists */

static void test_lists(void) {
    char all[1024] = "", absmax[1024] = "", json[1024] = "[";
    for (int d = 0; d < QUANT_DTYPE_COUNT; d++) {
        const char *name = quant_dtype_name((quant_dtype)d);
        snprintf(all + strlen(all), sizeof all - strlen(all), "%s%s", d ? ", " : "", name);
        if (quant_dtype_has_fp32_absmax((quant_dtype)d))
            snprintf(absmax + strlen(absmax), sizeof absmax - strlen(absmax), "%s%s", absmax[0] ? ", " : "",
                     name);
        snprintf(json + strlen(json), sizeof json - strlen(json), "%s\"%s\"", d ? ", " : "", name);
    }
    strcat(json, "]");
    CHECKF(!strcmp(quant_dtype_list(0), all), "list: '%s', want '%s'", quant_dtype_list(0), all);
    CHECKF(!strcmp(quant_dtype_list(1), absmax), "absmax list: '%s', want '%s'", quant_dtype_list(1), absmax);
    CHECKF(!strcmp(quant_dtype_list_json(), json), "json list: '%s'", quant_dtype_list_json());
    cJSON *parsed = cJSON_Parse(quant_dtype_list_json());
    CHECK(cJSON_IsArray(parsed) && cJSON_GetArraySize(parsed) == QUANT_DTYPE_COUNT);
    cJSON_Delete(parsed);
    /* the block-size summary names every type once, with its rule */
    const char *rules = quant_blocksize_summary();
    for (int d = 0; d < QUANT_DTYPE_COUNT; d++) {
        const quant_type_traits *t = quant_type_traits_get((quant_dtype)d);
        CHECKF(has_word(rules, t->name), "block-size summary lacks %s: %s", t->name, rules);
        char rule[32];
        snprintf(rule, sizeof rule, "%d",
                 t->blocksize_min == t->blocksize_max ? t->blocksize_min : t->blocksize_max);
        CHECKF(strstr(rules, rule), "block-size summary lacks %s's size %s", t->name, rule);
    }
}

/* ---------------------------------------------------------------- what users see */

static char out_text[1 << 16];

/* Runs argv[0] with stdout captured into out_text; the exit code, or -1 when it could not run. */
static int run_capture(const char *const *argv) {
    const char *out_path = tmp_path("stdout.txt");
    fflush(stdout);
    fflush(stderr);
    pid_t pid = fork();
    if (pid == 0) {
        int o = open(out_path, O_WRONLY | O_CREAT | O_TRUNC, 0600);
        if (o < 0) _exit(126);
        dup2(o, 1);
        dup2(o, 2);
        execv(argv[0], (char *const *)argv);
        _exit(127);
    }
    int status = 0;
    if (pid < 0 || waitpid(pid, &status, 0) < 0) return -1;
    out_text[0] = 0;
    FILE *f = fopen(out_path, "rb");
    if (f) {
        size_t n = fread(out_text, 1, sizeof out_text - 1, f);
        out_text[n] = 0;
        fclose(f);
    }
    return WIFEXITED(status) ? WEXITSTATUS(status) : 128;
}

/* Every type's name in out_text (whole words), in table order when ordered is set. */
static void expect_every_name(const char *what, int absmax_only, int ordered) {
    const char *from = out_text;
    for (int d = 0; d < QUANT_DTYPE_COUNT; d++) {
        if (absmax_only && !quant_dtype_has_fp32_absmax((quant_dtype)d)) continue;
        const char *name = quant_dtype_name((quant_dtype)d);
        CHECKF(has_word(ordered ? from : out_text, name), "%s does not list %s%s", what, name,
               ordered ? " (in table order)" : "");
        if (ordered && has_word(from, name)) from = strstr(from, name) + strlen(name);
    }
}

static void test_user_facing(void) {
    const char *build = getenv("QLAB_BUILD") ? getenv("QLAB_BUILD") : "build";
    char qlab[512], dq[512], nf4[512];
    snprintf(qlab, sizeof qlab, "%s/bin/qlab", build);
    snprintf(dq, sizeof dq, "%s/bin/double_quant", build);
    snprintf(nf4, sizeof nf4, "%s/bin/nf4_vs_fp4", build);
    if (access(qlab, X_OK) != 0 || access(dq, X_OK) != 0 || access(nf4, X_OK) != 0) {
        SKIP("the programs are not built (%s/bin): CLI help checks", build);
        return;
    }
    CHECK(run_capture((const char *[]){qlab, "quant", "--help", NULL}) == 0);
    expect_every_name("qlab quant --help", 0, 1);
    CHECK(run_capture((const char *[]){qlab, "ppl", "--help", NULL}) == 0);
    expect_every_name("qlab ppl --help", 0, 1);
    CHECK(run_capture((const char *[]){qlab, "dtypes", NULL}) == 0);
    expect_every_name("qlab dtypes", 0, 1);
    for (int d = 0; d < QUANT_DTYPE_COUNT; d++) {
        const quant_type_traits *t = quant_type_traits_get((quant_dtype)d);
        CHECKF(strstr(out_text, t->label) && strstr(out_text, t->description) &&
                   strstr(out_text, t->quant_state),
               "qlab dtypes lacks the label, description or state of %s", t->name);
    }
    /* --names: exactly the names, one per line, in table order */
    CHECK(run_capture((const char *[]){qlab, "dtypes", "--names", NULL}) == 0);
    char want[1024] = "";
    for (int d = 0; d < QUANT_DTYPE_COUNT; d++)
        snprintf(want + strlen(want), sizeof want - strlen(want), "%s\n", quant_dtype_name((quant_dtype)d));
    CHECKF(!strcmp(out_text, want), "qlab dtypes --names: '%s'", out_text);
    CHECK(run_capture((const char *[]){qlab, "dtypes", "--bogus", NULL}) == 2);
    /* the experiments' default "dtypes" is every type */
    CHECK(run_capture((const char *[]){dq, "--help", NULL}) == 0);
    CHECKF(strstr(out_text, quant_dtype_list_json()),
           "double_quant --help: default dtypes is not every type");
    CHECK(run_capture((const char *[]){nf4, "--help", NULL}) == 0);
    CHECKF(strstr(out_text, quant_dtype_list_json()), "nf4_vs_fp4 --help: default dtypes is not every type");

    /* gnuplot styles: `qlab dtypes --gnuplot` holds every row's name, colour and point ... */
    CHECK(run_capture((const char *[]){qlab, "dtypes", "--gnuplot", NULL}) == 0);
    expect_every_name("qlab dtypes --gnuplot", 0, 1);
    char style[4096];
    snprintf(style, sizeof style, "%s", strstr(out_text, "all_types") ? strstr(out_text, "all_types") : "");
    style[strcspn(style, "\n")] = 0;
    for (int d = 0; d < QUANT_DTYPE_COUNT; d++)
        CHECKF(strstr(style, quant_type_traits_get((quant_dtype)d)->plot_color), "style lacks %s's colour",
               quant_dtype_name((quant_dtype)d));
    /* ... and gnuplot, loading plots/common.gp with them, gives each type its row's colour and point */
    if (access("plots/common.gp", R_OK) != 0 || run_shell("command -v gnuplot >/dev/null 2>&1") != 0) {
        SKIP("gnuplot or plots/common.gp not available: plot style check");
        return;
    }
    char script[8192], cmd[8192];
    snprintf(script, sizeof script,
             "%s; prefix = 'x'; out = '%s'; fmt = 'png'; load 'plots/common.gp'; set print '%s'; ", style,
             tmp_path("style.png"), tmp_path("gnuplot.txt"));
    for (int d = 0; d < QUANT_DTYPE_COUNT; d++)
        snprintf(script + strlen(script), sizeof script - strlen(script),
                 "print sprintf('%%s %%d', type_color('%s'), type_point('%s')); ",
                 quant_dtype_name((quant_dtype)d), quant_dtype_name((quant_dtype)d));
    snprintf(cmd, sizeof cmd, "gnuplot -e \"%s\" > '%s' 2>&1", script, tmp_path("gnuplot_log.txt"));
    CHECK(run_shell(cmd) == 0);
    FILE *f = fopen(tmp_path("gnuplot.txt"), "r");
    char line[256];
    for (int d = 0; d < QUANT_DTYPE_COUNT; d++) {
        const quant_type_traits *t = quant_type_traits_get((quant_dtype)d);
        char expect[64];
        snprintf(expect, sizeof expect, "%s %d", t->plot_color, t->plot_point);
        int got = f && fgets(line, sizeof line, f);
        if (got) line[strcspn(line, "\n")] = 0;
        CHECKF(got && !strcmp(line, expect), "gnuplot style of %s: '%s', want '%s'", t->name, got ? line : "",
               expect);
    }
    if (f) fclose(f);
    /* without the styles, common.gp refuses with a message instead of drawing black */
    snprintf(cmd, sizeof cmd, "gnuplot -e \"prefix = 'x'; out = '%s'; load 'plots/common.gp'\" > '%s' 2>&1",
             tmp_path("bare.png"), tmp_path("bare.txt"));
    CHECK(run_shell(cmd) != 0);
}

/* ---------------------------------------------------------------- no hand-typed lists */

static int scanned_files, offending_lines;

/* Lines of path naming three or more data types: a hand-typed list that would go stale. A deliberate subset
 * (an experiment's chosen types) is marked "dtype-subset" on its line or the line before. */
static void scan_file(const char *path) {
    FILE *f = fopen(path, "r");
    if (!f) return;
    scanned_files++;
    char line[4096];
    int lineno = 0, marked = 0;
    while (fgets(line, sizeof line, f)) {
        lineno++;
        int names = 0, was_marked = marked;
        marked = strstr(line, "dtype-subset") != NULL;
        for (int d = 0; d < QUANT_DTYPE_COUNT; d++)
            names += has_word(line, quant_dtype_name((quant_dtype)d));
        if (names >= 3 && !marked && !was_marked) {
            offending_lines++;
            fprintf(stderr, "  %s:%d names %d data types: derive the list from the descriptor table\n", path,
                    lineno, names);
        }
    }
    fclose(f);
}

static void scan_dir(const char *dir) {
    DIR *dp = opendir(dir);
    if (!dp) return;
    struct dirent *e;
    while ((e = readdir(dp)) != NULL) {
        if (e->d_name[0] == '.') continue;
        char path[1024];
        snprintf(path, sizeof path, "%s/%s", dir, e->d_name);
        struct stat st;
        if (stat(path, &st) != 0) continue;
        if (S_ISDIR(st.st_mode)) {
            scan_dir(path);
            continue;
        }
        const char *dot = strrchr(e->d_name, '.');
        if (!dot || !(strcmp(dot, ".c") == 0 || strcmp(dot, ".h") == 0 || strcmp(dot, ".cu") == 0 ||
                      strcmp(dot, ".gp") == 0 || strcmp(dot, ".mk") == 0))
            continue;
        scan_file(path);
    }
    closedir(dp);
}

static void test_no_hand_typed_lists(void) {
    if (access("core/quant/quant_types.c", R_OK) != 0) {
        SKIP("not run from the repository root: source scan");
        return;
    }
    /* Everything but the tests (which may spell types out to check them) and the JSON configs (user data).
     * The descriptor table writes one name per line, so it passes too. */
    static const char *const dirs[] = {"core", "kernels",     "datasets", "eval", "train",
                                       "cli",  "experiments", "plots",    "mk"};
    for (size_t i = 0; i < sizeof dirs / sizeof dirs[0]; i++)
        scan_dir(dirs[i]);
    scan_file("Makefile");
    CHECKF(scanned_files >= 50, "scanned only %d files", scanned_files);
    CHECKF(offending_lines == 0, "%d source lines list data types by hand (above)", offending_lines);
    /* the scanner finds a list when there is one (the line below is expected) */
    const char *probe = tmp_path("probe.c");
    char text[256];
    snprintf(text, sizeof text, "/* %s, %s and %s */\n", quant_dtype_name(0), quant_dtype_name(1),
             quant_dtype_name(2));
    write_bytes(probe, text, strlen(text));
    int before = offending_lines;
    scan_file(probe);
    CHECK(offending_lines == before + 1);
    offending_lines = before;
}

/* ---------------------------------------------------------------- misuse is refused loudly */

static void test_dequantize_refuses(void) {
    float x[300];
    for (int i = 0; i < 300; i++)
        x[i] = (float)sin(i * 0.37);
    for (int d = 0; d < QUANT_DTYPE_COUNT; d++) {
        quant_tensor qt;
        int bs = quant_default_blocksize((quant_dtype)d);
        CHECK(quant_tensor_quantize_ref(&qt, x, 300, (quant_dtype)d, bs, 0) == QLAB_OK);
        float out[400];
        uint16_t out16[400];
        /* in range: fine, and the same values as the whole-tensor dequantization */
        float full[300];
        CHECK(quant_tensor_dequantize(&qt, full) == QLAB_OK);
        CHECK(quant_tensor_dequantize_range(&qt, 7, 200, out) == QLAB_OK && !memcmp(out, full + 7, 200 * 4));
        CHECK(quant_tensor_dequantize_range(&qt, 300, 0, out) == QLAB_OK);
        /* out of range: an error naming the range, and NaN where the caller expected values */
        struct {
            int64_t start, count;
        } bad[] = {{-1, 10}, {295, 10}, {301, 0}, {0, 301}, {10, -1}};
        for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
            for (int k = 0; k < 400; k++)
                out[k] = 12345.0f;
            qlab_status st = quant_tensor_dequantize_range(&qt, bad[i].start, bad[i].count, out);
            char range[64];
            snprintf(range, sizeof range, "[%lld, %lld)", (long long)bad[i].start,
                     (long long)(bad[i].start + bad[i].count));
            CHECKF(st == QLAB_ERR_ARG && strstr(qlab_last_error(), range) && strstr(qlab_last_error(), "300"),
                   "%s: range %s: status %d, message '%s'", quant_dtype_name((quant_dtype)d), range, (int)st,
                   qlab_last_error());
            int nan_filled = 1;
            for (int64_t k = 0; k < bad[i].count; k++)
                nan_filled &= isnan(out[k]);
            CHECKF(nan_filled && (bad[i].count < 0 || out[bad[i].count > 0 ? bad[i].count : 0] == 12345.0f),
                   "%s: out-of-range output must be NaN exactly where requested",
                   quant_dtype_name((quant_dtype)d));
        }
        /* inconsistent tensors */
        CHECK(quant_tensor_dequantize(NULL, out) == QLAB_ERR_ARG);
        CHECK(quant_tensor_dequantize(&qt, NULL) == QLAB_ERR_ARG);
        CHECK(quant_tensor_dequantize_bf16(&qt, NULL) == QLAB_ERR_ARG);
        quant_tensor broken = qt;
        broken.dtype = QUANT_DTYPE_COUNT;
        CHECK(quant_tensor_dequantize_ref(&broken, out) == QLAB_ERR_ARG &&
              strstr(qlab_last_error(), "data type"));
        broken = qt;
        broken.codes = NULL;
        CHECK(quant_tensor_dequantize(&broken, out) == QLAB_ERR_ARG && strstr(qlab_last_error(), "codes"));
        broken = qt;
        broken.absmax = NULL;
        broken.scale8 = NULL;
        broken.scale16 = NULL;
        CHECK(quant_tensor_dequantize_bf16(&broken, out16) == QLAB_ERR_ARG &&
              strstr(qlab_last_error(), "constants"));
        broken = qt;
        broken.nblocks++;
        CHECK(quant_tensor_dequantize(&broken, out) == QLAB_ERR_ARG);
        quant_error_stats es;
        broken = qt;
        broken.codes = NULL;
        CHECK(quant_tensor_error(&broken, x, &es) == QLAB_ERR_ARG);
        quant_tensor_free(&qt);
    }
}

int main(void) {
    test_tmp_dir_create("quant_types");
    test_rows();
    test_codebooks();
    test_lists();
    test_user_facing();
    test_no_hand_typed_lists();
    test_dequantize_refuses();
    test_tmp_dir_remove();
    return check_summary();
}
