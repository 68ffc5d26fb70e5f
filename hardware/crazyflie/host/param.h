/* Host shim: the firmware's parameter macros, building a plain table per group (host_param_<group>[]) that
 * host drivers set by name, as the firmware's parameter subsystem would. The type constants are recorded. */
#ifndef ROBOPOLICY_HOST_PARAM_H
#define ROBOPOLICY_HOST_PARAM_H
#include "param_types.h"
#include "host_table.h"
#define PARAM_GROUP_START(NAME) const struct host_entry host_param_##NAME[] = {
#define PARAM_ADD(TYPE, NAME, ADDRESS) {#NAME, TYPE, (void *)(ADDRESS)},
#define PARAM_GROUP_STOP(NAME) {0, 0, 0}};
#endif
