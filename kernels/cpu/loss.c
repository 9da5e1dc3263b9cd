/* Distillation losses: temperature-scaled KL(teacher || student) on logits, MSE on hidden states. */
#include "kernels/kernels.h"

#include <math.h>

/* log-sum-exp of x[n] * inv_temp, in double */
static double scaled_lse(const float *x, int n, double inv_temp) {
    double m = (double)x[0] * inv_temp;
    for (int i = 1; i < n; i++)
        if ((double)x[i] * inv_temp > m) m = (double)x[i] * inv_temp;
    double s = 0.0;
    for (int i = 0; i < n; i++) s += exp((double)x[i] * inv_temp - m);
    return m + log(s);
}

double kv_distill_kl(float *dstudent, const float *student, const float *teacher, int T, int V,
                     float temp, float grad_scale) {
    const double inv_temp = 1.0 / (double)temp, tt = (double)temp * temp;
    const double gscale = (double)grad_scale * temp / T; /* d(temp^2 KL / T)/dz = temp (q - p) / T */
    double total = 0.0;
    for (int t = 0; t < T; t++) {
        const float *zs = student + (size_t)t * V, *zt = teacher + (size_t)t * V;
        const double lse_s = scaled_lse(zs, V, inv_temp);
        const double lse_t = scaled_lse(zt, V, inv_temp);
        double kl = 0.0;
        float *g = dstudent ? dstudent + (size_t)t * V : NULL;
        for (int i = 0; i < V; i++) {
            const double log_p = (double)zt[i] * inv_temp - lse_t; /* teacher */
            const double log_q = (double)zs[i] * inv_temp - lse_s; /* student */
            const double p = exp(log_p);
            kl += p * (log_p - log_q);
            if (g) g[i] += (float)(gscale * (exp(log_q) - p));
        }
        total += tt * kl;
    }
    return total / T;
}

double kv_mse(float *dstudent, const float *student, const float *teacher, size_t n,
              float grad_scale) {
    double sum = 0.0;
    const double gscale = 2.0 * (double)grad_scale / (double)n;
    for (size_t i = 0; i < n; i++) {
        const double d = (double)student[i] - (double)teacher[i];
        sum += d * d;
        if (dstudent) dstudent[i] += (float)(gscale * d);
    }
    return sum / (double)n;
}
