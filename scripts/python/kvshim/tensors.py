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


def device_index():
    """The CUDA device whose memory kvshim manages (KVSHIM_DEVICE), read as
    the library reads it: digits only (" 1" or "+1" disable kvshim there)."""
    value = os.environ.get("KVSHIM_DEVICE", "0")
    if value and all("0" <= c <= "9" for c in value):
        return int(value)
    return 0


def span_tensor(torch, shape, dtype):
    """A contiguous tensor of shape and dtype on kvshim's device, no page of
    it backed yet (back what kernels touch with kvshim.map or a Group).
    Raises KvshimError when kvshim cannot reserve it, ValueError for an
    empty shape or a dtype of no integer size."""
    shape = tuple(int(d) for d in shape)
    elem = dtype.itemsize
    if elem not in (1, 2, 4, 8):
        raise ValueError("kvshim: no span tensors of %s" % dtype)
    if not shape or min(shape) <= 0:
        raise ValueError("kvshim: span tensor of shape %s holds no bytes" % (shape,))
    # made as integers of the element's size and viewed as the dtype asked
    # for: DLPack has no float8, and torch none of some of DLPack's types
    managed = kvshim.reserve_dlpack(shape, kvshim.DL_INT, 8 * elem)
    capsule = None
    try:
        capsule = _new_capsule(managed, _CAPSULE, None)
        t = torch.utils.dlpack.from_dlpack(capsule)
    except BaseException:
        if capsule is None or _capsule_unused(capsule, _CAPSULE):
            kvshim.dlpack_free(managed)     # torch did not take it
        raise
    if not t.is_cuda or t.device.index != device_index():
        raise ValueError("kvshim: span tensor landed on %s, not on KVSHIM_DEVICE %d"
                         % (t.device, device_index()))
    return t.view(dtype)
