"""The CPU epoch, loss-and-gradient and predict kernels, serial and multi-threaded.

Each body below is plain Python over arrays and scalars. The epoch and gradient bodies are
made into two templates at import (as umap does): serial (``prange`` runs as ``range``) for
target "cpu" and ``parallel=True`` for target "parallel"; the evaluation and predict bodies
into one serial template without the GIL, whose chunks of rows the engine runs on threads
of its own. variants.py compiles copies of them per row layout (dense, CSR).
Parallelism is over chunks of the minibatch: chunk c computes the gradient of its rows into
its own slab ``gslab[c]``; the slabs are then summed in a fixed order. No thread writes where
another does, so results are reproducible for a given thread count (chunk count), and equal
to the serial ones to rounding.

Arguments are grouped in the NamedTuples of args.py. Extra sizes (see ops.py for the rest):
    C     number of chunks (1 for "cpu", the thread count for "parallel")
    W     workspace length per chunk (activations, pre-activations, deltas)
    N     rows of X
    S     optimizer steps in the epoch, ceil(N / batch_size)
    G     number of fixed blocks the flat buffers are cut into for reductions and updates
"""
import types

import numpy as np
from numba import njit, prange

from . import gemm
from .ops import (FASTMATH, forward, forward_backward, forward_loss, jit, layer_weight,
                  output_forward, touched_release, touched_scatter)
from .optim import bias_corrections, step_decay, update_segment
from .prebuilt import cached

# From this many parameters the per-step reduction and update run on every chunk's thread,
# each on a contiguous group of blocks holding about 1/T of the parameters (update_group;
# the engine cuts a small model into blocks fine enough for that, layout.update_blocks). On
# a 2-core Zen 4 (2026-11-27) this took Adam's part of digits' step (7,510 float64
# parameters) from 20 to 13 us and left SGD's at 7-10 us.
PARALLEL_UPDATE_MIN = 4096
# The lazy update of sparse rows runs its touched rows on every thread from this many
# parameters (touched rows x hidden units).
LAZY_PARALLEL_MIN = 65536

# Compile-time constants, set per variant by variants.py (the functions here are templates):
# CSR rows (args.Rows), and with them the lazy update (hyper.lazy) that touches only the
# batch's rows of W_0.
SPARSE = False
LAZY = False


