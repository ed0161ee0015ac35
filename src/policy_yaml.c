/* policy_yaml: load the YAML rules file (policy_yaml.h) with libyaml's event API.
 *
 * The accepted language is deliberately small, so that a policy means one thing only:
 *   - one document whose top level is a mapping with exactly the key "rules", a non-empty
 *     sequence of at most RULES_MAX mappings;
 *   - rule keys: name, clients, users, hosts, ports, via (a sequence of scalars, one item each, or
 *     one scalar holding proxy.ini's comma-separated list syntax), action (allow | deny,
 *     required); via only on allow rules;
 *   - no anchors, aliases or explicit tags, no nested lists, no empty lists (omit the key);
 *   - a plain empty value, "~" or "null" is a missing value, never the text "null";
 *   - values are printable ASCII (names must be IDNA A-labels, xn--..., anyway).
 * Parsing stops at the first error, reported as "FILE:LINE:COLUMN: message" at the node that is
 * wrong (libyaml marks are 0-based, messages 1-based). Every rule is stored in rs as soon as it
 * starts, so one rules_free() releases a half-built set on any error path. */
#include "policy_yaml.h"
#include "auth.h"
#include "text.h"

#include <errno.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <yaml.h>

#define FILE_MAX     (1024 * 1024) /* bytes of a policy file */
#define RULES_MAX    10000
#define NAME_MAX_LEN 64 /* bytes of a rule name */
#define SHOW_MAX     64 /* bytes of a value quoted in a message */
#define MSG_MAX      512

/* A YAML value starting with '*' is an alias: host patterns must be quoted. */
#define ALIAS_HINT "; quote a value that starts with '*', e.g. \"*.example.com\""

enum key {
    KEY_NAME,
    KEY_CLIENTS,
    KEY_USERS,
    KEY_HOSTS,
    KEY_PORTS,
    KEY_ACTION,
    KEY_VIA,
    KEY_COUNT,
};

static const char *const key_names[KEY_COUNT] = {"name",  "clients", "users", "hosts",
                                                 "ports", "action",  "via"};

struct loader {
    yaml_parser_t parser;
    const char *text; /* the whole input, for positions of reader errors */
    size_t len;
    const char *name; /* file name in messages and default rule names */
    struct rule_set *rs;
    size_t cap; /* of rs->v */
    char *err;
    size_t errlen;
};

static int fail(struct loader *ld, yaml_mark_t m, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));

/* "FILE:LINE:COLUMN: message" at mark m. Returns -1 so that callers can `return fail(...)`. */
static int fail(struct loader *ld, yaml_mark_t m, const char *fmt, ...) {
    char msg[MSG_MAX];
    va_list ap;

    va_start(ap, fmt);
    (void)vsnprintf(msg, sizeof msg, fmt, ap);
    va_end(ap);
    text_seterr(ld->err, ld->errlen, "%s:%zu:%zu: %s", ld->name, m.line + 1, m.column + 1, msg);
    return -1;
}

/* A value as quoted in a message: at most SHOW_MAX bytes, anything but printable ASCII as '?'
 * (a message ends up in logs and on terminals). out must hold SHOW_MAX + 4 bytes. */
static const char *show(const char *v, size_t len, char *out) {
    size_t n = len < SHOW_MAX ? len : SHOW_MAX;

    for (size_t i = 0; i < n; i++)
        out[i] = v[i] >= 0x20 && v[i] < 0x7f ? v[i] : '?';
    if (len > n) {
        memcpy(out + n, "...", 4);
    } else {
        out[n] = '\0';
    }
    return out;
}

/* Reader errors (bad UTF-8, control characters) come with a byte offset instead of a mark. */
static yaml_mark_t offset_mark(const struct loader *ld, size_t off) {
    yaml_mark_t m = {0, 0, 0};

    if (off > ld->len)
        off = ld->len;
    for (size_t i = 0; i < off; i++) {
        if (ld->text[i] == '\n') {
            m.line++;
            m.column = 0;
        } else {
            m.column++;
        }
    }
    m.index = off;
    return m;
}

