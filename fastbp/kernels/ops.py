"""Compiled building blocks of one training step, as mirrored forward/backward pairs.

Size legend (every function below uses it):
    B     rows in the (chunk of the) minibatch
    n_in  fan-in of a layer, n_out its fan-out (W has shape (n_in, n_out), C order)
    K     number of outputs of the network
    L     number of layers (weight matrices)
    P     number of parameters (length of the flat buffers)

All functions are serial and pure: they read and write only the arrays they are given.
The element-wise maths (activations, their derivatives, the loss terms) is scalar.py's,
shared with the GPU kernels; here it runs in loops over rows and units, one loop per code so
that each compiles to a branch-free, vectorisable body. Scalar constants are built with
``dtype.type(...)`` (scalar.constants) so a float32 run stays float32.
Arrays are copied with explicit loops: Numba's array-to-array slice assignment
(``A[:, :] = Z``) costs about 3 s of compile time the first time it appears.
Compiled with codes.jit (fast-math without nnan/ninf, error_model="numpy": see codes.py).
"""
import numpy as np

from . import gemm, scalar, vexp
from .codes import (BINARY_CROSS_ENTROPY, CROSS_ENTROPY, FASTMATH, GELU, GELU_C,  # noqa: F401
                    GELU_K, IDENTITY, LEAKY_RELU, LEAKY_SLOPE, MSE, POISSON, RELU, SIGMOID,
                    TANH, jit, jit_inline)
from .scalar import output_term

# Whether the rows are CSR (args.Rows): a compile-time constant, set per variant by
# variants.py, which compiles a dense and a CSR copy of these functions (the module's own
# are templates).
SPARSE = False


@jit
def matrix(buf, off, rows, cols):
    """View buf[off : off + rows*cols] as a (rows, cols) C-order matrix."""
    return buf[off:off + rows * cols].reshape((rows, cols))


@jit
def layer_weight(flat, w_off, sizes, l):
    """W_l (n_in, n_out) as a view of a flat buffer (params, grads or optimizer state)."""
    return matrix(flat, w_off[l], sizes[l], sizes[l + 1])


@jit
def layer_bias(flat, b_off, sizes, l):
    """b_l (n_out,) as a view of a flat buffer."""
    return flat[b_off[l]:b_off[l] + sizes[l + 1]]


# ---------------------------------------------------------- zero columns of dense X

# The first layer of a training step leaves out the columns of dense X that are zero in all
# of a chunk's rows (pixels that are blank in every image of the chunk, categories none of
# its rows has): they add nothing to its products, forward (Z_0 = A_0 W_0 + b_0) or backward
# (dW_0 = A_0^T dZ_0, whose rows for them are zero). A_0 is compacted to its nonzero
# columns, W_0's matching rows are gathered into the scratch, and the weight gradient's rows
# are spread back to their places. Each skipped term is an exact zero, so the sums are the
# same as without skipping (but for an infinite or NaN weight, whose 0 * inf is left out).
# digits' 64 pixels have 4-13 columns zero in a chunk of 100 rows (9 on average): its
# two products of 23 us each took 20 with 55 columns (Zen 4, float64).

# The moves of elements one skipped multiply-add must pay for (skip_pays). On digits'
# chunks a move cost about 2 multiply-adds at the core's FMA rate (the 9 columns saved
# 5.9 us of products, the whole step 4.3 us); 4 leaves room for caches slower than L1.
SKIP_MOVE_COST = 4


@jit
def nonzero_columns(cols, A):
    """cols[:n] <- the columns of A (B, n_0) with an entry that is not zero (NaN counts),
    ascending; returns n. Dense data without zero columns costs one row: the scan stops
    once every column has shown a nonzero (checked after the first row, then every 16)."""
    B, n_0 = A.shape
    zero = A.dtype.type(0)
    for j in range(n_0):
        cols[j] = 0
    for r in range(B):
        for j in range(n_0):
            cols[j] |= A[r, j] != zero
        if r % 16 == 0:
            unseen = 0
            for j in range(n_0):
                unseen += cols[j] == 0
            if unseen == 0:
                for j in range(n_0):
                    cols[j] = j
                return n_0
    n = 0
    for j in range(n_0):
        if cols[j] != 0:
            cols[n] = j
            n += 1
    return n


