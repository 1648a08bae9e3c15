/* vlbridge's CPU decode kernels (AVX2 + FMA), built and loaded by vlbridge/lm/native.py.
 *
 * A decode step multiplies one activation row per sequence by every weight of the LM: its time is the weight bytes
 * read, plus, in eager PyTorch, a fixed cost per operation (some 25 per layer). Two entry points:
 * - gemv_f32 / gemv_bf16 / gemv_i8: y = x @ W^T (* scale) (+ bias) for a few rows x (rows, in) float32 and W row-major
 *   (out, in) in float32, bf16 or int8 with per-row float32 scales; y (rows, out) float32.
 * - decode_stack: every pre-norm Llama block of the LM (RMSNorm, q/k/v, RoPE, KV cache write, grouped-query attention
 *   over the cache, o, RMSNorm, SwiGLU MLP, both residual adds) for one new token per row, in one call and one OpenMP
 *   parallel region, so a step's layers cost one call instead of ~25 operator dispatches each.
 *
 * Products: each thread takes a static band of output rows and streams each weight row once (see ROW_FN). bf16 and int8 weights are widened to float32 in registers, so they move 1/2 and 1/4 of float32's
 * bytes. Arithmetic is float32 throughout, accumulating in the order of the vector lanes (results differ from PyTorch's
 * in the last bits only).
 */
#include <immintrin.h>
#include <math.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>


enum { F32 = 0, BF16 = 1, I8 = 2 };

static inline float hsum(__m256 v) {
    __m128 s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
    s = _mm_add_ps(s, _mm_movehl_ps(s, s));
    s = _mm_add_ss(s, _mm_movehdup_ps(s));
    return _mm_cvtss_f32(s);
}

static inline __m256 load_f32(const float *w) { return _mm256_loadu_ps(w); }

static inline __m256 load_bf16(const uint16_t *w) {
    __m256i wide = _mm256_cvtepu16_epi32(_mm_loadu_si128((const __m128i *)w));
    return _mm256_castsi256_ps(_mm256_slli_epi32(wide, 16));
}

static inline __m256 load_i8(const int8_t *w) {
    return _mm256_cvtepi32_ps(_mm256_cvtepi8_epi32(_mm_loadl_epi64((const __m128i *)w)));
}

static inline float widen_f32(const float *w, long k) { return w[k]; }

static inline float bf16_to_f32(uint16_t h) {
    union { uint32_t u; float f; } v = {.u = (uint32_t)h << 16};
    return v.f;
}

static inline uint16_t f32_to_bf16(float f) { /* round to nearest even, as torch's cast */
    union { float f; uint32_t u; } v = {.f = f};
    return (uint16_t)((v.u + 0x7FFFu + ((v.u >> 16) & 1u)) >> 16);
}

static inline float widen_bf16(const uint16_t *w, long k) { return bf16_to_f32(w[k]); }

static inline float widen_i8(const int8_t *w, long k) { return (float)w[k]; }

/* 16 weights as two vectors of 8 (w0 for x0's elements, w1 for x1's), and the x vectors they pair with. Plain types
 * load 8 and 8 in order. bf16 widens 16 in one load and two in-lane unpacks (zero low halves), which yields elements
 * (0-3, 8-11) and (4-7, 12-15): x0, x1 are permuted to match once per 16 columns, not once per weight row. */
static inline void load16_f32(const float *p, __m256 *w0, __m256 *w1) {
    *w0 = load_f32(p);
    *w1 = load_f32(p + 8);
}

static inline void load16_i8(const int8_t *p, __m256 *w0, __m256 *w1) {
    *w0 = load_i8(p);
    *w1 = load_i8(p + 8);
}

static inline void load16_bf16(const uint16_t *p, __m256 *w0, __m256 *w1) {
    __m256i v = _mm256_loadu_si256((const __m256i *)p), zero = _mm256_setzero_si256();
    *w0 = _mm256_castsi256_ps(_mm256_unpacklo_epi16(zero, v));
    *w1 = _mm256_castsi256_ps(_mm256_unpackhi_epi16(zero, v));
}

static inline void keep_x(__m256 *x0, __m256 *x1) { (void)x0, (void)x1; }

