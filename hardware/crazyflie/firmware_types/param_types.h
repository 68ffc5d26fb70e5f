/* Recorded from bitcraze/crazyflie-firmware by robopolicy.robots.crazyflie_firmware_record; do not edit.
 * Firmware commit: see FIRMWARE_COMMIT. License of the recorded declarations: GPL-3.0 (the firmware's). */
#ifndef ROBOPOLICY_PARAM_TYPES_H
#define ROBOPOLICY_PARAM_TYPES_H
/* from src/modules/interface/param.h */
#define PARAM_1BYTE  0x00

#define PARAM_2BYTES 0x01

#define PARAM_4BYTES 0x02

#define PARAM_TYPE_INT   (0x00<<2)

#define PARAM_TYPE_FLOAT (0x01<<2)

#define PARAM_UNSIGNED (0x01<<3)

#define PARAM_SIGNED (0x00<<3)

#define PARAM_UINT8 (PARAM_1BYTE | PARAM_TYPE_INT | PARAM_UNSIGNED)

#define PARAM_UINT16 (PARAM_2BYTES | PARAM_TYPE_INT | PARAM_UNSIGNED)

#define PARAM_FLOAT (PARAM_4BYTES | PARAM_TYPE_FLOAT | PARAM_SIGNED)

#endif
