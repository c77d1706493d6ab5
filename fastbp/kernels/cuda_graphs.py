"""CUDA graphs for target='cuda': a training step's launches captured once per fit and
replayed, so an epoch costs a few graph launches from Python instead of 2L + 4 launches a step.

cuda_runner.py builds one step's launches with no per-step host argument (the kernels read
their step's scalars from device tables through a step cursor), so the same launches are
valid for every step; `Steps` runs them m steps at a time, as replayed graphs or launch by
launch (the simulator, FASTBP_CUDA_GRAPHS=0, or after any capture or launch failure).
"""
import os
import warnings

from . import cuda_backend

# Training steps per captured CUDA graph: an epoch of S steps is S // GRAPH_STEPS launches of
# that graph and one of a graph of the remaining steps (each captured once per fit).
# Capturing costs about one plain step per captured step, once.
GRAPH_STEPS = 16
GRAPHS_ENV = "FASTBP_CUDA_GRAPHS"     # "0" (or off/false/no): plain launches only


def graphs_wanted():
    """Whether training may replay CUDA graphs: not under the simulator (it has none), nor
    with FASTBP_CUDA_GRAPHS=0 in the environment (read at every epoch)."""
    if cuda_backend.simulator_enabled():
        return False
    return os.environ.get(GRAPHS_ENV, "1").strip().lower() not in ("0", "off", "false", "no")


class Steps:
    """The launches of one training step for a fit, run `run(m)` steps at a time: as
    replayed CUDA graphs of up to GRAPH_STEPS steps (captured on first use, kept for the
    fit), or launch by launch. Graphs need a GPU (not the simulator), FASTBP_CUDA_GRAPHS
    not 0, and no earlier capture failure on this network; the first step of the fit runs
    launch by launch, so that every kernel is compiled and loaded before a capture. Any
    failure to capture or launch a graph is kept in net.graph_error and the steps run
    launch by launch from there on: the same kernels with the same arguments, so the
    results are the same bit for bit."""

    def __init__(self, net, key, launches, keep):
        self.net, self.key, self.launches = net, key, launches
        self.keep = keep           # the buffers the launches (and graphs) point into
        self.graphs = {}           # steps per graph -> graph
        self.warm = False

    def begin_epoch(self):
        self.counts = {"graph_steps": 0, "plain_steps": 0, "warmup_steps": 0,
                       "graph_launches": 0}

    def path(self):
        """'graph' when graphs ran every step but the fit's first, 'plain' when none ran,
        'graph+plain' when a graph failed and plain launches took over mid-epoch."""
        if self.counts["graph_steps"] == 0:
            return "plain"
        return "graph" if self.counts["plain_steps"] == 0 else "graph+plain"

    def run(self, m):
        """Enqueue the next m steps."""
        net = self.net
        use_graphs = net.graph_error is None and graphs_wanted()
        if m > 0 and use_graphs and not self.warm:
            self.plain(1)
            self.counts["plain_steps"] -= 1
            self.counts["warmup_steps"] += 1
            self.warm = True
            m -= 1
        if m > 0 and use_graphs:
            try:
                while m > 0:
                    size = min(m, GRAPH_STEPS)
                    graph = self.graphs.get(size)
                    if graph is None:
                        graph = self.graphs[size] = capture_graph(self.launches, size)
                    launch_graph(graph[0], net)
                    self.counts["graph_steps"] += size
                    self.counts["graph_launches"] += 1
                    m -= size
            except Exception as e:    # a capture or launch failure never stops training
                net.graph_error = f"{type(e).__name__}: {e}"
        self.plain(m)

    def plain(self, m):
        for _ in range(m):
            self.net._run(self.launches)
        self.counts["plain_steps"] += m


def capture_graph(launches, repeats):
    """(graph, its builder): a CUDA graph (cuda.core) of `repeats` times the `launches`
    ((kernel, grid, block, args) each), captured from numba-cuda's launches on a graph
    builder's stream. Nothing runs: the kernels' arguments, device pointers included, are
    recorded as they are. Raises whatever the capture raises."""
    builder = cuda_backend.graph_builder()
    builder.begin_building()
    try:
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message=cuda_backend.SMALL_GRID_WARNING)
            for _ in range(repeats):
                for kernel, grid, block, args in launches:
                    kernel[grid, block, builder](*args)
    except BaseException:
        try:
            builder.end_building()
        except Exception:
            pass
        raise
    builder.end_building()
    return builder.complete(), builder      # the builder kept with its graph


def launch_graph(graph, net):
    """Launch a captured graph on the stream numba-cuda launches kernels on when given
    none (the default stream), so that it is ordered with the plain launches and the copies
    (the step tables and chunks before it, the results after it) exactly as they are. Should
    the driver refuse the default stream for a graph, a stream of numba-cuda's own: those
    synchronise with the default stream (CU_STREAM_DEFAULT), which keeps the same order.
    `net.graph_stream` says which."""
    if net.graph_stream is None:
        try:
            graph.launch(cuda_backend.core_stream(0))
            net.graph_stream, net._graph_stream = "default", cuda_backend.core_stream(0)
            return
        except Exception as e:
            net._numba_stream = net.cuda.stream()
            net._graph_stream = cuda_backend.core_stream(net._numba_stream)
            net.graph_stream = f"a blocking stream (the default one refused: {e})"
    graph.launch(net._graph_stream)
