"""Engine adapters: first-touch signals from unmodified engines.

install() (called by kvshim-run's sitecustomize) registers an import hook:
when an engine module an adapter knows is imported, the adapter patches it
in place (no edit to the engine or to the user's script). The shared part
of every adapter is in blocks.py; an engine's own part is one small module
(transformers_cb.py and transformers_cb_reads.py for Hugging Face
transformers' continuous batching).
"""
import importlib.abc
import importlib.util
import sys

# module name -> (adapter module, function to call with the loaded module)
ADAPTERS = {
    "transformers.generation.continuous_batching.cache":
        ("kvshim.adapters.transformers_cb", "patch_cache_module"),
    "transformers.generation.continuous_batching.continuous_api":
        ("kvshim.adapters.transformers_cb", "patch_api_module"),
    "transformers.generation.continuous_batching.input_outputs":
        ("kvshim.adapters.transformers_cb_reads", "patch_io_module"),
    "transformers.generation.continuous_batching.model_runner":
        ("kvshim.adapters.transformers_cb_reads", "patch_runner_module"),
    "transformers.generation.continuous_batching.scheduler":
        ("kvshim.adapters.transformers_cb_reads", "patch_scheduler_module"),
}

_installed = False


def warn(msg):
    sys.stderr.write("kvshim: warning: %s\n" % msg)


class _Finder(importlib.abc.MetaPathFinder):
    """Finds nothing itself: wraps the loader of the modules adapters know."""

    def find_spec(self, name, path, target=None):
        if name not in ADAPTERS:
            return None
        for finder in sys.meta_path:
            if finder is self or not hasattr(finder, "find_spec"):
                continue
            spec = finder.find_spec(name, path, target)
            if spec is not None and spec.loader is not None:
                spec.loader = _Loader(spec.loader, name)
                return spec
        return None


class _Loader(importlib.abc.Loader):
    def __init__(self, inner, name):
        self.inner, self.name = inner, name

    def create_module(self, spec):
        return self.inner.create_module(spec)

    def exec_module(self, module):
        self.inner.exec_module(module)
        adapter, fn = ADAPTERS[self.name]
        try:
            getattr(importlib.import_module(adapter), fn)(module)
        except Exception as e:  # the engine must run even if the adapter cannot
            warn("%s: adapter not applied: %s" % (self.name, e))


def install():
    """Patch engine modules as they are imported (and any already are)."""
    global _installed
    if _installed:
        return
    _installed = True
    sys.meta_path.insert(0, _Finder())
    for name, (adapter, fn) in ADAPTERS.items():
        if name in sys.modules:
            getattr(importlib.import_module(adapter), fn)(sys.modules[name])
