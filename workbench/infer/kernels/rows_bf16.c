/* y = x · wᵀ (+ bias) for a few rows of bfloat16 x against a bfloat16 weight, as a decode step needs it.

   PyTorch's CPU kernels are slow exactly there: for 2–8 rows oneDNN and PyTorch's own kernel cost 1.5–5.5x one row
   (they are compute-bound at these shapes), while the weight — the bytes that bound a decode step — is the same.
   Here each weight row is loaded once and multiplied into every input row with AVX512-BF16's dot-product
   instruction (pairs of bfloat16 products summed in float32), so 1–3 rows cost about one row. Each output is the
   float32 sum rounded once to bfloat16 (round to nearest even), the bias added in float32 before that rounding.
   Built by workbench/infer/cpu_kernel.py with -march=native; on a CPU without AVX512-BF16 it does not compile and
   the caller keeps PyTorch's kernels. */
#include <stdint.h>
#include <string.h>
#include <immintrin.h>

#if !defined(__AVX512BF16__) || !defined(__AVX512BW__)
#error "this CPU has no AVX512-BF16"
#endif

#define MAX_ROWS 8

static inline float bf16_to_f32(uint16_t h) { uint32_t u = (uint32_t)h << 16; float f; memcpy(&f, &u, 4); return f; }

static inline uint16_t f32_to_bf16(float f) {
    uint32_t u;
    memcpy(&u, &f, 4);
    if ((u & 0x7fffffffu) > 0x7f800000u) return (uint16_t)((u >> 16) | 0x40); /* NaN stays a (quiet) NaN */
    u += 0x7fffu + ((u >> 16) & 1u);
    return (uint16_t)(u >> 16);
}

/* One kernel per row count, so the accumulators stay in registers. The weight may be a group of weights with the
   same input size (q, k and v; gate and up): their outputs side by side in y, as if the weights were one. */
#define ROWS_KERNEL(R)                                                                                              \
    static void rows_##R(const uint16_t *x, const uint16_t *const *ws, const uint16_t *const *biases,               \
                         const int *ends, int count, uint16_t *y, int K, int N, int threads) {                      \
        const int body = K - K % 32;                                                                                \
        const __mmask32 tail = (K % 32) ? (__mmask32)((1u << (K % 32)) - 1) : 0;                                    \
        _Pragma("omp parallel for num_threads(threads) schedule(static)")                                           \
        for (int n = 0; n < N; n++) {                                                                               \
            int s = 0;                                                                                              \
            while (s < count - 1 && n >= ends[s]) s++;                                                              \
            const int row = n - (s ? ends[s - 1] : 0);                                                              \
            const uint16_t *wn = ws[s] + (size_t)row * K;                                                           \
            __m512 acc[R];                                                                                          \
            for (int m = 0; m < R; m++) acc[m] = _mm512_setzero_ps();                                               \
            for (int k = 0; k < body; k += 32) {                                                                    \
                __m512bh wv = (__m512bh)_mm512_loadu_si512(wn + k);                                                 \
                for (int m = 0; m < R; m++)                                                                         \
                    acc[m] = _mm512_dpbf16_ps(acc[m], wv, (__m512bh)_mm512_loadu_si512(x + (size_t)m * K + k));     \
            }                                                                                                       \
            if (tail) {                                                                                             \
                __m512bh wv = (__m512bh)_mm512_maskz_loadu_epi16(tail, wn + body);                                  \
                for (int m = 0; m < R; m++)                                                                         \
                    acc[m] = _mm512_dpbf16_ps(                                                                      \
                        acc[m], wv, (__m512bh)_mm512_maskz_loadu_epi16(tail, x + (size_t)m * K + body));           \
            }                                                                                                       \
            const float b = biases[s] ? bf16_to_f32(biases[s][row]) : 0.0f;                                         \
            for (int m = 0; m < R; m++) y[(size_t)m * N + n] = f32_to_bf16(_mm512_reduce_add_ps(acc[m]) + b);       \
        }                                                                                                           \
    }

ROWS_KERNEL(1) ROWS_KERNEL(2) ROWS_KERNEL(3) ROWS_KERNEL(4) ROWS_KERNEL(5) ROWS_KERNEL(6) ROWS_KERNEL(7) ROWS_KERNEL(8)
typedef void (*rows_fn)(const uint16_t *, const uint16_t *const *, const uint16_t *const *, const int *, int,
                        uint16_t *, int, int, int);
static const rows_fn KERNELS[MAX_ROWS] = {rows_1, rows_2, rows_3, rows_4, rows_5, rows_6, rows_7, rows_8};

int rows_max(void) { return MAX_ROWS; }

/* x [rows, K]; ws[i] [ends[i] - ends[i-1], K] and biases[i] (or NULL) for i < count; y [rows, ends[count-1]]: all
   contiguous bfloat16. Returns 0, or -1 for a call out of range (the caller checks; this keeps a wrong call from
   writing out of bounds). */
int rows_linear(const uint16_t *x, const uint16_t *const *ws, const uint16_t *const *biases, const int *ends,
                     int count, uint16_t *y, int rows, int K, int threads) {
    if (count < 1 || K < 1 || rows < 1 || rows > MAX_ROWS) return -1;
    KERNELS[rows - 1](x, ws, biases, ends, count, y, K, ends[count - 1], threads);
    return 0;
}
