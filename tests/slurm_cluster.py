"""A real one-node SLURM cluster on localhost, for tests.

Usage from a pytest fixture (or anywhere)::

    from slurm_cluster import ensure_installed, start_cluster

    ensure_installed()                      # apt-get installs slurm-wlm + munge if missing
    with start_cluster(tmp_path) as cluster:
        subprocess.run(["sbatch", "--wrap", "hostname"],
                       env={**os.environ, **cluster.env}, check=True)

Everything the cluster needs lives in a private directory under ``workdir``
(slurm.conf, cgroup.conf, a fresh munge key, state/log dirs, free TCP ports;
the unix-socket dirs move to a short dir under /tmp when ``workdir`` is too
long for socket paths). It neither needs nor touches /etc/slurm, /etc/munge,
the system munged or systemd, and several clusters can run side by side.
The daemons (munged, slurmctld, slurmd) run in the foreground as children of
this process. They are stopped by pid, together with any slurmstepd/job
processes they spawned (found through a marker variable in the daemons'
environment), never by name.

Made to work in containers/VMs without systemd or cgroups:
``ProctrackType=proctrack/linuxproc``, ``TaskPlugin=task/none``,
``JobAcctGatherType=jobacct_gather/none`` and no accounting storage; slurmd
22.05 still initialises a cgroup plugin, so cgroup.conf names cgroup/v1, whose
init works even with no cgroup filesystem. Without accounting ``sacct``
cannot report jobs, so clients must use ``squeue`` for job status.
``MinJobAge`` is long (600 s), so finished jobs stay visible to ``squeue`` /
``scontrol show job``. ``cluster.env`` puts wrappers for the client commands
first on PATH, so that even a job whose environment lost SLURM_CONF (as the
snakemake slurm-jobstep plugin does) reaches this cluster.

Run ``python tests/slurm_cluster.py`` for a smoke test.
"""

from __future__ import annotations

import atexit
import contextlib
import ctypes
import fcntl
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path

__all__ = [
    "SlurmCluster",
    "SlurmClusterError",
    "ensure_installed",
    "ensure_packages",
    "is_installed",
    "start_cluster",
]

_SBIN_DIRS = ("/usr/sbin", "/sbin", "/usr/local/sbin", "/usr/bin", "/usr/local/bin")
_DAEMONS = ("munged", "slurmctld", "slurmd")
_CLIENTS = ("sbatch", "squeue", "scontrol", "sinfo", "scancel", "srun")
# Client commands that get a wrapper in <root>/bin (see _write_wrappers).
_WRAPPED = (
    "sacct",
    "sacctmgr",
    "salloc",
    "sattach",
    "sbatch",
    "sbcast",
    "scancel",
    "scontrol",
    "sdiag",
    "sinfo",
    "sprio",
    "squeue",
    "sreport",
    "srun",
    "sshare",
    "sstat",
    "strigger",
)
# Environment variable put into the daemons' environment (and inherited by the
# slurmstepd processes slurmd forks) so stop() can find every process this
# cluster spawned. It is deliberately NOT part of SlurmCluster.env.
_MARKER = "OPCHAIN_TEST_SLURM_CLUSTER"
# Job states after which a job will not change any more.
_FINAL_STATES = {
    "BOOT_FAIL",
    "CANCELLED",
    "COMPLETED",
    "DEADLINE",
    "FAILED",
    "NODE_FAIL",
    "OUT_OF_MEMORY",
    "PREEMPTED",
    "TIMEOUT",
}


class SlurmClusterError(RuntimeError):
    """The test cluster could not be installed, started or used."""


# --------------------------------------------------------------------------
# installation
# --------------------------------------------------------------------------


def _find(name: str) -> str | None:
    """Locate a binary, also in sbin dirs that may be missing from PATH."""
    found = shutil.which(name)
    if found:
        return found
    for d in _SBIN_DIRS:
        p = Path(d) / name
        if p.is_file() and os.access(p, os.X_OK):
            return str(p)
    return None


