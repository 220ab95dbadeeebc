/* The fused CPU sampler of Λ ~ Dir(α·1_m) rows (float32), compiled and loaded by multimix/native.py, which
   documents it. xoshiro256++ bits on LANES SIMD lanes, the gammas and their rejections, the compaction of the
   accepted candidates and the row normalisation in one loop per stream of rows; and MultiMix's mixed loss drawn,
   mixed and scored row by row (mix_cross_entropy). One file on purpose: native.py compiles it as one translation
   unit, keyed by its text, so that both kernels share the generator, the laws and the build. */
#include <float.h>
#include <math.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <omp.h>
#if defined(__AVX512F__) || defined(__AVX2__)
#include <immintrin.h>
#endif

/* LANES (xoshiro256++ generators stepped side by side, one per SIMD lane) and STEPS (steps of all lanes per
   refill) are set by native.py on the command line, their one definition; OUTPUTS must be a multiple of 16. */
#if !defined(LANES) || !defined(STEPS)
#error "LANES and STEPS are set by multimix/native.py (-DLANES=... -DSTEPS=...)"
#endif
#define OUTPUTS (LANES * STEPS)
#if LANES % 8
#error "LANES must be a multiple of 8 (xoshiro steps 8 lanes at a time)"
#endif
/* From p = 1/α = SQUEEZE_P on (α ≤ 2/3), α < 1 takes the squeeze of its acceptance test (measured faster from
   α = 1/128 to 0.5, even at 0.9; the undecided band, and so the logarithms it still needs, grows with α); tests
   build without it (-DSQUEEZE_P=...) */
#if !defined(SQUEEZE_P)
#define SQUEEZE_P 1.5f
#endif

static inline uint64_t rotl(uint64_t x, int k) { return (x << k) | (x >> (64 - k)); }

/* splitmix64 output number `index` (from 0) of the stream seeded with `seed` (Vigna's seeding of xoshiro) */
static inline uint64_t splitmix64(uint64_t seed, uint64_t index) {
    uint64_t z = seed + (index + 1) * 0x9E3779B97F4A7C15ull;
    z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
    z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
    return z ^ (z >> 31);
}

typedef struct { uint64_t s0[LANES], s1[LANES], s2[LANES], s3[LANES]; } lanes_t;

/* The lanes of stream `stream`: lane l's state is splitmix64 outputs 4(LANES·stream + l) .. + 3 of `seed`. */
static void seed_lanes(lanes_t *st, uint64_t seed, uint64_t stream) {
    for (int l = 0; l < LANES; l++) {
        uint64_t first = 4 * (LANES * stream + (uint64_t)l);
        st->s0[l] = splitmix64(seed, first);
        st->s1[l] = splitmix64(seed, first + 1);
        st->s2[l] = splitmix64(seed, first + 2);
        st->s3[l] = splitmix64(seed, first + 3);
    }
}

/* STEPS steps of xoshiro256++ (Blackman & Vigna 2021) on every lane: output k·LANES + l is lane l's k-th. The
   lanes are stepped 8 at a time, so that their states stay in AVX2's 16 vector registers (the same outputs). */
static void xoshiro(lanes_t *restrict st, uint64_t *restrict out) {
    for (int first = 0; first < LANES; first += 8) {
        uint64_t s0[8], s1[8], s2[8], s3[8];
        for (int l = 0; l < 8; l++) {
            s0[l] = st->s0[first + l], s1[l] = st->s1[first + l], s2[l] = st->s2[first + l], s3[l] = st->s3[first + l];
        }
        for (int k = 0; k < STEPS; k++) {
            #pragma omp simd
            for (int l = 0; l < 8; l++) {
                uint64_t r = rotl(s0[l] + s3[l], 23) + s0[l], t = s1[l] << 17;
                s2[l] ^= s0[l];
                s3[l] ^= s1[l];
                s1[l] ^= s2[l];
                s0[l] ^= s3[l];
                s2[l] ^= t;
                s3[l] = rotl(s3[l], 45);
                out[k * LANES + first + l] = r;
            }
        }
        for (int l = 0; l < 8; l++) {
            st->s0[first + l] = s0[l], st->s1[first + l] = s1[l], st->s2[first + l] = s2[l], st->s3[first + l] = s3[l];
        }
    }
}

