/*
 * Out-of-tree Crazyflie controller that runs a robopolicy C-exported policy on board.
 *
 * Built against bitcraze/crazyflie-firmware (commit pinned in firmware_types/FIRMWARE_COMMIT; the types it
 * uses are recorded in firmware_types/ for CI). The stabilizer calls controllerOutOfTree() at 1 kHz
 * (RATE_MAIN_LOOP); the policy runs at the rate of the demos it was trained on (POLICY_FPS from the
 * generated policy.h: 500 Hz = every second call, 100 Hz = every tenth) and writes 4 normalized motor
 * commands a in [-1, 1]. They go out through the firmware's controlModeForce: normalizedForces[i] =
 * (a + 1) / 2 in 0..1, which the firmware's power distribution (powerDistributionForce) turns into the
 * motor PWM ratio f * UINT16_MAX, followed by its battery compensation. The simulator's command is the same
 * PWM ratio, so no thrust model sits in between.
 *
 * Motor order: the policy's outputs are in the firmware's order M1..M4 (see firmware_types/README.md for
 * the simulator's rotor order; check it with the propellers off before the first flight).
 *
 * Watchdog: if the setpoint is older than SETPOINT_TIMEOUT_MS (the firmware's commander stamps each setpoint
 * with the tick count; the supervisor's null setpoint has timestamp 0 and so trips it too), or if
 * policy_step() reports a non-finite input or output, the motors are cut (all forces zero) and stay cut
 * until controllerOutOfTreeInit() runs again (switching controllers re-initializes it).
 *
 * The observation must match the one the policy was trained with (docs/quadrotor.md): 22 numbers =
 * position error (3, m, world frame: state - target), rotation matrix (9, row-major, world-from-body),
 * velocity error (3, m/s), body angular velocity (3, rad/s), rotor-state estimate (4), with
 * POLICY_N_OBS_STEPS = 1. Export with robopolicy.export.c_export.export_c(policy, "hardware/crazyflie/policy").
 *
 * The rotor-state estimate is what the simulator's observation carries (robopolicy/sim/quadrotor.py): each
 * command sent so far, passed through the rotors' first-order lag, faster up than down. The Crazyflie does
 * not measure rotor speed, so the controller runs the same filter on its own commands, at the policy's
 * rate. It starts at the hover command: switch to this controller in flight (stabilizer.controller),
 * after taking off with the stock one, as the policy only saw the drone airborne.
 */
#include <math.h>
#include <string.h>

#include "policy.h"

#include <stdint.h>
#include <stdbool.h>

#include "controller.h"
#include "stabilizer_types.h"
#include "FreeRTOS.h"
#include "task.h"
#include "log.h"
#include "param.h"

#define SETPOINT_TIMEOUT_MS 200u
#define DEG2RAD 0.017453292519943295f

#if POLICY_OBS_DIM != 22
#error "controller_robopolicy.c builds the 22-number observation of docs/quadrotor.md; re-export a matching policy"
#endif
#if POLICY_FPS <= 0 || 1000 % POLICY_FPS != 0
#error "the policy's control rate (POLICY_FPS) must divide the 1 kHz stabilizer loop; re-export a policy trained at 100, 200, 250, 500 or 1000 Hz"
#endif
#if POLICY_ACTION_DIM != STABILIZER_NR_OF_MOTORS
#error "the policy must output one command per motor (STABILIZER_NR_OF_MOTORS); re-export a matching policy"
#endif
#define POLICY_PERIOD_TICKS (1000 / POLICY_FPS)

/* The simulator's Crazyflie 2.x rotor model (L2F parameters, crazyflie_model() in robopolicy/sim/quadrotor.py):
 * first-order lag time constants (s) and the normalized hover command. Must match the model the policy
 * was trained in. */
#define ROTOR_TAU_RISING_S 0.055455f
#define ROTOR_TAU_FALLING_S 0.249394f
#define HOVER_COMMAND 0.61225676f

static float obs[POLICY_OBS_DIM];
static float action[POLICY_ACTION_DIM];
static float rotor_estimate[POLICY_ACTION_DIM];
static float k_rising, k_falling;  /* per policy step: 1 - exp(-dt / tau) */
static uint8_t tripped;      /* watchdog latched: motors stay off until controllerOutOfTreeInit() */
static uint8_t enabled;      /* param robopolicy.enable */
static uint32_t n_steps, n_fail;

