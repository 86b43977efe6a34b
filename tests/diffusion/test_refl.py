"""ReFL on tiny FLUX, SD3 and SD (DDIM) pipelines: memory-efficient gradients equal the naive ones, a toy
reward goes up, one step end to end with a tiny pairwise RewardModel, options and errors."""

import pytest
import torch

pytest.importorskip("diffusers")
pytest.importorskip("peft")

from conftest import load_rm  # noqa: E402
from rdfast.diffusion.pipelines import adapt  # noqa: E402
from rdfast.diffusion.refl import ReFLConfig, ReFLTrainer  # noqa: E402
from rdfast.diffusion.reward import PairwiseReward, activation_checkpointing, reward_fn  # noqa: E402
from rdfast.diffusion.sampler import UnsupportedScheduler  # noqa: E402
from rdfast.diffusion.search import pipeline_problem  # noqa: E402
from rdfast.diffusion.testing import tiny_pipeline  # noqa: E402

from .common import random_seed  # noqa: E402

GENERATORS = ("flux", "sd3", "sd", "sdxl")
SMALL = dict(height=32, width=32, num_steps=4, late_range=(0.5, 1.0))




def brightness(images, prompts):
    """A differentiable toy reward: mean pixel value, [N]."""
    return images.mean(dim=(1, 2, 3))


def _grads(trainer, prompts, seed, memory_efficient):
    trainer.config.memory_efficient = memory_efficient
    trainer.generator.manual_seed(seed)  # same noise, same stop step
    trainer.optimizer.zero_grad(set_to_none=True)
    loss, info = trainer.loss(prompts)
    loss.backward()
    return torch.cat([p.grad.flatten() for p in trainer.parameters]), info


@pytest.mark.parametrize("generator", GENERATORS)
def test_memory_efficient_gradients_equal_naive(generator):
    """Checkpointed denoiser, VAE and reward model: the same gradients as storing everything (float32)."""
    rm = load_rm("qwen2_vl")
    # gaussian LoRA init: A and B both nonzero, so every LoRA tensor has a gradient to compare
    trainer = ReFLTrainer(tiny_pipeline(generator), PairwiseReward(rm, n=2, top_k=2), lora_rank=4, grad_steps=2,
                          guidance_scale=3.0, seed=random_seed(), **SMALL)
    for n, p in trainer.wrapper.model.named_parameters():
        if "lora_B" in n:
            torch.nn.init.normal_(p, std=0.05)
    prompts = ["a red fox in the snow", "a blue car"]
    trainer.prepare_references(prompts, progress=False)
    seed = random_seed()
    g_eff, info_eff = _grads(trainer, prompts, seed, True)
    g_naive, info_naive = _grads(trainer, prompts, seed, False)
    assert info_eff["stop_step"] == info_naive["stop_step"]
    assert info_eff["reward"] == pytest.approx(info_naive["reward"], rel=1e-5)
    assert g_naive.abs().sum() > 0
    cos = torch.nn.functional.cosine_similarity(g_eff.double(), g_naive.double(), dim=0)
    assert cos >= 0.9999, f"{generator}: cosine {cos}"


def test_toy_reward_goes_up():
    """A few ReFL steps with a differentiable reward raise it (measured on fixed noise, full sampling)."""
    # full finetuning: a random tiny VAE maps latents to pixels weakly, LoRA from B = 0 moves too slowly to see
    trainer = ReFLTrainer(tiny_pipeline("flux"), brightness, lora_rank=None, lr=1e-2, loss="neg", grad_steps=2,
                          seed=random_seed(), max_grad_norm=None, **SMALL)
    prompts = ["a red fox", "a cat on a chair"]
    eval_seed = random_seed()
    before = trainer.evaluate(prompts * 2, seed=eval_seed).mean().item()
    for _ in range(10):  # 6 steps gained 0.007-0.019 over 12 seeds and once only 0.003 in a full run: too close
        info = trainer.step(prompts)
        assert info["loss"] == pytest.approx(-info["reward"], abs=1e-6)
    after = trainer.evaluate(prompts * 2, seed=eval_seed).mean().item()
    assert after > before + 0.005, (before, after)  # seen after 10 steps: +0.016 to +0.030 over 16 seeds


def test_one_step_end_to_end_with_pairwise_reward_model(tmp_path):
    """Best-of-N references ranked by the reward model, one update of the LoRA weights, saved adapter."""
    rm = load_rm("qwen2_vl")
    reward = PairwiseReward(rm, n=3, top_k=2)
    trainer = ReFLTrainer(tiny_pipeline("sd"), reward, lora_rank=4, lr=1e-2, seed=random_seed(), guidance_scale=2.0,
                          **SMALL)
    before = [p.detach().clone() for p in trainer.parameters]
    info = trainer.step(["a red fox"])
    assert reward.references["a red fox"].shape == (2, 3, 32, 32)
    assert len(reward.reference_wins["a red fox"]) == 2
    assert 0.0 < info["reward"] < 1.0 and info["loss"] == pytest.approx(1.0 - info["reward"], abs=1e-6)
    assert any(not torch.equal(a, b) for a, b in zip(before, trainer.parameters))
    trainer.save(tmp_path / "lora")
    assert (tmp_path / "lora" / "pytorch_lora_weights.safetensors").exists()
    assert (tmp_path / "lora" / "refl_config.json").exists()


