"""A test helper: counts the calls that would synchronise host and device on CUDA."""

import sys

import pytest
import torch
from torch.utils._python_dispatch import TorchDispatchMode

# aten ops that read a value back (item, bool, int, float of a tensor) or size their output by the data
READING_OPS = ("aten._local_scalar_dense", "aten.nonzero", "aten.masked_select", "aten._unique", "aten.unique",
               "aten.repeat_interleave.Tensor", "aten.bincount", "aten.histc")


class SyncCounter(TorchDispatchMode):
    """Records, while active (``with SyncCounter() as counter:``), every call that waits for a device:

    * Python-level reads (``Tensor.item``, ``tolist``, ``numpy``, ``bool``/``int``/``float``/``index`` of a
      tensor, ``torch.nonzero`` and friends), patched on ``torch.Tensor``;
    * below Python, the aten ops those and others dispatch to (``_local_scalar_dense``, ``nonzero``, ...) and
      indexing by a boolean mask, whose output size is the mask's count.
    """

    NAMES = ("item", "tolist", "numpy", "nonzero", "__bool__", "__int__", "__float__", "__index__")

    def __init__(self):
        super().__init__()
        self.calls = []
        self.sites = []  # per call: (file name, function) of the innermost frame in multimix or torch.utils.data
        self.monkeypatch = pytest.MonkeyPatch()  # its own: leaving the block undoes only these patches

    def record(self, name):
        self.calls.append(name)
        frame = sys._getframe(1)
        while frame is not None and not any(part in frame.f_code.co_filename
                                            for part in ("/multimix/", "/torch/utils/data/")):
            frame = frame.f_back
        self.sites.append(None if frame is None else (frame.f_code.co_filename.rsplit("/", 1)[-1],
                                                      frame.f_code.co_name))

    def patch(self):
        for name in self.NAMES:
            original = getattr(torch.Tensor, name)

            def counted(tensor, *args, _name=name, _original=original, **kwargs):
                self.record(_name)
                return _original(tensor, *args, **kwargs)

            self.monkeypatch.setattr(torch.Tensor, name, counted)
        for name in ("nonzero", "count_nonzero", "unique", "masked_select"):
            original = getattr(torch, name)
            self.monkeypatch.setattr(torch, name, lambda *a, _name=name, _original=original, **k: (
                self.record(_name), _original(*a, **k))[1])

    def __enter__(self):
        self.patch()
        return super().__enter__()

    def __exit__(self, *exc):
        self.monkeypatch.undo()
        return super().__exit__(*exc)

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        name = str(func)
        if name.startswith(READING_OPS):
            self.record(name)
        elif name.startswith(("aten.index.Tensor", "aten.index_put")) and any(
                isinstance(i, torch.Tensor) and i.dtype == torch.bool for i in args[1] if i is not None):
            self.record(name + " (boolean mask)")
        return func(*args, **(kwargs or {}))
