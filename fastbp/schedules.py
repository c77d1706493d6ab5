"""Learning-rate schedules, applied per epoch by `Trainer.fit(lr_schedule=...)`.

A schedule is given as a name, a (name, {parameters}) pair, or any callable epoch -> lr
(epochs count from 0 over the Trainer's whole history, so a resumed run continues the same
schedule; a cosine schedule whose t_max a fit starts past warns that it would run at
eta_min). The formulas are PyTorch's lr_scheduler ones, per epoch:

- "constant":              lr
- ("step", step_size, gamma=0.1):            lr * gamma ** (epoch // step_size)
- ("exponential", gamma):                    lr * gamma ** epoch
- ("cosine", t_max, eta_min=0, warmup=0):    linear warm-up over `warmup` epochs to lr, then
      eta_min + (lr - eta_min) * (1 + cos(pi * (epoch - warmup) / (t_max - warmup))) / 2
- ("plateau", factor=0.1, patience=10, min_delta=1e-4, monitor=None, min_lr=0, mode="auto"):
      multiply by `factor` when `monitor` has not improved by `min_delta` for `patience`
      epochs; monitor None follows val_loss where the fit has validation data, else loss,
      and a monitor named here must be one the fit records. mode "auto": higher is better
      for a name with "accuracy" in it, lower for the rest (as EarlyStopping).
"""
import inspect
import math

from . import config as _config
from .callbacks import _improved, _mode


class Schedule:
    """lr(epoch) for the next epoch; observe(logs) after it (only plateau listens)."""

    def __init__(self, base_lr):
        self.base_lr = base_lr

    def lr(self, epoch):
        return self.base_lr

    def observe(self, logs):
        pass

    def check(self, first_epoch, epochs):
        """A warning to give before a fit of `epochs` epochs from epoch `first_epoch` of the
        model's history, or None."""
        return None

    def resume(self, history, current_lr, recorded):
        """Continue from a model's earlier epochs (a later fit, a loaded checkpoint): only
        plateau has state, which it rebuilds from `history`; `recorded` names the metrics
        this fit will record."""


class _Callable(Schedule):
    def __init__(self, base_lr, fn):
        super().__init__(base_lr)
        self.fn = fn

    def lr(self, epoch):
        return self.fn(epoch)


