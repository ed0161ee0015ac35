/* clients: per-client-address connection counts and connection-rate token buckets, for
 * [limits] per_client_connections and per_client_rate. Pure: time is passed in. */
#ifndef CONNECTD_CLIENTS_H
#define CONNECTD_CLIENTS_H

#include <stddef.h>
#include <sys/socket.h>

struct client_table;
struct client_entry;

enum client_verdict {
    CLIENT_OK = 0,
    CLIENT_TOO_MANY, /* per_client_connections reached */
    CLIENT_TOO_FAST, /* per_client_rate exceeded */
};

/* max_conns and rate: 0 = unlimited. Returns NULL when out of memory. */
struct client_table *clients_new(unsigned max_conns, unsigned rate);
void clients_free(struct client_table *ct);
/* New limits (a reload); counts and buckets are kept. */
void clients_set_limits(struct client_table *ct, unsigned max_conns, unsigned rate);

/* Account a new connection from sa at time now (seconds). On CLIENT_OK *entry is set and must
 * be given back with clients_release() when the connection ends. A refused connection is not
 * counted. Out of memory admits the client without accounting (*entry = NULL). IPv4-mapped
 * IPv6 clients share the entry of their IPv4 address. */
enum client_verdict clients_admit(struct client_table *ct, const struct sockaddr *sa, double now,
                                  struct client_entry **entry);
void clients_release(struct client_table *ct, struct client_entry *e, double now);

/* Forget clients with no connection whose bucket has refilled; returns how many remain. */
size_t clients_sweep(struct client_table *ct, double now);

#endif
