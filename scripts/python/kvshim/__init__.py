"""kvshim from Python: a thin ctypes binding over libkvshim.so's C ABI.

No compiled extension. The library is the one already in the process (when
preloaded, as kvshim-run does), else the one named by KVSHIM_LIB, else the
one installed next to this package (<libdir>/libkvshim.so for a package in
<libdir>/kvshim/python/kvshim), else the build tree's (.libs/libkvshim.so).

Every call raises KvshimError (with .code, a kvshim_error) when the library
returns an error, and KvshimError with EINVAL, calling nothing, for an int
its C type cannot hold: ctypes would wrap it silently into another value
(block 2**64 + 1 into block 1, a size of -1 into the largest).

Devices: a call on an address (map, unmap, release, a Group's calls) goes
to the GPU whose span holds it; reserve, reserve_dlpack, trim and stats act
on the calling thread's current CUDA device (torch.cuda.device(i) or
torch.cuda.set_device(i) make i current), as the C interface does.
"""
import contextlib
import ctypes
import operator
import os

__all__ = ["KvshimError", "EINVAL", "ERANGE", "ENOTCLAIMED", "ELIMIT", "ENOMEM",
           "EDRIVER", "ENODEV", "ECONFIG", "EBUSY", "ESTATE", "library", "kv_begin",
           "kv_end", "window", "map", "unmap", "reserve", "release", "reserve_dlpack",
           "dlpack_free", "DLManaged", "trim", "stats", "share_demand", "share_unused",
           "share_asked", "Group"]

_lib = None

# enum kvshim_error (kvshim.h)
(EINVAL, ERANGE, ENOTCLAIMED, ELIMIT, ENOMEM, EDRIVER, ENODEV, ECONFIG, EBUSY,
 ESTATE) = range(-1, -11, -1)


class KvshimError(OSError):
    """A kvshim call failed; .code is the kvshim_error."""

    def __init__(self, code, what):
        self.code = code
        super().__init__(code, "%s: %s" % (what, _strerror(code)))


class Stats(ctypes.Structure):
    _fields_ = [(name, ctypes.c_size_t) for name in (
        "page_bytes", "reserved_bytes", "mapped_bytes", "cached_bytes",
        "pooled_bytes", "physical_bytes", "peak_physical_bytes", "limit_bytes",
        "spans")] + [(name, ctypes.c_ulonglong) for name in (
            "map_calls", "pages_mapped", "map_ns", "pages_unmapped", "unmap_ns",
            "pages_created", "create_ns", "pages_released", "release_ns",
            "pages_zeroed", "zero_ns", "share_waits", "share_wait_ns",
            "share_waits_used", "share_waits_failed", "share_budget_bytes",
            "share_members", "capture_gate_waits", "capture_gate_wait_ns")]


class DLManaged(ctypes.Structure):
    """DLPack's DLManagedTensor (dlpack.h, unversioned), as
    kvshim_reserve_dlpack describes a span."""


DLManaged._fields_ = [
    ("data", ctypes.c_void_p), ("device_type", ctypes.c_int32),
    ("device_id", ctypes.c_int32), ("ndim", ctypes.c_int32),
    ("code", ctypes.c_uint8), ("bits", ctypes.c_uint8), ("lanes", ctypes.c_uint16),
    ("shape", ctypes.POINTER(ctypes.c_int64)), ("strides", ctypes.POINTER(ctypes.c_int64)),
    ("byte_offset", ctypes.c_uint64), ("manager_ctx", ctypes.c_void_p),
    ("deleter", ctypes.CFUNCTYPE(None, ctypes.POINTER(DLManaged)))]

# DLPack type codes
DL_INT, DL_UINT, DL_FLOAT, DL_BFLOAT = 0, 1, 2, 4


def _loaded():
    """The libkvshim.so already in the process (preloaded), found by its
    soname without a search, or None."""
    try:
        return ctypes.CDLL("libkvshim.so", mode=os.RTLD_NOLOAD)
    except OSError:
        return None


def _candidates():
    if os.environ.get("KVSHIM_LIB"):
        yield os.environ["KVSHIM_LIB"]
    here = os.path.dirname(os.path.abspath(__file__))
    yield os.path.normpath(os.path.join(here, "..", "..", "..", "libkvshim.so"))
    yield os.path.normpath(os.path.join(here, "..", "..", "..", ".libs", "libkvshim.so"))


