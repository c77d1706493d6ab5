"""Layer sizes -> offsets into the flat buffers -> NumPy views.

params = [W_0 (n_0, n_1) C order, b_0 (n_1,), W_1, b_1, ...]; grads and every optimizer state
buffer share this layout. The per-chunk workspace of the kernels is laid out here too.
"""
import functools
import math

import numpy as np

from .kernels.gemm import TRANSPOSE_MAX

BLOCK = 16384  # elements per block of the flat buffers in reductions and updates
# The most memory the chunks' copies of W_0's rows may take (skips_zero_columns), as a
# share of the data's: 2 chunks of mnist's 784 x 256 float32 W_0 are 6% of 8,192 rows.
SKIP_COPIES_SHARE = 0.1


# ------------------------------------------------------------ where buffers start in a page
# A fresh process gets its large arrays from mmap: every one starts 16 bytes past a 4 KiB page
# boundary, so params, m, v and the gradient slabs of an update all map to the same sets of
# the L1 cache (its set is picked by bits 6-11 of an address), and Adam's five streams
# thrash them: mnist's Adam epoch took 0.24 s against 0.18 s with the buffers staggered
# (2-core Zen 4, 2026-11-27). The engine places each large buffer at its own offset in the
# page instead (the rows of a 2-D one fall where its row length puts them).
PAGE = 4096
LINE = 64
PARAMS_OFFSET, M_OFFSET, V_OFFSET = 0, 1024, 2048


def page_placed(shape, dtype, offset, zero=False):
    """An empty (or `zero`ed) C-contiguous array of `shape` whose data starts `offset`
    bytes (a multiple of LINE) past a page boundary: a view into a buffer one page
    larger."""
    dtype = np.dtype(dtype)
    shape = (shape,) if np.isscalar(shape) else tuple(shape)
    nbytes = math.prod(int(n) for n in shape) * dtype.itemsize
    raw = (np.zeros if zero else np.empty)(nbytes + PAGE, dtype=np.uint8)
    start = (offset - raw.ctypes.data) % PAGE
    return raw[start:start + nbytes].view(dtype).reshape(shape)


def free_offset(taken, rows, row_bytes):
    """The offset in the page (a multiple of LINE) for a 2-D buffer of `rows` rows of
    `row_bytes` each whose rows start farthest from the `taken` offsets (the least
    circular distance, largest; the lowest offset on a tie). Where its rows fall
    relative to each other is fixed by row_bytes."""
    return _free_offset(tuple(int(t) for t in taken), int(rows), int(row_bytes) % PAGE)


@functools.lru_cache(maxsize=256)
def _free_offset(taken, rows, row_bytes):
    # cached: the engine places the same shapes at the same offsets every call (a
    # loss-and-gradient call of lbfgs places three buffers; 25 us each uncached)
    bases = np.arange(0, PAGE, LINE)
    starts = (bases[:, None] + np.arange(rows) * (row_bytes % PAGE)) % PAGE
    if len(taken) == 0:
        return 0
    d = (starts[:, :, None] - np.asarray(taken)) % PAGE
    gap = np.minimum(d, PAGE - d).min(axis=(1, 2))
    return int(bases[np.argmax(gap)])


