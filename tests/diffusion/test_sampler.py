"""rdfast.diffusion.sampler: the update against diffusers' schedulers, exact re-noising, guidance, NFE, errors."""
import pytest
import torch

from rdfast.diffusion import sampler as S

diffusers = pytest.importorskip("diffusers")


def _flow(n=10, shift=3.0):
    sched = diffusers.FlowMatchEulerDiscreteScheduler(shift=shift)
    sched.set_timesteps(n)
    return sched


def _ddim(n=10, prediction="epsilon", clip=False, spacing="leading"):
    sched = diffusers.DDIMScheduler(beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear",
                                    clip_sample=clip, set_alpha_to_one=False, steps_offset=1,
                                    prediction_type=prediction, timestep_spacing=spacing)
    sched.set_timesteps(n)
    return sched


def test_flow_step_equals_euler(gen):
    sched = _flow(7)
    schedule = S.Schedule.from_scheduler(sched)
    assert schedule.process == S.FLOW and schedule.rewindable
    x = torch.randn(3, 4, 5, 6, generator=gen)  # odd shape on purpose
    for i, t in enumerate(sched.timesteps):
        v = torch.randn(x.shape, generator=gen)
        ref = sched.step(v, t, x, return_dict=False)[0]
        x0, eps = S.split(v, x, schedule.model_levels[i], S.FLOW, "flow")
        ours = S.combine(x0, eps, schedule.levels[i + 1], S.FLOW)
        torch.testing.assert_close(ours, ref, rtol=1e-5, atol=1e-5)
        # x0 = x_t - sigma v, and the (x0, eps) pair reproduces x itself at its own level
        torch.testing.assert_close(x0, x - schedule.model_levels[i].float() * v, rtol=1e-6, atol=1e-6)
        torch.testing.assert_close(S.combine(x0, eps, schedule.model_levels[i], S.FLOW), x, rtol=1e-5, atol=1e-5)
        x = ref


@pytest.mark.parametrize("prediction", ["epsilon", "v_prediction", "sample"])
@pytest.mark.parametrize("spacing,clip", [("leading", False), ("trailing", False), ("leading", True)])
def test_vp_step_equals_ddim(gen, prediction, spacing, clip):
    sched = _ddim(6, prediction, clip, spacing)
    schedule = S.Schedule.from_scheduler(sched)
    assert schedule.process == S.VP and schedule.prediction == prediction
    x = torch.randn(2, 4, 7, 5, generator=gen)
    for i, t in enumerate(sched.timesteps):
        out = torch.randn(x.shape, generator=gen)
        ref_prev, ref_x0 = sched.step(out, t, x, return_dict=False)
        x0, eps = S.split(out, x, schedule.model_levels[i], S.VP, prediction, schedule.clip)
        torch.testing.assert_close(x0, ref_x0, rtol=1e-4, atol=1e-4)
        torch.testing.assert_close(S.combine(x0, eps, schedule.levels[i + 1], S.VP), ref_prev, rtol=1e-4, atol=1e-4)
        x = ref_prev


def test_training_target_inverts_split(gen):
    x0 = torch.randn(4, 3, generator=gen)
    eps = torch.randn(4, 3, generator=gen)
    for process, pred, level in [(S.FLOW, "flow", 0.3), (S.VP, "epsilon", 0.4), (S.VP, "v_prediction", 0.7)]:
        xt = S.combine(x0, eps, level, process)
        target = S.training_target(x0, eps, level, process, pred)
        got_x0, got_eps = S.split(target, xt, level, process, pred)
        torch.testing.assert_close(got_x0, x0, rtol=1e-5, atol=1e-5)
        torch.testing.assert_close(got_eps, eps, rtol=1e-5, atol=1e-5)


def _forward_marginal_check(x0, xs, level_s, process, m, s0):
    """z-scores of mean, variance and Cov(x0, x_s) of xs against the forward process's marginal at level_s."""
    a, s = (float(c) for c in S.coefficients(torch.tensor(level_s, dtype=torch.float64), process))
    n = xs.numel()
    xs, x0 = xs.double().flatten(), x0.double().flatten()
    mean, var = a * m, a * a * s0 * s0 + s * s
    z_mean = (xs.mean() - mean) / (var / n) ** 0.5
    z_var = (xs.var() - var) / (2 * var * var / n) ** 0.5  # Gaussian: Var(sample variance) = 2 var^2 / n
    cov = ((xs - xs.mean()) * (x0 - x0.mean())).mean()
    cov_true = a * s0 * s0
    # Var of the sample covariance of a bivariate Gaussian: (var_x var_y + cov^2) / n
    z_cov = (cov - cov_true) / ((var * s0 * s0 + cov_true ** 2) / n) ** 0.5
    return max(abs(float(z_mean)), abs(float(z_var)), abs(float(z_cov)))


