/* policy_yaml: load [access] policy, a YAML file of ordered rules (rules.h), with libyaml.
 *
 *   rules:
 *     - name: staff-web              # optional; [A-Za-z0-9_.-], 1-64 bytes
 *       clients: [10.0.0.0/8, "2001:db8::/32"]
 *       users: [alice, bob]
 *       hosts: ["*.example.com", example.com, 192.0.2.0/24]
 *       ports: [443, 8443, 10000-10100]
 *       action: allow                # required: allow | deny
 *
 * Pure apart from reading the file it is given: no ev.h, no sockets. */
#ifndef CONNECTD_POLICY_YAML_H
#define CONNECTD_POLICY_YAML_H

#include <stddef.h>

#include "rules.h"

/* Load path into *rs (which the caller zeroed). Returns 0, or -1 with
 * "FILE:LINE:COLUMN: what is wrong" in err (or "FILE: cannot open: <strerror>"); *rs is then
 * freed and zeroed. */
int policy_yaml_load(const char *path, struct rule_set *rs, char *err, size_t errlen);

/* Same from memory; name stands for the file name in messages and rule names. */
int policy_yaml_load_string(const char *text, size_t len, const char *name, struct rule_set *rs,
                            char *err, size_t errlen);

#endif
