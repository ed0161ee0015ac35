/* Unit tests for src/sha256.c: the FIPS 180-2 / NIST vectors, padding boundaries, and
 * chunked input (the result must not depend on how the bytes are fed). */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>

#include <cmocka.h>

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "sha256.h"

#define N(a) (sizeof(a) / sizeof((a)[0]))

static void hex(const uint8_t d[SHA256_LEN], char out[2 * SHA256_LEN + 1]) {
    for (int i = 0; i < SHA256_LEN; i++)
        (void)snprintf(out + 2 * i, 3, "%02x", d[i]);
}

static void digest_hex(const void *data, size_t len, char out[2 * SHA256_LEN + 1]) {
    struct sha256 s;
    uint8_t d[SHA256_LEN];

    sha256_init(&s);
    sha256_update(&s, data, len);
    sha256_final(&s, d);
    hex(d, out);
}

static void test_vectors(void **state) {
    static const struct {
        const char *in;
        const char *out;
    } cases[] = {
        {"", "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"},
        {"abc", "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"},
        {"abcdbcdecdefdefgefghfghighijhijkijkljklmklmnlmnomnopnopq",
         "248d6a61d20638b8e5c026930c3e6039a33ce45964ff2167f6ecedd419db06c1"},
        {"abcdefghbcdefghicdefghijdefghijkefghijklfghijklmghijklmnhijklmnoijklmnopjklmnopqklmnopqr"
         "lmnopqrsmnopqrstnopqrstu",
         "cf5b16a778af8380036ce59e7b0492370b249b11e8f07a51afac45037afee9d1"},
    };
    char out[2 * SHA256_LEN + 1];

    (void)state;
    for (size_t i = 0; i < N(cases); i++) {
        digest_hex(cases[i].in, strlen(cases[i].in), out);
        if (strcmp(out, cases[i].out) != 0)
            fail_msg("sha256(\"%s\") = %s, expected %s", cases[i].in, out, cases[i].out);
    }
}

/* Lengths around the padding boundaries: 55 fits the length in the last block, 56 does not. */
static void test_boundaries(void **state) {
    static const struct {
        size_t n;
        const char *out;
    } cases[] = {
        {55, "9f4390f8d30c2dd92ec9f095b65e2b9ae9b0a925a5258e241c9f1e910f734318"},
        {56, "b35439a4ac6f0948b6d6f9e3c6af0f5f590ce20f1bde7090ef7970686ec6738a"},
        {63, "7d3e74a05d7db15bce4ad9ec0658ea98e3f06eeecf16b4c6fff2da457ddc2f34"},
        {64, "ffe054fe7ae0cb6dc65c3af9b61d5209f439851db43d0ba5997337df154668eb"},
        {65, "635361c48bb9eab14198e76ea8ab7f1a41685d6ad62aa9146d301d4f17eb0ae0"},
        {119, "31eba51c313a5c08226adf18d4a359cfdfd8d2e816b13f4af952f7ea6584dcfb"},
        {120, "2f3d335432c70b580af0e8e1b3674a7c020d683aa5f73aaaedfdc55af904c21c"},
    };
    char a[128], out[2 * SHA256_LEN + 1];

    (void)state;
    memset(a, 'a', sizeof a);
    for (size_t i = 0; i < N(cases); i++) {
        digest_hex(a, cases[i].n, out);
        if (strcmp(out, cases[i].out) != 0)
            fail_msg("sha256('a' x %zu) = %s, expected %s", cases[i].n, out, cases[i].out);
    }
}

/* One million 'a' in odd-sized chunks (1, 3, 5, ... 97, then again), which straddle every
 * block offset. */
static void test_million_a_chunked(void **state) {
    static const char *expect = "cdc76e5c9914fb9281a1c7e284d73e67f1809a48a497200e046d39ccc7112cd0";
    struct sha256 s;
    uint8_t d[SHA256_LEN];
    char buf[97], out[2 * SHA256_LEN + 1];
    size_t left = 1000000, chunk = 1;

    (void)state;
    memset(buf, 'a', sizeof buf);
    sha256_init(&s);
    while (left > 0) {
        size_t n = chunk < left ? chunk : left;

        sha256_update(&s, buf, n);
        left -= n;
        chunk += 2;
        if (chunk > sizeof buf)
            chunk = 1;
    }
    sha256_final(&s, d);
    hex(d, out);
    assert_string_equal(out, expect);
    assert_int_equal(s.total, 0); /* final wipes the state */
}

/* Every split point of a 3-block message gives the one-shot digest. */
static void test_split_anywhere(void **state) {
    static const char *expect = "f3a25aa93aa2fbba28d79260535bbd6a5eb0fc1c24a8b0f04e12b484c1dfe363";
    uint8_t msg[768];
    char out[2 * SHA256_LEN + 1];

    (void)state;
    for (size_t i = 0; i < sizeof msg; i++)
        msg[i] = (uint8_t)i;
    digest_hex(msg, sizeof msg, out);
    assert_string_equal(out, expect);
    for (size_t cut = 0; cut <= 200; cut++) {
        struct sha256 s;
        uint8_t d[SHA256_LEN];

        sha256_init(&s);
        sha256_update(&s, msg, cut);
        sha256_update(&s, msg + cut, 0);
        sha256_update(&s, msg + cut, sizeof msg - cut);
        sha256_final(&s, d);
        hex(d, out);
        if (strcmp(out, expect) != 0)
            fail_msg("split at %zu: %s", cut, out);
    }
}

int main(void) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_vectors),
        cmocka_unit_test(test_boundaries),
        cmocka_unit_test(test_million_a_chunked),
        cmocka_unit_test(test_split_anywhere),
    };

    return cmocka_run_group_tests(tests, NULL, NULL);
}
