"""EMA of trained weights: the shadow follows ema <- d * ema + (1 - d) * p against a float64 recurrence, swapping
restores the trained weights bit for bit, and ReFLTrainer(ema_decay=...) updates it once per optimizer step."""

import pytest
import torch

from rdfast.diffusion.ema import EMA

from .common import random_seed


def _reference(start, snapshots, decay):
    """The recurrence in float64 from the start values over the parameters after each update."""
    ema = [s.double() for s in start]
    for snap in snapshots:
        ema = [decay * e + (1 - decay) * p.double() for e, p in zip(ema, snap)]
    return ema


@pytest.mark.parametrize("dtype, tol", [(torch.float32, 1e-6), (torch.bfloat16, 1e-6)])
def test_shadow_follows_the_recurrence(dtype, tol):
    """The shadow is float32 whatever the parameters' dtype, so it matches the float64 recurrence over the
    parameters' actual values to float32 rounding (tol is relative to the parameters' scale, about 1)."""
    g = torch.Generator().manual_seed(random_seed())
    params = [torch.randn(5, 3, generator=g).to(dtype), torch.randn(7, generator=g).to(dtype)]
    decay = float(torch.empty(1).uniform_(0.5, 0.99, generator=g))
    start = [p.clone() for p in params]
    ema = EMA(params, decay)
    snapshots = []
    for _ in range(20):
        for p in params:
            p.add_(torch.randn(p.shape, generator=g).to(dtype) * 0.1)
        ema.update()
        snapshots.append([p.clone() for p in params])
    want = _reference(start, snapshots, decay)
    for s, w in zip(ema.shadow, want):
        assert s.dtype == torch.float32
        assert (s.double() - w).abs().max() < tol
    assert ema.updates == 20


def test_swapped_restores_the_trained_weights_exactly_and_copy_to_keeps_the_average():
    g = torch.Generator().manual_seed(random_seed())
    params = [torch.randn(4, 4, generator=g), torch.randn(3, generator=g).to(torch.bfloat16)]
    ema = EMA(params, 0.9)
    for p in params:
        p.add_(1.0)
    ema.update()
    trained = [p.clone() for p in params]
    with ema.swapped():
        for p, s in zip(params, ema.shadow):
            assert torch.equal(p, s.to(p.dtype))
        assert not torch.equal(params[0], trained[0])
    for p, t in zip(params, trained):
        assert torch.equal(p, t)
    ema.copy_to()
    assert torch.equal(params[0], ema.shadow[0])


@pytest.mark.parametrize("decay", [1.0, -0.1, True, "0.9", None])
def test_bad_decay_is_refused_by_name(decay):
    with pytest.raises(ValueError, match="ema decay must be a number in \\[0, 1\\)"):
        EMA([torch.zeros(2)], decay)


def test_no_parameters_is_refused():
    with pytest.raises(ValueError, match="at least one parameter"):
        EMA([], 0.9)


class TestReFLTrainer:
    def _trainer(self, **kw):
        pytest.importorskip("diffusers")
        pytest.importorskip("peft")
        from rdfast.diffusion.refl import ReFLTrainer
        from rdfast.diffusion.testing import tiny_pipeline

        return ReFLTrainer(tiny_pipeline("flux"), lambda images, prompts: images.mean(dim=(1, 2, 3)), lora_rank=4,
                           loss="neg", lr=1e-2, seed=random_seed(), height=32, width=32, num_steps=4,
                           late_range=(0.5, 1.0), **kw)

    def test_the_trainer_updates_its_ema_once_per_step(self):
        decay = 0.8
        trainer = self._trainer(ema_decay=decay)
        for n, p in trainer.wrapper.model.named_parameters():  # LoRA B starts at 0: move it so A gets gradients too
            if "lora_B" in n:
                torch.nn.init.normal_(p, std=0.05)
        start = [p.detach().clone() for p in trainer.parameters]
        trainer.ema.shadow = [s.clone() for s in start]  # the shadow from the nonzero B values above
        snapshots = []
        for _ in range(3):
            trainer.step(["a red fox", "a blue car"])
            snapshots.append([p.detach().clone() for p in trainer.parameters])
        assert trainer.ema.updates == 3
        assert any(not torch.equal(a, b) for a, b in zip(start, snapshots[-1]))  # training moved the weights
        want = _reference(start, snapshots, decay)
        assert max((s.double() - w).abs().max().item() for s, w in zip(trainer.ema.shadow, want)) < 1e-6
        # evaluating the average leaves training where it was
        with trainer.ema.swapped():
            assert all(torch.equal(p.detach(), s) for p, s in zip(trainer.parameters, trainer.ema.shadow))
        assert all(torch.equal(p.detach(), s) for p, s in zip(trainer.parameters, snapshots[-1]))

    def test_off_by_default(self):
        assert self._trainer().ema is None

    @pytest.mark.parametrize("decay", [1.5, -1.0])
    def test_bad_ema_decay_fails_before_work(self, decay):
        with pytest.raises(ValueError, match="ema_decay must be a number in \\[0, 1\\)"):
            self._trainer(ema_decay=decay)
