"""target='cuda': the network's buffers on the GPU and the launches of a training epoch.

`CudaNetwork` holds params, gradients and optimizer state on the device for as long as the
Trainer lives, and a workspace (every layer's pre-activations, activations and deltas) per
batch size. `DeviceData` moves a data set to the device once per fit, or, when it does not
fit in the share of free GPU memory set by RESIDENT_FRACTION, keeps the labels and the row
order there and streams X in large chunks of already shuffled rows.

A training step is 2L + 4 kernel launches (see `_step_launches`). Their arguments are the
same for every step of a fit: each step's scalars (its rows, step number, batch weight,
weight decay, Adam's step size) and the epoch's settings are in small device tables that
the host fills once per epoch, and the kernels find their step through a cursor on the
device that step_stats advances (gpu.py's docstring). So on a GPU the launches of a step
are captured once per fit as CUDA graphs (cuda_graphs.py) and an epoch is a
few graph launches; the plain launches, the same kernels with the same arguments, are the
path under the simulator, with FASTBP_CUDA_GRAPHS=0, and the fallback when a capture or a
graph launch fails (`CudaNetwork.launch_path` and `graph_error` say what ran and why).

Before an epoch the host sends params, optimizer state, the epoch's permutation (drawn from
the same generator as on the CPU, so a seed gives the same run) and the step tables; rows
are gathered on the device, and the host reads nothing back until the epoch's end: the
per-step losses, correct counts and gradient norms, the divergence status, and params and
optimizer state (the Trainer's). Streamed data adds its chunks between steps.
"""
import warnings

import numpy as np

from . import cuda_backend, gpu
from .cuda_graphs import Steps
from .codes import ADAM, ADAMW
from .gpu import (ALPHA, BETA1, BETA2, CLIP_NORM, DECAY, EPOCH_F_LEN, EPOCH_I_LEN, EPS,
                  INV_COUNT, INV_SQRT_BC2, LO, LR, MOMENTUM, NESTEROV, ROWS, SEED, SHRINK,
                  STEP, STEP_SIZE, STEPS_F_COLS, STEPS_I_COLS)
from .optim import adam_step_size

# A data set is moved to the GPU whole when X takes at most this share of its free memory;
# larger ones are streamed, in chunks of at most CHUNK_BYTES (tests lower MAX_RESIDENT_BYTES
# to force streaming).
RESIDENT_FRACTION = 0.5
MAX_RESIDENT_BYTES = None
CHUNK_BYTES = 256 * 2**20
EVAL_ROWS = 1024       # rows per launch when evaluating, predicting or taking a gradient
# A product launch takes the larger tiles when its grid has at least this many blocks; None:
# one per multiprocessor of the GPU (the simulator's stand-in count is SIMULATED_...)
LARGE_TILE_MIN_BLOCKS = None
SIMULATED_MULTIPROCESSORS = 4


