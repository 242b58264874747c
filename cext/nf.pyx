# cython: language_level=3
"""NF base classes: :class:`NativeNF` (Cython, nogil) and :class:`PythonNF`.

See ``cext/nf.pxd`` for the C-level interface and ``docs/writing-nfs.rst``
for a vendor's guide with a complete example.
"""

import traceback

from cpython.buffer cimport PyBUF_WRITE
from cpython.memoryview cimport PyMemoryView_FromMemory


from worker.nf_errors import NFConfigError  # noqa: F401  (re-exported for NF authors)


VERDICT_FORWARD = QD_FORWARD
VERDICT_DROP = QD_DROP
VERDICT_HOLD = QD_HOLD


cdef class NativeNF:
    """Base of every NF.  Subclasses override ``configure`` and ``process``."""

    def __init__(self, name=None):
        self.name = name or type(self).__name__

    def configure(self, config):
        """Validate ``config`` (a mapping) and build the NF's tables."""
        if config:
            raise NFConfigError("config", f"{type(self).__name__} takes no options")

    def stats(self):
        """NF-specific counters as a dict (read from Python between runs)."""
        return {}

    cdef void process(self, qd_batch *batch) noexcept nogil:
        pass


cdef class PythonNF(NativeNF):
    """Runs a Python object's ``process(packets, verdicts)`` once per batch.

    The slow, convenient path: ``packets`` is a list of writable memoryviews
    over the frames (zero copy, valid only during the call: they are
    released afterwards), ``verdicts`` a writable ``uint8`` memoryview preset
    to forward.  An exception stops the runtime with the NF's traceback.
    """

    cdef object impl
    cdef object _process
    cdef public object error

    def __init__(self, impl, name=None):
        super().__init__(name or type(impl).__name__)
        self.impl = impl
        self._process = impl.process
        self.error = None
        self.in_place = True  # memoryviews: a Python NF cannot resize a frame

    def configure(self, config):
        configure = getattr(self.impl, "configure", None)
        if configure is not None:
            configure(config)
        elif config:
            raise NFConfigError("config", f"{type(self.impl).__name__} takes no options")

    def stats(self):
        stats = getattr(self.impl, "stats", None)
        return dict(stats()) if stats is not None else {}

    cdef void process(self, qd_batch *batch) noexcept nogil:
        with gil:
            self._call(batch)

    cdef int _call(self, qd_batch *batch) except -1:
        cdef int i
        if self.error is not None:
            for i in range(batch.count):
                batch.verdicts[i] = QD_DROP
            return 0
        views = [
            PyMemoryView_FromMemory(<char *>batch.pkts[i].data, batch.pkts[i].len, PyBUF_WRITE)
            for i in range(batch.count)
        ]
        verdicts = PyMemoryView_FromMemory(<char *>batch.verdicts, batch.count, PyBUF_WRITE)
        try:
            self._process(views, verdicts)
        except BaseException as exc:  # the runtime checks .error after the run slice
            self.error = (exc, traceback.format_exc())
            self.halt = 1
            for i in range(batch.count):
                batch.verdicts[i] = QD_DROP
        finally:
            for v in views:
                v.release()
            verdicts.release()
        return 0

    def failed(self):
        return self.error is not None
