"""The daemon's listeners as deployed: probes and metrics apart from the control API, TLS on the
control API with SIGHUP reloads, a CLI that never sends a token in clear, and a daemon that
waits for Vault instead of exiting."""

from __future__ import annotations

import contextlib
import os
import signal
import ssl
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TypeVar

import httpx
import pytest
import structlog
import trustme
from cryptography.hazmat.primitives import serialization
from test_daemon_process import wait_for
from world import LiveEnv

from vault_rotator import cli
from vault_rotator.daemon import http as http_module
from vault_rotator.daemon.http import Listener, TlsFiles
from vault_rotator.errors import ConfigError
from vault_rotator.testing.vault_server import VaultServer, free_port


def _daemon(vault: VaultServer, *args: str, **env: str) -> subprocess.Popen[str]:
    environment = {**os.environ, **vault.env(), "VAULT_ROTATOR_LEASE_TTL": "6s", **env}
    return subprocess.Popen(
        [sys.executable, "-m", "vault_rotator", "run", *args],
        env=environment,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def _stop(proc: subprocess.Popen[str]) -> str:
    proc.send_signal(signal.SIGTERM)
    _out, err = proc.communicate(timeout=15)
    assert proc.returncode == 0, err[-2000:]
    assert "Traceback" not in err
    return err


def _write_pair(ca: trustme.CA, where: Path, name: str) -> TlsFiles:
    cert = ca.issue_cert("127.0.0.1", "localhost")
    cert_file, key_file = where / f"{name}.crt", where / f"{name}.key"
    cert.cert_chain_pems[0].write_to_path(str(cert_file))
    for extra in cert.cert_chain_pems[1:]:
        extra.write_to_path(str(cert_file), append=True)
    cert.private_key_pem.write_to_path(str(key_file))
    return TlsFiles(str(cert_file), str(key_file))


def _trusting(ca: trustme.CA) -> ssl.SSLContext:
    context = ssl.create_default_context()
    ca.configure_trust(context)
    return context


def _status(url: str, ca: trustme.CA | None = None) -> int:
    verify: ssl.SSLContext | bool = True if ca is None else _trusting(ca)
    with httpx.Client(timeout=5, verify=verify) as http:
        return http.get(f"{url}/v1/status").status_code


@pytest.mark.slow
def test_probes_and_metrics_listen_apart_from_a_tls_control_api(
    vault: VaultServer, live_env: LiveEnv, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """With --metrics-listen and TLS: each listener serves only its own routes; SIGHUP reloads."""
    ca = trustme.CA()
    files = _write_pair(ca, tmp_path, "control")
    control, metrics = free_port(), free_port()
    proc = _daemon(
        vault,
        "--config", str(live_env.config),
        "--listen", f"127.0.0.1:{control}",
        "--metrics-listen", f"127.0.0.1:{metrics}",
        VAULT_ROTATOR_TLS_CERT_FILE=files.cert_file,
        VAULT_ROTATOR_TLS_KEY_FILE=files.key_file,
    )  # fmt: skip
    https, plain = f"https://127.0.0.1:{control}", f"http://127.0.0.1:{metrics}"
    try:
        with httpx.Client(timeout=5) as http:
            wait_for(lambda: _get(http, f"{plain}/readyz") == 200, 30, "readyz")
            assert http.get(f"{plain}/healthz").status_code == 200
            assert "vault_rotator_ticks_total" in http.get(f"{plain}/metrics").text
            assert http.get(f"{plain}/v1/status").status_code == 404  # no control API here
        assert _status(https, ca) == 401  # the control API, over TLS, wants a token
        with httpx.Client(timeout=5, verify=_trusting(ca)) as http:
            for path in ("/healthz", "/readyz", "/metrics"):
                assert http.get(f"{https}{path}").status_code == 404
        with pytest.raises(httpx.HTTPError):
            _status(f"http://127.0.0.1:{control}")  # plain HTTP gets no answer
        # the CLI over TLS, with the daemon's CA
        monkeypatch.setenv("VAULT_ROTATOR_DAEMON_CACERT", str(tmp_path / "ca.pem"))
        ca.cert_pem.write_to_path(str(tmp_path / "ca.pem"))
        monkeypatch.setenv("VAULT_TOKEN", vault.token)
        args = ["status", "--daemon", https, "--config", str(live_env.config)]
        assert cli.main(args) == 0
        # a renewed certificate from another CA is served after SIGHUP
        other = trustme.CA()
        renewed = _write_pair(other, tmp_path, "renewed")
        os.replace(renewed.cert_file, files.cert_file)
        os.replace(renewed.key_file, files.key_file)
        proc.send_signal(signal.SIGHUP)
        wait_for(lambda: _verifies(https, other), 10, "the renewed certificate")
        with pytest.raises(httpx.HTTPError):
            _status(https, ca)
    finally:
        _stop(proc)


def _get(http: httpx.Client, url: str) -> int:
    try:
        return http.get(url).status_code
    except httpx.HTTPError:
        return 0


def _verifies(url: str, ca: trustme.CA) -> bool:
    try:
        return _status(url, ca) == 401
    except httpx.HTTPError:
        return False


def test_a_bad_tls_reload_keeps_the_old_certificate(tmp_path: Path) -> None:
    """A certificate file replaced by garbage is refused; the listener keeps serving the old one."""
    ca = trustme.CA()
    files = _write_pair(ca, tmp_path, "c")
    listener = Listener("127.0.0.1", 0, control=None, ready=None, metrics=None, tls=files)
    listener.start()
    try:
        Path(files.cert_file).write_text("not a certificate")
        assert listener.reload_tls() is False
        assert _status(listener.address, ca) == 404  # still TLS, still our certificate
    finally:
        listener.stop()
    with pytest.raises(ConfigError, match="do not load"):
        Listener("127.0.0.1", 0, tls=files)


def test_a_port_in_use_is_a_one_line_error() -> None:
    """Listening where another listener already is: ConfigError naming the address."""
    first = Listener("127.0.0.1", 0)
    address = first.server.server_address
    host, port = str(address[0]), int(address[1])
    try:
        with pytest.raises(ConfigError, match=f"cannot listen on {host}:{port}"):
            Listener(host, port)
    finally:
        first.server.server_close()


@pytest.mark.parametrize(
    "url", ["http://rotator.example:9780", "http://192.0.2.10:9780", "http://[2001:db8::1]:9780"]
)
def test_the_cli_never_sends_a_token_over_plain_http_off_loopback(
    url: str, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """A plain-http daemon URL off loopback is refused before any connection is tried."""
    monkeypatch.setenv("VAULT_TOKEN", "hvs.never-sent-anywhere-0123456789")
    config = str(Path(__file__).resolve().parent.parent / "config")
    assert cli.main(["status", "--daemon", url, "--config", config]) == 2
    err = capsys.readouterr().err
    assert "refusing to send VAULT_TOKEN over plain http" in err
    assert "never-sent" not in err


@pytest.mark.slow
def test_the_daemon_waits_for_vault_instead_of_exiting(
    vault: VaultServer, live_env: LiveEnv
) -> None:
    """Vault not up yet: the daemon stays, /healthz 200, /readyz 503 naming Vault, SIGTERM 0."""
    metrics = free_port()
    nowhere = f"http://127.0.0.1:{free_port()}"
    proc = _daemon(
        vault,
        "--config", str(live_env.config),
        "--listen", f"127.0.0.1:{free_port()}",
        "--metrics-listen", f"127.0.0.1:{metrics}",
        VAULT_ADDR=nowhere,
    )  # fmt: skip
    try:
        with httpx.Client(timeout=5) as http:
            wait_for(lambda: _get(http, f"http://127.0.0.1:{metrics}/healthz") == 200, 30, "up")
            time.sleep(2)
            assert proc.poll() is None
            ready = http.get(f"http://127.0.0.1:{metrics}/readyz")
            assert ready.status_code == 503
            assert "vault" in ready.text
    finally:
        err = _stop(proc)
    assert "waiting for Vault" in err


def test_a_certificate_renewed_in_place_is_picked_up_without_a_signal(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Kubernetes rewrites a mounted Secret and sends no SIGHUP: new files are noticed on accept."""
    monkeypatch.setattr(http_module, "TLS_WATCH_S", 0.0)
    first, second = trustme.CA(), trustme.CA()
    files = _write_pair(first, tmp_path, "live")
    listener = Listener("127.0.0.1", 0, tls=files)
    listener.start()
    try:
        assert _status(listener.address, first) == 404
        renewed = _write_pair(second, tmp_path, "next")
        os.replace(renewed.cert_file, files.cert_file)
        os.replace(renewed.key_file, files.key_file)
        os.utime(files.cert_file, ns=(1, time.time_ns() + 10**9))  # a new mtime, whatever the fs
        assert _status(listener.address, second) == 404
        with pytest.raises(httpx.HTTPError):
            _status(listener.address, first)
    finally:
        listener.stop()


def test_a_pass_phrase_protected_key_fails_in_one_line_without_prompting(tmp_path: Path) -> None:
    """An encrypted TLS key would make OpenSSL prompt on the terminal: it is refused instead."""
    ca = trustme.CA()
    files = _write_pair(ca, tmp_path, "enc")
    key = serialization.load_pem_private_key(Path(files.key_file).read_bytes(), password=None)
    Path(files.key_file).write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.BestAvailableEncryption(b"secret"),
        )
    )
    with pytest.raises(ConfigError, match="pass phrase"):
        files.context()


# -- issue 20 item 8: a FIFO (or device, or directory) given as a TLS file --------------------

REPO_CONFIG = str(Path(__file__).resolve().parent.parent / "config")
T = TypeVar("T")


@contextlib.contextmanager
def _unblocked(fifo: Path) -> Iterator[None]:
    """If the code under test opens ``fifo`` for reading (and so blocks), let it go afterwards:
    a writer that opens and closes gives it end of file."""
    try:
        yield
    finally:
        with contextlib.suppress(OSError):
            os.close(os.open(fifo, os.O_WRONLY | os.O_NONBLOCK))


def _in_thread(call: Callable[[], T], limit: float) -> tuple[T | None, float]:
    """``call()`` in a thread: its result (None if still running after ``limit``), and how long
    it took (a call blocked on a FIFO must not block the test)."""
    result: list[T] = []
    began = time.monotonic()
    thread = threading.Thread(target=lambda: result.append(call()), daemon=True)
    thread.start()
    thread.join(limit)
    return (result[0] if result else None), time.monotonic() - began


def _run_in_thread(argv: list[str], limit: float) -> tuple[int | None, float]:
    """cli.main(argv) in a thread: its exit code (None if still running after ``limit``)."""
    return _in_thread(lambda: cli.main(argv), limit)


@pytest.mark.parametrize("which", ["cert", "key"])
def test_a_fifo_as_a_tls_file_makes_run_exit_2_at_once(
    which: str,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    """``run --tls-cert-file FIFO`` (or the key) used to hang at start with no output: it is
    refused within a second, one line naming the file, exit 2."""
    fifo = tmp_path / "tls.fifo"
    os.mkfifo(fifo)
    real = _write_pair(trustme.CA(), tmp_path, "real")
    cert, key = (str(fifo), real.key_file) if which == "cert" else (real.cert_file, str(fifo))
    monkeypatch.setenv("VAULT_ADDR", "http://127.0.0.1:9")
    monkeypatch.setenv("VAULT_TOKEN", "not-a-real-token")
    argv = ["run", "--config", REPO_CONFIG, "--listen", "127.0.0.1:0"]
    argv += ["--tls-cert-file", cert, "--tls-key-file", key]
    with _unblocked(fifo):
        code, took = _run_in_thread(argv, limit=5.0)
    structlog.reset_defaults()
    err = capsys.readouterr().err
    assert code == 2, err
    assert took < 1.0
    assert err.splitlines() == [
        f"vault-rotator: --tls-{which}-file {fifo}: not a regular file (a directory, FIFO or "
        "device): not read"
    ]


def test_a_fifo_swapped_in_for_the_certificate_is_refused_on_reload(tmp_path: Path) -> None:
    """A reload (SIGHUP, or the files' times changing) meets a FIFO: refused without opening
    it, the old certificate kept."""
    ca = trustme.CA()
    files = _write_pair(ca, tmp_path, "c")
    listener = Listener("127.0.0.1", 0, tls=files)
    listener.start()
    try:
        Path(files.cert_file).unlink()
        os.mkfifo(files.cert_file)
        with _unblocked(Path(files.cert_file)):
            reloaded, took = _in_thread(listener.reload_tls, limit=5.0)
        assert reloaded is False
        assert took < 1.0
        assert _status(listener.address, ca) == 404  # still our certificate
    finally:
        listener.stop()


def test_a_fifo_as_the_daemons_ca_bundle_is_refused_at_once(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """``VAULT_ROTATOR_DAEMON_CACERT`` naming a FIFO: exit 2, one line, without opening it."""
    fifo = tmp_path / "ca.fifo"
    os.mkfifo(fifo)
    monkeypatch.setenv("VAULT_ROTATOR_DAEMON_CACERT", str(fifo))
    monkeypatch.setenv("VAULT_TOKEN", "not-a-real-token")
    with _unblocked(fifo):
        code, took = _run_in_thread(["status", "--daemon", "https://127.0.0.1:9"], limit=5.0)
    structlog.reset_defaults()
    err = capsys.readouterr().err
    assert code == 2, err
    assert took < 1.0
    assert err.splitlines() == [
        f"vault-rotator: VAULT_ROTATOR_DAEMON_CACERT {fifo}: not a regular file (a directory, "
        "FIFO or device): not read"
    ]