/* The first `refills`·OUTPUTS 64-bit outputs of stream `stream` under `seed`, in order (for tests). */
void stream_outputs(uint64_t seed, uint64_t stream, long refills, uint64_t *out) {
    lanes_t st;
    seed_lanes(&st, seed, stream);
    for (long r = 0; r < refills; r++) xoshiro(&st, out + r * OUTPUTS);
}

/* A refill's OUTPUTS 64-bit outputs read as 2·OUTPUTS 32-bit words (output i's low word is word 2i on the
   little-endian CPUs -march=native builds for; which word serves which draw is fixed, so that the draws stay
   independent): reading them in place, without shuffling halves apart. */
typedef uint32_t word_t __attribute__((may_alias));

/* U = (w + 1/2)·2^-31 from the top 31 bits w of a word: the midpoint of one of 2^31 equal cells of (0, 1) (rounded
   to 24 bits from 2^-8 up), never 0, so every logarithm is finite (which -ffast-math assumes); float32 rounds U to 1
   for the top 2^-25 of words, whose logarithm, 0, the callers treat. 31 bits rather than 32: a signed conversion
   (one instruction) instead of an unsigned one (five on AVX2). */
static inline float unit(uint32_t word) {
    return (float)(int32_t)(word >> 1) * 4.656612873077393e-10f + 2.3283064365386963e-10f;
}

/* Marsaglia & Tsang (2000) for α > 1, d = α − 1/3, c = 1/√(9d): candidate v = t³ with t = 1 + c x for a normal x
   (written to *cube), accepted (1) when t > 0 and x² + 6d log t − 2dv − 2 log U > −2d, U from `word`. */
static inline int32_t marsaglia_tsang(float x, uint32_t word, float d, float c, float *cube) {
    float t = 1.0f + c * x;
    float v = t * t * t;
    float test = x * x + 6.0f * d * logf(fmaxf(t, 1e-30f)) - 2.0f * d * v - 2.0f * logf(unit(word));
    *cube = v;
    return (t > 0.0f) & (test > -2.0f * d);
}

/* One refill: candidates v[0..count) and acceptance flags ok[] (0 or 1) from OUTPUTS fresh outputs, read as
   2·OUTPUTS words w[]; returns count. Each loop has one candidate per lane and 32-bit flags, so that gcc
   vectorises it (with libmvec's logf). */
