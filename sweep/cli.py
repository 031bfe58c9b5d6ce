"""The ``kdsweep`` command: a thin layer over kd and sweep. The only module that prints."""
from __future__ import annotations

import argparse
import contextlib
import errno
import logging
import os
import re
import shlex
import shutil
import signal
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from kd.errors import UserError
from sweep import logs


class _Parser(argparse.ArgumentParser):
    """argparse that reports usage mistakes as one ``error:`` line, exit status 2."""

    def error(self, message: str) -> None:  # type: ignore[override]
        raise UserError(f"{self.prog}: {message}", hint=f"see '{self.prog} --help'")


def _check_folder(path: Path, flag: str, write: bool = True) -> None:
    """Refuse, before anything is written, a folder that cannot be one: a file in its place or
    above it, or (``write``) one that cannot be made or written to."""
    try:
        if path.exists() and not path.is_dir():
            raise UserError(f"{flag}: {path} exists and is not a folder")
        existing = path
        while not existing.exists():  # "a/file/sub" does not exist either: walk up to what does
            if existing.is_symlink():  # to an unmounted disk, a moved folder, or round in a loop
                raise UserError(f"{flag}: {path}: {existing} is a link to {os.readlink(existing)}, which does not "
                                "resolve to a folder")
            existing = existing.parent
    except OSError as e:  # a name too long for the file system
        raise UserError(f"{flag}: {_one_line(str(path))[:120]}: {e.strerror}") from None
    if not existing.is_dir():
        raise UserError(f"{flag}: {path}: {existing} is a file, not a folder")
    if write and not os.access(existing, os.W_OK | os.X_OK):
        raise UserError(f"{flag}: {path}: cannot write in {existing} (permission denied)")


def _check_device(device: str | None) -> None:
    from sweep import local

    local.check_device(device, "--device")


def _add_train(sub) -> None:
    from types import SimpleNamespace

    from kd.config import DEFAULTS, METHODS

    d = SimpleNamespace(**DEFAULTS)
    p = sub.add_parser("train", help="train one teacher or student into an output folder",
                       description="Train one job: a teacher, a student from scratch, or a distilled student. "
                                   "Rerun on the same --out to resume from the last epoch checkpoint.",
                       epilog="example: kdsweep train --method teacher --out runs/teacher && "
                              "kdsweep train --method kd --teacher runs/teacher --alpha 0.5 --temperature 4 --out runs/kd")
    p.add_argument("--dataset", default=d.dataset, help="mnist-5k (built in, offline), mnist, fashion-mnist, "
                   f"and each with -binary (classes 0-4 vs 5-9); mhist (its annotations.csv and images under "
                   f"DATA_ROOT/MHIST) (default {d.dataset})")
    p.add_argument("--method", default="kd", choices=METHODS, help="what to train (default kd)")
    p.add_argument("--model", default="", help="model name (default: the method's: mnist-cnn teacher, mnist-mlp student)")
    p.add_argument("--alpha", type=float, default=None, help=f"weight of the distillation term, 0..1 (default {d.alpha})")
    p.add_argument("--temperature", type=float, default=None, help=f"softmax temperature T > 0 (default {d.temperature:g})")
    p.add_argument("--teacher", help="the teacher job's output folder (or its model.pt), for --method kd or subclass")
    p.add_argument("--subclasses", type=int, default=None,
                   help=f"subclass methods: subclasses per class (default {d.subclasses})")
    p.add_argument("--beta", type=float, default=None,
                   help=f"subclass-teacher: weight of the auxiliary loss (default {d.beta:g})")
    p.add_argument("--aux-temperature", type=float, default=None,
                   help=f"subclass-teacher: temperature of the auxiliary loss (default {d.aux_temperature:g})")
    p.add_argument("--pretrained", help="ImageNet models (resnet50, mobilenet_v2): imagenet (default), none, or a weights file")
    p.add_argument("--augment", action="store_true", help="random vertical flip, 90-degree rotation, Gaussian noise")
    p.add_argument("--head-epochs", type=int, help="the first epochs train the head only, backbone frozen")
    p.add_argument("--finetune-lr", type=float, help="learning rate after the head epochs (default --lr)")
    p.add_argument("--unfreeze-from", type=int, help="fine-tune the backbone's parameters from this index on")
    p.add_argument("--class-weights", action="store_true", help="weigh the hard-label loss by inverse class frequency")
    p.add_argument("--precision", choices=["fp32", "bf16"], help="bf16: bfloat16 autocast (default fp32)")
    p.add_argument("--channels-last", action="store_true", help="channels-last memory format")
    p.add_argument("--epochs", type=int, default=d.epochs, help=f"(default {d.epochs})")
    p.add_argument("--batch-size", type=int, default=d.batch_size, help=f"(default {d.batch_size})")
    p.add_argument("--lr", type=float, default=d.lr, help=f"Adam learning rate (default {d.lr:g})")
    p.add_argument("--seed", type=int, default=d.seed, help=f"(default {d.seed})")
    p.add_argument("--out", required=True, type=_path, help="output folder: checkpoint.pt, model.pt, result.json")
    p.add_argument("--data-root", type=_path, help="where datasets live (default $KDSWEEP_DATA, else ~/.cache/kdsweep/data)")
    p.add_argument("--device", help="cpu, cuda, cuda:1 ... (default: cuda when present)")


