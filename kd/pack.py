"""Packed training: students that share dataset, teacher, architecture and optimiser settings,
trained together in one process as one batched model.

The students' weights are stacked along a leading axis (torch.func.stack_module_state) and
run with one vmapped functional call, so N small matrix products become one batched product
(horizontal fusion, as in HFTA, Wang et al., MLSys 2021). Each student keeps its own alpha,
temperature and optimizer state: Adam is element-wise, so one Adam over the stacked
parameters is exactly one Adam per student. Each student still gets its own folder,
checkpoint and ``result.json``, in the same format as ``kd.train.run`` writes, so a packed
student's checkpoint resumes alone and the other way round. Packing changes speed, not results.
"""
from __future__ import annotations

import copy
import json
import logging
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn
from torch.func import functional_call, stack_module_state, vmap

from kd import data as kd_data, models, teacher as kd_teacher, train
from kd.config import NOT_PACKABLE, PACK_SHARED, TrainConfig, packable
from kd.errors import UserError
from kd.losses import packed_kd_loss

log = logging.getLogger(__name__)


def run(configs: list[TrainConfig], out_dirs: list[Path | str], *, data_root: Path | None = None,
        device: str | None = None, dataset: kd_data.Dataset | None = None,
        stop: Callable[[], bool] | None = None) -> list[dict[str, Any] | None]:
    """Train the students of ``configs`` together, each into its own folder; returns their results."""
    outs = [Path(o) for o in out_dirs]
    if not configs or len(configs) != len(outs):
        raise ValueError("pack.run needs one output folder per config")
    for c in configs:
        if not packable(c.to_dict()):
            raise UserError(f"a pack holds kd and scratch students without {', '.join(NOT_PACKABLE)}; "
                            f"not this {c.method} job")
        differ = [k for k in PACK_SHARED if getattr(c, k) != getattr(configs[0], k)]
        if len({c.teacher for c in configs} - {None}) > 1:  # students without a teacher may join
            differ.append("teacher")
        if differ:
            raise UserError(f"students in one pack must share {', '.join(differ)}")
    results: dict[Path, dict | None] = {o: json.loads((o / train.RESULT).read_text())
                                        for o in outs if (o / train.RESULT).exists()}
    todo = [(c, o) for c, o in zip(configs, outs) if o not in results]
    seen_by_teacher = kd_teacher.FORWARD_IMAGES["count"]
    if todo:
        dev = train.pick_device(device)
        teacher = next((c.teacher for c, _ in todo if c.teacher), None)
        teacher_file = kd_teacher.model_file(teacher) if teacher else None
        data = dataset or kd_data.load(todo[0][0].dataset, data_root)
        teacher_logits = kd_teacher.cached_logits(teacher_file, data, dev).to(dev) if teacher_file else None
        # members resumed from different epochs train in separate groups
        groups: dict[int, list] = {}
        for c, o in todo:
            state = train.load_checkpoint(o / train.CHECKPOINT, dev)
            groups.setdefault(state["epoch"] if state else 0, []).append((c, o, state))
        for members in groups.values():
            for (_, o, _), r in zip(members, _train(members, data, teacher_logits, dev, stop, seen_by_teacher)):
                results[o] = r
    return [results[o] for o in outs]


