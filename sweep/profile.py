"""Cluster profiles (TOML under slurm/profiles/, or a user's own file), validated like sweep files.

    name = "my-cluster"
    partition = "gpu"
    account = "proj123"            # optional, as are qos and constraint
    time = "02:00:00"              # per job: minutes, "HH:MM:SS" or "D-HH:MM:SS"
    gpus = 1                       # per job
    cpus = 8
    mem_gb = 32
    array_parallelism = 16         # array tasks running at once
    pack = "auto"                  # jobs per array task (one GPU), unless the sweep file says
    signal_delay_s = 120           # warning signal (USR2) this long before the time limit
    max_requeue = 3                # requeues after time limits (preemptions requeue always)
    sbatch = { mail-type = "FAIL" }  # any other sbatch option
    setup = ["module load cuda"]   # shell lines before the job
    [container]
    runtime = "apptainer"          # none | apptainer | charliecloud | pyxis
    image = "/shared/images/kd.sif"
    binds = ["/scratch"]
    nv = true                      # Apptainer's --nv (Charliecloud: ch-fromhost --nvidia on the image, once)
"""
from __future__ import annotations

import math
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from kd.errors import UserError
from sweep.spec import check_pack, read_toml, unknown_key

RUNTIMES = ("none", "apptainer", "charliecloud", "pyxis")
# this folder's (a copy edited), the checkout's, and the installed package's (sweep/profiles links to slurm/profiles)
PROFILE_DIRS = (Path("slurm/profiles"), Path(__file__).resolve().parent.parent / "slurm" / "profiles",
                Path(__file__).resolve().parent / "profiles")
KEYS = {"name": str, "description": str, "partition": str, "account": str, "qos": str, "constraint": str,
        "time": (str, int), "gpus": int, "cpus": int, "mem_gb": (int, float), "array_parallelism": int,
        "signal_delay_s": int, "max_requeue": int, "pack": (int, str), "sbatch": dict, "setup": list, "python": str, "container": dict}
CONTAINER_KEYS = {"runtime": str, "image": str, "binds": list, "nv": bool, "python": str}
WORD = re.compile(r"[A-Za-z0-9_.,:+@%-]+")  # partition, account, qos names: no spaces or shell characters
# (lowest, highest, lowest excluded) of each number: far beyond any cluster's, low enough to catch a typo
RANGES = {"gpus": (0, 64, False), "cpus": (1, 4096, False), "mem_gb": (0, 100_000, True),
          "array_parallelism": (1, 1_000_000, False), "signal_delay_s": (0, 86_400, False), "max_requeue": (0, 1000, False)}
# Control characters and what str.splitlines() also breaks at (newline, tab, NUL, escape, NEL, U+2028 ...)
CONTROL = re.compile("[\x00-\x1f\x7f-\x9f\u2028\u2029]")


@dataclass(frozen=True)
class Container:
    runtime: str = "none"
    image: str = ""
    binds: tuple[str, ...] = ()
    nv: bool = True
    python: str = "python3"  # the python inside the image


@dataclass(frozen=True)
class Profile:
    name: str
    partition: str | None = None
    account: str | None = None
    qos: str | None = None
    constraint: str | None = None
    time_min: int = 60
    gpus: int = 1
    cpus: int = 4
    mem_gb: float | None = None
    array_parallelism: int = 64
    signal_delay_s: int = 120
    max_requeue: int = 3
    sbatch: tuple[tuple[str, Any], ...] = ()
    setup: tuple[str, ...] = ()
    python: str | None = None  # host python (runtime none); default: the submitting interpreter
    container: Container = field(default_factory=Container)
    pack: int | str | None = None  # jobs per array task, unless the sweep file says
    description: str = ""
    path: Path | None = None


def resolve_path(arg: str | Path) -> Path:
    p = Path(arg)
    if p.is_file():
        return p
    if p.parent == Path("."):
        for d in PROFILE_DIRS:
            if (d / f"{p.stem}.toml").is_file():
                return d / f"{p.stem}.toml"
    known = sorted({f.stem for d in PROFILE_DIRS if d.is_dir() for f in d.glob("*.toml")})
    raise UserError(f"{p}: no such profile file (bundled profiles: {', '.join(known)})")


def load(arg: str | Path) -> Profile:
    path = resolve_path(arg)
    return parse(read_toml(path), path)


def _check_types(raw: dict[str, Any], types: dict[str, Any], where: str) -> None:
    for key, value in raw.items():
        if key not in types:
            raise unknown_key(where, key, types)
        want = types[key]
        if not isinstance(value, want) or (isinstance(value, bool) and want is not bool):
            names = "/".join(t.__name__ for t in (want if isinstance(want, tuple) else (want,)))
            raise UserError(f"{where}{key}: expected {names}, got {value!r}")
        _check_text(value, f"{where}{key}")