def _cmd_train(args: argparse.Namespace) -> int:
    from kd.config import APPLIES, TEACHER_OF, TrainConfig, make_config

    for key in ("alpha", "temperature", "subclasses", "beta", "aux_temperature"):  # given: for this method?
        if getattr(args, key) is None:
            setattr(args, key, getattr(TrainConfig, key))
        elif args.method not in APPLIES[key]:
            raise UserError(f"--{key.replace('_', '-')}: method '{args.method}' has none (it is for "
                            f"{', '.join(APPLIES[key])}): it would change nothing")
    settings = {k: getattr(args, k) for k in ("dataset", "method", "model", "alpha", "temperature", "epochs",
                                              "batch_size", "lr", "seed", "subclasses", "beta", "aux_temperature")}
    for key in ("pretrained", "head_epochs", "finetune_lr", "unfreeze_from", "precision"):
        if getattr(args, key) is not None:
            settings[key] = getattr(args, key)
    for key in ("augment", "class_weights", "channels_last"):
        if getattr(args, key):
            settings[key] = True
    if args.teacher:
        settings["teacher"] = str(Path(args.teacher).resolve())
    try:
        config = make_config("--", **settings)
    except UserError as e:  # name the flag as typed: --head-epochs, not the setting head_epochs
        flag = re.sub(r"--(\w+)", lambda m: "--" + m.group(1).replace("_", "-"), str(e), count=1)
        raise UserError(flag, e.hint) from None
    if args.teacher and config.method not in TEACHER_OF:
        raise UserError(f"--teacher: method '{config.method}' trains without a teacher "
                        f"(a teacher is for {' and '.join(TEACHER_OF)})")
    _check_folder(args.out, "--out")
    _check_device(args.device)
    from kd import phases, train
    from sweep import state
    from sweep.worker import StopFlag

    phases.skip_dynamo_import()  # kdsweep's own process: nothing in it compiles
    stop = StopFlag()  # Ctrl-C: the step in flight, a checkpoint there, then out (a second: at once)
    stop.catch(signal.SIGTERM, signal.SIGINT, signal.SIGHUP)
    made = not args.out.exists()
    args.out.mkdir(parents=True, exist_ok=True)
    with contextlib.ExitStack() as held:
        try:  # the same command twice: one trains, the other says so
            held.enter_context(state.job_locks([args.out], wait_s=0))
        except state.LocksUnsupported as e:  # NFS mounted nolock, sshfs: train as it did before it locked
            logging.getLogger("sweep").warning("%s: training without its lock", e)
        try:
            result = train.run(config, args.out, data_root=args.data_root, device=args.device, stop=stop)
        except BaseException:
            if made and [p.name for p in args.out.iterdir()] == [".lock"]:  # refused before it wrote: as it
                shutil.rmtree(args.out)  # was (this process holds its lock: no other trains there)
            raise
    if result is None:
        print(f"interrupted ({signal.Signals(stop.signal).name}): checkpointed in {args.out}; the same command "
              "goes on from there", file=sys.stderr)
        return 128 + stop.signal
    m = result["metrics"]
    print(f"{config.method} on {config.dataset}: test accuracy {m['test_accuracy']:.2%}  "
          f"(test loss {m['test_loss']:.4f}, {result['wall_seconds']:.0f} s on {result['device']})  -> {args.out}")
    return 0


def _add_data(sub) -> None:
    p = sub.add_parser("data", help="download a dataset into a data root (needs a network: use a login node)")
    p.add_argument("name", choices=["mnist", "fashion-mnist"])
    p.add_argument("--root", type=_path, help="data root (default $KDSWEEP_DATA, else ~/.cache/kdsweep/data)")


def _cmd_data(args: argparse.Namespace) -> int:
    from kd import data

    root = args.root or data.default_root()
    _check_folder(root, "--root" if args.root else "the data root ($KDSWEEP_DATA, else ~/.cache/kdsweep/data)")
    where = data.download(args.name, root)
    print(f"{args.name}: ready in {where}  (use --data-root {root})")
    return 0


def _fmt(v) -> str:
    from kd.config import shown

    return "-" if v is None else shown(v)


def _count(n: int, word: str) -> str:
    return f"{n:,} {word}{'' if n == 1 else 's'}"


def _table(header: list[str], rows: list[list[str]]) -> str:
    widths = [max(len(str(x)) for x in col) for col in zip(header, *rows)]
    return "\n".join("  ".join(str(x).ljust(w) for x, w in zip(r, widths)).rstrip() for r in [header, *rows])


def _sweep_args(p: argparse.ArgumentParser) -> None:
    from sweep.spec import EXAMPLES

    p.add_argument("sweep", help="a sweep file (TOML), or a bundled example's name: "
                   + ", ".join(sorted(e.stem for e in EXAMPLES.glob("*.toml"))))
    p.add_argument("--results", type=_path, default=Path("results"), metavar="DIR",
                   help="results root; the sweep writes to DIR/<sweep name>/ (default: results)")


def _max_jobs_arg(p: argparse.ArgumentParser) -> None:
    from sweep.spec import MAX_JOBS

    p.add_argument("--max-jobs", type=int, metavar="N", help="refuse a grid of more than N points (default: the "
                   f"sweep file's max_jobs, else {MAX_JOBS:,}); counted before the grid is expanded")


def _load_plan(args: argparse.Namespace):
    """The sweep's plan; --max-jobs, where the command has it, overrides the sweep file's max_jobs."""
    from sweep import api

    return api.plan(args.sweep, getattr(args, "max_jobs", None))


