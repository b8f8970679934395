"""Replay a program's CUDA allocations on the CPU: fake compute, real allocation events.

Runs real model code (here torchtune@fef3ed10d with torchao 0.1) on the CPU under a
``TorchDispatchMode`` that replaces every compute op by an uninitialised tensor of the right shape
(computed on the meta device), keeps view ops real and skips in-place ops. Every output storage is
an allocation; a ``weakref.finalize`` on its StorageImpl is its free, at the moment CPython drops
the last reference. The events go through lorasize's model of the CUDA caching allocator
(``lorasize.memory.caching_allocator``), which says what ``torch.cuda.memory_reserved`` would.
"""
import weakref

import torch
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_map

from lorasize.memory.caching_allocator import CachingAllocator  # noqa: F401 (re-exported)


# ---------------------------------------------------------------- tracer
class Tracker:
    def __init__(self, sim):
        self.sim = sim
        self.n = 0
        self.seen = {}  # storage cdata -> key (alive)
        self.ignored = set()
        self.log = []
        self.raw_alloc = 0
        self.raw_peak = 0

    def ignore(self, t):
        self.ignored.add(t.untyped_storage()._cdata)

    def track(self, t, tag=""):
        if not isinstance(t, torch.Tensor) or t.device.type == "meta":
            return
        if type(t) is not torch.Tensor and not isinstance(t, torch.nn.Parameter):
            return  # subclass wrapper (NF4Tensor) has no storage of its own
        st = t.untyped_storage()
        cd = st._cdata
        if cd in self.ignored or cd in self.seen:
            return
        nbytes = st.nbytes()
        self.n += 1
        key = self.n
        self.seen[cd] = key
        self.sim.malloc(key, nbytes)
        self.raw_alloc += nbytes
        self.raw_peak = max(self.raw_peak, self.raw_alloc)
        if self.log is not None and nbytes >= (8 << 20):
            self.log.append(("a", key, nbytes, tag, self.sim.allocated, self.sim.reserved))

        def _free(cd=cd, key=key, nbytes=nbytes, tr=self):
            tr.seen.pop(cd, None)
            tr.sim.free(key)
            tr.raw_alloc -= nbytes

        weakref.finalize(st, _free)


REAL_OPS = {
    "aten::_unsafe_view", "aten::detach", "aten::alias", "aten::lift_fresh",
    "aten::_local_scalar_dense", "aten::is_same_size", "aten::sym_size",
    "aten::sym_stride", "aten::sym_numel", "aten::_has_compatible_shallow_copy_type",
    "aten::is_nonzero", "aten::equal", "aten::_reshape_alias", "aten::view",
    "aten::_to_copy_noop",
}


def _is_inplace(func):
    s = func._schema
    for a in s.arguments:
        if a.alias_info is not None and a.alias_info.is_write:
            return True
    return False


def _is_view(func):
    s = func._schema
    return any(r.alias_info is not None and not r.alias_info.is_write for r in s.returns)


class FakeCompute(TorchDispatchMode):
    def __init__(self, tracker, subclass_table=None, subclass_type=None):
        super().__init__()
        self.tr = tracker
        self.table = subclass_table or {}
        self.subtype = subclass_type
        self.tag = ""

    def __torch_dispatch__(self, func, types, args, kwargs=None):
        kwargs = kwargs or {}
        if self.subtype is not None and any(issubclass(t, self.subtype) for t in types):
            h = self.table.get(func)
            if h is None:
                raise NotImplementedError(f"NF4 op {func}")
            with self:
                return h(func, args, kwargs)
        name = func._schema.name
        flat = [a for a in torch.utils._pytree.tree_leaves((args, kwargs)) if isinstance(a, torch.Tensor)]
        if flat and all(t.dim() == 0 for t in flat) and all(t.device.type == "cpu" for t in flat):
            return func(*args, **kwargs)  # scalar bookkeeping (optimizer step counters, loss scaling)
        if torch._C._dispatch_has_kernel_for_dispatch_key(func.name(), torch._C.DispatchKey.CompositeImplicitAutograd):
            with self:
                r = func.decompose(*args, **kwargs)
            if r is not NotImplemented:
                return r
        if name == "aten::set_":
            out = func(*args, **kwargs)
            self.tr.track(out, self.tag)
            return out
        if _is_inplace(func):
            # skip the computation, return the mutated argument(s)
            s = func._schema
            outs = []
            for i, a in enumerate(s.arguments):
                if a.alias_info is not None and a.alias_info.is_write:
                    v = args[i] if i < len(args) else kwargs.get(a.name)
                    outs.append(v)
            if len(s.returns) == 0:
                return None
            if len(s.returns) == 1:
                return outs[0]
            return tuple(outs[: len(s.returns)])
        if _is_view(func) or name in REAL_OPS:
            out = func(*args, **kwargs)
            tree_map(lambda t: self.tr.track(t, self.tag), out)
            return out

        def to_meta(t):
            if isinstance(t, torch.Tensor):
                return torch.empty_strided(t.shape, t.stride(), dtype=t.dtype, device="meta")
            return t

        margs = tree_map(to_meta, args)
        mkw = tree_map(to_meta, kwargs)
        if "device" in mkw:
            mkw["device"] = torch.device("meta")
        mout = func(*margs, **mkw)

        def to_real(t):
            if isinstance(t, torch.Tensor) and t.device.type == "meta":
                r = torch.empty_strided(t.shape, t.stride(), dtype=t.dtype, device="cpu",
                                        requires_grad=False)
                self.tr.track(r, self.tag)
                return r
            if isinstance(t, torch.Tensor):
                self.tr.track(t, self.tag)
            return t

        return tree_map(to_real, mout)
