/* Recorded from bitcraze/crazyflie-firmware by robopolicy.robots.crazyflie_firmware_record; do not edit.
 * Firmware commit: see FIRMWARE_COMMIT. License of the recorded declarations: GPL-3.0 (the firmware's). */
#ifndef ROBOPOLICY_LOG_TYPES_H
#define ROBOPOLICY_LOG_TYPES_H
/* from src/modules/interface/log.h */
#define LOG_UINT8  1

#define LOG_UINT16 2

#define LOG_UINT32 3

#define LOG_FLOAT  7

#endif
