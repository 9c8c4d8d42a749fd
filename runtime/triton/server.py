"""``maskrt serve``: a local Triton Inference Server on a model repository.

The server is, in this order: the one in ``$MASKRT_TRITON_HOME`` (a folder holding
``bin/tritonserver``), the ``tritonserver`` on PATH (NVIDIA's container), or the one the
``nvidia-pytriton`` wheel carries (Triton 2.51 with its Python backend). That wheel pins
numpy < 2 for its own Python API, which maskrt does not use, so it goes in with
``pip install --no-deps nvidia-pytriton``. The wheel's server needs, measured here
(../shared/FACTS.md): a backend folder holding ``python/`` with the Python backend's stub for
this interpreter's version, the wheel's ``nvidia_pytriton.libs`` on ``LD_LIBRARY_PATH``, and this
interpreter's own libpython first there (the stub would load the system's otherwise). The
stub embeds that interpreter without this environment's packages: ``MASKRT_SITE_DIRS`` names
them, and the repository's model.py adds them.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import site
import subprocess
import sys
import sysconfig
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from types import TracebackType

from maskrt.errors import MaskrtError


def _wheel_server() -> Path | None:
    """The tritonserver folder of the nvidia-pytriton wheel ($MASKRT_TRITON_HOME, or the
    installed package), if there is one."""
    import importlib.util

    home = os.environ.get("MASKRT_TRITON_HOME")
    if home:
        return Path(home) if (Path(home) / "bin" / "tritonserver").is_file() else None
    found = importlib.util.find_spec("pytriton")
    if found is None or not found.submodule_search_locations:
        return None
    folder = Path(list(found.submodule_search_locations)[0]) / "tritonserver"
    return folder if (folder / "bin" / "tritonserver").is_file() else None


def find_tritonserver() -> Path:
    """The tritonserver executable: $MASKRT_TRITON_HOME's, PATH's, else the wheel's."""
    home = os.environ.get("MASKRT_TRITON_HOME")
    if home and not (Path(home) / "bin" / "tritonserver").is_file():
        raise MaskrtError(f"MASKRT_TRITON_HOME={home} holds no bin/tritonserver")
    on_path = shutil.which("tritonserver")
    if on_path and not home:
        return Path(on_path)
    wheel = _wheel_server()
    if wheel is None:
        raise MaskrtError(
            "no tritonserver here: pip install --no-deps nvidia-pytriton (x86_64 Linux), or "
            "run in NVIDIA's Triton container"
        )
    return wheel / "bin" / "tritonserver"


def _wheel_backends(wheel: Path, into: Path) -> Path:
    """A backend folder for the wheel's server: python/ with the stub for this Python."""
    stub = wheel / "python_backend_stubs" / f"{sys.version_info[0]}.{sys.version_info[1]}"
    if not (stub / "triton_python_backend_stub").is_file():
        raise MaskrtError(f"the nvidia-pytriton wheel has no Python backend stub for {stub.name}")
    python = into / "python"
    shutil.copytree(wheel / "backends" / "python", python, dirs_exist_ok=True)
    shutil.copy2(stub / "triton_python_backend_stub", python / "triton_python_backend_stub")
    return into