def _train(members: list[tuple[TrainConfig, Path, dict | None]], data: kd_data.Dataset,
           teacher_logits: torch.Tensor | None, dev: torch.device, stop: Callable[[], bool] | None,
           seen_by_teacher: int) -> list[dict[str, Any] | None]:
    """Train members (config, folder, checkpoint or None; all at the same epoch) as one pack."""
    cfg0 = members[0][0]
    n = len(members)
    nets, histories, opt_states = [], [], []
    for c, o, state in members:
        torch.manual_seed(c.seed)  # the same initialisation the student gets when trained alone
        nets.append(models.build(c.model, data.num_classes, data.input_shape, c.pretrained).to(dev))
        histories.append(state["history"] if state else [])
        if state is not None:
            nets[-1].load_state_dict(state["model"])
            opt_states.append(state["optimizer"])
    members = [(c, o) for c, o, _ in members]
    start = len(histories[0])
    if start:
        log.info("resuming a pack of %d from epoch %d", n, start)
    params, buffers = stack_module_state(nets)
    names = list(params)
    optimizer = train.adam(params.values(), cfg0.lr)
    if start:
        optimizer.load_state_dict(_stack_optimizer(opt_states))
    base = copy.deepcopy(nets[0]).to("meta")
    forward = _stacked_mlp(base) or vmap(lambda p, b, x: functional_call(base, (p, b), (x,)),
                                         in_dims=(0, 0, None), randomness="different")
    alpha = torch.tensor([c.alpha or 0.0 for c, _ in members], device=dev)  # scratch: alpha 0
    temperature = torch.tensor([c.temperature or 1.0 for c, _ in members], device=dev)
    use_teacher = teacher_logits if any(c.teacher for c, _ in members) else None

    train_x, train_y = data.train_x.to(dev), data.train_y.to(dev)
    test_x, test_y = data.test_x.to(dev), data.test_y.to(dev)
    log.info("training a pack of %d students on %s", n, dev)
    for epoch in range(start, cfg0.epochs):
        t0 = time.perf_counter()
        base.train()  # the stacked call runs base's modules: their mode is the students' mode
        loss_sum, seen = torch.zeros(n, device=dev), 0
        for idx in train.epoch_batches(cfg0, epoch, len(train_y), dev):
            logits = forward(params, buffers, kd_data.to_float(train_x[idx]))
            losses = packed_kd_loss(logits, use_teacher[idx] if use_teacher is not None else None,
                                    train_y[idx], alpha, temperature)
            optimizer.zero_grad(set_to_none=True)
            losses.sum().backward()  # parameters are disjoint: each student gets its own loss's gradient
            optimizer.step()
            loss_sum += losses.detach() * len(idx)
            seen += len(idx)
        base.eval()
        test_loss, test_acc = _evaluate(forward, params, buffers, test_x, test_y)
        seconds = time.perf_counter() - t0
        opt_states = _unstack_optimizer(optimizer.state_dict(), n)
        for i, (c, o) in enumerate(members):
            histories[i].append(train.epoch_record(epoch, c, (loss_sum[i] / max(seen, 1)).item(), test_loss[i],
                                                   test_acc[i], seconds))
            model_state = {k: params[k][i].detach().clone() for k in names}
            model_state.update({k: v[i].clone() for k, v in buffers.items()})
            train.save_checkpoint(o / train.CHECKPOINT, model_state, opt_states[i], histories[i], c)
        if stop is not None and epoch + 1 < cfg0.epochs and stop():
            return [None] * n
    results = []
    for i, (c, o) in enumerate(members):
        nets[i].load_state_dict({**{k: params[k][i].detach() for k in names},
                                 **{k: v[i] for k, v in buffers.items()}})
        results.append(train.finish(c, o, nets[i], histories[i], data, dev, pack_size=n,
                                    teacher_forward_images=kd_teacher.FORWARD_IMAGES["count"] - seen_by_teacher))
    return results


def _stacked_mlp(base: nn.Module):
    """For plain MLPs (Flatten, Linear, ReLU, Dropout, as the reference student is): the students'
    layers as batched products (torch.baddbmm) on the stacked weights. Same arithmetic as vmap's
    batching of the same model, with a fraction of its per-step Python work, which is what bounds
    a step of small students on a GPU. None for other models: they use vmap."""
    layers = list(base) if isinstance(base, nn.Sequential) else []
    if not layers or not all(isinstance(m, (nn.Flatten, nn.Linear, nn.ReLU, nn.Dropout)) for m in layers):
        return None

    def forward(params: dict, buffers: dict, x: torch.Tensor) -> torch.Tensor:
        n = params[next(iter(params))].shape[0]
        h = x.unsqueeze(0).expand(n, *x.shape)  # every student sees the same batch: a view, no copy
        for i, m in enumerate(layers):
            if isinstance(m, nn.Flatten):
                h = h.flatten(2)
            elif isinstance(m, nn.Linear):
                h = torch.baddbmm(params[f"{i}.bias"].unsqueeze(1), h, params[f"{i}.weight"].transpose(1, 2))
            elif isinstance(m, nn.ReLU):
                h = torch.relu(h)
            else:  # dropout: independent masks per student, as each would draw alone
                h = F.dropout(h, m.p, training=m.training)
        return h

    return forward


@torch.no_grad()
def _evaluate(forward, params, buffers, x: torch.Tensor, y: torch.Tensor, batch_size: int = 1000):
    logits = torch.cat([forward(params, buffers, kd_data.to_float(x[i:i + batch_size]))
                        for i in range(0, len(x), batch_size)], dim=1)  # [N, n_test, C]
    loss = -torch.log_softmax(logits, -1).gather(-1, y.expand(len(logits), -1).unsqueeze(-1)).squeeze(-1).mean(1)
    correct = (logits.argmax(-1) == y).sum(1)
    return loss.tolist(), [c / len(y) for c in correct.tolist()]


def _stack_optimizer(states: list[dict]) -> dict:
    """Per-student Adam state dicts (as solo training saves them) -> one state for stacked parameters."""
    first = states[0]
    stacked = {}
    for k, s in first["state"].items():
        stacked[k] = {"step": s["step"].clone(),
                      **{name: torch.stack([st["state"][k][name] for st in states])
                         for name in s if name != "step"}}
    return {"state": stacked, "param_groups": copy.deepcopy(first["param_groups"])}


def _unstack_optimizer(state: dict, n: int) -> list[dict]:
    """One stacked Adam state -> the state each student would have had when trained alone."""
    return [{"state": {k: {name: (v.clone() if name == "step" else v[i].clone()) for name, v in s.items()}
                       for k, s in state["state"].items()},
             "param_groups": copy.deepcopy(state["param_groups"])} for i in range(n)]
