/* Distillation losses: temperature-scaled KL(teacher || student) on logits, next-token
 * cross-entropy on the data, MSE on hidden states. */
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

double kv_distill_kl(float *dstudent, const float *student, const float *teacher,
                     const float *weights, int T, int V, float temp, float grad_scale) {
    const double inv_temp = 1.0 / (double)temp, tt = (double)temp * temp;
    const double gscale =
        (double)grad_scale * temp / T; /* d(temp^2 KL / T)/dz = temp (q - p) / T */
    double total = 0.0;
    for (int t = 0; t < T; t++) {
        const double w = weights ? (double)weights[t] : 1.0;
        if (w == 0.0) continue; /* no loss, no gradient */
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
            if (g && weights) g[i] += (float)(gscale * w * (exp(log_q) - p));
            else if (g) g[i] += (float)(gscale * (exp(log_q) - p));
        }
        total += weights ? w * tt * kl : tt * kl;
    }
    return total / T;
}

double kv_next_token_ce(float *dlogits, const float *logits, const int32_t *tokens, int B, int T,
                        int V, float grad_scale) {
    const long n_pred = (long)B * (T - 1);
    if (n_pred <= 0) return 0.0;
    const double gscale = (double)grad_scale / (double)n_pred;
    double total = 0.0;
    for (int b = 0; b < B; b++)
        for (int t = 0; t + 1 < T; t++) {
            const size_t row = (size_t)b * T + t;
            const float *z = logits + row * V;
            const int target = tokens[row + 1];
            const double ce = kv_cross_entropy(z, V, target);
            total += ce;
            if (!dlogits) continue;
            const double lse = ce + (double)z[target];
            float *g = dlogits + row * V;
            for (int i = 0; i < V; i++) g[i] += (float)(gscale * exp((double)z[i] - lse));
            g[target] -= (float)gscale;
        }
    return total / (double)n_pred;
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
