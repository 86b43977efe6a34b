"""Video in rdfast.diffusion on a tiny Wan 2.1 pipeline (32 px, 9 frames = 3 latent frames): our loop is the
pipeline's loop, the frame-wise checkpointed decode equals the VAE's own, video ReFL gradients equal the naive
path's and a toy video reward goes up, Best-of-N over videos, Search over Paths with a video verifier, errors."""

import pytest
import torch

from rdfast.model import RewardModel

pytest.importorskip("diffusers")
pytest.importorskip("peft")

from conftest import load_rm  # noqa: E402
from rdfast.diffusion.pipelines import adapt  # noqa: E402
from rdfast.diffusion.refl import ReFLTrainer  # noqa: E402
from rdfast.diffusion.reward import (  # noqa: E402
    PairwiseReward,
    PointwiseReward,
    rank_pairwise,
    reward_fn,
)
from rdfast.diffusion.sampler import Sampler  # noqa: E402
from rdfast.diffusion.search import (  # noqa
    best_of_n,
    equal_nfe_k,
    pipeline_problem,
    search_nfe,
    search_over_paths,
)
from rdfast.diffusion.testing import tiny_pipeline  # noqa: E402

from .common import random_seed  # noqa: E402

FRAMES = 9
SMALL = dict(height=32, width=32, num_steps=4, late_range=(0.5, 1.0), num_frames=FRAMES)



@pytest.fixture(scope="module")
def wan():
    return tiny_pipeline("wan")



def motion(videos, prompts):
    """A differentiable toy video reward: mean absolute change between consecutive frames, [N]."""
    return (videos[:, 1:] - videos[:, :-1]).abs().mean(dim=(1, 2, 3, 4))


def test_sampling_equals_pipeline_call(wan, gen):
    """Same starting latents: our sampler + decode reproduces ``pipe(...)`` (classifier-free guidance included)."""
    wrapper = adapt(wan, guidance_scale=4.0, num_frames=FRAMES)
    prompts = ["a red fox in the snow", "a blue car"]
    x = wrapper.noise(2, 32, 32, gen)
    assert x.shape == (2, 4, 3, 4, 4)  # 9 frames -> 3 latent frames, 32 px -> 4
    sampler = Sampler(wrapper.denoise, wrapper.schedule(3, 32, 32), wrapper.evals_per_step)
    with torch.no_grad():
        xT, _ = sampler.run(x, 0, 3, wrapper.encode(prompts))
        ours = wrapper.decode(xT, 32, 32)
    ref = wan(prompts, num_inference_steps=3, height=32, width=32, num_frames=FRAMES, latents=x.clone(),
              guidance_scale=4.0, output_type="pt").frames
    assert ours.shape == ref.shape == (2, FRAMES, 3, 32, 32)
    torch.testing.assert_close(ours, ref, rtol=1e-5, atol=1e-5)
    assert sampler.nfe.denoiser == 2 * 3 * 2