class Layout:
    """Offsets of every W_l and b_l in a flat buffer for layer sizes (n_0, ..., n_L)."""

    def __init__(self, sizes):
        self.sizes = np.asarray(sizes, dtype=np.int64)
        self.n_layers = len(sizes) - 1
        fan_in, fan_out = self.sizes[:-1], self.sizes[1:]
        seg = fan_in * fan_out + fan_out                 # W_l then b_l
        starts = np.concatenate(([0], np.cumsum(seg)[:-1])).astype(np.int64)
        self.w_off = starts
        self.b_off = (starts + fan_in * fan_out).astype(np.int64)
        self.n_params = int(seg.sum())

    def weights(self, flat):
        """Views W_l (n_l, n_{l+1}) into a flat buffer (writable when it is)."""
        return [flat[o:o + a * b].reshape(a, b)
                for o, a, b in zip(self.w_off, self.sizes[:-1], self.sizes[1:])]

    def biases(self, flat):
        """Views b_l (n_{l+1},) into a flat buffer."""
        return [flat[o:o + b] for o, b in zip(self.b_off, self.sizes[1:])]

    def blocks(self, block=BLOCK, row_pairs=False):
        """Cut the flat buffer into blocks of at most `block` elements that never straddle
        a W_l or b_l. Returns (lo, hi, layer) int64 arrays; layer is l for a block of W_l
        and L + l for a block of b_l. With row_pairs, a block of W_l holds whole pairs of
        its rows (its last row may be alone): `block` rounded up to them, so that the
        thread updating a block can write W's bf16 copy in pairs (kernels/bf16.py)."""
        lo, hi, layer = [], [], []
        L = self.n_layers
        for l in range(L):
            w_end = self.b_off[l]
            b_end = self.b_off[l] + self.sizes[l + 1]
            pair = 2 * int(self.sizes[l + 1])
            w_block = -(-block // pair) * pair if row_pairs else block
            for start, end, tag, size in ((self.w_off[l], w_end, l, w_block),
                                          (w_end, b_end, L + l, block)):
                for s in range(int(start), int(end), size):
                    lo.append(s)
                    hi.append(min(s + size, int(end)))
                    layer.append(tag)
        return (np.array(lo, dtype=np.int64), np.array(hi, dtype=np.int64),
                np.array(layer, dtype=np.int64))

    def update_blocks(self, threads, row_pairs=False):
        """blocks() for a step reduced and updated by `threads` threads, each taking the
        blocks that start in its 1/threads of the buffer (cpu.update_group): blocks of
        BLOCK elements, or for a small model of about a quarter of a thread's share, so
        that the threads' shares come out nearly equal (row_pairs: as blocks())."""
        if threads <= 1:
            return self.blocks(row_pairs=row_pairs)
        share = -(-self.n_params // (4 * threads))
        return self.blocks(min(BLOCK, max(256, share)), row_pairs)

    def skips_zero_columns(self, chunks, itemsize, data_bytes, sparse=False, backward=True):
        """Whether a training step's first layer leaves out the columns of dense X that are
        zero in all of a chunk's rows (ops.skip_zero_columns), which copies W_0's rows for
        them into each of `chunks` chunks' scratch: for dense rows, in a backward pass,
        where W_0 has at most TRANSPOSE_MAX elements (nt's transposed W may take as much),
        or its copies of `itemsize`-byte floats take at most SKIP_COPIES_SHARE of the
        data's `data_bytes` (a fit's memory stays within 1.2 x (data + 4 x params))."""
        if sparse or not backward:
            return False
        w0 = int(self.sizes[0]) * int(self.sizes[1])
        return w0 <= TRANSPOSE_MAX or chunks * w0 * itemsize <= SKIP_COPIES_SHARE * data_bytes

    def workspace(self, rows, sparse=False, backward=True, skip_zero_columns=False):
        """Offsets of A_0..A_L (a_off), Z_0..Z_{L-1} (z_off), two delta buffers and, for a
        `backward` pass, the scratch (d_off: the scratch last, as long as the largest W_l,
        l >= 1, that gemm.nt may transpose, and one row of it more; at least as long as
        W_0 where the first layer skips zero columns, skips_zero_columns) for `rows` rows
        in one chunk's workspace, and its total length. `sparse`: A_0 gets no room (the
        first layer reads CSR rows)."""
        sizes = [int(s) for s in self.sizes]
        if sparse:
            sizes[0] = 0
        widest = max(sizes[1:])
        pos = 0
        a_off, z_off = [], []
        for l, n in enumerate(sizes):
            a_off.append(pos)
            pos += rows * n
            if l < self.n_layers:
                z_off.append(pos)
                pos += rows * sizes[l + 1]
        d_off = [pos, pos + rows * widest, pos + 2 * rows * widest]
        pos += 2 * rows * widest
        if backward:
            scratch = max([(n_out + 1) * n_in for n_in, n_out in zip(sizes[1:-1], sizes[2:])
                           if n_in * n_out <= TRANSPOSE_MAX], default=0)
            if skip_zero_columns:
                scratch = max(scratch, sizes[0] * sizes[1])
            pos += scratch
        as_int = lambda x: np.array(x, dtype=np.int64)  # noqa: E731
        return as_int(a_off), as_int(z_off), as_int(d_off), pos
