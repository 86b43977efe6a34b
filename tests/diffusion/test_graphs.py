"""CUDA graphs for the denoiser step: eager on CPU and when switched off; on a GPU, replay equals eager.
No diffusers needed (the GPU machines may lack it): the schedule is a rectified-flow one written out."""
import pytest
import torch

from rdfast.diffusion.graphs import GraphRunner, graphs_available
from rdfast.diffusion.sampler import FLOW, Sampler, Schedule

CUDA = torch.cuda.is_available()


def flow_schedule(steps, shift=3.0):
    """FlowMatchEulerDiscreteScheduler's sigmas (static shift), as a Schedule."""
    def shifted(x):
        return shift * x / (1 + (shift - 1) * x)

    # diffusers spaces the inference sigmas down to its (already shifted) smallest training sigma, then shifts
    s = shifted(torch.linspace(1.0, shifted(1.0 / 1000), steps, dtype=torch.float64))
    levels = torch.cat([s, torch.zeros(1, dtype=torch.float64)])
    return Schedule(FLOW, "flow", s * 1000, s.clone(), levels, True, "FlowMatchEulerDiscreteScheduler")


class TinyDenoiser(torch.nn.Module):
    """A small conv net standing in for a denoiser: fixed shapes, several kernels per step."""

    def __init__(self, c=4, hidden=32):
        super().__init__()
        self.inp = torch.nn.Conv2d(c, hidden, 3, padding=1)
        self.mid = torch.nn.Conv2d(hidden, hidden, 3, padding=1)
        self.out = torch.nn.Conv2d(hidden, c, 3, padding=1)
        self.emb = torch.nn.Linear(1, hidden)

    def forward(self, x, t, cond):
        h = self.inp(x) + self.emb(t[:, None] / 1000)[:, :, None, None] + cond[:, :, None, None]
        return self.out(torch.nn.functional.silu(self.mid(torch.nn.functional.silu(h))))


def _sampler(device, graphs, steps=6):
    torch.manual_seed(0)
    net = TinyDenoiser().to(device).eval()
    return Sampler(net, flow_schedule(steps), graphs=graphs), net


def test_written_out_schedule_matches_diffusers():
    diffusers = pytest.importorskip("diffusers")
    sched = diffusers.FlowMatchEulerDiscreteScheduler(shift=3.0)
    sched.set_timesteps(6)
    ref = Schedule.from_scheduler(sched)
    ours = flow_schedule(6)
    torch.testing.assert_close(ours.levels, ref.levels, rtol=1e-6, atol=1e-6)
    torch.testing.assert_close(ours.timesteps, ref.timesteps, rtol=1e-6, atol=1e-4)


def _run(sampler, x, cond):
    with torch.no_grad():
        outs = [sampler.step(x, i, (cond,)) for i in range(sampler.schedule.num_steps)]
    return outs


def test_cpu_runs_eager(gen):
    runner = GraphRunner(lambda a, b: a * 2 + b)
    a, b = torch.randn(3, generator=gen), torch.randn(3, generator=gen)
    torch.testing.assert_close(runner(a, b), a * 2 + b)
    assert runner.captures == 0 and runner.replays == 0
    assert not runner.active_for((a, b))


def test_switch_off_by_argument_and_environment(monkeypatch):
    assert not GraphRunner(lambda a: a, enabled=False).active_for((torch.zeros(1),))
    monkeypatch.setenv("RDFAST_CUDA_GRAPHS", "0")
    assert not graphs_available()


def test_sampler_same_with_and_without_graphs_on_cpu(gen):
    x = torch.randn(2, 4, 8, 8, generator=gen)
    cond = torch.randn(2, 32, generator=gen)
    on, _ = _sampler("cpu", True)
    off, _ = _sampler("cpu", False)
    for (a, a0), (b, b0) in zip(_run(on, x, cond), _run(off, x, cond)):
        torch.testing.assert_close(a, b, rtol=0, atol=0)
        torch.testing.assert_close(a0, b0, rtol=0, atol=0)


@pytest.mark.gpu
@pytest.mark.skipif(not CUDA, reason="CUDA graphs need a GPU")
@pytest.mark.parametrize("batch", [1, 3])
def test_graph_replay_equals_eager_on_gpu(batch):
    dev = torch.device("cuda")
    gen = torch.Generator(device="cpu").manual_seed(batch)
    graphed, _ = _sampler(dev, True)
    eager, _ = _sampler(dev, False)
    for _rep in range(2):  # new inputs each time: the static buffers are refilled, not stale
        x = torch.randn(batch, 4, 16, 16, generator=gen).to(dev)
        cond = torch.randn(batch, 32, generator=gen).to(dev)
        got = _run(graphed, x, cond)
        ref = _run(eager, x, cond)
        for (a, a0), (b, b0) in zip(got, ref):
            torch.testing.assert_close(a, b, rtol=1e-6, atol=1e-6)
            torch.testing.assert_close(a0, b0, rtol=1e-6, atol=1e-6)
    assert graphed.graphs.captures == 1  # one shape: captured once, replayed for every step and repeat
    assert graphed.graphs.replays == 2 * graphed.schedule.num_steps


@pytest.mark.gpu
@pytest.mark.skipif(not CUDA, reason="CUDA graphs need a GPU")
def test_graph_outputs_are_clones_and_grad_steps_stay_eager():
    dev = torch.device("cuda")
    graphed, net = _sampler(dev, True)
    x = torch.randn(2, 4, 16, 16, device=dev)
    cond = torch.randn(2, 32, device=dev)
    with torch.no_grad():
        first, _ = graphed.step(x, 0, (cond,))
        keep = first.clone()
        graphed.step(x * 2, 0, (cond,))
    torch.testing.assert_close(first, keep, rtol=0, atol=0)  # a later replay did not overwrite it
    replays = graphed.graphs.replays
    out, _ = graphed.step(x, 0, (cond,))  # grad enabled: eager, differentiable
    out.sum().backward()
    assert graphed.graphs.replays == replays and net.out.weight.grad is not None