def _train_epoch(state, slabs, ws, rows, order, net, hyper, batch_size, step, seed, norms):
    """One epoch of minibatch training over `rows` (args.Rows) in the row order `order`
    (N,); each batch's loss is the mean of its rows' losses, weighted by the row weights
    unless they are empty.

    state (args.State: params, m, v) is updated in place; slabs (args.Slabs) is the step's
    scratch (gslab[0] holds the whole batch's gradient after each step, but for the lazy
    update on several chunks, whose W_0 part holds the merged touched rows compactly: a
    Slabs serves one variant); ws (args.Workspace)
    the chunks' activations; net (args.Network) the sizes, offsets and codes; hyper
    (args.Hyper) the optimizer's settings; norms (S, L + 1) receives, per step, the L2 norm
    of each weight gradient and the global norm of the gradient (before clipping); given
    more columns it also receives step records: the step's sum of row losses (L + 1; the
    Trainer's loss before training is the first step's) and, given (S, L + 3), the sum of
    squares of the weights before the step's update (L + 2; the estimators report
    scikit-learn's loss from both). `step` counts optimizer steps taken before this epoch,
    `seed` seeds the dropout masks.
    Returns (sum of the rows' losses, correct predictions, step after the epoch, -1); when a
    step's loss is NaN or infinite it stops before that step's update and returns the
    step's index in the epoch last instead of -1 (divergence).
    """
    params = state.params
    gslab, chunk_loss, chunk_correct = slabs.gslab, slabs.chunk_loss, slabs.chunk_correct
    n = order.shape[0]
    n_chunks = gslab.shape[0]
    L = net.sizes.shape[0] - 1
    n_blocks = slabs.block_lo.shape[0]
    one = params.dtype.type(1)
    clip_norm = hyper.clip
    # Small models are reduced and updated by this thread alone: a second parallel region
    # per step would cost more than the work.
    n_groups = n_chunks if n_chunks > 1 and params.shape[0] >= PARALLEL_UPDATE_MIN else 1
    # With clipping, every block is reduced (pass 0) before any is updated (pass 1), as the
    # global norm must be known first; without, each block is reduced and updated at once.
    n_passes = 2 if clip_norm > 0.0 else 1
    records = norms.shape[1] > L + 1
    weight_records = norms.shape[1] > L + 2
    # CSR rows: W_0's gradient is gathered from the chunks' touched rows into gslab[0]
    # (zero elsewhere), so W_0's blocks are not summed over the chunks
    dense_from = net.b_off[0] if SPARSE else 0
    n_slices = n_chunks if SPARSE and n_chunks > 1 else 1
    # The lazy update reads W_0's gradient compactly, the i-th touched row's at
    # [i * H, (i + 1) * H): one chunk's touched rows as sparse_linear_backward left them, or
    # several chunks' merged into gslab[0] (merge_touched), never scattered to W_0's rows,
    # gathered back and zeroed again (the same values, a third of the traffic).
    H = net.sizes[1]
    if net.bf16:        # W_l's bf16 copies from the parameters as the epoch finds them
        for l in range(L):
            copy_layer(ws, params, net, l, 0, net.sizes[l] * net.sizes[l + 1])
    weight_sq = 0.0
    loss_total = 0.0
    correct_total = 0
    n_steps = (n + batch_size - 1) // batch_size
    for s in range(n_steps):
        lo = s * batch_size
        hi = min(lo + batch_size, n)
        inv_count = one / params.dtype.type(hi - lo)
        if rows.weights.shape[0] > 0:            # weighted mean: 1 / the batch's weight
            inv_count = batch_weight_inverse(rows.weights, order[lo:hi])
        per_chunk = (hi - lo + n_chunks - 1) // n_chunks
        for chunk in prange(n_chunks):              # each chunk: its rows, its own slab
            c = index(chunk)
            clo = min(lo + c * per_chunk, hi)
            chi = min(clo + per_chunk, hi)
            chunk_loss[c] = 0.0
            chunk_correct[c] = 0
            if chi > clo:
                ls, nc = forward_backward(params, gslab[c], ws, c, rows, order[clo:chi], net,
                                          seed, step + 1, inv_count)
                chunk_loss[c] = ls
                chunk_correct[c] = nc
            else:
                fill(gslab[c, dense_from:], 0.0)
        step_loss = 0.0
        for c in range(n_chunks):
            step_loss += chunk_loss[c]
            correct_total += chunk_correct[c]
        if not np.isfinite(step_loss):
            if LAZY:                # (nothing merged yet)
                for c in range(n_chunks):
                    touched_release(ws, c)
            elif SPARSE:
                release_all(gslab[0], ws, net)
            return loss_total, correct_total, step, s    # diverged: stop before the update
        loss_total += step_loss
        if SPARSE and not LAZY:     # threads own column ranges of W_0's gradient
            for t in prange(n_slices):
                gather_touched(gslab[0], ws, net, index(t), n_slices)
        if LAZY:                    # the step's touched rows of W_0 and their gradient
            if n_chunks == 1:
                n_lazy = ws.n_touched[0]
                touched, g_lazy = ws.touched[0], ws.touched_grad[0]
            else:
                n_lazy = touched_union(slabs.touched, ws)
                for t in prange(n_slices):
                    merge_touched(gslab[0], slabs.touched, n_lazy, ws, H, index(t), n_slices)
                touched, g_lazy = slabs.touched, gslab[0]
        if weight_records:
            weight_sq = weights_sum_of_squares(params, slabs, L)

        step += 1
        bc1, bc2 = bias_corrections(hyper, step)
        decay = step_decay(hyper, inv_count)
        clip = one
        for p in range(n_passes):
            reduce = p == 0
            update = p == n_passes - 1
            if p == 1:
                total_norm = record_norms(norms, s, slabs.block_sq, slabs.block_layer, L)
                coef = clip_norm / (total_norm + 1e-6)   # torch.nn.utils.clip_grad_norm_
                clip = params.dtype.type(coef if coef < 1.0 else 1.0)
            if n_groups > 1:
                for g in prange(n_groups):
                    update_group(state, slabs, ws, net, index(g), n_groups, hyper, bc1, bc2,
                                 clip, decay, reduce, update)
            else:
                for k in range(n_blocks):
                    block_pass(state, slabs, ws, net, k, hyper, bc1, bc2, clip, decay, reduce,
                               update)
            if LAZY:                # W_0's touched rows only (block 0 carries their norm)
                if reduce:
                    slabs.block_sq[0] = rows_sum_of_squares(g_lazy, n_lazy, H)
                if update:
                    n_lazy_chunks = n_chunks if n_lazy * H >= LAZY_PARALLEL_MIN else 1
                    for part in prange(n_lazy_chunks):
                        i = index(part)
                        update_rows(state, g_lazy, touched, n_lazy * i // n_lazy_chunks,
                                    n_lazy * (i + 1) // n_lazy_chunks, H, net.opt_code,
                                    hyper, bc1, bc2, clip, decay)
        if LAZY:
            union_release(touched, n_lazy, ws)
        elif SPARSE:                # gslab[0]'s W_0 back to zero, cheaply
            release_all(gslab[0], ws, net)
        if n_passes == 1:
            record_norms(norms, s, slabs.block_sq, slabs.block_layer, L)
        if records:
            norms[s, L + 1] = step_loss
        if weight_records:
            norms[s, L + 2] = weight_sq
    return loss_total, correct_total, step, -1