static int syntax_error(struct loader *ld) {
    const yaml_parser_t *p = &ld->parser;
    const char *problem = p->problem ? p->problem : "unknown error";

    switch (p->error) {
    case YAML_MEMORY_ERROR:
        text_seterr(ld->err, ld->errlen, "%s: out of memory", ld->name);
        return -1;
    case YAML_READER_ERROR:
        if (p->problem_value != -1)
            return fail(ld, offset_mark(ld, p->problem_offset), "YAML: %s (byte 0x%02X)", problem,
                        (unsigned)p->problem_value & 0xffu);
        return fail(ld, offset_mark(ld, p->problem_offset), "YAML: %s", problem);
    default:
        /* *.example.com unquoted reads as an alias: the most likely mistake in a hosts list. */
        if (p->context && strcmp(p->context, "while scanning an alias") == 0)
            return fail(ld, p->problem_mark, "YAML: %s (%s at line %zu, column %zu)%s", problem,
                        p->context, p->context_mark.line + 1, p->context_mark.column + 1,
                        ALIAS_HINT);
        if (p->context)
            return fail(ld, p->problem_mark, "YAML: %s (%s at line %zu, column %zu)", problem,
                        p->context, p->context_mark.line + 1, p->context_mark.column + 1);
        return fail(ld, p->problem_mark, "YAML: %s", problem);
    }
}

/* The next event into *ev; the caller deletes it. Anchors, aliases and tags are refused here,
 * once for every node. On error nothing is left to delete. */
static int next_event(struct loader *ld, yaml_event_t *ev) {
    const yaml_char_t *anchor = NULL, *tag = NULL;
    char shown[SHOW_MAX + 4];

    if (!yaml_parser_parse(&ld->parser, ev))
        return syntax_error(ld);
    switch (ev->type) {
    case YAML_ALIAS_EVENT:
        fail(ld, ev->start_mark, "anchors and aliases are not supported%s", ALIAS_HINT);
        yaml_event_delete(ev);
        return -1;
    case YAML_SCALAR_EVENT:
        anchor = ev->data.scalar.anchor;
        tag = ev->data.scalar.tag;
        break;
    case YAML_SEQUENCE_START_EVENT:
        anchor = ev->data.sequence_start.anchor;
        tag = ev->data.sequence_start.tag;
        break;
    case YAML_MAPPING_START_EVENT:
        anchor = ev->data.mapping_start.anchor;
        tag = ev->data.mapping_start.tag;
        break;
    default:
        break;
    }
    if (anchor) {
        fail(ld, ev->start_mark, "anchors and aliases are not supported");
        yaml_event_delete(ev);
        return -1;
    }
    if (tag) {
        /* A tag is the input's bytes: "!a%1B" unescapes to an ESC. */
        fail(ld, ev->start_mark, "tags are not supported (here '%s')",
             show((const char *)tag, strlen((const char *)tag), shown));
        yaml_event_delete(ev);
        return -1;
    }
    return 0;
}

static const char *scalar(const yaml_event_t *ev) {
    return (const char *)ev->data.scalar.value;
}

/* A plain empty value, "~" or "null" is YAML's null: a missing value, not a string. */
static bool is_null(const yaml_event_t *ev) {
    static const char *const nulls[] = {"", "~", "null", "Null", "NULL"};

    if (ev->data.scalar.style != YAML_PLAIN_SCALAR_STYLE)
        return false;
    for (size_t i = 0; i < sizeof nulls / sizeof nulls[0]; i++)
        if (strcmp(scalar(ev), nulls[i]) == 0)
            return true;
    return false;
}

/* What a node event is, for "expected X, found Y" messages. */
static const char *found(const yaml_event_t *ev) {
    switch (ev->type) {
    case YAML_SCALAR_EVENT:
        return is_null(ev) ? "an empty value" : "a single value";
    case YAML_SEQUENCE_START_EVENT:
        return "a list";
    case YAML_MAPPING_START_EVENT:
        return "a mapping";
    default:
        return "something else";
    }
}

/* Values must be printable ASCII: control bytes (also NUL, which "\0" can produce) would cut or
 * garble the value, and host names must be IDNA A-labels (xn--...). */
static int check_text(struct loader *ld, const char *key, const yaml_event_t *ev) {
    const char *v = scalar(ev);
    size_t len = ev->data.scalar.length;
    char shown[SHOW_MAX + 4];

    for (size_t i = 0; i < len; i++) {
        unsigned char ch = (unsigned char)v[i];

        if (ch < 0x20 || ch == 0x7f)
            return fail(ld, ev->start_mark, "%s: control character in '%s'", key,
                        show(v, len, shown));
        if (ch >= 0x80)
            return fail(ld, ev->start_mark,
                        "%s: non-ASCII character in '%s' (write names as IDNA A-labels, xn--...)",
                        key, show(v, len, shown));
    }
    return 0;
}