SHORT_PLAN, HEAD, TAIL = 200, 10, 5  # a longer plan lists its first HEAD and last TAIL jobs, unless --all


def _pack_arg(p: argparse.ArgumentParser) -> None:
    p.add_argument("--pack", help="jobs trained together in one process (students; teachers with teachers): 'auto' (default) or a number; "
                   "1 trains each job alone (units one after another in each worker)")


def _add_plan(sub) -> None:
    p = sub.add_parser("plan", help="dry run: the jobs a sweep expands to; writes and submits nothing")
    _sweep_args(p)
    p.add_argument("--profile", help="also print the sbatch script of each job array for this cluster profile "
                   "(a name under slurm/profiles/ or a TOML file)")
    p.add_argument("--data-root", type=_path, help="data root the jobs will use (mounted into the container)")
    _max_jobs_arg(p)
    _pack_arg(p)
    p.add_argument("--all", action="store_true",
                   help=f"list every job (a plan of more than {SHORT_PLAN} jobs lists its first and last ones)")
    p.add_argument("-v", "--verbose", action="store_true", help="list every job, and each job's full config")
    p.add_argument("--device", type=_device_name, help="size packs as a local run on this device would (cpu, cuda, "
                   "cuda:N, mps; default: this machine's): the plan of a GPU run, shown on a laptop")


def _path(text: str) -> Path:
    """A folder argument: an empty one ('--data-root ""', a variable unset in a script) would be '.'."""
    if not text.strip():
        raise argparse.ArgumentTypeError("an empty path (a variable unset in the command?)")
    return Path(text)


def _device_name(text: str) -> str:
    if not re.fullmatch(r"cpu|cuda(:\d+)?|mps", text):
        raise argparse.ArgumentTypeError(f"{text!r} is not a device (expected cpu, cuda, cuda:N or mps)")
    return text


def _cmd_plan(args: argparse.Namespace) -> int:
    from collections import Counter

    from kd.config import APPLIES, TEACHER_METHODS
    from sweep import api, local
    from sweep.plan import followed_by_teachers, units

    plan = _load_plan(args)
    out = api.folder(plan, args.results)
    _check_folder(out, "--results", write=False)
    prof = None
    if args.profile and args.device:
        raise UserError("--device: not with --profile: a SLURM job's device is the GPU that the profile's gpus asks for")
    if args.profile:  # loaded before anything is printed: a bad profile is one error line
        from sweep import profile, submit

        prof = profile.load(args.profile)
    pack = _pack(args, plan, prof)  # as run and resume will pack: --pack, the sweep's, the profile's, auto
    sw = plan.sweep
    counts = Counter(j.method for j in plan.jobs)
    print(f"sweep {sw.name}" + (f": {sw.description}" if sw.description else "") + f"  [{sw.path}]")
    print(f"{_count(len(plan.jobs), 'job')} from {_count(plan.n_points, 'grid point')} ("
          + ", ".join(f"{n:,} {m}" for m, n in counts.items()) + f"), {plan.excluded:,} excluded")
    short = len(plan.jobs) > SHORT_PLAN and not (args.all or args.verbose)
    merged = plan.merged()
    for _, why in merged[:TAIL] if short else merged:
        print(f"merged: {why}")
    if short and len(merged) > TAIL:
        print(f"merged: ... and {len(merged) - TAIL:,} more like these")
    kept = plan.kept_notes()
    for why in kept[:TAIL] if short else kept:
        print(f"kept: {why}")
    if short and len(kept) > TAIL:
        print(f"kept: ... and {len(kept) - TAIL:,} more like these")
    teachers = [j for j in plan.jobs if j.method in TEACHER_METHODS]
    # a teacher's setting (not alpha, T) on the grid that makes no teacher per value, and [teacher] does not set
    unfollowed = [k for k in sw.axes if k not in APPLIES and not followed_by_teachers(k) and k not in dict(sw.teacher)]
    if teachers and unfollowed:  # the grid's epochs do not make a teacher per value: say what they train with
        own = ", ".join(f"{k} {' / '.join(dict.fromkeys(_fmt(t.config[k]) for t in teachers))}" for k in unfollowed)
        print(f"note: teachers do not follow the grid's {', '.join(unfollowed)} (one teacher serves every value): "
              f"they train with {own}; [teacher] sets theirs")
    missing = local.missing_weights(plan.jobs)
    if missing:
        print(f"warning: {sw.path or sw.name}: pretrained: {missing[1]}: no such weights file here (job "
              f"{missing[0].name}); a run here refuses it", file=sys.stderr)
    axes = [k for k in sw.axes if k not in ("alpha", "temperature", "seed", "epochs")]
    header = ["id", "name", "method", "alpha", "T", "seed", *axes, "epochs", "depends on"]
    names = {j.id: j.name for j in plan.jobs}
    shown = plan.jobs[:HEAD] + plan.jobs[-TAIL:] if short else plan.jobs
    rows = [[j.id, j.name, j.method, _fmt(j.config["alpha"]), _fmt(j.config["temperature"]), _fmt(j.config["seed"]),
             *[_fmt(j.settings[a]) for a in axes], _fmt(j.config["epochs"]),
             ", ".join(names[d] for d in j.depends_on) or "-"] for j in shown]
    lines = _table(header, rows).splitlines()
    if short:
        lines.insert(1 + HEAD, f"... {len(plan.jobs) - HEAD - TAIL:,} more jobs (--all lists every one) ...")
    print()
    print("\n".join(lines))
    print()
    levels = plan.levels()
    if args.profile:  # as the submission will pack: array tasks, a device each
        packs = [u for level in submit._level_units(plan, pack, prof) for u in level]
        sized = f", sized for the profile's {'GPU' if prof.gpus else 'CPU'}s" if pack == "auto" else ""
        where = f"SLURM submission (profile {prof.name}): {_count(len(packs), 'array task')}"
    else:
        kind = local.device_kind(args.device)
        packs = units(plan, pack, kind)
        whose = "this machine's" if args.device is None else "a"
        sized = f", sized for {whose} {'GPU' if kind == 'cuda' else 'CPU'}" if pack == "auto" else ""
        where = f"local run: {_count(len(packs), 'unit')}"
    print(f"{where} (pack {pack}{sized}: jobs that share a model and its settings train together); "
          f"largest pack {_count(max(len(u) for u in packs), 'job')}")
    print("order: " + "; then ".join(f"{_count(len(lvl), 'job')} " + (
        ("that needs nothing" if len(lvl) == 1 else "that need nothing") if not lvl[0].depends_on
        else ("that waits for its teacher" if len(lvl) == 1 else "that wait for their teacher")) for lvl in levels))
    print(f"each unit (a job, or a pack) runs in a worker (python -m sweep.worker; locally -j long-lived ones): "
          f"kd.train.run_pack(configs, [{out}/jobs/<id>, ...])")
    if args.profile:
        for level, tasks, text in submit.preview(plan, prof, out.resolve(), args.data_root, pack=pack):
            jobs = sum(len(t) for t in tasks)
            print(f"\n# ---- array '{level}': {_count(len(tasks), 'task')} ({_count(jobs, 'job')}, pack {pack}), "
                  f"profile {prof.name} ({prof.path}) ----")
            print(text.rstrip())
    if args.verbose:
        import json

        for j in plan.jobs:
            print(f"{j.id} {j.name}: {json.dumps(j.config, sort_keys=True)}")
    return 0


