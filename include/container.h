/* container_of: recover the struct that embeds a libev watcher (watchers live inside their
 * owner; none gets its own allocation). */
#ifndef CONNECTD_CONTAINER_H
#define CONNECTD_CONTAINER_H

#include <stddef.h>

#define container_of(p, type, member) ((type *)(void *)((char *)(p)-offsetof(type, member)))

#endif
