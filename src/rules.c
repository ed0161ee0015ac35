/* rules: being written. */
#include "rules.h"
