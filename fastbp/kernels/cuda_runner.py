"""target='cuda': the network's buffers on the GPU and the launches of a training epoch.

`CudaNetwork` holds params, gradients and optimizer state on the device for as long as the
Trainer lives, and a workspace (every layer's pre-activations, activations and deltas) per
batch size. `DeviceData` moves a data set to the device once per fit, or, when it does not
fit in the share of free GPU memory set by RESIDENT_FRACTION, keeps the labels and the row
order there and streams X in large chunks of already shuffled rows.

An epoch is a sequence of asynchronous launches, 2 per layer and 4 more per step
(see `train_epoch`). Before it, the host sends params, optimizer state and the epoch's
permutation (drawn from the same generator as on the CPU, so a seed gives the same run);
rows are gathered on the device, and the host reads nothing back until the epoch's end: the
per-step losses, correct counts and gradient norms, the divergence status, and params and
optimizer state (the Trainer's). Launch arguments are the only per-step traffic, besides
the chunks of streamed data.
"""
import math
import warnings

import numpy as np

from . import cuda_backend, gpu
from .codes import ADAMW
from .optim import adam_step_size

# A data set is moved to the GPU whole when X takes at most this share of its free memory;
# larger ones are streamed, in chunks of at most CHUNK_BYTES (tests lower MAX_RESIDENT_BYTES
# to force streaming).
RESIDENT_FRACTION = 0.5
MAX_RESIDENT_BYTES = None
CHUNK_BYTES = 256 * 2**20
EVAL_ROWS = 1024       # rows per launch when evaluating, predicting or taking a gradient


