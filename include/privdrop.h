/* privdrop: [server] user: after binding, a daemon started as root becomes that user. */
#ifndef CONNECTD_PRIVDROP_H
#define CONNECTD_PRIVDROP_H

#include <stddef.h>

/* Started as root: user must be set; "root" keeps root (with a warning), any other name switches
 * to that user, its group and supplementary groups, and checks that root cannot be regained.
 * Not started as root: nothing changes (a set user is noted and ignored). Returns 0, or -1
 * with the reason in err. */
int privdrop(const char *user, char *err, size_t errlen);

#endif
