"""The copy of the last good epoch that `Trainer.fit` puts back when an epoch diverges.

An exact roll-back needs every bit of the parameters and the optimizer state (m, v): an
update cannot be undone in floating point. Held in memory, that copy is 1 + (optimizer
buffers) times the parameters, more than a fit's own buffers leave room for (the README's
memory table). So it is written to an unnamed temporary file instead (``tempfile``: in
``TMPDIR``, deleted when closed or when the process ends), overwritten at every epoch and
read back only after a divergence: the process holds none of it. FASTBP_ROLLBACK_DIR in
the environment chooses another folder, which must exist (fit refuses anything else before
it trains). Where the folder is a tmpfs, as /tmp is on some systems, the file's pages are
memory again, only not the process's. Where no temporary file can be made or written (no
writable folder, a full disk), the copy is kept in memory, as before; either way the
roll-back is the same, bit for bit.
"""
import os
import tempfile

import numpy as np

PREFIX = "fastbp-rollback-"
DIR_ENV = "FASTBP_ROLLBACK_DIR"


class RollbackCopy:
    """params, m, v and step of an engine at `save`, put back by `restore`."""

    def __init__(self):
        self._file = None          # the temporary file, opened at the first save
        self._memory = None        # {'params', 'm', 'v'} where no file could be used
        self.step = None

    @property
    def where(self):
        """'file' or 'memory' (None before the first save)."""
        if self.step is None:
            return None
        return "memory" if self._memory is not None else "file"

    def save(self, engine):
        arrays = (engine.params, engine.m, engine.v)
        if self._memory is None:
            try:
                if self._file is None:
                    # (a FASTBP_ROLLBACK_DIR that is not a folder: ValueError, no fallback)
                    self._file = tempfile.TemporaryFile(prefix=PREFIX, buffering=0,
                                                        dir=chosen_folder())
                self._file.seek(0)
                for a in arrays:
                    _write_all(self._file, a)
            except OSError:                  # no writable folder, a full disk, ...
                self.close()
                self._memory = {}
        if self._memory is not None:
            for key, a in zip(("params", "m", "v"), arrays):
                if key in self._memory:
                    np.copyto(self._memory[key], a)
                else:
                    self._memory[key] = a.copy()
        self.step = engine.step

    def restore(self, engine):
        if self._memory is not None:
            engine.set_state(step=self.step, **self._memory)
            return
        self._file.seek(0)
        for a in (engine.params, engine.m, engine.v):
            _read_all(self._file, a)
        engine.step = self.step

    def close(self):
        if self._file is not None:
            self._file.close()
            self._file = None


def chosen_folder():
    """FASTBP_ROLLBACK_DIR when set (it must be a folder: a typo would otherwise quietly
    keep the copy in memory), else None (tempfile's choice)."""
    folder = os.environ.get(DIR_ENV) or None
    if folder is not None and not os.path.isdir(folder):
        raise ValueError(f"{DIR_ENV}={folder!r} is not a folder: set it to an existing "
                         "folder for the divergence roll-back's temporary file, or unset it")
    return folder


def _write_all(f, a):
    view = memoryview(np.ascontiguousarray(a)).cast("B")
    while view:
        view = view[f.write(view):]


def _read_all(f, a):
    view = memoryview(a).cast("B")           # a: a C-contiguous buffer of the engine
    while view:
        n = f.readinto(view)
        if not n:
            raise OSError(f"the roll-back file ended early ({os.fstat(f.fileno()).st_size} "
                          "bytes)")
        view = view[n:]
