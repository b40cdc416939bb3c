/* The small operations of a decode step around its projections, each as one call: a residual add with the RMSNorm
   that follows it, each row's LoRA delta, and rotary embedding with the write of k and v into the KV cache.

   With the rows kernels doing a step's products, what was left of a step of SmolLM2-135M on a 2-core AMD EPYC was
   mostly PyTorch's dispatch of ~25 small operations per layer (5.3 of 15.3 ms for one row) and, for one adapter
   row, ~3.7 ms of small LoRA products. Each function here replaces several of those operations and rounds where PyTorch
   rounds: in bfloat16 every intermediate that PyTorch keeps as a bfloat16 tensor is rounded to bfloat16 here too
   (round to nearest even), and sums run in float32. Built without FMA contraction (-ffp-contract=off), so an
   elementwise result is the one PyTorch's separate multiply and add give. C with GCC's vector extensions (any
   x86-64 vector unit; no AVX512-BF16 needed), built by workbench/infer/cpu_kernel.py. */
#include <math.h>
#include <omp.h>
#include <stdint.h>
#include <string.h>

typedef uint16_t bf16;

#define MAX_RANK 512 /* the largest LoRA rank (summed over a group of projections) lora_delta takes */

static inline float load_bf16(bf16 h) { uint32_t u = (uint32_t)h << 16; float f; memcpy(&f, &u, 4); return f; }

static inline bf16 store_bf16(float f) {
    uint32_t u;
    memcpy(&u, &f, 4);
    if ((u & 0x7fffffffu) > 0x7f800000u) return (bf16)((u >> 16) | 0x40); /* NaN stays a (quiet) NaN */
    u += 0x7fffu + ((u >> 16) & 1u);
    return (bf16)(u >> 16);
}

static inline float round_bf16(float f) { return load_bf16(store_bf16(f)); }
static inline float load_f32(float f) { return f; }
static inline float store_f32(float f) { return f; }
static inline float round_f32(float f) { return f; }

/* Sixteen lanes (GCC vector extensions: AVX-512, or two AVX2 halves) for the dot products of the LoRA delta. */
typedef float vf16 __attribute__((vector_size(64)));
typedef uint32_t vu16 __attribute__((vector_size(64)));
typedef uint16_t vh16 __attribute__((vector_size(32)));

static inline vf16 vload_f32(const float *p) { vf16 v; memcpy(&v, p, sizeof v); return v; }
static inline void vstore_f32(float *p, vf16 v) { memcpy(p, &v, sizeof v); }
static inline vf16 vround_f32(vf16 v) { return v; }

static inline vf16 vload_bf16(const bf16 *p) {
    vh16 h;
    memcpy(&h, p, sizeof h);
    vu16 u = __builtin_convertvector(h, vu16) << 16;
    vf16 f;
    memcpy(&f, &u, sizeof f);
    return f;
}

static inline vu16 vbits_bf16(vf16 f) { /* store_bf16's rounding, sixteen lanes at once (NaN: quiet NaN) */
    vu16 u;
    memcpy(&u, &f, sizeof u);
    const vu16 nan = (vu16)((u & 0x7fffffffu) > 0x7f800000u);
    return (nan & ((u >> 16) | 0x40u)) | (~nan & ((u + 0x7fffu + ((u >> 16) & 1u)) >> 16));
}

static inline void vstore_bf16(bf16 *p, vf16 f) {
    vh16 h = __builtin_convertvector(vbits_bf16(f), vh16);
    memcpy(p, &h, sizeof h);
}

static inline vf16 vround_bf16(vf16 f) {
    vu16 u = vbits_bf16(f) << 16;
    memcpy(&f, &u, sizeof f);
    return f;
}

typedef int32_t vi16 __attribute__((vector_size(64)));

static inline float vsum(vf16 v) { /* a tree of adds, not 15 dependent ones */
    typedef float vf8 __attribute__((vector_size(32)));
    typedef float vf4 __attribute__((vector_size(16)));
    const vf8 a = __builtin_shufflevector(v, v, 0, 1, 2, 3, 4, 5, 6, 7) +
                  __builtin_shufflevector(v, v, 8, 9, 10, 11, 12, 13, 14, 15);
    const vf4 b = __builtin_shufflevector(a, a, 0, 1, 2, 3) + __builtin_shufflevector(a, a, 4, 5, 6, 7);
    return (b[0] + b[2]) + (b[1] + b[3]);
}

/* e^x for x <= 0 (softmax after subtracting the maximum), sixteen lanes: Cephes' expf polynomial after reducing by
   ln 2 (within 2 ulp of the exact value); below -87.3 (under 1e-38) it is 0. */