def library():
    """The libkvshim.so this process uses, loaded once."""
    global _lib
    if _lib is None:
        lib = _loaded()
        for path in () if lib else _candidates():
            if os.path.exists(path):
                lib = ctypes.CDLL(path)
                break
        if lib is None:
            raise OSError("kvshim: libkvshim.so not found (set KVSHIM_LIB)")
        vp, sz, i, ll = ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int, ctypes.c_longlong
        sigs = {
            "kvshim_kv_begin": [], "kvshim_kv_end": [],
            "kvshim_map": [vp, sz], "kvshim_unmap": [vp, sz],
            "kvshim_reserve": [sz, ctypes.POINTER(vp)], "kvshim_release": [vp],
            "kvshim_reserve_dlpack": [i, ctypes.POINTER(ll), ctypes.c_uint, ctypes.c_uint,
                                      ctypes.POINTER(vp)],
            "kvshim_trim": [sz, ctypes.POINTER(sz)],
            "kvshim_stats": [ctypes.POINTER(Stats)],
            "kvshim_group_create": [ctypes.POINTER(vp), sz, sz, sz, ctypes.POINTER(i)],
            "kvshim_group_destroy": [i],
            "kvshim_group_map": [i, ctypes.POINTER(ll), sz],
            "kvshim_group_unmap": [i, ctypes.POINTER(ll), sz],
            "kvshim_group_headroom": [i, ctypes.POINTER(sz)],
            "kvshim_group_can_back": [i, ctypes.POINTER(ll), sz],
            "kvshim_share_demand": [sz],
            "kvshim_share_unused": [sz],
            "kvshim_share_asked": [ctypes.POINTER(sz)],
            "kvshim_group_share_demand": [i, sz],
            "kvshim_group_share_unused": [i, sz],
            "kvshim_group_share_asked": [i, ctypes.POINTER(sz)],
            "kvshim_group_share_entitled": [i, ctypes.POINTER(sz)],
            "kvshim_group_stats": [i, ctypes.POINTER(Stats)],
            "kvshim_capture_wait": [ctypes.c_uint],
        }
        for name, args in sigs.items():
            fn = getattr(lib, name)
            fn.argtypes = args
            fn.restype = ctypes.c_int
        lib.kvshim_strerror.argtypes = [ctypes.c_int]
        lib.kvshim_strerror.restype = ctypes.c_char_p
        _lib = lib
    return _lib


def _strerror(code):
    try:
        return library().kvshim_strerror(code).decode()
    except OSError:
        return "kvshim error %d" % code


def _check(rc, what):
    if rc < 0:
        raise KvshimError(rc, what)
    return rc


# The ranges of the C types the calls take. ctypes converts a Python int to
# any of them by masking, never checking: every int is checked against its
# type's range here first, and refused as the C call refuses a bad argument.
_SIZE_MAX = (1 << (8 * ctypes.sizeof(ctypes.c_size_t))) - 1
_UINT_MAX = (1 << (8 * ctypes.sizeof(ctypes.c_uint))) - 1
_LLONG_MAX = (1 << (8 * ctypes.sizeof(ctypes.c_longlong) - 1)) - 1
_PTR_MAX = (1 << (8 * ctypes.sizeof(ctypes.c_void_p))) - 1


def _int(v, lo, hi, what, name):
    """v (an int, or anything with __index__, e.g. a numpy int) checked to
    lie in [lo, hi]; else KvshimError(EINVAL) naming the argument. A float
    or other non-int is a TypeError, as ctypes would raise."""
    n = operator.index(v)
    if not lo <= n <= hi:
        raise KvshimError(EINVAL, "%s: %s %d out of range" % (what, name, n))
    return n


def _size(v, what, name="size"):
    """A size_t argument: 0 to SIZE_MAX (a negative size is refused, not
    read as a huge one)."""
    return _int(v, 0, _SIZE_MAX, what, name)


def _addr(v, what):
    """A pointer argument: None (NULL) or an address that fits one."""
    return None if v is None else _int(v, 0, _PTR_MAX, what, "address")


def _clamped(nbytes):
    """A stated byte count (share_demand, share_unused) as size_t: below 0
    is none, as before; above SIZE_MAX is all there is (never wrapped into a
    small one)."""
    return min(max(int(nbytes), 0), _SIZE_MAX)