static int refill(int kind, float p, float q, lanes_t *st, float *restrict v, int32_t *restrict ok) {
    uint64_t outputs[OUTPUTS];
    xoshiro(st, outputs);
    const word_t *w = (const word_t *)outputs;
    if (kind == 1) { /* α = 1: log U = −E, one per word (the normalisation divides by the row sum: the sign cancels) */
        #pragma omp simd
        for (int i = 0; i < 2 * OUTPUTS; i++) {
            v[i] = logf(unit(w[i])); /* log U = 0 (U rounded to 1): E = 0, a weight of 0 */
            ok[i] = 1;
        }
        return 2 * OUTPUTS;
    }
    if (kind == 0 && p < SQUEEZE_P) { /* α < 1, p = 1/α: s = E − W/α with E from word i, W from word OUTPUTS + i,
                                         accepted when s − log E ≤ 1 (and E > 0); one per output */
        #pragma omp simd
        for (int i = 0; i < OUTPUTS; i++) {
            float e = -logf(unit(w[i]));
            float s = e + logf(unit(w[OUTPUTS + i])) * p;
            float test = s - logf(fmaxf(e, 1e-30f)); /* E = 0 (U rounded to 1) is rejected: −log E = ∞ */
            v[i] = s;
            ok[i] = (e > 0.0f) & (test <= 1.0f);
        }
        return OUTPUTS;
    }
    if (kind == 0) { /* the same with a squeeze: log E only where bounds from E's bits leave the test open */
        const float ln2 = 0.69314718f, margin = 9.765625e-04f; /* margin: 2^-10 */
        float e[OUTPUTS];
        int32_t open[OUTPUTS], any = 0;
        #pragma omp simd reduction(|:any)
        for (int i = 0; i < OUTPUTS; i++) {
            float x = -logf(unit(w[i]));
            float s = x + logf(unit(w[OUTPUTS + i])) * p;
            /* E = 2^k (1 + f): its bits read as an integer, times 2^-23, less 127, are k + f (Mitchell 1962), to
               2^-16 after float rounding, and log2(1 + f) lies between f and f + 0.0861 (its chord and the chord's
               largest gap); so s − log E lies between high − ln2·0.0861 and high. Decided where the test holds or
               fails for both by more than 2^-10, which bounds every rounding where the test is near 1: there
               |s| ≤ 1 + |log E| ≤ 70 (E ≥ 1e-30) */
            int32_t bits;
            memcpy(&bits, &x, sizeof bits);
            float high = s - ln2 * ((float)bits * 1.1920928955078125e-07f - 127.0f);
            int32_t positive = x > 0.0f; /* E = 0 (U rounded to 1) is rejected */
            int32_t yes = positive & (high <= 1.0f - margin);
            int32_t no = !positive | (high > 1.0f + margin + ln2 * 0.0861f);
            e[i] = x;
            v[i] = s;
            ok[i] = yes;
            open[i] = !(yes | no);
            any |= open[i];
        }
        if (any)
            for (int i = 0; i < OUTPUTS; i += 8) {
                int32_t here = 0;
                for (int u = 0; u < 8; u++) here |= open[i + u];
                if (!here) continue;
                #pragma omp simd /* a vector logf, as above: the same bits */
                for (int u = 0; u < 8; u++) {
                    float test = v[i + u] - logf(fmaxf(e[i + u], 1e-30f));
                    ok[i + u] = open[i + u] ? test <= 1.0f : ok[i + u];
                }
            }
        return OUTPUTS;
    }
    /* α > 1, p = d = α − 1/3, q = c = 1/√(9d): two normals x by Box–Muller from words i and half + i, each tested
       with a uniform from word 2·half + i or 3·half + i (marsaglia_tsang); two candidates per pair of outputs */
    const int half = OUTPUTS / 2;
    #pragma omp simd
    for (int i = 0; i < half; i++) {
        float radius = sqrtf(-2.0f * logf(unit(w[i])));
        float angle = (float)w[half + i] * 1.4629180792671596e-09f; /* 2π·2^-32 */
        /* sin θ as cos(π/2 − θ): gcc would fuse sinf and cosf of one angle into cexpif, which does not vectorise */
        ok[i] = marsaglia_tsang(radius * cosf(angle), w[2 * half + i], p, q, &v[i]);
        ok[half + i] = marsaglia_tsang(radius * cosf(1.5707963267948966f - angle), w[3 * half + i], p, q,
                                       &v[half + i]);
    }
    return OUTPUTS;
}

#if !defined(__AVX512F__) && defined(__AVX2__)
/* For each 8-bit mask of accepted lanes, the lanes to move to the front, in order (then the rejected ones'
   positions, whose values are overwritten later): filled when the library loads. */
static uint8_t keep_order[256][8];

__attribute__((constructor)) static void fill_keep_order(void) {
    for (int mask = 0; mask < 256; mask++) {
        int k = 0;
        for (int l = 0; l < 8; l++)
            if (mask >> l & 1) keep_order[mask][k++] = (uint8_t)l;
        for (int l = 0; l < 8; l++)
            if (!(mask >> l & 1)) keep_order[mask][k++] = (uint8_t)l;
    }
}
#endif

/* Move the accepted candidates of v[0..size) to its front, in order; returns their count. The store of a chunk
   ends before the next chunk starts (k <= i), so in place is safe. */
