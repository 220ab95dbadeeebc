"""The fused CPU Λ sampler: random bits, gammas and row normalisation in one compiled C loop (float32).

The eager CPU sampler (:mod:`multimix.sampling`) pays for numpy's random bits
(64 per entry at α ≠ 1: 2.2–4.5 ns on the development machine) and for a dozen
tensor passes over memory. This kernel draws its bits inside the loop from
xoshiro256++ (Blackman & Vigna 2021) stepped on 16 SIMD lanes at once, as
Julia's default generator does for bulk draws, and runs the eager sampler's
algorithms on them:

- α < 1: log Gamma(α) up to a constant from two exponentials (the eager
  sampler's exponential proposal for Gamma(1 + α) and its boost);
- α = 1: exponentials −log U;
- α > 1: Marsaglia & Tsang (2000) with Box–Muller normals;

then the row normalisation (for α < 1 in log space, each weight floored at
≈ 1e-36 of its row maximum). Rejected candidates are skipped: each row takes
the next m accepted candidates of an i.i.d. stream, so every row is exactly
Dir(α·1_m), as on the other routes. Rows are cut into streams of
``STREAM_ENTRIES`` entries; the 16 lane states of stream s are splitmix64
outputs 64·s .. 64·s + 63 of the call's seed (Vigna's seeding), so a result
does not depend on how rows are shared between threads.

The C source below is compiled with the system's C compiler (``$CC`` or ``cc``)
on first use (about a second) into the user's cache
(``$XDG_CACHE_HOME/multimix/native``, which must belong to the user and be
writable by nobody else; where it is not usable, a private temporary folder
of the process, deleted once the library is loaded), keyed by the source, the flags, the compiler and the
CPU's features (``-march=native``), and loaded with :mod:`ctypes`, as torch's
inductor and ``cpp_extension.load`` do with theirs. ``-ffast-math`` lets gcc
call glibc's vector ``logf``/``expf``/``cosf`` (libmvec); it is given to the
compile step only, because linking with it adds crtfastmath.o, which would
switch on flush-to-zero for the whole process when the library loads. Any
failure (no compiler, no libmvec, another libc) leaves :func:`kernels`
returning None and the eager sampler in charge. ``MULTIMIX_NATIVE=0`` turns it
off.
"""

from __future__ import annotations

import ctypes
import hashlib
import os
import shutil
import subprocess
import tempfile
import threading
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Optional

import numpy as np

__all__ = ["LANES", "MIN_ALPHA", "STEPS", "STREAM_ENTRIES", "dirichlet", "kernels", "rows_per_stream", "stream_outputs"]

STREAM_ENTRIES = 1 << 15  # entries per stream (rows_per_stream rows of m): the unit of work of a thread
PARALLEL_ENTRIES = 1 << 17  # below, one thread: a thread hand-off costs ~50 µs, the work ~4 ns per entry
MIN_ALPHA = 1e-30  # below, 1/α leaves float32's range: such α take the eager sampler
LANES, STEPS = 16, 32  # as in SOURCE: xoshiro256++ generators per stream, and steps of all of them per refill

