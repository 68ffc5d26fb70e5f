/* robopolicy C export template (inlined into the generated policy.h after its #defines): the C API. */
#include <stdint.h>
#ifdef __cplusplus
extern "C" {
#endif

/* Returns 0, or -1 when an input or output is not finite. Not reentrant (static buffers). */
int policy_step(const float *obs, float *action);
/* Start of an episode: forget any state policy_step keeps between calls. */
void policy_reset(void);
#if defined(POLICY_FAMILY_SFP)
/* Streaming flow: one action from an explicit start (robot units; NULL = from the observation) and
 * the seed of its noise. policy_step chains it: start = the action it returned last, seed advancing. */
int policy_sfp_step(const float *obs, const float *start, uint32_t seed, float *action);
void policy_set_seed(uint32_t seed);
#elif defined(POLICY_FAMILY_FLOW)
/* Flow: the chunk (POLICY_HORIZON x POLICY_ACTION_DIM) or its action for the latest observation, from
 * Gaussian noise drawn from seed. policy_chunk and policy_step use the internal seed, advancing each call. */
int policy_flow_chunk(const float *obs, uint32_t seed, float *chunk);
int policy_flow_step(const float *obs, uint32_t seed, float *action);
int policy_chunk(const float *obs, float *chunk);
void policy_set_seed(uint32_t seed);
#else
/* The whole chunk, POLICY_HORIZON x POLICY_ACTION_DIM, robot units. */
int policy_chunk(const float *obs, float *chunk);
#endif
/* Runs the generated test vectors; returns the number of mismatching outputs (0 = pass). */
int policy_selftest(void);

#ifdef __cplusplus
}
#endif
