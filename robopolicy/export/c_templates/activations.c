/* robopolicy C export template (inlined into the generated policy.c): the activations, in place.
 * static inline, so the unused ones cost nothing and raise no warning. */
#include <math.h>

static inline void act_relu(float *x, int n) { int i; for (i = 0; i < n; ++i) if (x[i] < 0.0f) x[i] = 0.0f; }
static inline void act_tanh(float *x, int n) { int i; for (i = 0; i < n; ++i) x[i] = tanhf(x[i]); }
static inline void act_elu(float *x, int n) { int i; for (i = 0; i < n; ++i) if (x[i] < 0.0f) x[i] = expm1f(x[i]); }
