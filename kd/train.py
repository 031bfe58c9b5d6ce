"""The training loop: one model (a teacher, a student from scratch, a distilled student) or a pack
of N students trained together; a job alone is a pack of one, the same code.

``run(config, out_dir)`` and ``run_pack(configs, out_dirs)`` are called the same way by a test, a
notebook, a local worker and a SLURM task. Each member's folder holds ``checkpoint.pt`` (after
every epoch, every ``checkpoint_every`` seconds, and when asked to stop), ``model.pt`` (final
weights) and ``result.json`` (written last: the job is done). Started again on the same folder,
a job resumes from its checkpoint, mid-epoch included, and ends as if never interrupted.

Each member has its own seed (initial weights), batch order (a permutation seeded by its seed and
the epoch), random numbers (``kd.rng``: keyed by its seed, epoch and step), alpha, temperature and
teacher: its result does not depend on the pack it trains in, by construction (up to float
rounding of batched arithmetic).
"""
from __future__ import annotations

import copy
import functools
import logging
import math
import platform
import threading
import time
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from collections.abc import Callable, Collection
from pathlib import Path
from typing import Any

import torch

from kd import atomic, data as kd_data, graphs, metrics as kd_metrics, models, phases, provenance, results, rng, sealed
from kd import teacher as kd_teacher
from kd.config import NOT_PACKABLE, PACK_SHARED, PACKED_METHODS, TEACHER_METHODS, TrainConfig, cuda_graphs, packable, switch
from kd.errors import Diverged, UserError, first_line
from kd.losses import class_logits, cross_entropy, kd_loss, subclass_teacher_loss
from kd.stack import Stack, stack_optimizer, unstack_optimizer

log = logging.getLogger(__name__)
RESULT, CHECKPOINT, MODEL = results.RESULT, results.CHECKPOINT, kd_teacher.MODEL
ORDER_STRIDE = 1_000_003  # a prime: seed * ORDER_STRIDE + epoch seeds an epoch's batch order, distinct per (seed, epoch)
AUGMENT_STREAM = 1000  # kd.rng streams 1000.. are the augmentation's; 0.. the dropout layers'


def run(config: TrainConfig, out_dir: Path | str, **kwargs: Any) -> dict[str, Any] | None:
    """Train one job into ``out_dir`` and return its result (None if ``stop()`` asked to stop)."""
    return run_pack([config], [out_dir], **kwargs)[0]


def run_pack(configs: list[TrainConfig], out_dirs: list[Path | str], *, data_root: Path | None = None,
             device: str | None = None, dataset: kd_data.Dataset | None = None,
             stop: Callable[[], bool] | None = None, teacher_mode: str = "cached",
             checkpoint_every: float | None = None, keep_checkpoint: bool = False,
             cache_logits: Collection[Path | str] = ()) -> list[dict[str, Any] | None]:
    """Train N >= 1 jobs together, each into its own folder; returns their results (None for those
    stopped early). Finished work is never redone.

    ``stop`` is polled after every step: when it returns true the members checkpoint where they are
    (mid-epoch) and the call returns; a later call resumes there. ``checkpoint_every``: None, a
    checkpoint after every epoch; or seconds of training between checkpoints, written after the
    step (or the epoch's end) where they fall due, so that short epochs do not spend their time
    writing state that a signal would have saved anyway. ``teacher_mode`` "cached" reads the teacher's
    logits from its cache (exact: no augmentation), "online" runs the teacher on every batch.
    A finished job keeps ``model.pt`` and ``result.json``; its checkpoint goes unless ``keep_checkpoint``.
    ``cache_logits``: the folders of teachers whose students will read their logits from the cache:
    those are cached here once the results are written (kd.teacher.cached_logits, the students' own
    call), where the model's kernels are warm, not in the students' process, which then finds them
    at its start (sweep.worker has an early-started student wait for its teacher's unit to end).
    A folder that holds another job (other settings) is refused; a damaged ``result.json`` is
    moved aside (kept, renamed) and the job runs again.
    """
    outs = [Path(o) for o in out_dirs]
    if not configs or len(configs) != len(outs):
        raise ValueError("run_pack needs one output folder per config")
    provenance.versions()  # the code as it is when training starts (cached), not when it ends
    cuda_graphs()  # a mistyped KDSWEEP_CUDA_GRAPHS (or KDSWEEP_TF32): said before any folder is made
    switch("KDSWEEP_TF32", True)
    switch("KDSWEEP_CUDNN_BENCHMARK", False)
    switch("KDSWEEP_FUSED_CNN", True)
    _check_pack(configs)
    for o in outs:
        if o.exists() and not o.is_dir():
            raise UserError(f"{o}: exists and is not a folder")
    results: dict[Path, dict | None] = {o: r for c, o in zip(configs, outs) if (r := finished(o, c)) is not None}
    todo = [(c, o) for c, o in zip(configs, outs) if o not in results]
    damaged, digests = _checked_teachers([c for c, _ in todo])
    failed = {o: damaged[c.teacher] for c, o in todo if c.teacher in damaged}  # each member's own error
    if damaged:  # a teacher's model.pt damaged since it finished: its students fail, their pack-mates train
        todo = [(c, o) for c, o in todo if o not in failed]
        if not todo:
            raise _each_its_own(failed)
    if todo:
        dev = pick_device(device)
        seen_by_teacher = kd_teacher.FORWARD_IMAGES["count"]
        data = dataset or kd_data.load(todo[0][0].dataset, data_root)
        steps_per_epoch(todo[0][0], len(data.train_y))  # a batch larger than the data: said before any folder
        for c in {c.model: c for c, _ in todo if c.unfreeze_from is not None}.values():  # and this
            phases.check_unfreeze(c, models.build(c.model, outputs(c, data), data.input_shape, "none"))
        online = teacher_mode == "online" or bool(todo[0][0].augment)  # augmented inputs: no cache is exact
        teachers = _teachers([c for c, _ in todo], data, dev, online, digests)
        states = [load_checkpoint(o / CHECKPOINT, dev) for _, o in todo]
        for (c, o), state in zip(todo, states):
            if state is not None:
                same_job(o / CHECKPOINT, state["config"], c)
        groups: dict[tuple[int, int], list] = {}  # members resumed from different places train apart
        for (c, o), state in zip(todo, states):
            o.mkdir(parents=True, exist_ok=True)  # only once the inputs are known good
            groups.setdefault((state["epoch"], state.get("step", 0)) if state else (0, 0), []).append((c, o, state))
        for members in groups.values():
            for (_, o, _), r in zip(members, _train(members, data, teachers, dev, stop, checkpoint_every,
                                                    seen_by_teacher, keep_checkpoint,
                                                    {Path(f) for f in cache_logits})):
                if isinstance(r, Diverged):  # its checkpoint holds what is not numbers: nothing to resume
                    (o / CHECKPOINT).unlink(missing_ok=True)
                if isinstance(r, Exception):  # diverged, or its result not written (a full disk): a
                    failed[o], r = r, None    # checkpoint of its own stays, for resume to go on from
                results[o] = r
                if r is not None and not keep_checkpoint:
                    (o / CHECKPOINT).unlink(missing_ok=True)
    if failed and not (stop is not None and stop()):  # the others are done (stopped: resume meets it again)
        raise _each_its_own(failed)
    return [results.get(o) for o in outs]


