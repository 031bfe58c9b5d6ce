"""N >= 1 models of one architecture as one: stacked weights and one forward pass over them.

The members' weights are stacked along a leading axis (as ``torch.func.stack_module_state``
does) and every tensor of a step carries that axis: inputs ``[N, B, ...]``, logits ``[N, B, K]``.
For plain MLPs (Flatten, Linear, ReLU and Dropout layers only; the reference student is one,
without dropout) the layers are batched matrix products (``torch.baddbmm``: N small products
become one, horizontal fusion as in HFTA, Wang et al., MLSys 2021), and their training step's
backward pass is written out (``Stack.backward``): each gradient is one batched product written
into the same buffer every step, in the parameter's own layout, where autograd allocated a new
transposed gradient and copied it (a quarter of a packed step on a CPU). Other models run one
functional call per member on views of the stacked weights (on CUDA, each on a stream of its
own), and autograd. Dropout draws its masks from ``kd.rng`` with a key per member and step, so a
member's masks do not depend on its pack. Adam is element-wise, so one Adam over the stacked
parameters is exactly one Adam per member.
"""
from __future__ import annotations

import copy
from collections.abc import Callable

import torch
from torch import nn
from torch.func import functional_call, stack_module_state

from kd import pool, rng
from kd.config import switch

Forward = Callable[[dict, dict, torch.Tensor], torch.Tensor]


