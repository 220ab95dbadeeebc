"""The fused sampler (multimix.native): its bits against the published generators, its streams, its place beside
the other routes, and its build's safety. Its law is tested with the others' in test_dirichlet.py."""

import ctypes.util
import os
import platform
import shutil
import subprocess
import sys
import textwrap

import numpy as np
import pytest
import torch

import multimix.functional as MF
from multimix import native, sampling
from multimix.sampling import NativeUnavailable

MASK = 2**64 - 1


def splitmix64(seed: int, index: int) -> int:
    """Output ``index`` (from 0) of Vigna's splitmix64 seeded with ``seed``: a plain reference."""
    z = (seed + (index + 1) * 0x9E3779B97F4A7C15) & MASK
    z = ((z ^ (z >> 30)) * 0xBF58476D1CE4E5B9) & MASK
    z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) & MASK
    return z ^ (z >> 31)


class Xoshiro256pp:
    """Blackman & Vigna's xoshiro256plusplus.c, transcribed."""

    def __init__(self, state):
        self.s = list(state)

    def next(self) -> int:
        s = self.s
        rotl = lambda x, k: ((x << k) | (x >> (64 - k))) & MASK  # noqa: E731
        result = (rotl((s[0] + s[3]) & MASK, 23) + s[0]) & MASK
        t = (s[1] << 17) & MASK
        s[2] ^= s[0]
        s[3] ^= s[1]
        s[1] ^= s[2]
        s[0] ^= s[3]
        s[2] ^= t
        s[3] = rotl(s[3], 45)
        return result


def compiled():
    lib = native.kernels()
    if lib is None:
        pytest.skip("the fused sampler did not compile here")
    return lib


def can_compile() -> bool:
    return (shutil.which(os.environ.get("CC") or "cc") is not None and ctypes.util.find_library("mvec") is not None
            and os.environ.get("MULTIMIX_NATIVE", "1") != "0")


def run_python(code: str, **env) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", textwrap.dedent(code)], capture_output=True, text=True, timeout=300,
                          env={**os.environ, **env})


def test_it_compiles_where_a_compiler_and_libmvec_exist():
    """So that the tests of the fused sampler here and in test_dirichlet.py cannot skip silently where they
    should run (CI has gcc and glibc)."""
    if not can_compile():
        pytest.skip("no C compiler or no libmvec here")
    assert native.kernels() is not None


def test_reference_generators_reproduce_their_published_vectors():
    assert [splitmix64(0, i) for i in range(3)] == [0xE220A8397B1DCDAF, 0x6E789E6AA1B965F4, 0x06C45D188009454F]
    g = Xoshiro256pp([1, 2, 3, 4])
    assert [g.next() for _ in range(10)] == [
        41943041, 58720359, 3588806011781223, 3591011842654386, 9228616714210784205, 9973669472204895162,
        14011001112246962877, 12406186145184390807, 15849039046786891736, 10450023813501588000]


@pytest.mark.parametrize("seed,stream", [(0, 0), (12345, 3), (2**63 - 5, 2**20)])
def test_stream_bits_are_xoshiro256pp_lanes_seeded_by_splitmix64(seed, stream):
    """Stream s's lane l starts from splitmix64 outputs 4(16s + l) .. + 3 of the seed; output k·16 + l of the
    stream is lane l's k-th, bit for bit."""
    lib = compiled()
    got = native.stream_outputs(lib, seed, stream, 2)
    lanes = [Xoshiro256pp([splitmix64(seed, 4 * (native.LANES * stream + lane) + j) for j in range(4)])
             for lane in range(native.LANES)]
    expected = [lanes[lane].next() for _ in range(2 * native.STEPS) for lane in range(native.LANES)]
    assert got.tolist() == expected