def _add_run(sub, name: str = "run") -> None:
    helps = {"run": "run every job of the sweep that is not done (teachers first)",
             "resume": "run again exactly the jobs that are not done (failed, interrupted, never started)"}
    p = sub.add_parser(name, help=helps[name])
    _sweep_args(p)
    p.add_argument("-j", "--jobs", type=int, default=1, help="local processes at once (default 1)")
    p.add_argument("--profile", help="submit to SLURM with this cluster profile (a name under slurm/profiles/ "
                   "or a TOML file) instead of running locally")
    _pack_arg(p)
    p.add_argument("--data-root", type=_path, help="where datasets live (default $KDSWEEP_DATA, else ~/.cache/kdsweep/data)")
    p.add_argument("--device", help="cpu, cuda, cuda:N ... (default: cuda when present); local runs only: "
                   "a SLURM job's device comes from the profile's gpus")
    _max_jobs_arg(p)


def _cmd_run(args: argparse.Namespace) -> int:
    from tqdm import tqdm

    from sweep import api, local, state, status, worker

    if args.jobs < 1:
        raise UserError(f"--jobs: {args.jobs} must be >= 1")
    worker.check_settings()  # before the plan: a SLURM submission's jobs read them too
    plan = _load_plan(args)
    folder = api.folder(plan, args.results)
    _check_folder(folder, "--results")
    if args.command == "resume" and not folder.is_dir():  # run from another folder: it would start all over
        raise UserError(f"{folder}: no such folder: sweep {plan.sweep.name} has not run here, nothing to resume",
                        hint="'kdsweep run' starts it; or give --results DIR where it ran")
    if args.command == "resume" and args.data_root is None:  # as it ran: not another copy of the data by default
        last = (state.read_json(folder / "plan.json") or {}).get("data_root")
        here = os.environ.get("KDSWEEP_DATA")
        if isinstance(last, str) and not (here and Path(here).resolve() == Path(last).resolve()):
            there = Path(last).is_dir()
            if here or not there:  # this shell names its own, or that one is gone: the default
                from kd import data

                print(f"note: the sweep last ran with data root {last}; this resume reads "
                      f"{'$KDSWEEP_DATA, ' + here if here else f'the default ({data.default_root()})'}"
                      f"{'' if there else ', as that one is gone'} (--data-root DIR to choose)")
            else:
                args.data_root = Path(last)
                print(f"data root: {last}, the one the sweep last ran with (--data-root DIR to change it)")
    if args.profile:
        if args.device:
            raise UserError("--device: not with --profile: a SLURM job's device is the GPU that the profile's "
                            "gpus asks for", hint="leave --device out (gpus = 0 in the profile: CPU jobs)")
        if args.data_root:  # given here: the jobs will read it as given (a shared file system), so it is checked
            local.check_inputs(plan, plan.jobs, args.data_root)
        return _submit(args, plan, folder)
    pack = _pack(args, plan)
    _check_device(args.device)
    states = status.job_states(plan, folder)
    todo = [j for j, s in states if s.state != state.DONE]
    if not todo:
        print(f"nothing to do: {status.totals(states)} in {folder}")
        return 0
    verb = "resuming" if args.command == "resume" else "running"
    bar = None

    def on_start() -> None:  # the sweep is this run's: not before (another run holds it, a folder refuses)
        nonlocal bar
        print(f"{verb} {len(todo)} of {len(plan.jobs)} jobs of {plan.sweep.name} "
              f"({len(plan.jobs) - len(todo)} already done) in {folder}, {args.jobs} at a time")
        _foreign_note(folder, plan)
        bar = tqdm(total=len(todo), unit="job", disable=None)

    def on_event(e: local.Event) -> None:
        if e.state == "started":
            return
        line = f"{e.state:7s} {e.job.id} {e.job.name}"
        if e.state == "done":  # its training time (a student started early also waited for its teacher)
            r = state.read_json(state.job_dir(folder, e.job) / "result.json") or {}
            acc, wall = r.get("metrics", {}).get("test_accuracy"), r.get("wall_seconds")
            packed = f", in a pack of {r['pack_size']}" if r.get("pack_size", 1) > 1 else ""
            line += f" trained in {wall:.0f} s{packed}" if wall is not None else ""
            line += f"  test accuracy {acc:.2%}" if acc is not None else ""
            line += f"  ({e.detail})" if e.detail else ""
        else:
            # a skipped job never trained: its unit's time (waiting for a teacher) would read as its own
            ran = e.seconds and e.state != "skipped"
            line += f" after {e.seconds:.0f} s: {e.detail}" if ran else f": {e.detail}"
        bar.write(line)
        bar.update(1)

    got: list[int] = []  # the signal that stops it (none caught: a KeyboardInterrupt, Ctrl-C's)
    try:
        with _sigterm_as_interrupt(got):
            summary = local.run(plan, folder, jobs=args.jobs, pack=pack, data_root=args.data_root,
                                device=args.device, on_event=on_event, on_start=on_start)
    except KeyboardInterrupt:  # the units stopped (checkpointed where they were): where it stands, and the way on
        if bar is not None:
            bar.close()
        print(f"interrupted: {status.totals(status.job_states(plan, folder))}{_next_step([], args, 'resume')}",
              file=sys.stderr)
        return 128 + (got[0] if got else signal.SIGINT)  # 130 Ctrl-C, 143 SIGTERM, 129 a hangup
    bar.close()
    after = status.job_states(plan, folder)
    print(f"{status.totals(after)}{_next_step(after, args)}")
    return 1 if summary.failed or summary.interrupted or summary.skipped else 0