def _each_its_own(failed: dict[Path, Exception]) -> Exception:
    """One error for a pack whose members failed for reasons of their own (a teacher damaged, the
    loss not a number, a result that could not be written): the first, or all the diverged ones together; ``per_member`` maps each
    member's folder to its own error (sweep.worker writes each member its own line)."""
    errors = list(failed.values())
    first = errors[0]
    if all(isinstance(e, Diverged) for e in errors) and len(errors) > 1:
        first = Diverged([f for d in errors for f in d.folders], [n for d in errors for n in d.epochs])
    first.per_member = dict(failed)
    return first


def finished(out: Path, config: TrainConfig) -> dict[str, Any] | None:
    """The job's result if ``out`` holds it; None if not finished. A result of other settings is an
    error; a damaged one (unreadable, truncated, incomplete; a teacher's whose model.pt is not the
    file it records) is moved aside with a warning."""
    path = out / RESULT
    try:
        result = results.read(path)
        if result is not None:
            same_job(path, result["config"], config)
            if config.method in TEACHER_METHODS:  # other jobs read its model.pt: there, and the one written
                kd_teacher.verified(kd_teacher.model_file(out))
    except (results.DamagedResult, kd_teacher.DamagedTeacher) as e:
        aside = results.keep_aside(path)
        log.warning("%s: kept as %s; the job runs again", e, aside.name)
        return None
    return result


def same_job(path: Path, saved: dict[str, Any], config: TrainConfig) -> None:
    """Refuse a folder's file written for other settings (a reused --out): the differing settings are named."""
    want = config.to_dict()
    differ = results.other_settings(saved, want)
    if differ:
        what = ", ".join(f"{k} {saved.get(k)!r} (asked: {want[k]!r})" for k in differ[:4])
        raise UserError(f"{path}: belongs to a {saved.get('method')} job with other settings: {what}",
                        hint=f"use another output folder, or delete {path.parent} to start over")


def _check_pack(configs: list[TrainConfig]) -> None:
    if len(configs) == 1:
        return
    for c in configs:
        if not packable(c.to_dict()):
            raise UserError(f"a pack holds jobs of {', '.join(PACKED_METHODS)} without {', '.join(NOT_PACKABLE)}; "
                            f"not this {c.method} job")
        differ = [k for k in PACK_SHARED if getattr(c, k) != getattr(configs[0], k)]
        if differ:
            raise UserError(f"jobs in one pack must share {', '.join(differ)}")
        if (c.method in TEACHER_METHODS or configs[0].method in TEACHER_METHODS) and c.method != configs[0].method:
            raise UserError(f"a teacher packs with teachers of its method alone: not a {c.method} job with a "
                            f"{configs[0].method} job")


