/* metrics: the shared stats in the Prometheus text exposition format, version 0.0.4. */
#ifndef CONNECTD_METRICS_H
#define CONNECTD_METRICS_H

#include <stdbool.h>

#include "obuf.h"

struct stats_shm;

/* Append the whole exposition to o. draining: this process has had a stop signal. */
void metrics_render(const struct stats_shm *s, bool draining, struct obuf *o);

#endif
