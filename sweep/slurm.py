"""What Slurm knows of a sweep: the saved submissions, and sacct's (or squeue's) view of them.

``results/<sweep>/slurm/submissions.json`` maps each submitted job to its Slurm id
(``ARRAY_TASK`` for arrays); it is written before ``run`` returns, so any later shell can
ask Slurm about the sweep.
"""
from __future__ import annotations

import json
import os
import pickle
import re
import shutil
import subprocess
import time
from pathlib import Path
from typing import Any

from kd import atomic

RECORD = "slurm/submissions.json"
LEVEL_NAMES = ("first", "students")  # the arrays of a plan's levels, named <sweep>-<level>
SLURM_ID = re.compile(r"\d+(_\d+)?")
# sacct state -> (our state, reason)
SACCT = {
    "PENDING": ("queued", ""), "REQUEUED": ("queued", "requeued"), "REQUEUE_HOLD": ("queued", "requeued, held"),
    "REQUEUE_FED": ("queued", "requeued"), "RESIZING": ("running", ""), "SUSPENDED": ("running", "suspended"),
    "RUNNING": ("running", ""), "COMPLETING": ("running", "completing"), "CONFIGURING": ("running", ""),
    "PREEMPTED": ("queued", "preempted"), "COMPLETED": ("failed", "ended without a result"),
    "FAILED": ("failed", "exit code"), "OUT_OF_MEMORY": ("failed", "out of memory"),
    "TIMEOUT": ("failed", "time limit"), "NODE_FAIL": ("failed", "node failure"), "BOOT_FAIL": ("failed", "boot failure"),
    "DEADLINE": ("failed", "deadline"), "CANCELLED": ("cancelled", ""), "REVOKED": ("cancelled", "revoked"),
}
SQUEUE = {"PD": "queued", "R": "running", "CG": "running", "CF": "running", "S": "running", "RQ": "queued",
          "RH": "queued", "RS": "running", "PR": "queued", "SE": "queued"}


def read_record(folder: Path) -> list[dict[str, Any]]:
    from kd.errors import UserError

    path = folder / RECORD
    try:
        record = json.loads(path.read_text())
    except FileNotFoundError:
        return []
    except ValueError as e:
        record = e
    if not (isinstance(record, list) and all(isinstance(r, dict) and isinstance(r.get("jobs"), dict) for r in record)):
        why = f"not JSON: {record}" if isinstance(record, Exception) else "not a list of submissions"
    else:
        odd = next((f"{jid!r}: {sid!r}" for r in record for jid, sid in r["jobs"].items()
                    if not (isinstance(sid, str) and SLURM_ID.fullmatch(sid))), None)
        why = odd and f"{odd} is not a Slurm job id such as \"1234\" or \"1234_5\""
    if why:
        raise UserError(f"{path}: damaged ({why}); it says which Slurm jobs run this sweep",
                        hint="restore it, or move it aside and scancel this sweep's queued jobs: without it status "
                             "goes by the job folders alone, and resume submits again what Slurm still holds")
    return record


def add_submission(folder: Path, level: str, slurm_ids: dict[str, str], profile: str,
                   profile_file: Path | None = None, name: str | None = None, found: bool = False) -> None:
    """Record an array: its level, profile, when, each job's task id, and the array's Slurm job name
    (by which status tells this sweep's task from another job that got its id since); ``found``: an
    array found in Slurm's queue, recorded again (its profile is the one of the resume that found it)."""
    record = read_record(folder)
    record.append({"level": level, "profile": profile, "submitted": time.strftime("%Y-%m-%dT%H:%M:%S"),
                   **({"name": name} if name else {}), **({"found_in_queue": True} if found else {}),
                   "folder": os.path.realpath(folder),  # its tasks train this folder's jobs, not a copy's
                   "jobs": slurm_ids, **({"profile_file": str(profile_file.resolve())} if profile_file else {})})
    atomic.write_json(folder / RECORD, record)


def elsewhere(folder: Path) -> list[str]:
    """The folders, other than ``folder``, that its record's arrays were submitted from (a results
    folder copied or moved since): their tasks train the jobs there, not here."""
    here = os.path.realpath(folder)
    return sorted({sub["folder"] for sub in read_record(folder) if isinstance(sub.get("folder"), str)
                   and sub["folder"] != here})


def _here(folder: Path) -> list[dict[str, Any]]:
    """The record's submissions made from this folder (all of a record older than their "folder")."""
    here = os.path.realpath(folder)
    return [sub for sub in read_record(folder) if sub.get("folder", here) == here]