@jit
def index(i):
    """A prange index as int64. In a parallel body Numba types the index as uint64 (int64 in
    the serial one and in its own first typing of the body), so every function called with it
    would be compiled a second time for the parallel kernel (2.4 s of a cold start)."""
    return np.int64(i)


@jit
def batch_weight_inverse(row_weight, idx):
    """1 / (sum of the weights of the rows idx), 0 for a batch of zero weight (it then
    contributes no gradient). A negative sum (the estimators take negative weights, as
    scikit-learn's) gives a negative inverse: the batch's loss is sum(w l) / sum(w)."""
    total = row_weight.dtype.type(0)
    for i in range(idx.shape[0]):
        total += row_weight[idx[i]]
    return row_weight.dtype.type(1) / total if total != 0 else row_weight.dtype.type(0)


@jit
def fill(a, value):
    """a (n,) = value, as a plain loop (cheaper to compile than a slice assignment)."""
    x = a.dtype.type(value)
    for i in range(a.shape[0]):
        a[i] = x


@jit
def gather_touched(g0, ws, net, t, n_slices):
    """W_0's gradient in g0 (P,) (zero before) += every chunk's touched rows, in chunk
    order, columns of slice t of n_slices (threads own disjoint column ranges)."""
    n_out = net.sizes[1]
    dW = layer_weight(g0, net.w_off, net.sizes, 0)
    lo = t * n_out // n_slices
    hi = (t + 1) * n_out // n_slices
    for c in range(ws.n_touched.shape[0]):
        touched_scatter(dW, ws, c, lo, hi)


@jit
def release_all(g0, ws, net):
    """Zero the touched rows of W_0's gradient in g0 (P,) and release every chunk's touched
    rows: W_0's gradient is zero again without a pass over all of it."""
    n_out = net.sizes[1]
    dW = layer_weight(g0, net.w_off, net.sizes, 0)
    zero = g0.dtype.type(0)
    for c in range(ws.n_touched.shape[0]):
        for k in range(ws.n_touched[c]):
            d = dW[ws.touched[c, k]]
            for j in range(n_out):
                d[j] = zero
        touched_release(ws, c)


@jit
def touched_union(union, ws):
    """union[:n] <- the distinct rows of W_0 that any chunk touched: chunk 0's touched rows,
    then each further chunk's rows not seen before (chunk order, then first-touch order);
    returns n. Chunk 0's touched_slot becomes every union row's position in union (the
    caller undoes it with union_release)."""
    slot = ws.touched_slot[0]
    n = ws.n_touched[0]
    for k in range(n):
        union[k] = ws.touched[0, k]
    for c in range(1, ws.n_touched.shape[0]):
        for k in range(ws.n_touched[c]):
            j = ws.touched[c, k]
            if slot[j] < 0:
                slot[j] = n
                union[n] = j
                n += 1
    return n


