/* bench_hist.c: the log-linear histogram of bench_hist.h. */
#include "bench_hist.h"

#include <math.h>
#include <string.h>

void cb_hist_init(cb_hist_t *h)
{
    memset(h, 0, sizeof(*h));
    h->min = UINT64_MAX;
}

unsigned cb_hist_index(uint64_t v)
{
    if (v > CB_HIST_MAX_VALUE)
        v = CB_HIST_MAX_VALUE;
    if (v < 2 * CB_HIST_SUB)
        return (unsigned)v;
    unsigned e = 63u - (unsigned)__builtin_clzll(v); /* >= SUB_BITS + 1 */
    unsigned shift = e - CB_HIST_SUB_BITS;
    return 2 * CB_HIST_SUB + (e - CB_HIST_SUB_BITS - 1) * CB_HIST_SUB +
           (unsigned)((v >> shift) - CB_HIST_SUB);
}

uint64_t cb_hist_upper(unsigned idx)
{
    if (idx < 2 * CB_HIST_SUB)
        return idx;
    unsigned k = idx - 2 * CB_HIST_SUB;
    unsigned e = k / CB_HIST_SUB + CB_HIST_SUB_BITS + 1;
    uint64_t sub = k % CB_HIST_SUB + CB_HIST_SUB;
    unsigned shift = e - CB_HIST_SUB_BITS;
    return (sub << shift) + (UINT64_C(1) << shift) - 1;
}

void cb_hist_record(cb_hist_t *h, uint64_t v)
{
    if (v > CB_HIST_MAX_VALUE)
        v = CB_HIST_MAX_VALUE;
    h->b[cb_hist_index(v)]++;
    h->count++;
    if (v < h->min)
        h->min = v;
    if (v > h->max)
        h->max = v;
    double d = (double)v;
    h->sum += d;
    h->sumsq += d * d;
}

void cb_hist_merge(cb_hist_t *dst, const cb_hist_t *src)
{
    for (unsigned i = 0; i < CB_HIST_BUCKETS; i++)
        dst->b[i] += src->b[i];
    dst->count += src->count;
    dst->sum += src->sum;
    dst->sumsq += src->sumsq;
    if (src->min < dst->min)
        dst->min = src->min;
    if (src->max > dst->max)
        dst->max = src->max;
}

uint64_t cb_hist_quantile(const cb_hist_t *h, double q)
{
    if (h->count == 0)
        return 0;
    if (q <= 0)
        return h->min;
    if (q >= 1)
        return h->max;
    uint64_t rank = (uint64_t)ceil(q * (double)h->count);
    if (rank < 1)
        rank = 1;
    uint64_t seen = 0;
    for (unsigned i = 0; i < CB_HIST_BUCKETS; i++) {
        seen += h->b[i];
        if (seen >= rank) {
            uint64_t v = cb_hist_upper(i);
            if (v > h->max)
                v = h->max;
            if (v < h->min)
                v = h->min;
            return v;
        }
    }
    return h->max;
}

double cb_hist_mean(const cb_hist_t *h)
{
    return h->count ? h->sum / (double)h->count : 0.0;
}

double cb_hist_stdev(const cb_hist_t *h)
{
    if (h->count < 2)
        return 0.0;
    double n = (double)h->count, m = h->sum / n;
    double var = h->sumsq / n - m * m;
    return var > 0 ? sqrt(var) : 0.0;
}
