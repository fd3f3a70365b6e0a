/* Tests of datasets/mmlu: the real archive (57 subjects, 285 dev and 14,042 test questions, answer counts
 * from Python's csv module as the independent reader), a 2-shot prompt written out by hand, the header
 * against every prompt of qlora's zero-shot file, prompt tokenization with shrinking k, the answer tokens,
 * and malformed CSVs (status and a message naming the archive, member and row). */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "tests/check.h"
#include "core/base/common.h"
#include "datasets/mmlu.h"
#include "tests/test_util.h"
#include "core/text/tokenizer.h"

#define MMLU_ARCHIVE "mmlu/mmlu_dev_test_csv.tar.gz"
#define QLORA_ZERO_SHOT "mmlu/qlora_zero_shot_mmlu_val.json"

static void test_archive(const tokenizer *tok512, const tokenizer *llama) {
    const char *path = shared_data_path(MMLU_ARCHIVE);
    if (!path) {
        SKIP("%s absent (shared data not available)", MMLU_ARCHIVE);
        return;
    }
    mmlu_data d;
    qlab_status st = mmlu_load(path, &d);
    CHECKF(st == QLAB_OK, "%s", qlab_last_error());
    if (st != QLAB_OK) return;
    CHECK(d.n_subjects == 57);
    int n_dev = 0, n_test = 0, five_dev = 0, answers[4] = {0};
    for (int i = 0; i < d.n_subjects; i++) {
        n_dev += d.subjects[i].n_dev;
        n_test += d.subjects[i].n_test;
        five_dev += d.subjects[i].n_dev == 5;
        for (int j = 0; j < d.subjects[i].n_test; j++)
            answers[d.subjects[i].test[j].answer]++;
    }
    CHECK(n_dev == 285 && five_dev == 57);
    CHECK(n_test == 14042);
    /* Python's csv module on the same files: 3222 / 3462 / 3582 / 3776 test answers A / B / C / D
     * (1127 test rows hold quoted line breaks, so this also checks multi-line fields). */
    CHECK(answers[0] == 3222 && answers[1] == 3462 && answers[2] == 3582 && answers[3] == 3776);
    CHECK(!strcmp(d.subjects[0].name, "abstract_algebra") && !strcmp(d.subjects[56].name, "world_religions"));

    int ai = mmlu_find_subject(&d, "abstract_algebra");
    CHECK(ai == 0 && mmlu_find_subject(&d, "no_such_subject") == -1);
    const mmlu_subject *aa = &d.subjects[0];
    /* Hand-written: the header (two spaces before the subject, as evaluate.py), two dev shots with their
     * answers (the second has quoted choices holding commas), then test question 0 without its answer. */
    const char *want =
        "The following are multiple choice questions (with answers) about  abstract algebra.\n\n"
        "Find all c in Z_3 such that Z_3[x]/(x^2 + c) is a field.\nA. 0\nB. 1\nC. 2\nD. 3\nAnswer: B\n\n"
        "Statement 1 | If aH is an element of a factor group, then |aH| divides |a|. Statement 2 | If H and "
        "K "
        "are subgroups of G then HK is a subgroup of G.\nA. True, True\nB. False, False\nC. True, False\n"
        "D. False, True\nAnswer: B\n\n"
        "Find the degree for the given field extension Q(sqrt(2), sqrt(3), sqrt(18)) over Q.\nA. 0\nB. 4\n"
        "C. 2\nD. 6\nAnswer:";
    char *prompt = mmlu_format_prompt(aa, 2, &aa->test[0]);
    CHECKF(prompt && !strcmp(prompt, want), "2-shot prompt:\n[%s]", prompt ? prompt : "(null)");
    free(prompt);
    CHECK(aa->test[0].answer == 1);
    /* 5-shot: five answered shots, and k beyond n_dev is capped. */
    char *p5 = mmlu_format_prompt(aa, 5, &aa->test[0]), *p9 = mmlu_format_prompt(aa, 9, &aa->test[0]);
    int shots = 0;
    for (const char *q = p5; q && (q = strstr(q, "\nAnswer: ")); q++)
        shots++;
    CHECK(shots == 5 && p9 && !strcmp(p5, p9));
    free(p5);
    free(p9);

    /* Tokenized with the Llama 2 vocabulary the 5-shot abstract algebra prompt fits in 2048 (k stays 5);
     * at 256 tokens k drops, and at 24 even the zero-shot prompt is cut from the front. */
    if (llama) {
        int *ids = NULL, n = 0, k = -1, cut = -1;
        st = mmlu_encode_prompt(llama, aa, 5, &aa->test[0], 2048, &ids, &n, &k, &cut);
        CHECK(st == QLAB_OK && k == 5 && !cut && ids[0] == 1 && n < 2048);
        free(ids);
        st = mmlu_encode_prompt(llama, aa, 5, &aa->test[0], 256, &ids, &n, &k, &cut);
        CHECK(st == QLAB_OK && k < 5 && n <= 256 && !cut);
        free(ids);
        int *full = NULL, nf = 0;
        st = mmlu_encode_prompt(llama, aa, 0, &aa->test[0], 4096, &full, &nf, &k, &cut);
        CHECK(st == QLAB_OK && nf > 24);
        st = mmlu_encode_prompt(llama, aa, 5, &aa->test[0], 24, &ids, &n, &k, &cut);
        CHECK(st == QLAB_OK && k == 0 && cut && n == 24 && ids[0] == 1 &&
              !memcmp(ids + 1, full + nf - 23, 23 * sizeof *ids));
        free(ids);
        free(full);
        int letters[4];
        st = mmlu_answer_tokens(llama, letters);
        /* Llama 2 ids of "▁A", "▁B", "▁C", "▁D" (the pieces qlora's abcd_idx takes). */
        CHECK(st == QLAB_OK && letters[0] == 319 && letters[1] == 350 && letters[2] == 315 &&
              letters[3] == 360);
    } else {
        SKIP("models/tokenizer.bin absent: Llama 2 prompt checks skipped");
    }
    if (tok512) {
        int letters[4];
        st = mmlu_answer_tokens(tok512, letters);
        CHECKF(st == QLAB_ERR_UNSUPPORTED && strstr(qlab_last_error(), "\"A\""), "%s", qlab_last_error());
    }
    mmlu_free(&d);
}

