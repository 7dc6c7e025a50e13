"""A private single-node SLURM cluster for tests, started from the Debian/Ubuntu packages
(``slurmctld slurmd slurm-client munge``; ``.ci/setup-slurm.sh`` installs them).

Everything lives in one temporary folder: ``slurm.conf`` (one node named after ``hostname -s``
with the CPUs and memory ``slurmd -C`` reports, one partition ``debug``, no accounting), its own
munge key and socket, state, spool, logs and pid files, and two free TCP ports, so it neither needs
nor disturbs a system SLURM or munge. Clients find it through ``SLURM_CONF`` (:attr:`env`).

    python tests/slurm_cluster.py      # start one, print the environment to use, stop on Ctrl-C
"""

from __future__ import annotations

import getpass
import os
import shutil
import socket
import subprocess
import tempfile
import time
from pathlib import Path

DAEMONS = ("slurmctld", "slurmd", "munged", "sbatch", "srun", "sinfo", "scancel")
PARTITION = "debug"


class ClusterUnavailable(RuntimeError):
    """The packages are missing or the daemons did not come up (the reason says which)."""


def missing_programs() -> list[str]:
    return [p for p in DAEMONS if shutil.which(p) is None and not Path(f"/usr/sbin/{p}").is_file()]


def _which(prog: str) -> str:
    return shutil.which(prog) or f"/usr/sbin/{prog}"


def _free_ports(n: int) -> list[int]:
    socks = [socket.socket() for _ in range(n)]
    try:
        for s in socks:
            s.bind(("127.0.0.1", 0))
        return [s.getsockname()[1] for s in socks]
    finally:
        for s in socks:
            s.close()


def _node_line(name: str) -> str:
    """``NodeName=... CPUs=... RealMemory=...`` as ``slurmd -C`` sees this machine."""
    try:
        out = subprocess.run([_which("slurmd"), "-C"], capture_output=True, text=True, timeout=30, check=False).stdout
        line = next(ln for ln in out.splitlines() if ln.startswith("NodeName="))
        fields = [f for f in line.split()[1:] if not f.startswith("UpTime")]
    except (OSError, StopIteration, subprocess.SubprocessError):
        fields = [f"CPUs={os.cpu_count() or 1}"]
    return " ".join([f"NodeName={name}", "NodeAddr=127.0.0.1", *fields, "State=UNKNOWN"])


