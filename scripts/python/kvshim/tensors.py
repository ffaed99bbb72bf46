"""Torch tensors on kvshim spans, for adapters (needs torch).

A tensor from span_tensor() lives in a span reserved from kvshim directly,
not through PyTorch's caching allocator: that allocator keeps a freed
tensor's range for its next tensors, which would then land on pages no one
backs. The span is released when the last tensor viewing it is gone
(kvshim fences before the pages leave, so kernels still queued are safe).
"""
import os

import kvshim

# __cuda_array_interface__ has no bfloat16 or float8: the tensor is made as
# integers of the element's size and viewed as the dtype asked for
_INT_TYPESTR = {1: "|i1", 2: "<i2", 4: "<i4", 8: "<i8"}


class SpanOwner:
    """One span, handed to torch through __cuda_array_interface__; torch
    holds it as long as the storage lives, and dropping it releases the
    span."""

    def __init__(self, addr, shape, typestr):
        self.addr = addr
        self.__cuda_array_interface__ = {
            "version": 3, "shape": tuple(shape), "typestr": typestr,
            "data": (addr, False), "strides": None, "stream": None}

    def release(self):
        addr, self.addr = self.addr, None
        if addr is not None:
            kvshim.release(addr)

    def __del__(self):
        try:
            self.release()
        except Exception:   # at interpreter exit the process frees it anyway
            pass


def device_index():
    """The CUDA device whose memory kvshim manages (KVSHIM_DEVICE)."""
    try:
        return int(os.environ.get("KVSHIM_DEVICE", "0"))
    except ValueError:
        return 0


def span_tensor(torch, shape, dtype):
    """A contiguous tensor of shape and dtype on kvshim's device, no page of
    it backed yet (back what kernels touch with kvshim.map or a Group).
    Raises KvshimError when kvshim cannot reserve or back it, ValueError for
    an empty shape or a dtype of no integer size."""
    shape = tuple(int(d) for d in shape)
    elem = dtype.itemsize
    if elem not in _INT_TYPESTR:
        raise ValueError("kvshim: no span tensors of %s" % dtype)
    nbytes = elem
    for d in shape:
        nbytes *= d
    if nbytes <= 0:
        raise ValueError("kvshim: span tensor of shape %s holds no bytes" % (shape,))
    owner = SpanOwner(kvshim.reserve(nbytes), shape, _INT_TYPESTR[elem])
    try:
        # torch asks the driver which device the address is on, and an
        # address with no page behind it is on none: back the first page
        # meanwhile (it stays cached for the blocks that will claim it)
        kvshim.map(owner.addr, 1)
        try:
            t = torch.as_tensor(owner)
        finally:
            kvshim.unmap(owner.addr, 1)
        if not t.is_cuda or t.device.index != device_index():
            raise ValueError("kvshim: span tensor landed on %s, not on KVSHIM_DEVICE %d"
                             % (t.device, device_index()))
    except BaseException:
        owner.release()
        raise
    return t.view(dtype)