def _checked_teachers(configs: list[TrainConfig]) -> tuple[dict[str, kd_teacher.DamagedTeacher], dict[Path, str]]:
    """The members' teachers checked once: those (as the configs name them) whose model.pt is not
    the file their job wrote (overwritten or cut since, or their result kept aside as damaged by
    another pack's student meanwhile), and the SHA-256 of each sound one's model.pt, by file."""
    damaged, digests = {}, {}
    for t in dict.fromkeys(c.teacher for c in configs if c.teacher):
        try:
            f = kd_teacher.model_file(t)
            digests[f] = kd_teacher.verified(f)
        except kd_teacher.DamagedTeacher as e:
            damaged[t] = e
        except UserError:  # no teacher there (not found, not finished): _teachers says so, as before
            continue
    return damaged, digests


def _teachers(configs: list[TrainConfig], data: kd_data.Dataset, dev: torch.device, online: bool,
              digests: dict[Path, str]):
    """The members' distinct teachers: (their cached logits [T, n_train, K], or T frozen models; their
    model files, whose order is the teacher index), or None where no member has a teacher.
    ``digests``: their model files' SHA-256, checked already (``_checked_teachers``)."""
    files = list(dict.fromkeys(kd_teacher.model_file(c.teacher) for c in configs if c.teacher))
    if not files:
        return None
    k = outputs(configs[0], data)
    if online:
        for f in files:
            if f not in digests:
                kd_teacher.verified(f)  # the bytes written: torch.load alone takes damaged ones
        return [kd_teacher.load(f, data, dev, outputs=k) for f in files], files
    return torch.stack([kd_teacher.cached_logits(f, data, dev, outputs=k, digest=digests.get(f)).to(dev)
                        for f in files]), files


