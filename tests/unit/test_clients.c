/* Unit tests for per-client connection and rate accounting. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>

#include <cmocka.h>

#include <arpa/inet.h>
#include <netinet/in.h>
#include <string.h>

#include "clients.h"

static struct sockaddr_in v4(const char *ip) {
    struct sockaddr_in s;
    memset(&s, 0, sizeof s);
    s.sin_family = AF_INET;
    inet_pton(AF_INET, ip, &s.sin_addr);
    return s;
}

static struct sockaddr_in6 v6(const char *ip) {
    struct sockaddr_in6 s;
    memset(&s, 0, sizeof s);
    s.sin6_family = AF_INET6;
    inet_pton(AF_INET6, ip, &s.sin6_addr);
    return s;
}

static void test_connection_cap(void **state) {
    (void)state;
    struct client_table *ct = clients_new(2, 0);
    struct sockaddr_in a = v4("192.0.2.1"), b = v4("192.0.2.2");
    struct client_entry *e1, *e2, *e3, *eb;
    assert_int_equal(clients_admit(ct, (struct sockaddr *)&a, 0, &e1), CLIENT_OK);
    assert_int_equal(clients_admit(ct, (struct sockaddr *)&a, 0, &e2), CLIENT_OK);
    assert_int_equal(clients_admit(ct, (struct sockaddr *)&a, 0, &e3), CLIENT_TOO_MANY);
    assert_null(e3);
    /* Another client is not affected. */
    assert_int_equal(clients_admit(ct, (struct sockaddr *)&b, 0, &eb), CLIENT_OK);
    clients_release(ct, e1, 1);
    assert_int_equal(clients_admit(ct, (struct sockaddr *)&a, 1, &e3), CLIENT_OK);
    clients_release(ct, e2, 2);
    clients_release(ct, e3, 2);
    clients_release(ct, eb, 2);
    assert_int_equal(clients_sweep(ct, 3), 0);
    clients_free(ct);
}

static void test_mapped_shares_entry(void **state) {
    (void)state;
    struct client_table *ct = clients_new(1, 0);
    struct sockaddr_in a = v4("127.0.0.1");
    struct sockaddr_in6 m = v6("::ffff:127.0.0.1");
    struct client_entry *e1, *e2;
    assert_int_equal(clients_admit(ct, (struct sockaddr *)&a, 0, &e1), CLIENT_OK);
    assert_int_equal(clients_admit(ct, (struct sockaddr *)&m, 0, &e2), CLIENT_TOO_MANY);
    clients_release(ct, e1, 0);
    clients_free(ct);
}

static void test_rate_bucket(void **state) {
    (void)state;
    struct client_table *ct = clients_new(0, 5);
    struct sockaddr_in a = v4("198.51.100.7");
    struct client_entry *e;
    int ok = 0;
    for (int i = 0; i < 10; i++) {
        if (clients_admit(ct, (struct sockaddr *)&a, 100.0, &e) == CLIENT_OK) {
            ok++;
            clients_release(ct, e, 100.0);
        }
    }
    assert_int_equal(ok, 5); /* burst = rate */
    assert_int_equal(clients_admit(ct, (struct sockaddr *)&a, 100.1, &e), CLIENT_TOO_FAST);
    /* 0.2 s later one more token (5/s) has arrived. */
    assert_int_equal(clients_admit(ct, (struct sockaddr *)&a, 100.3, &e), CLIENT_OK);
    clients_release(ct, e, 100.3);
    /* Not forgotten while the bucket is still refilling, forgotten once full. */
    assert_int_equal(clients_sweep(ct, 100.4), 1);
    assert_int_equal(clients_sweep(ct, 102.0), 0);
    clients_free(ct);
}

int main(void) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_connection_cap),
        cmocka_unit_test(test_mapped_shares_entry),
        cmocka_unit_test(test_rate_bucket),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
