import socket
import threading
import time

import pytest

from conftest import load_rm  # tests/conftest.py

uvicorn = pytest.importorskip("uvicorn")
pytest.importorskip("fastapi")
pytest.importorskip("prometheus_client")


@pytest.fixture(scope="module")
def rm():
    """The tiny Qwen2-VL reward model every server test serves (one per test module)."""
    return load_rm("qwen2_vl")


@pytest.fixture(scope="module")
def start_server():
    """start(app) -> base URL: a real uvicorn server on a free loopback port, in a thread, stopped (drained) at
    the end of the module."""
    running = []

    def start(app) -> str:
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        sock.bind(("127.0.0.1", 0))
        server = uvicorn.Server(uvicorn.Config(app, log_level="warning", lifespan="on"))
        thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
        thread.start()
        deadline = time.monotonic() + 30
        while not server.started:
            assert time.monotonic() < deadline and thread.is_alive(), "the server did not start"
            time.sleep(0.02)
        running.append((server, thread, sock))
        return f"http://127.0.0.1:{sock.getsockname()[1]}"

    yield start
    for server, thread, sock in running:
        server.should_exit = True
        thread.join(30)
        sock.close()