@jit
def skip_pays(B, n_0, n, n_1):
    """Whether leaving out n_0 - n zero columns of a chunk's B rows pays: the multiply-adds
    it saves (forward and weight gradient) against SKIP_MOVE_COST times the elements it
    moves (A_0's compaction, W_0's rows gathered, the gradient's rows spread back)."""
    return (n_0 - n) * B * n_1 * 2 >= SKIP_MOVE_COST * (B * n + n * n_1 + n_0 * n_1)


@jit
def compact_columns(flat, B, n_0, cols, n):
    """The (B, n_0) matrix at flat[:B n_0] -> its columns cols[:n] as a (B, n) matrix at
    flat[:B n], in place (no element moves to a later position than it reads from)."""
    for r in range(B):
        for k in range(n):
            flat[r * n + k] = flat[r * n_0 + cols[k]]


@jit
def copy_row(dst, src):
    """dst (n,) <- src (n,), as a plain loop (see the module docstring)."""
    for i in range(dst.shape[0]):
        dst[i] = src[i]


@jit
def gather_rows(out, W, cols):
    """out (n, n_1) <- the rows cols[:n] of W (n_0, n_1)."""
    for k in range(out.shape[0]):
        copy_row(out[k], W[cols[k]])


@jit
def spread_rows(G, cols, n):
    """G (n_0, n_1) holding the rows cols[:n] in its first n rows -> each at its place,
    the other rows zero: in place, from the last row back (a row moves to a later one)."""
    n_0 = G.shape[0]
    k = n - 1
    for back in range(n_0):
        j = n_0 - 1 - back
        dst = G[j]
        if k >= 0 and cols[k] == j:
            if k != j:
                copy_row(dst, G[k])
            k -= 1
        else:
            for i in range(dst.shape[0]):
                dst[i] = 0


@jit
def skip_zero_columns(ws, c, A0, W0):
    """The first layer's operands for chunk c's gathered dense rows A0 (B, n_0) (in its
    workspace at a_off[0]) and W0 (n_0, n_1): A0 compacted in place to its nonzero
    columns and their rows of W0 gathered into the scratch, where skip_pays, else A0 and
    W0 themselves. ws.touched[c][:n] keeps the columns, ws.n_touched[c] their count n
    (n_0: not compacted) for the backward pass (forward_backward)."""
    B, n_0 = A0.shape
    n_1 = W0.shape[1]
    cols = ws.touched[c]
    n = nonzero_columns(cols, A0)
    if n == n_0 or not skip_pays(B, n_0, n, n_1):
        ws.n_touched[c] = n_0
        return A0, W0
    work = ws.work[c]
    a0 = ws.a_off[0]
    compact_columns(work[a0:a0 + B * n_0], B, n_0, cols, n)
    W = matrix(work, ws.d_off[2], n, n_1)
    gather_rows(W, W0, cols)
    ws.n_touched[c] = n
    return matrix(work, a0, B, n), W


# --------------------------------------------------------------------------- linear

@jit
def linear_forward(Z, A, W, b, bf16, packed, copy_at):
    """Z (B, n_out) = A (B, n_in) @ W (n_in, n_out) + b (n_out,) (gemm.py: its own loops for a
    small product, BLAS for a large one; with bf16 (a bf16 model's training step) a large
    product from operands rounded to bfloat16, kernels/bf16.py: W's from the epoch's bf16
    copy of it at element copy_at of `packed` where it has one (copy_offset: only for
    products that gemm.bf16_product sends to bf16; else -1))."""
    if bf16 and copy_at >= 0:
        gemm.nn_bf16_copy(Z, A, packed, copy_at, b)
    elif bf16:
        gemm.nn_bf16(Z, A, W, b)
    else:
        gemm.nn(Z, A, W, b)