class KeyedDropout(nn.Module):
    """Dropout whose mask comes from ``kd.rng`` under the key in its buffer (one per member, set
    by the training loop before every step)."""

    def __init__(self, p: float):
        super().__init__()
        self.p = p
        self.register_buffer("key", torch.zeros((), dtype=torch.int64), persistent=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.training or self.p == 0:
            return x
        mask, scale = dropout_mask(self.key, tuple(x.shape), self.p, x.dtype)
        return x * mask * scale


def dropout_mask(key: torch.Tensor, shape: tuple[int, ...], p: float, dtype: torch.dtype) -> tuple[torch.Tensor, float]:
    """Inverted dropout under ``key``: the kept positions (1 where the member's uniform is >= p,
    else 0) and the scale of what is kept, 1 / (1 - p)."""
    return rng.at_least(key, shape, p).to(dtype), 1.0 / (1.0 - p)


class Stack:
    """The stacked parameters and buffers of N members, their common (meta) module, and forward."""

    def __init__(self, nets: list[nn.Module]):
        base = copy.deepcopy(nets[0]).to("meta")
        self.dropout_keys: list[str] = []  # buffer names of the keyed dropout layers, in model order
        for name, module in list(base.named_modules()):
            for child_name, child in list(module.named_children()):
                if isinstance(child, nn.Dropout):
                    setattr(module, child_name, KeyedDropout(child.p))
                    self.dropout_keys.append(f"{name}.{child_name}.key".lstrip("."))
        self.base = base
        self.n = len(nets)
        dev = next(iter(nets[0].parameters())).device
        # on CUDA: ReLU and 2x2 max-pool in one kernel each way (kd.pool: torch's numbers), and
        # then the model's inputs channels-last (kd.pool.channels_last: cuDNN's NHWC kernels
        # without transposes; other algorithms, so not the same float rounding as NCHW inputs)
        self.fast_cnn = dev.type == "cuda" and switch("KDSWEEP_FUSED_CNN", True) and pool.fuse(base) > 0
        self.saved = set(nets[0].state_dict())  # what a member's state_dict holds (no non-persistent buffers)
        if self.n == 1:  # views of the model's own tensors: its memory format (channels-last) stays
            self.params = {k: p.detach().unsqueeze(0).requires_grad_() for k, p in nets[0].named_parameters()}
            self.buffers = {k: b.detach().unsqueeze(0) for k, b in nets[0].named_buffers()}
        else:
            self.params, self.buffers = stack_module_state(nets)
            self.params = {k: p.detach().requires_grad_() for k, p in self.params.items()}
        for k in self.dropout_keys:
            self.buffers[k] = torch.zeros(self.n, dtype=torch.int64, device=dev)
        self.mlp_layers = _mlp_layers(base)
        self.forward = (_stacked_mlp(self.mlp_layers) if self.mlp_layers else
                        _single(base, self.fast_cnn) if self.n == 1 else _looped(base, self.n, self.fast_cnn))

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        """Logits ``[N, B, K]`` for inputs ``[N, B, ...]`` (each member its own batch)."""
        return self.forward(self.params, self.buffers, x)

    def backward(self, x: torch.Tensor, losses_of: Callable[[torch.Tensor], torch.Tensor],
                 bf16: bool = False) -> torch.Tensor:
        """One training step's forward and backward pass: the members' losses ``[N]`` =
        ``losses_of(logits [N, B, K])``, and each trainable parameter's ``.grad`` set to the gradient
        of its member's loss (replacing the last step's: no zero_grad). ``bf16``: the forward pass
        under bfloat16 autocast, the losses in float32."""
        if self.mlp_layers and not bf16 and all(p.requires_grad for p in self.params.values()):
            return _mlp_backward(self.mlp_layers, self.params, self.buffers, x, losses_of)
        # no cast cache: each weight is cast once a step anyway, and a CUDA graph capture needs it off
        with torch.autocast(x.device.type, dtype=torch.bfloat16, enabled=bf16, cache_enabled=False):
            logits = self(x).float()
        losses = losses_of(logits)
        for p in self.params.values():
            p.grad = None
        losses.sum().backward()  # parameters are disjoint: each member gets its own loss's gradient
        return losses.detach()

    def train(self, mode: bool = True) -> None:
        self.base.train(mode)

    def set_dropout_keys(self, keys: list[torch.Tensor]) -> None:
        """One key tensor ``[N]`` per dropout layer, for the next step."""
        for name, k in zip(self.dropout_keys, keys):
            self.buffers[name] = k

    def _stacked_state(self) -> dict[str, torch.Tensor]:
        """The stacked tensors a member's ``state_dict`` holds: parameters and persistent buffers."""
        return {**self.params, **{k: v for k, v in self.buffers.items() if k in self.saved}}

    def host_states(self) -> Callable[[int], dict[str, torch.Tensor]]:
        """Member i's weights as ``state_of`` gives them, in host memory: each stacked tensor read
        from the device once (a pack of 120 reference students: 12 reads, not 1,440), then each
        member's own copies (a view would save the whole stack with it)."""
        host = {k: v.detach().cpu() for k, v in self._stacked_state().items()}
        return lambda i: {k: v[i].clone() for k, v in host.items()}

    def state_of(self, i: int) -> dict[str, torch.Tensor]:
        """Member i's weights as its own model's ``state_dict`` has them (persistent buffers only)."""
        return {k: v[i].detach().clone() for k, v in self._stacked_state().items()}


def _single(base: nn.Module, channels_last: bool = False) -> Forward:
    def forward(params: dict, buffers: dict, x: torch.Tensor) -> torch.Tensor:
        p = {k: v[0] for k, v in params.items()}
        b = {k: v[0] for k, v in buffers.items()}
        return functional_call(base, (p, b), (pool.channels_last(x[0]) if channels_last else x[0],)).unsqueeze(0)
    return forward


def _looped(base: nn.Module, n: int, channels_last: bool = False) -> Forward:
    """Other models: the members one after another, each a plain functional call on its own
    weights (views of the stacked ones). vmap batched them instead, which made a CNN's
    convolutions grouped ones: five reference CNNs took 1.8x their time alone on a CPU, 1.2x on an
    H200; this loop takes 0.75-0.89x their time alone on this project's CPU (five, mnist-5k),
    with the same results. On CUDA each member runs on a stream of its own, so that small models'
    kernels overlap; in a CUDA graph the streams become parallel branches (autograd runs each
    backward op on its forward op's stream, and syncs the caller's stream with them at its end).
    On an H100 five teachers took 0.75x their time alone, graph against eager the same
    (tests/test_graphs.py)."""
    streams: list[torch.cuda.Stream] = []

    def forward(params: dict, buffers: dict, x: torch.Tensor) -> torch.Tensor:
        weights = {k: v.unbind(0) for k, v in params.items()}  # one stack of gradients in the backward pass

        def member(i: int) -> torch.Tensor:
            return functional_call(base, ({k: v[i] for k, v in weights.items()},
                                          {k: v[i] for k, v in buffers.items()}),
                                   (pool.channels_last(x[i]) if channels_last else x[i],))
        if not x.is_cuda:
            return torch.stack([member(i) for i in range(n)])
        main = torch.cuda.current_stream(x.device)
        if not streams:
            streams.extend(torch.cuda.Stream(x.device) for _ in range(n))
        outs = []
        for i, stream in enumerate(streams):
            stream.wait_stream(main)
            with torch.cuda.stream(stream):
                outs.append(member(i))
        for stream in streams:
            main.wait_stream(stream)
        return torch.stack(outs)
    return forward


def _mlp_layers(base: nn.Module) -> list[nn.Module] | None:
    """A plain MLP's layers (Flatten, Linear, ReLU and dropout only, in a Sequential); None for other models."""
    layers = list(base) if isinstance(base, nn.Sequential) else []
    if not layers or not all(isinstance(m, (nn.Flatten, nn.Linear, nn.ReLU, KeyedDropout)) for m in layers):
        return None
    return layers


def _stacked_mlp(layers: list[nn.Module]) -> Forward:
    """For plain MLPs: the members' layers as batched products on the stacked weights. Same
    arithmetic as vmap's batching of the same model, with a fraction of its per-step Python work,
    which is what bounds a step of small models on a GPU."""
    return lambda params, buffers, x: _mlp_forward(layers, params, buffers, x)


def _mlp_forward(layers: list[nn.Module], params: dict, buffers: dict, x: torch.Tensor,
                 tape: list[tuple] | None = None) -> torch.Tensor:
    """A plain MLP stack's logits. With a ``tape``, also what its written-out backward pass needs
    (each Linear's input, each ReLU's output, each dropout mask). A Linear's output is rectified
    in place: nothing else holds it (autograd's product saves its inputs, not its output)."""
    h, fresh = x, False  # fresh: h is a Linear's output
    for i, m in enumerate(layers):
        if isinstance(m, nn.Flatten):
            if tape is not None:
                tape.append(("flatten", h.shape))
            h, fresh = h.flatten(2), False
        elif isinstance(m, nn.Linear):
            if tape is not None:
                tape.append(("linear", i, h))
            h, fresh = torch.baddbmm(params[f"{i}.bias"].unsqueeze(1), h, params[f"{i}.weight"].transpose(1, 2)), True
        elif isinstance(m, nn.ReLU):
            h, fresh = (h.relu_() if fresh else torch.relu(h)), False
            if tape is not None:
                tape.append(("relu", h))
        elif m.training and m.p:  # the same masks the member's KeyedDropout would draw alone
            mask, scale = dropout_mask(buffers[f"{i}.key"], tuple(h.shape[1:]), m.p, h.dtype)
            h, fresh = h * mask * scale, False
            if tape is not None:
                tape.append(("dropout", mask, scale))
    return h


@torch.no_grad()
def _mlp_backward(layers: list[nn.Module], params: dict, buffers: dict, x: torch.Tensor,
                  losses_of: Callable[[torch.Tensor], torch.Tensor]) -> torch.Tensor:
    """A plain MLP stack's training step with its backward pass written out: the forward pass
    keeps what the gradients need on a tape; autograd differentiates only the losses with respect
    to the logits; then, layer by layer back, dW = g^T a, db = sum over the batch of g, and
    g <- g W for the layer below (not below the first Linear, whose input is data), masked where
    the ReLU was 0 or dropout dropped. The same arithmetic as autograd's on the same forward pass,
    in another order of float rounding."""
    tape: list[tuple] = []
    logits = _mlp_forward(layers, params, buffers, x, tape).detach().requires_grad_()
    with torch.enable_grad():
        losses = losses_of(logits)
        losses.sum().backward()
    g = logits.grad
    first_linear = next(k for k, t in enumerate(tape) if t[0] == "linear")
    for k in range(len(tape) - 1, first_linear - 1, -1):
        kind = tape[k][0]
        if kind == "linear":
            _, i, a = tape[k]
            weight, bias = params[f"{i}.weight"], params[f"{i}.bias"]
            _into(weight, torch.bmm, g.transpose(1, 2), a)  # [N, out, in], the weight's own layout
            _into(bias, torch.sum, g, 1)
            if k > first_linear:
                g = torch.bmm(g, weight)
        elif kind == "relu":
            g = torch.ops.aten.threshold_backward.grad_input(g, tape[k][1], 0, grad_input=g)
        elif kind == "dropout":
            g = g * tape[k][1] * tape[k][2]
        else:
            g = g.reshape(tape[k][1])
    return losses.detach()


def _into(param: torch.Tensor, op: Callable, *args) -> None:
    """param.grad = op(*args), written into the last step's gradient buffer when there is one."""
    if param.grad is None:
        param.grad = op(*args)
    else:
        op(*args, out=param.grad)


def stack_optimizer(states: list[dict]) -> dict:
    """Per-member Adam state dicts (as a member alone saves them) -> one state for stacked parameters."""
    first = states[0]
    stacked = {}
    for k, s in first["state"].items():
        stacked[k] = {"step": s["step"].clone(),
                      **{name: torch.stack([st["state"][k][name] for st in states])
                         for name in s if name != "step"}}
    return {"state": stacked, "param_groups": copy.deepcopy(first["param_groups"])}


def unstack_optimizer(state: dict, n: int) -> list[dict]:
    """One stacked Adam state -> the state each member would have had when trained alone."""
    return [{"state": {k: {name: (v.clone() if name == "step" else v[i].clone()) for name, v in s.items()}
                       for k, s in state["state"].items()},
             "param_groups": copy.deepcopy(state["param_groups"])} for i in range(n)]
