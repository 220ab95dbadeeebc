"""The fused CPU Λ sampler: random bits, gammas and row normalisation in one compiled C loop (float32).

The eager CPU sampler (:mod:`multimix.sampling`) pays for numpy's random bits
(64 per entry at α ≠ 1: 2.2–4.5 ns on the development machine) and for a dozen
tensor passes over memory. This kernel draws its bits inside the loop from
xoshiro256++ (Blackman & Vigna 2021) stepped on 16 SIMD lanes at once, as
Julia's default generator does for bulk draws (each 64-bit output two 32-bit
words, each uniform (w + 1/2)·2^-31 from a word's top 31 bits w), and runs the
eager sampler's algorithms on them:

- α < 1: log Gamma(α) up to a constant from two exponentials (the eager
  sampler's exponential proposal for Gamma(1 + α) and its boost); for
  α ≤ 2/3 its acceptance test s − log E ≤ 1 is first decided from bounds on
  log E read off E's bits, and log E is taken only for the few candidates they
  leave open (the same decisions, bit for bit);
- α = 1: exponentials −log U;
- α > 1: Marsaglia & Tsang (2000) with Box–Muller normals;

then the row normalisation (for α < 1 in log space, each weight floored at
≈ 1e-36 of its row maximum). Rejected candidates are skipped: each row takes
the next m accepted candidates of an i.i.d. stream, so every row is exactly
Dir(α·1_m), as on the other routes. Rows are cut into streams of
``STREAM_ENTRIES`` entries; the 16 lane states of stream s are splitmix64
outputs 64·s .. 64·s + 63 of the call's seed (Vigna's seeding), so a result
does not depend on how rows are shared between threads (torch's OpenMP
threads: the library uses the runtime torch loaded).

The C source (``native_sampler.c`` beside this module) is compiled with the
system's C compiler (``$CC`` or ``cc``) on first use (about a second) into the
user's cache, ``$XDG_CACHE_HOME/multimix/native``, which must belong to the
user and be writable by nobody else (where it is not usable: a private
temporary folder of the process, deleted once the library is loaded). The
build is keyed by the source, the flags, the compiler and the CPU's features
(``-march=native``) and loaded with :mod:`ctypes`, as torch's inductor and
``cpp_extension.load`` do with theirs. ``-ffast-math`` lets gcc call glibc's
vector ``logf``/``expf``/``cosf`` (libmvec); it is given to the compile step
only, because linking with it adds crtfastmath.o, which would switch on
flush-to-zero for the whole process when the library loads. Any failure (no
compiler, no libmvec, another libc) leaves :func:`kernels` returning None and
the eager sampler in charge. ``MULTIMIX_NATIVE=0`` turns it off.
"""

from __future__ import annotations

import ctypes
import hashlib
import math
import os
import shutil
import subprocess
import tempfile
import threading
from importlib import resources
from pathlib import Path
from typing import Optional

import numpy as np
import torch  # loaded before the library, so that torch's libgomp.so.1 is the process's copy
from torch import Tensor

__all__ = ["LANES", "MIN_ALPHA", "STEPS", "STREAM_ENTRIES", "dirichlet", "kernels", "log_weight_floor",
           "mix_cross_entropy", "padded_classes", "partial_sums", "rows_per_stream", "stream_outputs"]

STREAM_ENTRIES = 1 << 15  # entries per stream (rows_per_stream rows of m): the unit of work of a thread
# from two streams on, threads share the work: torch's pool is awake (spinning) right after its own ops, so even
# n = 1000 (m = 128, 4 streams) halves at two threads (0.45 -> 0.23 ms, benchmarks/sampler_threads.py --n 1000)
PARALLEL_ENTRIES = 2 * STREAM_ENTRIES
PARTIAL_FLOATS = 1 << 20  # the most floats of partial gradients mix_cross_entropy keeps (4 MB)
MIN_ALPHA = 1e-30  # below, 1/α leaves float32's range: such α take the eager sampler
# xoshiro256++ generators per stream, one per SIMD lane, and steps of all of them per refill (512 outputs: a multiple
# of 16, which the AVX-512 compaction takes at a time); given to the compiler, their one definition
LANES, STEPS = 16, 32
CHUNK = 8  # the mixing operands' rows are padded to a multiple of this many floats (one AVX2 vector)