@pytest.mark.parametrize("process,level_t,level_s", [(S.FLOW, 0.2, 0.7), (S.FLOW, 0.05, 0.95), (S.VP, 0.9, 0.3),
                                                  (S.VP, 0.99, 0.05)])
def test_renoise_follows_forward_marginal(gen, process, level_t, level_s):
    """x0 ~ N(m, s0^2); x_t from the forward process; re-noised to s it must be distributed as the forward
    process's marginal at s, jointly with x0 (so the re-noised state is a valid state of the same x0)."""
    n, m, s0 = 400_000, 1.5, 0.5
    x0 = m + s0 * torch.randn(n, generator=gen, dtype=torch.float64)
    xt = S.combine(x0, torch.randn(n, generator=gen, dtype=torch.float64), level_t, process)
    xs = S.renoise(xt, level_t, level_s, process, torch.randn(n, generator=gen, dtype=torch.float64))
    assert _forward_marginal_check(x0, xs, level_s, process, m, s0) < 5.0
    # the test has power: the common shortcut x_t + sqrt(s^2 - t^2) eps (right only for variance-exploding
    # processes) is rejected for rectified flow
    if process == S.FLOW:
        wrong = xt + (level_s ** 2 - level_t ** 2) ** 0.5 * torch.randn(n, generator=gen, dtype=torch.float64)
        assert _forward_marginal_check(x0, wrong, level_s, process, m, s0) > 20.0


def test_renoise_refuses_lower_level():
    x = torch.zeros(2, 3)
    with pytest.raises(ValueError, match="higher noise level"):
        S.renoise(x, 0.7, 0.2, S.FLOW, torch.zeros_like(x))
    with pytest.raises(ValueError, match="pure noise"):
        S.renoise(x, 1.0, 1.0, S.FLOW, torch.zeros_like(x))


def test_sampler_renoise_uses_schedule_levels(gen):
    schedule = S.Schedule.from_scheduler(_flow(8))
    sampler = S.Sampler(lambda x, t: torch.zeros_like(x), schedule)
    x, noise = torch.randn(3, 4, generator=gen), torch.randn(3, 4, generator=gen)
    got = sampler.renoise(x, 6, 4, noise)
    torch.testing.assert_close(got, S.renoise(x, schedule.levels[6], schedule.model_levels[4], S.FLOW, noise))
    with pytest.raises(IndexError, match="goes back"):
        sampler.renoise(x, 4, 6, noise)


def test_guide_and_nfe(gen):
    c, u = torch.randn(2, 3, generator=gen), torch.randn(2, 3, generator=gen)
    torch.testing.assert_close(S.guide(c, u, 1.0), c)
    torch.testing.assert_close(S.guide(c, u, 4.0), u + 4 * (c - u))
    calls = []
    schedule = S.Schedule.from_scheduler(_ddim(5))
    sampler = S.Sampler(lambda x, t: calls.append(x.shape[0]) or torch.zeros_like(x), schedule, evals_per_step=2)
    x = torch.randn(3, 2, generator=gen)
    with torch.no_grad():
        sampler.run(x, 0, 5)
    assert sampler.nfe.denoiser == 3 * 5 * 2 and len(calls) == 5 and sampler.nfe.verifier == 0


def test_unsupported_schedulers_are_named():
    euler = diffusers.EulerDiscreteScheduler()
    euler.set_timesteps(4)
    with pytest.raises(S.UnsupportedScheduler, match="EulerDiscreteScheduler is not supported"):
        S.Schedule.from_scheduler(euler)
    ddpm = diffusers.DDPMScheduler()
    ddpm.set_timesteps(4)
    schedule = S.Schedule.from_scheduler(ddpm)
    assert not schedule.rewindable
    with pytest.raises(S.UnsupportedScheduler, match="rewound"):
        schedule.require_rewindable()
    with pytest.raises(ValueError, match="set_timesteps"):
        S.Schedule.from_scheduler(diffusers.DDIMScheduler())
    stochastic = diffusers.FlowMatchEulerDiscreteScheduler(stochastic_sampling=True)
    stochastic.set_timesteps(4)
    with pytest.raises(S.UnsupportedScheduler, match="stochastic_sampling"):
        S.Schedule.from_scheduler(stochastic)