def _check_text(value: Any, at: str) -> None:
    """Refuse control characters (a newline above all) in every string, however deep: each string
    lands on a line of the sbatch script, and a newline would put a line of its own there."""
    if isinstance(value, dict):  # keys: checked against the known ones (sbatch's against a pattern)
        for k, v in value.items():
            _check_text(v, f"{at}.{k}")
    elif isinstance(value, list):
        for i, v in enumerate(value):
            _check_text(v, f"{at}[{i}]")
    elif isinstance(value, str) and CONTROL.search(value):
        char = CONTROL.search(value).group()
        raise UserError(f"{at}: {value!r} contains a control character (U+{ord(char):04X}): each value must be "
                        "one line of text, or it would add lines of its own to the sbatch script")


MAX_TIME_MIN = 365 * 1440  # far beyond any partition's limit; a time over it is a typo


def parse_time(value: str | int, where: str) -> int:
    """Minutes from 90, "90", "01:30:00", "1-00:00:00" (sbatch's forms)."""
    if isinstance(value, int):
        minutes = value
    else:
        m = re.fullmatch(r"(?:(\d+)-)?(\d+)(?::(\d+))?(?::(\d+))?", value.strip())
        if not m:
            raise UserError(f"{where}time: {value!r} is not a time (minutes, 'HH:MM:SS' or 'D-HH:MM:SS')")
        d, a, b, c = (int(x) if x else 0 for x in m.groups())
        if m.group(3) is None:  # "MM" or "D-HH"
            minutes = d * 1440 + (a * 60 if m.group(1) else a)
        elif m.group(4) is None:  # "HH:MM" or "MM:SS"
            minutes = d * 1440 + (a * 60 + b if m.group(1) else a + (b > 0))
        else:
            minutes = d * 1440 + a * 60 + b + (c > 0)
        # a field past its clock's range is a typo ("01:75:00"), not a time sbatch reads as meant
        fields = [x for x in m.groups()[1:] if x is not None]
        if (m.group(1) and int(fields[0]) > 23) or any(int(x) > 59 for x in fields[1:]):
            raise UserError(f"{where}time: {value!r}: hours are 0-23 after a day, minutes and seconds 0-59 "
                            "('D-HH:MM:SS', 'HH:MM:SS', 'MM:SS', or minutes alone)")
    if minutes < 1:
        raise UserError(f"{where}time: {value!r} must be at least one minute")
    if minutes > MAX_TIME_MIN:
        raise UserError(f"{where}time: {value!r} is {minutes:,} minutes, over a year: the most is 365 days "
                        f"({MAX_TIME_MIN:,} minutes; 'D-HH:MM:SS' or 'HH:MM:SS' also do)")
    return minutes


# sbatch options a profile's [sbatch] table may not give: kd-sweep's own (long name), and those the
# profile has a key of its own for (which kd-sweep checks: the time against signal_delay_s, ...)
SBATCH_OWN = {**{k: k for k in ("array", "dependency", "job-name", "output", "error", "signal", "nodes", "ntasks",
                                 "ntasks-per-node", "kill-on-invalid-dep", "open-mode", "wrap", "parsable",
                                 "requeue", "no-requeue")},
              "a": "array", "d": "dependency", "o": "output", "e": "error", "n": "ntasks"}
SBATCH_KEYS = {"time": "time", "t": "time", "partition": "partition", "p": "partition", "account": "account",
               "qos": "qos", "q": "qos", "constraint": "constraint", "mem": "mem_gb", "cpus-per-task": "cpus",
               "c": "cpus", "gpus": "gpus", "gpus-per-node": "gpus"}