SOURCE_FILE = "native_sampler.c"  # beside this module (package data)
# -fopenmp links libgomp.so.1 by soname, so the process's copy, the one torch loaded, serves the library too: one
# thread pool (no second team spinning against torch's), sized by torch.set_num_threads
FLAGS = ("-O3", "-march=native", "-ffast-math", "-fopenmp", "-fPIC", f"-DLANES={LANES}", f"-DSTEPS={STEPS}",
         f"-DCHUNK={CHUNK}", "-c")
LIBS = ("-shared", "-fopenmp", "-lmvec", "-lm")
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
    code = (resources.files(__package__) / SOURCE_FILE).read_text(encoding="utf-8")
    key = hashlib.sha256("\0".join([code, *FLAGS, *LIBS, compiler, _cpu_identity()]).encode()).hexdigest()[:20]
    folder.mkdir(parents=True, exist_ok=True, mode=0o700)
    if not all(_private(p) for p in (folder, folder.parent)):
        return None
    library = folder / f"sampler-{key}.so"
    if not (library.exists() and _private(library)):
        with tempfile.TemporaryDirectory(dir=folder) as tmp:
            source, obj, built = Path(tmp) / "sampler.c", Path(tmp) / "sampler.o", Path(tmp) / "sampler.so"
            source.write_text(code, encoding="utf-8")
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
    lib.dirichlet.argtypes = [u64, ctypes.c_int, f32, f32, f32, ptr, long, long, long, long, long]
    lib.stream_outputs.restype = lib.dirichlet.restype = None
    lib.mix_cross_entropy.argtypes = [u64, ctypes.c_int, f32, f32, f32, long, long, long, long, long, ptr, ptr, ptr,
                                      f32, long, long, long, ptr, ptr]
    lib.mix_cross_entropy.restype = ctypes.c_int
    lib.max_threads.argtypes, lib.max_threads.restype = [], ctypes.c_int
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


def log_weight_floor(m: int, tiny: float) -> float:
    """log(e·tiny·m): the lowest log-weight kept below a row's maximum (rows of m weights, ``tiny`` the dtype's
    smallest normal number). Lower ones are raised to it, so no weight of a row is subnormal (≈ 1e-36 of the
    largest in float32, far below what the row sum resolves). The one definition, for every CPU route."""
    return math.log(tiny) + math.log(m) + 1.0


