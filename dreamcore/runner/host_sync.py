"""Counting the places where a training step reads a tensor's value on the host.

On a GPU every such read (``Tensor.item``, ``float(t)``, ``int(t)``, ``bool(t)``, ``.cpu()``, ``.tolist()``,
``.numpy()``) waits for the device to finish all queued work: a step that does one per loss term runs the GPU at a
fraction of its rate. :func:`count_host_reads` wraps those methods for the duration of a ``with`` block and
records the call site (file:function) of each read made by dreamcore's own code, so a test can fail when
one creeps into the step and a report can name where they are. Reads of 0-dim tensors built on the CPU are
counted too: the counter cannot know the device a tensor will have on a GPU run, and the code should not care.

Structural syncs that no host read shows (boolean-mask indexing and ``nonzero`` sizing packed samples, as in
nerfacc) are not counted here; on CUDA, ``torch.cuda.set_sync_debug_mode`` reports those (tools/gpu_check.py).
"""

from __future__ import annotations

import contextlib
import sys
from collections import Counter
from pathlib import Path
from typing import Iterator

import torch

_WRAPPED = ("item", "__float__", "__int__", "__bool__", "__index__", "cpu", "tolist", "numpy")
_ROOT = str(Path(__file__).resolve().parents[2])
_SOURCES = tuple(f"{_ROOT}/{d}/" for d in ("dreamcore", "systems"))


def _call_site(sources: tuple[str, ...]) -> str | None:
    """file:function of the code that made the read, when that code is dreamcore's (reads inside libraries —
    torch's optimizers keep their step counters on the host, for one — are the library's own business)."""
    frame = sys._getframe(2)  # 0: here, 1: the wrapper, 2: the code that asked for the value
    path = frame.f_code.co_filename
    if path.startswith(sources):
        return f"{Path(path).relative_to(_ROOT)}:{frame.f_code.co_name}"
    return None


@contextlib.contextmanager
def count_host_reads(also: tuple[str, ...] = ()) -> Iterator[Counter]:
    """``with count_host_reads() as reads: ...`` → ``reads[site]`` = number of host reads made at ``site``;
    ``also``: more source folders (absolute paths) whose reads count."""
    sources = _SOURCES + tuple(str(Path(a).resolve()) + "/" for a in also)
    reads: Counter = Counter()
    originals = {name: getattr(torch.Tensor, name) for name in _WRAPPED}

    def wrap(name, fn):
        def counted(self, *args, **kwargs):
            if not _inside[0]:
                _inside[0] = True
                try:
                    site = _call_site(sources)
                    if site is not None:
                        reads[site] += 1
                finally:
                    _inside[0] = False
            return fn(self, *args, **kwargs)
        counted.__name__ = name
        return counted

    _inside = [False]
    try:
        for name, fn in originals.items():
            setattr(torch.Tensor, name, wrap(name, fn))
        yield reads
    finally:
        for name, fn in originals.items():
            setattr(torch.Tensor, name, fn)
