/* Host shim: one log or parameter entry (name, firmware type constant, address). */
#ifndef ROBOPOLICY_HOST_TABLE_H
#define ROBOPOLICY_HOST_TABLE_H
#include <string.h>
struct host_entry { const char *name; int type; void *address; };
static inline void *host_entry_find(const struct host_entry *table, const char *name)
{
    for (; table->name; ++table) if (strcmp(table->name, name) == 0) return table->address;
    return 0;
}
#endif