@jit
def merge_touched(g, union, n, ws, H, t, n_slices):
    """g[i * H:(i + 1) * H] <- the gradient of union row i (touched_union) summed over the
    chunks in chunk order, for i < n, columns of slice t of n_slices (threads own disjoint
    column ranges): chunk 0's rows copied, the rest zeroed, then every further chunk's
    touched rows added at their union position."""
    lo = t * H // n_slices
    hi = (t + 1) * H // n_slices
    slot = ws.touched_slot[0]
    own = ws.n_touched[0]
    grad0 = ws.touched_grad[0]
    zero = g.dtype.type(0)
    for i in range(n):
        d = g[i * H + lo:i * H + hi]
        if i < own:
            s = grad0[i * H + lo:i * H + hi]
            for j in range(d.shape[0]):
                d[j] = s[j]
        else:
            for j in range(d.shape[0]):
                d[j] = zero
    for c in range(1, ws.n_touched.shape[0]):
        grad = ws.touched_grad[c]
        for k in range(ws.n_touched[c]):
            i = slot[ws.touched[c, k]]
            s = grad[k * H + lo:k * H + hi]
            d = g[i * H + lo:i * H + hi]
            for j in range(d.shape[0]):
                d[j] += s[j]


@jit
def union_release(union, n, ws):
    """Forget the step's touched rows: every chunk's, and the union positions that
    touched_union left in chunk 0's touched_slot (union[:n])."""
    slot = ws.touched_slot[0]
    for i in range(n):
        slot[union[i]] = -1
    ws.n_touched[0] = 0
    for c in range(1, ws.n_touched.shape[0]):
        touched_release(ws, c)


@jit
def rows_sum_of_squares(g, n, H):
    """Sum of squares (float64) of the lazy update's n touched gradient rows, the i-th at
    g[i * H:(i + 1) * H]."""
    acc = g.dtype.type(0)
    for i in range(n * H):
        acc += g[i] * g[i]
    return np.float64(acc)


@jit
def update_rows(state, g, touched, lo, hi, H, opt_code, hyper, bc1, bc2, clip, decay):
    """The optimizer on rows touched[lo:hi] of W_0 (offset 0 in the flat buffers) alone:
    the lazy update of sparse data; the i-th touched row's gradient at g[i * H:(i + 1) * H]."""
    params, m, v = state.params, state.m, state.v
    for i in range(lo, hi):
        start = touched[i] * H
        # views of one row each (m, v may be empty: an empty slice of them stays empty)
        update_segment(params[start:start + H], g[i * H:i * H + H], m[start:start + H],
                       v[start:start + H], 0, H, opt_code, hyper, bc1, bc2, True, clip, decay)


@jit
def update_group(state, slabs, ws, net, g, n_groups, hyper, bc1, bc2, clip, decay, reduce,
                 update):
    """block_pass over group g of n_groups: the blocks that start in [g P / n_groups,
    (g + 1) P / n_groups) of the P parameters, a contiguous run of blocks (one thread's
    share of the step's reduction and update)."""
    P = slabs.gslab.shape[1]
    for k in range(slabs.block_lo.shape[0]):
        if slabs.block_lo[k] * n_groups // P == g:
            block_pass(state, slabs, ws, net, k, hyper, bc1, bc2, clip, decay, reduce, update)