def test_framewise_checkpointed_decode_equals_vae_decode(wan, gen):
    """One checkpoint per sample and latent frame: same videos and latent gradients as AutoencoderKLWan.decode,
    and backward recomputes the decoder once per (sample, latent frame)."""
    wrapper = adapt(wan, num_frames=FRAMES)
    z = wrapper.noise(2, 32, 32, gen).requires_grad_(True)
    w = torch.rand(2, FRAMES, 3, 32, 32, generator=gen)
    calls = []
    hook = wrapper.vae.decoder.register_forward_pre_hook(lambda *a: calls.append(1))
    try:
        out, grads, n_calls = [], [], []
        for ckpt in (False, True):
            calls.clear()
            video = wrapper.decode(z, 32, 32, checkpoint=ckpt)
            (video * w).sum().backward()
            out.append(video.detach())
            grads.append(z.grad.clone())
            n_calls.append(len(calls))
            z.grad = None
    finally:
        hook.remove()
    torch.testing.assert_close(out[1], out[0], rtol=1e-5, atol=1e-6)
    scale = grads[0].abs().max().item()
    assert scale > 0
    torch.testing.assert_close(grads[1], grads[0], rtol=1e-4, atol=1e-4 * scale)  # per-sample vs batched sums
    assert n_calls == [3, 2 * 3 * 2]  # naive: one batched call per latent frame; checkpointed: forward + recompute
    tiled = wrapper.decode(z, 32, 32, checkpoint=True, tile=True)  # per-sample checkpoint around diffusers' tiled decode
    (tiled * w).sum().backward()
    torch.testing.assert_close(tiled.detach(), out[0], rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(z.grad, grads[0], rtol=1e-4, atol=1e-4 * scale)


def test_video_refl_gradients_equal_naive_and_reach_every_lora_weight(wan):
    """A video ReFL step against a pairwise tiny RewardModel (Best-of-2 video references): the memory-efficient
    path (checkpointed denoiser, frame-wise VAE decode, reward model) gives the naive path's gradients."""
    rm = load_rm("qwen2_vl")
    trainer = ReFLTrainer(wan, PairwiseReward(rm, n=2, top_k=2), lora_rank=4, grad_steps=2, guidance_scale=3.0,
                          seed=random_seed(), **SMALL)
    for n, p in trainer.wrapper.model.named_parameters():
        if "lora_B" in n:  # gaussian B: every LoRA tensor then has a gradient to compare
            torch.nn.init.normal_(p, std=0.05)
    prompts = ["a red fox in the snow", "a blue car"]
    trainer.prepare_references(prompts, progress=False)
    assert trainer.reward.references[prompts[0]].shape == (2, FRAMES, 3, 32, 32)
    seed, grads, infos = random_seed(), [], []
    for memory_efficient in (True, False):
        trainer.config.memory_efficient = memory_efficient
        trainer.generator.manual_seed(seed)
        trainer.optimizer.zero_grad(set_to_none=True)
        loss, info = trainer.loss(prompts)
        loss.backward()
        assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in trainer.parameters)
        grads.append(torch.cat([p.grad.flatten() for p in trainer.parameters]))
        infos.append(info)
    assert len(trainer.parameters) == 2 * 4 * 2 * 2  # 2 blocks x (self, cross) x (q, k, v, out) x (A, B)
    assert infos[0]["stop_step"] == infos[1]["stop_step"]
    assert infos[0]["reward"] == pytest.approx(infos[1]["reward"], rel=1e-5)
    cos = torch.nn.functional.cosine_similarity(grads[0].double(), grads[1].double(), dim=0)
    assert cos >= 0.9999, cos


def test_video_toy_reward_goes_up(wan):
    """A few ReFL steps with a differentiable video reward raise it (fixed noise, full sampling of 9 frames)."""
    trainer = ReFLTrainer(wan, motion, lora_rank=None, lr=3e-2, loss="neg", grad_steps=2, seed=random_seed(),
                          max_grad_norm=None, **SMALL)
    prompts = ["a red fox", "a cat on a chair"]
    eval_seed = random_seed()
    before = trainer.evaluate(prompts * 2, seed=eval_seed).mean().item()
    for _ in range(6):
        trainer.step(prompts)
    after = trainer.evaluate(prompts * 2, seed=eval_seed).mean().item()
    assert after > before * 1.02, (before, after)  # seen: +6% to +8%
    # the pretraining loss on real videos mixes in (clean latents from the video VAE)
    videos = torch.rand(2, FRAMES, 3, 32, 32, generator=torch.Generator().manual_seed(eval_seed))
    latents = trainer.wrapper.encode_images(videos)
    assert latents.shape == (2, 4, 3, 4, 4)
    trainer.config.pretrain_weight = 0.5
    loss, info = trainer.loss(prompts, pretrain=(latents, prompts))
    assert info["pretrain_loss"] > 0
    assert loss.item() == pytest.approx(info["refl_loss"] + 0.5 * info["pretrain_loss"], rel=1e-5)


