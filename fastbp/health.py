"""Training health: vanishing and exploding gradients, and divergence.

The epoch kernel records, per optimizer step, the L2 norm of every weight gradient and the
global norm of the whole gradient before clipping; `fit` keeps their per-epoch mean and max
in `history`. `diagnose` reads those lists.
"""
import numpy as np

VANISHING = 1e-3      # a layer's gradient norm below this x the median layer's,
VANISHING_OF_MAX = 1e-4   # or below this x the largest layer's (a steady decay layer by
                          # layer keeps every layer near the median of its neighbours)
EXPLODING = 1e3       # ... or above this x the median layer's
GROWTH = 10.0         # the global norm growing this much ...
GROWTH_EPOCHS = 3     # ... over this many epochs


class TrainingHealthWarning(UserWarning):
    """Gradients are vanishing or exploding (see `Trainer.health()`)."""


class DivergenceError(FloatingPointError):
    """The loss became NaN or infinite; the model was restored to the last good epoch."""

    def __init__(self, message, epoch, step):
        super().__init__(message)
        self.epoch = epoch
        self.step = step


def diagnose(history):
    """Problems seen in the last epoch of `history`: a list of dicts with 'kind'
    ('vanishing', 'exploding', 'growing'), 'layer' (None for the global norm) and 'message'
    (what is wrong and what to try)."""
    layers = history.get("layer_grad_norms") or []
    if not layers:
        return []
    norms = np.asarray(layers[-1], dtype=float)
    problems = []
    median = float(np.median(norms))
    if len(norms) > 1 and median > 0 and np.isfinite(median):
        # When some layers vanish the median is small itself and healthy layers would look
        # exploding next to it, so "exploding" is only reported when nothing vanishes.
        largest = float(norms.max())
        low = np.maximum(VANISHING * median, VANISHING_OF_MAX * largest)
        any_vanishing = bool(np.any(norms < low))
        for l, g in enumerate(norms):
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
    if len(total) > GROWTH_EPOCHS and np.isfinite(total[-1]):
        # against the largest norm before the window, so that a start from small gradients
        # (which often grow at first) is not taken for an explosion
        before = max(total[:-GROWTH_EPOCHS])
        if before > 0 and total[-1] > GROWTH * before:
            problems.append(dict(kind="growing", layer=None, message=(
                f"exploding gradients: the global gradient norm reached {total[-1]:.3g}, "
                f"over {GROWTH:g} x its largest value {GROWTH_EPOCHS} or more epochs before "
                f"({before:.3g}). Try clip_norm=1.0 or a smaller lr.")))
    return problems