@jit
def block_pass(state, slabs, ws, net, k, hyper, bc1, bc2, clip, decay, reduce, update):
    """Block k of the flat buffers: sum the chunks' gradients into gslab[0] and record the
    block's sum of squares (reduce), then apply the optimizer to it (update) and, in a bf16
    model, write the updated weights into their bf16 copies (ws.packed). CSR rows:
    W_0's blocks are already summed (gather_touched); lazy: they are left to update_rows
    (their sums of squares 0 here), and gslab[0]'s W_0 holds merge_touched's compact rows."""
    lo = slabs.block_lo[k]
    hi = slabs.block_hi[k]
    L = net.sizes.shape[0] - 1
    layer = slabs.block_layer[k]
    if LAZY and layer == 0:
        if reduce:
            slabs.block_sq[k] = 0.0
        return
    if reduce:
        n_sum = 1 if SPARSE and layer == 0 else slabs.gslab.shape[0]
        slabs.block_sq[k] = reduce_block(slabs.gslab, lo, hi, n_sum)
    if update:
        update_segment(state.params, slabs.gslab[0], state.m, state.v, lo, hi, net.opt_code,
                       hyper, bc1, bc2, layer < L, clip, decay)
        if net.bf16 and layer < L:
            start = net.w_off[layer]
            copy_layer(ws, state.params, net, layer, lo - start, hi - start)


@jit
def copy_layer(ws, params, net, l, lo, hi):
    """W_l's rows that its flat elements lo:hi hold (whole pairs of rows, or up to its last
    row) into its bf16 copies (gemm.copy_call: bf16.copy_rows, compiled only where a bf16
    model trains), where the epoch keeps them (ws.pack_off)."""
    if l < ws.pack_off.shape[0]:
        start, N = net.w_off[l], net.sizes[l + 1]
        k0, k1 = lo // N, -(-hi // N)
        if ws.pack_off[l, 0] >= 0:
            gemm.copy_call(0, ws.packed, ws.pack_off[l, 0], params, start, k0, k1, N)
        if ws.pack_off[l, 1] >= 0:
            gemm.copy_call(1, ws.packed, ws.pack_off[l, 1], params, start, k0, k1, N)


@jit
def reduce_block(gslab, lo, hi, n_sum):
    """gslab[0, lo:hi] += gslab[c, lo:hi] for c = 1, 2, ..., n_sum - 1 in order; returns
    the block's sum of squares (float64)."""
    g0 = gslab[0, lo:hi]
    for c in range(1, n_sum):
        gc = gslab[c, lo:hi]
        for i in range(g0.shape[0]):
            g0[i] += gc[i]
    acc = gslab.dtype.type(0)
    for i in range(g0.shape[0]):
        acc += g0[i] * g0[i]
    return np.float64(acc)


@jit
def weights_sum_of_squares(params, slabs, L):
    """Sum of squares of every W_l (biases left out), block by block in a fixed order."""
    total = 0.0
    for k in range(slabs.block_lo.shape[0]):
        if slabs.block_layer[k] < L:
            P = params[slabs.block_lo[k]:slabs.block_hi[k]]
            acc = 0.0
            for i in range(P.shape[0]):
                acc += np.float64(P[i]) * np.float64(P[i])
            total += acc
    return total


@jit
def record_norms(norms, s, block_sq, block_layer, L):
    """norms[s, l] = L2 norm of W_l's gradient, norms[s, L] = global norm; summed over the
    blocks in a fixed order (reproducible). Returns the global norm."""
    for l in range(L + 1):
        norms[s, l] = 0.0
    total = 0.0
    for k in range(block_sq.shape[0]):
        total += block_sq[k]
        if block_layer[k] < L:
            norms[s, block_layer[k]] += block_sq[k]
    for l in range(L):
        norms[s, l] = np.sqrt(norms[s, l])
    norms[s, L] = np.sqrt(total)
    return norms[s, L]