def test_rows_do_not_depend_on_how_they_are_split():
    """A call's rows equal the same rows computed stream by stream (the unit of work a thread takes), and the
    same rows computed by 1, 2 or 3 of torch's OpenMP threads (the library shares torch's runtime)."""
    lib = compiled()
    m = 48
    per = native.rows_per_stream(m)
    whole = np.empty((5 * per + 5, m), dtype=np.float32)  # ≥ PARALLEL_ENTRIES: threads share it out
    assert whole.size >= native.PARALLEL_ENTRIES
    native.dirichlet(lib, whole, 0.3, 99)
    parts = np.empty_like(whole)
    for start in range(0, whole.shape[0], per):
        native.dirichlet(lib, parts[start:start + per], 0.3, 99, first_row=start)
    np.testing.assert_array_equal(whole, parts)
    assert not np.array_equal(whole[:per], whole[per:2 * per])  # streams differ
    before = torch.get_num_threads()
    try:
        for threads in (1, 2, 3):
            torch.set_num_threads(threads)
            assert lib.max_threads() == threads  # one OpenMP runtime: torch's
            shared = np.empty_like(whole)
            native.dirichlet(lib, shared, 0.3, 99)
            np.testing.assert_array_equal(whole, shared)
    finally:
        torch.set_num_threads(before)
    with pytest.raises(ValueError, match="first_row"):
        native.dirichlet(lib, parts[1:], 0.3, 99, first_row=1)


@pytest.mark.parametrize("alpha", [0.02, 1.0, 3.0])
def test_auto_is_the_fused_sampler_in_float32_and_advances_the_generator_like_the_eager_one(alpha):
    """Every CPU route draws one 63-bit seed from the generator and nothing else, so switching routes does not
    shift the draws that follow."""
    compiled()
    states = []
    for method in ("auto", "native", "eager"):
        g = torch.Generator().manual_seed(3)
        lam = MF.dirichlet(200, 16, alpha, generator=g, method=method)
        states.append(g.get_state())
        if method == "auto":
            auto = lam
        elif method == "native":
            assert torch.equal(lam, auto)
        else:
            assert not torch.equal(lam, auto)  # another stream, the same law
    assert all(torch.equal(states[0], s) for s in states[1:])


def test_native_is_refused_where_it_cannot_run(monkeypatch):
    g = torch.Generator().manual_seed(0)
    with pytest.raises(NativeUnavailable, match="float32"):
        MF.dirichlet(4, 4, 0.5, generator=g, method="native", dtype=torch.float64)
    with pytest.raises(NativeUnavailable, match="alpha"):
        MF.dirichlet(4, 4, 1e-31, generator=g, method="native")
    assert torch.isfinite(MF.dirichlet(4, 4, 1e-31, generator=g)).all()  # "auto" takes the eager sampler
    meta = torch.device("meta")  # any device but the CPU
    for method in ("native", "eager"):
        with pytest.raises((NativeUnavailable, ValueError), match=f"method='{method}'"):
            sampling.dirichlet_rows(4, 4, 0.5, generator=None, device=meta, dtype=torch.float32, method=method)
    monkeypatch.setenv("MULTIMIX_NATIVE", "0")
    with pytest.raises(NativeUnavailable, match="MULTIMIX_NATIVE=0"):
        MF.dirichlet(4, 4, 0.5, generator=g, method="native")
    a = MF.dirichlet(100, 8, 0.5, generator=torch.Generator().manual_seed(1))
    assert torch.equal(a, MF.dirichlet(100, 8, 0.5, generator=torch.Generator().manual_seed(1), method="eager"))


def test_loading_it_keeps_subnormal_arithmetic():
    """The library is linked without -ffast-math: linking with it adds crtfastmath.o, which switches on
    flush-to-zero for the whole process when the library loads. The check below sees that trap (shown with a
    library linked that way)."""
    compiled()
    check = "import numpy as np, torch; print(float(np.float32(1e-40) * np.float32(1)) > 0, float(torch.tensor(1e-40) * 1) > 0)"
    ours = run_python(f"from multimix import native; assert native.kernels() is not None; {check}")
    assert ours.stdout.split() == ["True", "True"], ours.stderr
    with_trap = run_python(f"""
        import ctypes, pathlib, subprocess, tempfile
        folder = pathlib.Path(tempfile.mkdtemp())
        (folder / "t.c").write_text("int f(void) {{ return 1; }}")
        subprocess.run(["cc", "-shared", "-fPIC", "-ffast-math", str(folder / "t.c"), "-o", str(folder / "t.so")], check=True)
        ctypes.CDLL(str(folder / "t.so"))
        {check}""")
    assert with_trap.stdout.split() == ["False", "False"], with_trap.stderr