SOURCE = r"""
#include <math.h>
#include <stdint.h>
#include <string.h>
#if defined(__AVX512F__)
#include <immintrin.h>
#endif

#define LANES 16   /* xoshiro256++ generators stepped side by side, one per SIMD lane */
#define STEPS 32   /* steps of all lanes per refill: 512 outputs of 64 bits, 1,024 words */
#define OUTPUTS (LANES * STEPS)

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

/* STEPS steps of xoshiro256++ (Blackman & Vigna 2021) on every lane: output k·LANES + l is lane l's k-th, its low
   32 bits in lo[], its high 32 bits in hi[]. */
static void xoshiro(lanes_t *restrict st, uint32_t *restrict lo, uint32_t *restrict hi) {
    uint64_t s0[LANES], s1[LANES], s2[LANES], s3[LANES];
    for (int l = 0; l < LANES; l++) { s0[l] = st->s0[l]; s1[l] = st->s1[l]; s2[l] = st->s2[l]; s3[l] = st->s3[l]; }
    for (int k = 0; k < STEPS; k++) {
        #pragma omp simd
        for (int l = 0; l < LANES; l++) {
            uint64_t r = rotl(s0[l] + s3[l], 23) + s0[l], t = s1[l] << 17;
            s2[l] ^= s0[l];
            s3[l] ^= s1[l];
            s1[l] ^= s2[l];
            s0[l] ^= s3[l];
            s2[l] ^= t;
            s3[l] = rotl(s3[l], 45);
            lo[k * LANES + l] = (uint32_t)r;
            hi[k * LANES + l] = (uint32_t)(r >> 32);
        }
    }
    for (int l = 0; l < LANES; l++) { st->s0[l] = s0[l]; st->s1[l] = s1[l]; st->s2[l] = s2[l]; st->s3[l] = s3[l]; }
}

/* The first `refills`·OUTPUTS 64-bit outputs of stream `stream` under `seed`, in order (for tests). */
void stream_outputs(uint64_t seed, uint64_t stream, long refills, uint64_t *out) {
    lanes_t st;
    uint32_t lo[OUTPUTS], hi[OUTPUTS];
    seed_lanes(&st, seed, stream);
    for (long r = 0; r < refills; r++) {
        xoshiro(&st, lo, hi);
        for (int i = 0; i < OUTPUTS; i++) out[r * OUTPUTS + i] = (uint64_t)hi[i] << 32 | lo[i];
    }
}

/* U = (word + 1/2)·2^-32: the midpoints of 2^32 equal cells of (0, 1), never 0, so every logarithm is finite (which
   -ffast-math assumes); float32 rounds U to 1 for the top 2^-25 of words, whose log, 0, callers treat. */
static inline float unit(uint32_t w) { return ((float)w + 0.5f) * 2.3283064365386963e-10f; }

/* One refill: candidates v[0..count) and acceptance flags ok[] (0 or 1) from OUTPUTS fresh outputs; returns count.
   Each loop has one candidate per lane and 32-bit flags, so that gcc vectorises it (with libmvec's logf). */
static int refill(int kind, float p, float q, lanes_t *st, float *restrict v, int32_t *restrict ok) {
    uint32_t lo[OUTPUTS], hi[OUTPUTS];
    xoshiro(st, lo, hi);
    if (kind == 1) { /* α = 1: log U = −E, one per word (the normalisation divides by the row sum: the sign cancels) */
        #pragma omp simd
        for (int i = 0; i < OUTPUTS; i++) {
            v[i] = logf(unit(lo[i])); /* log U = 0 (U rounded to 1): E = 0, a weight of 0 */
            v[OUTPUTS + i] = logf(unit(hi[i]));
            ok[i] = ok[OUTPUTS + i] = 1;
        }
        return 2 * OUTPUTS;
    }
    if (kind == 0) { /* α < 1, p = 1/α: s = E − W/α with E from the low word, W from the high, accepted when
                        s − log E ≤ 1 (and E > 0); one per output */
        #pragma omp simd
        for (int i = 0; i < OUTPUTS; i++) {
            float e = -logf(unit(lo[i]));
            float s = e + logf(unit(hi[i])) * p;
            float test = s - logf(fmaxf(e, 1e-30f)); /* E = 0 (U rounded to 1) is rejected: −log E = ∞ */
            v[i] = s;
            ok[i] = (e > 0.0f) & (test <= 1.0f);
        }
        return OUTPUTS;
    }
    /* α > 1, p = d = α − 1/3, q = c = 1/√(9d): v = (1 + c x)³, x ~ N(0, 1) by Box–Muller from output i's words,
       accepted when x² + 6d log t − 2dv − 2 log U > −2d with t = 1 + c x > 0 and U from a word of output
       OUTPUTS/2 + i; two per pair of outputs */
    const int half = OUTPUTS / 2;
    #pragma omp simd
    for (int i = 0; i < half; i++) {
        float radius = sqrtf(-2.0f * logf(unit(lo[i])));
        float angle = (float)hi[i] * 1.4629180792671596e-09f; /* 2π·2^-32 */
        /* sin θ as cos(π/2 − θ): gcc would fuse sinf and cosf of one angle into cexpif, which does not vectorise */
        float xa = radius * cosf(angle), xb = radius * cosf(1.5707963267948966f - angle);
        float ta = 1.0f + q * xa, tb = 1.0f + q * xb;
        float ca = ta * ta * ta, cb = tb * tb * tb;
        float testa = xa * xa + 6.0f * p * logf(fmaxf(ta, 1e-30f)) - 2.0f * p * ca - 2.0f * logf(unit(lo[half + i]));
        float testb = xb * xb + 6.0f * p * logf(fmaxf(tb, 1e-30f)) - 2.0f * p * cb - 2.0f * logf(unit(hi[half + i]));
        v[i] = ca;
        v[half + i] = cb;
        ok[i] = (ta > 0.0f) & (testa > -2.0f * p);
        ok[half + i] = (tb > 0.0f) & (testb > -2.0f * p);
    }
    return OUTPUTS;
}

/* Move the accepted candidates of v[0..size) to its front, in order; returns their count. */
static int compact(float *v, const int32_t *ok, int size) {
    int k = 0;
#if defined(__AVX512F__)
    /* 16 at a time: the store of a chunk ends before the next chunk starts (k <= i), so in place is safe */
    for (int i = 0; i < size; i += 16) {
        __m512 x = _mm512_loadu_ps(v + i);
        __mmask16 keep = _mm512_test_epi32_mask(_mm512_loadu_si512((const void *)(ok + i)), _mm512_set1_epi32(-1));
        _mm512_storeu_ps(v + k, _mm512_maskz_compress_ps(keep, x));
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

/* Rows [first_row, first_row + rows) of a call's Λ (out points at first_row's row; first_row is a multiple of
   rows_per_stream). kind 0: α < 1 (p = 1/α), 1: α = 1, 2: α > 1 (p = d, q = c); floor: log-weights below the
   row maximum are raised to it (kind 0). */
void dirichlet(uint64_t seed, int kind, float p, float q, float floor_, float *out, long first_row,
               long rows, long m, long rows_per_stream) {
    float v[2 * OUTPUTS];
    int32_t ok[2 * OUTPUTS];
    lanes_t st;
    for (long done = 0; done < rows; done += rows_per_stream) {
        long stop = done + rows_per_stream < rows ? done + rows_per_stream : rows;
        int pos = 0, size = 0; /* v[pos..size): accepted candidates not yet used */
        seed_lanes(&st, seed, (uint64_t)((first_row + done) / rows_per_stream));
        for (long r = done; r < stop; r++) {
            float *o = out + r * m;
            long k = 0;
            while (k < m) { /* the next m accepted candidates of the stream, in order */
                if (pos == size) {
                    size = refill(kind, p, q, &st, v, ok);
                    if (kind != 1) /* α = 1 rejects nothing */
                        size = compact(v, ok, size);
                    pos = 0;
                }
                long take = m - k < size - pos ? m - k : size - pos;
                memcpy(o + k, v + pos, (size_t)take * sizeof(float));
                k += take;
                pos += (int)take;
            }
            if (kind == 0) { /* softmax in log space, floored */
                float top = o[0], sum = 0.0f;
                for (long j = 1; j < m; j++) top = o[j] > top ? o[j] : top;
                #pragma omp simd reduction(+:sum)
                for (long j = 0; j < m; j++) {
                    float x = o[j] - top;
                    x = expf(x < floor_ ? floor_ : x);
                    o[j] = x;
                    sum += x;
                }
                float inv = 1.0f / sum;
                #pragma omp simd
                for (long j = 0; j < m; j++) o[j] *= inv;
            } else {
                float sum = 0.0f;
                #pragma omp simd reduction(+:sum)
                for (long j = 0; j < m; j++) sum += o[j];
                float inv = 1.0f / sum;
                #pragma omp simd
                for (long j = 0; j < m; j++) o[j] *= inv;
            }
        }
    }
}
"""
FLAGS = ("-O3", "-march=native", "-ffast-math", "-fopenmp-simd", "-fPIC", "-c")
LIBS = ("-shared", "-lmvec", "-lm")
COMPILE_SECONDS = 120