static void test_pick(void) {
    float logits[8] = {0, 1, 5, 2, 5, 9, 0, 0};
    int ids[4] = {1, 2, 4, 3};
    CHECK(mmlu_pick_answer(logits, ids) == 1); /* ids 2 and 4 tie at 5: the lower letter wins */
    int ids2[4] = {0, 6, 7, 5};
    CHECK(mmlu_pick_answer(logits, ids2) == 3);
}

static void test_qlora_zero_shot(void) {
    const char *path = shared_data_path(QLORA_ZERO_SHOT);
    if (!path) {
        SKIP("%s absent (shared data not available)", QLORA_ZERO_SHOT);
        return;
    }
    mmlu_prompt *p = NULL;
    int n = 0;
    qlab_status st = mmlu_load_qlora_json(path, &p, &n);
    CHECKF(st == QLAB_OK, "%s", qlab_last_error());
    if (st != QLAB_OK) return;
    CHECK(n == 1531);
    /* Our header for each prompt's subject is exactly the start of qlora's prompt, and every prompt ends
     * like ours, with the question's "\nAnswer:". */
    int header_ok = 0, end_ok = 0, subjects = 0;
    mmlu_question empty = {.question = "", .choices = {"", "", "", ""}};
    for (int i = 0; i < n; i++) {
        mmlu_subject s = {.name = p[i].subject};
        char *mine = mmlu_format_prompt(&s, 0, &empty); /* header + "\nA. \nB. \nC. \nD. \nAnswer:" */
        size_t header_len = strstr(mine, ".\n\n") - mine + 3;
        header_ok += !strncmp(mine, p[i].prompt, header_len);
        size_t len = strlen(p[i].prompt);
        end_ok += len > 8 && !strcmp(p[i].prompt + len - 8, "\nAnswer:") && strstr(p[i].prompt, "\nD. ");
        free(mine);
        subjects += i == 0 || strcmp(p[i].subject, p[i - 1].subject) != 0;
    }
    CHECK(header_ok == n && end_ok == n);
    CHECK(subjects == 57);
    CHECK(!strcmp(p[0].subject, "abstract_algebra") && p[0].answer == 0); /* first line's output is "A" */
    mmlu_prompts_free(p, n);
}