def _blocks(n, per_block):
    return max(1, -(-n // per_block))


def configure_quietly(kernel, grid, block):
    """kernel[grid, block] without numba-cuda's warning of grids under 128 blocks, which the
    small networks fastbp is fast for always have (it would reach users on every fit)."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=cuda_backend.SMALL_GRID_WARNING)
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
    backward, a training epoch, evaluation and prediction.

    After each training epoch `launch_path` says how its steps ran: "graph" (replayed
    CUDA graphs; the first step of a fit runs plainly, loading the kernels before the
    capture), "plain" (kernel launches from Python), or "graph+plain" (a graph failed
    mid-epoch and the plain launches took over), and `launch_counts` how many steps ran
    each way; `graph_error` keeps the first capture or graph-launch failure, after which
    this network launches plainly."""

    def __init__(self, layout, dtype, act, dropout, loss_code, opt_code, has_m, has_v):
        self.cuda = cuda = cuda_backend.load()
        self.k = gpu.get_kernels(dtype)
        # the products' larger tiles, built on first use (see _products)
        self._large = None
        self._large_per_thread = gpu.block_sizes()["large_per_thread"]
        self.large_tile_min_blocks = LARGE_TILE_MIN_BLOCKS
        if self.large_tile_min_blocks is None:
            self.large_tile_min_blocks = getattr(cuda.get_current_device(),
                                                 "MULTIPROCESSOR_COUNT",
                                                 SIMULATED_MULTIPROCESSORS)
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
        self.no_wsq = cuda.device_array((1, self.n_blocks), dtype=np.float64)  # placeholder
        self.clip = cuda.to_device(np.ones(1, dtype=self.dtype))
        # (diverged, the step that diverged, the step cursor): one upload resets all three
        self.status = cuda.to_device(np.zeros(3, dtype=np.int64))
        self.cursor = self.status[2:]
        self._zero = cuda.to_device(np.zeros(1, dtype=np.int64))   # evaluation's cursor
        self._eval_epoch_i = cuda.to_device(np.zeros(EPOCH_I_LEN, dtype=np.int64))
        self._workspaces = {}
        self._launchers = {}
        self._simulated = cuda_backend.simulator_enabled()
        self._eval_index = cuda.to_device(np.zeros(1, dtype=np.int64))
        self.launch_path = None
        self.launch_counts = {}
        self.graph_error = None
        self.graph_stream = None

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

    def _run(self, launches):
        """Launch a list of (kernel, grid, block, args) on numba-cuda's default stream."""
        for kernel, grid, block, args in launches:
            self._launch(kernel, grid, block)(*args)

    def _products(self, blocks):
        """The product kernels of one launch whose grid has blocks(block_tile) blocks: the
        larger tiles (gpu.py's large_per_thread) where that grid still has a block for
        every multiprocessor (`large_tile_min_blocks`), else the smaller ones, which keep
        more blocks busy on small layers. Both builds sum the same products in the same
        order, so the choice never changes a bit of the results."""
        if self._large_per_thread > self.k.per_thread and \
                blocks(self.k.tile * self._large_per_thread) >= self.large_tile_min_blocks:
            return self.build_large_products()
        return self.k

    def build_large_products(self):
        """The products at the larger tiles (compiled, or loaded from the disk cache, on
        first use), or None where large_per_thread is not larger than per_thread."""
        if self._large is None and self._large_per_thread > self.k.per_thread:
            self._large = gpu.get_products(self.dtype.name, self.k.tile,
                                           self._large_per_thread)
        return self._large

    def _forward_launches(self, ws, A0, gather, a_mod, idx, training, tables, cursor, shift):
        """Every layer's Z and hidden A for the rows of step cursor[0] + shift of `tables`
        (steps_i, steps_f, epoch_i), at most ws.rows rows: row r of the input is
        A0[idx[lo + r]] (gather), A0[r + lo % a_mod] (a_mod > 0) or A0[r]."""
        steps_i, _, epoch_i = tables
        tile = (self.k.tile, self.k.tile)
        launches = []
        A, g, mod = A0, gather, a_mod
        for l in range(self.L):
            hidden = l < self.L - 1
            out = ws.A[l + 1] if hidden else ws.Z[l]
            rate = self.dropout[l] if training and hidden and self.dropout else 0.0
            n_out = self.sizes[l + 1]
            p = self._products(lambda bt: _blocks(ws.rows, bt) * _blocks(n_out, bt))
            grid = (_blocks(ws.rows, p.block_tile), _blocks(n_out, p.block_tile))
            launches.append((p.linear_forward, grid, tile,
                             (ws.Z[l], out, A, idx, g, mod, self.W[l], self.b[l], hidden,
                              self.act[l] if hidden else 0, rate, l, steps_i, epoch_i,
                              cursor, shift)))
            A, g, mod = out, False, 0
        return launches

    def _loss_launch(self, ws, data, idx, row_loss, row_correct, out_at_lo, want_grad, tables,
                     cursor, shift):
        steps_i, steps_f, _ = tables
        L = self.L
        return (self.k.loss_delta, _blocks(ws.rows, self.k.threads), self.k.threads,
                (ws.D[L - 1], ws.Z[L - 1], idx, data.labels, data.targets, data.row_weight,
                 data.weighted, self.loss_code, row_loss, row_correct, out_at_lo, want_grad,
                 steps_i, steps_f, cursor, shift))

    def _backward_launches(self, ws, A0, gather, a_mod, idx, training, accumulate, tables,
                           cursor, shift):
        """The chain rule, output to input, one launch per layer: dW_l, db_l (added to the
        gradient buffer when accumulate and the rows do not start at 0) and the delta
        D[l-1] of the layer below. Grids for ws.rows rows."""
        steps_i, _, epoch_i = tables
        launches = []
        for l in range(self.L - 1, -1, -1):
            n_in, n_out = self.sizes[l], self.sizes[l + 1]

            def blocks(bt):              # dW's tiles, then (not for layer 0) dA's
                return _blocks(n_out, bt) * _blocks(n_in, bt) + \
                    (_blocks(ws.rows, bt) * _blocks(n_in, bt) if l > 0 else 0)
            p = self._products(blocks)
            if l > 0:
                A, g, mod = ws.A[l], False, 0
                dA, Z_prev, act = ws.D[l - 1], ws.Z[l - 1], self.act[l - 1]
                rate = self.dropout[l - 1] if training and self.dropout else 0.0
            else:                       # no input gradient: placeholders, never read
                A, g, mod = A0, gather, a_mod
                dA = Z_prev = ws.D[0]
                act, rate = 0, 0.0
            launches.append((p.linear_backward, blocks(p.block_tile), (p.tile, p.tile),
                             (dA, self.dW[l], self.db[l], ws.D[l], A, self.W[l], Z_prev,
                              ws.A[l] if l > 0 else Z_prev, idx, g, mod, accumulate, act,
                              rate, l - 1, steps_i, epoch_i, cursor, shift)))
        return launches

    # --------------------------------------------------------------- training

    def _step_launches(self, ws, data, buffers, weight_records):
        """The 2L + 4 launches of one training step, the same for every step of a fit (the
        step's scalars are read on the device; see gpu.py): forward, loss, backward, the
        gradient's (and with weight records the weights') per-block sums of squares, the
        step's statistics (which advance the cursor), the optimizer update."""
        k, cursor = self.k, self.cursor
        tables = (buffers["steps_i"], buffers["steps_f"], buffers["epoch_i"])
        if data.streamed:            # the chunk that holds the step's rows, from its start
            A0, gather, a_mod = data.X, False, data.chunk_rows
        else:                        # the epoch's shuffled rows, gathered
            A0, gather, a_mod = data.X, True, 0
        launches = self._forward_launches(ws, A0, gather, a_mod, data.order, True, tables,
                                          cursor, 0)
        launches.append(self._loss_launch(ws, data, data.order, ws.row_loss, ws.row_correct,
                                          False, True, tables, cursor, 0))
        launches += self._backward_launches(ws, A0, gather, a_mod, data.order, True, False,
                                            tables, cursor, 0)
        wsq = buffers["wsq"] if weight_records else self.no_wsq
        launches.append((k.grad_block_norms, self.n_blocks, k.threads,
                         (self.grads, self.params, self.block_lo, self.block_hi,
                          self.block_sq, wsq, weight_records, cursor, 0)))
        launches.append((k.step_stats, 1, k.threads,
                         (ws.row_loss, ws.row_correct, self.block_sq, self.block_layer,
                          buffers["norms"], buffers["epoch_d"], self.clip, self.status,
                          buffers["loss"], buffers["correct"], buffers["steps_i"], cursor)))
        launches.append((k.optimizer_update,
                         min(_blocks(self.layout.n_params, k.threads), 1024), k.threads,
                         (self.params, self.grads, self.m, self.v, self.b_off_d, self.sizes_d,
                          self.opt_code, buffers["epoch_f"], buffers["epoch_i"],
                          buffers["steps_f"], self.clip, self.status, cursor, -1)))
        return launches

    def train_epoch(self, data, order, batch_size, hyper, step, seed, norms, buffers):
        """One epoch over `data` in the row order `order` (host int64), as
        cpu.train_epoch: returns (sum of the rows' losses, correct predictions, step after
        the epoch, -1 or the index of the step whose loss was NaN/inf). norms (S, L + 1)
        (host) receives the per-step gradient norms, or (S, L + 3) also the step records of
        cpu.train_epoch. `buffers` are the per-fit device arrays from `epoch_buffers`; the
        step's launches (and their CUDA graphs) are kept there too, for the fit."""
        n, B, L = data.n, batch_size, self.L
        n_steps = -(-n // B)
        ws = self.workspace(min(B, n))
        records = norms.shape[1] > L + 1           # see cpu.train_epoch
        weight_records = norms.shape[1] > L + 2
        if weight_records and "wsq" not in buffers:
            buffers["wsq"] = self.cuda.device_array((n_steps, self.n_blocks), dtype=np.float64)
        data.set_order(order)
        self._upload_tables(buffers, data, order, B, hyper, step, seed)
        self.status.copy_to_device(np.zeros(3, dtype=np.int64))    # the cursor at step 0
        key = (id(ws), id(data), n_steps, weight_records)
        steps = buffers.get("steps")
        if steps is None or steps.key != key:
            steps = buffers["steps"] = Steps(
                self, key, self._step_launches(ws, data, buffers, weight_records),
                (ws, data))
        steps.begin_epoch()
        if data.streamed:         # each chunk uploaded after the steps before it have run
            per_chunk = data.chunk_rows // B
            for c_lo in range(0, n, data.chunk_rows):
                data.chunk(c_lo)
                first = c_lo // B
                steps.run(min(first + per_chunk, n_steps) - first)
        else:
            steps.run(n_steps)
        self.launch_path = steps.path()
        self.launch_counts = dict(steps.counts, graphs_captured=len(steps.graphs))
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
        """Per-fit device arrays: the per-step results, and the step tables the host fills
        every epoch (gpu.py's docstring)."""
        cuda, F = self.cuda, self.dtype
        return {"loss": cuda.device_array(n_steps, dtype=np.float64),
                "correct": cuda.device_array(n_steps, dtype=np.int64),
                "norms": cuda.device_array((n_steps, self.L + 1), dtype=np.float64),
                "steps_i": cuda.device_array((n_steps, STEPS_I_COLS), dtype=np.int64),
                "steps_f": cuda.device_array((n_steps, STEPS_F_COLS), dtype=F),
                "epoch_f": cuda.device_array(EPOCH_F_LEN, dtype=F),
                "epoch_i": cuda.device_array(EPOCH_I_LEN, dtype=np.int64),
                "epoch_d": cuda.device_array(1, dtype=np.float64)}

    def _upload_tables(self, buffers, data, order, B, hyper, step, seed):
        """This epoch's per-step and per-epoch scalars, computed as the plain launches'
        arguments used to be (the same values in the same dtypes, so results do not depend
        on how the steps are launched), into the device tables: one copy each."""
        F, n = self.F, data.n
        lo = np.arange(0, n, B, dtype=np.int64)
        S = lo.shape[0]
        steps_i = np.empty((S, STEPS_I_COLS), dtype=np.int64)
        steps_i[:, LO] = lo
        steps_i[:, ROWS] = np.minimum(B, n - lo)
        steps_i[:, STEP] = np.arange(step + 1, step + S + 1)    # the step taken: dropout, Adam
        inv_counts = self._inverse_counts(data, order, B)
        decay, shrink = self._decays(hyper, inv_counts)
        steps_f = np.zeros((S, STEPS_F_COLS), dtype=self.dtype)
        steps_f[:, INV_COUNT] = inv_counts
        steps_f[:, DECAY] = decay
        steps_f[:, SHRINK] = shrink
        if self.opt_code in (ADAM, ADAMW):
            steps_f[:, STEP_SIZE], steps_f[:, INV_SQRT_BC2] = self._adam_scalars(hyper, step, S)
        epoch_f = np.zeros(EPOCH_F_LEN, dtype=self.dtype)
        for col, value in ((LR, hyper.lr), (MOMENTUM, hyper.momentum), (BETA1, hyper.beta1),
                           (BETA2, hyper.beta2), (EPS, hyper.eps), (ALPHA, hyper.alpha)):
            epoch_f[col] = F(value)
        epoch_i = np.zeros(EPOCH_I_LEN, dtype=np.int64)
        epoch_i[SEED] = seed
        epoch_i[NESTEROV] = hyper.nesterov != 0.0
        epoch_d = np.zeros(1, dtype=np.float64)
        epoch_d[CLIP_NORM] = hyper.clip
        for name, host in (("steps_i", steps_i), ("steps_f", steps_f), ("epoch_f", epoch_f),
                           ("epoch_i", epoch_i), ("epoch_d", epoch_d)):
            buffers[name][:host.shape[0]].copy_to_device(host)

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
            return np.where(totals != 0, self.F(1) / totals, self.F(0)).astype(self.dtype)

    def _adam_scalars(self, hyper, step, S):
        """Per step t = step + 1 ... step + S: Adam's step size and 1/sqrt(bc2) as
        optim.adam_step_size makes them from bc1 = 1 - beta1^t, bc2 = 1 - beta2^t (the
        powers as Python floats, as cpu.bias_corrections's; the rest elementwise IEEE
        operations, the same in NumPy)."""
        ts = range(step + 1, step + S + 1)
        bc1 = 1.0 - np.array([hyper.beta1 ** t for t in ts], dtype=np.float64)
        bc2 = 1.0 - np.array([hyper.beta2 ** t for t in ts], dtype=np.float64)
        step_size, inv_sqrt_bc2 = adam_step_size.py_func(hyper, bc1, bc2)
        return (np.asarray(step_size, dtype=np.float64).astype(self.dtype),
                np.asarray(inv_sqrt_bc2, dtype=np.float64).astype(self.dtype))

    def _decays(self, hyper, inv_counts):
        """Per step (decay, shrink) as optim.step_decay and update_segment make them: decay
        0 and shrink 1 - lr*decay for adamw, else (decay, 1); the decay per unit of batch
        weight under hyper.decay_per_weight."""
        S = inv_counts.shape[0]
        if hyper.decay_per_weight != 0.0:
            per_step = hyper.decay * inv_counts.astype(np.float64)
        else:
            per_step = np.full(S, hyper.decay, dtype=np.float64)
        if self.opt_code == ADAMW:
            return np.zeros(S, self.dtype), (1.0 - hyper.lr * per_step).astype(self.dtype)
        return per_step.astype(self.dtype), np.ones(S, self.dtype)

    # ---------------------------------------------------------- evaluation

    def _row_blocks(self, data):
        """(chunk start or None, lo, n_rows) per block of rows of `data` for evaluation:
        EVAL_ROWS rows at a time from the resident X, or chunk by chunk of a streamed X."""
        n = data.n
        if not data.streamed:
            return [(None, lo, min(EVAL_ROWS, n - lo)) for lo in range(0, n, EVAL_ROWS)]
        return [(c_lo, lo, min(EVAL_ROWS, min(c_lo + data.chunk_rows, n) - lo))
                for c_lo in range(0, n, data.chunk_rows)
                for lo in range(c_lo, min(c_lo + data.chunk_rows, n), EVAL_ROWS)]

    def _eval_tables(self, blocks, inv_count=0.0):
        """Device tables for evaluation: row i = block i's (lo, n_rows) and inv_count
        (kernels read row 0 + i of them, i passed as the shift)."""
        steps_i = np.zeros((max(len(blocks), 1), STEPS_I_COLS), dtype=np.int64)
        steps_f = np.zeros((steps_i.shape[0], STEPS_F_COLS), dtype=self.dtype)
        for i, (lo, n_rows) in enumerate(blocks):
            steps_i[i, LO], steps_i[i, ROWS] = lo, n_rows
        steps_f[:, INV_COUNT] = inv_count
        return (self.cuda.to_device(steps_i), self.cuda.to_device(steps_f), self._eval_epoch_i)

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
            inv_count = self.F(1) / total if total != 0 else self.F(0)
        else:
            inv_count = self.F(1) / self.F(n)
        blocks = self._row_blocks(data)
        tables = self._eval_tables([(lo, n_rows) for _, lo, n_rows in blocks], inv_count)
        for i, (c_lo, lo, n_rows) in enumerate(blocks):
            if c_lo is None:                 # the resident rows, in stored order
                A0, gather = data.X, True
            else:      # the chunk, uploaded in stored order (idx[lo + r] = lo + r then
                if lo == c_lo:                # still finds the labels); its rows from lo
                    data.chunk(c_lo, shuffled=False)
                A0, gather = data.X[lo - c_lo:lo - c_lo + n_rows], False
            launches = self._forward_launches(ws, A0, gather, 0, idx, False, tables,
                                              self._zero, i)
            launches.append(self._loss_launch(ws, data, idx, row_loss, row_correct, True,
                                              want_grad, tables, self._zero, i))
            if want_grad:
                launches += self._backward_launches(ws, A0, gather, 0, idx, False, True,
                                                    tables, self._zero, i)
            self._run(launches)
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
        tables = self._eval_tables([(0, min(rows, n - lo)) for lo in range(0, n, rows)])
        for i, lo in enumerate(range(0, n, rows)):
            n_rows = min(rows, n - lo)
            X_d[:n_rows].copy_to_device(X[lo:lo + n_rows])
            self._run(self._forward_launches(ws, X_d, False, 0, idx, False, tables,
                                             self._zero, i))
            output(P_d, ws.Z[self.L - 1], n_rows, self.loss_code)
            out[lo:lo + n_rows] = P_d.copy_to_host()[:n_rows]
        return out