@jit
def linear_backward(dA, dW, db, dZ, A, W, need_dA, bf16, scratch, packed, copy_at):
    """dW (n_in, n_out) = A^T dZ; db (n_out,) = column sums of dZ (B, n_out);
    dA (B, n_in) = dZ W^T, skipped for the first layer (need_dA False), with `scratch`
    (1-D, the workspace's: gemm.nt transposes W into it where that pays). The products as
    linear_forward's (copy_at: the epoch's bf16 copy of W's rounded rows in `packed`, or
    -1)."""
    if bf16:
        gemm.tn_bf16(dW, A, dZ)
    else:
        gemm.tn(dW, A, dZ)
    B, n_out = dZ.shape
    db[:] = 0
    for r in range(B):
        for j in range(n_out):
            db[j] += dZ[r, j]
    if need_dA:
        if bf16 and copy_at >= 0:
            gemm.nt_bf16_copy(dA, dZ, packed, copy_at, scratch)
        elif bf16:
            gemm.nt_bf16(dA, dZ, W, scratch)
        else:
            gemm.nt(dA, dZ, W, scratch)


@jit
def copy_offset(ws, l, which, B):
    """Where W_l's bf16 copy `which` (0: nn's, 1: nt's) starts in ws.packed
    (args.Workspace) for a product over B rows: -1 where the epoch keeps none, or B is not
    the rows its copies are for (ws.pack_off[l, 2]: a smaller last batch's products then
    round and pack W themselves, or stay float32, as gemm.bf16_product decides)."""
    if l >= ws.pack_off.shape[0] or B != ws.pack_off[l, 2]:
        return -1
    return ws.pack_off[l, which]


@jit
def sparse_linear_forward(Z, rows, idx, W, b):
    """Z (B, n_out) = X[idx] @ W (n_in, n_out) + b (n_out,) for CSR rows (args.Rows): per
    row, b plus the rows of W of its stored entries times their values (X is never
    densified)."""
    B, n_out = Z.shape
    indptr, indices, values = rows.indptr, rows.indices, rows.values
    for r in range(B):
        row = idx[r]
        z = Z[r]
        for j in range(n_out):
            z[j] = b[j]
        for k in range(indptr[row], indptr[row + 1]):
            w = W[indices[k]]
            v = values[k]
            for j in range(n_out):
                z[j] += v * w[j]


@jit
def sparse_linear_backward(ws, c, db, dZ, rows, idx):
    """The first layer's gradient for CSR rows: db (n_out,) = column sums of dZ (B, n_out);
    dW = X[idx]^T dZ as sparse outer products, added into the rows of W_0 the rows touch,
    kept compact in chunk c's touched buffers of ws (args.Workspace: each touched row once,
    in first-touch order; added to the previous contents until the caller releases them).
    No input gradient."""
    B, n_out = dZ.shape
    indptr, indices, values = rows.indptr, rows.indices, rows.values
    slot, touched, grad = ws.touched_slot[c], ws.touched[c], ws.touched_grad[c]
    n = ws.n_touched[c]
    zero = dZ.dtype.type(0)
    for j in range(n_out):
        db[j] = zero
    for r in range(B):
        row = idx[r]
        d = dZ[r]
        for j in range(n_out):
            db[j] += d[j]
        for k in range(indptr[row], indptr[row + 1]):
            col = indices[k]
            s = slot[col]
            if s < 0:                         # first touch: a fresh zero gradient row
                s = n
                slot[col] = n
                touched[n] = col
                n += 1
                g = grad[s * n_out:(s + 1) * n_out]
                for j in range(n_out):
                    g[j] = zero
            g = grad[s * n_out:(s + 1) * n_out]
            v = values[k]
            for j in range(n_out):
                g[j] += v * d[j]
    ws.n_touched[c] = n