/* Packs one member into test_tmp_dir()/name.tar.gz with the system tar (an independent writer). */
static const char *make_archive(const char *name, const char *member, const char *csv) {
    static char archive[512];
    char dir[400], file[600], cmd[1200];
    snprintf(dir, sizeof dir, "%s/%s", test_tmp_dir(), name);
    snprintf(cmd, sizeof cmd, "mkdir -p %s/data/test", dir);
    if (system(cmd) != 0) return NULL;
    snprintf(file, sizeof file, "%s/data/test/%s", dir, member);
    FILE *f = fopen(file, "wb");
    if (!f) return NULL;
    fputs(csv, f);
    fclose(f);
    snprintf(archive, sizeof archive, "%s/%s.tar.gz", test_tmp_dir(), name);
    snprintf(cmd, sizeof cmd, "tar czf %s -C %s data", archive, dir);
    return system(cmd) == 0 ? archive : NULL;
}

static void expect_bad(const char *name, const char *csv, const char *fragment) {
    const char *archive = make_archive(name, "anatomy_test.csv", csv);
    if (!archive) {
        SKIP("cannot build a test archive with tar");
        return;
    }
    mmlu_data d;
    qlab_status st = mmlu_load(archive, &d);
    const char *msg = qlab_last_error();
    CHECKF(st == QLAB_ERR_FORMAT, "%s: %s", name, msg);
    CHECKF(strstr(msg, archive) && strstr(msg, "anatomy_test.csv") && strstr(msg, fragment),
           "message lacks the archive, member or \"%s\": %s", fragment, msg);
    CHECK(d.n_subjects == 0 && d.subjects == NULL);
}

static void test_malformed(void) {
    const char *header = "question,choice0,choice1,choice2,choice3,answer\n";
    char csv[512];
    snprintf(csv, sizeof csv, "%sq1,a,b,c,d,0\nq2,a,b,c,d,7\n", header);
    expect_bad("answer", csv, "row 3: answer \"7\"");
    snprintf(csv, sizeof csv, "%sq1,a,b,c,d,0\nq2,a,b,c,1\n", header);
    expect_bad("fields", csv, "row 3: 5 fields");
    snprintf(csv, sizeof csv, "%sq1,a,b,c,d,0,extra\n", header);
    expect_bad("extra", csv, "row 2: 7 fields");
    snprintf(csv, sizeof csv, "%s\"q1,a,b,c,d,0\n", header);
    expect_bad("quote", csv, "row 2: unterminated quoted field");
    snprintf(csv, sizeof csv, "%s\"q1\"x,a,b,c,d,0\n", header);
    expect_bad("after_quote", csv, "row 2: text after a closing quote");
    expect_bad("empty", header, "no questions");

    /* A good one with quoting, CRLF, a multi-line field and letter answers (the original release's form,
     * without a header). */
    const char *archive =
        make_archive("good", "anatomy_test.csv",
                     "\"What is \"\"x\"\"?\nSecond line\",\"a, b\",c,d,e,C\r\nq2,a,b,c,d,3\r\n");
    mmlu_data d;
    qlab_status st = archive ? mmlu_load(archive, &d) : QLAB_ERR_IO;
    CHECKF(st == QLAB_OK, "%s", qlab_last_error());
    if (st == QLAB_OK) {
        CHECK(d.n_subjects == 1 && d.subjects[0].n_test == 2 && d.subjects[0].n_dev == 0);
        CHECK(!strcmp(d.subjects[0].test[0].question, "What is \"x\"?\nSecond line"));
        CHECK(!strcmp(d.subjects[0].test[0].choices[0], "a, b") && d.subjects[0].test[0].answer == 2);
        CHECK(!strcmp(d.subjects[0].test[1].choices[3], "d") && d.subjects[0].test[1].answer == 3);
        mmlu_free(&d);
    }
}

int main(void) {
    test_tmp_dir_create("mmlu");

    tokenizer *tok512 = NULL, *llama = NULL;
    const char *p512 = shared_data_path("models/tok512.bin"),
               *pllama = shared_data_path("models/tokenizer.bin");
    if (p512 && tokenizer_load(p512, &tok512) != QLAB_OK) CHECKF(0, "%s", qlab_last_error());
    if (pllama && tokenizer_load(pllama, &llama) != QLAB_OK) CHECKF(0, "%s", qlab_last_error());
    test_archive(tok512, llama);
    test_pick();
    test_qlora_zero_shot();
    test_malformed();
    tokenizer_free(tok512);
    tokenizer_free(llama);

    test_tmp_dir_remove();
    return check_summary();
}