def kv_begin():
    """Open a KV window: large allocations become lazy spans until kv_end."""
    _check(library().kvshim_kv_begin(), "kvshim_kv_begin")


def kv_end():
    _check(library().kvshim_kv_end(), "kvshim_kv_end")


@contextlib.contextmanager
def window():
    """with kvshim.window(): allocate the KV cache."""
    kv_begin()
    try:
        yield
    finally:
        kv_end()


def map(addr, length):
    w = "kvshim_map"
    _check(library().kvshim_map(_addr(addr, w), _size(length, w, "length")), w)


def unmap(addr, length):
    w = "kvshim_unmap"
    _check(library().kvshim_unmap(_addr(addr, w), _size(length, w, "length")), w)


def reserve(size):
    """A lazy span of size bytes on the current device; its address."""
    p = ctypes.c_void_p()
    w = "kvshim_reserve"
    _check(library().kvshim_reserve(_size(size, w), ctypes.byref(p)), w)
    return p.value


def release(addr):
    _check(library().kvshim_release(_addr(addr, "kvshim_release")), "kvshim_release")


def reserve_dlpack(shape, code, bits):
    """A lazy span for a dense tensor of shape and DLPack type (code, bits),
    on the current device, described as a DLManagedTensor naming that
    device: its address (a pointer to DLManaged). Whoever takes it calls its deleter, which
    releases the span; dlpack_free does that for one never handed over."""
    w = "kvshim_reserve_dlpack"
    # each checked for its C type only (long long, unsigned): which values
    # are valid (dimensions at least 1, bits a power of two) the C call says
    shape = [_int(d, -_LLONG_MAX - 1, _LLONG_MAX, w, "dimension") for d in shape]
    code = _int(code, 0, _UINT_MAX, w, "type code")
    bits = _int(bits, 0, _UINT_MAX, w, "bits")
    dims = (ctypes.c_longlong * len(shape))(*shape)
    p = ctypes.c_void_p()
    _check(library().kvshim_reserve_dlpack(len(shape), dims, code, bits, ctypes.byref(p)), w)
    return p.value


def dlpack_free(managed):
    """Release what reserve_dlpack made and no framework took."""
    m = DLManaged.from_address(managed)
    m.deleter(ctypes.pointer(m))


def trim(nbytes):
    """Give up to nbytes of the current device's back to the driver; the
    bytes given back."""
    freed = ctypes.c_size_t()
    w = "kvshim_trim"
    _check(library().kvshim_trim(_size(nbytes, w, "nbytes"), ctypes.byref(freed)), w)
    return freed.value


def stats():
    """This process's figures on the current device, as a dict."""
    s = Stats()
    _check(library().kvshim_stats(ctypes.byref(s)), "kvshim_stats")
    return {name: getattr(s, name) for name, _ in Stats._fields_}


def share_demand(nbytes):
    """State the bytes this process waits for now beyond the pages it maps
    (its idle pages count in it; 0: none), e.g. what the requests waiting
    for admission need; it holds for one second unless stated again.
    Nothing without a shared budget."""
    _check(library().kvshim_share_demand(_clamped(nbytes)), "kvshim_share_demand")


def share_unused(nbytes):
    """State the bytes of pages this process maps that only blocks no
    request uses claim (an engine's prefix cache; 0: none): unless it
    waits, the fair shares count them out of what it uses and ask for them
    first. It holds for one second unless stated again. Nothing without a
    shared budget."""
    _check(library().kvshim_share_unused(_clamped(nbytes)), "kvshim_share_unused")


def share_asked():
    """The bytes of what this process uses it is asked to give back now
    (its unused pages first: see share_unused; then what it uses above its
    fair share while others wait below theirs); 0 without a shared
    budget."""
    n = ctypes.c_size_t()
    _check(library().kvshim_share_asked(ctypes.byref(n)), "kvshim_share_asked")
    return n.value


def capture_wait(timeout_ms):
    """Wait until no stream of this process captures a CUDA graph, for at
    most timeout_ms (include/kvshim.h: for a thread doing an engine's work
    beside it, whose driver calls would slow the capture): True when none
    does, False when one still does then, or when this thread began one."""
    ms = min(max(0, int(timeout_ms)), 0xFFFFFFFF)
    return library().kvshim_capture_wait(ms) == 0