def is_installed() -> bool:
    return all(_find(n) for n in _DAEMONS + _CLIENTS)


def ensure_installed(packages: Sequence[str] = ("slurm-wlm", "munge")) -> None:
    """Install SLURM and munge from Debian packages if they are missing.

    Needs root (or passwordless apt-get) on Debian/Ubuntu. Installing does not
    start any daemon (no systemd).
    """
    ensure_packages(packages, is_installed)


def ensure_packages(packages: Sequence[str], installed: Callable[[], bool]) -> None:
    """Install Debian ``packages`` with apt-get unless ``installed()`` says they are.

    ``apt-get update`` is only run if the first install attempt fails (e.g.
    empty package lists on a fresh machine).
    """
    if installed():
        return
    # several test processes (pytest-xdist) may get here at once: apt allows
    # only one dpkg run at a time, so serialise on a lock file
    with open(os.path.join(tempfile.gettempdir(), "opchain-apt-install.lock"), "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if not installed():
            _apt_install(packages, installed)


def _apt_install(packages: Sequence[str], installed: Callable[[], bool]) -> None:
    apt = shutil.which("apt-get")
    if apt is None:
        raise SlurmClusterError(
            f"{' '.join(packages)}: missing, and apt-get is not available; install them by hand"
        )
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    sudo = [] if os.geteuid() == 0 else ["sudo", "-n", "-E"]
    # slurm-wlm's Depends bring slurmctld, slurmd, slurm-client, munge and
    # slurm-wlm-basic-plugins (every plugin the test config uses); its
    # Recommends are large and not needed.
    cmd = [*sudo, apt, "install", "-y", "-q", "--no-install-recommends", *packages]
    res = subprocess.run(cmd, env=env, capture_output=True, text=True)
    if res.returncode != 0:
        # fresh machine: empty or stale package lists
        subprocess.run([*sudo, apt, "update", "-q"], env=env, capture_output=True, text=True)
        res = subprocess.run(cmd, env=env, capture_output=True, text=True)
    if res.returncode != 0 or not installed():
        raise SlurmClusterError(
            f"installing {' '.join(packages)} failed (rc={res.returncode}):\n"
            f"{res.stdout[-3000:]}\n{res.stderr[-3000:]}"
        )


# --------------------------------------------------------------------------
# helpers
# --------------------------------------------------------------------------


def _free_ports(n: int) -> list[int]:
    """n distinct currently free TCP ports (bound on all addresses)."""
    socks, ports = [], []
    try:
        for _ in range(n):
            s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            s.bind(("", 0))
            socks.append(s)
            ports.append(s.getsockname()[1])
    finally:
        for s in socks:
            s.close()
    return ports


def _short_hostname() -> str:
    return socket.gethostname().split(".")[0]


def _hardware(slurmd: str) -> dict[str, int]:
    """CPU topology and memory (MB) as slurmd sees them (``slurmd -C``)."""
    hw: dict[str, int] = {}
    try:
        out = subprocess.run([slurmd, "-C"], capture_output=True, text=True, timeout=30).stdout
        first = out.splitlines()[0] if out else ""
        for key, val in re.findall(r"(\w+)=(\d+)", first):
            hw[key] = int(val)
    except (OSError, subprocess.SubprocessError, IndexError):
        pass
    if "CPUs" not in hw:
        hw = {"CPUs": os.cpu_count() or 1}
    if "RealMemory" not in hw:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemTotal:"):
                    hw["RealMemory"] = int(line.split()[1]) // 1024
                    break
    return hw


def _tail(path: Path, lines: int = 40) -> str:
    try:
        text = path.read_text(errors="replace")
    except OSError:
        return f"<{path}: missing>"
    return "\n".join(text.splitlines()[-lines:])


def _proc_table() -> dict[int, int]:
    """pid -> ppid for all processes."""
    table = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat") as f:
                stat = f.read()
            # comm may contain spaces/parens: ppid is the 2nd field after ')'
            table[int(entry)] = int(stat.rsplit(")", 1)[1].split()[1])
        except (OSError, IndexError, ValueError):
            continue
    return table


def _has_marker(pid: int, marker: bytes) -> bool:
    try:
        with open(f"/proc/{pid}/environ", "rb") as f:
            return marker in f.read().split(b"\0")
    except OSError:
        return False


def _die_with_parent(parent_pid: int):
    """preexec_fn: PR_SET_PDEATHSIG=SIGTERM (Linux), or None if unavailable."""
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        prctl = libc.prctl
    except (OSError, AttributeError):
        return None
    PR_SET_PDEATHSIG = 1

    def preexec() -> None:
        prctl(PR_SET_PDEATHSIG, signal.SIGTERM, 0, 0, 0)
        if os.getppid() != parent_pid:  # parent died before prctl
            os.kill(os.getpid(), signal.SIGTERM)

    return preexec


def _marker_value(pid: int) -> str | None:
    prefix = f"{_MARKER}=".encode()
    try:
        with open(f"/proc/{pid}/environ", "rb") as f:
            for item in f.read().split(b"\0"):
                if item.startswith(prefix):
                    return item[len(prefix) :].decode(errors="replace")
    except OSError:
        pass
    return None


def _kill_trees(is_root, term_wait: float = 5.0) -> None:
    """SIGTERM (skipped if term_wait is 0), then SIGKILL, every process
    matching is_root(pid) and all their descendants (never this process)."""
    me = os.getpid()
    steps = [(signal.SIGKILL, 2.0)]
    if term_wait > 0:
        steps.insert(0, (signal.SIGTERM, term_wait))
    for sig, wait in steps:
        table = _proc_table()
        victims = {p for p in table if p != me and is_root(p)}
        changed = True
        while changed:  # add all descendants
            changed = False
            for pid, ppid in table.items():
                if ppid in victims and pid not in victims:
                    victims.add(pid)
                    changed = True
        victims.discard(me)
        victims = {p for p in victims if _alive(p)}
        if not victims:
            return
        for pid in victims:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.kill(pid, sig)
        deadline = time.monotonic() + wait
        while time.monotonic() < deadline and any(_alive(p) for p in victims):
            time.sleep(0.1)


def _reap_orphans() -> None:
    """Kill leftovers (e.g. slurmstepd + job processes, which outlive their
    slurmd) of test clusters whose owning process no longer exists."""

    def orphaned(pid: int) -> bool:
        value = _marker_value(pid)
        if value is None:
            return False
        owner = value.split("-", 1)[0]
        return owner.isdigit() and int(owner) != os.getpid() and not _alive(int(owner))

    # their owner is gone: nobody needs a graceful shutdown (and slurmstepd
    # ignores SIGTERM while it cannot reach slurmd)
    _kill_trees(orphaned, term_wait=0)


def _alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as f:
            state = f.read().rsplit(")", 1)[1].split()[0]
        return state != "Z"
    except (OSError, IndexError):
        return False


# --------------------------------------------------------------------------
# the cluster
# --------------------------------------------------------------------------


class SlurmCluster:
    """A one-node SLURM cluster (munged + slurmctld + slurmd) on this host.

    Attributes useful to tests (after start()):
      env          variables for client commands and snakemake: SLURM_CONF
                   and PATH (with wrappers that pin SLURM_CONF first); use
                   ``env={**os.environ, **cluster.env}``.
      conf_path    the generated slurm.conf
      partition    the (default) partition, "debug"
      node         NodeName: the short hostname (or "localnode" if that is
                   over 40 characters)
      cpus, real_memory_mb   what the node offers to jobs
      root         private dir under workdir: slurm.conf, cgroup.conf,
                   bin/ (wrappers), log/, state/ (and run/ unless that path
                   would be too long for unix sockets: then rundir is a
                   short dir under /tmp, removed by stop())
      start_seconds, stop_seconds   how long start()/stop() took
    """

    def __init__(
        self,
        workdir: os.PathLike | str,
        *,
        cluster_name: str = "opchain",
        partition: str = "debug",
        start_timeout: float = 60.0,
        debug_level: str = "info",
        extra_conf: str = "",
        node_name: str | None = None,
    ) -> None:
        self.workdir = Path(workdir)
        self.cluster_name = cluster_name
        self.partition = partition
        self.start_timeout = start_timeout
        self.debug_level = debug_level
        self.extra_conf = extra_conf
        self.hostname = _short_hostname()
        # NodeName need not be the hostname (slurmd is started with -N), but
        # it is part of per-step unix socket names, which must stay short.
        self.node = node_name or (self.hostname if len(self.hostname) <= 40 else "localnode")
        self.root: Path | None = None
        self.conf_path: Path | None = None
        self.env: dict[str, str] = {}
        self.cpus = 0
        self.real_memory_mb = 0
        self.start_seconds: float | None = None
        self.stop_seconds: float | None = None
        self.rundir: Path | None = None
        self.bindir: Path | None = None
        self._munge_dir: Path | None = None
        self._own_rundir: Path | None = None
        self._procs: dict[str, subprocess.Popen] = {}
        # "<owner pid>-<random>": lets a later cluster recognise leftovers of
        # one whose owner was killed (see _reap_orphans).
        self._marker = f"{os.getpid()}-{uuid.uuid4().hex}"
        self._started = False

    # -- public API --------------------------------------------------------

    def start(self) -> SlurmCluster:
        if self._started:
            return self
        t0 = time.monotonic()
        for name in _DAEMONS + _CLIENTS:
            if not _find(name):
                raise SlurmClusterError(f"{name} not found; call ensure_installed() first")
        _reap_orphans()
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.root = Path(tempfile.mkdtemp(prefix="slurm-", dir=self.workdir))
        os.chmod(self.root, 0o755)
        atexit.register(self.stop)
        self._started = True
        try:
            self._write_config()
            self._start_munged()
            self._start_slurm()
            self._wait_node_idle()
        except Exception as exc:
            diag = self.diagnostics()
            self.stop()
            raise SlurmClusterError(f"SLURM test cluster failed to start: {exc}\n{diag}") from exc
        except BaseException:  # KeyboardInterrupt etc.: clean up, re-raise
            self.stop()
            raise
        self.start_seconds = time.monotonic() - t0
        return self

    def stop(self) -> None:
        """Cancel all jobs, stop the daemons and every process they spawned."""
        if not self._started:
            return
        self._started = False
        t0 = time.monotonic()
        with contextlib.suppress(Exception):
            atexit.unregister(self.stop)
        # 1. cancel jobs while slurmctld/slurmd still run, so job steps end
        #    cleanly (slurmstepd kills the job's processes).
        if self._running("slurmctld") and self._running("slurmd"):
            with contextlib.suppress(Exception):
                ids = self._job_ids()
                if ids:
                    self.run(["scancel", *ids], check=False, timeout=20)
                    deadline = time.monotonic() + 15
                    while time.monotonic() < deadline and self._active_job_ids():
                        time.sleep(0.3)
        # 2. stop the daemons we started: slurmd, slurmctld, then munged.
        for name in ("slurmd", "slurmctld", "munged"):
            self._terminate(name)
        # 3. anything left that descends from our daemons (slurmstepd
        #    re-parents to init; it inherits the marker variable) and the job
        #    processes under it.
        self._kill_strays()
        if self._own_rundir is not None:
            shutil.rmtree(self._own_rundir, ignore_errors=True)
        self.stop_seconds = time.monotonic() - t0

    def __enter__(self) -> SlurmCluster:
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()

    def run(
        self, args: Sequence[str], *, check: bool = True, timeout: float = 60, **kw
    ) -> subprocess.CompletedProcess:
        """Run a client command (sbatch, squeue, ...) against this cluster."""
        env = {**os.environ, **kw.pop("env", {}), **self.env}
        return subprocess.run(
            list(args),
            env=env,
            check=check,
            timeout=timeout,
            capture_output=kw.pop("capture_output", True),
            text=kw.pop("text", True),
            **kw,
        )

    def submit(self, *sbatch_args: str, wrap: str | None = None) -> str:
        """sbatch with --parsable; returns the job id."""
        args = ["sbatch", "--parsable", *sbatch_args]
        if wrap is not None:
            args += ["--wrap", wrap]
        out = self.run(args).stdout.strip()
        return out.split(";")[0]

    def job_info(self, job_id: str) -> dict[str, str]:
        """``scontrol show job -o`` as a dict (empty if unknown)."""
        res = self.run(["scontrol", "show", "job", "-o", str(job_id)], check=False)
        if res.returncode != 0:
            return {}
        return dict(re.findall(r"(\w+)=(\S*)", res.stdout))

    def wait_job(self, job_id: str, timeout: float = 60) -> dict[str, str]:
        """Wait until a job reaches a final state; returns its job_info."""
        deadline = time.monotonic() + timeout
        info: dict[str, str] = {}
        while time.monotonic() < deadline:
            info = self.job_info(job_id)
            if info.get("JobState") in _FINAL_STATES:
                return info
            time.sleep(0.3)
        raise SlurmClusterError(
            f"job {job_id} not finished after {timeout}s: {info}\n" + self.diagnostics()
        )

    def diagnostics(self, lines: int = 40) -> str:
        """Tails of all daemon logs (for failure messages)."""
        if self.root is None:
            return "<cluster not started>"
        parts = []
        logdir = self.root / "log"
        for name in ("munged", "slurmctld", "slurmd"):
            log, out = logdir / f"{name}.log", logdir / f"{name}.stdout"
            # slurm daemons write their LogFile (and, with -D, the same to
            # stderr); the .stdout file matters when they die before that.
            f = log if log.exists() and log.stat().st_size else out
            if f.exists():
                parts.append(f"--- {f} ---\n{_tail(f, lines)}")
        for name, p in self._procs.items():
            parts.append(f"--- {name}: pid {p.pid} rc={p.poll()}")
        return "\n".join(parts)

    # -- internals ---------------------------------------------------------

    def _write_config(self) -> None:
        assert self.root is not None
        root = self.root
        for d in ("state", "log"):
            (root / d).mkdir(mode=0o755)
        slurmd = _find("slurmd")
        assert slurmd
        hw = _hardware(slurmd)
        self.cpus = hw["CPUs"]
        total = hw["RealMemory"]
        # Advertise a bit less than the machine has: slurmd drains a node whose
        # RealMemory exceeds what it detects, and the OS needs some too.
        self.real_memory_mb = max(100, min(int(total * 0.9), total - 256))
        topo = ""
        if all(k in hw for k in ("SocketsPerBoard", "CoresPerSocket", "ThreadsPerCore")):
            topo = (
                f" Boards={hw.get('Boards', 1)} SocketsPerBoard={hw['SocketsPerBoard']}"
                f" CoresPerSocket={hw['CoresPerSocket']}"
                f" ThreadsPerCore={hw['ThreadsPerCore']}"
            )
        # Unix sockets live in the munge dir and in SlurmdSpoolDir (one per
        # job step, "<node>_<jobid>.<stepid>"); their paths must stay under
        # 108 bytes, and pytest's tmp dirs can be long: then use a short
        # private dir under /tmp for them (removed again by stop()).
        rundir = root / "run"
        if len(str(rundir)) + len(self.node) + 40 > 100:
            base = "/tmp" if os.access("/tmp", os.W_OK) else None
            rundir = Path(tempfile.mkdtemp(prefix="slurm-", dir=base))
            self._own_rundir = rundir
        else:
            rundir.mkdir()
        os.chmod(rundir, 0o755)
        self.rundir = rundir
        spool = rundir / "spool"
        munge_dir = rundir / "munge"
        for sub in (spool, munge_dir):
            sub.mkdir(mode=0o755)
        self._munge_dir = munge_dir
        self._munge_socket = munge_dir / "munge.socket"
        ctld_port, slurmd_port = _free_ports(2)
        self.ports = {"slurmctld": ctld_port, "slurmd": slurmd_port}
        conf = f"""\
# Generated by tests/slurm_cluster.py: one-node test cluster on {self.hostname}
ClusterName={self.cluster_name}
SlurmctldHost={self.hostname}(127.0.0.1)
SlurmctldPort={ctld_port}
SlurmdPort={slurmd_port}
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
CredType=cred/munge
AuthInfo=socket={self._munge_socket}
StateSaveLocation={root}/state
SlurmdSpoolDir={spool}
SlurmctldPidFile={rundir}/slurmctld.pid
SlurmdPidFile={rundir}/slurmd.pid
SlurmctldLogFile={root}/log/slurmctld.log
SlurmdLogFile={root}/log/slurmd.log
SlurmctldDebug={self.debug_level}
SlurmdDebug={self.debug_level}
# no cgroups needed (containers / VMs without systemd)
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
JobAcctGatherType=jobacct_gather/none
AccountingStorageType=accounting_storage/none
JobCompType=jobcomp/none
MpiDefault=none
SwitchType=switch/none
SchedulerType=sched/backfill
# start batch jobs as soon as they are submitted (default delays up to 3 s)
SchedulerParameters=batch_sched_delay=0
MailProg=/bin/true
SelectType=select/cons_tres
SelectTypeParameters=CR_Core_Memory
# jobs that do not ask for memory must not grab the whole node
DefMemPerCPU=500
# keep finished jobs visible to squeue/scontrol (no sacct without accounting)
MinJobAge=600
ReturnToService=2
InactiveLimit=0
KillWait=5
SlurmctldTimeout=30
SlurmdTimeout=60
Waittime=0
NodeName={self.node} NodeAddr=127.0.0.1 NodeHostname={self.hostname} CPUs={self.cpus}{topo} RealMemory={self.real_memory_mb} State=UNKNOWN
PartitionName={self.partition} Nodes={self.node} Default=YES MaxTime=INFINITE State=UP
{self.extra_conf}
"""
        self.conf_path = root / "slurm.conf"
        self.conf_path.write_text(conf)
        # slurmd 22.05 initialises a cgroup plugin at startup whatever the
        # other plugins are ("CgroupPlugin=disabled" only exists from 24.05).
        # The default (autodetect) aborts when /sys/fs/cgroup is not mounted
        # ("Unable to initialize cgroup plugin") and cgroup/v2 wants systemd
        # or dies on hybrid hierarchies. cgroup/v1's init does not touch the
        # filesystem, and with linuxproc/task-none nothing else uses it:
        # verified with hybrid v1, pure v2 and no cgroup fs mounted at all.
        (root / "cgroup.conf").write_text(
            "# Generated by tests/slurm_cluster.py (see comment there)\n"
            "CgroupPlugin=cgroup/v1\n"
            "CgroupAutomount=no\n"
            "ConstrainCores=no\n"
            "ConstrainRAMSpace=no\n"
            "ConstrainDevices=no\n"
        )
        os.chmod(self.conf_path, 0o644)
        self._write_wrappers()

    def _write_wrappers(self) -> None:
        """Client wrappers that pin SLURM_CONF, first on PATH in ``env``.

        SLURM_CONF alone is not enough: inside a batch job the
        snakemake-executor-plugin-slurm-jobstep (0.6.x) deletes every
        ``SLURM_*`` variable except a few job ids before it runs ``srun``,
        so srun falls back to /etc/slurm and DNS SRV lookups and dies with
        "Could not establish a configuration source". The job inherits PATH
        (sbatch --export=ALL), so wrappers on PATH restore the config.
        """
        assert self.root is not None and self.conf_path is not None
        bindir = self.root / "bin"
        bindir.mkdir(mode=0o755)
        for name in _WRAPPED:
            real = _find(name)
            if real is None:
                continue
            w = bindir / name
            w.write_text(
                "#!/bin/sh\n"
                f"SLURM_CONF='{self.conf_path}'\n"
                "export SLURM_CONF\n"
                f"exec '{real}' \"$@\"\n"
            )
            os.chmod(w, 0o755)
        self.bindir = bindir
        self.env = {
            "SLURM_CONF": str(self.conf_path),
            "PATH": f"{bindir}{os.pathsep}{os.environ.get('PATH', os.defpath)}",
        }

    def _daemon_env(self) -> dict[str, str]:
        env = dict(os.environ)
        # a SLURM job context in our own environment would confuse the daemons
        for k in list(env):
            if k.startswith("SLURM_") or k.startswith("SBATCH_"):
                del env[k]
        env.update(self.env)
        env[_MARKER] = self._marker
        return env

    def _spawn(self, name: str, args: list[str]) -> subprocess.Popen:
        assert self.root is not None
        # Safety net for a test run that is killed (SIGKILL/SIGTERM skip
        # __exit__ and atexit): the kernel sends the daemon SIGTERM when the
        # thread that started it dies. Only from the main thread, since the
        # signal follows the *thread*, not the process.
        preexec = (
            _die_with_parent(os.getpid())
            if threading.current_thread() is threading.main_thread()
            else None
        )
        with open(self.root / "log" / f"{name}.stdout", "ab") as out:
            proc = subprocess.Popen(
                args,
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=subprocess.STDOUT,
                env=self._daemon_env(),
                cwd=self.root,
                # own session: Ctrl-C in the test runner must not hit them;
                # stop() terminates them explicitly.
                start_new_session=True,
                preexec_fn=preexec,
            )
        self._procs[name] = proc
        return proc

    def _start_munged(self) -> None:
        munged = _find("munged")
        assert munged and self._munge_dir is not None
        key = self._munge_dir / "munge.key"
        # fresh private key: our cluster does not depend on /etc/munge
        with open(key, "wb") as f:
            f.write(os.urandom(1024))
        os.chmod(key, 0o400)
        d = self._munge_dir
        self._spawn(
            "munged",
            [
                munged,
                "--foreground",
                # --force: munged refuses to start if not every user can
                # traverse the socket's parent dirs (pytest's tmp dirs are
                # under a 0700 dir); all our clients run as the same user.
                "--force",
                f"--socket={self._munge_socket}",
                f"--key-file={key}",
                f"--pid-file={d / 'munged.pid'}",
                f"--seed-file={d / 'munged.seed'}",
                f"--log-file={d / 'munged.log'}",
                "--num-threads=2",
            ],
        )
        self._wait_for(
            lambda: self._munge_socket.exists(),
            15,
            "munged socket to appear",
            "munged",
        )

    def _start_slurm(self) -> None:
        ctld, slurmd = _find("slurmctld"), _find("slurmd")
        assert ctld and slurmd and self.conf_path
        # -D: foreground (so the pid we hold is the daemon); -c: fresh state;
        # -i: ignore unreadable state; -N: our node name regardless of how the
        # hostname resolves.
        self._spawn("slurmctld", [ctld, "-D", "-c", "-i", "-f", str(self.conf_path)])
        self._wait_for(self._ctld_responds, 30, "slurmctld to answer", "slurmctld")
        self._spawn("slurmd", [slurmd, "-D", "-N", self.node, "-f", str(self.conf_path)])

    def _ctld_responds(self) -> bool:
        res = self.run(["scontrol", "ping"], check=False, timeout=15)
        return res.returncode == 0 and "UP" in res.stdout

    def _wait_node_idle(self) -> None:
        def idle() -> bool:
            res = self.run(
                ["sinfo", "-h", "-N", "-n", self.node, "-o", "%T"],
                check=False,
                timeout=15,
            )
            return res.returncode == 0 and res.stdout.strip() in ("idle", "mixed")

        self._wait_for(idle, self.start_timeout, "node to become idle", "slurmd")

    def _wait_for(self, cond, timeout: float, what: str, proc_name: str) -> None:
        deadline = time.monotonic() + timeout
        delay = 0.05
        while True:
            proc = self._procs.get(proc_name)
            if proc is not None and proc.poll() is not None:
                raise SlurmClusterError(
                    f"{proc_name} exited with rc={proc.returncode} while waiting for {what}"
                )
            if cond():
                return
            if time.monotonic() > deadline:
                raise SlurmClusterError(f"timed out after {timeout}s waiting for {what}")
            time.sleep(delay)
            delay = min(delay * 1.5, 0.5)

    def _running(self, name: str) -> bool:
        p = self._procs.get(name)
        return p is not None and p.poll() is None

    def _job_ids(self) -> list[str]:
        res = self.run(["squeue", "-h", "-o", "%i"], check=False, timeout=15)
        return res.stdout.split() if res.returncode == 0 else []

    def _active_job_ids(self) -> list[str]:
        res = self.run(
            ["squeue", "-h", "-o", "%i", "-t", "PD,R,CG,CF,S,RQ,RS,SO,ST,SI,RD"],
            check=False,
            timeout=15,
        )
        return res.stdout.split() if res.returncode == 0 else []

    def _terminate(self, name: str, timeout: float = 10) -> None:
        proc = self._procs.get(name)
        if proc is None:
            return
        if proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                proc.terminate()
            try:
                proc.wait(timeout)
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    proc.kill()
                proc.wait(5)

    def _kill_strays(self) -> None:
        marker = f"{_MARKER}={self._marker}".encode()
        _kill_trees(lambda pid: _has_marker(pid, marker))


@contextlib.contextmanager
def start_cluster(workdir: os.PathLike | str, **kwargs) -> Iterator[SlurmCluster]:
    """Start a one-node cluster under ``workdir``; stop it on exit."""
    cluster = SlurmCluster(workdir, **kwargs)
    cluster.start()
    try:
        yield cluster
    finally:
        cluster.stop()


# --------------------------------------------------------------------------
# smoke test
# --------------------------------------------------------------------------


def _main(argv: Sequence[str]) -> int:
    ensure_installed()
    with tempfile.TemporaryDirectory(prefix="slurm-smoke-") as tmp:
        t0 = time.monotonic()
        with start_cluster(tmp) as cluster:
            print(f"cluster up in {cluster.start_seconds:.1f}s", flush=True)
            for k, v in cluster.env.items():
                print(f"export {k}={v}")
            print(cluster.run(["sinfo", "-N", "-l"]).stdout, flush=True)
            out = Path(tmp) / "hostname.out"
            job = cluster.submit("-o", str(out), "--mem", "100", wrap="hostname")
            print(f"submitted job {job}", flush=True)
            info = cluster.wait_job(job, timeout=60)
            print(f"job {job}: {info.get('JobState')} ExitCode={info.get('ExitCode')}")
            print(f"output: {out.read_text().strip()!r}")
            ok = info.get("JobState") == "COMPLETED"
        print(
            f"cluster stopped in {cluster.stop_seconds:.1f}s (total {time.monotonic() - t0:.1f}s)"
        )
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(_main(sys.argv[1:]))