def submitted_ids(folder: Path) -> dict[str, list[str]]:
    """Each submitted job's Slurm ids, oldest first (a job submitted again has several), of the
    arrays submitted from this folder."""
    out: dict[str, list[str]] = {}
    for sub in _here(folder):
        for jid, sid in sub["jobs"].items():
            out.setdefault(jid, []).append(sid)
    return out


def submitted_names(folder: Path) -> dict[str, str]:
    """Each recorded Slurm id -> the job name it was submitted under (where its record says)."""
    return {sid: sub["name"] for sub in _here(folder) if isinstance(sub.get("name"), str)
            for sid in sub["jobs"].values()}


def unrecorded(folder: Path) -> dict[str, tuple[str, dict[str, str], list[str]]]:
    """Arrays that Slurm holds (queued or running) for this user, submitted from this sweep's folder
    (their batch script is under its slurm/), that its record does not list (the record lost, or put
    back from an older copy): array id -> (its job name, job id -> task id, the tasks whose own
    submitit files are gone, so that what they train is unknown), from the tasks' submitit files.
    Empty where nothing was submitted from here or Slurm cannot be asked."""
    base = folder / "slurm"
    if not (base.is_dir() or submitted_with(folder)) or not shutil.which("squeue"):
        return {}  # never submitted from here (a local sweep): Slurm is not asked
    recorded = {sid.split("_")[0] for sids in submitted_ids(folder).values() for sid in sids}
    try:  # -r: a line per task; %F: the array's id (%A is each task's own job id once it runs)
        p = subprocess.run(["squeue", "--me", "-h", "-r", "-o", "%F|%i|%j|%Z|%o"], capture_output=True, text=True,
                           timeout=60)
    except (OSError, subprocess.TimeoutExpired):
        return {}
    if p.returncode != 0:
        return {}
    here = os.path.realpath(base) + os.sep
    out: dict[str, tuple[str, dict[str, str], list[str]]] = {}
    for line in p.stdout.splitlines():
        array, task, name, workdir, script = (line.split("|", 4) + ["", "", "", ""])[:5]
        if not array.isdigit() or array in recorded \
                or not os.path.realpath(os.path.join(workdir, script)).startswith(here):
            continue
        _, jobs, unread = out.setdefault(array, (name, {}, []))
        try:
            with open(base / task / f"{task}_submitted.pkl", "rb") as f:
                call = pickle.load(f)  # submitit's, written by kd-sweep's submission: (job folders, data root)
            jobs.update({Path(job).name: task for job in call.args[0]})
        except Exception:  # noqa: BLE001 - gone, or not of this shape: what it trains is unknown
            unread.append(task)
    return dict(sorted(out.items(), key=lambda kv: int(kv[0])))  # submitted in this order: teachers first


def submitted_with(folder: Path) -> dict[str, str] | None:
    """The profile of the latest SLURM submission as plan.json records it ({"name", "file"}), where
    the latest run of the sweep was one (a local run after it records none)."""
    try:
        profile = json.loads((folder / "plan.json").read_text()).get("profile")
    except (OSError, ValueError, AttributeError):
        return None
    return profile if isinstance(profile, dict) and isinstance(profile.get("name"), str) else None


def latest_ids(folder: Path) -> dict[str, str]:
    """Each submitted job's latest Slurm id."""
    return {jid: sids[-1] for jid, sids in submitted_ids(folder).items()}


class Unreachable(Exception):
    """Neither sacct nor squeue answered (no controller, no Slurm commands here): what Slurm runs is unknown."""


def query(slurm_ids: list[str], names: dict[str, str | tuple[str, ...]] | None = None) -> dict[str, tuple[str, str]]:
    """Slurm id -> (our state, reason); sacct where accounting exists, squeue otherwise.
    ``Unreachable`` when neither answers: an id missing from an answer means Slurm forgot it, which
    must not be said of ids no one could ask about. ``names``: the job name each id was submitted
    under; an id that Slurm holds under another name is another job's (Slurm's ids start again after
    its state is lost, or on another cluster): Slurm forgot ours."""
    if not slurm_ids:
        return {}
    names = names or {}
    accounted = _sacct(slurm_ids, names) if shutil.which("sacct") else None
    found = dict(accounted or {})
    # squeue for what sacct does not know yet (no accounting, or slurmdbd behind), and for why a queued
    # job waits (a requeued job held until its BeginTime, a dependency that can never be satisfied)
    ask = [i for i in slurm_ids if i not in found or found[i][0] == "queued"]
    if ask:
        try:
            queued = _squeue(ask, names)
        except Unreachable:
            if accounted is None or any(i not in accounted for i in ask):  # an id no one could answer for
                raise
            queued = {}
        for jid, (st, reason) in queued.items():
            if jid not in found or (st == "queued" and reason):
                found[jid] = (st, reason or found.get(jid, ("", ""))[1])
    return found