def _train(members: list[tuple[TrainConfig, Path, dict | None]], data: kd_data.Dataset, teachers,
           dev: torch.device, stop: Callable[[], bool] | None, checkpoint_every: float | None,
           seen_by_teacher: int, keep_checkpoint: bool = False,
           cache_logits: Collection[Path] = ()) -> list[dict | Exception | None]:
    """Train members (config, folder, checkpoint or None; all at the same position) as one stack:
    each one's result, or its own error (``Diverged``, or what kept its result from being written),
    or None for each when stopped. ``seen_by_teacher``: the teachers' forward-pass count when the
    call began (for the results). The last epoch writes no checkpoint (the results follow at once)
    unless ``keep_checkpoint``."""
    configs, outs = [c for c, _, _ in members], [o for _, o, _ in members]
    c0, n = configs[0], len(members)
    # members of one seed start from one draw: built once, then copied (24 MLP students: 0.2 s of a CPU)
    starts = [(c.seed, c.model, outputs(c, data), c.pretrained) for c in configs]
    sharing = Counter(starts)  # members per start: one alone takes the built model itself
    nets, initial = [], {}
    for key, (c, _, state) in zip(starts, members):
        if key not in initial:
            torch.manual_seed(c.seed)  # a member's initial weights depend on its seed alone
            initial[key] = models.build(c.model, outputs(c, data), data.input_shape, c.pretrained).to(dev)
        net = copy.deepcopy(initial[key]) if sharing[key] > 1 else initial[key]
        if state is not None:
            net.load_state_dict(state["model"])
        nets.append(net.to(memory_format=torch.channels_last) if c0.channels_last else net)
    del initial
    stack = Stack(nets)
    if teachers is not None:  # each member's teacher, as an index into the teachers
        files = teachers[1]
        teachers = teachers[0], torch.tensor([files.index(kd_teacher.model_file(c.teacher)) if c.teacher else 0
                                              for c in configs], device=dev)
    first = members[0][2] or {}
    start_epoch, start_step = first.get("epoch", 0), first.get("step", 0)
    histories = [s["history"] if s else [] for _, _, s in members]
    if start_epoch or start_step:
        log.info("resuming %s from epoch %d, step %d (of %d)", outs[0] if n == 1 else f"a pack of {n}",
                 start_epoch + 1, start_step, steps_per_epoch(c0, len(data.train_y)))
    phase = phases.phase(c0, start_epoch)
    # replayed as a CUDA graph where asked for; not with teachers run on each batch (online: a host sync)
    replay = graphs.mode(dev) if teachers is None or isinstance(teachers[0], torch.Tensor) else None
    capturable = replay == "cuda"  # the optimiser's step count on the device, for the graph's update
    seeds, batch = [c.seed for c in configs], c0.batch_size
    # members of one seed have one batch order: it is drawn once an epoch (120 students of 5 seeds
    # on 60,000 images: 5 permutations, not 120) and each batch gathered once a seed; with one seed
    # the members share it as a view (the first layer's batched product reads it N times, no copy),
    # where N gathers took 3 ms a step of 24 MLP students on a CPU
    orders = list(dict.fromkeys(seeds))
    rows = torch.tensor([orders.index(s) for s in seeds], device=dev) if 1 < len(orders) < n else None
    train_x, train_y = data.train_x.to(dev), data.train_y.to(dev)
    test_x, test_y = data.test_x.to(dev), data.test_y.to(dev)
    weight = class_weights(c0, data, dev)
    steps = steps_per_epoch(c0, len(train_y))
    last_save = time.monotonic()
    # What a step reads that changes between steps, as tensors (a CUDA graph replays the step):
    # its position in the epoch, the epoch's batch orders and keys; and what it adds to (the losses)
    position = torch.zeros((), dtype=torch.int64, device=dev)
    order = torch.empty(len(orders), len(train_y), dtype=torch.int64, device=dev)  # [seeds, n_train]
    keys = torch.empty(n, dtype=torch.int64, device=dev)
    loss_sum = torch.zeros(n, device=dev)
    in_batch = torch.arange(batch, device=dev)

    def for_phase(phase: str) -> tuple[torch.optim.Optimizer, list[torch.nn.Module], graphs.Step]:
        """The phase's optimiser, the batch-norm layers it keeps frozen, and its training step."""
        optimizer, frozen = phases.setup(stack.base, stack.params, c0, phase, capturable=capturable)
        loss_fn = objective(configs, weight, phase, dev)

        def step(b: int) -> None:
            """Every member's step at ``position`` (then the next): its own batch, random numbers, update."""
            idx = order.index_select(1, position * batch + in_batch[:b])  # [seeds, b]: each seed its own batch
            x = kd_data.to_float(train_x[idx])
            if rows is not None:  # seeds shared by some members: each member its seed's batch
                x, idx = x.index_select(0, rows), idx.index_select(0, rows)
            x, idx = x.expand(n, *x.shape[1:]), idx.expand(n, -1)  # one seed: the members' shared batch
            step_keys = rng.derive(keys, position)
            if c0.augment:
                x = augment(x, rng.derive(step_keys, AUGMENT_STREAM))
            stack.set_dropout_keys([rng.derive(step_keys, layer) for layer in range(len(stack.dropout_keys))])
            teacher_logits, labels = _teacher_logits(teachers, idx, x), train_y[idx]
            losses = stack.backward(x, lambda z: loss_fn(z, teacher_logits, labels), bf16=c0.precision == "bf16")
            optimizer.step()
            loss_sum.add_(losses * b)
            position.add_(1)
        return optimizer, frozen, graphs.Step(step, batch, replay)

    optimizer, frozen, run_step = for_phase(phase)
    if first and phases.phase(c0, start_epoch if start_step else start_epoch - 1) == phase:  # else a new phase
        optimizer.load_state_dict(stack_optimizer([s["optimizer"] for _, _, s in members]))
        for group in optimizer.param_groups:  # the saved settings came with it: capturable is this run's
            group["capturable"] = capturable
    writer = CheckpointWriter()
    log.info("training %s: %d steps an epoch on %s", outs[0].name if n == 1 else f"a pack of {n}", steps, dev)

    def save(epoch: int, step: int, partial: dict[str, Any] | None = None) -> None:
        """Every member's checkpoint: a copy of its state now, in host memory (not the device's),
        written while training goes on."""
        files = []
        for i, state in enumerate(unstack_optimizer(optimizer.state_dict(), n)):
            files.append((outs[i] / CHECKPOINT, _on_host({
                "epoch": epoch, "step": step, "history": list(histories[i]), "config": configs[i].to_dict(),
                "model": stack.state_of(i), "optimizer": state,
                "partial": partial and {**partial, "loss_sum": partial["loss_sum"][i]}})))
        writer.write(files)

    with writer:  # an error here waits for the write in flight: no checkpoint is written after the unit ends
        for epoch in range(start_epoch, c0.epochs):
            if phases.phase(c0, epoch) != phase:  # head-only training is over: fine-tune, with a new optimiser
                phase = phases.phase(c0, epoch)
                optimizer, frozen, run_step = for_phase(phase)
            first_step = start_step if epoch == start_epoch else 0
            order.copy_(torch.stack([epoch_order(s, epoch, len(train_y)) for s in orders]))
            keys.copy_(rng.keys_tensor(seeds, epoch))
            position.fill_(first_step)
            partial = first.get("partial") if epoch == start_epoch and start_step else None
            t0 = time.perf_counter() - (partial["seconds"] if partial else 0.0)
            if partial:
                loss_sum.copy_(torch.tensor([s["partial"]["loss_sum"] for _, _, s in members]))
            else:
                loss_sum.zero_()
            seen = partial["seen"] if partial else 0
            stack.train()
            for m in frozen:  # frozen layers keep their batch-norm statistics, as Keras' trainable=False does
                m.eval()
            stopped = False
            for step in range(first_step, steps):
                b = min(batch, len(train_y) - step * batch)
                run_step(b)
                seen += b
                stopped = stop is not None and stop()
                due = checkpoint_every is not None and time.monotonic() - last_save >= checkpoint_every
                if step + 1 < steps and (stopped or due):
                    save(epoch, step + 1, {"loss_sum": loss_sum.tolist(), "seen": seen,
                                           "seconds": time.perf_counter() - t0})
                    last_save = time.monotonic()
                    if stopped:
                        writer.wait()
                        log.info("stopped at epoch %d, step %d of %d: checkpointed there", epoch + 1, step + 1, steps)
                        return [None] * n
            test_loss, test_acc = evaluate(stack, test_x, test_y, subclasses_of(c0))
            seconds = time.perf_counter() - t0
            train_losses = (loss_sum / max(seen, 1)).tolist()  # one read from the device, not one a member
            for i, c in enumerate(configs):
                histories[i].append(epoch_record(epoch, c, train_losses[i], test_loss[i], test_acc[i], seconds,
                                                 who=outs[i].name if n > 1 else ""))
                if diverged_at(histories[i]) == epoch + 1:  # this epoch is its first not a number
                    log.warning("%sthe loss is not a number: diverged at epoch %d; it ends failed%s",
                                f"{outs[i].name}: " if n > 1 else "", epoch + 1,
                                ", its pack-mates go on" if n > 1 else "")
            due = checkpoint_every is None or time.monotonic() - last_save >= checkpoint_every
            if keep_checkpoint or (epoch + 1 < c0.epochs and (due or stopped)):
                save(epoch + 1, 0)
                last_save = time.monotonic()
            if stopped and epoch + 1 < c0.epochs:
                writer.wait()
                log.info("stopped after epoch %d: checkpointed, rerun to resume", epoch + 1)
                return [None] * n
    # the writes are done (the with waited): a finished job's checkpoint is then removed, never rewritten
    flops = flops_per_sample(nets[0], data.input_shape, dev)
    results: list[dict[str, Any] | Exception] = []
    writes: list[tuple[int, Callable[[], None]]] = []  # (member, what writes its result)
    t0 = time.perf_counter()
    state_of = stack.host_states()
    for i, c in enumerate(configs):
        lost = diverged_at(histories[i])
        if lost:  # no result: a job that learnt nothing is failed, not done at chance accuracy
            results.append(Diverged([outs[i]], [lost]))
            continue
        result, write = final(c, outs[i], nets[i], functools.partial(state_of, i), histories[i], data, dev, flops,
                              pack_size=n, teacher_forward_images=kd_teacher.FORWARD_IMAGES["count"] - seen_by_teacher,
                              fused_cnn=stack.fast_cnn)  # kd.pool's kernels and channels-last inputs
        results.append(result)
        writes.append((i, write))
    errors = write_all([w for _, w in writes])
    for (i, _), error in zip(writes, errors):
        if error is not None:  # those written are done; each of the others fails with its own error
            if not isinstance(error, Exception):  # not a member's failure (none is known to reach here)
                raise error
            results[i] = error
    log.info("results written: %d in %.2f s", errors.count(None), time.perf_counter() - t0)
    written = [i for (i, _), error in zip(writes, errors) if error is None]
    cache_teacher_logits([(outs[i], results[i]["model_file"]["sha256"]) for i in written if outs[i] in cache_logits],
                         data, dev, stop)
    return results


