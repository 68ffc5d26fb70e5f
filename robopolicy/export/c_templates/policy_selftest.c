/* robopolicy C export template (inlined into the generated policy_selftest.c after the vectors): runs every
 * vector through SELFTEST_CALL(n) (writes `action`) and counts outputs off by more than SELFTEST_TOL relative
 * to (1 + |expected|). */
#include <math.h>
#include <stdint.h>
#include "policy.h"

int policy_selftest(void)
{
    int bad = 0;
#if POLICY_N_SELFTEST > 0
    int n, i;
    float action[POLICY_ACTION_DIM];
    for (n = 0; n < POLICY_N_SELFTEST; ++n) {
        if (SELFTEST_CALL(n) != 0) { bad += POLICY_ACTION_DIM; continue; }
        for (i = 0; i < POLICY_ACTION_DIM; ++i) {
            float e = SELFTEST_ACTION[n * POLICY_ACTION_DIM + i];
            if (!(fabsf(action[i] - e) <= SELFTEST_TOL * (1.0f + fabsf(e)))) ++bad;
        }
    }
#endif
    return bad;
}