def _blocks(n, per_block):
    return max(1, -(-n // per_block))


# numba-cuda's message is highlighted (it starts with an ANSI escape), so the pattern may not
# be anchored at "Grid"; seen unfiltered on an H200 with numba-cuda 0.30.4
_SMALL_GRID_WARNING = r".*Grid size \d+ will likely result in GPU under-utilization"


def configure_quietly(kernel, grid, block):
    """kernel[grid, block] without numba-cuda's warning of grids under 128 blocks, which the
    small networks fastbp is fast for always have (it would reach users on every fit)."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=_SMALL_GRID_WARNING)
        return kernel[grid, block]


class DeviceData:
    """X (N, n_0), labels, targets and row weights of one data set on the device. X is
    resident, or streamed: then `chunk_rows` rows at a time, in the epoch's row order."""

    def __init__(self, cuda, X, labels, targets, weights, batch_size, dtype):
        self.n = X.shape[0]
        self.host_X = X
        self.weights = weights
        self.labels = cuda.to_device(_nonempty(labels, np.int64))
        self.targets = cuda.to_device(_nonempty(targets, dtype))
        self.row_weight = cuda.to_device(_nonempty(weights, dtype))
        self.weighted = weights.shape[0] > 0
        self.order = cuda.device_array(self.n, dtype=np.int64)
        budget = _resident_budget(cuda)
        row_bytes = max(X.shape[1] * X.itemsize, 1)
        if X.nbytes <= budget:
            self.X = cuda.to_device(X)
            self.chunk_rows = None
        else:                 # a whole number of batches (at least one) per chunk
            fit = int(min(budget, CHUNK_BYTES) // row_bytes)
            rows = max(batch_size, fit // batch_size * batch_size)
            self.chunk_rows = min(rows, -(-self.n // batch_size) * batch_size)
            self.X = cuda.device_array((self.chunk_rows, X.shape[1]), dtype=X.dtype)

    @property
    def streamed(self):
        return self.chunk_rows is not None

    def set_order(self, order):
        self.order.copy_to_device(order)
        self._host_order = order

    def chunk(self, lo, shuffled=True):
        """Upload the chunk of rows that starts at row position lo (streamed): in the
        epoch's order (training) or as stored (evaluation). Returns its row count."""
        hi = min(lo + self.chunk_rows, self.n)
        rows = self.host_X[self._host_order[lo:hi]] if shuffled else self.host_X[lo:hi]
        self.X[:hi - lo].copy_to_device(np.ascontiguousarray(rows))
        return hi - lo


def _resident_budget(cuda):
    if MAX_RESIDENT_BYTES is not None:
        return MAX_RESIDENT_BYTES
    if cuda_backend.simulator_enabled():
        return np.inf
    free, _ = cuda.current_context().get_memory_info()
    return RESIDENT_FRACTION * free


def _nonempty(arr, dtype):
    """Kernels take arrays of at least one element; flags say when one is unused."""
    arr = np.ascontiguousarray(arr, dtype=dtype)
    if arr.shape[0] == 0:
        arr = np.zeros((1,) + arr.shape[1:], dtype=dtype)
    return arr


class Workspace:
    """Per-layer device buffers for up to `rows` rows: Z[l] = A_l W_l + b_l, A[l+1] =
    act(Z[l]) (hidden layers; A[0] is the input), D[l] = dLoss/dZ[l]; per-row losses and
    correct counts."""

    def __init__(self, cuda, sizes, rows, dtype):
        L = len(sizes) - 1
        self.rows = rows
        self.Z = [cuda.device_array((rows, sizes[l + 1]), dtype=dtype) for l in range(L)]
        self.A = [None] + [cuda.device_array((rows, sizes[l]), dtype=dtype)
                           for l in range(1, L)]
        self.D = [cuda.device_array((rows, sizes[l + 1]), dtype=dtype) for l in range(L)]
        self.row_loss = cuda.device_array(rows, dtype=np.float64)
        self.row_correct = cuda.device_array(rows, dtype=np.int64)


class CudaNetwork:
    """A Trainer's network on the GPU: flat params, gradient and optimizer state buffers in
    the CPU's layout, with views of every W_l and b_l, and the launches of forward,
    backward, a training epoch, evaluation and prediction."""

    def __init__(self, layout, dtype, act, dropout, loss_code, opt_code, has_m, has_v):
        self.cuda = cuda = cuda_backend.load()
        self.k = gpu.get_kernels(dtype)
        self.layout = layout
        self.dtype = np.dtype(dtype)
        self.F = self.dtype.type
        self.sizes = [int(s) for s in layout.sizes]
        self.L = layout.n_layers
        self.act = [int(a) for a in act]
        self.dropout = [float(r) for r in dropout]       # empty: no dropout
        self.loss_code = int(loss_code)
        self.opt_code = int(opt_code)
        P = layout.n_params
        self.params = cuda.device_array(P, dtype=self.dtype)
        self.grads = cuda.device_array(P, dtype=self.dtype)
        self.m = cuda.device_array(P if has_m else 1, dtype=self.dtype)
        self.v = cuda.device_array(P if has_v else 1, dtype=self.dtype)
        self.W, self.b, self.dW, self.db = [], [], [], []
        for l in range(self.L):
            n_in, n_out = self.sizes[l], self.sizes[l + 1]
            w, b = int(layout.w_off[l]), int(layout.b_off[l])
            self.W.append(self.params[w:w + n_in * n_out].reshape(n_in, n_out))
            self.b.append(self.params[b:b + n_out])
            self.dW.append(self.grads[w:w + n_in * n_out].reshape(n_in, n_out))
            self.db.append(self.grads[b:b + n_out])
        self.sizes_d = cuda.to_device(np.asarray(self.sizes, dtype=np.int64))
        self.b_off_d = cuda.to_device(np.asarray(layout.b_off, dtype=np.int64))
        block_lo, block_hi, block_layer = layout.blocks()
        self.n_blocks = block_lo.shape[0]
        self.block_lo = cuda.to_device(block_lo)
        self.block_hi = cuda.to_device(block_hi)
        self.block_layer = cuda.to_device(block_layer)
        self.block_layer_host = block_layer
        self.block_sq = cuda.device_array(self.n_blocks, dtype=np.float64)
        self.clip = cuda.to_device(np.ones(1, dtype=self.dtype))
        self.status = cuda.to_device(np.zeros(2, dtype=np.int64))
        self._workspaces = {}
        self._launchers = {}
        self._simulated = cuda_backend.simulator_enabled()
        self._eval_index = cuda.to_device(np.zeros(1, dtype=np.int64))

    # ----------------------------------------------------------------- transfers

    def _state(self, params, m, v):
        """(device buffer, host array) of params and the optimizer state in use."""
        return [(d, h) for d, h in ((self.params, params), (self.m, m), (self.v, v)) if h.size]

    def upload(self, params, m, v):
        """Host -> device: the parameters and the optimizer state."""
        for device, host in self._state(params, m, v):
            device.copy_to_device(host)

    def download(self, params, m, v):
        """Device -> host, into the given arrays."""
        for device, host in self._state(params, m, v):
            device.copy_to_host(host)

    def data(self, X, labels, targets, weights, batch_size=EVAL_ROWS):
        return DeviceData(self.cuda, X, labels, targets, weights, batch_size, self.dtype)

    def workspace(self, rows, purpose="train"):
        """The workspace for `rows` rows; one per purpose ('train', 'eval'), kept between
        calls (device allocations are slow) and replaced when the row count changes."""
        ws = self._workspaces.get(purpose)
        if ws is None or ws.rows != rows:
            ws = self._workspaces[purpose] = Workspace(self.cuda, self.sizes, rows, self.dtype)
        return ws

    def _index(self, n):
        """0..n-1 on the device (evaluation reads rows in order)."""
        if self._eval_index.shape[0] < n:
            self._eval_index = self.cuda.to_device(np.arange(n, dtype=np.int64))
        return self._eval_index

    # ------------------------------------------------------------------ launches

    def _launch(self, kernel, grid, block):
        """kernel[grid, block], configured once and kept: configuring costs Python time on
        every launch, and numba-cuda warns of grids under 128 blocks, which the small
        networks fastbp is fast for always have (the warning would reach users)."""
        if self._simulated:      # the simulator's kernel[grid, block] returns the kernel
            return kernel[grid, block]     # itself, reconfigured: nothing to keep
        key = (id(kernel), grid, block)
        launcher = self._launchers.get(key)
        if launcher is None:
            launcher = self._launchers[key] = configure_quietly(kernel, grid, block)
        return launcher

    def _product(self, kernel, x_extent, y_extent):
        """A 2-D product kernel over (x_extent, y_extent) elements, BT x BT per block."""
        bt = self.k.block_tile
        return self._launch(kernel, (_blocks(x_extent, bt), _blocks(y_extent, bt)),
                            (self.k.tile, self.k.tile))

    def _grid_stride(self, kernel, n):
        """A 1-D grid-stride kernel over n elements (the optimizer)."""
        threads = self.k.threads
        return self._launch(kernel, min(_blocks(n, threads), 1024), threads)

    def forward(self, ws, A0, gather, idx, lo, n_rows, seed, step, training):
        """Every layer's Z and hidden A for n_rows rows: row r of the input is
        A0[idx[lo + r]] (gather) or A0[r]."""
        A, g = A0, gather
        for l in range(self.L):
            hidden = l < self.L - 1
            out = ws.A[l + 1] if hidden else ws.Z[l]
            rate = self.dropout[l] if training and hidden and self.dropout else 0.0
            self._product(self.k.linear_forward, n_rows, self.sizes[l + 1])(
                ws.Z[l], out, A, idx, lo, g, self.W[l], self.b[l], n_rows, hidden,
                self.act[l] if hidden else 0, rate, seed, step, l)
            A, g = out, False

    def loss(self, ws, data, idx, lo, n_rows, inv_count, out_lo, row_loss, row_correct,
             want_grad):
        L = self.L
        self._launch(self.k.loss_delta, _blocks(n_rows, self.k.threads), self.k.threads)(
            ws.D[L - 1], ws.Z[L - 1], idx, lo, n_rows, data.labels, data.targets,
            data.row_weight, data.weighted, self.loss_code, self.F(inv_count), row_loss,
            row_correct, out_lo, want_grad)

    def backward(self, ws, A0, gather, idx, lo, n_rows, seed, step, training, accumulate):
        """The chain rule, output to input, one launch per layer: dW_l, db_l (added to the
        gradient buffer when accumulate) and the delta D[l-1] of the layer below."""
        bt = self.k.block_tile
        for l in range(self.L - 1, -1, -1):
            n_in, n_out = self.sizes[l], self.sizes[l + 1]
            blocks = _blocks(n_out, bt) * _blocks(n_in, bt)
            if l > 0:
                A, g = ws.A[l], False
                blocks += _blocks(n_rows, bt) * _blocks(n_in, bt)
                dA, Z_prev, act = ws.D[l - 1], ws.Z[l - 1], self.act[l - 1]
                rate = self.dropout[l - 1] if training and self.dropout else 0.0
            else:                       # no input gradient: placeholders, never read
                A, g = A0, gather
                dA = Z_prev = ws.D[0]
                act, rate = 0, 0.0
            self._launch(self.k.linear_backward, blocks, (self.k.tile, self.k.tile))(
                dA, self.dW[l], self.db[l], ws.D[l], A, self.W[l], Z_prev,
                ws.A[l] if l > 0 else Z_prev, idx, lo, g, n_rows, accumulate, act, rate,
                seed, step, l - 1)

    # --------------------------------------------------------------- training

    def train_epoch(self, data, order, batch_size, hyper, step, seed, norms, buffers):
        """One epoch over `data` in the row order `order` (host int64), as
        cpu.train_epoch: returns (sum of the rows' losses, correct predictions, step after
        the epoch, -1 or the index of the step whose loss was NaN/inf). norms (S, L + 1)
        (host) receives the per-step gradient norms, or (S, L + 3) also the step records of
        cpu.train_epoch. `buffers` are the per-fit device
        arrays from `epoch_buffers`."""
        k, F = self.k, self.F
        n, B, L = data.n, batch_size, self.L
        n_steps = -(-n // B)
        ws = self.workspace(min(B, n))
        data.set_order(order)
        self.status.copy_to_device(np.zeros(2, dtype=np.int64))
        inv_counts = self._inverse_counts(data, order, B)
        opt = self._optimizer_scalars(hyper)
        decays = self._decays(hyper, inv_counts)       # per step: (decay, adamw's shrink)
        clip_norm = float(hyper.clip)
        block_norms = self._launch(k.grad_block_norms, self.n_blocks, k.threads)
        step_stats = self._launch(k.step_stats, 1, k.threads)
        update = self._grid_stride(k.optimizer_update, self.layout.n_params)
        records = norms.shape[1] > L + 1           # see cpu.train_epoch
        weight_records = norms.shape[1] > L + 2
        if weight_records and "wsq" not in buffers:
            buffers["wsq"] = self.cuda.device_array((n_steps, self.n_blocks), dtype=np.float64)
        for s in range(n_steps):
            lo = s * B
            n_rows = min(B, n - lo)
            t = step + s + 1                  # the step being taken (dropout masks, Adam)
            if data.streamed:
                c_lo = lo - lo % data.chunk_rows
                if lo == c_lo:
                    data.chunk(c_lo)
                A0, gather = data.X[lo - c_lo:lo - c_lo + n_rows], False
            else:
                A0, gather = data.X, True
            self.forward(ws, A0, gather, data.order, lo, n_rows, seed, t, True)
            self.loss(ws, data, data.order, lo, n_rows, inv_counts[s], 0, ws.row_loss,
                      ws.row_correct, True)
            self.backward(ws, A0, gather, data.order, lo, n_rows, seed, t, True, False)
            block_norms(self.grads, self.block_lo, self.block_hi, self.block_sq)
            step_stats(
                ws.row_loss, ws.row_correct, n_rows, self.block_sq, self.block_layer,
                buffers["norms"], s, clip_norm, self.clip, self.status, buffers["loss"],
                buffers["correct"])
            if weight_records:            # the weights before this step's update
                block_norms(self.params, self.block_lo, self.block_hi, buffers["wsq"][s])
            bc1 = 1.0 - hyper.beta1 ** t
            bc2 = 1.0 - hyper.beta2 ** t
            update(
                self.params, self.grads, self.m, self.v, self.b_off_d, self.sizes_d,
                self.opt_code, *opt, decays[s][0], *self._adam_scalars(hyper, bc1, bc2),
                decays[s][1], self.clip, self.status)
        status = self.status.copy_to_host()
        bad = int(status[1]) if status[0] else -1
        done = bad if bad >= 0 else n_steps
        losses = buffers["loss"].copy_to_host()[:done]
        correct = buffers["correct"].copy_to_host()[:done]
        norms[:, :L + 1] = buffers["norms"].copy_to_host()[:norms.shape[0]]
        if records:
            norms[:done, L + 1] = losses
        if weight_records:
            wsq = buffers["wsq"].copy_to_host()[:done]
            norms[:done, L + 2] = wsq[:, self.block_layer_host < L].sum(axis=1)
        return float(losses.sum()), int(correct.sum()), step + done, bad

    def epoch_buffers(self, n_steps):
        """Per-fit device arrays of the per-step results."""
        cuda = self.cuda
        return {"loss": cuda.device_array(n_steps, dtype=np.float64),
                "correct": cuda.device_array(n_steps, dtype=np.int64),
                "norms": cuda.device_array((n_steps, self.L + 1), dtype=np.float64)}

    def _inverse_counts(self, data, order, B):
        """Per step: 1 / rows, or 1 / the batch's total weight (0 for a weightless batch),
        in the parameters' dtype, as cpu.batch_weight_inverse."""
        n = data.n
        starts = np.arange(0, n, B)
        if not data.weighted:
            counts = np.minimum(B, n - starts).astype(self.dtype)
            return self.F(1) / counts
        totals = np.add.reduceat(data.weights[order], starts).astype(self.dtype)
        with np.errstate(divide="ignore"):
            return np.where(totals > 0, self.F(1) / totals, self.F(0)).astype(self.dtype)

    def _adam_scalars(self, hyper, bc1, bc2):
        """Adam's step size and 1/sqrt(bc2) as optim.adam_step_size makes them."""
        step_size, inv_sqrt_bc2 = adam_step_size.py_func(hyper, bc1, bc2)
        return self.F(step_size), self.F(inv_sqrt_bc2)

    def _optimizer_scalars(self, hyper):
        """lr, momentum, nesterov, beta1, beta2, eps, alpha in the kernel's order."""
        F = self.F
        return (F(hyper.lr), F(hyper.momentum), bool(hyper.nesterov != 0.0),
                F(hyper.beta1), F(hyper.beta2), F(hyper.eps), F(hyper.alpha))

    def _decays(self, hyper, inv_counts):
        """Per step (decay, shrink) as optim.step_decay and update_segment make them: decay
        0 and shrink 1 - lr*decay for adamw, else (decay, 1); the decay per unit of batch
        weight under hyper.decay_per_weight."""
        F = self.F
        if hyper.decay_per_weight != 0.0:
            per_step = [hyper.decay * float(c) for c in inv_counts]
        else:
            per_step = [hyper.decay] * len(inv_counts)
        if self.opt_code == ADAMW:
            return [(F(0.0), F(1.0 - hyper.lr * d)) for d in per_step]
        return [(F(d), F(1.0)) for d in per_step]

    # ---------------------------------------------------------- evaluation

    def _row_blocks(self, data):
        """(input, gather, lo, n_rows) per block of rows of `data` for evaluation: EVAL_ROWS
        rows at a time from the resident X, or chunk by chunk of a streamed X (uploaded in
        stored order; idx[lo + r] = lo + r then still finds the labels)."""
        n = data.n
        if not data.streamed:
            for lo in range(0, n, EVAL_ROWS):
                yield data.X, True, lo, min(EVAL_ROWS, n - lo)
            return
        for c_lo in range(0, n, data.chunk_rows):
            rows = data.chunk(c_lo, shuffled=False)
            for lo in range(c_lo, c_lo + rows, EVAL_ROWS):
                n_rows = min(EVAL_ROWS, c_lo + rows - lo)
                yield data.X[lo - c_lo:lo - c_lo + n_rows], False, lo, n_rows

    def loss_grad(self, data, want_grad):
        """(sum of the rows' weighted losses, correct predictions, gradient of the mean
        loss or None) of the whole data set as one batch, EVAL_ROWS rows per launch."""
        n = data.n
        ws = self.workspace(min(EVAL_ROWS, n), "eval")
        idx = self._index(n)
        row_loss = self.cuda.device_array(n, dtype=np.float64)
        row_correct = self.cuda.device_array(n, dtype=np.int64)
        if data.weighted:
            total = data.weights.sum(dtype=self.dtype)
            inv_count = self.F(1) / total if total > 0 else self.F(0)
        else:
            inv_count = self.F(1) / self.F(n)
        for A0, gather, lo, n_rows in self._row_blocks(data):
            self.forward(ws, A0, gather, idx, lo, n_rows, 0, 0, False)
            self.loss(ws, data, idx, lo, n_rows, inv_count, lo, row_loss, row_correct,
                      want_grad)
            if want_grad:
                self.backward(ws, A0, gather, idx, lo, n_rows, 0, 0, False, lo > 0)
        loss_sum = float(row_loss.copy_to_host().sum())
        correct = int(row_correct.copy_to_host().sum())
        return loss_sum, correct, (self.grads.copy_to_host() if want_grad else None)

    def predict(self, X):
        """The output activation (N, K) for X (N, n_0) (host array), EVAL_ROWS rows at a
        time through one device buffer each way."""
        n = X.shape[0]
        rows = min(EVAL_ROWS, n)
        ws = self.workspace(rows, "eval")
        X_d = self.cuda.device_array((rows, X.shape[1]), dtype=self.dtype)
        P_d = self.cuda.device_array((rows, self.sizes[-1]), dtype=self.dtype)
        idx = self._index(rows)
        out = np.empty((n, self.sizes[-1]), dtype=self.dtype)
        output = self._launch(self.k.output_forward, _blocks(rows, self.k.threads),
                              self.k.threads)
        for lo in range(0, n, rows):
            n_rows = min(rows, n - lo)
            X_d[:n_rows].copy_to_device(X[lo:lo + n_rows])
            self.forward(ws, X_d, False, idx, 0, n_rows, 0, 0, False)
            output(P_d, ws.Z[self.L - 1], n_rows, self.loss_code)
            out[lo:lo + n_rows] = P_d.copy_to_host()[:n_rows]
        return out