def cache_teacher_logits(teachers: list[tuple[Path, str]], data: kd_data.Dataset, dev: torch.device,
                         stop: Callable[[], bool] | None) -> None:
    """Finished teachers' logits on the training set (folder, model.pt's SHA-256), cached for their
    students with the students' own call (kd.teacher.cached_logits). The teachers are done already
    (their results written first: a kill here loses nothing); a stop skips what is left, and any
    failure is a warning: their students compute the logits, as they would have."""
    for out, sha256 in teachers:
        if stop is not None and stop():
            log.info("stopped: the logits of %d teacher(s) not cached (their students compute them)", len(teachers))
            return
        try:
            kd_teacher.cached_logits(out / MODEL, data, dev, digest=sha256, stop=stop)
        except Exception as e:  # noqa: BLE001 - see above
            log.warning("%s: teacher logits not cached (%s): its students compute them", out.name, first_line(e))


def diverged_at(history: list[dict[str, Any]]) -> int | None:
    """The first epoch whose training or test loss is not a finite number, if any."""
    return next((h["epoch"] for h in history
                 if not (math.isfinite(h["train_loss"]) and math.isfinite(h["test_loss"]))), None)


def _teacher_logits(teachers, idx: torch.Tensor, x: torch.Tensor) -> torch.Tensor | None:
    """Each member's teacher's logits for its batch, ``[N, B, K]``: from the cache, or (online)
    from the teacher run on the member's (augmented) batch."""
    if teachers is None:
        return None
    source, index = teachers
    if isinstance(source, torch.Tensor):
        return source[index.unsqueeze(1), idx]
    return torch.stack([kd_teacher.forward(source[t], x[i]) for i, t in enumerate(index.tolist())])


