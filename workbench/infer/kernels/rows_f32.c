/* y = x · wᵀ (+ bias) for a few rows of float32 x against a float32 weight: the float32 twin of rows_bf16.c.

   For 1–8 rows MKL's float32 product read SmolLM2-135M's 405 MiB of layer weights at 6–14 GB/s on a 2-core AMD
   EPYC (34.7 ms for one row, 51.7 ms for two); reading each weight row once for all rows took 17.3 and 15.6 ms.
   Written with GCC's vector extensions, so -march=native makes it AVX-512, AVX2 or NEON code as the CPU has.
   Each output is a float32 sum in another order than MKL's (differences of a few float32 ulps). */
#include <stdint.h>
#include <string.h>

#define MAX_ROWS 8

typedef float vec16 __attribute__((vector_size(64)));

static inline vec16 load16(const float *p) {
    vec16 v;
    memcpy(&v, p, sizeof v);
    return v;
}

static inline float sum16(vec16 v) {
    float s = 0.0f;
    for (int j = 0; j < 16; j++) s += v[j];
    return s;
}

/* One kernel per row count, so the accumulators stay in registers; a group of weights with one input size (q, k
   and v; gate and up) gives their outputs side by side in y, as in rows_bf16.c. */
#define ROWS_KERNEL(R)                                                                                              \
    static void rows_##R(const float *x, const float *const *ws, const float *const *biases, const int *ends,       \
                         int count, float *y, int K, int N, int threads) {                                          \
        const int body = K - K % 16;                                                                                \
        _Pragma("omp parallel for num_threads(threads) schedule(static)")                                           \
        for (int n = 0; n < N; n++) {                                                                               \
            int s = 0;                                                                                              \
            while (s < count - 1 && n >= ends[s]) s++;                                                              \
            const int row = n - (s ? ends[s - 1] : 0);                                                              \
            const float *wn = ws[s] + (size_t)row * K;                                                              \
            vec16 acc[R];                                                                                           \
            for (int m = 0; m < R; m++) acc[m] = (vec16){0};                                                        \
            for (int k = 0; k < body; k += 16) {                                                                    \
                const vec16 wv = load16(wn + k);                                                                    \
                for (int m = 0; m < R; m++) acc[m] += wv * load16(x + (size_t)m * K + k);                           \
            }                                                                                                       \
            const float b = biases[s] ? biases[s][row] : 0.0f;                                                      \
            for (int m = 0; m < R; m++) {                                                                           \
                float total = sum16(acc[m]);                                                                        \
                for (int k = body; k < K; k++) total += wn[k] * x[(size_t)m * K + k];                               \
                y[(size_t)m * N + n] = total + b;                                                                   \
            }                                                                                                       \
        }                                                                                                           \
    }

ROWS_KERNEL(1) ROWS_KERNEL(2) ROWS_KERNEL(3) ROWS_KERNEL(4) ROWS_KERNEL(5) ROWS_KERNEL(6) ROWS_KERNEL(7) ROWS_KERNEL(8)
typedef void (*rows_fn)(const float *, const float *const *, const float *const *, const int *, int, float *, int, int,
                        int);
static const rows_fn KERNELS[MAX_ROWS] = {rows_1, rows_2, rows_3, rows_4, rows_5, rows_6, rows_7, rows_8};

int rows_max(void) { return MAX_ROWS; }

/* As rows_linear in rows_bf16.c, for contiguous float32 tensors. */
int rows_linear(const float *x, const float *const *ws, const float *const *biases, const int *ends, int count,
                float *y, int rows, int K, int threads) {
    if (count < 1 || K < 1 || rows < 1 || rows > MAX_ROWS) return -1;
    KERNELS[rows - 1](x, ws, biases, ends, count, y, K, ends[count - 1], threads);
    return 0;
}