static inline void pair_x_bf16(__m256 *x0, __m256 *x1) {
    __m256 lo = _mm256_permute2f128_ps(*x0, *x1, 0x20), hi = _mm256_permute2f128_ps(*x0, *x1, 0x31);
    *x0 = lo;
    *x1 = hi;
}

/* Output row o of y = x @ W^T for every activation row. One function per weight type: T the element type; LOAD widens
 * 8 weights, LOAD16 16 (paired with x by PAIR_X), WIDEN one (the tail past a multiple of 8); PREFETCH is how many
 * bytes ahead in the row to prefetch (0: none). A thread streams one weight row at a time, its only stream: dotting 4
 * or 2 rows at once (4 or 2 interleaved streams) streamed SmolLM2-135M's decode weights 1.3x (float32) to 1.6x (bf16)
 * slower on an AVX2 AMD EPYC at 2 threads. int8 rows are consumed fast enough that the hardware prefetcher falls
 * behind: a software prefetch 256 bytes ahead was 1.7x faster there, and slower for float32
 * (experiments/decode_products.py). The x rows stay in L1, so several activation rows read the weight row once; in
 * blocks of 4 rows each weight is also widened once for the 4, which a batch of rows (a server's streams) is bound by. */
#define ROW_FN(NAME, T, LOAD, LOAD16, PAIR_X, WIDEN, PREFETCH)                                                         \
    static void NAME(const float *x, const void *weight, const float *scale, const float *bias, float *y, long rows,  \
                     long in, long out, long o) {                                                                      \
        const T *w = (const T *)weight + o * in;                                                                       \
        long body = in - in % 8, r = 0;                                                                                \
        for (; r + 4 <= rows; r += 4) { /* 4 rows at once: each 16 weights widened once for all 4 */                  \
            __m256 acc[4][2];                                                                                          \
            for (long j = 0; j < 4; j++) acc[j][0] = acc[j][1] = _mm256_setzero_ps();                                  \
            long k = 0;                                                                                                \
            for (; k + 16 <= body; k += 16) {                                                                          \
                __m256 w0, w1;                                                                                         \
                LOAD16(w + k, &w0, &w1);                                                                               \
                for (long j = 0; j < 4; j++) {                                                                         \
                    const float *xr = x + (r + j) * in + k;                                                            \
                    __m256 x0 = _mm256_loadu_ps(xr), x1 = _mm256_loadu_ps(xr + 8);                                     \
                    PAIR_X(&x0, &x1);                                                                                  \
                    acc[j][0] = _mm256_fmadd_ps(w0, x0, acc[j][0]);                                                    \
                    acc[j][1] = _mm256_fmadd_ps(w1, x1, acc[j][1]);                                                    \
                }                                                                                                      \
            }                                                                                                          \
            for (; k < body; k += 8) {                                                                                 \
                __m256 w0 = LOAD(w + k);                                                                               \
                for (long j = 0; j < 4; j++)                                                                           \
                    acc[j][0] = _mm256_fmadd_ps(w0, _mm256_loadu_ps(x + (r + j) * in + k), acc[j][0]);                 \
            }                                                                                                          \
            for (long j = 0; j < 4; j++) {                                                                             \
                const float *xr = x + (r + j) * in;                                                                    \
                float s = hsum(_mm256_add_ps(acc[j][0], acc[j][1]));                                                   \
                for (long t = body; t < in; t++) s += WIDEN(w, t) * xr[t];                                             \
                if (scale) s *= scale[o];                                                                              \
                if (bias) s += bias[o];                                                                                \
                y[(r + j) * out + o] = s;                                                                              \
            }                                                                                                          \
        }                                                                                                              \
        for (; r < rows; r++) {                                                                                        \
            const float *xr = x + r * in;                                                                              \
            __m256 acc0 = _mm256_setzero_ps(), acc1 = _mm256_setzero_ps();                                             \
            __m256 acc2 = _mm256_setzero_ps(), acc3 = _mm256_setzero_ps();                                             \
            long k = 0;                                                                                                \
            for (; k + 32 <= body; k += 32) {                                                                          \
                if (PREFETCH) _mm_prefetch((const char *)(w + k) + PREFETCH, _MM_HINT_T0);                             \
                __m256 x0 = _mm256_loadu_ps(xr + k), x1 = _mm256_loadu_ps(xr + k + 8);                                 \
                __m256 x2 = _mm256_loadu_ps(xr + k + 16), x3 = _mm256_loadu_ps(xr + k + 24), w0, w1, w2, w3;           \
                PAIR_X(&x0, &x1);                                                                                      \
                PAIR_X(&x2, &x3);                                                                                      \
                LOAD16(w + k, &w0, &w1);                                                                               \
                LOAD16(w + k + 16, &w2, &w3);                                                                          \
                acc0 = _mm256_fmadd_ps(w0, x0, acc0);                                                                  \
                acc1 = _mm256_fmadd_ps(w1, x1, acc1);                                                                  \
                acc2 = _mm256_fmadd_ps(w2, x2, acc2);                                                                  \
                acc3 = _mm256_fmadd_ps(w3, x3, acc3);                                                                  \
            }                                                                                                          \
            for (; k < body; k += 8) acc0 = _mm256_fmadd_ps(LOAD(w + k), _mm256_loadu_ps(xr + k), acc0);               \
            float s = hsum(_mm256_add_ps(_mm256_add_ps(acc0, acc1), _mm256_add_ps(acc2, acc3)));                       \
            for (; k < in; k++) s += WIDEN(w, k) * xr[k];                                                              \
            if (scale) s *= scale[o];                                                                                  \
            if (bias) s += bias[o];                                                                                    \
            y[r * out + o] = s;                                                                                        \
        }                                                                                                              \
    }