def parse(raw: dict[str, Any], path: Path | None = None) -> Profile:
    f = f"{path}: " if path else ""
    _check_types(raw, KEYS, f)
    name = raw.get("name") or (path.stem if path else "profile")
    for key in ("partition", "account", "qos", "constraint"):
        value = raw.get(key)
        if value is not None and (key != "constraint" and not WORD.fullmatch(value)):
            raise UserError(f"{f}{key}: {value!r} is not a valid Slurm name (no spaces or shell characters)")
    for key, (low, high, open_low) in RANGES.items():
        value = raw.get(key)
        if value is None:
            continue
        if not math.isfinite(value):
            raise UserError(f"{f}{key}: {value!r} must be a finite number")
        if value < low or (open_low and value == low):
            raise UserError(f"{f}{key}: {value!r} must be {'>' if open_low else '>='} {low}")
        if value > high:
            raise UserError(f"{f}{key}: {value!r} must be <= {high:,}")
    time_min = parse_time(raw.get("time", 60), f)
    delay = raw.get("signal_delay_s", Profile.signal_delay_s)
    if delay >= time_min * 60:
        given = "" if "signal_delay_s" in raw else " (the default)"
        raise UserError(f"{f}signal_delay_s: {delay}{given} must be less than the time limit ({time_min} minutes "
                        f"= {time_min * 60} s): the warning signal would come as the job starts")
    sbatch = raw.get("sbatch", {})
    for key, value in sbatch.items():
        if not isinstance(value, (str, int, bool)) or not re.fullmatch(r"[a-z][a-z0-9-]*", key):
            raise UserError(f"{f}sbatch.{key}: expected an sbatch option name = string, number or true")
        if key in SBATCH_OWN:
            raise UserError(f"{f}sbatch.{key}: kd-sweep sets --{SBATCH_OWN[key]} itself (arrays, teachers before "
                            "students, logs, the warning signal): it cannot be given here")
        if key in SBATCH_KEYS:
            raise UserError(f"{f}sbatch.{key}: use the profile's own key: {SBATCH_KEYS[key]} = ...",
                            hint="kd-sweep checks it and builds the sbatch option from it")
    setup = raw.get("setup", [])
    if not all(isinstance(line, str) for line in setup):
        raise UserError(f"{f}setup: expected a list of shell lines")
    container_raw = raw.get("container", {})
    _check_types(container_raw, CONTAINER_KEYS, f"{f}container.")
    runtime = container_raw.get("runtime", "none")
    if runtime not in RUNTIMES:
        raise UserError(f"{f}container.runtime: {runtime!r} is not one of {', '.join(RUNTIMES)}")
    if runtime != "none" and not container_raw.get("image"):
        raise UserError(f"{f}container.image: runtime '{runtime}' needs an image")
    binds = container_raw.get("binds", [])
    if not all(isinstance(b, str) and b and "," not in b for b in binds):
        raise UserError(f"{f}container.binds: expected a list of paths ('SRC' or 'SRC:DST', no commas: "
                        f"Apptainer and pyxis split bind lists at commas), got {binds!r}")
    container = Container(runtime=runtime, image=container_raw.get("image", ""), binds=tuple(binds),
                          nv=container_raw.get("nv", True), python=container_raw.get("python", "python3"))
    return Profile(
        name=name, partition=raw.get("partition"), account=raw.get("account"), qos=raw.get("qos"),
        constraint=raw.get("constraint"), time_min=time_min,
        gpus=raw.get("gpus", 1), cpus=raw.get("cpus", 4), mem_gb=raw.get("mem_gb"),
        array_parallelism=raw.get("array_parallelism", 64), signal_delay_s=delay,
        max_requeue=raw.get("max_requeue", 3), sbatch=tuple(sbatch.items()), setup=tuple(setup),
        python=raw.get("python"), container=container, pack=check_pack(raw.get("pack"), f"{f}pack"),
        description=raw.get("description", ""), path=path)


def check_for_submission(profile: Profile, mounts: list[str] = ()) -> None:
    """What can only be checked where the jobs are submitted: the image exists, and (Charliecloud)
    each folder the jobs need can be bound into it."""
    c = profile.container
    where = f"{profile.path or profile.name}: container.image"
    if c.runtime == "apptainer" and not c.image.startswith(("docker://", "oras://", "library://")):
        if not Path(c.image).is_file():
            raise UserError(f"{where}: {c.image} does not exist",
                            hint="build it: apptainer build kd.sif docker-daemon://kd-sweep:latest")
    if c.runtime == "charliecloud":
        image = Path(c.image)
        if not image.is_dir() and not image.is_file():
            raise UserError(f"{where}: {c.image} does not exist",
                            hint="make a directory image: make image ch-image CH_IMAGE=" + c.image)
        if image.is_dir():  # ch-run binds only onto directories the (read-only) image has; /tmp is the host's
            for bind in [*c.binds, *mounts]:
                dst = Path(bind.split(":", 1)[-1])
                if not dst.is_relative_to("/tmp") and not (image / str(dst).lstrip("/")).is_dir():
                    raise UserError(f"{where}: {c.image} has no directory {dst}: ch-run binds only onto "
                                    "directories that exist in the image",
                                    hint=f"add it to the image (RUN mkdir -p {dst} in the Dockerfile) or bind "
                                         "the folder elsewhere ('SRC:DST' in container.binds)")