def steps_per_epoch(config: TrainConfig, n_train: int) -> int:
    steps = n_train // config.batch_size if config.drop_last else -(-n_train // config.batch_size)
    if steps == 0:
        raise UserError(f"batch_size: {config.batch_size} is larger than the training set of '{config.dataset}' "
                        f"({n_train} images): with drop_last no step would be taken")
    return steps


def epoch_order(seed: int, epoch: int, n: int) -> torch.Tensor:
    """The epoch's batch order for a member: a permutation seeded by (seed, epoch), on the CPU,
    the same on resume and in any pack."""
    return torch.randperm(n, generator=torch.Generator().manual_seed(seed * ORDER_STRIDE + epoch))


def is_subclass(config: TrainConfig) -> bool:
    return config.method in ("subclass", "subclass-teacher")


def subclasses_of(config: TrainConfig) -> int:
    return config.subclasses if is_subclass(config) else 1


def outputs(config: TrainConfig, data: kd_data.Dataset) -> int:
    """The model's outputs: one per class, or C x S subclass logits for the subclass methods."""
    return data.num_classes * subclasses_of(config)


def class_weights(config: TrainConfig, data: kd_data.Dataset, device: torch.device | str) -> torch.Tensor | None:
    """With ``class_weights``: N / (C * count of the class) for each class of the training set, so
    that every class weighs the same in the hard-label loss (MHIST: 1,545 HP against 630 SSA)."""
    if not config.class_weights:
        return None
    counts = torch.bincount(data.train_y, minlength=data.num_classes).clamp_min(1).float()
    return (len(data.train_y) / (data.num_classes * counts)).to(device)


def objective(configs: list[TrainConfig], weight: torch.Tensor | None = None, phase: str = phases.FULL,
              device: torch.device | str = "cpu") -> Callable[[torch.Tensor, torch.Tensor | None, torch.Tensor],
                                                           torch.Tensor]:
    """The members' losses as f(logits [N, B, K], teacher logits or None, labels [N, B]) -> [N],
    for logits on ``device`` (where the members' settings are put once, not copied every step).
    In the head phase: cross-entropy on the class logits alone."""
    c0 = configs[0]
    s = subclasses_of(c0)
    if any(c.alpha and not c.teacher for c in configs):
        raise ValueError("a member with alpha > 0 needs a teacher")
    per = lambda key, default: torch.tensor([getattr(c, key) or default for c in configs], device=device)  # noqa: E731
    if phase == phases.HEAD:
        return lambda z, t, y: cross_entropy(class_logits(z, s), y, weight)
    if c0.method == "subclass-teacher":
        beta, aux = per("beta", 0.0), per("aux_temperature", 1.0)
        return lambda z, t, y: subclass_teacher_loss(z, y, s, beta, aux, weight)
    alpha, temperature = per("alpha", 0.0), per("temperature", 1.0)  # teachers and scratch: alpha 0
    return lambda z, t, y: kd_loss(z, t, y, alpha, temperature, weight, s)


def augment(x: torch.Tensor, keys: torch.Tensor, noise_std: float = 0.1) -> torch.Tensor:
    """The reference study's augmentation, per member and image on the device: random vertical
    flip, random rotation by a multiple of 90 degrees (square images), additive Gaussian noise.
    ``x``: ``[N, B, C, H, W]``; ``keys``: ``[N]``, the members' keys for this step (``kd.rng``)."""
    n, b = x.shape[:2]
    flip = rng.uniform(rng.derive(keys, 0), (b,)) < 0.5
    x = torch.where(flip.view(n, b, 1, 1, 1), x.flip(3), x)
    if x.shape[3] == x.shape[4]:
        k = (rng.uniform(rng.derive(keys, 1), (b,)) * 4).long().view(n, b, 1, 1, 1)
        for turns in (1, 2, 3):
            x = torch.where(k == turns, torch.rot90(x, turns, dims=(3, 4)), x)
    return x + noise_std * rng.normal(rng.derive(keys, 2), tuple(x.shape[1:]))


def pick_device(device: str | None) -> torch.device:
    """The device to train on (CUDA when present), with TF32 matmuls allowed on CUDA unless
    ``KDSWEEP_TF32=0``: about 3x the float32 matmul rate of an H100 for a 10-bit mantissa in the
    products' inputs, which leaves accuracy as it is for these models."""
    dev = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
    if dev.type == "cpu":  # 'cpu:1' is the CPU too, but tensors saved from it load nowhere: 'cpu:1' unknown
        dev = torch.device("cpu")
    if dev.type == "cuda":
        if dev.index is not None:  # streams and CUDA graphs are made on the current device: this one
            torch.cuda.set_device(dev)
        tf32 = switch("KDSWEEP_TF32", True)
        torch.backends.cuda.matmul.allow_tf32 = tf32
        torch.backends.cudnn.allow_tf32 = tf32
        # KDSWEEP_CUDNN_BENCHMARK=1: cuDNN times its convolution algorithms for each new shape and
        # keeps the fastest, where by default its heuristics guess. On an H100 the reference
        # teacher's epoch took the same either way, and the whole grid 17.5 s with it against 13.6
        # without (each batch size, the last short one and evaluation's too, is timed anew): off
        torch.backends.cudnn.benchmark = switch("KDSWEEP_CUDNN_BENCHMARK", False)
    return dev


