"""Training health: vanishing, exploding and dead gradients, a loss that blew up, and
divergence.

The epoch kernel records, per optimizer step, the L2 norm of every weight gradient and the
global norm of the whole gradient before clipping; `fit` keeps their per-epoch mean and max
in `history`, and the loss at the model's initial parameters (its first batch's, recorded
by the kernel before the first update) as `history['initial_loss']` (one entry). `diagnose` reads
those lists.
"""
import math

import numpy as np

VANISHING = 1e-3      # a layer's gradient norm below this x the median layer's,
VANISHING_OF_MAX = 1e-4   # or below this x the largest layer's (a steady decay layer by
                          # layer keeps every layer near the median of its neighbours)
EXPLODING = 1e3       # ... or above this x the median layer's
GROWTH = 10.0         # the global norm growing this much ...
GROWTH_EPOCHS = 3     # ... over this many epochs
LOSS_BLOWUP = 1e3     # an epoch's loss above this x the starting loss: it blew up (without
                      # becoming NaN/inf, which is divergence)


class TrainingHealthWarning(UserWarning):
    """Training is in trouble: gradients vanishing, exploding or dead, a loss that blew up,
    a divergence survived with on_divergence='warn' (see `Trainer.health()`)."""


class DivergenceError(FloatingPointError):
    """The loss became NaN or infinite at step `step` of epoch `epoch`; the model was
    restored to the last good epoch (`restored`), unless the fit was asked not to
    (Trainer.fit(..., restore_on_divergence=False))."""

    def __init__(self, message, epoch, step, restored=True):
        super().__init__(message)
        self.epoch = epoch
        self.step = step
        self.restored = restored


def _advice(history):
    lr = (history.get("lr") or [None])[-1]
    now = f" (now {lr:g})" if isinstance(lr, (int, float)) else ""
    return (f"Try a smaller lr{now}, clip_norm=1.0, and standardised inputs (and targets, "
            "for mse)")


