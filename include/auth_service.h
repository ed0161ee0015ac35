/* auth_service: checks Proxy-Authorization values for the loop without ever blocking it.
 * Cache hits answer at once; anything else is hashed on one worker thread and the answer comes
 * back through an ev_async. Identical values in flight share one verification, so a browser
 * opening hundreds of tunnels with the same credentials costs one hash. */
#ifndef CONNECTD_AUTH_SERVICE_H
#define CONNECTD_AUTH_SERVICE_H

#include <stddef.h>
#include <sys/socket.h>

#include <ev.h>

#include "auth.h"

enum auth_result {
    AUTH_OK = 1,  /* *user is the authenticated name */
    AUTH_MISSING, /* no Proxy-Authorization, or not Basic, or malformed */
    AUTH_BAD,     /* unknown user or wrong password; *user is the name tried */
    AUTH_BUSY,    /* too many verifications waiting: try later (503) */
    AUTH_PENDING, /* the callback will say; never called before auth_service_check returns */
};

struct auth_service;
struct auth_wait;

/* result is AUTH_OK, AUTH_BAD or AUTH_BUSY; user is valid during the call only. */
typedef void (*auth_done_fn)(void *arg, enum auth_result result, const char *user);

/* users must outlive the service. Returns NULL with err filled (thread or memory failure). */
struct auth_service *auth_service_new(struct ev_loop *loop, const struct auth_users *users,
                                      char *err, size_t errlen);
/* Stops and joins the worker; pending waits are dropped without callbacks. */
void auth_service_free(struct auth_service *s);

/* value/len: the Proxy-Authorization field value (len 0 when absent). On AUTH_OK *user points
 * at the user's name (valid while the service lives); on AUTH_BAD at a copy valid until the next
 * call. On AUTH_PENDING *wait is the handle for auth_service_cancel(). */
enum auth_result auth_service_check(struct auth_service *s, const char *value, size_t len,
                                    const char **user, auth_done_fn cb, void *arg,
                                    struct auth_wait **wait);
/* The tunnel went away: its callback will not be called. */
void auth_service_cancel(struct auth_service *s, struct auth_wait *w);

/* Failed attempts per client: record one, forget on success, how long to hold the next. */
void auth_service_failed(struct auth_service *s, const struct sockaddr *client);
void auth_service_succeeded(struct auth_service *s, const struct sockaddr *client);
double auth_service_penalty(struct auth_service *s, const struct sockaddr *client);

/* crypt(3) verifications run so far (for the debug log and tests). */
unsigned long auth_service_hashes(const struct auth_service *s);

#endif