static int compact(float *v, const int32_t *ok, int size) {
    int k = 0;
#if defined(__AVX512F__)
    for (int i = 0; i < size; i += 16) { /* 16 at a time: AVX-512's compress */
        __m512 x = _mm512_loadu_ps(v + i);
        __mmask16 keep = _mm512_test_epi32_mask(_mm512_loadu_si512((const void *)(ok + i)), _mm512_set1_epi32(-1));
        _mm512_storeu_ps(v + k, _mm512_maskz_compress_ps(keep, x));
        k += __builtin_popcount((unsigned)keep);
    }
#elif defined(__AVX2__)
    for (int i = 0; i < size; i += 8) { /* 8 at a time: a permutation from keep_order */
        __m256 x = _mm256_loadu_ps(v + i);
        __m256i flags = _mm256_slli_epi32(_mm256_loadu_si256((const __m256i *)(ok + i)), 31); /* 1 -> sign bit */
        int keep = _mm256_movemask_ps(_mm256_castsi256_ps(flags));
        __m256i order = _mm256_cvtepu8_epi32(_mm_loadl_epi64((const __m128i *)keep_order[keep]));
        _mm256_storeu_ps(v + k, _mm256_permutevar8x32_ps(x, order));
        k += __builtin_popcount((unsigned)keep);
    }
#else
    for (int i = 0; i < size; i++) {
        v[k] = v[i];
        k += ok[i];
    }
#endif
    return k;
}

/* A stream of a call's rows: its lanes and the accepted candidates of its last refill not yet used,
   v[pos..size). */
typedef struct {
    lanes_t st;
    float v[2 * OUTPUTS];
    int32_t ok[2 * OUTPUTS];
    int pos, size;
} stream_t;

/* The law of the rows: kind 0: α < 1 (p = 1/α), 1: α = 1, 2: α > 1 (p = d, q = c); floor_: log-weights below
   the row maximum are raised to it (kind 0). */
typedef struct { int kind; float p, q, floor_; } law_t;

static void start_stream(stream_t *s, uint64_t seed, uint64_t index) {
    seed_lanes(&s->st, seed, index);
    s->pos = s->size = 0;
}

/* The stream's next m accepted candidates, in order, into o[0..m). */
static void next_candidates(const law_t *law, stream_t *s, float *restrict o, long m) {
    long k = 0;
    while (k < m) {
        if (s->pos == s->size) {
            s->size = refill(law->kind, law->p, law->q, &s->st, s->v, s->ok);
            if (law->kind != 1) /* α = 1 rejects nothing */
                s->size = compact(s->v, s->ok, s->size);
            s->pos = 0;
        }
        long take = m - k < s->size - s->pos ? m - k : s->size - s->pos;
        memcpy(o + k, s->v + s->pos, (size_t)take * sizeof(float));
        k += take;
        s->pos += (int)take;
    }
}

/* The largest of o[0..m). */
static inline float row_max(const float *restrict o, long m) {
    float top = o[0];
    for (long j = 1; j < m; j++) top = o[j] > top ? o[j] : top;
    return top;
}

/* The stream's next row o[0..m) of Λ: its candidates as weights (for α < 1 exponentials of the log-weights less
   their maximum, floored), divided by their sum. */
static void next_row(const law_t *law, stream_t *s, float *restrict o, long m) {
    next_candidates(law, s, o, m);
    float sum = 0.0f;
    if (law->kind == 0) { /* softmax in log space, floored */
        float top = row_max(o, m), floor_ = law->floor_;
        #pragma omp simd reduction(+:sum)
        for (long j = 0; j < m; j++) {
            float x = o[j] - top;
            x = expf(x < floor_ ? floor_ : x);
            o[j] = x;
            sum += x;
        }
    } else {
        #pragma omp simd reduction(+:sum)
        for (long j = 0; j < m; j++) sum += o[j];
    }
    float inv = 1.0f / sum;
    #pragma omp simd
    for (long j = 0; j < m; j++) o[j] *= inv;
}

