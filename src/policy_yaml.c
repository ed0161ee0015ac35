/* policy_yaml: being written. */
#include "policy_yaml.h"
