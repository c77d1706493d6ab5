"""Compiled kernels, one module per target; `get_kernels(target)` picks the set."""
from types import SimpleNamespace


def get_kernels(target):
    """The (train_epoch, loss_grad, predict) kernels of a target: "cpu" or "parallel"."""
    from . import cpu

    if target == "cpu":
        return SimpleNamespace(train_epoch=cpu.train_epoch_serial,
                               loss_grad=cpu.loss_grad_serial, predict=cpu.predict_serial)
    if target == "parallel":
        return SimpleNamespace(train_epoch=cpu.train_epoch_parallel,
                               loss_grad=cpu.loss_grad_parallel, predict=cpu.predict_parallel)
    raise ValueError(f"no kernels for target {target!r}")