void controllerOutOfTreeInit(void)
{
    int i;
    const float dt = 1.0f / (float)POLICY_FPS;
    for (i = 0; i < POLICY_ACTION_DIM; ++i) rotor_estimate[i] = HOVER_COMMAND;
    k_rising = 1.0f - expf(-dt / ROTOR_TAU_RISING_S);
    k_falling = 1.0f - expf(-dt / ROTOR_TAU_FALLING_S);
    tripped = 0;
    n_steps = n_fail = 0;
}

bool controllerOutOfTreeTest(void)
{
    return policy_selftest() == 0; /* generated test vectors: refuse to arm if the export is broken */
}

static void quat_to_rot(const quaternion_t *q, float *r)
{
    const float w = q->w, x = q->x, y = q->y, z = q->z;
    r[0] = 1 - 2 * (y * y + z * z); r[1] = 2 * (x * y - w * z);     r[2] = 2 * (x * z + w * y);
    r[3] = 2 * (x * y + w * z);     r[4] = 1 - 2 * (x * x + z * z); r[5] = 2 * (y * z - w * x);
    r[6] = 2 * (x * z - w * y);     r[7] = 2 * (y * z + w * x);     r[8] = 1 - 2 * (x * x + y * y);
}

static void motors_off(control_t *control)
{
    int i;
    control->controlMode = controlModeForce;
    for (i = 0; i < STABILIZER_NR_OF_MOTORS; ++i) control->normalizedForces[i] = 0.0f;
}

void controllerOutOfTree(control_t *control, const setpoint_t *setpoint, const sensorData_t *sensors,
                         const state_t *state, const stabilizerStep_t tick)
{
    int i;
    if (tick % POLICY_PERIOD_TICKS != 0) return; /* keep the previous output between policy steps */
    if (!enabled || tripped || (uint32_t)(xTaskGetTickCount() - setpoint->timestamp) > M2T(SETPOINT_TIMEOUT_MS)) {
        if (enabled) tripped = 1;
        motors_off(control);
        return;
    }
    obs[0] = state->position.x - setpoint->position.x;
    obs[1] = state->position.y - setpoint->position.y;
    obs[2] = state->position.z - setpoint->position.z;
    quat_to_rot(&state->attitudeQuaternion, obs + 3);
    obs[12] = state->velocity.x - setpoint->velocity.x;
    obs[13] = state->velocity.y - setpoint->velocity.y;
    obs[14] = state->velocity.z - setpoint->velocity.z;
    obs[15] = sensors->gyro.x * DEG2RAD; /* the firmware's gyro is in deg/s */
    obs[16] = sensors->gyro.y * DEG2RAD;
    obs[17] = sensors->gyro.z * DEG2RAD;
    for (i = 0; i < 4; ++i) obs[18 + i] = rotor_estimate[i];

    ++n_steps;
    if (policy_step(obs, action) != 0) { /* non-finite input or output */
        ++n_fail;
        tripped = 1;
        motors_off(control);
        return;
    }
    control->controlMode = controlModeForce;
    for (i = 0; i < STABILIZER_NR_OF_MOTORS; ++i) {
        float a = action[i] < -1.0f ? -1.0f : (action[i] > 1.0f ? 1.0f : action[i]);
        rotor_estimate[i] += (a - rotor_estimate[i]) * (a > rotor_estimate[i] ? k_rising : k_falling);
        control->normalizedForces[i] = (a + 1.0f) * 0.5f;  /* PWM ratio 0..1 (powerDistributionForce) */
    }
}

PARAM_GROUP_START(robopolicy)
PARAM_ADD(PARAM_UINT8, enable, &enabled)
PARAM_GROUP_STOP(robopolicy)

LOG_GROUP_START(robopolicy)
LOG_ADD(LOG_UINT32, steps, &n_steps)
LOG_ADD(LOG_UINT32, fails, &n_fail)
LOG_ADD(LOG_UINT8, tripped, &tripped)
LOG_GROUP_STOP(robopolicy)