def test_pairwise_reward_averages_references_and_reaches_pixels(gen):
    rm = load_rm("qwen2_vl")
    reward = PairwiseReward(rm, n=3, top_k=2)
    refs = reward.reference("a cat", torch.rand(3, 3, 32, 32, generator=gen))
    images = torch.rand(2, 3, 32, 32, generator=gen, requires_grad=True)
    r = reward(images, ["a cat", "a cat"])
    expected = torch.stack([rm.compare(images1=[refs[j]] * 2, images2=list(images.detach()), prompts=["a cat"] * 2)
                            for j in range(2)]).mean(0)
    torch.testing.assert_close(r.detach(), expected, rtol=1e-5, atol=1e-7)
    r.sum().backward()
    assert images.grad is not None and images.grad.abs().sum() > 0
    with pytest.raises(KeyError, match="no Best-of-N reference for prompt 'a dog'"):
        reward(images, ["a dog", "a cat"])


def test_reward_model_checkpointing_restores_state_and_keeps_gradients(gen):
    rm = load_rm("qwen2_vl")
    images = torch.rand(2, 3, 56, 56, generator=gen, requires_grad=True)
    prompts = ["a", "b"]
    plain = rm.score(images=images, prompts=prompts)
    (g_plain,) = torch.autograd.grad(plain.sum(), images)
    with activation_checkpointing(rm) as n_layers:
        ck = rm.score(images=images, prompts=prompts)
        (g_ck,) = torch.autograd.grad(ck.sum(), images)
    assert n_layers > 0
    torch.testing.assert_close(ck, plain)
    torch.testing.assert_close(g_ck, g_plain, rtol=1e-5, atol=1e-9)
    assert not any(m.training for m in rm.model.modules())


@pytest.mark.parametrize("options", [dict(autocast="bf16"), dict(lora_rank=None, lr=1e-4), dict(tile_vae=True),
                                     dict(grad_steps=3, late_range=(0.0, 1.0)), dict(loss="relu", margin=0.3)])
def test_options_run(options):
    trainer = ReFLTrainer(tiny_pipeline("flux"), brightness, seed=random_seed(),
                          **{**SMALL, "lora_rank": 4, **options})
    info = trainer.step(["a red fox"])
    assert all(torch.isfinite(torch.tensor(v)) for v in info.values())
    if options.get("loss") == "relu":
        assert info["loss"] == pytest.approx(max(0.0, 0.3 - info["reward"]), abs=1e-6)


def test_pretraining_loss_mixing(gen):
    trainer = ReFLTrainer(tiny_pipeline("sd"), brightness, lora_rank=4, pretrain_weight=0.5, seed=random_seed(),
                          guidance_scale=1.0, **SMALL)
    latents = trainer.wrapper.encode_images(torch.rand(2, 3, 32, 32, generator=gen))
    loss, info = trainer.loss(["a red fox", "a cat"], pretrain=(latents, ["a red fox", "a cat"]))
    assert info["pretrain_loss"] > 0
    assert loss.item() == pytest.approx(info["refl_loss"] + 0.5 * info["pretrain_loss"], rel=1e-5)
    with pytest.raises(ValueError, match="2 latents but 1 prompts"):
        trainer.loss(["a"], pretrain=(latents, ["a"]))


def test_ddpm_scheduler_trains_but_cannot_be_searched():
    from diffusers import DDPMScheduler  # optional

    pipe = tiny_pipeline("sd")
    pipe.scheduler = DDPMScheduler.from_config(pipe.scheduler.config)
    trainer = ReFLTrainer(pipe, brightness, lora_rank=4, seed=random_seed(), guidance_scale=1.0, **SMALL)
    assert torch.isfinite(torch.tensor(trainer.step(["a cat"])["loss"]))
    with pytest.raises(UnsupportedScheduler, match="DDPMScheduler"):
        pipeline_problem(pipe, "a cat", 4, 32, 32)


