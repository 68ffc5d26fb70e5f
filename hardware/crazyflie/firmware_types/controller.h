/* Recorded from bitcraze/crazyflie-firmware by robopolicy.robots.crazyflie_firmware_record; do not edit.
 * Firmware commit: see FIRMWARE_COMMIT. License of the recorded declarations: GPL-3.0 (the firmware's). */
#ifndef __CONTROLLER_H__
#define __CONTROLLER_H__
#include "stabilizer_types.h"

/* from src/modules/interface/controller/controller.h */
void controllerOutOfTreeInit(void);

bool controllerOutOfTreeTest(void);

void controllerOutOfTree(control_t *control, const setpoint_t *setpoint, const sensorData_t *sensors, const state_t *state, const stabilizerStep_t stabilizerStep);

#endif
