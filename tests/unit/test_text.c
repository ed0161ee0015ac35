/* Unit tests for src/text.c: text_base64() against the RFC 4648 section 10 test vectors, every
 * alphabet character, bytes with the high bit set, and the documented output size (each call
 * writes into a heap buffer of exactly 4 * ((n + 2) / 3) + 1 bytes, so ASan reports a byte
 * written past it). */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>

#include <cmocka.h>

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "text.h"

#define N(a) (sizeof(a) / sizeof((a)[0]))

/* text_base64() of in[0..n) into a heap buffer of exactly the documented size; the caller frees
 * it. */
static char *b64(const void *in, size_t n) {
    size_t size = 4 * ((n + 2) / 3) + 1;
    char *out = malloc(size);

    assert_non_null(out);
    memset(out, 'Z', size);
    text_base64(in, n, out);
    assert_int_equal(strlen(out), size - 1);
    return out;
}

static void expect_b64(const void *in, size_t n, const char *want) {
    char *got = b64(in, n);

    if (strcmp(got, want) != 0)
        fail_msg("base64 of %zu bytes: expected '%s', got '%s'", n, want, got);
    free(got);
}

/* RFC 4648 section 10. */
static void test_rfc4648_vectors(void **state) {
    static const struct {
        const char *in, *out;
    } cases[] = {
        {"", ""},
        {"f", "Zg=="},
        {"fo", "Zm8="},
        {"foo", "Zm9v"},
        {"foob", "Zm9vYg=="},
        {"fooba", "Zm9vYmE="},
        {"foobar", "Zm9vYmFy"},
    };

    (void)state;
    for (size_t i = 0; i < N(cases); i++)
        expect_b64(cases[i].in, strlen(cases[i].in), cases[i].out);
}

/* What config.c makes of a credentials line: RFC 7617's example, and an empty password. */
static void test_basic_credentials(void **state) {
    (void)state;
    expect_b64("Aladdin:open sesame", 19, "QWxhZGRpbjpvcGVuIHNlc2FtZQ==");
    expect_b64("user:", 5, "dXNlcjo=");
    expect_b64("test:123\xc2\xa3", 10, "dGVzdDoxMjPCow==");
}

/* Every character of the alphabet in order (the 6-bit values 0..63), and bytes that need the
 * high bit kept: a signed char would sign-extend into the index. */
static void test_alphabet_and_high_bytes(void **state) {
    unsigned char all[48];

    (void)state;
    for (size_t i = 0; i < 64; i += 4) {
        /* Four 6-bit values i, i+1, i+2, i+3 packed into three bytes. */
        unsigned v = (unsigned)(i << 18 | (i + 1) << 12 | (i + 2) << 6 | (i + 3));

        all[i / 4 * 3] = (unsigned char)(v >> 16);
        all[i / 4 * 3 + 1] = (unsigned char)(v >> 8);
        all[i / 4 * 3 + 2] = (unsigned char)v;
    }
    expect_b64(all, sizeof all, "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/");
    expect_b64("\xff", 1, "/w==");
    expect_b64("\xff\xff", 2, "//8=");
    expect_b64("\xff\xff\xff", 3, "////");
    expect_b64("\xfb\xff\xbf", 3, "+/+/");
    expect_b64("\x80\x00\x01", 3, "gAAB");
    /* NUL bytes are data, not the end. */
    expect_b64("\0", 1, "AA==");
    expect_b64("\0\0", 2, "AAA=");
    expect_b64("a\0b", 3, "YQBi");
}

/* A reference decoder: every length from 0 to 300 round-trips, with padding exactly where
 * n % 3 says. */
static int unb64(char ch) {
    static const char abc[] = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    const char *p = ch ? strchr(abc, ch) : NULL;

    return p ? (int)(p - abc) : -1;
}

static void test_round_trip(void **state) {
    unsigned char in[300], back[300];
    uint32_t seed = 12345;

    (void)state;
    for (size_t i = 0; i < sizeof in; i++) {
        seed = seed * 1103515245u + 12345u;
        in[i] = (unsigned char)(seed >> 16);
    }
    for (size_t n = 0; n <= sizeof in; n++) {
        char *out = b64(in, n);
        size_t len = strlen(out), pad = n % 3 == 0 ? 0 : 3 - n % 3, o = 0;

        assert_int_equal(len % 4, 0);
        for (size_t i = 0; i < len; i++) {
            if (i >= len - pad)
                assert_int_equal(out[i], '=');
            else
                assert_true(unb64(out[i]) >= 0);
        }
        for (size_t i = 0; i < len; i += 4) {
            int a = unb64(out[i]), b = unb64(out[i + 1]), c = unb64(out[i + 2]),
                d = unb64(out[i + 3]);
            uint32_t v = (uint32_t)a << 18 | (uint32_t)b << 12 | (uint32_t)(c < 0 ? 0 : c) << 6 |
                         (uint32_t)(d < 0 ? 0 : d);

            back[o++] = (unsigned char)(v >> 16);
            if (c >= 0)
                back[o++] = (unsigned char)(v >> 8);
            if (d >= 0)
                back[o++] = (unsigned char)v;
        }
        assert_int_equal(o, n);
        if (n)
            assert_memory_equal(back, in, n);
        free(out);
    }
}

int main(void) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_rfc4648_vectors),
        cmocka_unit_test(test_basic_credentials),
        cmocka_unit_test(test_alphabet_and_high_bytes),
        cmocka_unit_test(test_round_trip),
    };

    return cmocka_run_group_tests(tests, NULL, NULL);
}