@contextmanager
def _sigterm_as_interrupt(got: list[int]) -> Iterator[None]:
    """``kill PID``, or a hangup (the terminal closed, the ssh session dropped), stops a run as
    Ctrl-C does: its children are stopped and waited for, their jobs checkpoint and show as
    interrupted, instead of being left running without a parent or killed without a checkpoint."""
    caught = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)  # ``got``: the one that came (exit status 128 + it)

    def interrupt(signum, frame) -> None:
        got.append(signum)
        for s in caught:  # a second one must not cut the clean-up short (nor leave workers running)
            signal.signal(s, again if s == signal.SIGINT else signal.SIG_IGN)
        raise KeyboardInterrupt

    def again(signum, frame) -> None:
        print(f"still stopping: the workers finish their step and checkpoint (kill -9 {os.getpid()} "
              "leaves at once; its workers then stop as on SIGTERM)", file=sys.stderr)

    previous = {s: signal.signal(s, interrupt) for s in caught if signal.getsignal(s) != signal.SIG_IGN}  # nohup
    try:
        yield
    finally:
        for s, handler in previous.items():
            signal.signal(s, handler)


def _pack(args: argparse.Namespace, plan, prof=None) -> int | str:
    """--pack, else the sweep file's pack, else the profile's, else auto."""
    from sweep.spec import check_pack

    given = args.pack if args.pack is None or args.pack == "auto" else (int(args.pack) if args.pack.isdigit() else args.pack)
    return check_pack(given, "--pack") or plan.sweep.pack or (prof.pack if prof else None) or "auto"


def _submit(args: argparse.Namespace, plan, folder: Path) -> int:
    from sweep import profile, slurm, status, submit

    prof = profile.load(args.profile)
    out = submit.submit(plan, prof, folder.resolve(), args.data_root, pack=_pack(args, plan, prof))
    if out.found:
        print(f"recorded again: {_count(len(out.found), 'array')} of this sweep in Slurm's queue that "
              f"{folder / slurm.RECORD} did not list ({', '.join(out.found)}): not submitted twice")
    for level, array_id, n in out.arrays:
        print(f"submitted {level} array {array_id}: {n} tasks (profile {prof.name})")
    if out.cancelled:
        print(f"cancelled {out.cancelled} students queued behind a teacher that failed; submitted again")
    if out.held_back:
        print(f"not submitted: {_count(len(out.held_back), 'student')} whose teacher trains where Slurm cannot "
              f"be asked to wait for it: {', '.join(out.held_for)}; resume again when it is done")
    if not out.arrays:
        print(f"nothing to submit: {out.already_done} done, {out.skipped_active} queued or running")
    elif out.skipped_active or out.already_done:
        print(f"not submitted again: {out.already_done} done, {out.skipped_active} queued or running")
    _foreign_note(folder, plan)
    print(f"{status.totals(status.job_states(plan, folder))}{_next_step([], args, 'status')}")
    return 0


def _add_status(sub) -> None:
    p = sub.add_parser("status", help="each job's state (done, running, queued, failed, cancelled, damaged, "
                       "interrupted, pending) with why, the totals, and the command that moves the sweep on")
    _sweep_args(p)
    _max_jobs_arg(p)