/* Rows [first_row, first_row + rows) of a call's Λ (out points at first_row's row; first_row is a multiple of
   rows_per_stream). Streams are shared out between the OpenMP threads (the runtime torch loaded, whose thread
   count torch.set_num_threads sets) from parallel_entries entries on; a stream's rows depend on the seed and the
   stream's index alone. */
void dirichlet(uint64_t seed, int kind, float p, float q, float floor_, float *out, long first_row,
               long rows, long m, long rows_per_stream, long parallel_entries) {
    const law_t law = {kind, p, q, floor_};
    long streams = (rows + rows_per_stream - 1) / rows_per_stream;
    #pragma omp parallel for schedule(static) if (rows * m >= parallel_entries)
    for (long s = 0; s < streams; s++) {
        stream_t stream;
        long done = s * rows_per_stream;
        long stop = done + rows_per_stream < rows ? done + rows_per_stream : rows;
        start_stream(&stream, seed, (uint64_t)((first_row + done) / rows_per_stream));
        for (long r = done; r < stop; r++) next_row(&law, &stream, out + r * m, m);
    }
}

/* Columns of the mixing operands are padded to a multiple of CHUNK (zeros), so that the loops over them are
   whole vectors. */
#if !defined(CHUNK)
#error "CHUNK is set by multimix/native.py (-DCHUNK=...)"
#endif

/* The entries of x[0..m) at or above bar, in order: their indices into idx and their values into kept; returns
   their count. */
static long at_least(const float *restrict x, long m, float bar, int32_t *restrict idx, float *restrict kept) {
    long k = 0, j = 0;
#if !defined(__AVX512F__) && defined(__AVX2__)
    __m256 bars = _mm256_set1_ps(bar);
    __m256i lanes = _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7);
    for (; j + 8 <= m; j += 8) { /* 8 at a time: the kept lanes moved to the front (keep_order) */
        __m256 values = _mm256_loadu_ps(x + j);
        int keep = _mm256_movemask_ps(_mm256_cmp_ps(values, bars, _CMP_GE_OQ));
        __m256i order = _mm256_cvtepu8_epi32(_mm_loadl_epi64((const __m128i *)keep_order[keep]));
        __m256i at = _mm256_add_epi32(_mm256_permutevar8x32_epi32(lanes, order), _mm256_set1_epi32((int)j));
        _mm256_storeu_si256((__m256i *)(idx + k), at);
        _mm256_storeu_ps(kept + k, _mm256_permutevar8x32_ps(values, order));
        k += __builtin_popcount((unsigned)keep);
    }
#endif
    for (; j < m; j++) {
        idx[k] = (int32_t)j;
        kept[k] = x[j];
        k += x[j] >= bar ? 1 : 0;
    }
    return k;
}

/* The stream's next row of Λ, unnormalised, reduced to the entries that can move the mixes in float32: their
   indices (in order) into idx and their weights into w; returns their count. Those are the weights
   ≥ max · cut, cut = `least` · 2^-24 / m, where `least` is the least attention weight times the spread of the
   examples' magnitudes (native.py: mix_cross_entropy); the others add up to less than 2^-24 of the smallest scale
   of a kept term. For α < 1 the weights are exp(max(x − max x, floor)) of the log-weights x, and the test is made
   on the log-weights (log_cut = log cut), so that only the kept ones are exponentiated. */
static long next_kept(const law_t *law, stream_t *s, long m, float cut, float log_cut, float *restrict o,
                      int32_t *restrict idx, float *restrict w) {
    next_candidates(law, s, o, m);
    float top = row_max(o, m);
    long kept;
    if (law->kind == 0) {
        float floor_ = law->floor_;
        /* every weight is at least exp(floor): a cut at or below it keeps them all */
        kept = at_least(o, m, log_cut > floor_ ? top + log_cut : -FLT_MAX, idx, w);
        #pragma omp simd
        for (long i = 0; i < kept; i++) {
            float x = w[i] - top;
            w[i] = expf(x < floor_ ? floor_ : x);
        }
        return kept;
    }
    if (law->kind == 1) { /* the weights are the exponentials −log U: the largest is −min */
        float low = o[0];
        for (long j = 1; j < m; j++) low = o[j] < low ? o[j] : low;
        #pragma omp simd
        for (long j = 0; j < m; j++) o[j] = -o[j];
        top = -low;
    }
    return at_least(o, m, top * cut, idx, w);
}

