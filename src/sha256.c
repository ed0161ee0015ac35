/* sha256: being written. */
#include "sha256.h"
