/* Firmware-in-the-loop harness: the on-board controller (controller_robopolicy.c, unchanged, with the generated
 * policy) and the firmware's own power distribution for controlModeForce (powerDistributionForce, recorded
 * verbatim from the pinned commit in firmware_types/), built for the host and stepped by bench/crazyflie_fil.py
 * inside the L2F simulator.
 *
 * The firmware types come from firmware_types/ (or from a firmware tree put first on the include path); the
 * FreeRTOS tick counter is this file's (1 tick = 1 ms, as on the Crazyflie).
 *
 * One controller instance flies n drones: its per-drone state (the rotor-state estimate and the watchdog latch)
 * is swapped in and out around each call, so a batch of simulated drones shares one compiled controller. */
#include "controller_robopolicy.c"
#include "power_distribution_force.c.inc"

static uint32_t now_ticks;
TickType_t xTaskGetTickCount(void) { return now_ticks; }

#define FIL_MAX_DRONES 4096
static float saved_estimate[FIL_MAX_DRONES][POLICY_ACTION_DIM];
static uint8_t saved_tripped[FIL_MAX_DRONES];

/* Reset drones (mask[i] != 0) as controllerOutOfTreeInit() would, with robopolicy.enable = enable. */
int fil_reset(int n, const uint8_t *mask, int enable)
{
    int i, k;
    uint8_t *en = host_entry_find(host_param_robopolicy, "enable");
    if (n > FIL_MAX_DRONES || !en) return -1;
    controllerOutOfTreeInit();
    *en = (uint8_t)enable;
    for (i = 0; i < n; ++i) {
        if (mask && !mask[i]) continue;
        for (k = 0; k < POLICY_ACTION_DIM; ++k) saved_estimate[i][k] = rotor_estimate[k];
        saved_tripped[i] = 0;
    }
    return controllerOutOfTreeTest() ? 0 : -2; /* the arming self-test */
}

/* One simulator step of dt_ms milliseconds = dt_ms stabilizer ticks at 1 kHz, for n drones.
 * state: n x 13 in the firmware's units and frames = position (m, world), velocity (m/s, world),
 * quaternion (x, y, z, w; world-from-body), gyro (deg/s, body); setpoint: n x 6 = position, velocity;
 * setpoint_ms: the tick at which the commander last stamped the setpoint.
 * Out: pwm (n x 4, the motor PWM ratio 0..65535 from powerDistributionForce), estimate (n x 4) and
 * tripped (n) of the controller after the step. */
int fil_step(int n, uint32_t tick_ms, uint32_t dt_ms, const float *state, const float *setpoint_in,
             uint32_t setpoint_ms, int32_t *pwm, float *estimate, uint8_t *tripped_out)
{
    int i, k;
    uint32_t t;
    if (n > FIL_MAX_DRONES) return -1;
    for (i = 0; i < n; ++i) {
        const float *s = state + 13 * i, *p = setpoint_in + 6 * i;
        control_t control;
        setpoint_t setpoint;
        sensorData_t sensors;
        state_t st;
        motors_thrust_uncapped_t thrust;
        memset(&control, 0, sizeof control); memset(&setpoint, 0, sizeof setpoint);
        memset(&sensors, 0, sizeof sensors); memset(&st, 0, sizeof st);
        st.position.x = s[0]; st.position.y = s[1]; st.position.z = s[2];
        st.velocity.x = s[3]; st.velocity.y = s[4]; st.velocity.z = s[5];
        st.attitudeQuaternion.x = s[6]; st.attitudeQuaternion.y = s[7];
        st.attitudeQuaternion.z = s[8]; st.attitudeQuaternion.w = s[9];
        sensors.gyro.x = s[10]; sensors.gyro.y = s[11]; sensors.gyro.z = s[12];
        setpoint.position.x = p[0]; setpoint.position.y = p[1]; setpoint.position.z = p[2];
        setpoint.velocity.x = p[3]; setpoint.velocity.y = p[4]; setpoint.velocity.z = p[5];
        setpoint.timestamp = setpoint_ms;
        for (k = 0; k < POLICY_ACTION_DIM; ++k) rotor_estimate[k] = saved_estimate[i][k];
        tripped = saved_tripped[i];
        for (t = 0; t < dt_ms; ++t) {
            now_ticks = tick_ms + t;
            controllerOutOfTree(&control, &setpoint, &sensors, &st, tick_ms + t);
        }
        powerDistributionForce(&control, &thrust);
        for (k = 0; k < STABILIZER_NR_OF_MOTORS; ++k) pwm[4 * i + k] = thrust.list[k];
        for (k = 0; k < POLICY_ACTION_DIM; ++k) estimate[4 * i + k] = saved_estimate[i][k] = rotor_estimate[k];
        tripped_out[i] = saved_tripped[i] = tripped;
    }
    return 0;
}