/* ft[0..w) = Σ_i λ_i zy[idx[i]·stride ..] over the kept entries (weights λ, indices idx). */
static void gather(const float *restrict lam, const int32_t *restrict idx, long kept, const float *restrict zy,
                   long stride, long w, float *restrict ft) {
#if defined(__AVX2__) && defined(__FMA__)
    if (w <= 32) { /* up to 15 classes (v ≤ 16): the sums in registers, in two sets for alternate entries
                      (two chains of multiply-adds) */
        __m256 a0 = _mm256_setzero_ps(), a1 = a0, a2 = a0, a3 = a0, b0 = a0, b1 = a0, b2 = a0, b3 = a0;
        long i = 0;
        for (; i + 2 <= kept; i += 2) {
            __m256 l0 = _mm256_set1_ps(lam[i]), l1 = _mm256_set1_ps(lam[i + 1]);
            const float *r0 = zy + (long)idx[i] * stride, *r1 = zy + (long)idx[i + 1] * stride;
            a0 = _mm256_fmadd_ps(l0, _mm256_loadu_ps(r0), a0);
            b0 = _mm256_fmadd_ps(l1, _mm256_loadu_ps(r1), b0);
            if (w > 8) {
                a1 = _mm256_fmadd_ps(l0, _mm256_loadu_ps(r0 + 8), a1);
                b1 = _mm256_fmadd_ps(l1, _mm256_loadu_ps(r1 + 8), b1);
            }
            if (w > 16) {
                a2 = _mm256_fmadd_ps(l0, _mm256_loadu_ps(r0 + 16), a2);
                b2 = _mm256_fmadd_ps(l1, _mm256_loadu_ps(r1 + 16), b2);
            }
            if (w > 24) {
                a3 = _mm256_fmadd_ps(l0, _mm256_loadu_ps(r0 + 24), a3);
                b3 = _mm256_fmadd_ps(l1, _mm256_loadu_ps(r1 + 24), b3);
            }
        }
        if (i < kept) {
            __m256 l0 = _mm256_set1_ps(lam[i]);
            const float *r0 = zy + (long)idx[i] * stride;
            a0 = _mm256_fmadd_ps(l0, _mm256_loadu_ps(r0), a0);
            if (w > 8) a1 = _mm256_fmadd_ps(l0, _mm256_loadu_ps(r0 + 8), a1);
            if (w > 16) a2 = _mm256_fmadd_ps(l0, _mm256_loadu_ps(r0 + 16), a2);
            if (w > 24) a3 = _mm256_fmadd_ps(l0, _mm256_loadu_ps(r0 + 24), a3);
        }
        _mm256_storeu_ps(ft, _mm256_add_ps(a0, b0));
        if (w > 8) _mm256_storeu_ps(ft + 8, _mm256_add_ps(a1, b1));
        if (w > 16) _mm256_storeu_ps(ft + 16, _mm256_add_ps(a2, b2));
        if (w > 24) _mm256_storeu_ps(ft + 24, _mm256_add_ps(a3, b3));
        return;
    }
#endif
    memset(ft, 0, (size_t)w * sizeof(float));
    for (long i = 0; i < kept; i++) {
        float l = lam[i];
        const float *restrict row = zy + (long)idx[i] * stride;
        #pragma omp simd
        for (long k = 0; k < w; k++) ft[k] += l * row[k];
    }
}

