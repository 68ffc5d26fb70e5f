/* Recorded from bitcraze/crazyflie-firmware by robopolicy.robots.crazyflie_firmware_record; do not edit.
 * Firmware commit: see FIRMWARE_COMMIT. License of the recorded declarations: GPL-3.0 (the firmware's). */
#ifndef IMU_TYPES_H_
#define IMU_TYPES_H_
#include <stdint.h>

/* from src/hal/interface/imu_types.h */
 typedef union {
   struct {
         float x;
         float y;
         float z;
   };
   float axis[3];
 } Axis3f;

#endif
