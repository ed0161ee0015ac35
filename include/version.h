/* version: the one place the release version is written. */
#ifndef CONNECTD_VERSION_H
#define CONNECTD_VERSION_H

#define CONNECTD_VERSION "0.1.0"

#endif