/* Make room for need elements of sz bytes in v, whose capacity is *cap. Returns the array, maybe
 * moved, or NULL when out of memory (v is then unchanged and still the caller's). */
static void *reserve(void *v, size_t *cap, size_t need, size_t sz) {
    size_t ncap = *cap ? *cap : 4;
    void *nv;

    if (need <= *cap)
        return v;
    while (ncap < need)
        ncap *= 2;
    nv = realloc(v, ncap * sz);
    if (!nv)
        return NULL;
    *cap = ncap;
    return nv;
}

/* Append k items of size sz to the array v holding *n (capacity *cap). Returns the array, or
 * NULL when out of memory (then v, *n and *cap are unchanged). */
static void *append(void *v, size_t *n, size_t *cap, const void *items, size_t k, size_t sz) {
    char *nv = reserve(v, cap, *n + k, sz);

    if (!nv)
        return NULL;
    if (k)
        memcpy(nv + *n * sz, items, k * sz);
    *n += k;
    return nv;
}

static int out_of_memory(struct loader *ld) {
    text_seterr(ld->err, ld->errlen, "%s: out of memory", ld->name);
    return -1;
}

/* ---- list values ---- */

/* Capacities of the lists of the rule being loaded. */
struct caps {
    size_t clients, users, hosts, ports, via;
};

/* User names as auth.h has them: 1-AUTH_USER_MAX bytes of printable ASCII, no ':' or space.
 * s has passed check_text() and holds no comma when it came from a list entry. */
static int add_users(struct loader *ld, struct rule *r, struct caps *caps, const yaml_event_t *ev,
                     size_t *added) {
    const char *s = scalar(ev);
    char item[AUTH_USER_MAX + 1];
    char shown[SHOW_MAX + 4];
    int rc;

    while ((rc = text_next_item(&s, item, sizeof item)) != 0) {
        char **nv;
        char *copy;

        if (rc < 0)
            return fail(ld, ev->start_mark, "users: bad user '%s...': longer than %d bytes", item,
                        AUTH_USER_MAX);
        if (item[0] == '\0')
            continue;
        if (strpbrk(item, ": ")) /* check_text() let only these two bad characters through */
            return fail(ld, ev->start_mark,
                        "users: bad user '%s': ':' and spaces are not allowed in user names",
                        show(item, strlen(item), shown));
        nv = reserve(r->users, &caps->users, r->nusers + 1, sizeof *nv);
        if (!nv)
            return out_of_memory(ld);
        r->users = nv;
        copy = strdup(item);
        if (!copy)
            return out_of_memory(ld);
        r->users[r->nusers++] = copy;
        (*added)++;
    }
    return 0;
}

/* Parent names (proxy.ini's [parent NAME]) or "direct": 1-32 letters, digits, '-', '_'. Whether
 * they exist is checked against proxy.ini by config.c. */
static int add_via(struct loader *ld, struct rule *r, struct caps *caps, const yaml_event_t *ev,
                   size_t *added) {
    const char *s = scalar(ev);
    char item[40];
    char shown[SHOW_MAX + 4];
    int rc;

    while ((rc = text_next_item(&s, item, sizeof item)) != 0) {
        if (item[0] == '\0' && rc > 0)
            continue;
        size_t n = strlen(item);
        if (rc < 0 || n > 32 ||
            strspn(item, "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ"
                         "0123456789-_") != n)
            return fail(ld, ev->start_mark,
                        "via: bad name '%s': a parent's name (letters, digits, '-', '_', at most "
                        "32) or direct",
                        show(item, n, shown));
        char **nv = reserve(r->via, &caps->via, r->nvia + 1, sizeof *nv);
        if (!nv)
            return out_of_memory(ld);
        r->via = nv;
        if (!(r->via[r->nvia] = strdup(item)))
            return out_of_memory(ld);
        r->nvia++;
        (*added)++;
    }
    return 0;
}

/* Parse one scalar of a list key into the rule. entry: it is one entry of a YAML list (one
 * item), not a comma-separated string. */
