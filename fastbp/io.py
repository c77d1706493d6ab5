"""Model files: one .npz holding the flat params, optionally the optimizer state, and the
configuration as JSON text with a format version.

Loading never unpickles (allow_pickle=False), checks every field, and answers a damaged or
foreign file with a ValueError. Writes are atomic: a temporary file, then a rename.
"""
import errno
import json
import os
import tempfile
import zipfile

import numpy as np

from . import config as _config

FORMAT = "fastbp-model"
VERSION = 1


def _json_array(obj):
    return np.array(json.dumps(obj))


def save_trainer(trainer, path, *, include_optimizer=True, metadata=None):
    path = os.fspath(path)
    try:
        meta_text = json.dumps(trainer.metadata if metadata is None else metadata)
    except (TypeError, ValueError) as e:
        raise TypeError(f"metadata must be a JSON-serialisable dict: {e}") from None
    arrays = {
        "format": np.array(FORMAT),
        "version": np.array(VERSION, dtype=np.int64),
        "config": _json_array(trainer._cfg),
        "metadata": np.array(meta_text),
        "params": trainer.params,
    }
    if include_optimizer:
        state = trainer.get_state()
        arrays.update(
            opt_m=state["m"], opt_v=state["v"],
            opt_step=np.array(state["step"], dtype=np.int64),
            rng_state=_json_array(state["rng_state"]),
            dropout_seed=np.array(state["dropout_seed"], dtype=np.int64),
            current_lr=np.array(trainer.lr, dtype=np.float64),
            history=_json_array(trainer.history))

    def write(tmp):
        with open(tmp, "wb") as f:
            np.savez(f, **arrays)
    atomic_write(path, write)


def check_writable(path, name):
    """`path` (returned as a str) unless it cannot be written atomically here: a ValueError
    naming `name` and the path where it is a folder, its folder does not exist, or no new
    file can be made in it (a probe file is made and removed). For the checks made before
    any work: the CLI's outputs and the callbacks' files."""
    path = os.fspath(path)
    if os.path.isdir(path):
        raise ValueError(f"{name} {path}: is a directory; give a file name")
    directory = os.path.dirname(os.path.abspath(path))
    if not os.path.isdir(directory):
        raise ValueError(f"{name} {path}: directory {directory} does not exist")
    try:
        fd, tmp = tempfile.mkstemp(prefix=".fastbp-", suffix=".tmp", dir=directory)
        os.close(fd)
        os.unlink(tmp)
    except OSError as e:
        raise ValueError(f"{name} {path}: cannot write in {directory} "
                         f"({e.strerror or e})") from None
    return path


