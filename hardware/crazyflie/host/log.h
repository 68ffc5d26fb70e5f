/* Host shim: the firmware's log macros, building a plain table per group (host_log_<group>[]) that host
 * drivers read by name, as the firmware's log subsystem would. The type constants are recorded. */
#ifndef ROBOPOLICY_HOST_LOG_H
#define ROBOPOLICY_HOST_LOG_H
#include "log_types.h"
#include "host_table.h"
#define LOG_GROUP_START(NAME) const struct host_entry host_log_##NAME[] = {
#define LOG_ADD(TYPE, NAME, ADDRESS) {#NAME, TYPE, (void *)(ADDRESS)},
#define LOG_GROUP_STOP(NAME) {0, 0, 0}};
#endif
