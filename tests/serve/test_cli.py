"""``rdfast serve``: flags checked before the model loads (one line, exit 2), loopback by default, and the real
command serving the tiny model until SIGTERM."""
import argparse
import os
import signal
import socket
import subprocess
import sys
import time

import pytest
import requests

from rdfast.cli import main
from rdfast.serve import cli as serve_cli


def parse(argv):
    parser = argparse.ArgumentParser()
    serve_cli.register(parser.add_subparsers(dest="command"))
    return parser.parse_args(["serve", *argv])


def test_binds_loopback_by_default():
    args = parse(["--model", "tiny:qwen2_vl"])
    assert args.host == "127.0.0.1"
    settings = serve_cli.settings_from_args(args)
    assert settings.max_body_bytes == 64 << 20 and settings.max_pixels == 40_000_000 and settings.api_key is None


@pytest.mark.parametrize("flags, message", [
    (["--max-batch", "0"], "--max-batch must be positive"),
    (["--queue-size", "-1"], "--queue-size must be positive"),
    (["--max-wait-ms", "-5"], "--max-wait-ms must not be negative"),
    (["--port", "70000"], "--port must be in [0, 65535]"),
    (["--api-key", " "], "--api-key must not be empty"),
    (["--device", "nonsense"], "--device 'nonsense' is not a device"),
])
def test_bad_flags_are_one_line_and_exit_2(capsys, flags, message):
    with pytest.raises(SystemExit) as exit_:
        main(["serve", "--model", "no/such/model/dir", *flags])
    assert exit_.value.code == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and message in err and err.startswith("rdfast serve: error:")


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def test_the_command_serves_until_sigterm():
    port = free_port()
    env = dict(os.environ, HF_HUB_OFFLINE="1")
    proc = subprocess.Popen([sys.executable, "-m", "rdfast.cli", "serve", "--model", "tiny:qwen2_vl", "--port",
                             str(port), "--device", "cpu"], env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + 90
        while True:
            assert proc.poll() is None, proc.stdout.read().decode()
            assert time.monotonic() < deadline, "the server did not come up"
            try:
                health = requests.get(f"http://127.0.0.1:{port}/health", timeout=2).json()
                break
            except requests.ConnectionError:
                time.sleep(0.2)
        assert health["status"] == "ok" and health["model"] == "tiny:qwen2_vl"
        proc.send_signal(signal.SIGTERM)
        # uvicorn shuts down gracefully (the lifespan drains the batcher), then re-raises the signal it caught
        assert proc.wait(30) in (0, -signal.SIGTERM)
        assert "Application shutdown complete" in proc.stdout.read().decode()
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
