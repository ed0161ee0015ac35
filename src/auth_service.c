/* auth_service: being written. */
#include "auth_service.h"