def cancel(slurm_ids: list[str]) -> None:
    """scancel these tasks (students stranded behind a failed teacher); a task already gone is no error."""
    from kd.errors import UserError

    p = subprocess.run(["scancel", *slurm_ids], capture_output=True, text=True, timeout=60)
    if p.returncode != 0 and "Invalid job id" not in p.stderr:
        raise UserError(f"scancel {' '.join(slurm_ids)} failed: {p.stderr.strip().splitlines()[-1:]}")


def _expand(jobid: str) -> list[str]:
    """``12_[0-3,5%2]`` (a pending array in sacct) -> 12_0 .. 12_3, 12_5."""
    m = re.fullmatch(r"(\d+)_\[([^\]]+)\]", jobid)
    if not m:
        return [jobid]
    out = []
    for part in m.group(2).split("%")[0].split(","):
        lo, _, hi = part.partition("-")
        out += [f"{m.group(1)}_{i}" for i in range(int(lo), int(hi or lo) + 1)]
    return out


def _sacct(slurm_ids: list[str], names: dict[str, str]) -> dict[str, tuple[str, str]] | None:
    arrays = sorted({i.split("_")[0] for i in slurm_ids})
    try:
        p = subprocess.run(["sacct", "-n", "-P", "-X", "-D", "--format=JobID,State,ExitCode,JobName",
                            "-j", ",".join(arrays)], capture_output=True, text=True, timeout=60)
    except (OSError, subprocess.TimeoutExpired):
        return None
    if p.returncode != 0:
        return None
    found = parse_sacct(p.stdout, names)
    return {i: found[i] for i in slurm_ids if i in found}


def parse_sacct(text: str, names: dict[str, str] | None = None) -> dict[str, tuple[str, str]]:
    """Slurm id -> (our state, reason) from ``sacct -n -P -X -D --format=JobID,State,ExitCode,JobName``
    (or without JobName); a line of another name than ``names`` gives its id is another job's."""
    found: dict[str, tuple[str, str]] = {}
    for line in text.splitlines():  # with -D, one line per attempt, oldest first: the last one wins
        parts = line.split("|", 3)
        if len(parts) < 3 or not parts[1].strip():
            continue
        jobid, st, code = parts[0], parts[1].split()[0], parts[2]
        others = _others(jobid, parts[3] if len(parts) > 3 else None, names)
        ours, reason = SACCT.get(st, ("running", st.lower()))
        if st == "FAILED":  # ExitCode is "code:signal"
            exit_code, _, signum = code.partition(":")
            reason = f"killed by {_signal_name(signum)}" if signum.strip() not in ("", "0") else f"exit code {exit_code}"
        for jid in _expand(jobid):
            if jid not in others:
                found[jid] = (ours, reason)
    return found


def _others(jobid: str, name: str | None, names: dict[str, str | tuple[str, ...]] | None) -> set[str]:
    """The ids in a line of sacct or squeue that belong to another job than the one submitted under
    them: Slurm holds them under another name (``names``: id -> the name it was submitted under)."""
    if name is None or not names:
        return set()
    return {jid for jid in _expand(jobid) if jid in names and name not in _as_tuple(names[jid])}


def _as_tuple(expected: str | tuple[str, ...]) -> tuple[str, ...]:
    return expected if isinstance(expected, tuple) else (expected,)


def sweep_names(sweep: str) -> tuple[str, ...]:
    """The job names kd-sweep gives the arrays of a sweep: what a task named in a job's
    attempt.json, unrecorded, must be called to be this sweep's."""
    return tuple(f"{sweep}-{level}" for level in LEVEL_NAMES)


def _signal_name(number: str) -> str:
    import signal

    try:
        return signal.Signals(int(number)).name
    except ValueError:
        return f"signal {number}"


def _squeue(slurm_ids: list[str], names: dict[str, str] | None = None) -> dict[str, tuple[str, str]]:
    if not shutil.which("squeue"):
        raise Unreachable("no squeue command on this machine")
    try:
        p = subprocess.run(["squeue", "-h", "-r", "-o", "%i|%t|%r|%S|%j", "-j",
                            ",".join(sorted({i.split('_')[0] for i in slurm_ids}))],
                           capture_output=True, text=True, timeout=60)
    except subprocess.TimeoutExpired:
        raise Unreachable("squeue did not answer in 60 s") from None
    except OSError as e:
        raise Unreachable(f"squeue: {e.strerror}") from None
    # 'Invalid job id': every one asked about has ended and been forgotten, an answer like any other
    if p.returncode != 0 and "Invalid job id" not in p.stderr:
        raise Unreachable(f"squeue: {(p.stderr.strip().splitlines() or [f'exit status {p.returncode}'])[-1]}")
    found = parse_squeue(p.stdout, names)
    # squeue forgets finished jobs: an id it does not list has ended (the job folder says how)
    return {i: found[i] for i in slurm_ids if i in found}


