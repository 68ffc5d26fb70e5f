/* Host helper: reads POLICY_OBS_DIM floats per observation on stdin (SFP: then POLICY_ACTION_DIM
 * start floats and an unsigned seed; flow: then an unsigned seed), prints the action (%.9g), or "nan" when
 * the policy refuses. */
#include <stdio.h>
#include "policy.h"

int main(void)
{
    float obs[POLICY_OBS_DIM], action[POLICY_ACTION_DIM];
    int i, ok;
    for (;;) {
        for (i = 0; i < POLICY_OBS_DIM; ++i)
            if (scanf("%f", &obs[i]) != 1) return 0;
#ifdef POLICY_FAMILY_SFP
        {
            float start[POLICY_ACTION_DIM];
            unsigned long seed;
            for (i = 0; i < POLICY_ACTION_DIM; ++i)
                if (scanf("%f", &start[i]) != 1) return 0;
            if (scanf("%lu", &seed) != 1) return 0;
            ok = policy_sfp_step(obs, start, (uint32_t)seed, action);
        }
#elif defined(POLICY_FAMILY_FLOW)
        {
            unsigned long seed;
            if (scanf("%lu", &seed) != 1) return 0;
            ok = policy_flow_step(obs, (uint32_t)seed, action);
        }
#else
        ok = policy_step(obs, action);
#endif
        if (ok != 0) { printf("nan\n"); continue; }
        for (i = 0; i < POLICY_ACTION_DIM; ++i) printf(i ? " %.9g" : "%.9g", (double)action[i]);
        printf("\n");
    }
}