class SlurmCluster:
    """Start with :meth:`start`, stop with :meth:`stop` (idempotent; also after a failed start)."""

    def __init__(self, root: Path | None = None):
        self.root = Path(root or tempfile.mkdtemp(prefix="fvslurm-"))
        self.node = socket.gethostname().split(".")[0]
        self.conf = self.root / "slurm.conf"
        self.procs: dict[str, subprocess.Popen] = {}
        self.env = {**os.environ, "SLURM_CONF": str(self.conf)}
        self.partition = PARTITION

    # -- set-up ------------------------------------------------------------------------------------
    def _write_files(self) -> None:
        r = self.root
        for d in ("state", "spool", "munge", "log"):
            (r / d).mkdir(parents=True, exist_ok=True)
        os.chmod(r, 0o755)          # job steps of this user must reach the config
        os.chmod(r / "munge", 0o700)
        key = r / "munge" / "munge.key"
        key.write_bytes(os.urandom(1024))
        os.chmod(key, 0o600)
        ctld_port, slurmd_port = _free_ports(2)
        user = getpass.getuser()
        self.conf.write_text("\n".join([
            "ClusterName=fvtrain-test",
            f"SlurmctldHost={self.node}(127.0.0.1)",
            f"SlurmctldPort={ctld_port}",
            f"SlurmdPort={slurmd_port}",
            f"SlurmUser={user}",
            "AuthType=auth/munge",
            "CredType=cred/munge",
            f"AuthInfo=socket={r / 'munge' / 'munge.socket'}",
            f"StateSaveLocation={r / 'state'}",
            f"SlurmdSpoolDir={r / 'spool'}",
            f"SlurmctldPidFile={r / 'slurmctld.pid'}",
            f"SlurmdPidFile={r / 'slurmd.pid'}",
            f"SlurmctldLogFile={r / 'log' / 'slurmctld.log'}",
            f"SlurmdLogFile={r / 'log' / 'slurmd.log'}",
            "SelectType=select/cons_tres",
            "SelectTypeParameters=CR_Core",
            "ProctrackType=proctrack/linuxproc",
            "TaskPlugin=task/none",
            "JobAcctGatherType=jobacct_gather/none",
            "AccountingStorageType=accounting_storage/none",
            "JobCompType=jobcomp/none",
            "MpiDefault=none",
            "ReturnToService=2",
            "SlurmdTimeout=300",
            "InactiveLimit=0",
            "KillWait=5",
            "MinJobAge=600",
            _node_line(self.node),
            f"PartitionName={PARTITION} Nodes=ALL Default=YES MaxTime=INFINITE State=UP",
            "",
        ]))

    def _spawn(self, name: str, argv: list[str]) -> None:
        log = open(self.root / "log" / f"{name}.out", "ab")  # noqa: SIM115  (the daemon keeps it)
        self.procs[name] = subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT,
                                            stdin=subprocess.DEVNULL, env=self.env,
                                            start_new_session=True)
        log.close()

    def _check_alive(self) -> None:
        for name, p in self.procs.items():
            if p.poll() is not None:
                raise ClusterUnavailable(f"{name} exited with status {p.returncode}: {self.logs(name)}")

    def start(self, timeout: float = 90) -> SlurmCluster:
        missing = missing_programs()
        if missing:
            raise ClusterUnavailable(
                f"SLURM is not installed ({', '.join(missing)} not found); install slurmctld slurmd "
                "slurm-client munge (sudo .ci/setup-slurm.sh) to run the slurm tests")
        try:
            self._write_files()
            m = self.root / "munge"
            self._spawn("munged", [_which("munged"), "-F", "--force", f"--socket={m / 'munge.socket'}",
                                   f"--key-file={m / 'munge.key'}", f"--pid-file={m / 'munged.pid'}",
                                   f"--seed-file={m / 'munged.seed'}", f"--log-file={m / 'munged.log'}"])
            self._wait(lambda: (m / "munge.socket").exists(), 20, "munged to open its socket")
            self._spawn("slurmctld", [_which("slurmctld"), "-D", "-c", "-f", str(self.conf)])
            self._wait(lambda: self._ok(["scontrol", "ping"]) and "UP" in self._out(["scontrol", "ping"]),
                       timeout / 2, "slurmctld to answer")
            self._spawn("slurmd", [_which("slurmd"), "-D", "-N", self.node, "-f", str(self.conf)])
            self._wait(lambda: self._out(["sinfo", "-h", "-o", "%t"]).strip() in ("idle", "mix", "alloc"),
                       timeout / 2, "the node to become idle")
        except BaseException:
            self.stop()
            raise
        return self

    def _wait(self, cond, timeout: float, what: str) -> None:
        end = time.monotonic() + timeout
        while time.monotonic() < end:
            self._check_alive()
            if cond():
                return
            time.sleep(0.3)
        raise ClusterUnavailable(f"timed out after {timeout:.0f}s waiting for {what}: {self.logs()}")

    def _out(self, argv: list[str]) -> str:
        try:
            return subprocess.run(argv, env=self.env, capture_output=True, text=True, timeout=20, check=False).stdout
        except (OSError, subprocess.SubprocessError):
            return ""

    def _ok(self, argv: list[str]) -> bool:
        try:
            return subprocess.run(argv, env=self.env, capture_output=True, timeout=20, check=False).returncode == 0
        except (OSError, subprocess.SubprocessError):
            return False

    # -- use ---------------------------------------------------------------------------------------
    def squeue(self) -> list[str]:
        """``<job id> <state>`` of every job the controller still lists."""
        return self._out(["squeue", "-h", "-o", "%i %T"]).split("\n")[:-1]

    def job_states(self) -> dict[str, str]:
        """Job id (``123`` or ``123_4``) -> state, for every job the controller remembers."""
        out = self._out(["scontrol", "show", "job", "-o"])
        states = {}
        for line in out.splitlines():
            f = dict(kv.split("=", 1) for kv in line.split() if "=" in kv)
            if "JobId" not in f:
                continue
            jid = f"{f['ArrayJobId']}_{f['ArrayTaskId']}" if f.get("ArrayTaskId", "").isdigit() else f["JobId"]
            states[jid] = f.get("JobState", "?")
        return states

    def logs(self, *names: str, tail: int = 1500) -> str:
        names = names or ("munged", "slurmctld", "slurmd")
        parts = []
        for n in names:
            for f in (self.root / "log" / f"{n}.out", self.root / "log" / f"{n}.log",
                      self.root / "munge" / f"{n}.log"):
                if f.is_file() and f.stat().st_size:
                    parts.append(f"[{f.name}] " + f.read_text(errors="replace")[-tail:])
        return "\n".join(parts) or "(no logs)"

    # -- tear-down ---------------------------------------------------------------------------------
    def stop(self) -> None:
        """Cancel every job, then stop slurmd, slurmctld and munged (only the processes started here)."""
        if "slurmctld" in self.procs and self.procs["slurmctld"].poll() is None:
            user = getpass.getuser()
            self._ok(["scancel", "--user", user])
            end = time.monotonic() + 20
            while time.monotonic() < end and self.squeue():
                time.sleep(0.5)
        for name in ("slurmd", "slurmctld", "munged"):
            p = self.procs.get(name)
            if p is None or p.poll() is not None:
                continue
            p.terminate()
            try:
                p.wait(15)
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait(5)
        self.procs.clear()


if __name__ == "__main__":
    c = SlurmCluster().start()
    print(f"export SLURM_CONF={c.conf}   # partition {c.partition}; Ctrl-C stops the cluster")
    try:
        while True:
            time.sleep(3600)
    except KeyboardInterrupt:
        pass
    finally:
        c.stop()
