"""Loaded by Python at start-up when kvshim-run puts this folder on
PYTHONPATH: installs kvshim's engine adapters, then runs the
sitecustomize that this one shadows, if there is one."""
import importlib.machinery
import importlib.util
import os
import sys

try:
    import kvshim.adapters
    kvshim.adapters.install()
except Exception as e:  # never stop the user's program
    sys.stderr.write("kvshim: warning: adapters not installed: %s\n" % e)

_here = os.path.dirname(os.path.abspath(__file__))
for _entry in sys.path:
    if os.path.abspath(_entry or ".") == _here:
        continue
    _spec = importlib.machinery.PathFinder.find_spec("sitecustomize", [_entry])
    if _spec is not None and _spec.origin and os.path.dirname(_spec.origin) != _here:
        _mod = importlib.util.module_from_spec(_spec)
        _spec.loader.exec_module(_mod)
        break
