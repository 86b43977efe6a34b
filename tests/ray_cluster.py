"""One local Ray instance for every Ray test of the session (starting one takes several seconds), with little
memory and no dashboard; test modules import the ``ray_local`` fixture from here. Every actor and replica the
tests start asks for half a CPU, so Serve replicas and Ray Data actors never wait on each other's CPUs."""
import os
import pathlib

import pytest

#: what each test replica or actor reserves: two fit beside a read task on the instance's 2 CPUs
ACTOR_CPUS = 0.5
ROOT = str(pathlib.Path(__file__).resolve().parents[1])


@pytest.fixture(scope="session")
def ray_local():
    """The running local Ray instance (2 CPUs), shut down at the end of the session (skips without Ray)."""
    ray = pytest.importorskip("ray")
    pytest.importorskip("ray.serve")
    pytest.importorskip("ray.data")
    if not ray.is_initialized():
        # workers import this checkout's rdfast, whatever the installed copy is
        path = os.pathsep.join(p for p in (ROOT, os.environ.get("PYTHONPATH")) if p)
        ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False, object_store_memory=200 << 20,
                 runtime_env={"env_vars": {"PYTHONPATH": path, "HF_HUB_OFFLINE": "1",
                                           "TOKENIZERS_PARALLELISM": "false"}})
    ray.data.DataContext.get_current().enable_progress_bars = False
    yield ray
    if ray.is_initialized():
        ray.shutdown()