def test_it_builds_privately_and_refuses_a_cache_others_may_write(tmp_path):
    """A library is loaded only from a folder that is the user's alone: the cache (0700), or, where the cache is
    not private, a temporary folder of the process."""
    (tmp_path / "tmp").mkdir()
    if not can_compile():
        pytest.skip("no C compiler or no libmvec here")
    probe = """
        import torch
        from multimix import native
        import multimix.functional as MF
        lib = native.kernels()
        lam = MF.dirichlet(50, 8, 0.5, generator=torch.Generator().manual_seed(0))
        print(lib is not None, bool(torch.isfinite(lam).all()))
    """
    fresh = run_python(probe, XDG_CACHE_HOME=str(tmp_path / "fresh"))
    assert fresh.stdout.split() == ["True", "True"], fresh.stderr
    folder = tmp_path / "fresh" / "multimix" / "native"
    built = list(folder.glob("*.so"))
    assert len(built) == 1
    for path in (folder, built[0]):
        assert path.stat().st_mode & 0o077 == 0, oct(path.stat().st_mode)

    shared = tmp_path / "shared" / "multimix" / "native"
    shared.mkdir(parents=True)
    shared.chmod(0o777)  # anyone could plant a library here
    refused = run_python(probe, XDG_CACHE_HOME=str(tmp_path / "shared"), TMPDIR=str(tmp_path / "tmp"))
    assert refused.stdout.split() == ["True", "True"], refused.stderr  # built in a private temporary folder
    assert not list(shared.rglob("*.so"))  # nothing written to, or loaded from, the shared folder
    assert not list((tmp_path / "tmp").iterdir())  # the temporary build is gone once loaded

    (tmp_path / "not-a-folder").write_text("")  # a cache that cannot be created: the same fallback
    unusable = run_python(probe, XDG_CACHE_HOME=str(tmp_path / "not-a-folder"), TMPDIR=str(tmp_path / "tmp"))
    assert unusable.stdout.split() == ["True", "True"], unusable.stderr


@pytest.mark.skipif(platform.machine() != "x86_64", reason="compares an AVX2 build with this machine's")
def test_a_build_without_avx512_draws_the_same_rows(tmp_path):
    """The portable paths of the C source (scalar compaction, 8-lane libmvec) give the same Λ as this machine's
    build up to the rounding of the vector logarithms: same bits, same algorithm."""
    lib = compiled()
    ours = np.empty((200, 32), dtype=np.float32)
    native.dirichlet(lib, ours, 0.05, 2024)
    portable = run_python(f"""
        import numpy as np
        from multimix import native
        native.FLAGS = tuple("-march=x86-64-v3" if f == "-march=native" else f for f in native.FLAGS)
        lib = native.kernels()
        assert lib is not None
        out = np.empty((200, 32), dtype=np.float32)
        native.dirichlet(lib, out, 0.05, 2024)
        np.save({str(tmp_path / "portable.npy")!r}, out)""", XDG_CACHE_HOME=str(tmp_path / "cache"))
    assert portable.returncode == 0, portable.stderr
    np.testing.assert_allclose(np.load(tmp_path / "portable.npy"), ours, rtol=1e-4, atol=1e-30)


def test_the_squeeze_decides_every_candidate_as_the_logarithm_does(tmp_path):
    """For small α the acceptance test s − log E ≤ 1 is decided from bounds on log E read off E's bits, and log E
    is taken only where they leave it open: a build that always takes log E gives the same Λ, bit for bit."""
    lib = compiled()
    alphas = (1 / 128, 0.01, 0.05, 0.3, 0.6)  # p = 1/α ≥ 1.5: the squeeze's range
    ours = []
    for alpha in alphas:
        ours.append(np.empty((4000, 128), dtype=np.float32))
        native.dirichlet(lib, ours[-1], alpha, 7)
    plain = run_python(f"""
        import numpy as np
        from multimix import native
        native.FLAGS = native.FLAGS + ("-DSQUEEZE_P=3.0e38f",)
        lib = native.kernels()
        assert lib is not None
        for k, alpha in enumerate({alphas!r}):
            out = np.empty((4000, 128), dtype=np.float32)
            native.dirichlet(lib, out, alpha, 7)
            np.save({str(tmp_path)!r} + f"/plain{{k}}.npy", out)""", XDG_CACHE_HOME=str(tmp_path / "cache"))
    assert plain.returncode == 0, plain.stderr
    for k, rows in enumerate(ours):
        np.testing.assert_array_equal(np.load(tmp_path / f"plain{k}.npy"), rows)