_LOCK = threading.Lock()
_LOADED: dict = {}


def _cpu_identity() -> str:
    """The CPU's model and feature flags (``-march=native`` code is specific to them)."""
    try:
        text = Path("/proc/cpuinfo").read_text(errors="replace")[:1_000_000]
    except OSError:
        return "unknown"
    keep = [line for line in text.splitlines() if line.startswith(("model name", "flags", "Features", "CPU part"))]
    return "\n".join(sorted(set(keep)))


def _cache_dir() -> Path:
    root = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache")
    return root / "multimix" / "native"


def _private(path: Path) -> bool:
    """Whether ``path`` belongs to this user and nobody else may write it (a library we would load from it)."""
    info = path.lstat()
    return info.st_uid == os.getuid() and not info.st_mode & 0o022


def _build(folder: Path, keep: bool) -> Optional[ctypes.CDLL]:
    """Compile (unless ``folder`` holds this build already) and load the library; None without a compiler, or
    when ``folder`` or its parent is not private. ``keep``: leave the library for later processes."""
    compiler = shutil.which(os.environ.get("CC") or "cc")
    if compiler is None:
        return None
    key = hashlib.sha256("\0".join([SOURCE, *FLAGS, *LIBS, compiler, _cpu_identity()]).encode()).hexdigest()[:20]
    folder.mkdir(parents=True, exist_ok=True, mode=0o700)
    if not all(_private(p) for p in (folder, folder.parent)):
        return None
    library = folder / f"sampler-{key}.so"
    if not (library.exists() and _private(library)):
        with tempfile.TemporaryDirectory(dir=folder) as tmp:
            source, obj, built = Path(tmp) / "sampler.c", Path(tmp) / "sampler.o", Path(tmp) / "sampler.so"
            source.write_text(SOURCE)
            for command in ([compiler, *FLAGS, str(source), "-o", str(obj)],
                            [compiler, str(obj), "-o", str(built), *LIBS]):
                done = subprocess.run(command, capture_output=True, timeout=COMPILE_SECONDS, stdin=subprocess.DEVNULL)
                if done.returncode != 0:
                    return None
            os.chmod(built, 0o700)
            os.replace(built, library)  # atomic: a concurrent process loads either nothing or the whole file
    lib = ctypes.CDLL(str(library))
    if not keep:
        library.unlink()  # the loaded mapping stays valid
    u64, f32, ptr, long = ctypes.c_uint64, ctypes.c_float, ctypes.c_void_p, ctypes.c_long
    lib.stream_outputs.argtypes = [u64, u64, long, ptr]
    lib.dirichlet.argtypes = [u64, ctypes.c_int, f32, f32, f32, ptr, long, long, long, long]
    lib.stream_outputs.restype = lib.dirichlet.restype = None
    return lib


