/* privdrop: become the configured unprivileged user; see privdrop.h. */
#include "privdrop.h"

#include <errno.h>
#include <grp.h>
#include <pwd.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/types.h>
#include <unistd.h>

#include "log.h"

int privdrop(const char *user, char *err, size_t errlen) {
    if (geteuid() != 0) {
        if (user)
            log_info("not started as root: [server] user = %s does not apply", user);
        return 0;
    }
    if (!user) {
        snprintf(err, errlen,
                 "refusing to run as root: set [server] user to an unprivileged user to switch "
                 "to after binding (or user = root to keep root)");
        return -1;
    }
    if (strcmp(user, "root") == 0) {
        log_warn("running as root ([server] user = root)");
        return 0;
    }
    char buf[4096];
    struct passwd pw, *found = NULL;
    int rc = getpwnam_r(user, &pw, buf, sizeof buf, &found);
    if (!found) {
        snprintf(err, errlen, "[server] user %s: %s", user, rc ? strerror(rc) : "no such user");
        return -1;
    }
    if (pw.pw_uid == 0) {
        snprintf(err, errlen, "[server] user %s has uid 0; name an unprivileged user", user);
        return -1;
    }
    /* Groups first: once the uid has changed, they can no longer be changed. */
    if (initgroups(user, pw.pw_gid) == -1) {
        snprintf(err, errlen, "initgroups(%s): %s", user, strerror(errno));
        return -1;
    }
    if (setgid(pw.pw_gid) == -1) {
        snprintf(err, errlen, "setgid(%lu): %s", (unsigned long)pw.pw_gid, strerror(errno));
        return -1;
    }
    if (setuid(pw.pw_uid) == -1) {
        snprintf(err, errlen, "setuid(%lu): %s", (unsigned long)pw.pw_uid, strerror(errno));
        return -1;
    }
    /* Verify: every id is the user's, and root cannot be taken back. */
    uid_t ruid, euid, suid;
    gid_t rgid, egid, sgid;
    if (getresuid(&ruid, &euid, &suid) == -1 || getresgid(&rgid, &egid, &sgid) == -1 ||
        ruid != pw.pw_uid || euid != pw.pw_uid || suid != pw.pw_uid || rgid != pw.pw_gid ||
        egid != pw.pw_gid || sgid != pw.pw_gid) {
        snprintf(err, errlen, "switching to user %s did not take", user);
        return -1;
    }
    if (setuid(0) != -1 || seteuid(0) != -1) {
        snprintf(err, errlen, "switched to user %s but root could be regained", user);
        return -1;
    }
    gid_t groups[64];
    int ng = getgroups(64, groups);
    for (int i = 0; i < ng; i++) {
        if (groups[i] == 0 && pw.pw_gid != 0) {
            log_warn("user %s is in group root (gid 0)", user);
            break;
        }
    }
    log_info("running as user %s (uid %lu, gid %lu)", user, (unsigned long)pw.pw_uid,
             (unsigned long)pw.pw_gid);
    return 0;
}
