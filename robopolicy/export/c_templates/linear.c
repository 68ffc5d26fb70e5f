/* robopolicy C export template (inlined into the generated policy.c): the matrix-vector product every policy
 * family uses, y = W x + b, W row-major (rows x cols); with POLICY_INT8, W = diag(s) q with int8 q.
 * Four rows at a time share each load of x; every row still sums its products in column order (the same
 * order as a plain loop). With a hardware FMA (Cortex-M4F: __ARM_FEATURE_FMA) each product-sum is one fused
 * vfma. Compiles on its own: cc -c -DPOLICY_INT8=0 (or 1) linear.c */
#include <math.h>
#include <stdint.h>
#ifndef POLICY_INT8
#error "POLICY_INT8 must be defined (policy.h)"
#endif
#if POLICY_INT8
typedef int8_t policy_weight_t;
#define ROW_SCALE_ARG const float *s,
#define ROW_SCALED(acc, i) ((acc) * s[(i)])
#else
typedef float policy_weight_t;
#define ROW_SCALE_ARG
#define ROW_SCALED(acc, i) (acc)
#endif
#define WEIGHT(e) ((float)(e))
#if defined(__ARM_FEATURE_FMA)
#define MAC(acc, w, x) ((acc) = fmaf((w), (x), (acc)))
#else
#define MAC(acc, w, x) ((acc) += (w) * (x))
#endif

static void linear(const policy_weight_t *w, ROW_SCALE_ARG const float *b, const float *x, float *y, int rows, int cols)
{
    /* Explicit loop bounds and a running row pointer keep gcc's loop analysis exact (no false
     * -Waggressive-loop-optimizations when it specializes this function for one layer). */
    const int full = rows - rows % 4;
    const policy_weight_t *wr = w;
    int i, j;
    for (i = 0; i < full; i += 4, wr += 4 * cols) {
        const policy_weight_t *w0 = wr, *w1 = w0 + cols, *w2 = w1 + cols, *w3 = w2 + cols;
        float a0 = 0.0f, a1 = 0.0f, a2 = 0.0f, a3 = 0.0f;
        for (j = 0; j < cols; ++j) {
            const float xj = x[j];
            MAC(a0, WEIGHT(w0[j]), xj);
            MAC(a1, WEIGHT(w1[j]), xj);
            MAC(a2, WEIGHT(w2[j]), xj);
            MAC(a3, WEIGHT(w3[j]), xj);
        }
        y[i] = ROW_SCALED(a0, i) + b[i];
        y[i + 1] = ROW_SCALED(a1, i + 1) + b[i + 1];
        y[i + 2] = ROW_SCALED(a2, i + 2) + b[i + 2];
        y[i + 3] = ROW_SCALED(a3, i + 3) + b[i + 3];
    }
    for (i = full; i < rows; ++i, wr += cols) {
        float acc = 0.0f;
        for (j = 0; j < cols; ++j) MAC(acc, WEIGHT(wr[j]), x[j]);
        y[i] = ROW_SCALED(acc, i) + b[i];
    }
}

static int all_finite(const float *x, int n) { int i; for (i = 0; i < n; ++i) if (!isfinite(x[i])) return 0; return 1; }
