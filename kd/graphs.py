"""A training step replayed as one CUDA graph: the step's hundred-odd kernels launched by one call.

A packed step of small models on a GPU is bound by kernel launches, not arithmetic (about 2 ms
a step on an H100 for the reference grid's students, most of it Python and launch latency). A
CUDA graph (``torch.cuda.graphs``) records the kernels of one step once and replays them with
one launch. What a replay cannot do is read a new Python value: every input that changes from
step to step must be a tensor the step reads (its position, the epoch's batch order and random
keys), and every tensor it touches must stay alive at the same address (parameters, gradients,
optimiser state: all persistent here). The training loop builds its step that way on every
device, so the same step runs eagerly (CPU, a short last batch, the first steps) or replayed.

It follows torch's whole-network capture recipe: a few real steps first on a side stream (the
optimiser state and gradient buffers then exist, and the autograd engine has warmed up), then
capture, then replay. The warm-up steps are the training's own steps, not extra ones: results are
those of the eager loop, the same kernels on the same numbers (fused Adam's update does not depend
on ``capturable``), unless a kernel is itself nondeterministic. Memory: after capture one full
step's intermediates stay reserved for the graph, beside what eager steps (the short batch,
evaluation) cache: the peak is about one step's working set above an eager run's.

On by default on CUDA since a lent H200 ran ``tests/test_graphs.py`` there (graph against eager
with cuDNN's deterministic algorithms: the same accuracies, weights within 2e-5) and the reference
grid end to end in half the time; ``KDSWEEP_CUDA_GRAPHS=0`` steps eagerly.
``KDSWEEP_CUDA_GRAPHS=trace`` records the step on any device as an FX trace instead (``make_fx``:
every Python value fixed at recording, as in a captured graph) and replays that: slower, for
checking that a step is replay-safe where there is no GPU (the tests do).
"""
from __future__ import annotations

from collections.abc import Callable

import torch

from kd.config import CUDA_GRAPHS_ENV as ENV, cuda_graphs
from kd.errors import UserError, first_line

WARMUP = 3  # eager steps before capture, as in torch's recipe (DDP needs 11; nothing here does)
REPLAYS = {"count": 0}  # steps run by replaying a recording, in this process (tests read it)
FAILED_CAPTURES = {"count": 0}  # CUDA captures that failed in this process (its CUDA state is suspect)


def mode(device: torch.device) -> str | None:
    """How training on ``device`` replays its steps: "cuda" (a CUDA graph), "trace", or None (eagerly)."""
    asked = cuda_graphs()
    if asked == "trace":
        return "trace"
    return "cuda" if device.type == "cuda" and asked == "1" else None


class Step:
    """``step(b)`` runs one training step of ``b`` examples a member: ``fn(b)`` eagerly, or for
    full batches (``b == batch``) with a ``mode``, ``fn(batch)`` recorded after ``WARMUP`` eager
    steps (a CUDA graph, or an FX trace) and replayed from then on. ``fn`` must read what changes
    between steps from tensors only and keep every tensor it touches alive (see the module's
    docstring)."""

    def __init__(self, fn: Callable[[int], None], batch: int, mode: str | None):
        self.fn, self.batch, self.mode = fn, batch, mode
        self.replay: Callable[[], object] | None = None
        self.warm = 0

    def __call__(self, b: int) -> None:
        if self.mode is None or b != self.batch:
            self.fn(b)
        elif self.replay is not None:
            self.replay()
            REPLAYS["count"] += 1
        elif self.warm < WARMUP:
            _warm_up(self.fn, b) if self.mode == "cuda" else self.fn(b)
            self.warm += 1
        else:
            try:
                self.replay = self._record(b)
            except Exception as e:  # the same step ran eagerly just before: what failed is the recording
                raise UserError(f"the training step could not be recorded as a "
                                f"{'CUDA graph' if self.mode == 'cuda' else 'trace'} ({first_line(e, 120)}); "
                                f"{ENV}=0 steps eagerly: resume with it set") from e
            if self.mode == "cuda":  # recorded, not run: the replay runs this step
                self.replay()
                REPLAYS["count"] += 1

    def _record(self, b: int) -> Callable[[], object]:
        if self.mode == "cuda":
            return _capture(self.fn, b)
        from torch.fx.experimental.proxy_tensor import make_fx

        traced = make_fx(lambda: self.fn(b))()  # tracing runs the step once, on the real tensors
        return torch.no_grad()(traced)  # its backward pass is in the trace: ops alone, as a graph replays


def _warm_up(fn: Callable[[int], None], b: int) -> None:
    """A step on a side stream, as torch's recipe warms up before capturing."""
    side, main = torch.cuda.Stream(), torch.cuda.current_stream()
    side.wait_stream(main)
    with torch.cuda.stream(side):
        fn(b)
    main.wait_stream(side)


def _capture(fn: Callable[[int], None], b: int) -> Callable[[], None]:
    graph = torch.cuda.CUDAGraph()
    stream = torch.cuda.current_stream()
    in_step: list[BaseException] = []
    try:
        with torch.cuda.graph(graph):  # the checkpoint writer's thread touches only host memory
            try:
                fn(b)
            except BaseException as e:
                in_step.append(e)
                raise
    except BaseException as e:
        # Ending a capture that the step broke fails too, and torch.cuda.graph then leaves its
        # capture stream current: back to this one, and the step's own error, which says why.
        # CUDA's own generator stays in its capture state ("Offset increment outside graph
        # capture"): the process should train nothing more (sweep.worker replaces its worker).
        FAILED_CAPTURES["count"] += 1
        torch.cuda.set_stream(stream)
        raise (in_step[0] if in_step else e) from None
    return graph.replay  # the bound method keeps the graph (and its memory pool) alive