static inline vf16 vexp_nonpositive(vf16 x) {
    const vi16 tiny = (vi16)(x < -87.3f);
    const vf16 n = (x * 1.44269504f + 12582912.0f) - 12582912.0f; /* round(x / ln 2) */
    const vf16 r = (x - n * 0.693359375f) - n * -2.12194440e-4f;
    vf16 p = (vf16){0} + 1.9875691500e-4f;
    p = p * r + 1.3981999507e-3f;
    p = p * r + 8.3334519073e-3f;
    p = p * r + 4.1665795894e-2f;
    p = p * r + 1.6666665459e-1f;
    p = p * r + 5.0000001201e-1f;
    p = (p * r) * r + r + 1.0f;
    const vi16 scale = (__builtin_convertvector(n, vi16) + 127) << 23;
    const vf16 e = p * (vf16)(~tiny & scale);
    return (vf16)(~tiny & (vi16)e);
}

#define DOT(TX, SX, TY, SY)                                                                                         \
    static inline float dot_##SX##_##SY(const TX *x, const TY *y, int K) {                                          \
        vf16 acc = {0};                                                                                             \
        int k = 0;                                                                                                  \
        for (; k + 16 <= K; k += 16) acc += vload_##SX(x + k) * vload_##SY(y + k);                                  \
        float sum = 0.0f;                                                                                           \
        for (int j = 0; j < 16; j++) sum += acc[j];                                                                 \
        for (; k < K; k++) sum += load_##SX(x[k]) * load_##SY(y[k]);                                                \
        return sum;                                                                                                 \
    }
DOT(bf16, bf16, bf16, bf16)
DOT(float, f32, float, f32)
DOT(bf16, bf16, float, f32)

/* out[m, t] += (x[m, t] · a[m]ᵀ) · b_t[m] for each row m and token t: x [rows, tokens, K], a [rows, R, K],
   b_t [rows, R, N], out [rows, tokens, N]. b_t may be block-diagonal (a group of projections side by side: q, k, v):
   part p holds ranks [rank_ends[p-1], rank_ends[p]) and outputs [out_ends[p-1], out_ends[p]), and only those blocks
   are read. The low-rank product and the delta are rounded to the tables' dtype, as torch.bmm gives them; the delta
   is added in float32 and rounded once to out's dtype — as PEFT adds its float32 delta to a bfloat16 base output
   (it keeps a bfloat16 model's adapter weights in float32). */
#define LORA_DELTA(TX, SX, TW, SW, NAME)                                                                            \
    void NAME(const TX *x, const TW *a, const TW *b_t, TX *out, int rows, int tokens, int K, int R, int N,          \
              int parts, const int *rank_ends, const int *out_ends) {                                               \
        float low[MAX_RANK];                                                                                        \
        for (int m = 0; m < rows; m++) {                                                                            \
            const TW *am = a + (size_t)m * R * K, *bm = b_t + (size_t)m * R * N;                                    \
            for (int t = 0; t < tokens; t++) {                                                                      \
                const TX *xt = x + ((size_t)m * tokens + t) * K;                                                    \
                TX *ot = out + ((size_t)m * tokens + t) * N;                                                        \
                for (int r = 0; r < R; r++) low[r] = round_##SW(dot_##SX##_##SW(xt, am + (size_t)r * K, K));        \
                for (int p = 0; p < parts; p++) {                                                                   \
                    const int r0 = p ? rank_ends[p - 1] : 0, r1 = rank_ends[p];                                     \
                    const int n1 = out_ends[p];                                                                     \
                    int n = p ? out_ends[p - 1] : 0;                                                                \
                    if (r0 == r1) continue; /* a projection of the group without LoRA */                            \
                    for (; n + 16 <= n1; n += 16) {                                                                 \
                        vf16 acc = {0};                                                                             \
                        for (int r = r0; r < r1; r++) acc += low[r] * vload_##SW(bm + (size_t)r * N + n);           \
                        vstore_##SX(ot + n, vload_##SX(ot + n) + vround_##SW(acc));                                 \
                    }                                                                                               \
                    for (; n < n1; n++) {                                                                           \
                        float acc = 0.0f;                                                                           \
                        for (int r = r0; r < r1; r++) acc += low[r] * load_##SW(bm[(size_t)r * N + n]);             \
                        ot[n] = store_##SX(load_##SX(ot[n]) + round_##SW(acc));                                     \
                    }                                                                                               \
                }                                                                                                   \
            }                                                                                                       \
        }                                                                                                           \
    }
