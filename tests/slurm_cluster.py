"""A real one-node SLURM cluster on this host, for tests/test_slurm.py.

Debian's packages (slurmctld, slurmd, munge, slurm-client) are installed with apt-get when
they are missing and this process may (root, apt-get present, MTLP_SLURM_INSTALL not 0).
munged (as the munge user), slurmctld and slurmd run in the foreground as children of this
process, with their state in a temporary directory; `stop()` cancels the cluster's jobs and
ends exactly those processes by PID (they also get SIGTERM if this process dies first).
Anything that prevents a clean start raises `SlurmUnavailableError` with the reason, for the test
to skip on.

The configuration has to be /etc/slurm/slurm.conf: the executor's job-step plugin drops
SLURM_CONF inside jobs. An existing file that this module did not write is never replaced.
"""

from __future__ import annotations

import contextlib
import ctypes
import logging
import os
import pwd
import shutil
import signal
import socket
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path

log = logging.getLogger(__name__)

PACKAGES = ["slurmctld", "slurmd", "munge", "slurm-client"]
SBIN = "/usr/sbin:/usr/bin:/sbin:/bin"
NEEDED = ["slurmctld", "slurmd", "munged", "sbatch", "squeue", "scontrol", "scancel"]
CONF = Path("/etc/slurm/slurm.conf")
GRES_CONF = Path("/etc/slurm/gres.conf")
MARKER = "# Written by mtl-paradigms tests/slurm_cluster.py for a test; removed when it ends."
MUNGE_KEY = Path("/etc/munge/munge.key")
MUNGE_RUN = Path("/run/munge")
PORTS = (6817, 6818)  # slurmctld, slurmd
FAKE_GPU_MODEL = "testgpu"
# SLURM's gpu GRES needs device files; these stand in for GPUs (nothing opens them).
FAKE_GPU_FILES = ["/dev/null", "/dev/zero", "/dev/full", "/dev/urandom"]


class SlurmUnavailableError(RuntimeError):
    """SLURM cannot be installed or started here; the message says why."""


def _which(name: str) -> str | None:
    return shutil.which(name, path=f"{os.environ.get('PATH', '')}:{SBIN}")


def _run(cmd: list[str], timeout: float = 60, **kwargs: object) -> subprocess.CompletedProcess:
    return subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, **kwargs)


def ensure_installed() -> None:
    """Install Debian's SLURM packages if a daemon or client is missing and we may."""
    missing = [name for name in NEEDED if _which(name) is None]
    if not missing:
        return
    if os.environ.get("MTLP_SLURM_INSTALL", "1") == "0":
        raise SlurmUnavailableError(f"SLURM is not installed ({missing}) and MTLP_SLURM_INSTALL=0")
    if os.geteuid() != 0:
        raise SlurmUnavailableError(f"SLURM is not installed ({missing}) and we are not root")
    apt = _which("apt-get")
    if apt is None:
        raise SlurmUnavailableError(f"SLURM is not installed ({missing}) and apt-get is missing")
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    install = [apt, "install", "-y", "-qq", "--no-install-recommends", *PACKAGES]
    log.info("installing %s with apt-get", " ".join(PACKAGES))
    proc = _run(install, timeout=900, env=env)
    if proc.returncode != 0:  # a stale package list: refresh it once
        _run([apt, "update", "-qq"], timeout=900, env=env)
        proc = _run(install, timeout=900, env=env)
    if proc.returncode != 0:
        raise SlurmUnavailableError(f"apt-get install {' '.join(PACKAGES)} failed:\n{proc.stderr}")
    missing = [name for name in NEEDED if _which(name) is None]
    if missing:
        raise SlurmUnavailableError(f"after apt-get install, still missing: {missing}")


def _die_with_parent() -> None:
    """In the child before exec: get SIGTERM when the test process dies (Linux)."""
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG


