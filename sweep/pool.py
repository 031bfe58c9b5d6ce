"""Long-lived worker processes for local runs: each imports torch once, then runs units one after
another (``python -m sweep.worker --serve``), so a sweep pays the interpreter and torch start-up
once per worker, not once per unit.

A unit is sent as one JSON line on the worker's stdin; the worker sends its exit status back as one
line on a pipe of its own (its stdout and stderr go into the unit's log). A unit that kills its
worker (a crash, the OOM killer) fails alone: the scheduler sees the worker's exit status as the
unit's, and the next unit gets a new worker.
"""
from __future__ import annotations

import json
import os
import select
import subprocess
import sys
import tempfile
import time
from pathlib import Path


class Worker:
    """One ``sweep.worker --serve`` process. ``run`` gives it a unit; ``poll`` says when it ended."""

    def __init__(self, env: dict[str, str], data_root: Path | None, device: str | None,
                 dataset: str | None = None) -> None:
        read, write = os.pipe()
        cmd = [sys.executable, "-m", "sweep.worker", "--serve", str(write)]
        if dataset:
            cmd += ["--read-ahead", dataset]
        if data_root:
            cmd += ["--data-root", str(data_root)]
        if device:
            cmd += ["--device", device]
        # its own output, outside any unit (an import that fails at its start, a crash between units):
        # kept in an unnamed file, and copied into the log of the unit it took down with it
        self._output = tempfile.TemporaryFile()
        self._seen = 0  # how much of it the units before the current one were told of
        self._log: Path | None = None
        self.last_line = ""  # the last line of that output, when it died in a unit
        self.proc = subprocess.Popen(cmd, stdin=subprocess.PIPE, stdout=self._output, stderr=self._output,
                                     pass_fds=(write,), env={**env, "KDSWEEP_RUN_PID": str(os.getpid())}, text=True)
        os.close(write)
        os.set_blocking(read, False)
        self._answers = os.fdopen(read, "rb", buffering=0)
        self._buffer = b""
        self.busy = False
        self.exiting = False  # stopped by a signal: it exits, and takes no other unit
        self.closed = False  # its answer pipe is at its end: nothing more will come from it

    @property
    def alive(self) -> bool:
        return self.proc.poll() is None

    def run(self, folders: list[Path], after: list[Path], log: Path) -> Task:
        request = {"folders": [str(f) for f in folders], "after": [str(a) for a in after], "log": str(log)}
        self.busy, self._log = True, log
        try:
            self.proc.stdin.write(json.dumps(request) + "\n")
            self.proc.stdin.flush()
        except BrokenPipeError:  # it died just now: answer() gives its exit status as the unit's
            pass
        return Task(self)

    def answer(self) -> int | None:
        """The exit status of the unit in flight: its answer, or the worker's own when it died."""
        try:
            chunk = self._answers.read()
        except BlockingIOError:
            chunk = None
        if chunk:
            self._buffer += chunk
        elif chunk == b"":  # its end of the pipe is closed: it is exiting (wait() then stops selecting it)
            self.closed = True
        if b"\n" in self._buffer:
            line, self._buffer = self._buffer.split(b"\n", 1)
            answer = json.loads(line)
            self.exiting = bool(answer.get("exiting"))
            self.busy = False
            self._seen = os.fstat(self._output.fileno()).st_size
            return int(answer["status"])
        if not self.alive:  # died in the unit: that is the unit's end
            self.busy = False
            self._report_output()
            return self.proc.returncode
        return None

    def _report_output(self, limit: int = 65536) -> None:
        """Its own output since the last unit ended (a traceback at its start, say) into the log
        of the unit it died in, and, when that output ends in a Python error, its last line in
        ``last_line``."""
        end = os.fstat(self._output.fileno()).st_size
        start = max(self._seen, end - limit)
        if end <= start or self._log is None:
            return
        text = os.pread(self._output.fileno(), end - start, start).decode(errors="replace")
        self._seen = end
        lines = [ln.strip() for ln in text.splitlines() if ln.strip()]
        if "Traceback (most recent call last)" in text:  # an error of its own, not a warning it printed
            self.last_line = lines[-1][:300]
        with open(self._log, "a") as f:
            f.write(f"--- the worker process (pid {self.proc.pid}) before it ended ---\n{text}")

    def close(self) -> None:
        """Ask an idle worker to exit (end of input), and reap it."""
        self.end()
        self.reap()

    def end(self) -> None:
        """Ask an idle worker to exit (the end of its input): it exits at once, freeing its device
        memory meanwhile (a CUDA context's teardown takes a few tenths of a second)."""
        if self.alive and not self.proc.stdin.closed:
            try:
                self.proc.stdin.close()
            except OSError:
                pass

    def reap(self) -> None:
        """Wait for it to exit (killed after 30 s), and close its files."""
        if self.alive:
            try:
                self.proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self._answers.close()
        self._output.close()


class Task:
    """A unit running in a worker, with the part of ``subprocess.Popen`` the scheduler uses."""

    def __init__(self, worker: Worker) -> None:
        self.worker = worker
        self.returncode: int | None = None

    def poll(self) -> int | None:
        if self.returncode is None:
            self.returncode = self.worker.answer()
        return self.returncode

    @property
    def last_line(self) -> str:
        """The last line its worker wrote outside the unit, when it died in it (else empty)."""
        return self.worker.last_line

    def terminate(self) -> None:
        """Stop the unit (it checkpoints where it is); its worker then exits."""
        if self.worker.alive:
            self.worker.proc.terminate()

    def wait(self) -> int:
        while self.poll() is None:
            try:
                self.worker.proc.wait(timeout=0.1)
            except subprocess.TimeoutExpired:
                pass
        return self.returncode


class Pool:
    """Workers started as units need them: an idle one takes the next unit, else a new one starts
    (the scheduler runs at most ``jobs`` units at once, so there are at most that many)."""

    def __init__(self, env: dict[str, str], data_root: Path | None, device: str | None,
                 dataset: str | None = None) -> None:
        self.env, self.data_root, self.device, self.dataset = env, data_root, device, dataset
        self.workers: list[Worker] = []
        self.retired: list[Worker] = []  # ended early (retire_idle), reaped at close

    def wait(self, timeout: float) -> None:
        """Until a busy worker answers or dies (its answer pipe is readable, or at its end), or
        ``timeout`` seconds: a unit's end is seen at once, not at the next poll."""
        for w in self.retired:  # reaped as they exit, not left as zombies until the run's end
            w.proc.poll()
        pipes = [w._answers for w in self.workers if w.busy and not w.closed]
        if pipes:
            select.select(pipes, [], [], timeout)
        else:
            time.sleep(timeout)

    def run(self, folders: list[Path], after: list[Path], log: Path) -> Task:
        for w in [w for w in self.workers if not w.busy and (w.exiting or not w.alive)]:  # replaced
            w.close()
            self.workers.remove(w)
        idle = [w for w in self.workers if not w.busy and w.alive]
        if idle:
            worker = idle[0]
        else:
            worker = Worker(self.env, self.data_root, self.device, self.dataset)
            self.workers.append(worker)
        return worker.run(folders, after, log)

    def retire_idle(self) -> None:
        """End the idle workers now (no unit is left for them): they exit while the others work."""
        for w in [w for w in self.workers if not w.busy]:
            w.end()
            self.workers.remove(w)
            self.retired.append(w)

    def close(self) -> None:
        """End every worker, then reap them: their exits overlap."""
        for w in self.workers:
            w.end()
        for w in self.retired + self.workers:
            w.reap()
        self.retired, self.workers = [], []