static int add_scalar(struct loader *ld, struct rule *r, enum key k, struct caps *caps,
                      const yaml_event_t *ev, bool entry) {
    const char *key = key_names[k];
    const char *s = scalar(ev);
    char msg[MSG_MAX];
    char shown[SHOW_MAX + 4];
    size_t added = 0;
    int rc = 0;
    void *nv;

    if (is_null(ev))
        return entry
                   ? fail(ld, ev->start_mark, "%s: empty list entry", key)
                   : fail(ld, ev->start_mark, "%s: no value; omit the key to match anything", key);
    if (check_text(ld, key, ev) != 0)
        return -1;
    if (entry && strchr(s, ','))
        return fail(ld, ev->start_mark,
                    "%s: '%s' holds a comma: write one item per list entry, e.g. [a, b]", key,
                    show(s, ev->data.scalar.length, shown));
    switch (k) {
    case KEY_CLIENTS: {
        struct cidr_list t = {NULL, 0};

        if (policy_parse_cidrs(s, &t, msg, sizeof msg) != 0)
            return fail(ld, ev->start_mark, "clients: %s", msg);
        nv = append(r->clients.v, &r->clients.n, &caps->clients, t.v, t.n, sizeof *t.v);
        rc = nv ? 0 : -1;
        if (nv)
            r->clients.v = nv;
        added = t.n;
        policy_free_cidrs(&t);
        break;
    }
    case KEY_HOSTS: {
        struct host_list t = {NULL, 0};

        if (policy_parse_hosts(s, &t, msg, sizeof msg) != 0)
            return fail(ld, ev->start_mark, "hosts: %s", msg);
        nv = append(r->hosts.v, &r->hosts.n, &caps->hosts, t.v, t.n, sizeof *t.v);
        rc = nv ? 0 : -1;
        if (nv)
            r->hosts.v = nv;
        added = t.n;
        if (rc == 0)
            free(t.v); /* the names moved to the rule */
        else
            policy_free_hosts(&t);
        break;
    }
    case KEY_PORTS: {
        struct port_list t = {NULL, 0};

        if (policy_parse_ports(s, &t, msg, sizeof msg) != 0)
            return fail(ld, ev->start_mark, "ports: %s", msg);
        nv = append(r->ports.v, &r->ports.n, &caps->ports, t.v, t.n, sizeof *t.v);
        rc = nv ? 0 : -1;
        if (nv)
            r->ports.v = nv;
        added = t.n;
        policy_free_ports(&t);
        break;
    }
    case KEY_USERS:
        rc = add_users(ld, r, caps, ev, &added);
        break;
    case KEY_VIA:
        rc = add_via(ld, r, caps, ev, &added);
        break;
    default:
        return fail(ld, ev->start_mark, "%s: not a list key", key); /* not reached */
    }
    if (rc != 0)
        return k == KEY_USERS || k == KEY_VIA ? rc : out_of_memory(ld);
    if (added == 0)
        return entry ? fail(ld, ev->start_mark, "%s: empty list entry", key)
                     : fail(ld, ev->start_mark, "%s: empty list; omit the key to match anything",
                            key);
    return 0;
}

/* The value of a list key: one scalar ("443, 8443") or a sequence of scalars ([443, 8443]). */
static int load_list(struct loader *ld, struct rule *r, enum key k) {
    const char *key = key_names[k];
    struct caps caps = {0, 0, 0, 0, 0};
    yaml_event_t ev;
    yaml_mark_t start;
    size_t entries = 0;
    int rc;

    if (next_event(ld, &ev) != 0)
        return -1;
    if (ev.type == YAML_SCALAR_EVENT) {
        rc = add_scalar(ld, r, k, &caps, &ev, false);
        yaml_event_delete(&ev);
        return rc;
    }
    if (ev.type != YAML_SEQUENCE_START_EVENT) {
        rc = fail(ld, ev.start_mark, "%s: expected a list or a single value, found %s", key,
                  found(&ev));
        yaml_event_delete(&ev);
        return rc;
    }
    start = ev.start_mark;
    yaml_event_delete(&ev);
    for (;;) {
        if (next_event(ld, &ev) != 0)
            return -1;
        if (ev.type == YAML_SEQUENCE_END_EVENT) {
            yaml_event_delete(&ev);
            break;
        }
        if (ev.type == YAML_SCALAR_EVENT) {
            rc = add_scalar(ld, r, k, &caps, &ev, true);
            entries++;
        } else if (ev.type == YAML_SEQUENCE_START_EVENT) {
            rc = fail(ld, ev.start_mark, "%s: nested lists are not supported", key);
        } else {
            rc = fail(ld, ev.start_mark, "%s: expected a list entry, found %s", key, found(&ev));
        }
        yaml_event_delete(&ev);
        if (rc != 0)
            return -1;
    }
    if (entries == 0)
        return fail(ld, start, "%s: empty list; omit the key to match anything", key);
    return 0;
}

