/* bench_hist.h: a fixed log-linear latency histogram for crunch-bench and the
 * micro-benchmarks of bench/ (HdrHistogram's layout, fixed range, no
 * allocation).
 *
 * Values are integers (crunch-bench records microseconds). Values below 256
 * have a bucket each (exact); above, every power of two [2^e, 2^(e+1)) is cut
 * into 128 equal buckets, so a bucket is at most 1/128 (0.78 %) of its lower
 * bound wide. The range ends at 2^40 - 1 (12.7 days in µs); larger values are
 * recorded as that. One histogram is 4352 counters (34 KiB): one per thread,
 * merged at the end.
 *
 * Quantiles are the upper end of the bucket holding the rank ceil(q * count),
 * capped at the exact maximum: never below the true quantile, at most 0.78 %
 * above it, never above the max (the same convention as crunchd's Stats). */
#ifndef CB_HIST_H
#define CB_HIST_H

#include <stdint.h>

#define CB_HIST_SUB_BITS  7
#define CB_HIST_SUB       (1u << CB_HIST_SUB_BITS) /* buckets per power of two */
#define CB_HIST_MAX_EXP   40                       /* values < 2^40 */
#define CB_HIST_MAX_VALUE ((UINT64_C(1) << CB_HIST_MAX_EXP) - 1)
#define CB_HIST_BUCKETS                                                                  \
    (2 * CB_HIST_SUB + (CB_HIST_MAX_EXP - CB_HIST_SUB_BITS - 1) * CB_HIST_SUB)

typedef struct {
    uint64_t count;
    uint64_t min; /* UINT64_MAX while count is 0 */
    uint64_t max;
    double sum;   /* of the values recorded (exact up to 2^53) */
    double sumsq; /* of their squares, for the standard deviation */
    uint64_t b[CB_HIST_BUCKETS];
} cb_hist_t;

void cb_hist_init(cb_hist_t *h);
void cb_hist_record(cb_hist_t *h, uint64_t v);
/* dst += src */
void cb_hist_merge(cb_hist_t *dst, const cb_hist_t *src);
/* q in [0, 1]; 0 while the histogram is empty. */
uint64_t cb_hist_quantile(const cb_hist_t *h, double q);
double cb_hist_mean(const cb_hist_t *h);
double cb_hist_stdev(const cb_hist_t *h);

/* The bucket of a value and the largest value of a bucket (for tests). */
unsigned cb_hist_index(uint64_t v);
uint64_t cb_hist_upper(unsigned idx);

#endif
