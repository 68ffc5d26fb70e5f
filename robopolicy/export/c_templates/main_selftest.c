/* Exit code = self-test verdict (0 = pass). Runs on the host or under QEMU with semihosting. */
#include <stdio.h>
#include "policy.h"

int main(void)
{
    int bad = policy_selftest();
    printf("policy_selftest: %s (%d mismatches)\n", bad ? "FAIL" : "PASS", bad);
    return bad ? 1 : 0;
}