/* ---- single values ---- */

/* The value of name or action: a non-empty scalar of printable ASCII, into *ev. */
static int load_single(struct loader *ld, enum key k, yaml_event_t *ev) {
    const char *key = key_names[k];
    int rc;

    if (next_event(ld, ev) != 0)
        return -1;
    if (ev->type != YAML_SCALAR_EVENT || is_null(ev)) {
        rc =
            k == KEY_ACTION
                ? fail(ld, ev->start_mark, "action: expected allow or deny, found %s", found(ev))
                : fail(ld, ev->start_mark, "%s: expected a single value, found %s", key, found(ev));
        yaml_event_delete(ev);
        return rc;
    }
    if (check_text(ld, key, ev) != 0) {
        yaml_event_delete(ev);
        return -1;
    }
    return 0;
}

static bool name_char(char ch) {
    return (ch >= 'a' && ch <= 'z') || (ch >= 'A' && ch <= 'Z') || (ch >= '0' && ch <= '9') ||
           ch == '_' || ch == '.' || ch == '-';
}

/* 1-NAME_MAX_LEN bytes of [A-Za-z0-9_.-]: safe in log lines without quoting, and never
 * mistaken for a default "FILE:LINE" name. Unique across the file. */
static int load_name(struct loader *ld, struct rule *r) {
    yaml_event_t ev;
    const char *v;
    size_t len;
    char shown[SHOW_MAX + 4];
    bool ok;
    int rc = 0;

    if (load_single(ld, KEY_NAME, &ev) != 0)
        return -1;
    v = scalar(&ev);
    len = ev.data.scalar.length;
    if (len > NAME_MAX_LEN) {
        rc = fail(ld, ev.start_mark, "name: '%s' is longer than %d bytes", show(v, len, shown),
                  NAME_MAX_LEN);
        goto out;
    }
    ok = len > 0;
    for (size_t i = 0; ok && i < len; i++)
        ok = name_char(v[i]);
    if (!ok) {
        rc = fail(ld, ev.start_mark,
                  "name: bad rule name '%s': use letters, digits, '_', '.' and '-'",
                  show(v, len, shown));
        goto out;
    }
    /* Earlier rules' names: explicit ones, or defaults, which hold a ':' and so never clash. The
     * rule being loaded is the last one and has no name yet. */
    for (size_t i = 0; i + 1 < ld->rs->n; i++) {
        if (ld->rs->v[i].name && strcmp(ld->rs->v[i].name, v) == 0) {
            rc = fail(ld, ev.start_mark, "name: duplicate rule name '%s' (rule %zu has it too)", v,
                      i + 1);
            goto out;
        }
    }
    r->name = strdup(v);
    if (!r->name)
        rc = out_of_memory(ld);
out:
    yaml_event_delete(&ev);
    return rc;
}

static int load_action(struct loader *ld, struct rule *r) {
    yaml_event_t ev;
    char shown[SHOW_MAX + 4];
    int rc = 0;

    if (load_single(ld, KEY_ACTION, &ev) != 0)
        return -1;
    if (strcmp(scalar(&ev), "allow") == 0) {
        r->action = RULE_ALLOW;
    } else if (strcmp(scalar(&ev), "deny") == 0) {
        r->action = RULE_DENY;
    } else {
        rc = fail(ld, ev.start_mark, "action: bad value '%s': expected allow or deny",
                  show(scalar(&ev), ev.data.scalar.length, shown));
    }
    yaml_event_delete(&ev);
    return rc;
}

/* ---- structure ---- */

static struct rule *new_rule(struct loader *ld) {
    struct rule_set *rs = ld->rs;
    struct rule *nv = reserve(rs->v, &ld->cap, rs->n + 1, sizeof *nv);

    if (!nv)
        return NULL;
    rs->v = nv;
    memset(&nv[rs->n], 0, sizeof nv[rs->n]);
    return &nv[rs->n++];
}