WAITING = {"BeginTime": "requeued, held until {start}", "DependencyNeverSatisfied": "its dependency can never be met",
           "Dependency": "waiting for its teacher",
           "JobHeldUser": "held: scontrol release {id} lets it start",
           "JobHeldAdmin": "held by an administrator: scontrol release {id} (as one) lets it start",
           "job requeued in held state": "requeued and held: scontrol release {id} lets it start",
           "PartitionConfig": "it asks more than its partition allows (cpus, gpus, memory or time) and will never "
                              "start: scancel {id}, fix the profile, then resume",
           "BadConstraints": "no node meets its constraint: scancel {id}, fix the profile, then resume",
           "PartitionTimeLimit": "it asks more time than its partition allows and will never start: scancel {id}, "
                                 "lower the profile's time, then resume",
           "PartitionNodeLimit": "the nodes it needs are down or drained, or it asks more than its partition "
                                 "allows (then scancel {id}, fix the profile, and resume)",
           "PartitionDown": "its partition is down: it starts when an administrator brings it up",
           "PartitionInactive": "its partition is inactive: it starts when an administrator brings it up",
           "InvalidAccount": "its account is not valid here and it will never start: scancel {id}, fix the "
                             "profile's account, then resume",
           "InvalidQOS": "its QOS is not valid here and it will never start: scancel {id}, fix the profile's qos, "
                         "then resume"}
# reasons by family: (prefix or prefixes, any of these within it, line), the first that fits; the nodes' own words
# differ between Slurm versions
# (22.05: "Nodes required for job are DOWN, DRAINED or reserved for jobs in higher priority partitions")
WAITING_LIKE = [(("ReqNodeNotAvail", "Nodes required for job are DOWN"), "",
                 "the nodes it needs are down, drained or reserved"),
                # a limit of its account or QOS on the job itself (per job, per node, a minimum, not allowed):
                # waiting does not move it; a limit on the group's or the user's jobs together does
                ("Assoc", "Grp|MaxJobs|MaxSubmit|PerUser|PerAccount", "held back by a limit of its account "
                                                                      "({reason}): it starts when the account's "
                                                                      "other jobs leave room"),
                ("QOS", "Grp|MaxJobs|MaxSubmit|PerUser|PerAccount", "held back by a limit of its QOS ({reason}): it "
                                                                    "starts when the QOS's other jobs leave room"),
                ("Assoc", "", "its request does not fit a limit of its account ({reason}) and will never "
                              "start: scancel {id}, fix the profile, then resume"),
                ("QOS", "", "its request does not fit a limit of its QOS ({reason}) and will never start: "
                            "scancel {id}, fix the profile, then resume")]


def _why(reason: str, start: str, jid: str) -> str:
    """squeue's reason for a pending job (``%r``) as status's line: why it waits, and what moves it."""
    line = WAITING.get(reason)
    if line is None:
        line = next((text for prefix, parts, text in WAITING_LIKE if reason.startswith(prefix)
                     and (not parts or any(p in reason for p in parts.split("|")))), "")
    return line.format(start=_clock(start), id=jid, reason=reason)


def parse_squeue(text: str, names: dict[str, str] | None = None) -> dict[str, tuple[str, str]]:
    """Slurm id -> (our state, why it waits) from ``squeue -h -r -o '%i|%t|%r|%S|%j'`` (or fewer
    fields: ``'%i|%t'``); a line of another name than ``names`` gives its id is another job's."""
    found = {}
    for line in text.splitlines():
        parts = line.split("|", 4)
        jobid, st, reason, start = (parts + ["", "", ""])[:4]
        others = _others(jobid.strip(), parts[4] if len(parts) > 4 else None, names)
        for jid in _expand(jobid.strip()):
            if jid in others:
                continue
            why = _why(reason.strip(), start.strip(), jid)
            found[jid] = (SQUEUE.get(st.strip(), "running"), why)
    return found


def _clock(start: str) -> str:
    """``2026-11-25T20:03:01`` -> ``20:03`` (today) or ``2026-11-26 20:03``."""
    day, _, clock = start.partition("T")
    return clock[:5] if day == time.strftime("%Y-%m-%d") else f"{day} {clock[:5]}".strip()