/* One row λ of Λ at R positions, given by its entries that can move the mixes (next_kept): weights lam[0..kept)
   of examples idx[0..kept). zy (m, R, 2v) holds a_ip x_ip (c logits, zeros to v), then a_ip y_ip (c
   targets), a_ip, zeros to 2v, for example i at position p; a (m, R) the weights a_ip (NULL: all 1); v > c is a
   multiple of CHUNK. At each position p the mix is w_ip = λ_i a_ip / D_p,
   D_p = Σ_i λ_i a_ip (the gathered column v + c), and f_p = Σ_i w_ip x_ip, t_p = Σ_i w_ip y_ip. Adds the soft
   cross-entropy ℓ_p = logsumexp(f_p)·Σt_p − Σ_k t_pk f_pk to sums[p] and its gradient with respect to x_ip,
   scaled, to grad (m, R, v): w_ip (softmax(f_p) Σt_p − t_p). scratch: 3v floats. */
static void mix_row(const float *restrict lam, const int32_t *restrict idx, long kept, long R, long c,
                    const float *restrict zy, const float *restrict a, long v, float scale, float *restrict grad,
                    double *restrict sums, float *restrict scratch) {
    float *restrict ft = scratch, *restrict g = scratch + 2 * v;
    for (long p = 0; p < R; p++) {
        gather(lam, idx, kept, zy + p * 2 * v, R * 2 * v, 2 * v, ft);
        const float *f = ft, *t = ft + v;
        float inv = 1.0f / t[c], top = -INFINITY, mass = 0.0f, linear = 0.0f, total = 0.0f;
        #pragma omp simd reduction(max:top)
        for (long k = 0; k < v; k++) top = fmaxf(top, k < c ? f[k] : -INFINITY);
        #pragma omp simd reduction(+:mass, linear, total)
        for (long k = 0; k < v; k++) { /* whole vectors, the padding masked out */
            float e = k < c ? expf((f[k] - top) * inv) : 0.0f;
            float tk = k < c ? t[k] : 0.0f;
            g[k] = e;
            total += e;
            mass += tk;
            linear += tk * f[k];
        }
        mass *= inv; /* Σt_p; f and t are the gathered sums over D_p */
        linear *= inv * inv;
        top *= inv;
        float share = mass / total;
        #pragma omp simd
        for (long k = 0; k < v; k++) g[k] = k < c ? (g[k] * share - t[k] * inv) * scale * inv : 0.0f;
        for (long i = 0; i < kept; i++) {
            long at = idx[i] * R + p;
            float l = a != NULL ? lam[i] * a[at] : lam[i];
            float *restrict out = grad + at * v;
            for (long k = 0; k < v; k += CHUNK) {
                #pragma omp simd
                for (int u = 0; u < CHUNK; u++) out[k + u] += l * g[k + u];
            }
        }
        sums[p] += (top + logf(total)) * mass - linear;
    }
}

/* Whether x is finite, from its bits (-ffast-math lets the compiler assume isfinite() true). */
static inline int finite_bits(float x) {
    uint32_t bits;
    memcpy(&bits, &x, sizeof bits);
    return (bits & 0x7f800000u) != 0x7f800000u;
}

/* The mixed loss of MultiMix (R = 1, a = NULL) and Dense MultiMix (R positions, weights a) in one pass, Λ never
   stored: over rows 0..n of the call's Λ (the rows dirichlet() draws under the same seed and law), the mean of
   mix_row's ℓ_p into loss[p] and its gradient with respect to the logits x (m, R, c) into grad (m, R, c); targets
   y (m, R, c), weights a (m, R) in [least, 1] or NULL (least = 1); v > c, a multiple of CHUNK, is native.py's
   padded_classes(c) (room for D_p's column). Rows are summed per group of consecutive streams (`groups` of them,
   shared out between the OpenMP threads from parallel_entries entries on), then the groups in order: the result
   depends on the seed and the shapes alone. Returns 0, or 1 when memory ran out (loss and grad
   unset). */