def _cmd_status(args: argparse.Namespace) -> int:
    from sweep import api, slurm, state, status

    plan = _load_plan(args)
    folder = api.folder(plan, args.results)
    _check_folder(folder, "--results", write=False)
    found = slurm.unrecorded(folder)  # asked once: the states and the note below both say it
    states = status.job_states(plan, folder, found=found)
    rows = [[j.id, j.name, s.state, s.detail] for j, s in states]
    print(_table(["id", "name", "state", "detail"], rows))
    if not folder.is_dir():
        print(f"{status.totals(states)} (no folder {folder}: not run here; --results DIR where it ran)")
        return 0
    _foreign_note(folder, plan)
    moved = slurm.elsewhere(folder)
    if moved:
        print(f"note: {folder / slurm.RECORD} lists Slurm arrays submitted from {', '.join(moved)} (this folder "
              "copied or moved since?): their tasks train the jobs there, not here")
    if found:
        unread = [t for _, _, tasks in found.values() for t in tasks]
        print(f"note: {_count(len(found), 'array')} of this sweep in Slurm's queue that {folder / slurm.RECORD} does "
              f"not list ({', '.join(found)}): their jobs' states above are Slurm's; " + (
                  f"but {_count(len(unread), 'task')} of them ({', '.join(unread[:5])}) train what is unknown (their "
                  f"files under slurm/ are gone): scancel {' '.join(unread)} or wait for them, then resume"
                  if unread else "a resume with --profile records them again"))
    running = state.sweep_run(folder)
    last = state.read_json(folder / "plan.json") or {}  # the plan last run: its jobs, its data root
    if running:
        # its plan is the one plan.json holds (it wrote it, holding the lock): jobs of a file edited since
        # are not its to start
        its = {j.get("id") for j in last.get("jobs", []) if isinstance(j, dict)}
        new = [j.name for j, s in states if s.state == state.PENDING and its and j.id not in its]
        print(f"note: a '{state.sweep_holder(folder)}' of {plan.sweep.name} (pid {running}) works in {folder} now: "
              "its pending jobs are its to start" + (
                  f", but for {_count(len(new), 'job')} it does not plan (the file changed since it started: "
                  f"{', '.join(new[:3])}{', ...' if len(new) > 3 else ''}): resume them once it ends" if new else ""))
    print(status.totals(states) + _next_step(states, args, "status" if running else None, _last_profile(folder),
                                             last.get("data_root")))
    return 0


def _foreign_note(folder: Path, plan) -> None:
    """Say so where the sweep's folder holds finished jobs that this sweep file does not plan, and
    where Slurm still runs or queues tasks of such jobs."""
    from sweep import state, status

    tasks = status.unplanned_active(plan, folder)
    if tasks:
        print(f"note: {_count(len(tasks), 'Slurm task')} of jobs that {plan.sweep.path or plan.sweep.name} no longer "
              f"plans (submitted before it changed) still queued or running: scancel {' '.join(tasks)} to stop them")
    n = state.foreign_done(folder, plan)
    if n:
        print(f"note: {folder / 'jobs'} holds {_count(n, 'finished job')} of other settings than "
              f"{plan.sweep.path or plan.sweep.name} plans (the file changed since they ran, or another sweep "
              "file of this name ran here): kept, not in this status or collect")


def _next_step(states: list, args: argparse.Namespace, step: str | None = None, profile: str | None = None,
               data_root: str | None = None) -> str:
    """``  ->  kdsweep resume SWEEP [--results DIR]``: the command that moves the sweep on from ``states``
    (``step`` where the caller knows it): resume what is neither done nor active; else wait for what
    is active elsewhere (status); else collect. ``profile``: resume submits to SLURM with it;
    ``data_root``: the one the sweep last ran with (``args.data_root`` where the command has one)."""
    from sweep import state, status

    if step is None:
        left = any(s.state != state.DONE and not status.active(s) for _, s in states)  # resume runs it
        elsewhere = any(status.active(s) for _, s in states)  # on Slurm, or another run: wait for it
        step = "resume" if left else "status" if elsewhere else "collect"
        if profile and any(s.unasked for _, s in states):  # a Slurm resume would refuse: what Slurm runs
            step = "status"  # is not known here
    results = f" --results {shlex.quote(str(args.results))}" if args.results != Path("results") else ""
    to = f" --profile {shlex.quote(profile)}" if step == "resume" and profile else ""
    root = getattr(args, "data_root", None) or data_root
    here = os.environ.get("KDSWEEP_DATA")  # this shell's: resume reads it already
    if root and here and Path(here).resolve() == Path(root).resolve():
        root = None
    to += f" --data-root {shlex.quote(str(root))}" if step == "resume" and root else ""
    limit = f" --max-jobs {args.max_jobs}" if getattr(args, "max_jobs", None) is not None else ""
    where = " where Slurm answers (the cluster's login node)" if profile and any(s.unasked for _, s in states) else ""
    return f"  ->  kdsweep {step} {shlex.quote(args.sweep)}{results}{limit}{to}{where}"