class _FakeVideoRM:
    """compare(videos1, videos2) = sigmoid(20 (mean(v2) - mean(v1))): brighter videos win; records the calls."""

    device = torch.device("cpu")
    rank = RewardModel.rank  # the real Best-of-N rule over this fake's judgements

    def __init__(self):
        self.calls = []

    def compare(self, videos1=None, videos2=None, prompts=None, instruction=None, num_frames=None, **kw):
        self.calls.append(dict(n=len(videos1), instruction=instruction, num_frames=num_frames, prompts=prompts))
        a, b = torch.stack([v.mean() for v in videos1]), torch.stack([v.mean() for v in videos2])
        return torch.sigmoid(20 * (b - a))


def test_video_best_of_n_ranks_by_pairwise_wins(gen):
    rm = _FakeVideoRM()
    level = torch.rand(5, generator=gen)
    videos = level.view(5, 1, 1, 1, 1).expand(5, 3, 3, 8, 8).clone()
    ranked = rank_pairwise(rm, videos, "a cat", top_k=2, num_frames=2)
    expected = torch.argsort(level, descending=True).tolist()
    assert ranked.order == expected and ranked.top == expected[:2]
    assert sorted(ranked.wins.tolist()) == [0, 1, 2, 3, 4]  # a strict order: every pair decided
    torch.testing.assert_close(ranked.win_prob + ranked.win_prob.T, 1 - torch.eye(5))
    assert rm.calls == [dict(n=20, instruction="t2v", num_frames=2, prompts=["a cat"] * 20)]  # all ordered pairs
    reward = PairwiseReward(rm, n=5, top_k=2, instruction="motion")
    top = reward.reference("a cat", videos)
    torch.testing.assert_close(top, videos[expected[:2]])
    assert reward.reference_wins["a cat"] == [4, 3] and rm.calls[-1]["instruction"] == "motion"


def test_pairwise_and_pointwise_video_rewards_match_the_reward_model(gen):
    """The rewards are the reward model's video scores (t2v by default), and their gradients reach the frames."""
    rm = load_rm("qwen2_vl")
    reward = PairwiseReward(rm, n=3, top_k=2)
    refs = reward.reference("a cat", torch.rand(3, 5, 3, 32, 32, generator=gen))
    assert refs.shape == (2, 5, 3, 32, 32)
    videos = torch.rand(2, 5, 3, 32, 32, generator=gen, requires_grad=True)
    r = reward(videos, ["a cat", "a cat"])
    expected = torch.stack([rm.compare(videos1=[refs[j]] * 2, videos2=list(videos.detach()), prompts=["a cat"] * 2,
                                       instruction="t2v") for j in range(2)]).mean(0)
    torch.testing.assert_close(r.detach(), expected, rtol=1e-5, atol=1e-7)
    r.sum().backward()
    assert videos.grad is not None and videos.grad.abs().sum() > 0
    point = PointwiseReward(rm, instruction="motion", num_frames=3)(videos.detach(), ["a", "b"])
    torch.testing.assert_close(point, rm.score(videos=list(videos.detach()), prompts=["a", "b"], instruction="motion",
                                               num_frames=3))


def test_reward_fn_accepts_video_layouts(gen):
    fn = reward_fn(motion)
    x = torch.rand(2, 4, 3, 8, 8, generator=gen)
    torch.testing.assert_close(fn(x * 2 - 1, ["a", "b"]), motion(x, None))
    u8 = (x * 255).round().to(torch.uint8)
    torch.testing.assert_close(fn(u8.permute(0, 1, 3, 4, 2), "a"), motion(u8.float() / 255, None))