def rows_per_stream(m: int) -> int:
    """Rows of m entries in one stream."""
    return max(1, STREAM_ENTRIES // m)


def dirichlet(lib, out: np.ndarray, alpha: float, seed: int, *, first_row: int = 0) -> None:
    """Fill ``out`` (rows, m) float32 C-contiguous with rows ``first_row``.. of the call's Λ ~ Dir(α·1_m) under
    the 64-bit ``seed``; ``first_row`` must be a multiple of :func:`rows_per_stream` (m).

    From ``PARALLEL_ENTRIES`` entries on, whole streams are shared out between
    torch's OpenMP threads (``torch.set_num_threads``); the result is the same
    for any thread count.
    """
    rows, m = _check_rows(out, "out")
    per_stream = rows_per_stream(m)
    if first_row < 0 or first_row % per_stream:
        raise ValueError(f"first_row must be a non-negative multiple of {per_stream} (rows per stream), got {first_row}")
    lib.dirichlet(seed, *_law(alpha, m), out.ctypes.data, first_row, rows, m, per_stream, PARALLEL_ENTRIES)


def padded_classes(c: int) -> int:
    """v: c classes and the weight column after them, in whole CHUNKs (the width of each half of the kernel's
    operand rows, and of its partial gradients' rows)."""
    return (c // CHUNK + 1) * CHUNK


def partial_sums(n: int, m: int, width: int) -> int:
    """The groups of consecutive streams whose sums :func:`mix_cross_entropy` keeps apart (then adds in order),
    for gradients of m rows of ``width`` floats: at most 64, and at most ``PARTIAL_FLOATS`` floats of partial
    gradients; a function of the shapes alone, so that the result does not depend on the thread count."""
    streams = -(-n // rows_per_stream(m))
    return max(1, min(streams, 64, PARTIAL_FLOATS // (width * m)))


def mix_cross_entropy(lib, logits: Tensor, targets: Tensor, n: int, alpha: float, seed: int,
                      weights: Optional[Tensor] = None) -> "tuple[Tensor, Tensor]":
    """MultiMix's and Dense MultiMix's mixed loss without storing Λ: (L (R,), ∂(Σ_p L_p)/∂X, shaped like X).

    X (``logits``) and Y (``targets``) are (m, R, c) (R positions; (m, c) for one) contiguous float32 CPU
    tensors, a (``weights``) an optional (m, R) one with entries in (0, 1]. For each row λ of Λ, which is
    :func:`dirichlet`'s (n, m) under the same ``seed`` and α, and each position p, the mix is
    w_ip = λ_i a_ip / Σ_i' λ_i' a_i'p (w = λ without weights) and L_p is the mean over the rows of
    −Σ_c t_c log softmax(f)_c with f = Σ_i w_ip x_ip, t = Σ_i w_ip y_ip.

    Each row is drawn, mixed, scored and back-propagated while it is in the L1 cache, over the entries that
    can move a float32 sum: λ_i ≥ 2^-24/m · max λ · ``least``, with ``least`` = min a · min_i s_i / max_i s_i
    and s_i the largest |x_i·|, |y_i·| of example i (rows of zeros aside; 0 when a value is not finite: then
    every entry), computed in the kernel. The others add up to less than 2^-24
    of max λ · min a · min_i s_i, the float32 rounding of any kept term's scale. That is about 20 of m = 128
    entries at the default concentration α = 1/m (each factor 10 less in ``least`` adds about α·m·log 10); for
    α < 1 the cut is made on the log-weights, so that only the kept entries are exponentiated. No n·m array is
    written or read.
    """
    m, *positions, c = logits.shape
    R = positions[0] if positions else 1
    for name, x in (("logits", logits), ("targets", targets)):
        if x.dtype != torch.float32 or x.shape != logits.shape or not x.is_contiguous() or x.device.type != "cpu":
            raise ValueError(f"{name} must be a contiguous float32 CPU tensor (m, c) or (m, R, c) like logits "
                             f"{tuple(logits.shape)}, got {x.dtype} {tuple(x.shape)}")
    least, address = 1.0, None
    if weights is not None:
        if weights.dtype != torch.float32 or weights.shape != (m, R) or not weights.is_contiguous():
            raise ValueError(f"weights must be a contiguous (m, R) = {(m, R)} float32 tensor, got {weights.dtype} "
                             f"{tuple(weights.shape)}")
        low, high = torch.aminmax(weights)
        if not 0.0 < float(low) <= float(high) <= 1.0:
            raise ValueError(f"weights must lie in (0, 1], got [{float(low)}, {float(high)}]")
        least, address = float(low), weights.data_ptr()
    loss, grad = torch.empty(R, dtype=torch.float32), torch.empty(logits.shape, dtype=torch.float32)
    v = padded_classes(c)
    failed = lib.mix_cross_entropy(seed, *_law(alpha, m), n, m, R, c, v, logits.data_ptr(), targets.data_ptr(),
                                   address, least, rows_per_stream(m), partial_sums(n, m, R * v), PARALLEL_ENTRIES,
                                   loss.data_ptr(), grad.data_ptr())
    if failed:
        raise MemoryError(f"mix_cross_entropy: out of memory for the partial sums of {n} rows of {m}")
    return loss, grad


def _check_rows(a: np.ndarray, name: str) -> "tuple[int, int]":
    if a.dtype != np.float32 or a.ndim != 2 or not a.flags.c_contiguous:
        raise ValueError(f"{name} must be a C-contiguous 2-D float32 array, got {a.dtype} {a.shape}")
    return a.shape


def _law(alpha: float, m: int) -> "tuple[int, float, float, float]":
    """(kind, p, q, floor) of the C law for Dir(α·1_m)."""
    if not MIN_ALPHA <= alpha < float("inf"):
        raise ValueError(f"alpha must be in [{MIN_ALPHA}, inf) for the fused sampler, got {alpha}")
    if alpha < 1.0:
        kind, p, q = 0, 1.0 / alpha, 0.0
    elif alpha == 1.0:
        kind, p, q = 1, 0.0, 0.0
    else:
        d = alpha - 1.0 / 3.0
        kind, p, q = 2, d, 1.0 / (9.0 * d) ** 0.5
    return kind, p, q, log_weight_floor(m, float(np.finfo(np.float32).tiny))