def _port_in_use(port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind(("0.0.0.0", port))
        except OSError:
            return True
    return False


def _mem_total_mb() -> int:
    for line in Path("/proc/meminfo").read_text().splitlines():
        if line.startswith("MemTotal:"):
            return int(line.split()[1]) // 1024
    return 4096


@dataclass
class SlurmCluster:
    """One node (this host, all its CPUs) in one partition `test`, no accounting."""

    state_dir: Path
    fake_gpus: int = 0  # GPUs that SLURM schedules but that are none: CUDA sees no device
    node: str = field(default_factory=lambda: socket.gethostname().split(".")[0])
    cpus: int = field(default_factory=lambda: os.cpu_count() or 1)
    processes: dict[str, subprocess.Popen] = field(default_factory=dict)
    _written: list[Path] = field(default_factory=list)

    # ---- configuration ----------------------------------------------------------------
    def config_text(self) -> str:
        d = self.state_dir
        gres = f" Gres=gpu:{FAKE_GPU_MODEL}:{self.fake_gpus}" if self.fake_gpus else ""
        lines = [
            MARKER,
            "ClusterName=mtlptest",
            f"SlurmctldHost={self.node}(127.0.0.1)",
            "SlurmUser=root",
            "SlurmdUser=root",
            f"SlurmctldPort={PORTS[0]}",
            f"SlurmdPort={PORTS[1]}",
            "AuthType=auth/munge",
            f"StateSaveLocation={d}/state",
            f"SlurmdSpoolDir={d}/spool",
            f"SlurmctldPidFile={d}/slurmctld.pid",
            f"SlurmdPidFile={d}/slurmd.pid",
            f"SlurmctldLogFile={d}/slurmctld.log",
            f"SlurmdLogFile={d}/slurmd.log",
            "ProctrackType=proctrack/linuxproc",
            "TaskPlugin=task/none",
            "SelectType=select/cons_tres",
            "SelectTypeParameters=CR_Core",
            "AccountingStorageType=accounting_storage/none",
            "JobAcctGatherType=jobacct_gather/none",
            "JobCompType=jobcomp/none",
            "MpiDefault=none",
            "ReturnToService=2",
            "SchedulerType=sched/backfill",
            "MailProg=/bin/true",
            # finished jobs stay visible to squeue/scontrol for 10 minutes: the executor
            # reads their state with squeue, the test reads it with scontrol
            "MinJobAge=600",
            *(["GresTypes=gpu"] if self.fake_gpus else []),
            f"NodeName={self.node} NodeAddr=127.0.0.1 CPUs={self.cpus}"
            f" RealMemory={_mem_total_mb() // 2}{gres} State=UNKNOWN",
            f"PartitionName=test Nodes={self.node} Default=YES MaxTime=INFINITE State=UP",
        ]
        return "\n".join(lines) + "\n"

    def _write_owned(self, path: Path, text: str) -> None:
        if path.exists() and not path.read_text().startswith(MARKER):
            raise SlurmUnavailableError(
                f"{path} exists and was not written by this test: not replacing the"
                " configuration of a real SLURM installation"
            )
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
        self._written.append(path)

    # ---- processes ----------------------------------------------------------------------
    def _spawn(self, name: str, cmd: list[str], user: str | None = None) -> None:
        out = open(self.state_dir / f"{name}.out", "w")  # noqa: SIM115 (lives with the daemon)
        self.processes[name] = subprocess.Popen(
            cmd,
            stdout=out,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            user=user,
            group=user,
            preexec_fn=_die_with_parent,
        )
        out.close()

    def _munge_works(self) -> bool:
        munge, unmunge = _which("munge"), _which("unmunge")
        if munge is None or unmunge is None:
            return False
        cred = _run([munge, "-n"], timeout=10)
        if cred.returncode != 0:
            return False
        return _run([unmunge], timeout=10, input=cred.stdout).returncode == 0

    def _start_munge(self) -> None:
        if self._munge_works():  # a munged of this host's own: use it, leave it running
            return
        try:
            munge_user = pwd.getpwnam("munge")
        except KeyError as err:
            raise SlurmUnavailableError("the munge user does not exist") from err
        if not MUNGE_KEY.exists():
            _run([_which("mungekey") or "mungekey", "--create"], user="munge")
        MUNGE_RUN.mkdir(parents=True, exist_ok=True)
        os.chown(MUNGE_RUN, munge_user.pw_uid, munge_user.pw_gid)
        self._spawn("munged", [_which("munged") or "munged", "--foreground", "--force"], "munge")
        if not self._wait(self._munge_works, 15):
            raise SlurmUnavailableError(f"munged did not start:\n{self._tail('munged')}")

    def start(self) -> SlurmCluster:
        """Start the cluster; raise SlurmUnavailableError (after cleaning up) if it cannot."""
        try:
            self._start()
        except BaseException:
            self.stop()
            raise
        return self

    def _start(self) -> None:
        ensure_installed()
        if os.geteuid() != 0:
            raise SlurmUnavailableError("starting slurmctld/slurmd needs root")
        busy = [port for port in PORTS if _port_in_use(port)]
        if busy:
            raise SlurmUnavailableError(f"ports {busy} are in use (is a SLURM already running?)")
        for sub in ("state", "spool"):
            (self.state_dir / sub).mkdir(parents=True, exist_ok=True)
        self._write_owned(CONF, self.config_text())
        if self.fake_gpus:
            self._write_owned(
                GRES_CONF,
                MARKER
                + "".join(
                    f"\nName=gpu Type={FAKE_GPU_MODEL} File={device}"
                    for device in FAKE_GPU_FILES[: self.fake_gpus]
                )
                + "\n",
            )
        self._start_munge()
        self._spawn("slurmctld", [_which("slurmctld") or "slurmctld", "-D", "-i"])
        self._spawn("slurmd", [_which("slurmd") or "slurmd", "-D"])
        if not self._wait(self._node_idle, 30):
            raise SlurmUnavailableError(
                f"the node did not become idle:\n{self.scontrol('show', 'node')}\n"
                f"{self._tail('slurmctld')}\n{self._tail('slurmd')}"
            )
        log.info("SLURM up: node %s, %d CPUs, state in %s", self.node, self.cpus, self.state_dir)

    def _node_idle(self) -> bool:
        for name, proc in self.processes.items():
            if proc.poll() is not None:
                raise SlurmUnavailableError(
                    f"{name} exited ({proc.returncode}):\n{self._tail(name)}"
                )
        sinfo = _run([_which("sinfo") or "sinfo", "-h", "-N", "-o", "%t"], timeout=10)
        return sinfo.returncode == 0 and sinfo.stdout.strip() == "idle"

    @staticmethod
    def _wait(ready: object, seconds: float) -> bool:
        deadline = time.monotonic() + seconds
        while time.monotonic() < deadline:
            if ready():  # type: ignore[operator]
                return True
            time.sleep(0.25)
        return False

    def _tail(self, name: str, lines: int = 20) -> str:
        text = ""
        for path in (self.state_dir / f"{name}.out", self.state_dir / f"{name}.log"):
            if path.exists():
                text += "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
        return f"--- {name}:\n{text}"

    # ---- queries ----------------------------------------------------------------------
    def scontrol(self, *args: str) -> str:
        return _run([_which("scontrol") or "scontrol", *args], timeout=30).stdout

    def jobs(self) -> list[dict[str, str]]:
        """Every job the controller knows (finished ones for MinJobAge), as key=value dicts."""
        out = self.scontrol("show", "job", "--oneliner")
        return [_parse_oneliner(line) for line in out.splitlines() if line.startswith("JobId=")]

    # ---- shutdown ---------------------------------------------------------------------
    def stop(self) -> None:
        """Cancel the cluster's jobs, end the daemons this object started, remove its files."""
        if "slurmctld" in self.processes and self.processes["slurmctld"].poll() is None:
            ids = [job["JobId"] for job in self.jobs() if job.get("JobState") in _ACTIVE]
            if ids:
                _run([_which("scancel") or "scancel", *ids], timeout=30)
                self._wait(lambda: not any(j.get("JobState") in _ACTIVE for j in self.jobs()), 20)
        for name in ("slurmd", "slurmctld", "munged"):
            proc = self.processes.pop(name, None)
            if proc is None or proc.poll() is not None:
                continue
            proc.terminate()
            try:
                proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(timeout=15)
        for path in self._written:
            path.unlink(missing_ok=True)
        self._written.clear()


_ACTIVE = {"PENDING", "RUNNING", "CONFIGURING", "COMPLETING", "SUSPENDED", "REQUEUED"}


def _parse_oneliner(line: str) -> dict[str, str]:
    """`scontrol show job -o` output: space-separated Key=Value pairs (values may be empty)."""
    record: dict[str, str] = {}
    key = None
    for token in line.split(" "):
        if "=" in token and token.split("=", 1)[0].replace(":", "").replace("/", "").isalnum():
            key, value = token.split("=", 1)
            record[key] = value
        elif key is not None and token:  # a value with spaces (Comment=..., Command=...)
            record[key] += " " + token
    return {key: value.strip() for key, value in record.items()}
