/* Host shim: the tick counter (1 tick = 1 ms, firmware_types/ticks.h), defined by the host driver. */
#ifndef ROBOPOLICY_HOST_TASK_H
#define ROBOPOLICY_HOST_TASK_H
#include "FreeRTOS.h"
TickType_t xTaskGetTickCount(void);
#endif