LORA_DELTA(bf16, bf16, bf16, bf16, lora_delta_bf16)
LORA_DELTA(float, f32, float, f32, lora_delta_f32)
LORA_DELTA(bf16, bf16, float, f32, lora_delta_bf16_f32)

#define STEP_OPS(T, S)                                                                                              \
    /* hidden += delta (when given), then out = weight * rms_norm(hidden): [rows, D] each. */                       \
    void add_rms_norm_##S(T *hidden, const T *delta, const T *weight, float eps, T *out, int rows, int D) {         \
        for (int m = 0; m < rows; m++) {                                                                            \
            T *h = hidden + (size_t)m * D;                                                                          \
            if (delta) {                                                                                            \
                const T *d = delta + (size_t)m * D;                                                                 \
                for (int i = 0; i < D; i++) h[i] = store_##S(load_##S(h[i]) + load_##S(d[i]));                      \
            }                                                                                                       \
            const float squares = dot_##S##_##S(h, h, D);                                                           \
            const float scale = 1.0f / sqrtf(squares / (float)D + eps);                                             \
            T *o = out + (size_t)m * D;                                                                             \
            for (int i = 0; i < D; i++)                                                                             \
                o[i] = store_##S(load_##S(weight[i]) * round_##S(load_##S(h[i]) * scale));                          \
        }                                                                                                           \
    }                                                                                                               \
                                                                                                                    \
    /* One token per row: qkv [rows, (heads + 2 kv_heads) * D] (q, k, v side by side) → q with rotary embedding     \
       into q_out [rows, heads, D]; k with it and v as they are into column `column` of the caches                  \
       [rows, kv_heads, capacity, D]. cos, sin: [rows, D]. q·cos + rotate_half(q)·sin, each product and the sum     \
       rounded, as transformers' apply_rotary_pos_emb computes it. */                                               \
    void rope_store_##S(const T *qkv, const T *cos, const T *sin, T *q_out, T *k_cache, T *v_cache, int rows,       \
                        int heads, int kv_heads, int D, int capacity, int column) {                                 \
        const int half = D / 2, width = (heads + 2 * kv_heads) * D;                                                 \
        for (int m = 0; m < rows; m++) {                                                                            \
            const T *row = qkv + (size_t)m * width, *c = cos + (size_t)m * D, *s = sin + (size_t)m * D;             \
            for (int h = 0; h < heads + kv_heads; h++) {                                                            \
                const T *x = row + (size_t)h * D;                                                                   \
                T *y = h < heads ? q_out + ((size_t)m * heads + h) * D                                              \
                                 : k_cache + (((size_t)m * kv_heads + (h - heads)) * capacity + column) * D;        \
                for (int i = 0; i < D; i++) {                                                                       \
                    const float rotated = i < half ? -load_##S(x[i + half]) : load_##S(x[i - half]);                \
                    y[i] = store_##S(round_##S(load_##S(x[i]) * load_##S(c[i]))                                     \
                                     + round_##S(rotated * load_##S(s[i])));                                        \
                }                                                                                                   \
            }                                                                                                       \
            for (int h = 0; h < kv_heads; h++)                                                                      \
                memcpy(v_cache + (((size_t)m * kv_heads + h) * capacity + column) * D,                              \
                       row + (size_t)(heads + kv_heads + h) * D, sizeof(T) * D);                                    \
        }                                                                                                           \
    }

STEP_OPS(bf16, bf16)
STEP_OPS(float, f32)

#define MAX_CHUNKS 16 /* head dimension up to 256, in chunks of 16 */
#define MAX_GROUPS 16 /* query heads per kv head */

/* Attention of one new token per row over its cached columns (a decode step), grouped heads too:
   q [rows, heads, D]; caches [rows, kv_heads, capacity, D], of which the first `length` columns count where
   valid[m * valid_stride + j] (NULL: all); out [rows, heads, D]; D a multiple of 16. Scores and softmax in float32;
   as PyTorch's CPU flash attention, the probabilities are rounded to the dtype before they weight the values (the
   sum that divides them is not) and the output is rounded once. Each key and value row is read once for all the
   query heads that share it; the (row, kv head) pairs are spread over the threads. With PyTorch's SDPA this was
   ~25 us per layer for one row and ~170 us for eight rows of 150 columns (2-core AMD EPYC); here about half.
   scratch: threads * (heads / kv_heads) * length floats. */