def test_video_search_returns_the_best_scored_video(wan, tmp_path):
    """Search over Paths on Wan with the tiny RewardModel as a pointwise video verifier; NFE counts CFG as 2."""
    verifier = PointwiseReward(load_rm("qwen2_vl"))
    problem = pipeline_problem(wan, "a red fox", num_steps=4, height=32, width=32, guidance_scale=3.0, num_frames=5)
    res = search_over_paths(problem, verifier, n=2, m=2, start_step=2, delta_f=1, delta_b=2,
                            generator=torch.Generator().manual_seed(random_seed()), progress=False)
    assert res.best_image.shape == (5, 3, 32, 32) and 0 <= res.best_image.min() <= res.best_image.max() <= 1
    assert res.nfe["denoiser"] == search_nfe(4, 2, 2, 2, 1, 2, 2) == 2 * (2 * 2 + 3 * 2 * 2 * 1 + 2 * 2 * 1)
    assert res.nfe["verifier"] == 2 * 2 * 2  # two rounds of N * M videos
    assert res.best_reward == max(res.final_rewards) == max(res.rounds[-1]["rewards"])
    again = verifier(res.best_image[None], ["a red fox"])
    assert again.item() == pytest.approx(res.best_reward, rel=1e-4)
    bon = best_of_n(problem, verifier, equal_nfe_k(res.nfe["denoiser"], 4, 2), progress=False)
    assert bon.nfe["denoiser"] <= res.nfe["denoiser"] and bon.best_image.shape == (5, 3, 32, 32)
    assert bon.best_reward == max(bon.final_rewards)
    res.save_figure(tmp_path / "tree.png", baseline=bon)  # survivors' middle frames
    assert (tmp_path / "tree.png").stat().st_size > 1000


def test_unipc_is_sampled_with_euler_on_its_flow_schedule(wan):
    from diffusers import (
        FlowMatchEulerDiscreteScheduler,
        UniPCMultistepScheduler,
        WanPipeline,
    )

    parts = {k: v for k, v in wan.components.items() if k in ("tokenizer", "text_encoder", "vae", "transformer")}
    unipc = UniPCMultistepScheduler(prediction_type="flow_prediction", use_flow_sigmas=True, flow_shift=3.0)
    wrapper = adapt(WanPipeline(scheduler=unipc, **parts), num_frames=FRAMES)
    with pytest.warns(UserWarning, match="Euler steps on UniPC's flow schedule"):
        sched = wrapper.schedule(4, 32, 32)
    assert sched.process == "flow" and sched.rewindable
    euler = FlowMatchEulerDiscreteScheduler(shift=3.0)
    euler.set_timesteps(4)
    torch.testing.assert_close(sched.levels, euler.sigmas.double())


def test_bad_video_inputs_are_named(wan, gen):
    from diffusers import WanPipeline

    with pytest.raises(ValueError, match=r"num_frames must be 1 \+ k \* 4"):
        adapt(wan, num_frames=8)
    with pytest.raises(ValueError, match="num_frames must be"):
        ReFLTrainer(wan, motion, **{**SMALL, "num_frames": 0})
    with pytest.raises(ValueError, match="num_frames is for video pipelines"):
        adapt(tiny_pipeline("flux"), num_frames=9)
    wrapper = adapt(wan, num_frames=FRAMES)
    assert adapt(wrapper, num_frames=FRAMES) is wrapper
    with pytest.raises(ValueError, match="differs from the given wan wrapper"):
        pipeline_problem(wrapper, "a cat", 4, 32, 32, num_frames=13)
    with pytest.raises(ValueError, match="height must be a positive multiple of 16"):
        wrapper.noise(1, 24, 32)
    parts = {k: v for k, v in wan.components.items() if k != "transformer_2"}
    with pytest.raises(ValueError, match="Wan 2.2"):
        adapt(WanPipeline(**parts, boundary_ratio=0.875))
    with pytest.raises(ValueError, match="videos: expected a float tensor"):
        wrapper.encode_images(torch.rand(2, 3, 32, 32))
    reward = PointwiseReward(load_rm("qwen2_vl"))
    with pytest.raises(ValueError, match="zero frames"):
        reward(torch.rand(1, 0, 3, 32, 32), ["a"])
    with pytest.raises(ValueError, match=r"videos \[N, T, 3, H, W\]"):
        reward(torch.rand(1, 2, 2, 3, 32, 32), ["a"])
    with pytest.raises(ValueError, match=r"in \[0, 1\]"):
        reward(torch.rand(1, 3, 3, 32, 32, generator=gen) * 2, ["a"])
    pairwise = PairwiseReward(_FakeVideoRM(), n=2, top_k=1)
    pairwise.references["a cat"] = torch.rand(1, 3, 8, 8)  # an image reference
    with pytest.raises(ValueError, match="references of prompt 'a cat' are images"):
        pairwise(torch.rand(1, 3, 3, 8, 8), ["a cat"])