def _loss_grad(params, gslab, acc, ws, rows, order, block_rows, net):
    """Mean loss over the rows `order` (N,) of `rows` as one batch (weighted by the row
    weights unless empty), and its gradient; net's dropout must be empty.

    Rows are processed block_rows at a time so the workspace ws (C chunks) stays small;
    chunk c accumulates its blocks' gradients into acc[c] (gslab (C, P) is per-block
    scratch), and acc[1:] is then added into acc[0] in a fixed order: acc[0] is the
    gradient of the mean loss. Returns (sum of the rows' losses, correct predictions).
    """
    n = order.shape[0]
    n_chunks = gslab.shape[0]
    n_params = params.shape[0]
    dense_from = net.b_off[0] if SPARSE else 0     # CSR rows: W_0 from the touched rows
    inv_count = params.dtype.type(1) / params.dtype.type(n)
    if rows.weights.shape[0] > 0:
        inv_count = batch_weight_inverse(rows.weights, order)
    per_chunk = (n + n_chunks - 1) // n_chunks
    chunk_loss = np.empty(n_chunks)
    chunk_correct = np.empty(n_chunks, dtype=np.int64)
    for chunk in prange(n_chunks):
        c = index(chunk)
        clo = min(c * per_chunk, n)
        chi = min(clo + per_chunk, n)
        fill(acc[c], 0.0)
        ls = 0.0
        nc = 0
        for blo in range(clo, chi, block_rows):
            bhi = min(blo + block_rows, chi)
            bl, bc = forward_backward(params, gslab[c], ws, c, rows, order[blo:bhi], net, 0,
                                      0, inv_count)
            ls += bl
            nc += bc
            for i in range(dense_from, n_params):
                acc[c, i] += gslab[c, i]
            if SPARSE:
                touched_scatter(layer_weight(acc[c], net.w_off, net.sizes, 0), ws, c, 0,
                                net.sizes[1])
                touched_release(ws, c)
        chunk_loss[c] = ls
        chunk_correct[c] = nc
    for c in range(1, n_chunks):
        for i in range(n_params):
            acc[0, i] += acc[c, i]
    loss_sum = 0.0
    n_correct = 0
    for c in range(n_chunks):
        loss_sum += chunk_loss[c]
        n_correct += chunk_correct[c]
    return loss_sum, n_correct


def _evaluate(params, ws, c, rows, lo, hi, block_rows, net):
    """(Sum of the losses, correct predictions) of the rows lo:hi of `rows`, forward only
    (no backward: evaluation compiles and runs half of _loss_grad's work), block_rows rows
    at a time from lo, in chunk c of the workspace ws; net's dropout must be empty. Serial
    and without the GIL: the engine runs the chunks of a data set on threads of its own
    (no parallel variant to compile), in _loss_grad's chunks and blocks (the same sums)."""
    index = np.arange(lo, hi)
    ls = 0.0
    nc = 0
    for blo in range(lo, hi, block_rows):
        bhi = min(blo + block_rows, hi)
        bl, bc = forward_loss(params, ws, c, rows, index[blo - lo:bhi - lo], net, 0, 0)
        ls += bl
        nc += bc
    return ls, nc


def _predict(params, ws, c, rows, out, lo, hi, block_rows, net):
    """out[lo:hi] (K columns) = output activation of the network for the rows lo:hi of
    `rows` (args.Rows: dense X (N, n_0) or CSR; labels and targets unused), block_rows rows
    at a time from lo, in chunk c of the workspace ws; net's dropout must be empty. Serial
    and without the GIL, as _evaluate."""
    X = rows.X
    index = np.arange(lo, hi)
    for blo in range(lo, hi, block_rows):
        bhi = min(blo + block_rows, hi)
        Z = forward(params, ws, c, rows, X[blo:bhi], layer_weight(params, net.w_off,
                    net.sizes, 0), index[blo - lo:bhi - lo], net, 0, 0)
        output_forward(out[blo:bhi], Z, net.loss_code)


def _compile(body, name, parallel, nogil=False):
    """njit a copy of `body` under its own name, so the serial and parallel variants have
    separate on-disk cache entries."""
    fn = types.FunctionType(body.__code__, body.__globals__, name, body.__defaults__,
                            body.__closure__)
    fn.__qualname__ = name
    fn.__doc__ = body.__doc__
    return cached(njit(parallel=parallel, nogil=nogil, fastmath=FASTMATH,
                       error_model="numpy")(fn))


train_epoch_serial = _compile(_train_epoch, "train_epoch_serial", False)
train_epoch_parallel = _compile(_train_epoch, "train_epoch_parallel", True)
loss_grad_serial = _compile(_loss_grad, "loss_grad_serial", False)
loss_grad_parallel = _compile(_loss_grad, "loss_grad_parallel", True)
evaluate = _compile(_evaluate, "evaluate", False, nogil=True)
predict = _compile(_predict, "predict", False, nogil=True)