#define ATTEND(T, S)                                                                                                \
    void attend_##S(const T *q, const T *k_cache, const T *v_cache, const uint8_t *valid, int valid_stride,         \
                    T *out, int rows, int heads, int kv_heads, int D, int capacity, int length, float scale,        \
                    float *scratch, int threads) {                                                                  \
        const int groups = heads / kv_heads, chunks = D / 16;                                                       \
        _Pragma("omp parallel for num_threads(threads) schedule(static)")                                           \
        for (int task = 0; task < rows * kv_heads; task++) {                                                        \
            const int m = task / kv_heads, g = task % kv_heads;                                                     \
            float *scores = scratch + (size_t)omp_get_thread_num() * groups * length;                               \
            const uint8_t *ok = valid ? valid + (size_t)m * valid_stride : NULL;                                    \
            const T *keys = k_cache + ((size_t)m * kv_heads + g) * capacity * D;                                    \
            const T *values = v_cache + ((size_t)m * kv_heads + g) * capacity * D;                                  \
            const T *qg = q + ((size_t)m * heads + (size_t)g * groups) * D;                                         \
            vf16 query[MAX_GROUPS][MAX_CHUNKS], acc[MAX_GROUPS][MAX_CHUNKS];                                        \
            float top[MAX_GROUPS], total[MAX_GROUPS];                                                               \
            for (int h = 0; h < groups; h++) {                                                                      \
                for (int c = 0; c < chunks; c++) query[h][c] = vload_##S(qg + (size_t)h * D + 16 * c);              \
                top[h] = -INFINITY;                                                                                 \
                total[h] = 0.0f;                                                                                    \
            }                                                                                                       \
            for (int j = 0; j < length; j++) {                                                                      \
                if (ok && !ok[j]) {                                                                                 \
                    for (int h = 0; h < groups; h++) scores[(size_t)h * length + j] = -INFINITY;                    \
                    continue;                                                                                       \
                }                                                                                                   \
                vf16 key[MAX_CHUNKS];                                                                               \
                for (int c = 0; c < chunks; c++) key[c] = vload_##S(keys + (size_t)j * D + 16 * c);                 \
                for (int h = 0; h < groups; h++) {                                                                  \
                    vf16 dot = query[h][0] * key[0];                                                                \
                    for (int c = 1; c < chunks; c++) dot += query[h][c] * key[c];                                   \
                    const float score = vsum(dot) * scale;                                                          \
                    scores[(size_t)h * length + j] = score;                                                         \
                    top[h] = score > top[h] ? score : top[h];                                                       \
                }                                                                                                   \
            }                                                                                                       \
            for (int h = 0; h < groups; h++) {                                                                      \
                float *row = scores + (size_t)h * length;                                                           \
                int j = 0;                                                                                          \
                for (; j + 16 <= length; j += 16) {                                                                 \
                    const vf16 e = vexp_nonpositive(vload_f32(row + j) - top[h]);                                   \
                    vstore_f32(row + j, e);                                                                         \
                    total[h] += vsum(e);                                                                            \
                }                                                                                                   \
                for (; j < length; j++) {                                                                           \
                    vf16 one = {0};                                                                                 \
                    one[0] = row[j] - top[h];                                                                       \
                    row[j] = vexp_nonpositive(one)[0];                                                              \
                    total[h] += row[j];                                                                             \
                }                                                                                                   \
                for (int c = 0; c < chunks; c++) acc[h][c] = (vf16){0};                                             \
            }                                                                                                       \
            for (int j = 0; j < length; j++) {                                                                      \
                if (ok && !ok[j]) continue;                                                                         \
                vf16 value[MAX_CHUNKS];                                                                             \
                for (int c = 0; c < chunks; c++) value[c] = vload_##S(values + (size_t)j * D + 16 * c);             \
                for (int h = 0; h < groups; h++) {                                                                  \
                    const float weight = round_##S(scores[(size_t)h * length + j]);                                 \
                    for (int c = 0; c < chunks; c++) acc[h][c] += weight * value[c];                                \
                }                                                                                                   \
            }                                                                                                       \
            for (int h = 0; h < groups; h++) {                                                                      \
                T *o = out + ((size_t)m * heads + (size_t)g * groups + h) * D;                                      \
                const float inverse = top[h] == -INFINITY ? 0.0f : 1.0f / total[h]; /* no column: zeros */          \
                for (int c = 0; c < chunks; c++) vstore_##S(o + 16 * c, acc[h][c] * inverse);                       \
            }                                                                                                       \
        }                                                                                                           \
    }
ATTEND(bf16, bf16)
ATTEND(float, f32)

int attend_max_chunks(void) { return MAX_CHUNKS; }
int attend_max_groups(void) { return MAX_GROUPS; }

int lora_max_rank(void) { return MAX_RANK; }