class _Step(Schedule):
    def __init__(self, base_lr, step_size, gamma=0.1):
        super().__init__(base_lr)
        self.step_size = _positive_int("step_size", step_size)
        self.gamma = _real("gamma", gamma)
        if not 0 < self.gamma:
            raise ValueError(f"lr_schedule step: gamma={gamma} must be > 0")

    def lr(self, epoch):
        return self.base_lr * self.gamma ** (epoch // self.step_size)


class _Exponential(Schedule):
    def __init__(self, base_lr, gamma):
        super().__init__(base_lr)
        self.gamma = _real("gamma", gamma)
        if not 0 < self.gamma:
            raise ValueError(f"lr_schedule exponential: gamma={gamma} must be > 0")

    def lr(self, epoch):
        return self.base_lr * self.gamma ** epoch


class _Cosine(Schedule):
    def __init__(self, base_lr, t_max, eta_min=0.0, warmup=0):
        super().__init__(base_lr)
        self.t_max, self.eta_min = _positive_int("t_max", t_max), _real("eta_min", eta_min)
        if not 0 <= self.eta_min <= base_lr:
            raise ValueError(f"lr_schedule cosine: eta_min={eta_min} must be in [0, lr]")
        if not _config._is_int(warmup):
            raise TypeError(f"lr_schedule cosine: warmup={warmup!r} must be an integer")
        self.warmup = int(warmup)
        if not 0 <= self.warmup < self.t_max:
            raise ValueError(f"lr_schedule cosine: warmup={warmup} must be in [0, t_max)")

    def check(self, first_epoch, epochs):
        if epochs and first_epoch + epochs > self.t_max:
            last = first_epoch + epochs - 1
            what = ("every epoch of this fit runs" if first_epoch >= self.t_max else
                    f"the model's epochs {self.t_max} to {last} (the last "
                    f"{last - self.t_max + 1} of this fit) run")
            return (f"lr_schedule cosine: {what} at eta_min={self.eta_min:g}: t_max="
                    f"{self.t_max} and this model has trained {first_epoch} epoch(s) before "
                    "(schedule epochs count over the model's whole history, so that a resumed "
                    f"run continues its schedule). For a new cycle give t_max="
                    f"{first_epoch + epochs}, or reset() the model first.")
        return None

    def lr(self, epoch):
        if epoch < self.warmup:
            return self.base_lr * (epoch + 1) / self.warmup
        t = min(epoch - self.warmup, self.t_max - self.warmup)
        return self.eta_min + (self.base_lr - self.eta_min) * (
            1 + math.cos(math.pi * t / (self.t_max - self.warmup))) / 2


class _Plateau(Schedule):
    def __init__(self, base_lr, factor=0.1, patience=10, min_delta=1e-4, monitor=None,
                 min_lr=0.0, mode="auto"):
        super().__init__(base_lr)
        factor, min_delta, min_lr = (_real(n, v) for n, v in (
            ("factor", factor), ("min_delta", min_delta), ("min_lr", min_lr)))
        if not 0 < factor < 1:
            raise ValueError(f"lr_schedule plateau: factor={factor} must be in (0, 1)")
        if not _config._is_int(patience) or patience < 0:
            raise ValueError(f"lr_schedule plateau: patience={patience!r} must be an integer "
                             ">= 0")
        if min_delta < 0 or min_lr < 0:
            raise ValueError("lr_schedule plateau: min_delta and min_lr must be >= 0; got "
                             f"{min_delta} and {min_lr}")
        if monitor is not None and not isinstance(monitor, str):
            raise TypeError(f"lr_schedule plateau: monitor={monitor!r} must be the name of a "
                            "history entry (e.g. 'val_loss') or None")
        self.factor, self.patience = factor, int(patience)
        self.min_delta, self.monitor, self.min_lr = min_delta, monitor, min_lr
        self.mode = _mode(monitor or "val_loss", mode)      # accuracies: higher is better
        self.metric = monitor or "val_loss"                  # (watch() settles it per fit)
        self.current, self.bad = base_lr, 0
        self.best = math.inf if self.mode == "min" else -math.inf

    def watch(self, recorded):
        """The metric this fit follows: `monitor`, which the fit must record, or by default
        val_loss where there is validation data, else loss."""
        if self.monitor is None:
            self.metric = "val_loss" if "val_loss" in recorded else "loss"
        elif self.monitor not in recorded:
            raise ValueError(f"lr_schedule plateau monitors {self.monitor!r}, which this fit "
                             f"does not record (it records {sorted(recorded)}); pass "
                             "validation_data or monitor another entry")

    def lr(self, epoch):
        return self.current

    def observe(self, logs):
        value = logs.get(self.metric)
        if value is None:
            return
        if _improved(value, self.best, self.mode, self.min_delta):
            self.best, self.bad = value, 0
            return
        self.bad += 1
        if self.bad > self.patience:
            self.current = max(self.current * self.factor, self.min_lr)
            self.bad = 0

    def resume(self, history, current_lr, recorded):
        """Rebuild the best value and the epochs without improvement by replaying the
        history's epochs through observe, each from the lr it was trained with (so a
        reduction decided after the last epoch is kept), when the metric this fit will
        watch was recorded in every one of them; otherwise start afresh. Either way, an lr
        set by hand since the last epoch wins."""
        self.watch(recorded)
        values, lrs = history.get(self.metric), history.get("lr")
        epochs = len(history.get("loss", []))
        self.bad, self.current = 0, current_lr
        self.best = math.inf if self.mode == "min" else -math.inf
        if not epochs or not all(isinstance(x, list) and len(x) == epochs and
                                 all(isinstance(v, (int, float)) for v in x)
                                 for x in (values, lrs)):
            return
        for value, lr in zip(values, lrs):
            self.current = lr
            self.observe({self.metric: value})
        if current_lr != lrs[-1]:
            self.current = current_lr


def _real(name, value):
    """A schedule's real-number parameter as a float (a string or bool is refused)."""
    if not _config._is_real(value):
        raise TypeError(f"lr_schedule: {name}={value!r} must be a real number")
    return float(value)


NAMES = {"constant": Schedule, "step": _Step, "exponential": _Exponential, "cosine": _Cosine,
         "plateau": _Plateau}


def _positive_int(name, value):
    """A schedule's count parameter: a string or float is a TypeError (as a real-number
    parameter's), an integer below 1 a ValueError."""
    if not _config._is_int(value) or value < 1:
        exc = ValueError if _config._is_int(value) else TypeError
        raise exc(f"lr_schedule: {name}={value!r} must be an integer >= 1")
    return int(value)


def make_schedule(spec, base_lr):
    """A Schedule from None, a name, (name, {params}) / (name, *args), or a callable."""
    if spec is None:
        return Schedule(base_lr)
    if callable(spec):
        return _Callable(base_lr, spec)
    name, args, kwargs = spec, (), {}
    if isinstance(spec, (tuple, list)) and spec:
        name, rest = spec[0], list(spec[1:])
        if rest and isinstance(rest[-1], dict):
            kwargs = rest.pop()
        args = tuple(rest)
    if name not in NAMES:
        raise ValueError(f"lr_schedule={spec!r} is not allowed: give a callable epoch -> lr or "
                         f"one of {', '.join(repr(n) for n in NAMES)}, optionally as "
                         "(name, {parameters})")
    cls = NAMES[name]
    try:
        inspect.signature(cls).bind(base_lr, *args, **kwargs)
    except TypeError:
        raise TypeError(_usage(name, cls, args, kwargs)) from None
    return cls(base_lr, *args, **kwargs)


def _usage(name, cls, args, kwargs):
    """One line: what was wrong with a schedule's parameters, and what it takes."""
    params = list(inspect.signature(cls).parameters.values())[1:]     # after base_lr
    required = [p.name for p in params if p.default is p.empty]
    names = [p.name for p in params]
    given = set(names[:len(args)]) | set(kwargs)
    unknown = sorted(set(kwargs) - set(names))
    example = ", ".join(f"{n!r}: ..." for n in required) or \
        f"{names[0]!r}: {_default(params, names[0])!r}"
    if unknown:
        problem = f"unknown parameter(s) {', '.join(map(repr, unknown))}"
    elif len(args) > len(names):
        problem = f"{len(args)} positional parameters, at most {len(names)}"
    elif set(names[:len(args)]) & set(kwargs):
        problem = "a parameter given twice"
    else:
        problem = f"no {' and no '.join(n for n in required if n not in given)}"
    takes = ", ".join(n if n in required else f"{n}={_default(params, n)!r}" for n in names)
    return (f"lr_schedule {name!r} got {problem}: it takes ({takes}), e.g. "
            f"lr_schedule=({name!r}, {{{example}}})")


def _default(params, name):
    return next(p.default for p in params if p.name == name)