@jit
def touched_scatter(dW, ws, c, lo, hi):
    """dW (n_in, n_out) += chunk c's touched gradient rows (sparse_linear_backward),
    columns lo:hi only (threads own disjoint column ranges)."""
    n_out = dW.shape[1]
    grad = ws.touched_grad[c]
    for k in range(ws.n_touched[c]):
        g = grad[k * n_out + lo:k * n_out + hi]
        d = dW[ws.touched[c, k], lo:hi]
        for j in range(g.shape[0]):
            d[j] += g[j]


@jit
def touched_release(ws, c):
    """Forget chunk c's touched rows (before its next sparse_linear_backward)."""
    slot, touched = ws.touched_slot[c], ws.touched[c]
    for k in range(ws.n_touched[c]):
        slot[touched[k]] = -1
    ws.n_touched[c] = 0


# -------------------------------------------------------------------- activations

@jit
def activation_forward(A, Z, code):
    """A (B, n) = act(Z (B, n)) for a hidden layer (scalar.py's function of the code)."""
    B, n = Z.shape
    k = scalar.constants(Z)
    if code == RELU:
        for r in range(B):
            for j in range(n):
                A[r, j] = scalar.relu(Z[r, j], k)
    elif code == LEAKY_RELU:
        for r in range(B):
            for j in range(n):
                A[r, j] = scalar.leaky_relu(Z[r, j], k)
    elif code == TANH:
        for r in range(B):
            for j in range(n):
                A[r, j] = scalar.tanh(Z[r, j], k)
    elif code == SIGMOID:
        for r in range(B):
            for j in range(n):
                A[r, j] = scalar.sigmoid(Z[r, j], k)
    elif code == GELU:
        for r in range(B):
            for j in range(n):
                A[r, j] = scalar.gelu(Z[r, j], k)
    else:
        for r in range(B):
            for j in range(n):
                A[r, j] = Z[r, j]


@jit
def activation_backward(dA, Z, A, code, from_z):
    """In place: dA (B, n) <- dA * act'(Z) (scalar.py's derivative of the code), taken from
    A = act(Z) where it can be and from Z for all when `from_z` (dropout has rescaled A)."""
    B, n = dA.shape
    k = scalar.constants(Z)
    if code == RELU:
        for r in range(B):
            for j in range(n):
                dA[r, j] = scalar.relu_grad(dA[r, j], Z[r, j] if from_z else A[r, j], k)
    elif code == LEAKY_RELU:
        for r in range(B):
            for j in range(n):
                dA[r, j] = scalar.leaky_relu_grad(dA[r, j], Z[r, j], k)
    elif code == TANH:
        for r in range(B):
            for j in range(n):
                a = scalar.tanh(Z[r, j], k) if from_z else A[r, j]
                dA[r, j] = scalar.tanh_grad(dA[r, j], a, k)
    elif code == SIGMOID:
        for r in range(B):
            for j in range(n):
                a = scalar.sigmoid(Z[r, j], k) if from_z else A[r, j]
                dA[r, j] = scalar.sigmoid_grad(dA[r, j], a, k)
    elif code == GELU:
        for r in range(B):
            for j in range(n):
                dA[r, j] = scalar.gelu_grad(dA[r, j], Z[r, j], k)


# ---------------------------------------------------------------------- dropout

