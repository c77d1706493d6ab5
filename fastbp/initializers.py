"""Parameter initialisation: He (Kaiming) uniform or Glorot uniform, biases zero."""
import numpy as np

RELU_FAMILY = ("relu", "leaky_relu", "gelu")
LEAKY_SLOPE = 0.01


def init_params(params, layout, activations, init, rng):
    """Fill params (P,) in place. activations: the hidden activation names (L - 1);
    the output layer counts as 'identity'. init: 'auto' (He for the relu family, Glorot
    otherwise), 'he' or 'glorot'. Draws in float64 from rng, then casts."""
    names = list(activations) + ["identity"]
    params[:] = 0
    for W, act in zip(layout.weights(params), names):
        fan_in, fan_out = W.shape
        scheme = init if init != "auto" else ("he" if act in RELU_FAMILY else "glorot")
        if scheme == "he":   # torch.nn.init.kaiming_uniform_, gain sqrt(2 / (1 + slope^2))
            slope = LEAKY_SLOPE if act == "leaky_relu" else 0.0
            bound = np.sqrt(2.0 / (1.0 + slope**2)) * np.sqrt(3.0 / fan_in)
        else:                # torch.nn.init.xavier_uniform_, gain 1
            bound = np.sqrt(6.0 / (fan_in + fan_out))
        W[:] = rng.uniform(-bound, bound, size=(fan_in, fan_out))