ROW_FN(row_f32, float, load_f32, load16_f32, keep_x, widen_f32, 0)
ROW_FN(row_bf16, uint16_t, load_bf16, load16_bf16, pair_x_bf16, widen_bf16, 0)
ROW_FN(row_i8, int8_t, load_i8, load16_i8, keep_x, widen_i8, 256)

typedef void (*row_fn)(const float *, const void *, const float *, const float *, float *, long, long, long, long);
static const row_fn ROWS[] = {row_f32, row_bf16, row_i8};

static void gemv(int dtype, const float *x, const void *w, const float *scale, const float *bias, float *y, long rows,
                 long in, long out, int threads) {
    row_fn f = ROWS[dtype];
#pragma omp parallel for num_threads(threads) schedule(static)
    for (long o = 0; o < out; o++) f(x, w, scale, bias, y, rows, in, out, o);
}

void gemv_f32(const float *x, const float *w, const float *scale, const float *bias, float *y, long rows, long in,
              long out, int threads) {
    gemv(F32, x, w, scale, bias, y, rows, in, out, threads);
}

void gemv_bf16(const float *x, const uint16_t *w, const float *scale, const float *bias, float *y, long rows, long in,
               long out, int threads) {
    gemv(BF16, x, w, scale, bias, y, rows, in, out, threads);
}

void gemv_i8(const float *x, const int8_t *w, const float *scale, const float *bias, float *y, long rows, long in,
             long out, int threads) {
    gemv(I8, x, w, scale, bias, y, rows, in, out, threads);
}

/* ---- decode_stack ---------------------------------------------------------------------------------------------- */

/* One projection of a layer: its weight, per-row scales (int8) or NULL, bias or NULL, and dtype (F32, BF16, I8). */
typedef struct {
    const void *w;
    const float *scale, *bias;
    long dtype;
} proj_t;

enum { Q, K, V, O, GATE, UP, DOWN, PROJECTIONS };

/* y = x @ W^T inside a parallel region; no barrier at the end (the caller places one where a result is read). */
static void project(const proj_t *p, const float *x, float *y, long rows, long in, long out) {
    row_fn f = ROWS[p->dtype];
#pragma omp for schedule(static) nowait
    for (long o = 0; o < out; o++) f(x, p->w, p->scale, p->bias, y, rows, in, out, o);
}

