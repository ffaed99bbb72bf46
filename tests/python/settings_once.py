"""kvshim's settings for one test file of a process. The library reads
them from the environment once, when the binding loads it (at the first
call), so in one unittest process over several test files only the first
file that sets them, before any call, has them: a later one's would come
too late for it and over the first's. Files named by their path (under
make check each runs as __main__)."""
import os
import sys
import unittest

_owner = None


def _started():
    """Whether the binding has loaded kvshim's library in this process."""
    return getattr(sys.modules.get("kvshim"), "_lib", None) is not None


def configure(path, **settings):
    """Set settings for the test file at path unless another test file of
    this process set its own first, or kvshim already started with
    others; whether they hold."""
    global _owner
    name = os.path.basename(path)
    if _owner is None and not _started():
        _owner = name
        os.environ.update(settings)
    return _owner == name


def skip_unless_mine(module):
    """For a test file's setUpModule (module: the file's own): skip its
    tests when its settings do not hold (see configure), saying how many."""
    name = os.path.basename(module.__file__)
    if _owner != name:
        tests = unittest.defaultTestLoader.loadTestsFromModule(module).countTestCases()
        why = ("%s's settings" % _owner if _owner is not None
               else "the settings kvshim started with before %s set its own" % name)
        raise unittest.SkipTest("all %d tests of %s skipped: %s hold in this process (the "
                                "library reads them once); run %s alone" % (tests, name, why, name))