/* One rule; start is its MAPPING_START event. */
static int load_rule(struct loader *ld, const yaml_event_t *start) {
    struct rule *r = new_rule(ld);
    bool seen[KEY_COUNT] = {false};
    char shown[SHOW_MAX + 4];

    if (!r)
        return out_of_memory(ld);
    for (;;) {
        yaml_event_t ev;
        int k, rc;

        if (next_event(ld, &ev) != 0)
            return -1;
        if (ev.type == YAML_MAPPING_END_EVENT) {
            yaml_event_delete(&ev);
            break;
        }
        if (ev.type != YAML_SCALAR_EVENT) {
            rc = fail(ld, ev.start_mark, "rule: expected a key such as hosts or action, found %s",
                      found(&ev));
            yaml_event_delete(&ev);
            return rc;
        }
        for (k = 0; k < KEY_COUNT; k++)
            if (strcmp(scalar(&ev), key_names[k]) == 0)
                break;
        if (k == KEY_COUNT) {
            rc = fail(ld, ev.start_mark,
                      "unknown key '%s' in rule (expected name, clients, users, hosts, ports, "
                      "via, action)",
                      show(scalar(&ev), ev.data.scalar.length, shown));
            yaml_event_delete(&ev);
            return rc;
        }
        if (seen[k]) {
            rc = fail(ld, ev.start_mark, "duplicate key '%s' in rule", key_names[k]);
            yaml_event_delete(&ev);
            return rc;
        }
        yaml_event_delete(&ev);
        seen[k] = true;
        switch ((enum key)k) {
        case KEY_NAME:
            rc = load_name(ld, r);
            break;
        case KEY_ACTION:
            rc = load_action(ld, r);
            break;
        default:
            rc = load_list(ld, r, (enum key)k);
            break;
        }
        if (rc != 0)
            return -1;
    }
    if (!seen[KEY_ACTION])
        return fail(ld, start->start_mark,
                    "rule has no action: add 'action: allow' or "
                    "'action: deny'");
    r->has_clients = seen[KEY_CLIENTS];
    r->has_users = seen[KEY_USERS];
    r->has_hosts = seen[KEY_HOSTS];
    r->has_ports = seen[KEY_PORTS];
    r->has_via = seen[KEY_VIA];
    if (r->has_via && r->action == RULE_DENY)
        return fail(ld, start->start_mark, "a deny rule has no via: it sends nothing anywhere");
    if (!r->name) {
        size_t n = strlen(ld->name) + 24; /* ":" and a size_t */

        r->name = malloc(n);
        if (!r->name)
            return out_of_memory(ld);
        (void)snprintf(r->name, n, "%s:%zu", ld->name, start->start_mark.line + 1);
    }
    return 0;
}

/* The value of "rules": a non-empty sequence of rule mappings. */
static int load_rules(struct loader *ld) {
    yaml_event_t ev;
    yaml_mark_t start;
    int rc;

    if (next_event(ld, &ev) != 0)
        return -1;
    if (ev.type != YAML_SEQUENCE_START_EVENT) {
        rc = ev.type == YAML_SCALAR_EVENT && is_null(&ev)
                 ? fail(ld, ev.start_mark, "rules: no rules")
                 : fail(ld, ev.start_mark, "rules: expected a list of rules, found %s", found(&ev));
        yaml_event_delete(&ev);
        return rc;
    }
    start = ev.start_mark;
    yaml_event_delete(&ev);
    for (;;) {
        if (next_event(ld, &ev) != 0)
            return -1;
        if (ev.type == YAML_SEQUENCE_END_EVENT) {
            yaml_event_delete(&ev);
            break;
        }
        if (ev.type != YAML_MAPPING_START_EVENT) {
            rc = fail(ld, ev.start_mark,
                      "rules: expected a rule (a mapping with action:), found %s", found(&ev));
        } else if (ld->rs->n >= RULES_MAX) {
            rc = fail(ld, ev.start_mark, "rules: more than %d rules", RULES_MAX);
        } else {
            rc = load_rule(ld, &ev);
        }
        yaml_event_delete(&ev);
        if (rc != 0)
            return -1;
    }
    if (ld->rs->n == 0)
        return fail(ld, start, "rules: no rules");
    return 0;
}