def _load() -> Optional[ctypes.CDLL]:
    """From the user's cache; where it cannot be used (read-only, not private, not executable), built afresh in
    a private temporary folder of this process and deleted once loaded."""
    try:
        lib = _build(_cache_dir(), keep=True)
        if lib is not None:
            return lib
    except (OSError, subprocess.SubprocessError):
        pass
    with tempfile.TemporaryDirectory(prefix="multimix-native-") as tmp:  # mode 0700, ours
        return _build(Path(tmp) / "build", keep=False)


def kernels() -> Optional[ctypes.CDLL]:
    """The compiled kernels (built once per process, cached across processes), or None when off or unavailable."""
    if os.environ.get("MULTIMIX_NATIVE", "1") == "0":
        return None
    with _LOCK:
        if "lib" not in _LOADED:
            try:
                _LOADED["lib"] = _load()
            except (OSError, subprocess.SubprocessError):
                _LOADED["lib"] = None
        return _LOADED["lib"]


def stream_outputs(lib, seed: int, stream: int, refills: int) -> np.ndarray:
    """(refills·LANES·STEPS,) uint64: the first outputs of stream ``stream`` under ``seed``, in the
    order the sampler consumes them (output k·LANES + l of a refill is lane l's k-th)."""
    out = np.empty(refills * LANES * STEPS, dtype=np.uint64)
    lib.stream_outputs(seed, stream, refills, out.ctypes.data)
    return out