/* out = x / rms(x) * weight over n elements (HF's LlamaRMSNorm in float32). */
static void rms_norm(const float *x, const float *weight, float eps, float *out, long n) {
    float ss = 0.0f;
    for (long i = 0; i < n; i++) ss += x[i] * x[i];
    float inv = 1.0f / sqrtf(ss / (float)n + eps);
    for (long i = 0; i < n; i++) out[i] = weight[i] * (x[i] * inv);
}

/* Rotate one head (hd channels) by cos / signed sin, the "rotate half" layout of vlbridge/lm/rope.py. */
static void rotate(float *v, const float *cos, const float *sin, long hd) {
    long half = hd / 2;
    for (long i = 0; i < half; i++) {
        float a = v[i], b = v[i + half];
        v[i] = a * cos[i] + b * sin[i];
        v[i + half] = b * cos[i + half] + a * sin[i + half];
    }
}

static inline __m256 load_cache(const void *cache, long at, int bf16) {
    return bf16 ? load_bf16((const uint16_t *)cache + at) : _mm256_loadu_ps((const float *)cache + at);
}

static inline void store_cache(void *cache, long at, float v, int bf16) {
    if (bf16)
        ((uint16_t *)cache)[at] = f32_to_bf16(v);
    else
        ((float *)cache)[at] = v;
}

/* Attention of one query head q (hd) over keys/values [0, len) of one cache head (rows of hd at `base`), skipping
 * the keys `mask` zeroes (NULL: none): out (hd); zeros if every key is masked. */
static void attend(const float *q, const void *keys, const void *values, long base, long len, long hd, int bf16,
                   const uint8_t *mask, float *scores, float *out) {
    float scale = 1.0f / sqrtf((float)hd), top = -INFINITY, total = 0.0f;
    for (long t = 0; t < len; t++) {
        if (mask && !mask[t]) {
            scores[t] = -INFINITY;
            continue;
        }
        __m256 acc = _mm256_setzero_ps();
        for (long i = 0; i < hd; i += 8)
            acc = _mm256_fmadd_ps(_mm256_loadu_ps(q + i), load_cache(keys, base + t * hd + i, bf16), acc);
        scores[t] = hsum(acc) * scale;
        top = scores[t] > top ? scores[t] : top;
    }
    for (long t = 0; t < len; t++) {
        scores[t] = scores[t] == -INFINITY ? 0.0f : expf(scores[t] - top);
        total += scores[t];
    }
    for (long i = 0; i < hd; i += 8) {
        __m256 acc = _mm256_setzero_ps();
        for (long t = 0; t < len; t++)
            if (scores[t] != 0.0f)
                acc = _mm256_fmadd_ps(_mm256_set1_ps(scores[t]), load_cache(values, base + t * hd + i, bf16), acc);
        _mm256_storeu_ps(out + i, _mm256_mul_ps(acc, _mm256_set1_ps(total > 0.0f ? 1.0f / total : 0.0f)));
    }
}

/* The shapes and buffers every layer of a decode step shares. */
typedef struct {
    long rows, d, heads, kv_heads, hd, ffn, max_len, len;
    const long *write_at; /* (rows,) the cache position each row's new key and value go to */
    const uint8_t *key_mask; /* (rows, len): 0 = a key the row does not attend (padding); NULL: every key */
    float eps;
    const float *cos, *sin; /* (rows, hd) */
    int cache_bf16;
    float *h, *q, *k, *v, *a, *b, *scores; /* scratch */
} step_t;