def epoch_record(epoch: int, config: TrainConfig, train_loss: float, test_loss: float, test_acc: float,
                 seconds: float, who: str = "") -> dict[str, Any]:
    """One epoch's line in the log (``who``: the member's folder, in a pack) and its history record."""
    log.info("%sepoch %3d/%d  train_loss %.4f  test_loss %.4f  test_acc %.4f  %.1fs", f"{who}  " if who else "",
             epoch + 1, config.epochs, train_loss, test_loss, test_acc, seconds)
    return {"epoch": epoch + 1, "train_loss": train_loss, "test_loss": test_loss, "test_accuracy": test_acc,
            "seconds": seconds}


def final(config: TrainConfig, out: Path, model: torch.nn.Module, state: Callable[[], dict[str, torch.Tensor]],
          history: list[dict], data: kd_data.Dataset, dev: torch.device, flops: int,
          **extra: Any) -> tuple[dict[str, Any], Callable[[], None]]:
    """A finished job's result, and what writes it: its final weights (``state()``: a copy of them
    in host memory; ``model``: its architecture), then ``result.json`` (last, atomically: the job
    is done). The writing touches host tensors alone (their copy, serialising, hashing, the disk):
    a pack's members write side by side (``write_all``)."""
    metrics = {"test_accuracy": history[-1]["test_accuracy"], "test_loss": history[-1]["test_loss"],
               "train_loss": history[-1]["train_loss"]}
    if data.num_classes == 2:  # F1 per class, macro F1, ROC AUC, confusion matrix
        model.load_state_dict(state())
        logits = class_logits(models.logits_of(model, data.test_x.to(dev)), subclasses_of(config))
        metrics.update(kd_metrics.binary(logits, data.test_y.to(dev), data.class_names))
    result = {
        "config": config.to_dict(),
        "metrics": metrics,
        "history": history,
        "params": models.count_params(model),
        "flops_per_sample": flops,
        "wall_seconds": sum(h["seconds"] for h in history),
        "device": (f"{torch.cuda.get_device_name(dev)} (tf32 {'on' if torch.backends.cuda.matmul.allow_tf32 else 'off'})"
                   if dev.type == "cuda" else f"cpu ({platform.processor() or platform.machine()})"),
        "versions": provenance.versions(),
        "model_file": {"name": MODEL},
        **extra,
    }

    def write() -> None:
        if not out.is_dir():  # moved or deleted while it trained: not a folder of its own made anew elsewhere
            raise UserError(f"{out}: gone during training (moved or deleted?): its results are not written")
        # config saved: a teacher knows its own outputs
        size, sha256 = atomic.write_hashed(out / MODEL, lambda f: torch.save(
            {"config": config.to_dict(), "state_dict": state()}, f))
        # what a student checks before it trusts a teacher's model.pt, and status by its size
        result["model_file"].update(bytes=size, sha256=sha256)
        atomic.write_json(out / RESULT, result)
    return result, write


def write_all(writes: list[Callable[[], None]]) -> list[BaseException | None]:
    """Run a pack's members' writes side by side (threads: copying, hashing and the disk release the
    GIL; 120 reference students write 600 MB, at most 8 members' weights copied at once); once all
    have ended, each one's error (None: written), in the pack's order."""
    with ThreadPoolExecutor(max_workers=max(1, min(8, len(writes))), thread_name_prefix="results-writer") as pool:
        futures = [pool.submit(w) for w in writes]
    return [f.exception() for f in futures]


@torch.no_grad()
def evaluate(stack: Stack, x: torch.Tensor, y: torch.Tensor, subclasses: int = 1) -> tuple[list[float], list[float]]:
    """Each member's mean cross-entropy and accuracy (a fraction) over a whole split, on class
    predictions (for a subclass model: the logsumexp of each class's subclass logits)."""
    stack.train(False)
    logits = torch.cat([stack(kd_data.to_float(x[i:i + models.EVAL_BATCH]).expand(stack.n, -1, *x.shape[1:]))
                        for i in range(0, len(x), models.EVAL_BATCH)], dim=1)  # [N, n_test, K]
    logits = class_logits(logits, subclasses)
    labels = y.expand(stack.n, -1)
    loss = cross_entropy(logits, labels)
    correct = (logits.argmax(dim=-1) == labels).sum(dim=1)
    return loss.tolist(), [c / len(y) for c in correct.tolist()]


