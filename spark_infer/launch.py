"""spark-submit without Delta on the classpath: relaunch with `--packages` (or `--jars`).

Under spark-submit the JVM starts before the script runs, so `spark.jars.packages` set in the
script's session builder is silently ignored. The job detects the missing classes and starts
spark-submit again with the same master, deploy mode and confs plus Delta's package (or local jars
from $SPARK_INFER_DELTA_JARS / `delta_jars`), then exits with its exit code.

The confs travel in a properties file only this user can read, never on the child's command line,
where `ps` would show every secret that spark-defaults.conf holds.

A SIGTERM/SIGINT to this process while the relaunched job runs is passed on to the relaunched job's
Python driver (or, while its JVM is still starting, to the child), and this process exits with the
child's code (5 where the signal ended it).
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import tempfile
import threading
import time

from spark_infer.delta_jars import delta_flags
from spark_infer.log import event
from spark_infer.sessions import SessionCapabilities

RELAUNCH_ENV = "SPARK_INFER_RELAUNCHED"
_SKIP_CONFS = {
    "spark.app.id", "spark.app.startTime", "spark.app.submitTime", "spark.driver.host", "spark.driver.port",
    "spark.executor.id", "spark.app.initial.jar.urls", "spark.repl.local.jars", "spark.master",
    "spark.submit.deployMode", "spark.app.name", "spark.jars.packages", "spark.jars", "spark.submit.pyFiles",
    "spark.files", "spark.sql.extensions", "spark.sql.catalog.spark_catalog",
}


def under_spark_submit() -> bool:
    """True when this Python process was started by spark-submit (its JVM is our parent)."""
    return bool(os.environ.get("PYSPARK_GATEWAY_PORT")) and "DATABRICKS_RUNTIME_VERSION" not in os.environ


def _escape(text: str, key: bool = False) -> str:
    """java.util.Properties escaping (what spark-submit's --properties-file reads)."""
    out = text.replace("\\", "\\\\").replace("\n", "\\n").replace("\r", "\\r").replace("\t", "\\t")
    if key:
        out = out.replace("=", "\\=").replace(":", "\\:").replace(" ", "\\ ")
    elif out.startswith(" "):
        out = "\\" + out
    return out


def relaunch_confs(caps: SessionCapabilities) -> dict[str, str]:
    """The running session's confs that the relaunched job must keep (for its properties file)."""
    return {k: v for k, v in sorted(caps.conf_items().items())
            if k not in _SKIP_CONFS and not k.startswith("spark.driver.extraJavaOptions")}


def write_properties(confs: dict[str, str], path: str) -> None:
    """Write `confs` to `path` readable by this user only (0600 from creation on)."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w", encoding="utf-8") as f:
        for k, v in confs.items():
            f.write(f"{_escape(k, key=True)}={_escape(v)}\n")


def relaunch_command(caps: SessionCapabilities, script: str, args: list[str], delta_jars: str | None = None,
                     properties_file: str | None = None) -> list[str]:
    """The spark-submit command line that reruns `script args` with Delta added; the session's other
    confs are read from `properties_file` (see `write_properties`)."""
    conf = caps.conf_items()
    spark_home = os.environ.get("SPARK_HOME")
    submit = os.path.join(spark_home, "bin", "spark-submit") if spark_home else "spark-submit"
    cmd = [submit, "--master", conf.get("spark.master", "local[*]")]
    if properties_file:
        cmd += ["--properties-file", properties_file]
    if conf.get("spark.submit.deployMode"):
        cmd += ["--deploy-mode", conf["spark.submit.deployMode"]]
    if conf.get("spark.app.name"):
        cmd += ["--name", conf["spark.app.name"]]
    flags = delta_flags(delta_jars)
    if conf.get("spark.jars.packages") and "--packages" in flags:
        i = flags.index("--packages")
        flags[i + 1] = f"{conf['spark.jars.packages']},{flags[i + 1]}"
    elif conf.get("spark.jars.packages"):
        cmd += ["--packages", conf["spark.jars.packages"]]
    if conf.get("spark.jars") and "--jars" in flags:
        i = flags.index("--jars")
        flags[i + 1] = f"{conf['spark.jars']},{flags[i + 1]}"
    elif conf.get("spark.jars"):
        cmd += ["--jars", conf["spark.jars"]]
    for key in ("spark.submit.pyFiles", "spark.files"):
        if conf.get(key):
            cmd += ["--py-files" if key == "spark.submit.pyFiles" else "--files", conf[key]]
    cmd += flags
    return [*cmd, os.path.abspath(script), *args]


def relaunch_with_delta(caps: SessionCapabilities, args: list[str], delta_jars: str | None = None) -> int:
    """Stop this session, rerun the job under spark-submit with Delta, return its exit code."""
    fd, props = tempfile.mkstemp(prefix="spark-infer-relaunch-", suffix=".properties")  # 0600
    os.close(fd)
    try:
        write_properties(relaunch_confs(caps), props)
        cmd = relaunch_command(caps, sys.argv[0], args, delta_jars, props)
        caps.spark.stop()
        env = dict(os.environ, **{RELAUNCH_ENV: "1"})
        for k in ("PYSPARK_GATEWAY_PORT", "PYSPARK_GATEWAY_SECRET"):
            env.pop(k, None)
        event("relaunch", reason="delta_missing", flags=" ".join(delta_flags(delta_jars)))
        return run_forwarding_signals(cmd, env, os.path.abspath(sys.argv[0]))
    finally:
        os.unlink(props)


#: after a forwarded stop, how long the child has before it and its descendants are killed
FORWARD_KILL_AFTER_S = 15.0


def run_forwarding_signals(cmd: list[str], env: dict[str, str] | None, script: str) -> int:
    """Run `cmd` to its end and return its exit code; SIGTERM/SIGINT meanwhile go on to the child.

    The child stays in this process group (a signal to the whole group reaches it as before, and it
    dies with the group). A signal to this process alone goes to the descendant running `script` (the
    relaunched job's Python driver: it stops, writes its record, and spark-submit exits with its code)
    or, before that driver exists, to the child itself. A child ended by the signal gives 5.
    """
    children: list[subprocess.Popen] = []
    forwarded: list[float] = []  # when each signal was passed on

    def forward(signum: int, frame: object) -> None:  # noqa: ARG001 - the signal handler: os.kill only
        forwarded.append(time.monotonic())
        if not children:
            return  # not started yet: it gets SIGTERM once it is
        targets = [p for p in descendants(children[0].pid) if script in cmdline(p)] or [children[0].pid]
        for pid in targets:
            try:
                os.kill(pid, signum)
            except ProcessLookupError:
                pass

    previous = {}
    if threading.current_thread() is threading.main_thread():
        for sig in (signal.SIGTERM, signal.SIGINT):
            previous[sig] = signal.signal(sig, forward)
    try:
        child = subprocess.Popen(cmd, env=env)
        children.append(child)
        if forwarded:
            child.terminate()
        while True:
            try:
                code = child.wait(timeout=0.5)
                break
            except subprocess.TimeoutExpired:
                pass
            if forwarded and time.monotonic() - forwarded[0] > FORWARD_KILL_AFTER_S:
                end_children(only=child.pid)
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
    if forwarded and (code < 0 or code >= 128):
        return 5  # spark_infer.run.ExitCode.INTERRUPTED: ended by the signal before the driver could say so
    return code


def cmdline(pid: int) -> str:
    """The command line of process `pid` ("" when it is gone)."""
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            return f.read().replace(b"\0", b" ").decode(errors="replace")
    except OSError:
        return ""


def descendants(pid: int) -> list[int]:
    """Every live descendant of `pid`, parents first (from /proc; [] where there is none)."""
    children: dict[int, list[int]] = {}
    try:
        entries = os.listdir("/proc")
    except OSError:
        return []
    for entry in entries:
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat", "rb") as f:
                stat = f.read()
        except OSError:
            continue
        ppid = int(stat[stat.rindex(b")") + 2:].split()[1])  # the name may hold spaces and parentheses
        children.setdefault(ppid, []).append(int(entry))
    out: list[int] = []
    todo = [pid]
    while todo:
        for c in children.get(todo.pop(0), []):
            out.append(c)
            todo.append(c)
    return out


def end_children(only: int | None = None, grace_s: float = 1.0) -> None:
    """SIGTERM this process's descendants (or `only` and its descendants), SIGKILL what is left after
    `grace_s`: a stop that cannot wait orphans nothing (a JVM still starting, its workers)."""
    pids = ([only] + descendants(only)) if only is not None else descendants(os.getpid())
    for sig in (signal.SIGTERM, signal.SIGKILL):
        alive = []
        for pid in pids:
            try:
                os.kill(pid, sig)
                alive.append(pid)
            except ProcessLookupError:
                pass
        if not alive or sig == signal.SIGKILL:
            return
        end = time.monotonic() + grace_s
        while time.monotonic() < end and any(_alive(p) for p in alive):
            time.sleep(0.05)
        pids = [p for p in alive if _alive(p)]


def _alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            stat = f.read()
        return stat[stat.rindex(b")") + 2:stat.rindex(b")") + 3] != b"Z"
    except OSError:
        try:
            os.kill(pid, 0)
            return True
        except ProcessLookupError:
            return False