def _ids(blocks, what):
    """blocks as a long long array and its length. Ids are checked against
    long long's range and below 0 (no group has a negative block: the C
    call refuses one too), by the smallest and largest only, so an engine's
    every step pays two C-speed scans, not a Python loop."""
    blocks = list(blocks)
    if blocks:
        lo, hi = min(blocks), max(blocks)
        if lo < 0 or hi > _LLONG_MAX:
            raise KvshimError(EINVAL, "%s: block %d out of range"
                              % (what, lo if lo < 0 else hi))
    return (ctypes.c_longlong * len(blocks))(*blocks), len(blocks)


class Group:
    """KV tensors sharing one block geometry: block b is bytes
    [b * block_bytes, (b + 1) * block_bytes) of every tensor. The tensors
    may be on several GPUs: each block is backed on each tensor's own."""

    def __init__(self, bases, block_bytes, nblocks):
        w = "kvshim_group_create"
        bases = [_addr(b, w) for b in bases]
        block_bytes = _size(block_bytes, w, "block_bytes")
        nblocks = _size(nblocks, w, "nblocks")
        arr = (ctypes.c_void_p * len(bases))(*bases)
        gid = ctypes.c_int()
        _check(library().kvshim_group_create(arr, len(bases), block_bytes, nblocks,
                                             ctypes.byref(gid)), w)
        self.id = gid.value
        self.block_bytes = block_bytes
        self.nblocks = nblocks
        self.ntensors = len(bases)

    def map(self, blocks):
        """Back the blocks in every tensor, all or none (KvshimError)."""
        arr, n = _ids(blocks, "kvshim_group_map")
        _check(library().kvshim_group_map(self.id, arr, n), "kvshim_group_map")

    def unmap(self, blocks):
        arr, n = _ids(blocks, "kvshim_group_unmap")
        _check(library().kvshim_group_unmap(self.id, arr, n), "kvshim_group_unmap")

    def can_back(self, blocks=None, n=None):
        """Whether these block ids (or n more blocks) can be backed now."""
        w = "kvshim_group_can_back"
        if blocks is None:
            return _check(library().kvshim_group_can_back(self.id, None, _size(n, w, "n")),
                          w) == 1
        arr, k = _ids(blocks, w)
        return _check(library().kvshim_group_can_back(self.id, arr, k), w) == 1

    def headroom(self):
        room = ctypes.c_size_t()
        _check(library().kvshim_group_headroom(self.id, ctypes.byref(room)),
               "kvshim_group_headroom")
        return room.value

    def share_demand(self, nbytes):
        """share_demand for this group's blocks: nbytes over all its
        tensors, each GPU its part (by the tensors on it), whatever the
        current device."""
        _check(library().kvshim_group_share_demand(self.id, _clamped(nbytes)),
               "kvshim_group_share_demand")

    def share_unused(self, nbytes):
        """share_unused for this group's blocks, as share_demand."""
        _check(library().kvshim_group_share_unused(self.id, _clamped(nbytes)),
               "kvshim_group_share_unused")

    def share_asked(self):
        """share_asked for this group: the most any of its GPUs asks for,
        in bytes over all its tensors."""
        n = ctypes.c_size_t()
        _check(library().kvshim_group_share_asked(self.id, ctypes.byref(n)),
               "kvshim_group_share_asked")
        return n.value

    def share_entitled(self):
        """The bytes of this group's blocks (over all its tensors) the
        process is entitled to: its weighted part of the shared budget were
        every member to want all (at most its KVSHIM_LIMIT, and what
        another's limit keeps it from holding going to the rest), the least
        over the group's GPUs; None
        where none shares a budget."""
        n = ctypes.c_size_t()
        _check(library().kvshim_group_share_entitled(self.id, ctypes.byref(n)),
               "kvshim_group_share_entitled")
        return None if n.value == ctypes.c_size_t(-1).value else n.value

    def stats(self):
        """stats() on the GPU of the group's first tensor, whatever the
        current device."""
        st = Stats()
        _check(library().kvshim_group_stats(self.id, ctypes.byref(st)), "kvshim_group_stats")
        return {name: getattr(st, name) for name, _ in Stats._fields_}

    def close(self):
        if self.id:
            _check(library().kvshim_group_destroy(self.id), "kvshim_group_destroy")
            self.id = 0