def flops_per_sample(model: torch.nn.Module, input_shape: tuple[int, ...], device: torch.device) -> int:
    """Forward FLOPs for one sample, as torch.utils.flop_counter counts them (2 x multiply-adds of
    every convolution and matrix product; biases, activations and norms not counted), from the
    shapes of one forward pass: FlopCounterMode costs a second of a CPU on first use, in every
    process (it imports torch._dynamo). A test checks both agree on every model."""
    total = 0

    def count(module: torch.nn.Module, inputs, output: torch.Tensor) -> None:
        nonlocal total
        if isinstance(module, torch.nn.modules.conv._ConvNd):  # weight [C_out, C_in / groups, *k] per output position
            total += 2 * module.weight.numel() * output[0, 0].numel() * output.shape[0]
        else:  # Linear: weight [out, in] per row of the output
            total += 2 * module.weight.numel() * (output.numel() // output.shape[-1])

    layers = (torch.nn.Linear, torch.nn.modules.conv._ConvNd)
    hooks = [m.register_forward_hook(count) for m in model.modules() if isinstance(m, layers)]
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            model(torch.zeros(1, *input_shape, device=device))
    finally:
        for h in hooks:
            h.remove()
        model.train(was_training)
    return total


class CheckpointWriter:
    """Writes checkpoints in a background thread, one batch at a time, while training goes on (a
    pack of 24 reference students writes 360 MB a checkpoint: a second of this machine's disk).
    ``write`` first waits for the batch before it (the same files), and ``wait`` for the last one;
    ``wait`` raises what the writing raised. A file the disk refused (full, read-only: kd.atomic's
    UserError) at a periodic checkpoint is a warning where ``write`` or the end of training finds
    it: the checkpoint before it stays whole, and training goes on (it failed the job at the next
    checkpoint, or at its end, even once there was room again: all its training lost); a stop's
    checkpoint, waited for with ``wait()``, still fails the job when it cannot be written. Used as
    a context manager, it waits at the end; when the training raised, it still waits (the unit's
    lock is held until then, and nothing writes a checkpoint after its unit ended), logs its own
    error, and lets the training's error go on."""

    def __init__(self) -> None:
        self._thread: threading.Thread | None = None
        self._error: BaseException | None = None

    def write(self, files: list[tuple[Path, dict[str, Any]]]) -> None:
        self.wait(periodic=True)

        def run() -> None:
            try:
                for path, state in files:
                    save_checkpoint(path, state)
            except BaseException as e:  # noqa: BLE001 - handed to the training thread by wait()
                self._error = e

        self._thread = threading.Thread(target=run, name="checkpoint-writer")
        self._thread.start()

    def wait(self, periodic: bool = False) -> None:
        if self._thread is not None:
            self._thread.join()
            self._thread = None
        if self._error is not None:
            error, self._error = self._error, None
            if periodic and isinstance(error, UserError):
                log.warning("checkpoint not written (%s): training goes on; its last checkpoint stays", error)
                return
            raise error

    def __enter__(self) -> CheckpointWriter:
        return self

    def __exit__(self, kind, error, tb) -> None:
        if kind is None:  # trained to the end: its results are what counts now
            self.wait(periodic=True)
            return
        try:
            self.wait()
        except Exception as e:  # the training's own error is the one to raise
            log.warning("a checkpoint write failed too: %s: %s", e.__class__.__name__, e)


def _on_host(obj: Any) -> Any:
    """A checkpoint's state with its tensors in host memory (a device tensor is copied; a host one,
    a copy already, is kept)."""
    if isinstance(obj, torch.Tensor):
        return obj.to("cpu")
    if isinstance(obj, dict):
        return {k: _on_host(v) for k, v in obj.items()}
    if isinstance(obj, list):
        return [_on_host(v) for v in obj]
    return obj


def save_checkpoint(path: Path, state: dict[str, Any]) -> None:
    """A member's checkpoint: its position (epoch, step inside it), history, weights and optimiser
    state, in the same format whatever pack it trains in. No RNG state: kd.rng needs none.
    Sealed (``kd.sealed``: damage is found on load, which torch alone does not do), without
    torch's slow zip CRC-32 (6x the rest of the save; a second per epoch for a pack of 24
    reference students here), written atomically."""
    sealed.save(path, state, crc=False, fsync=False)


def load_checkpoint(path: Path, device: torch.device) -> dict[str, Any] | None:
    """A checkpoint's contents; None where there is none, or, with a warning, a damaged one
    (training then starts over)."""
    if not path.exists():
        return None
    try:
        state = sealed.load(path, map_location=device)
        for key in ("epoch", "history", "model", "optimizer"):
            state[key]  # noqa: B018 - a checkpoint without them is damaged
    except Exception as e:
        why = (str(e).strip().splitlines() or [""])[0][:200]
        log.warning("checkpoint %s is damaged (%s: %s): starting this job over", path, e.__class__.__name__, why)
        return None
    return state
