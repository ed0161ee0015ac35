/* passwd: `connectd -H`: make a users_file line's hash from a password on standard input. */
#ifndef CONNECTD_PASSWD_H
#define CONNECTD_PASSWD_H

/* Read one password line from stdin (without echo on a terminal), print its crypt(3) hash
 * with libcrypt's preferred method (yescrypt) and a fresh salt. Returns an exit status. */
int passwd_hash_stdin(void);

#endif
