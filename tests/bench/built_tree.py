"""What a GPU script needs to run kvshim from a built tree (after make):
the environment of a child run plain or under scripts/kvshim-run, as
scripts/gpu-suite.sh sets it. Imported by the benchmarks here and by
tests/gpu's scripts; runs nothing itself."""
import os

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def environment(base=None):
    """A copy of base (os.environ) without LD_PRELOAD, with the tree's
    library, kvshim-config and Python package as defaults (KVSHIM_LIB,
    KVSHIM_CONFIG_BIN, KVSHIM_PYTHONPATH) and a gpu-libs/ folder, where the
    tree has one (libraries the built programs need that the GPU machine
    lacks), first on LD_LIBRARY_PATH."""
    env = dict(os.environ if base is None else base)
    env.pop("LD_PRELOAD", None)
    env.setdefault("KVSHIM_LIB", os.path.join(ROOT, ".libs", "libkvshim.so"))
    env.setdefault("KVSHIM_CONFIG_BIN", os.path.join(ROOT, "kvshim-config"))
    env.setdefault("KVSHIM_PYTHONPATH", os.path.join(ROOT, "scripts", "python"))
    libs = os.path.join(ROOT, "gpu-libs")
    if os.path.isdir(libs):
        env["LD_LIBRARY_PATH"] = libs + (":" + env["LD_LIBRARY_PATH"]
                                         if env.get("LD_LIBRARY_PATH") else "")
    return env


def kvshim_run():
    """The tree's kvshim-run, to put before a command (KVSHIM_RUN names it
    where the build tree is not the source tree, as make check sets it)."""
    return os.environ.get("KVSHIM_RUN") or os.path.join(ROOT, "scripts", "kvshim-run")


def has_gpu():
    """Whether torch is here and sees a GPU (a script exits 77, Automake's
    skip, when not)."""
    try:
        import torch
    except ImportError:
        return False
    return torch.cuda.is_available()