def _last_profile(folder: Path) -> str | None:
    """The profile of the sweep's latest SLURM submission, as --profile takes it: a bundled one's
    name, another's file; the name it gave itself where the record is older than that."""
    from sweep import profile, slurm

    try:
        record = slurm.read_record(folder)
    except UserError:  # damaged: status has said so
        return None
    if record:
        path, name = record[-1].get("profile_file"), record[-1].get("profile")
    elif latest := slurm.submitted_with(folder):  # the record lost (slurm/ deleted): plan.json says it still
        path, name = latest.get("file"), latest["name"]
    else:
        return None
    if not path:
        return name
    bundled = any(Path(path).parent == d.resolve() for d in profile.PROFILE_DIRS)
    return Path(path).stem if bundled else path


def _add_collect(sub) -> None:
    p = sub.add_parser("collect", help="aggregate finished jobs into results.parquet, epochs.parquet and "
                                       "comparisons.parquet (each point against its baseline, seed by seed)")
    _sweep_args(p)
    _max_jobs_arg(p)


def _cmd_collect(args: argparse.Namespace) -> int:
    import pandas as pd

    from sweep import api, compare

    _check_folder(args.results, "--results", write=False)  # a file there: said as run and status say it
    c = api.collect(args.sweep, results_root=args.results, max_jobs=args.max_jobs)
    df = pd.read_parquet(c.results) if c.rows else None
    pct = lambda v: "-" if pd.isna(v) else f"{100 * v:.2f}%"  # noqa: E731
    # the settings that tell rows apart besides alpha and T (lr, epochs, subclasses ...): a column each
    other = [] if df is None else [k for k in compare.varying_settings(df) if k not in ("alpha", "temperature")]
    value = lambda v: "-" if v is None or (not isinstance(v, str) and pd.isna(v)) else _fmt(v)  # noqa: E731
    if df is not None and df["seed"].nunique() == 1 and c.rows <= 60:
        df = df.sort_values(["method", "alpha", "temperature", *other, "seed"], na_position="first")
        rows = [[r["name"], r["method"], value(r["alpha"]), value(r["temperature"]),
                 *[value(r[k]) for k in other], pct(r["test_accuracy"])] for _, r in df.iterrows()]
        print(_table(["name", "method", "alpha", "T", *other, "test accuracy"], rows))
        print()
    elif df is not None:
        means = compare.point_means(df)
        if len(means) <= 60:
            rows = [[r["method"], value(r.get("alpha")), value(r.get("temperature")),
                     *[value(r[k]) if k in r else "-" for k in other], str(r["n_seeds"]), pct(r["mean"]),
                     compare.no_interval(r["n_seeds"]) if pd.isna(r["ci_low"])
                     else f"{pct(r['ci_low'])} to {pct(r['ci_high'])}"]
                    for _, r in means.iterrows()]
            print(_table(["method", "alpha", "T", *other, "seeds", "mean test accuracy", "95% CI"], rows))
            print()
    comparisons = pd.read_parquet(c.comparisons) if c.comparisons else None
    if comparisons is not None and len(comparisons):
        for line in compare.summary(comparisons):
            print(line)
        if len(comparisons) <= 60:
            for _, r in comparisons.iterrows():
                print(f"  {compare.describe(r)}")
        print()
    print(f"{c.rows} finished jobs -> {c.results}")
    print(f"{' ' * len(str(c.rows))} per-epoch rows  -> {c.epochs}")
    if c.comparisons:
        print(f"{' ' * len(str(c.rows))} comparisons     -> {c.comparisons}")
    if c.code_diff:
        print(f"{' ' * len(str(c.rows))} code changes    -> {c.code_diff}")
    if c.foreign:
        print(f"note: {c.results.parent / 'jobs'} holds {_count(c.foreign, 'finished job')} of other settings than "
              "the sweep file plans (it changed since they ran?): not in these tables")
    if c.missing:
        print(f"not finished ({len(c.missing)}), not in the table:")
        for name, st, detail in c.missing:
            print(f"  {name}: {st}" + (f" ({detail})" if detail else ""))
    return 0


def _add_plot(sub) -> None:
    p = sub.add_parser("plot", help="draw the summary figures (PNG) from the Parquet files")
    _sweep_args(p)
    _max_jobs_arg(p)


def _cmd_plot(args: argparse.Namespace) -> int:
    from sweep import api

    from sweep import collect, plots, report

    _check_folder(args.results, "--results", write=False)  # a file there: said as run and status say it
    plan = _load_plan(args)
    folder = api.folder(plan, args.results)
    results = collect.current_results(plan, folder)  # not the table of an earlier sweep file (as api.plot)
    for path in plots.plot_all(folder, results=results):
        print(path)
    # jobs done since the table was collected: not in these figures, as report says
    later = sum(st == "done after collect" for _, st, _ in report.unfinished_jobs(plan, folder, results))
    if later:
        print(f"note: {_count(later, 'job')} finished since the last collect {'is' if later == 1 else 'are'} not in "
              f"these figures: run 'kdsweep collect' again")
    return 0


def _add_report(sub) -> None:
    p = sub.add_parser("report", help="one self-contained HTML report (and a Markdown twin) of the collected results",
                       description="Write results/<name>/report.html (figures inline, no network needed) and "
                                   "report.md: the sweep file, the plan, the results, the paired comparisons "
                                   "in words, the figures, unfinished jobs and provenance.",
                       epilog="example: kdsweep run demo && kdsweep collect demo && kdsweep report demo")
    _sweep_args(p)
    _max_jobs_arg(p)