def test_bad_settings_fail_before_work():
    pipe = tiny_pipeline("flux")
    cases = [(dict(grad_steps=5, num_steps=4), "grad_steps"), (dict(late_range=(0.9, 0.2)), "late_range"),
             (dict(loss="mse"), "loss must be one of"), (dict(height=33), "height"),
             (dict(autocast="fp8"), "autocast"), (dict(lora_rank=0), "lora_rank"),
             (dict(lora_targets=("nope",)), "matched no module")]
    for override, message in cases:
        with pytest.raises((ValueError, TypeError), match=message):
            ReFLTrainer(pipe, brightness, **{**SMALL, **override})
        pipe = tiny_pipeline("flux") if "lora_targets" in override else pipe
    with pytest.raises(TypeError, match="unknown ReFL setting"):
        ReFLTrainer(pipe, brightness, learning_rate=1.0)
    assert ReFLConfig(num_steps=20, grad_steps=2, late_range=(0.7, 1.0)).step_range() == (14, 19)


def test_full_finetuning_needs_references_up_front():
    rm = load_rm("qwen2_vl")
    trainer = ReFLTrainer(tiny_pipeline("flux"), PairwiseReward(rm, n=2, top_k=1), lora_rank=None, seed=random_seed(),
                          **SMALL)
    trainer.step(["a red fox"])  # the first prompt's reference is built lazily from the untouched model
    with pytest.raises(RuntimeError, match="prepare_references"):
        trainer.step(["a blue car"])


def test_reward_fn_accepts_common_layouts(gen):
    seen = []

    def fake(images, prompts):
        seen.append((images.min().item(), images.max().item(), tuple(images.shape), prompts))
        return images.mean(dim=(1, 2, 3))

    fn = reward_fn(fake)
    x = torch.rand(2, 3, 8, 8, generator=gen)
    torch.testing.assert_close(fn(x * 2 - 1, ["a", "b"]), x.mean(dim=(1, 2, 3)))
    torch.testing.assert_close(fn((x * 255).round().to(torch.uint8).permute(0, 2, 3, 1), "a"),
                               ((x * 255).round() / 255).mean(dim=(1, 2, 3)))
    assert seen[-1][2] == (2, 3, 8, 8) and seen[-1][3] == ["a", "a"]
    with pytest.raises(ValueError, match="images"):
        fn(torch.rand(3, 8, 8), ["a"])


def test_reward_fn_accepts_numpy_and_pil_lists(gen):
    """What RL loops hand over besides tensors: a uint8 numpy batch [N, H, W, 3], a list of such arrays, a list of
    PIL images; each reaches the reward as the float [N, 3, H, W] in [0, 1] built here by hand."""
    import numpy as np
    from PIL import Image

    seen = []

    def fake(images, prompts):
        seen.append(images)
        return images.mean(dim=(1, 2, 3))

    fn = reward_fn(fake)
    pixels = torch.randint(0, 256, (3, 6, 5, 3), generator=gen, dtype=torch.uint8).numpy()
    want = torch.tensor(pixels.transpose(0, 3, 1, 2).astype(np.float64) / 255, dtype=torch.float32)
    for images in (pixels, list(pixels), [Image.fromarray(p) for p in pixels]):
        fn(images, "a")
        assert seen[-1].shape == (3, 3, 6, 5) and seen[-1].dtype == torch.float32
        torch.testing.assert_close(seen[-1], want, atol=1e-7, rtol=0)


@pytest.mark.parametrize("generator", ["flux", "sd"])
def test_saved_lora_loads_with_diffusers_load_lora_weights(tmp_path, generator, gen):
    """``trainer.save`` writes the pipeline's LoRA format: a fresh pipeline's ``load_lora_weights(dir)`` gives the
    trained denoiser's outputs (rank 4, alpha 2: the scale travels with the file)."""
    trainer = ReFLTrainer(tiny_pipeline(generator), brightness, lora_rank=4, lora_alpha=2.0, seed=random_seed(), **SMALL)
    with torch.no_grad():
        for p in trainer.parameters:  # trained-looking adapters (lora_B starts at zero)
            p.copy_(0.3 * torch.randn(p.shape, generator=gen))
    trainer.save(tmp_path / "lora")
    fresh = adapt(tiny_pipeline(generator))
    x = trainer.wrapper.noise(2, 32, 32, gen)
    fresh.noise(2, 32, 32, gen)  # sets the wrapper's layout for this size (FLUX's image ids)
    t = trainer.schedule.timesteps[1].to(x.dtype).expand(2)
    with torch.no_grad():
        trained = trainer.wrapper.denoise(x, t, *trainer.wrapper.encode(["a red fox", "a cat"]))
        base = fresh.denoise(x, t, *fresh.encode(["a red fox", "a cat"]))
        assert (trained - base).abs().max() > 1e-3  # the adapters matter
        fresh.pipe.load_lora_weights(tmp_path / "lora")
        loaded = fresh.denoise(x, t, *fresh.encode(["a red fox", "a cat"]))
    torch.testing.assert_close(loaded, trained, rtol=1e-5, atol=1e-5)