class TritonServer:
    """A ``tritonserver`` process on ``repository``, listening on 127.0.0.1 only unless
    ``address`` says otherwise; a context manager that stops it."""

    def __init__(
        self,
        repository: str | os.PathLike[str],
        http_port: int = 8000,
        grpc_port: int = 8001,
        metrics_port: int = 8002,
        address: str = "127.0.0.1",
        log_path: str | os.PathLike[str] | None = None,
    ) -> None:
        self.repository = Path(repository)
        if not self.repository.is_dir():
            raise MaskrtError(f"model repository {self.repository} does not exist")
        self.http_port, self.grpc_port, self.metrics_port = http_port, grpc_port, metrics_port
        self.address = address
        self._scratch = tempfile.TemporaryDirectory(prefix="maskrt-triton-")
        self.log_path = Path(log_path) if log_path else Path(self._scratch.name) / "server.log"
        self.process: subprocess.Popen[bytes] | None = None
        self._stop_requested = False

    def _command_and_env(self) -> tuple[list[str], dict[str, str]]:
        exe = find_tritonserver()
        env = dict(os.environ)
        cmd = [
            str(exe),
            f"--model-repository={self.repository.resolve()}",
            f"--http-port={self.http_port}",
            f"--grpc-port={self.grpc_port}",
            f"--metrics-port={self.metrics_port}",
            f"--http-address={self.address}",
            f"--grpc-address={self.address}",
            f"--metrics-address={self.address}",
            "--exit-on-error=true",
            "--exit-timeout-secs=5",  # requests in flight get 5 s at shutdown
        ]
        wheel = _wheel_server()
        if wheel is not None and exe == wheel / "bin" / "tritonserver":
            backends = _wheel_backends(wheel, Path(self._scratch.name) / "backends")
            cmd.append(f"--backend-directory={backends}")
            # the wheel's bundled libraries sit beside its package folder
            libs = [str(sysconfig.get_config_var("LIBDIR") or ""),
                    str(wheel.parent.parent / "nvidia_pytriton.libs")]  # fmt: skip
            env["LD_LIBRARY_PATH"] = os.pathsep.join(
                [p for p in (*libs, env.get("LD_LIBRARY_PATH", "")) if p]
            )
        env["MASKRT_SITE_DIRS"] = os.pathsep.join(site.getsitepackages())
        return cmd, env

    def start(self, timeout_s: float = 180.0) -> TritonServer:
        """Start the server and wait until every model is ready; a MaskrtError with the end of
        the server's log if it exits or is not ready within ``timeout_s``."""
        cmd, env = self._command_and_env()
        log = open(self.log_path, "wb")  # noqa: SIM115 - held open for the process's lifetime
        self.process = subprocess.Popen(
            cmd, stdout=log, stderr=subprocess.STDOUT, env=env, start_new_session=True
        )
        log.close()
        deadline = time.monotonic() + timeout_s
        try:
            while time.monotonic() < deadline:
                if self.process.poll() is not None:
                    if self._stop_requested:
                        raise MaskrtError("tritonserver was stopped before it was ready")
                    raise MaskrtError(
                        f"tritonserver exited ({self.process.returncode}): {self._tail()}"
                    )
                if self.ready():
                    return self
                time.sleep(0.25)
        except KeyboardInterrupt:  # the server runs in its own session: Ctrl-C does not reach it
            self.stop()
            raise
        self.stop()
        raise MaskrtError(f"tritonserver was not ready after {timeout_s:.0f} s: {self._tail()}")

    def ready(self) -> bool:
        """Whether the server answers ready (all its models loaded) on HTTP."""
        url = f"http://{self.address}:{self.http_port}/v2/health/ready"
        try:
            with urllib.request.urlopen(url, timeout=2) as r:
                return bool(r.status == 200)
        except (urllib.error.URLError, OSError):
            return False

    def _tail(self, lines: int = 15) -> str:
        try:
            text = self.log_path.read_text(errors="replace").strip().splitlines()
        except OSError:
            return "(no log)"
        errors = [ln for ln in text if ln.startswith("E")] or text
        return " | ".join(errors[-lines:])

    def stop(self, timeout_s: float = 30.0) -> int | None:
        """Stop the server (SIGTERM, then SIGKILL after ``timeout_s``); its exit code."""
        if self.process is None or self.process.poll() is not None:
            return None if self.process is None else self.process.returncode
        os.killpg(self.process.pid, signal.SIGTERM)
        try:
            return self.process.wait(timeout_s)
        except subprocess.TimeoutExpired:
            os.killpg(self.process.pid, signal.SIGKILL)
            return self.process.wait()

    def _terminate(self) -> None:
        """Ask the server to stop (SIGTERM to its process group), without waiting."""
        self._stop_requested = True
        if self.process is not None and self.process.poll() is None:
            os.killpg(self.process.pid, signal.SIGTERM)

    @contextlib.contextmanager
    def stopped_by_sigterm(self) -> Iterator[None]:
        """While inside, SIGTERM to this process asks the server to stop instead of killing
        this process (which would leave the server, in its own session, running): enter it
        before :meth:`start` so that no moment is left uncovered."""
        # the handler only signals: waiting inside it would deadlock on Popen's wait lock
        previous = signal.signal(signal.SIGTERM, lambda _signum, _frame: self._terminate())
        try:
            yield
        finally:
            signal.signal(signal.SIGTERM, previous)

    def wait(self) -> int:
        """Block until the server exits; Ctrl-C or SIGTERM ask it to stop first (it finishes the
        requests in flight, for at most 5 s)."""
        assert self.process is not None, "start() first"
        with self.stopped_by_sigterm():
            while True:
                try:
                    return self.process.wait()
                except KeyboardInterrupt:
                    self._terminate()

    def __enter__(self) -> TritonServer:
        return self.start()

    def __exit__(
        self,
        kind: type[BaseException] | None,
        value: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()
        self._scratch.cleanup()