def _cmd_report(args: argparse.Namespace) -> int:
    from sweep import api

    _check_folder(args.results, "--results", write=False)  # a file there: said as run and status say it
    written = api.report(args.sweep, results_root=args.results, max_jobs=args.max_jobs)
    for line in written.headline:
        print(line)
    print(f"report -> {written.html}")
    print(f"          {written.markdown}")
    return 0


def _add_weights(sub) -> None:
    sub.add_parser("weights", help="download the ImageNet weights of MHIST's models into torchvision's cache "
                   "(needs a network: use a login node)")


def _cmd_weights(args: argparse.Namespace) -> int:
    import torch

    from kd import models

    for name in models.IMAGENET_MODELS:
        try:
            models.build(name, 2, (3, 224, 224), pretrained="imagenet")
        except UserError as e:  # its hint is this command
            raise UserError(str(e), hint="run it where download.pytorch.org answers (a login node), then share "
                                         f"{torch.hub.get_dir()}/checkpoints (TORCH_HOME) with the jobs") from None
        print(f"{name}: {models.imagenet_weights(name)} in {torch.hub.get_dir()}/checkpoints")
    return 0


def _add_models(sub) -> None:
    sub.add_parser("models", help="parameters and FLOPs of every model, as the reference study compared them")


def _cmd_models(args: argparse.Namespace) -> int:
    import torch

    from kd import models
    from kd.train import flops_per_sample

    rows = []
    for name, shape, classes in (("mnist-cnn", (1, 28, 28), 10), ("mnist-mlp", (1, 28, 28), 10),
                                 ("resnet50", (3, 224, 224), 2), ("mobilenet_v2", (3, 224, 224), 2)):
        m = models.build(name, classes, shape, pretrained="none")
        fwd = flops_per_sample(m, shape, torch.device("cpu"))
        rows.append([name, "x".join(map(str, shape)), str(classes), f"{models.count_params(m):,}",
                     str(len(list(m.parameters()))), f"{fwd / 1e6:,.1f}", f"{256 * fwd / 1e9:,.1f}"])
    print(_table(["model", "input", "classes", "parameters", "tensors (unfreeze_from)", "MFLOP/sample (fwd)",
                  "GFLOP/batch of 256"], rows))
    return 0


COMMANDS = {"train": (_add_train, _cmd_train), "data": (_add_data, _cmd_data),
            "weights": (_add_weights, _cmd_weights), "models": (_add_models, _cmd_models),
            "plan": (_add_plan, _cmd_plan), "run": (_add_run, _cmd_run),
            "resume": (lambda sub: _add_run(sub, "resume"), _cmd_run), "status": (_add_status, _cmd_status),
            "collect": (_add_collect, _cmd_collect), "plot": (_add_plot, _cmd_plot),
            "report": (_add_report, _cmd_report)}


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="kdsweep", description="Knowledge-distillation sweeps: plan, run, resume, collect, plot.")
    parser.add_argument("--debug", action="store_true", help="show tracebacks for errors")
    parser.add_argument("-q", "--quiet", action="store_true", help="only warnings in the log")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND", parser_class=_Parser)
    for add, _ in COMMANDS.values():
        add(sub)
    for command in sub.choices.values():  # also after the command (kdsweep status s.toml --debug), as users type them
        command.add_argument("--debug", action="store_true", default=argparse.SUPPRESS, help=argparse.SUPPRESS)
        command.add_argument("-q", "--quiet", action="store_true", default=argparse.SUPPRESS, help=argparse.SUPPRESS)
    return parser


def _one_line(text: str) -> str:
    """A message as one line: control characters (from a key, value or path that holds them) escaped."""
    from sweep.profile import CONTROL

    return CONTROL.sub(lambda m: m.group().encode("unicode_escape").decode(), text)


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    debug, args = False, None
    try:
        args, extra = build_parser().parse_known_args(argv)
        if extra:  # argparse's top parser says so, naming itself: the command's own help lists the flags
            after = args.command in argv and argv.index(extra[0]) > argv.index(args.command)  # typed after it
            who = f"kdsweep {args.command}" if after else "kdsweep"
            raise UserError(f"{who}: unrecognized arguments: {' '.join(extra)}", hint=f"see '{who} --help'")
        debug = args.debug
        logs.setup(logging.WARNING if args.quiet else logging.INFO)
        return COMMANDS[args.command][1](args)
    except UserError as e:
        if debug:
            raise
        print(f"error: {_one_line(str(e))}", file=sys.stderr)
        if e.hint:
            print(f"hint: {_one_line(e.hint)}", file=sys.stderr)
        return 2
    except BrokenPipeError:  # output piped into head or less, which closed early
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())  # no second error as Python exits
        if getattr(args, "command", None) in ("run", "resume"):  # not a reader's choice: work stopped midway
            try:
                print("error: the output closed (its pipe's reader ended): the run stopped, its running jobs "
                      "checkpointed; 'kdsweep resume' goes on from there", file=sys.stderr)
            except OSError:
                pass
            return 1
        sys.stderr.close()
        return 0
    except OSError as e:
        if debug or e.errno not in (errno.EACCES, errno.EPERM, errno.EROFS, errno.ENOSPC, errno.EDQUOT,
                                    errno.ENAMETOOLONG, errno.ELOOP):
            raise
        # a folder the user may not read or write (a colleague's results, a read-only mount, a full disk)
        where = e.filename or e.filename2
        print(f"error: {_one_line(str(where)) + ': ' if where else ''}{e.strerror}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