/* The top-level mapping; start is its MAPPING_START event. */
static int load_top(struct loader *ld, const yaml_event_t *start) {
    bool have_rules = false;
    char shown[SHOW_MAX + 4];

    for (;;) {
        yaml_event_t ev;
        int rc;

        if (next_event(ld, &ev) != 0)
            return -1;
        if (ev.type == YAML_MAPPING_END_EVENT) {
            yaml_event_delete(&ev);
            break;
        }
        if (ev.type != YAML_SCALAR_EVENT) {
            rc = fail(ld, ev.start_mark, "expected the key 'rules', found %s", found(&ev));
        } else if (strcmp(scalar(&ev), "rules") != 0) {
            rc = fail(ld, ev.start_mark, "unknown top-level key '%s' (expected 'rules')",
                      show(scalar(&ev), ev.data.scalar.length, shown));
        } else if (have_rules) {
            rc = fail(ld, ev.start_mark, "duplicate key 'rules'");
        } else {
            have_rules = true;
            rc = 0;
        }
        yaml_event_delete(&ev);
        if (rc != 0 || load_rules(ld) != 0)
            return -1;
    }
    if (!have_rules)
        return fail(ld, start->start_mark, "no rules: expected 'rules:' with a list of rules");
    return 0;
}

static int load_stream(struct loader *ld) {
    yaml_event_t ev;
    int rc;

    if (next_event(ld, &ev) != 0) /* STREAM_START */
        return -1;
    yaml_event_delete(&ev);
    if (next_event(ld, &ev) != 0)
        return -1;
    if (ev.type == YAML_STREAM_END_EVENT) {
        rc = fail(ld, ev.start_mark, "no rules: the file is empty");
        yaml_event_delete(&ev);
        return rc;
    }
    yaml_event_delete(&ev); /* DOCUMENT_START */
    if (next_event(ld, &ev) != 0)
        return -1;
    if (ev.type != YAML_MAPPING_START_EVENT) {
        rc = ev.type == YAML_SCALAR_EVENT && is_null(&ev)
                 ? fail(ld, ev.start_mark, "no rules: the document is empty")
                 : fail(ld, ev.start_mark, "expected a mapping with the key 'rules', found %s",
                        found(&ev));
    } else {
        rc = load_top(ld, &ev);
    }
    yaml_event_delete(&ev);
    if (rc != 0)
        return -1;
    if (next_event(ld, &ev) != 0) /* DOCUMENT_END */
        return -1;
    yaml_event_delete(&ev);
    if (next_event(ld, &ev) != 0)
        return -1;
    rc = ev.type == YAML_STREAM_END_EVENT
             ? 0
             : fail(ld, ev.start_mark,
                    "more than one YAML document: put every rule under one "
                    "'rules:'");
    yaml_event_delete(&ev);
    return rc;
}

int policy_yaml_load_string(const char *text, size_t len, const char *name, struct rule_set *rs,
                            char *err, size_t errlen) {
    struct loader ld;
    int rc;

    if (!rs)
        return -1;
    memset(rs, 0, sizeof *rs);
    if (!name)
        name = "policy";
    if (!text) {
        text = "";
        len = 0;
    }
    if (len > FILE_MAX) {
        text_seterr(err, errlen, "%s: larger than %zu bytes", name, (size_t)FILE_MAX);
        return -1;
    }
    memset(&ld, 0, sizeof ld);
    ld.text = text;
    ld.len = len;
    ld.name = name;
    ld.rs = rs;
    ld.err = err;
    ld.errlen = errlen;
    if (!yaml_parser_initialize(&ld.parser)) {
        text_seterr(err, errlen, "%s: out of memory", name);
        return -1;
    }
    yaml_parser_set_input_string(&ld.parser, (const unsigned char *)text, len);
    rc = load_stream(&ld);
    yaml_parser_delete(&ld.parser);
    if (rc != 0) {
        rules_free(rs);
        memset(rs, 0, sizeof *rs);
    }
    return rc;
}

int policy_yaml_load(const char *path, struct rule_set *rs, char *err, size_t errlen) {
    char *buf;
    size_t n;
    int rc;

    if (!rs)
        return -1;
    memset(rs, 0, sizeof *rs);
    if (text_read_file(path, FILE_MAX, &buf, &n, err, errlen) != 0)
        return -1;
    rc = policy_yaml_load_string(buf, n, path, rs, err, errlen);
    free(buf);
    return rc;
}
