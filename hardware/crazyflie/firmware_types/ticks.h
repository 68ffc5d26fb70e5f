/* Recorded from bitcraze/crazyflie-firmware by robopolicy.robots.crazyflie_firmware_record; do not edit.
 * Firmware commit: see FIRMWARE_COMMIT. License of the recorded declarations: GPL-3.0 (the firmware's). */
/* the FreeRTOS tick conversions of the firmware's FreeRTOSConfig.h (1 tick = 1 ms) */
#ifndef ROBOPOLICY_TICKS_H
#define ROBOPOLICY_TICKS_H
/* from src/config/FreeRTOSConfig.h */
#define configTICK_RATE_HZ_RAW  1000

#define M2T(X) ((unsigned int)(X))

#define T2M(X) ((unsigned int)(X))

#endif
