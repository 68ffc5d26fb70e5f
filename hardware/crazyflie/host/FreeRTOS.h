/* Host shim: the FreeRTOS names the robopolicy controller uses (see README.md). */
#ifndef ROBOPOLICY_HOST_FREERTOS_H
#define ROBOPOLICY_HOST_FREERTOS_H
#include <stdint.h>
#include "ticks.h"
typedef uint32_t TickType_t;
#endif