@jit
def keep_unit(seed, step, row, layer, unit, keep):
    """Whether unit `unit` of hidden layer `layer` is kept for data row `row` at optimizer
    step `step`: a SplitMix64 hash of those counters compared with the keep probability.
    Counter-based, so a mask depends on neither the chunking nor the thread count."""
    x = (np.uint64(seed) ^ (np.uint64(step) * np.uint64(0x9E3779B97F4A7C15))
         ^ (np.uint64(row) * np.uint64(0xC2B2AE3D27D4EB4F))
         ^ (np.uint64(layer * 65536 + unit) * np.uint64(0x165667B19E3779F9)))
    x = (x ^ (x >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
    x = (x ^ (x >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
    x = x ^ (x >> np.uint64(31))
    return np.float64(x >> np.uint64(11)) * (1.0 / 9007199254740992.0) < keep


@jit
def dropout_forward(A, idx, rate, seed, step, layer):
    """Inverted dropout, in place: A (B, n) <- A * mask / (1 - rate), mask ~ Bernoulli."""
    keep = 1.0 - rate
    scale = A.dtype.type(1.0 / keep)
    zero = A.dtype.type(0)
    B, n = A.shape
    for r in range(B):
        row = idx[r]
        for j in range(n):
            A[r, j] = A[r, j] * scale if keep_unit(seed, step, row, layer, j, keep) else zero


@jit
def dropout_backward(dA, idx, rate, seed, step, layer):
    """In place: dA (B, n) <- dA * mask / (1 - rate), the same mask as dropout_forward."""
    dropout_forward(dA, idx, rate, seed, step, layer)


# ------------------------------------------------------------ loss (fused output)

@jit
def row_max(Z, r):
    """(the max of row r of Z, its first index)."""
    mx = Z[r, 0]
    arg = 0
    for j in range(1, Z.shape[1]):
        if Z[r, j] > mx:
            mx = Z[r, j]
            arg = j
    return mx, arg


@jit
def row_sum(P, r):
    """The sum of row r of P, in column order."""
    s = P.dtype.type(0)
    for j in range(P.shape[1]):
        s += P[r, j]
    return s


@jit
def shifted_exp(P, Z):
    """P (B, K) <- exp(Z - each row's max): softmax before its division by the row sums.
    The exps run in one pass over the whole block (vexp: vector code; a row of 10 logits
    alone would leave most of each row to scalar code)."""
    B, K = Z.shape
    for r in range(B):
        mx, _ = row_max(Z, r)
        for j in range(K):
            P[r, j] = Z[r, j] - mx
    vexp.exp_inplace(P.reshape(B * K))


@jit
def output_forward(P, Z, loss_code):
    """P (B, K) = output activation of the logits Z (B, K): softmax (cross_entropy),
    sigmoid (binary_cross_entropy), identity (mse) or exp (poisson)."""
    B, K = Z.shape
    k = scalar.constants(Z)
    if loss_code == CROSS_ENTROPY:
        shifted_exp(P, Z)
        for r in range(B):
            inv = k[scalar.ONE] / row_sum(P, r)
            for j in range(K):
                P[r, j] *= inv
    else:
        for r in range(B):
            for j in range(K):
                P[r, j] = output_term(Z[r, j], k[scalar.ZERO], loss_code, k)[0]


@jit
def loss_forward(P, Z, idx, labels, targets, row_weight, loss_code):
    """The output activation fused with the loss, one exp per logit.
    P (B, K) <- output_forward(Z) for the logits Z (B, K) of the rows idx (B,) of X;
    returns (loss_sum, n_correct): the sum over rows of each row's loss (mean over outputs
    for binary_cross_entropy, mse and poisson) times the row's weight (row_weight (n,), or
    1 when it is empty), and the correct argmax rows (cross_entropy) or correct 0/1 outputs
    (binary_cross_entropy). labels (n,) int64 are class indices (cross_entropy); targets
    (n, K) the others (scalar.output_term)."""
    B, K = Z.shape
    k = scalar.constants(Z)
    zero, one = k[scalar.ZERO], k[scalar.ONE]
    inv_K = one / Z.dtype.type(K)
    weighted = row_weight.shape[0] > 0
    total = zero
    correct = 0
    if loss_code == CROSS_ENTROPY:
        shifted_exp(P, Z)
    for r in range(B):
        row = zero
        if loss_code == CROSS_ENTROPY:
            y = labels[idx[r]]
            mx, arg = row_max(Z, r)       # again (shifted_exp's): P holds the exps now
            s = row_sum(P, r)
            inv = one / s
            for j in range(K):
                P[r, j] *= inv
            row = mx + np.log(s) - Z[r, y]      # log-sum-exp minus the true logit
            if arg == y:
                correct += 1
        else:
            for j in range(K):
                p, term, right = output_term(Z[r, j], targets[idx[r], j], loss_code, k)
                P[r, j] = p
                row += term
                correct += right
            row *= inv_K
        total += row * row_weight[idx[r]] if weighted else row
    return total, correct


@jit
def loss_backward(dZ, P, idx, labels, targets, row_weight, loss_code, inv_count):
    """dZ (B, K) = d(loss_sum * inv_count)/dZ: the canonical-link delta P - Y, times the
    row's weight, inv_count (1 / rows, or total weight, of the whole batch) and
    scalar.output_scale's 1/K (binary_cross_entropy, poisson) or 2/K (mse)."""
    B, K = P.shape
    weighted = row_weight.shape[0] > 0
    if loss_code == CROSS_ENTROPY:
        for r in range(B):
            scale = inv_count * row_weight[idx[r]] if weighted else inv_count
            for j in range(K):
                dZ[r, j] = P[r, j] * scale
            dZ[r, labels[idx[r]]] -= scale
    else:
        per_output = scalar.output_scale(loss_code, P.dtype.type(K), inv_count,
                                         scalar.constants(P))
        for r in range(B):
            scale = per_output * row_weight[idx[r]] if weighted else per_output
            for j in range(K):
                dZ[r, j] = (P[r, j] - targets[idx[r], j]) * scale


# ------------------------------------------------------------- the whole network

@jit
def forward(params, ws, c, rows, A0, W0, idx, net, seed, step):
    """The rows idx (B,) of `rows` (args.Rows) -> chunk c's workspace (ws.work[c], offsets in
    ws) holds Z_l (B, n_{l+1}) for every layer l and A_{l+1} = act(Z_l) for the hidden
    ones, with dropout at rate net.dropout[l] (training; empty for none) at optimizer step
    `step`. The first layer reads A0 (B, n_0) times W0 (n_0, n_1), those rows of dense X
    and W_0 (or their nonzero columns and its matching rows, skip_zero_columns), or the CSR
    rows themselves (A0 is then (B, 0)). Returns the logits Z_{L-1} (B, K); the output
    activation is left to output_forward (predict) or loss_forward (training), which fuses
    it with the loss."""
    B = idx.shape[0]
    work = ws.work[c]
    sizes, w_off, b_off, dropout = net.sizes, net.w_off, net.b_off, net.dropout
    L = sizes.shape[0] - 1
    A = A0
    Z = matrix(work, ws.z_off[0], B, sizes[1])
    for l in range(L):
        Z = matrix(work, ws.z_off[l], B, sizes[l + 1])
        W = W0 if l == 0 else layer_weight(params, w_off, sizes, l)
        b = layer_bias(params, b_off, sizes, l)
        if SPARSE and l == 0:
            sparse_linear_forward(Z, rows, idx, W, b)
        else:
            copy_at = copy_offset(ws, l, 0, B)
            if A.shape[1] < sizes[l]:       # W_0's rows of the columns kept (skip_zero_columns)
                copy_at = -1
            linear_forward(Z, A, W, b, net.bf16, ws.packed, copy_at)
        if l < L - 1:
            A = matrix(work, ws.a_off[l + 1], B, sizes[l + 1])
            activation_forward(A, Z, net.act[l])
            if dropout.shape[0] > 0 and dropout[l] > 0.0:
                dropout_forward(A, idx, dropout[l], seed, step, l)
    return Z


@jit_inline          # inlined (Numba IR): a call level of its own made a first fit 1.5 s longer
def forward_loss(params, ws, c, rows, idx, net, seed, step):
    """Forward and fused loss over the rows idx (B,) of `rows` (args.Rows), in chunk c's
    workspace (ws.work[c], offsets in ws): the dense rows gathered into A_0 (ws.a_off[0]),
    every layer as in forward, the output activation at ws.a_off[L]. Returns (weighted
    loss_sum, n_correct) of those rows (loss_forward)."""
    B = idx.shape[0]
    work = ws.work[c]
    sizes = net.sizes
    L = sizes.shape[0] - 1
    n_0 = 0 if SPARSE else sizes[0]
    A0 = matrix(work, ws.a_off[0], B, n_0)
    X = rows.X
    for r in range(B):                       # gather the (shuffled) dense rows once
        row = idx[r]
        for j in range(n_0):
            A0[r, j] = X[row, j]
    W0 = layer_weight(params, net.w_off, sizes, 0)
    if not SPARSE and ws.touched.shape[1] > 0:
        A0, W0 = skip_zero_columns(ws, c, A0, W0)
    Z = forward(params, ws, c, rows, A0, W0, idx, net, seed, step)
    P = matrix(work, ws.a_off[L], B, sizes[L])
    return loss_forward(P, Z, idx, rows.labels, rows.targets, rows.weights, net.loss_code)


@jit
def forward_backward(params, grads, ws, c, rows, idx, net, seed, step, inv_count):
    """forward_loss, then backward over the same rows: grads (P,) <- gradient of (sum of
    the rows' weighted losses) * inv_count; for CSR rows, W_0's gradient goes to chunk c's
    touched rows instead (sparse_linear_backward) and grads' W_0 is left as it was.
    Dropout as in forward (the gradient kernel, cpu._loss_grad, passes a net without it).
    Returns (weighted loss_sum, n_correct) of those rows."""
    loss_sum, n_correct = forward_loss(params, ws, c, rows, idx, net, seed, step)
    B = idx.shape[0]
    work = ws.work[c]
    sizes, w_off, b_off, dropout = net.sizes, net.w_off, net.b_off, net.dropout
    a_off, z_off, d_off = ws.a_off, ws.z_off, ws.d_off
    L = sizes.shape[0] - 1
    n_0 = 0 if SPARSE else sizes[0]
    n_cols = n_0                             # A_0's columns (skip_zero_columns)
    if not SPARSE and ws.touched.shape[1] > 0:
        n_cols = ws.n_touched[c]
    A0 = matrix(work, a_off[0], B, n_cols)
    scratch = work[d_off[2]:]                # nt's transposed W (layout.workspace)
    P = matrix(work, a_off[L], B, sizes[L])
    dZ = matrix(work, d_off[0], B, sizes[L])
    loss_backward(dZ, P, idx, rows.labels, rows.targets, rows.weights, net.loss_code,
                  inv_count)
    for l in range(L - 1, 0, -1):            # the chain rule, output to input
        A = matrix(work, a_off[l], B, sizes[l])
        dA = matrix(work, d_off[(L - l) % 2], B, sizes[l])   # ping-pong delta buffers
        linear_backward(dA, layer_weight(grads, w_off, sizes, l),
                        layer_bias(grads, b_off, sizes, l), dZ, A,
                        layer_weight(params, w_off, sizes, l), True, net.bf16, scratch,
                        ws.packed, copy_offset(ws, l, 1, B))
        dropped = dropout.shape[0] > 0 and dropout[l - 1] > 0.0
        if dropped:
            dropout_backward(dA, idx, dropout[l - 1], seed, step, l - 1)
        activation_backward(dA, matrix(work, z_off[l - 1], B, sizes[l]), A, net.act[l - 1],
                            dropped)
        dZ = dA
    db = layer_bias(grads, b_off, sizes, 0)  # the first layer: no input gradient
    if SPARSE:
        sparse_linear_backward(ws, c, db, dZ, rows, idx)
    else:                                    # the rows of dW_0 for A_0's columns
        W = layer_weight(params, w_off, sizes, 0)
        linear_backward(dZ, matrix(grads, w_off[0], n_cols, sizes[1]), db, dZ, A0, W, False,
                        net.bf16, scratch, ws.packed, -1)
        if n_cols < n_0:
            spread_rows(layer_weight(grads, w_off, sizes, 0), ws.touched[c], n_cols)
    return loss_sum, n_correct