def atomic_write(path, write, suffix=".tmp"):
    """write(tmp), a temporary path beside `path`; then the file is flushed to disk and
    renamed over `path`: `path` is whole or untouched, and a failure (a full disk, an
    interrupt) leaves no temporary file. Model files, ONNX exports and the CLI's outputs."""
    path = os.fspath(path)
    directory = os.path.dirname(os.path.abspath(path))
    # the user's path in the error, not the temporary file's (mkstemp's or os.replace's)
    if os.path.isdir(path):
        raise IsADirectoryError(errno.EISDIR, "is a directory; give a file name", path)
    if not os.path.isdir(directory):
        raise FileNotFoundError(errno.ENOENT, f"directory {directory} does not exist", path)
    try:
        fd, tmp = tempfile.mkstemp(prefix=".fastbp-", suffix=suffix, dir=directory)
    except OSError as e:
        raise type(e)(e.errno, f"cannot write in {directory} ({e.strerror})", path) from None
    os.close(fd)
    try:
        write(tmp)
        fd = os.open(tmp, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
        umask = os.umask(0)              # mkstemp makes 0600 files: give the usual mode
        os.umask(umask)
        os.chmod(tmp, 0o666 & ~umask)
        os.replace(tmp, path)
    except BaseException:
        os.unlink(tmp)
        raise


def _bad(path, why):
    return ValueError(f"{path!s} is not a valid fastbp model file: {why}")


def _text(files, key, path):
    arr = files[key]
    if arr.dtype.kind != "U" or arr.ndim != 0:
        raise _bad(path, f"field {key!r} must be text")
    return str(arr)


def _json(files, key, path):
    try:
        return json.loads(_text(files, key, path))
    except json.JSONDecodeError as e:
        raise _bad(path, f"field {key!r} is not valid JSON ({e})") from None


def _history_entry(value):
    """A number (or None), or a list of numbers (per-layer norms): what fit records."""
    def number(x):
        return x is None or (isinstance(x, (int, float)) and not isinstance(x, bool))
    return number(value) or (isinstance(value, list) and all(map(number, value)))


def read_model_file(path):
    """Read and check every field; returns a dict of plain values and arrays."""
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise FileNotFoundError(f"no model file at {path}")
    files = None
    try:
        loaded = np.load(path, allow_pickle=False)
        if isinstance(loaded, np.lib.npyio.NpzFile):
            with loaded as npz:
                files = {key: npz[key] for key in npz.files}
    except (ValueError, OSError, EOFError, zipfile.BadZipFile, KeyError,
            NotImplementedError) as e:
        # pickled objects, truncated archives and non-.npz files all end here, and damaged
        # zip headers that ask for features zipfile lacks (encryption, a newer zip version:
        # NotImplementedError); NumPy's own message would suggest allow_pickle=True, which
        # fastbp never does
        raise _bad(path, "it is not a readable .npz archive of plain arrays "
                   f"({type(e).__name__}; fastbp never loads pickled objects)") from None
    if files is None:
        raise _bad(path, "it holds a single array, not an .npz archive")
    missing = {"format", "version", "config", "params", "metadata"} - set(files)
    if missing:
        raise _bad(path, f"missing field(s) {sorted(missing)}")
    if _text(files, "format", path) != FORMAT:
        raise _bad(path, f"format is {_text(files, 'format', path)!r}, not {FORMAT!r}")
    version = files["version"]
    if version.ndim != 0 or version.dtype.kind not in "iu":
        raise _bad(path, "field 'version' must be an integer")
    if int(version) > VERSION:
        raise _bad(path, f"format version {int(version)} is newer than this fastbp "
                   f"understands ({VERSION}); upgrade fastbp")
    cfg = _json(files, "config", path)
    if not isinstance(cfg, dict) or "layers" not in cfg:
        raise _bad(path, "field 'config' must be a JSON object with 'layers'")
    try:
        layers = cfg.pop("layers")
        if isinstance(cfg.get("betas"), list):
            cfg["betas"] = tuple(cfg["betas"])
        cfg = _config.validate(layers, **cfg)
    except (TypeError, ValueError) as e:
        raise _bad(path, f"its configuration is invalid ({e})") from None
    metadata = _json(files, "metadata", path)

    from .layout import Layout
    n_params = Layout(cfg["layers"]).n_params
    dtype = np.dtype(cfg["dtype"])

    def flat(key, allowed):
        arr = files[key]
        if arr.dtype != dtype or arr.ndim != 1 or arr.shape[0] not in allowed:
            raise _bad(path, f"field {key!r} must be a 1-D {dtype} array of length "
                       f"{' or '.join(map(str, allowed))}; got {arr.dtype} {arr.shape}")
        if not np.isfinite(arr).all():
            raise _bad(path, f"field {key!r} holds NaN or infinity")
        return arr

    out = {"config": cfg, "metadata": metadata, "params": flat("params", (n_params,)),
           "optimizer": None}
    if "opt_step" in files:
        for key in ("opt_m", "opt_v", "rng_state", "history"):
            if key not in files:
                raise _bad(path, f"optimizer state is incomplete: missing {key!r}")
        step = files["opt_step"]
        if step.ndim != 0 or step.dtype.kind not in "iu" or int(step) < 0:
            raise _bad(path, "field 'opt_step' must be an integer >= 0")
        history = _json(files, "history", path)
        # lists may differ in length: a fit with validation data after one without records
        # val_loss for its epochs only
        if not isinstance(history, dict) or not all(
                isinstance(k, str) and isinstance(v, list) and all(map(_history_entry, v))
                for k, v in history.items()):
            raise _bad(path, "field 'history' must be a JSON object of lists of numbers "
                       "(or of lists of numbers)")
        out["optimizer"] = {"m": flat("opt_m", (0, n_params)), "v": flat("opt_v", (0, n_params)),
                            "step": int(step), "rng_state": _json(files, "rng_state", path),
                            "history": history, "dropout_seed": None}
        if "current_lr" in files:
            lr = files["current_lr"]
            if lr.ndim != 0 or lr.dtype.kind != "f" or not np.isfinite(lr) or lr < 0:
                raise _bad(path, "field 'current_lr' must be a finite number >= 0")
            out["optimizer"]["current_lr"] = float(lr)
        if "dropout_seed" in files:
            seed = files["dropout_seed"]
            if seed.ndim != 0 or seed.dtype.kind not in "iu" or int(seed) < 0:
                raise _bad(path, "field 'dropout_seed' must be an integer >= 0")
            out["optimizer"]["dropout_seed"] = int(seed)
    return out


def load_trainer(cls, path, target=None):
    data = read_model_file(path)
    cfg = dict(data["config"])
    if target is not None:
        cfg["target"] = _config._choice("target", target, _config.TARGETS)
        if cfg["target"] == "cuda" and cfg.get("precision") == "bf16":
            import warnings
            warnings.warn(f"{path!s} was trained with precision='bf16', which exists on the "
                          "CPU targets only: loaded for target='cuda' with precision='full' "
                          "(predictions are full precision either way)", UserWarning,
                          stacklevel=3)
            cfg["precision"] = "full"
    import numba
    if cfg.get("n_threads") and cfg["n_threads"] > numba.config.NUMBA_NUM_THREADS:
        cfg["n_threads"] = numba.config.NUMBA_NUM_THREADS   # saved on a larger machine
    if cfg.get("target") != "parallel":
        cfg["n_threads"] = None     # a parallel model's threads, loaded for another target
    from .kernels.cuda_backend import CudaUnavailableError
    try:
        trainer = cls(cfg.pop("layers"), **cfg)
    except CudaUnavailableError as e:
        where = ("was saved from target='cuda'" if target is None
                 else "cannot be loaded for target='cuda' here")
        raise CudaUnavailableError(f"{path!s} {where}: {e}. Pass target='cpu' or 'parallel' "
                                   "to Trainer.load to load it here") from None
    trainer.set_state(params=data["params"])
    trainer.metadata = data["metadata"]
    opt = data["optimizer"]
    if opt is not None:
        current = trainer.get_state()
        for name in ("m", "v"):
            if opt[name].shape != current[name].shape:
                raise _bad(path, f"optimizer buffer {name!r} has length {opt[name].shape[0]}, "
                           f"expected {current[name].shape[0]} for optimizer "
                           f"{cfg['optimizer']!r}")
        try:
            trainer.set_state(rng_state=opt["rng_state"])
        except (TypeError, ValueError, KeyError) as e:
            raise _bad(path, f"field 'rng_state' is not a generator state ({e})") from None
        trainer.set_state(m=opt["m"], v=opt["v"], step=opt["step"])
        trainer.history = opt["history"]
        if opt["dropout_seed"] is not None:
            trainer.set_state(dropout_seed=opt["dropout_seed"])
        if "current_lr" in opt:
            trainer.lr = opt["current_lr"]
        elif isinstance((opt["history"].get("lr") or [None])[-1], (int, float)):
            trainer.lr = opt["history"]["lr"][-1]   # files from before current_lr was saved
    return trainer