int mix_cross_entropy(uint64_t seed, int kind, float p, float q, float floor_, long n, long m, long R, long c,
                      long v, const float *logits, const float *targets, const float *a, float least,
                      long rows_per_stream, long groups, long parallel_entries, float *loss, float *grad) {
    const law_t law = {kind, p, q, floor_};
    const long width = R * 2 * v;
    const long streams = (n + rows_per_stream - 1) / rows_per_stream;
    const float scale = 1.0f / (float)n;
    float cut, log_cut; /* next_kept's */
    float *zy = calloc((size_t)(m * width), sizeof(float)); /* mix_row's operand: weighted logits and targets */
    float *parts = malloc((size_t)(groups * m * R * v) * sizeof(float));
    double *sums = calloc((size_t)(groups * R), sizeof(double));
    int failed = zy == NULL || parts == NULL || sums == NULL;
    if (!failed) {
        /* the cut-off also scales with the spread of the examples' magnitudes: min over examples with a nonzero
           value of their largest |value| (logits and targets, every position), over the largest of all */
        float low = INFINITY, high = 0.0f;
        for (long i = 0; i < m; i++) {
            float top = 0.0f;
            for (long k = 0; k < R * c; k++)
                top = fmaxf(top, fmaxf(fabsf(logits[i * R * c + k]), fabsf(targets[i * R * c + k])));
            high = fmaxf(high, top);
            low = top > 0.0f ? fminf(low, top) : low;
        }
        int finite = 1;
        for (long k = 0; k < m * R * c; k++) finite &= finite_bits(logits[k]) & finite_bits(targets[k]);
        least *= !finite ? 0.0f : high > 0.0f ? low / high : 1.0f;
        least = fmaxf(least, 1.17549435e-38f); /* a normal number: the cut-off stays a product of normals */
        cut = least * (5.9604645e-08f / (float)m);
        log_cut = logf(cut);
        for (long at = 0; at < m * R; at++) {
            float w = a != NULL ? a[at] : 1.0f;
            for (long k = 0; k < c; k++) {
                zy[at * 2 * v + k] = w * logits[at * c + k];
                zy[at * 2 * v + v + k] = w * targets[at * c + k];
            }
            zy[at * 2 * v + v + c] = w;
        }
        #pragma omp parallel if (n * m >= parallel_entries)
        {
            /* a row's candidates, its kept weights and their indices, then mix_row's scratch */
            float *lam = malloc((size_t)(3 * m + 3 * v) * sizeof(float));
            int32_t *idx = lam != NULL ? (int32_t *)(lam + 2 * m) : NULL;
            if (lam == NULL) {
                #pragma omp atomic write
                failed = 1;
            }
            #pragma omp for schedule(static)
            for (long g = 0; g < groups; g++) {
                if (lam == NULL) continue;
                float *part = parts + g * m * R * v;
                memset(part, 0, (size_t)(m * R * v) * sizeof(float));
                for (long s = g * streams / groups; s < (g + 1) * streams / groups; s++) {
                    stream_t stream;
                    long stop = (s + 1) * rows_per_stream < n ? (s + 1) * rows_per_stream : n;
                    start_stream(&stream, seed, (uint64_t)s);
                    for (long r = s * rows_per_stream; r < stop; r++) {
                        long kept = next_kept(&law, &stream, m, cut, log_cut, lam, idx, lam + m);
                        mix_row(lam + m, idx, kept, R, c, zy, a, v, scale, part, sums + g * R, lam + 3 * m);
                    }
                }
            }
            free(lam);
        }
    }
    if (!failed) {
        for (long pos = 0; pos < R; pos++) {
            double total = 0.0;
            for (long g = 0; g < groups; g++) total += sums[g * R + pos];
            loss[pos] = (float)(total / (double)n);
        }
        for (long at = 0; at < m * R; at++)
            for (long k = 0; k < c; k++) {
                float sum = 0.0f;
                for (long g = 0; g < groups; g++) sum += parts[(g * m * R + at) * v + k];
                grad[at * c + k] = sum;
            }
    }
    free(zy);
    free(parts);
    free(sums);
    return failed;
}

/* The threads a parallel region of this library would use (tests: that it is torch's OpenMP runtime). */
int max_threads(void) { return omp_get_max_threads(); }
