/* auth: being written. */
#include "auth.h"
