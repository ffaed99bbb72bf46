"""Torch tensors on kvshim spans, for adapters (needs torch).

A tensor from span_tensor() lives in a span reserved from kvshim directly,
not through PyTorch's caching allocator: that allocator keeps a freed
tensor's range for its next tensors, which would then land on pages no one
backs. The span goes to torch as a DLPack capsule, which names the device:
torch takes the address without asking the driver about it (no page backs
it yet). The capsule's deleter, called by torch when the last tensor
viewing the span is gone, releases the span (kvshim fences before the pages
leave, so kernels still queued are safe).
"""
import ctypes
import os

import kvshim

_CAPSULE = b"dltensor"          # DLPack's name for an unused capsule
_new_capsule = ctypes.pythonapi.PyCapsule_New
_new_capsule.restype = ctypes.py_object
_new_capsule.argtypes = [ctypes.c_void_p, ctypes.c_char_p, ctypes.c_void_p]
_capsule_unused = ctypes.pythonapi.PyCapsule_IsValid
_capsule_unused.restype = ctypes.c_int
_capsule_unused.argtypes = [ctypes.py_object, ctypes.c_char_p]


MAX_DEVICES = 64


def devices():
    """The CUDA devices whose memory kvshim manages (KVSHIM_DEVICE), read as
    the library reads it: a set of ordinals, None for all (the default),
    or an empty set for a malformed value (kvshim is then disabled): "all"
    in any case, or ordinals 0 to 63 in digits only, separated by commas,
    each once (" 1", "+1", "0,,1", "0,0" manage nothing)."""
    value = os.environ.get("KVSHIM_DEVICE", "all")
    if value.lower() == "all":
        return None
    found = set()
    for item in value.split(","):
        if not item or not all("0" <= c <= "9" for c in item):
            return set()
        n = int(item)
        if n >= MAX_DEVICES or n in found:
            return set()
        found.add(n)
    return found


def manages(index):
    """Whether kvshim manages CUDA device index (see devices())."""
    listed = devices()
    if index is None or not 0 <= index < MAX_DEVICES:
        return False
    return listed is None or index in listed


def span_tensor(torch, shape, dtype, device=None):
    """A contiguous tensor of shape and dtype on CUDA device index device
    (None: the current device), no page of it backed yet (back what kernels
    touch with kvshim.map or a Group). kvshim reserves it on the device
    current when it is called: with device, that device is made current for
    the call (torch.cuda.device), so each rank of a tensor-parallel engine,
    or each layer of one split over GPUs, gets its span on its own GPU.
    Raises KvshimError when kvshim cannot reserve it, ValueError for an
    empty shape, a dtype of no integer size, or a span that did not land on
    the device asked for."""
    shape = tuple(int(d) for d in shape)
    elem = dtype.itemsize
    if elem not in (1, 2, 4, 8):
        raise ValueError("kvshim: no span tensors of %s" % dtype)
    if not shape or min(shape) <= 0:
        raise ValueError("kvshim: span tensor of shape %s holds no bytes" % (shape,))
    # made as integers of the element's size and viewed as the dtype asked
    # for: DLPack has no float8, and torch none of some of DLPack's types
    if device is None:
        managed = kvshim.reserve_dlpack(shape, kvshim.DL_INT, 8 * elem)
    else:
        with torch.cuda.device(device):
            managed = kvshim.reserve_dlpack(shape, kvshim.DL_INT, 8 * elem)
    capsule = None
    try:
        capsule = _new_capsule(managed, _CAPSULE, None)
        t = torch.utils.dlpack.from_dlpack(capsule)
    except BaseException:
        if capsule is None or _capsule_unused(capsule, _CAPSULE):
            kvshim.dlpack_free(managed)     # torch did not take it
        raise
    want = torch.cuda.current_device() if device is None else device
    if not t.is_cuda or t.device.index != want:
        raise ValueError("kvshim: span tensor landed on %s, not on cuda:%d" % (t.device, want))
    return t.view(dtype)
