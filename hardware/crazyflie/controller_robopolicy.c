/*
 * Out-of-tree Crazyflie controller that runs a robopolicy C-exported policy on board.
 *
 * The stabilizer calls controllerOutOfTree() at 1 kHz (RATE_MAIN_LOOP); the policy runs at the rate of
 * the demos it was trained on (POLICY_FPS from the generated policy.h: 500 Hz = every second call,
 * 100 Hz = every tenth) and writes 4 normalized motor commands in [-1, 1] that are mapped to PWM and
 * applied directly (control->controlMode = controlModeForce would need thrust in N, so this skeleton
 * uses controlModePWM, available in crazyflie-firmware >= 2023.11).
 *
 * Watchdog: if the setpoint (target position) is older than SETPOINT_TIMEOUT_MS, if the state is not
 * finite, or if policy_step() returns non-zero, the motors are cut (all zero) until the next reset.
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

#ifdef ROBOPOLICY_HOST_CHECK
/* Stand-ins for the firmware headers so the policy glue compiles without the firmware tree. */
#include <stdint.h>
#include <stdbool.h>
typedef struct { float x, y, z; } vec3_t;
typedef struct { float w, x, y, z; } quat_t;
typedef struct { vec3_t position; vec3_t velocity; quat_t attitudeQuaternion; uint32_t timestamp; } setpoint_t;
typedef struct { vec3_t position; vec3_t velocity; quat_t attitudeQuaternion; } state_t;
typedef struct { vec3_t gyro; } sensorData_t;
typedef struct { uint16_t motorPwm[4]; int controlMode; } control_t;
typedef uint32_t stabilizerStep_t;
#define controlModePWM 3
static uint32_t robopolicy_now_ms;
#define T2M(x) (x)
#define xTaskGetTickCount() (robopolicy_now_ms)
#else
#include "controller.h"
#include "stabilizer_types.h"
#include "FreeRTOS.h"
#include "task.h"
#include "log.h"
#include "param.h"
#endif

#define SETPOINT_TIMEOUT_MS 200u
#define DEG2RAD 0.017453292519943295f

#if POLICY_OBS_DIM != 22
#error "controller_robopolicy.c builds the 22-number observation of docs/quadrotor.md; re-export a matching policy"
#endif
#if POLICY_FPS <= 0 || 1000 % POLICY_FPS != 0
#error "the policy's control rate (POLICY_FPS) must divide the 1 kHz stabilizer loop; re-export a policy trained at 100, 200, 250, 500 or 1000 Hz"
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

static void quat_to_rot(const quat_t *q, float *r)
{
    const float w = q->w, x = q->x, y = q->y, z = q->z;
    r[0] = 1 - 2 * (y * y + z * z); r[1] = 2 * (x * y - w * z);     r[2] = 2 * (x * z + w * y);
    r[3] = 2 * (x * y + w * z);     r[4] = 1 - 2 * (x * x + z * z); r[5] = 2 * (y * z - w * x);
    r[6] = 2 * (x * z - w * y);     r[7] = 2 * (y * z + w * x);     r[8] = 1 - 2 * (x * x + y * y);
}

static void motors_off(control_t *control)
{
    int i;
    control->controlMode = controlModePWM;
    for (i = 0; i < 4; ++i) control->motorPwm[i] = 0;
}

void controllerOutOfTree(control_t *control, const setpoint_t *setpoint, const sensorData_t *sensors,
                         const state_t *state, const stabilizerStep_t tick)
{
    int i;
    if (tick % POLICY_PERIOD_TICKS != 0) return; /* keep the previous output between policy steps */
    if (!enabled || tripped || (uint32_t)(T2M(xTaskGetTickCount()) - setpoint->timestamp) > SETPOINT_TIMEOUT_MS) {
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
    control->controlMode = controlModePWM;
    for (i = 0; i < 4; ++i) {
        float a = action[i] < -1.0f ? -1.0f : (action[i] > 1.0f ? 1.0f : action[i]);
        rotor_estimate[i] += (a - rotor_estimate[i]) * (a > rotor_estimate[i] ? k_rising : k_falling);
        control->motorPwm[i] = (uint16_t)((a + 1.0f) * 0.5f * 65535.0f);
    }
}

#ifndef ROBOPOLICY_HOST_CHECK
PARAM_GROUP_START(robopolicy)
PARAM_ADD(PARAM_UINT8, enable, &enabled)
PARAM_GROUP_STOP(robopolicy)

LOG_GROUP_START(robopolicy)
LOG_ADD(LOG_UINT32, steps, &n_steps)
LOG_ADD(LOG_UINT32, fails, &n_fail)
LOG_ADD(LOG_UINT8, tripped, &tripped)
LOG_GROUP_STOP(robopolicy)
#else
void robopolicy_host_check_set(uint32_t now_ms, uint8_t en) { robopolicy_now_ms = now_ms; enabled = en; }
const float *robopolicy_host_check_obs(void) { return obs; }
uint8_t robopolicy_host_check_tripped(void) { return tripped; }
#endif
