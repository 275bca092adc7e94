"""The scheduler: starts queued tasks in worker processes and watches them.

One asyncio task on the server's event loop. Every tick (or when woken) it reaps workers that
exited, kills those that outlived their cancel grace period, and starts pending tasks in queue
order while fewer than `train.max_concurrent` run. A worker is a separate OS process group
(`python -m services.train.worker`, or torchrun for `num_processes > 1`) with its output in
`<workspace>/runs/<task_id>/worker.log`; nothing of the training runs in the server.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

from services.common.metrics import TRAIN_TASKS
from services.common.config import REPO_ROOT, Config
from services.train import checkpoints
from services.train.store import (CANCELLED, FAILED, INTERRUPTED, RUNNING, OutputInUse, StoreUnavailable, TaskStore,
                                  run_dir)

log = logging.getLogger("wintrain.train")

WORKER_MODULE = "services.train.worker"
TAIL_LINES = 25
# Config sections never written into a task folder (secrets).
_PRIVATE_SECTIONS = ("auth", "tls")
JOB_STORE_ENV = "WINTRAIN__STORAGE__JOB_STORE"  # the worker's job store, password included


def _without_password(url: str) -> str:
    parts = urlsplit(url)
    if parts.password is None:
        return url
    host = parts.netloc.rsplit("@", 1)[1]
    return urlunsplit(parts._replace(netloc=f"{parts.username}@{host}" if parts.username else host))


@dataclass
class WorkerHandle:
    task_id: str
    attempt: int
    proc: subprocess.Popen
    log_path: Path
    log_offset: int
    started: float
    kill_at: float | None = None
    killed: bool = False


def describe_exit(code: int) -> str:
    if code < 0:
        try:
            name = signal.Signals(-code).name
        except ValueError:
            name = f"signal {-code}"
        hint = " (out of memory, or kill -9)" if -code == signal.SIGKILL else ""
        return f"the worker was killed by {name}{hint}"
    return f"the worker exited with code {code}"


def log_tail(path: Path, offset: int = 0, lines: int = TAIL_LINES, max_bytes: int = 64 * 1024) -> str:
    """The last `lines` lines written to `path` after `offset`."""
    try:
        with open(path, "rb") as handle:
            size = handle.seek(0, os.SEEK_END)
            start = max(offset, size - max_bytes)
            handle.seek(start)
            data = handle.read()
    except OSError:
        return ""
    text = data.decode("utf-8", errors="replace")
    return "\n".join(text.rstrip().splitlines()[-lines:])


# torchrun is the server's child under num_processes > 1 (its ranks watch torchrun, not the
# server): this shim asks for SIGTERM when the server dies, then becomes torchrun (the request
# survives exec), so a server killed with -9 leaves no training behind.
_PARENT_GUARD = ("import os, sys; from services.common.proc import die_with_parent; "
                 "die_with_parent(parent_pid=int(sys.argv[1])); os.execv(sys.executable, [sys.executable, *sys.argv[2:]])")


def with_parent_guard(python_args: list[str], parent_pid: int) -> list[str]:
    """`python <python_args>`, started so that it gets SIGTERM when `parent_pid` dies."""
    return [sys.executable, "-c", _PARENT_GUARD, str(parent_pid), *python_args]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _is_our_worker(pid: int, task_id: str) -> bool:
    try:
        import psutil

        proc = psutil.Process(pid)
        cmdline = " ".join(proc.cmdline())
    except Exception:  # noqa: BLE001 - gone, or not ours to read
        return False
    return task_id in cmdline and WORKER_MODULE in cmdline


class Scheduler:
    """Runs queued tasks as worker processes; see the module docstring."""

    def __init__(self, store: TaskStore, config: Config, *, tick_seconds: float = 0.25):
        self.store = store
        self.config = config
        self.workspace = config.workspace
        self.tick_seconds = tick_seconds
        self.workers: dict[str, WorkerHandle] = {}
        self._wake = asyncio.Event()
        self._task: asyncio.Task | None = None
        self._stopping = False
        # Replicas sharing one store (PostgreSQL) claim tasks under leases they renew.
        self.shared = bool(getattr(store, "shared", False))
        self.replica_id = str(config.get("train.replica_id") or f"{socket.gethostname()}-{os.getpid()}")
        self._next_beat = 0.0
        # Told False when the store's database is unreachable, True when it is back
        # (register() connects it to the service's gRPC health).
        self.on_store_health = None
        self._store_ok = True

    @property
    def lease_seconds(self) -> float:
        return max(1.0, float(self.config.get("train.lease_seconds", 15) or 15))

    @property
    def auto_resume(self) -> bool:
        return bool(self.config.get("train.auto_resume", False))

    @property
    def max_concurrent(self) -> int:
        return max(1, int(self.config.get("train.max_concurrent", 1) or 1))

    @property
    def grace_seconds(self) -> float:
        return float(self.config.get("train.cancel_grace_seconds", 30))

    # -- start-up ------------------------------------------------------------------------
    def recover(self) -> list[str]:
        """Tasks left `running` by a server that died become `interrupted`; a worker of
        theirs still alive is killed; half-saved outputs are removed. Pending tasks stay
        queued. Returns the ids marked."""
        reason = "the service restarted while this task was running; resume it to continue from its last checkpoint"
        found = self.store.interrupt_running(reason, replica_id=self.replica_id if self.shared else None)
        for task in found:
            if task.worker_pid and _is_our_worker(task.worker_pid, task.task_id):
                try:
                    os.killpg(task.worker_pid, signal.SIGKILL)
                except (ProcessLookupError, PermissionError):
                    pass
        # Temporaries a killed worker left while saving an output (`.<name>.*.tmp`): no task of
        # this service runs yet, so every one of them is stale (with replicas: only those of
        # the tasks just marked; the others may belong to a live replica's worker).
        outs = [t.resolved.get("output_dir", "") for t in found] if self.shared else self.store.output_dirs()
        for out in filter(None, outs):
            checkpoints.remove_partial_outputs(Path(out))
        if found:
            log.warning("marked interrupted after restart", extra={"tasks": ",".join(t.task_id for t in found)})
        return [t.task_id for t in found]

    def start(self) -> None:
        self._task = asyncio.get_running_loop().create_task(self._run(), name="train-scheduler")

    def wake(self) -> None:
        self._wake.set()

    async def _run(self) -> None:
        while not self._stopping:
            ok: bool | None = True
            try:
                self.tick()
            except StoreUnavailable as exc:
                ok = False
                log.warning("job store unavailable", extra={"error": str(exc)})
            except Exception:  # noqa: BLE001 - one bad tick must not stop scheduling
                ok = None
                log.exception("scheduler tick failed")
            if ok is not None and ok != self._store_ok and not self._stopping:
                self._store_ok = ok
                if self.on_store_health is not None:
                    await self.on_store_health(ok)
            try:
                await asyncio.wait_for(self._wake.wait(), self.tick_seconds)
            except asyncio.TimeoutError:
                pass
            self._wake.clear()

    # -- one tick ------------------------------------------------------------------------
    def tick(self) -> None:
        now = time.monotonic()
        for handle in list(self.workers.values()):
            code = handle.proc.poll()
            if code is not None:
                self._reap(handle, code)
            elif handle.kill_at is not None and now >= handle.kill_at and not handle.killed:
                self._killpg(handle, signal.SIGKILL)
                handle.killed = True
        for state, count in self.store.status_counts().items():
            TRAIN_TASKS.labels(state).set(count)
        beat = self.shared and now >= self._next_beat
        if beat:  # the heartbeat, also while stopping: its workers are still checkpointing
            self._next_beat = now + self.lease_seconds / 3
            self.store.renew_leases(self.replica_id, self.lease_seconds, list(self.workers))
        if self._stopping:
            return
        self._follow_cancels()
        if beat:
            expired = self.store.expire_leases(
                "the train-service replica running this task stopped renewing its lease (it died, or lost the "
                "database); resume it to continue from its last checkpoint")
            if expired:
                log.warning("leases expired", extra={"tasks": ",".join(t.task_id for t in expired)})
        if self.auto_resume:
            self._resume_interrupted()
        while len(self.workers) < self.max_concurrent:
            if self.shared:
                claimed = self.store.claim_next(self.replica_id, self.lease_seconds,
                                                message=f"starting the worker on replica {self.replica_id}")
                if claimed is None:
                    break
                self._start_worker(*claimed)
                continue
            queue = self.store.queue()
            if not queue:
                break
            self._launch(queue[0])

    def _follow_cancels(self) -> None:
        """A cancel stored by another replica (or by this one) reaches the worker here."""
        for handle in list(self.workers.values()):
            if handle.kill_at is None:
                _, attempt, cancel = self.store.worker_view(handle.task_id)
                if cancel and attempt == handle.attempt:
                    self.signal_cancel(handle.task_id)

    def _resume_interrupted(self) -> None:
        """`train.auto_resume`: an interrupted task (its service stopped or died, or its lease
        ran out) is queued again from its last checkpoint, to run on whichever replica is free."""
        for task in self.store.with_status(INTERRUPTED):
            folder = checkpoints.latest_checkpoint(run_dir(self.workspace, task.task_id) / "checkpoints")
            if folder is None and task.resume_from and Path(task.resume_from).is_dir():
                folder = Path(task.resume_from)
            where = f"from {folder.name}" if folder else "from the start (no checkpoint yet)"
            try:
                if self.store.requeue(task.task_id, resume_from=str(folder) if folder else "",
                                      message=f"queued again by train.auto_resume, to resume {where}"):
                    log.info("auto-resume", extra={"task_id": task.task_id, "checkpoint": str(folder or "")})
            except OutputInUse:
                continue

    def _reap(self, handle: WorkerHandle, code: int) -> None:
        del self.workers[handle.task_id]
        task = self.store.get(handle.task_id)
        if task is None or task.status != RUNNING or task.attempt != handle.attempt:
            return  # the worker reported its own end
        checkpoints.remove_partial_outputs(Path(task.resolved["output_dir"]))
        where = f" Last checkpoint: {task.last_checkpoint}." if task.last_checkpoint else ""
        if task.cancel_requested:
            how = (f"the worker did not stop within {self.grace_seconds:g}s and was killed"
                   if handle.killed else describe_exit(code))
            self.store.finish(task.task_id, CANCELLED, attempt=handle.attempt,
                              message=f"cancelled ({how}).{where}")
            return
        if self._stopping:
            reason = f"the service stopped while this task was running.{where}"
            self.store.finish(task.task_id, INTERRUPTED, attempt=handle.attempt, message=reason, error_message=reason)
            return
        reason = task.worker_error or describe_exit(code)
        if code == 0 and not task.worker_error:
            reason = "the worker exited without reporting a result"
        tail = log_tail(handle.log_path, handle.log_offset)
        error = reason + (f"\n--- last lines of {handle.log_path} ---\n{tail}" if tail else "")
        self.store.finish(task.task_id, FAILED, attempt=handle.attempt, message=f"failed: {reason}"[:500],
                          error_message=error)
        log.warning("training task failed", extra={"task_id": task.task_id, "reason": reason})

    # -- launching -----------------------------------------------------------------------
    def worker_command(self, task_id: str, attempt: int, nprocs: int, config_file: Path) -> list[str]:
        worker_args = [task_id, "--workspace", str(self.workspace), "--attempt", str(attempt),
                       "--config", str(config_file)]
        nnodes = int(self.config.get("train.nnodes", 1) or 1)
        endpoint = self.config.get("train.rdzv_endpoint")
        if nprocs <= 1 and nnodes <= 1:  # several nodes need torchrun even at one process each
            return [sys.executable, "-m", WORKER_MODULE, *worker_args]
        cmd = ["-m", "torch.distributed.run", "--nproc_per_node", str(nprocs)]
        if nnodes > 1 and endpoint:
            cmd += ["--nnodes", str(nnodes), "--rdzv_backend", "c10d", "--rdzv_endpoint", str(endpoint),
                    "--rdzv_id", f"{task_id}-{attempt}"]
        else:
            cmd += ["--nnodes", "1", "--master_addr", "127.0.0.1", "--master_port", str(_free_port())]
        return with_parent_guard([*cmd, "-m", WORKER_MODULE, *worker_args], os.getpid())

    def _write_worker_config(self, folder: Path) -> Path:
        data = self.config.as_dict()
        for section in _PRIVATE_SECTIONS:
            data.pop(section, None)
        # A PostgreSQL URL may carry a password: the file in the shared workspace gets the URL
        # without it; the worker gets the whole URL through its environment (JOB_STORE_ENV). A
        # node started by hand from the logged command uses PGPASSWORD or ~/.pgpass instead.
        storage = data.get("storage", {})
        if storage.get("job_store"):
            storage["job_store"] = _without_password(str(storage["job_store"]))
        path = folder / "service_config.json"
        from services.common.fsutil import atomic_write_text

        atomic_write_text(path, json.dumps({"base_dir": str(self.config.base_dir), "data": data}, default=str))
        return path

    def _launch(self, task_id: str) -> None:
        attempt = self.store.claim(task_id)
        if attempt is None:
            return
        self._start_worker(task_id, attempt)

    def _start_worker(self, task_id: str, attempt: int) -> None:
        task = self.store.get(task_id)
        assert task is not None
        folder = run_dir(self.workspace, task_id)
        log_path = folder / "worker.log"
        try:
            folder.mkdir(parents=True, exist_ok=True)
            config_file = self._write_worker_config(folder)
            nprocs = int(task.config.get("num_processes", 1) or 1)
            cmd = self.worker_command(task_id, attempt, nprocs, config_file)
            env = dict(os.environ)
            env["PYTHONUNBUFFERED"] = "1"
            env["WINTRAIN_WORKER_PARENT_PID"] = str(os.getpid())
            env["TORCH_FORCE_WEIGHTS_ONLY_LOAD"] = "1"
            env[JOB_STORE_ENV] = str(self.config.get("storage.job_store") or "sqlite")
            env.pop("TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD", None)
            threads = self.config.get("train.worker_threads") or self.config.get("model.torch_threads")
            if threads:
                env["OMP_NUM_THREADS"] = str(threads)
            path_entries = [str(REPO_ROOT)] + ([env["PYTHONPATH"]] if env.get("PYTHONPATH") else [])
            env["PYTHONPATH"] = os.pathsep.join(path_entries)
            with open(log_path, "ab") as logf:
                logf.write(f"\n===== attempt {attempt}: {' '.join(cmd)}\n".encode())
                logf.flush()
                offset = logf.tell()
                proc = subprocess.Popen(cmd, cwd=str(REPO_ROOT), env=env, stdin=subprocess.DEVNULL,
                                        stdout=logf, stderr=subprocess.STDOUT, start_new_session=True,
                                        close_fds=True)
        except Exception as exc:  # noqa: BLE001 - a claimed task must never stay `running` without a worker
            log.exception("cannot start a worker", extra={"task_id": task_id})
            self.store.finish(task_id, FAILED, attempt=attempt, message=f"failed: cannot start the worker: {exc}",
                              error_message=f"cannot start the worker: {exc}")
            return
        self.store.set_worker_pid(task_id, attempt, proc.pid)
        self.workers[task_id] = WorkerHandle(task_id, attempt, proc, log_path, offset, time.monotonic())
        log.info("worker started", extra={"task_id": task_id, "attempt": attempt, "pid": proc.pid,
                                           "processes": nprocs})

    # -- stopping ------------------------------------------------------------------------
    def _killpg(self, handle: WorkerHandle, sig: int) -> None:
        try:
            os.killpg(handle.proc.pid, sig)
        except (ProcessLookupError, PermissionError):
            pass

    def signal_cancel(self, task_id: str) -> None:
        """SIGTERM the task's worker (its cancel flag is already set in the store) and give it
        `train.cancel_grace_seconds` to checkpoint and stop before it is killed."""
        handle = self.workers.get(task_id)
        if handle is None or handle.kill_at is not None:
            return
        handle.kill_at = time.monotonic() + self.grace_seconds
        self._killpg(handle, signal.SIGTERM)
        self.wake()

    async def shutdown(self) -> None:
        """Service shutdown: every worker gets SIGTERM (checkpoint, `interrupted`), then
        SIGKILL after the grace period; tasks still `running` are marked `interrupted`."""
        self._stopping = True
        if self._task is not None:
            self._task.cancel()
            try:
                await self._task
            except (asyncio.CancelledError, Exception):  # noqa: BLE001
                pass
        deadline = time.monotonic() + self.grace_seconds
        for handle in self.workers.values():
            self._killpg(handle, signal.SIGTERM)
        while self.workers and time.monotonic() < deadline:
            self.tick()
            await asyncio.sleep(0.1)
        for handle in list(self.workers.values()):
            self._killpg(handle, signal.SIGKILL)
            try:
                handle.proc.wait(timeout=5)
            except subprocess.TimeoutExpired:
                pass
            self._reap(handle, handle.proc.returncode if handle.proc.returncode is not None else -9)
