/* robopolicy C export template (inlined into the generated policy.c of an MLP, after its forward()):
 * the chunk and the step in robot units, from the normalized chunk forward() returns. */
#include "policy.h"

static const float *forward(const float *obs);

int policy_chunk(const float *obs, float *chunk)
{
    int i, k;
    const float *z = forward(obs);
    if (!z) return -1;
    for (k = 0; k < POLICY_HORIZON; ++k)
        for (i = 0; i < POLICY_ACTION_DIM; ++i)
            chunk[k * POLICY_ACTION_DIM + i] = z[k * POLICY_ACTION_DIM + i] * ACT_SCALE[i] + ACT_CENTER[i];
    return all_finite(chunk, POLICY_HORIZON * POLICY_ACTION_DIM) ? 0 : -1;
}

int policy_step(const float *obs, float *action)
{
    int i;
    const float *z = forward(obs);
    if (!z) return -1;
    z += (POLICY_N_OBS_STEPS - 1) * POLICY_ACTION_DIM;
    for (i = 0; i < POLICY_ACTION_DIM; ++i) action[i] = z[i] * ACT_SCALE[i] + ACT_CENTER[i];
    return all_finite(action, POLICY_ACTION_DIM) ? 0 : -1;
}

void policy_reset(void) { }
