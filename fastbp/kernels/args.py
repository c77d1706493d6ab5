"""The kernels' arguments, grouped: what a compiled call takes is a handful of these small
typed values instead of thirty positional arrays. Numba passes a NamedTuple of arrays and
scalars as one argument (its fields are read by name inside the kernels), and its type is
part of the on-disk cache key like any other argument's.

Sizes as in ops.py and cpu.py: P parameters, L layers, C chunks, W workspace length per
chunk, G blocks of the flat buffers."""
from typing import NamedTuple

import numpy as np


class Network(NamedTuple):
    """The network as the kernels see it: layer sizes (L + 1,), offsets of W_l and b_l in
    the flat buffers (L,), activation codes (L - 1,), dropout rates (L - 1,) float64 (empty:
    none, and always empty to evaluate), loss and optimizer codes; bf16 1 where the large
    products of training steps take bfloat16 operands (precision="bf16"; always 0 to
    evaluate), else 0."""
    sizes: np.ndarray
    w_off: np.ndarray
    b_off: np.ndarray
    act: np.ndarray
    dropout: np.ndarray
    loss_code: int
    opt_code: int
    bf16: int = 0


_NO_INDEX = np.empty(0, dtype=np.int64)
_NO_VALUES = np.empty(0, dtype=np.float64)


class Rows(NamedTuple):
    """A checked data set: X (N, n_0) C-contiguous in the model's dtype, labels (N,) int64
    (cross_entropy; else empty), targets (N, K) (the other losses; else empty) and row
    weights (N,) (empty: unweighted).

    Sparse X (CSR): indptr (N + 1,) int64, indices (nnz,) int64 column indices (any order,
    repeats add up) and values (nnz,) in the model's dtype; X is then an (N, 0) array (no
    memory) that only carries N. Dense X leaves the three empty (`sparse` is False); both
    layouts have the same types, and variants.py picks the kernels compiled for each."""
    X: np.ndarray
    labels: np.ndarray
    targets: np.ndarray
    weights: np.ndarray
    indptr: np.ndarray = _NO_INDEX
    indices: np.ndarray = _NO_INDEX
    values: np.ndarray = _NO_VALUES

    @property
    def n(self):
        return self.X.shape[0]

    @property
    def sparse(self):
        return self.indptr.shape[0] > 0

    @property
    def weight_total(self):
        """The denominator of the mean loss: total row weight, or the row count."""
        return self.weights.sum(dtype=np.float64) if self.weights.size else self.n


class State(NamedTuple):
    """What the optimizer updates: params (P,) and its buffers m, v (P,) or empty."""
    params: np.ndarray
    m: np.ndarray
    v: np.ndarray


class Workspace(NamedTuple):
    """work (C, W): per chunk, every layer's activations A_l at a_off[l], pre-activations
    Z_l at z_off[l], two delta buffers at d_off[0] and d_off[1], for a fixed number of rows
    (A_0 has no room when the data is sparse: the first layer reads the CSR rows), and from
    d_off[2] to the end the input gradient's scratch (gemm.nt's transposed W).

    The first layer's weight gradient of sparse data, per chunk (empty for dense data):
    touched (C, R) the rows of W_0 the chunk's rows touch (n_touched (C,) of them, each
    once), touched_grad (C, R * n_1) their gradient rows, in the same order, and
    touched_slot (C, n_0) each row of W_0's position in touched (-1: not touched).
    Dense data whose first layer skips zero columns (Layout.skips_zero_columns) has
    touched (C, n_0): the columns of the chunk's rows that are not all zero, n_touched of
    them (n_0 where the skip did not pay), and touched_grad and touched_slot empty.

    A bf16 model's training epochs (Network.bf16) keep W_l's bf16 copies (kernels/bf16.py,
    weight copies), shared by the chunks: packed (bf16 bits) holds them, pack_off (L, 3)
    W_l's nn copy at pack_off[l, 0] and its nt copy at pack_off[l, 1] (-1: none: the
    products then round and pack W themselves), for products over pack_off[l, 2] rows (a
    full batch's chunks). Empty in every other workspace."""
    work: np.ndarray
    a_off: np.ndarray
    z_off: np.ndarray
    d_off: np.ndarray
    touched: np.ndarray
    n_touched: np.ndarray
    touched_grad: np.ndarray
    touched_slot: np.ndarray
    packed: np.ndarray = np.empty(0, dtype=np.uint16)
    pack_off: np.ndarray = np.empty((0, 3), dtype=np.int64)


class Slabs(NamedTuple):
    """A training step's scratch: gslab (C, P) the chunks' gradients; block_lo, block_hi,
    block_layer (G,) cut the flat buffers into blocks that never straddle a layer
    (block_layer: l for W_l, L + l for b_l) and block_sq (G,) their sums of squares;
    chunk_loss (C,) float64 and chunk_correct (C,) int64. For sparse data (else empty):
    touched (R,) the lazy update's list of the step's distinct touched rows of W_0 (every
    chunk's; cpu.touched_union)."""
    gslab: np.ndarray
    block_lo: np.ndarray
    block_hi: np.ndarray
    block_layer: np.ndarray
    block_sq: np.ndarray
    chunk_loss: np.ndarray
    chunk_correct: np.ndarray
    touched: np.ndarray


class Hyper(NamedTuple):
    """The optimizer's hyperparameters (float64; flags as 0/1). decay_per_weight: the weight
    decay is taken per unit of batch weight, decay / (the batch's rows or total sample
    weight), scikit-learn's L2 term alpha/2 ||W||^2 / n_batch; 0 is PyTorch's constant
    decay. clip: the global gradient-norm clip (0: off). eps_hat: Adam's eps is added to
    sqrt(v) before the bias correction and the step size carries sqrt(1 - beta2^t) (Kingma
    and Ba's "efficient" form, scikit-learn's); 0 is PyTorch's eps on sqrt(v_hat). lazy:
    with sparse data, each step updates only the rows of W_0 its batch touches (as
    torch.optim.SparseAdam; see the README); 0 updates every parameter every step."""
    lr: float
    momentum: float
    nesterov: float
    beta1: float
    beta2: float
    eps: float
    decay: float
    clip: float
    alpha: float
    decay_per_weight: float
    eps_hat: float = 0.0
    lazy: float = 0.0
