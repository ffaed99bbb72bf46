"""kvshim's settings for one test file of a process. The library reads
them from the environment once, when it starts (at a file's first call),
so in one unittest process over several test files only the first file
that sets them has them: a later one's would come too late for it and
over the first's."""
import os

_owner = []


def configure(owner, **settings):
    """Set settings for test file owner unless another test file of this
    process set its own first; whether owner's hold."""
    if _owner and _owner[0] != owner:
        return False
    _owner[:] = [owner]
    os.environ.update(settings)
    return True


def skip_unless_mine(owner, unittest):
    """For a file's setUpModule: skip its tests when another test file of
    this process set kvshim's settings (see configure)."""
    if _owner and _owner[0] != owner:
        raise unittest.SkipTest("kvshim's settings are %s's in this process (it reads them "
                                "once): run %s.py alone" % (_owner[0], owner))