/* One layer inside the step's parallel region, in place on x (rows, d); see decode_stack. */
static void layer(const step_t *s, float *x, const proj_t *proj, const float *norm1, const float *norm2, void *keys,
                  void *values) {
    long rows = s->rows, d = s->d, heads = s->heads, kv_heads = s->kv_heads, hd = s->hd, ffn = s->ffn;
    long qd = heads * hd, kvd = kv_heads * hd, len = s->len, group = heads / kv_heads;
    float *h = s->h, *q = s->q, *k = s->k, *v = s->v, *a = s->a, *b = s->b;
#pragma omp single
    for (long r = 0; r < rows; r++) rms_norm(x + r * d, norm1, s->eps, h + r * d, d);
    project(&proj[Q], h, q, rows, d, qd);
    project(&proj[K], h, k, rows, d, kvd);
    project(&proj[V], h, v, rows, d, kvd);
#pragma omp barrier
#pragma omp single
    for (long r = 0; r < rows; r++) {
        const float *cos = s->cos + r * hd, *sin = s->sin + r * hd;
        for (long i = 0; i < heads; i++) rotate(q + r * qd + i * hd, cos, sin, hd);
        for (long j = 0; j < kv_heads; j++) {
            float *kj = k + r * kvd + j * hd, *vj = v + r * kvd + j * hd;
            long at = ((r * kv_heads + j) * s->max_len + s->write_at[r]) * hd;
            rotate(kj, cos, sin, hd);
            for (long i = 0; i < hd; i++) {
                store_cache(keys, at + i, kj[i], s->cache_bf16);
                store_cache(values, at + i, vj[i], s->cache_bf16);
            }
        }
    }
#pragma omp for schedule(static)
    for (long rh = 0; rh < rows * heads; rh++) {
        long r = rh / heads, i = rh % heads, base = (r * kv_heads + i / group) * s->max_len * hd;
        const uint8_t *mask = s->key_mask ? s->key_mask + r * len : NULL;
        attend(q + r * qd + i * hd, keys, values, base, len, hd, s->cache_bf16, mask, s->scores + rh * len,
               a + r * qd + i * hd);
    }
    project(&proj[O], a, b, rows, qd, d);
#pragma omp barrier
#pragma omp single
    for (long r = 0; r < rows; r++) {
        for (long i = 0; i < d; i++) x[r * d + i] += b[r * d + i];
        rms_norm(x + r * d, norm2, s->eps, h + r * d, d);
    }
    project(&proj[GATE], h, a, rows, d, ffn);
    project(&proj[UP], h, b, rows, d, ffn);
#pragma omp barrier
#pragma omp for schedule(static)
    for (long i = 0; i < rows * ffn; i++) a[i] = a[i] / (1.0f + expf(-a[i])) * b[i];
    project(&proj[DOWN], a, b, rows, ffn, d);
#pragma omp barrier
#pragma omp for schedule(static)
    for (long i = 0; i < rows * d; i++) x[i] += b[i];
}

/* Every decoder layer of the LM for one new token per row, in place on x (rows, d) float32, in one parallel region.
 * Layer l reads projs[l] (its 7 projections: q, k, v, o, gate, up, down), norms[2l], norms[2l + 1] (float32 (d)) and
 * its cache caches[2l] (keys), caches[2l + 1] (values), each (rows, kv_heads, max_len, hd) in float32 or bf16
 * (cache_bf16). Row r's new key and value are written at position write_at[r] (< len), then the row attends cache
 * positions [0, len) except those key_mask (rows, len) zeroes (NULL: all of them). cos, sin: (rows, hd) float32,
 * RoPE's cos and signed sin at each row's position. hd must be a multiple of 8.
 * Returns 0, or -1 when scratch memory could not be allocated (nothing is changed then). */
int decode_stack(float *x, long layers, long rows, long d, long heads, long kv_heads, long hd, long ffn,
                 const proj_t *const *projs, const float *const *norms, void *const *caches, float eps, const float *cos,
                 const float *sin, int cache_bf16, long max_len, const long *write_at, long len,
                 const uint8_t *key_mask, int threads) {
    long qd = heads * hd, kvd = kv_heads * hd, widest = ffn > qd ? ffn : qd;
    widest = widest > d ? widest : d;
    float *h = malloc(sizeof(float) * rows * (d + qd + 2 * kvd + 2 * widest + heads * len));
    if (!h) return -1;
    float *q = h + rows * d, *k = q + rows * qd, *v = k + rows * kvd, *a = v + rows * kvd, *b = a + rows * widest;
    step_t s = {rows, d, heads, kv_heads, hd, ffn, max_len, len, write_at, key_mask, eps, cos, sin, cache_bf16, h, q,
                k, v, a, b, b + rows * widest};
#pragma omp parallel num_threads(threads)
    for (long l = 0; l < layers; l++)
        layer(&s, x, projs[l], norms[2 * l], norms[2 * l + 1], caches[2 * l], caches[2 * l + 1]);
    free(h);
    return 0;
}