def rows_per_stream(m: int) -> int:
    """Rows of m entries in one stream."""
    return max(1, STREAM_ENTRIES // m)


def dirichlet(lib, out: np.ndarray, alpha: float, seed: int, *, first_row: int = 0, threads: int = 1) -> None:
    """Fill ``out`` (rows, m) float32 C-contiguous with rows ``first_row``.. of the call's Λ ~ Dir(α·1_m) under
    the 64-bit ``seed``; ``first_row`` must be a multiple of :func:`rows_per_stream` (m).

    With ``threads`` > 1 and at least ``PARALLEL_ENTRIES`` entries, whole
    streams are shared out between that many threads (the C loop runs without
    the GIL); the result is the same for any ``threads``.
    """
    if not MIN_ALPHA <= alpha < float("inf"):
        raise ValueError(f"alpha must be in [{MIN_ALPHA}, inf) for the fused sampler, got {alpha}")
    if out.dtype != np.float32 or out.ndim != 2 or not out.flags.c_contiguous:
        raise ValueError("out must be a C-contiguous (rows, m) float32 array")
    rows, m = out.shape
    per_stream = rows_per_stream(m)
    if first_row % per_stream or (first_row + rows) // per_stream >= 2**32:
        raise ValueError(f"first_row must be a multiple of {per_stream} below {per_stream} * 2^32")
    if alpha < 1.0:
        kind, p, q = 0, 1.0 / alpha, 0.0
    elif alpha == 1.0:
        kind, p, q = 1, 0.0, 0.0
    else:
        d = alpha - 1.0 / 3.0
        kind, p, q = 2, d, 1.0 / (9.0 * d) ** 0.5
    floor = float(np.log(np.finfo(np.float32).tiny) + np.log(m) + 1.0)

    def fill(start: int, stop: int) -> None:
        lib.dirichlet(seed, kind, p, q, floor, out[start:stop].ctypes.data, first_row + start, stop - start, m,
                      per_stream)

    streams = -(-rows // per_stream)
    workers = min(threads, streams) if rows * m >= PARALLEL_ENTRIES else 1
    if workers <= 1:
        fill(0, rows)
        return
    bounds = [per_stream * (streams * i // workers) for i in range(workers)] + [rows]
    pool = _pool(workers - 1)
    pending = [pool.submit(fill, bounds[i], bounds[i + 1]) for i in range(1, workers)]
    fill(bounds[0], bounds[1])  # this thread takes the first share
    for job in pending:
        job.result()


def _pool(size: int) -> ThreadPoolExecutor:
    """This process's helper threads (at least ``size``), made on first use and again after a fork."""
    with _LOCK:
        pool, pid, capacity = _LOADED.get("pool"), _LOADED.get("pool_pid"), _LOADED.get("pool_size", 0)
        if pool is None or pid != os.getpid() or capacity < size:
            if pool is not None and pid == os.getpid():
                pool.shutdown(wait=False)
            pool = ThreadPoolExecutor(max_workers=size, thread_name_prefix="multimix-sampler")
            _LOADED.update(pool=pool, pool_pid=os.getpid(), pool_size=size)
        return pool
