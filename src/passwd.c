/* passwd: hash a password for [auth] users_file; see passwd.h. */
#include "passwd.h"

#include <crypt.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <termios.h>
#include <unistd.h>

#define PASS_MAX 256 /* auth.h AUTH_PASS_MAX: longer passwords could never log in */

int passwd_hash_stdin(void) {
    struct termios old, quiet;
    bool tty = isatty(STDIN_FILENO) && tcgetattr(STDIN_FILENO, &old) == 0;
    char pass[PASS_MAX + 2];
    struct crypt_data *cd;
    int rc = 1;

    if (tty) {
        quiet = old;
        quiet.c_lflag &= ~(tcflag_t)ECHO;
        fputs("Password: ", stderr);
        (void)tcsetattr(STDIN_FILENO, TCSAFLUSH, &quiet);
    }
    char *got = fgets(pass, sizeof pass, stdin);
    if (tty) {
        (void)tcsetattr(STDIN_FILENO, TCSAFLUSH, &old);
        fputs("\n", stderr);
    }
    if (!got) {
        fputs("connectd: no password on standard input\n", stderr);
        return 1;
    }
    size_t n = strcspn(pass, "\r\n");
    if (pass[n] == '\0' && n > PASS_MAX) {
        fprintf(stderr, "connectd: password longer than %d bytes\n", PASS_MAX);
        goto out;
    }
    pass[n] = '\0';
    if (n == 0) {
        fputs("connectd: empty password\n", stderr);
        goto out;
    }
    cd = calloc(1, sizeof *cd);
    if (!cd) {
        fputs("connectd: out of memory\n", stderr);
        goto out;
    }
    /* NULL prefix: libcrypt's preferred method (yescrypt on Debian 12), default cost. */
    char *setting = crypt_gensalt_rn(NULL, 0, NULL, 0, cd->setting, sizeof cd->setting);
    const char *hash = setting ? crypt_r(pass, setting, cd) : NULL;
    if (!hash || hash[0] == '*') {
        fputs("connectd: crypt failed\n", stderr);
    } else {
        printf("%s\n", hash);
        rc = 0;
    }
    explicit_bzero(cd, sizeof *cd);
    free(cd);
out:
    explicit_bzero(pass, sizeof pass);
    return rc;
}