def diagnose(history, dead_before=()):
    """Problems seen in the last epoch of `history`: a list of dicts with 'kind'
    ('vanishing', 'exploding', 'growing', 'dead', 'loss_blowup'), 'layer' (None when not one
    layer's) and 'message' (what is wrong and what to try). dead_before: layers a caller
    diagnosed as dead after an earlier epoch of this history (Trainer.fit, after every
    epoch): one whose gradient is still 0 is still dead (it learned before, which stays
    true), so the history is not read again for it."""
    layers = history.get("layer_grad_norms") or []
    if not layers:
        return []
    # plain floats: a few layers' values, read after every epoch of a fit (NumPy's calls on
    # them took 0.26 ms an epoch, 4% of the tiny workload's)
    norms = [float(g) for g in layers[-1]]
    problems = []
    # dead: a layer that learned in an earlier epoch and whose weight gradient was exactly 0
    # in every step of this one, while the loss still has a gradient somewhere (a model that
    # fits exactly has none anywhere; a layer at 0 from the start has degenerate data, such
    # as all-zero inputs, rather than a blow-up behind it)
    # (fit calls this after every epoch, so neither check reads every earlier epoch each
    # time: this one only when a layer's gradient was 0 throughout the last epoch, the
    # growth check below from the window back, stopping at the first epoch that settles it)
    # (and a layer the caller found dead after an earlier epoch only by its last entry)
    maxes = history.get("layer_grad_norms_max") or []
    total_max = (history.get("grad_norm_max") or [0.0])[-1]
    dead = [False] * len(norms)
    last = maxes[-1] if maxes else []
    unsettled = [l for l, v in enumerate(last) if v == 0 and l not in dead_before]
    if len(maxes) > 1 and total_max > 0 and len(last) == len(norms):
        for l in dead_before:
            if 0 <= l < len(last):
                dead[l] = last[l] == 0
        if unsettled and all(len(m) == len(norms) for m in maxes):
            earlier = np.asarray(maxes[:-1], dtype=float)
            for l in unsettled:
                dead[l] = bool(earlier[:, l].max() > 0)
    for l in (l for l, d in enumerate(dead) if d):
        problems.append(dict(kind="dead", layer=int(l), message=(
            f"dead layer {l}: its weight gradient was exactly 0 in every step of the epoch, "
            "so it no longer learns (the units before or after it are flat for every row: "
            "inactive ReLU units, or tanh/sigmoid units saturated at their limits, as after "
            f"a blow-up). {_advice(history)}, or leaky_relu/gelu; such units rarely come "
            "back, so start again from reset().")))
    live = [g for g, d in zip(norms, dead) if not d]
    median = _median(live)
    if len(live) > 1 and median > 0 and math.isfinite(median):
        # When some layers vanish the median is small itself and healthy layers would look
        # exploding next to it, so "exploding" is only reported when nothing vanishes.
        largest = max(live)
        low = max(VANISHING * median, VANISHING_OF_MAX * largest)
        any_vanishing = any(g < low for g in live)
        for l, g in enumerate(norms):
            if dead[l]:
                continue
            if g < low:
                problems.append(dict(kind="vanishing", layer=l, message=(
                    f"vanishing gradient in layer {l}: its weight-gradient norm {g:.3g} is "
                    f"below {VANISHING:g} x the median layer's ({median:.3g}) or "
                    f"{VANISHING_OF_MAX:g} x the largest ({largest:.3g}). Try "
                    "init='auto' (He for relu, Glorot for tanh/sigmoid), relu/gelu instead "
                    "of sigmoid/tanh, fewer layers, or a larger lr.")))
            elif g > EXPLODING * median and not any_vanishing:
                problems.append(dict(kind="exploding", layer=l, message=(
                    f"exploding gradient in layer {l}: its weight-gradient norm {g:.3g} is "
                    f"above {EXPLODING:g} x the median layer's ({median:.3g}). Try "
                    "clip_norm=1.0, a smaller lr, or standardised inputs.")))
    total = history.get("grad_norm") or []
    if len(total) > GROWTH_EPOCHS and math.isfinite(total[-1]):
        # against the largest norm before the window, so that a start from small gradients
        # (which often grow at first) is not taken for an explosion; read from the window
        # back, as the epochs next to it settle it at once where nothing grew
        # (as max() of them: a NaN counts only as the first epoch's, where it makes the
        # largest NaN)
        before = 0.0
        for i in range(len(total) - GROWTH_EPOCHS - 1, -1, -1):
            if total[i] != total[i] and i > 0:
                continue
            if not GROWTH * total[i] < total[-1]:
                before = None
                break
            before = max(before, total[i])
        if before is not None and before > 0:
            problems.append(dict(kind="growing", layer=None, message=(
                f"exploding gradients: the global gradient norm reached {total[-1]:.3g}, "
                f"over {GROWTH:g} x its largest value {GROWTH_EPOCHS} or more epochs before "
                f"({before:.3g}). Try clip_norm=1.0 or a smaller lr.")))
    losses = history.get("loss") or []
    start = (history.get("initial_loss") or losses[:1] or [None])[0]
    if losses and isinstance(start, (int, float)) and start > 0 and \
            math.isfinite(losses[-1]) and losses[-1] > LOSS_BLOWUP * start:
        problems.append(dict(kind="loss_blowup", layer=None, message=(
            f"the loss blew up: {losses[-1]:.3g}, over {LOSS_BLOWUP:g} x its starting value "
            f"({start:.3g}), without becoming NaN. {_advice(history)}.")))
    return problems


def _median(values):
    """np.median of a short list of floats: NaN if one is NaN, 0 for none."""
    if not values:
        return 0.0
    if any(v != v for v in values):
        return math.nan
    ordered = sorted(values)
    half = len(ordered) // 2
    return ordered[half] if len(ordered) % 2 else (ordered[half - 1] + ordered[half]) / 2
