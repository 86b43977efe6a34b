"""rdfast.diffusion.pipelines on tiny FLUX, SD3 and SD (DDIM) pipelines: our loop is the pipeline's loop."""
import functools
import shutil

import pytest
import torch

pytest.importorskip("diffusers")

from rdfast.diffusion.pipelines import adapt  # noqa: E402
from rdfast.diffusion.sampler import Sampler  # noqa: E402
from rdfast.diffusion.testing import tiny_pipeline  # noqa: E402

GENERATORS = ("flux", "sd3", "sd", "sdxl")



@functools.lru_cache(maxsize=None)
def pipe_of(generator):
    return tiny_pipeline(generator)


@pytest.mark.parametrize("generator", GENERATORS)
def test_sampling_equals_pipeline_call(generator, gen):
    """Same starting latents: our sampler + decode reproduces ``pipe(...)`` (guidance included)."""
    pipe = pipe_of(generator)
    wrapper = adapt(pipe, guidance_scale=4.0)
    prompts = ["a red fox in the snow", "a blue car"]
    x = wrapper.noise(2, 32, 32, gen)
    sampler = Sampler(wrapper.denoise, wrapper.schedule(3, 32, 32), wrapper.evals_per_step)
    with torch.no_grad():
        xT, _ = sampler.run(x, 0, 3, wrapper.encode(prompts))
        ours = wrapper.decode(xT, 32, 32)
    ref = pipe(prompts, num_inference_steps=3, height=32, width=32, latents=x.clone(), guidance_scale=4.0,
               output_type="pt").images
    assert ours.shape == ref.shape == (2, 3, 32, 32)
    torch.testing.assert_close(ours, ref, rtol=1e-5, atol=1e-5)
    assert sampler.nfe.denoiser == 2 * 3 * (1 if generator == "flux" else 2)  # FLUX: distilled guidance, 1 evaluation


@pytest.mark.parametrize("generator", GENERATORS)
def test_decode_is_differentiable_and_checkpointed_equal(generator, gen):
    wrapper = adapt(pipe_of(generator))
    z = wrapper.noise(2, 32, 32, gen).requires_grad_(True)
    w = torch.rand(2, 3, 32, 32, generator=gen)
    grads = []
    for ckpt in (False, True):
        img = wrapper.decode(z, 32, 32, checkpoint=ckpt)
        (img * w).sum().backward()
        grads.append(z.grad.clone())
        z.grad = None
    # per-sample (checkpointed) vs batched convolutions sum in another order: float32 rounding, scaled
    scale = grads[0].abs().max().item()
    assert scale > 0
    torch.testing.assert_close(grads[0], grads[1], rtol=1e-4, atol=1e-4 * scale)


@pytest.mark.parametrize("generator", GENERATORS)
def test_encode_images_roundtrip_shape(generator, gen):
    wrapper = adapt(pipe_of(generator))
    lat = wrapper.encode_images(torch.rand(2, 3, 32, 32, generator=gen))
    assert lat.shape == wrapper.noise(2, 32, 32, gen).shape


def test_bad_inputs_are_named():
    wrapper = adapt(pipe_of("flux"))
    with pytest.raises(ValueError, match="height must be a positive multiple of 2"):
        wrapper.noise(1, 33, 32)
    with pytest.raises(ValueError, match=r"prompts\[1\]"):
        wrapper.encode(["a cat", "  "])
    with pytest.raises(ValueError, match="single string"):
        wrapper.encode("a cat")
    with pytest.raises(ValueError, match="num_steps"):
        wrapper.schedule(0, 32, 32)
    with pytest.raises(ValueError, match="not supported"):
        adapt(object())


def test_pickled_pipeline_weights_are_refused_unless_allowed(tmp_path):
    """A component saved with safe_serialization=False loads only with allow_pickle=True, and then equally."""
    from rdfast.diffusion.pipelines import load_pipeline
    from rdfast.diffusion.testing import tiny_pipeline_dir
    from rdfast.errors import InputError

    directory = tmp_path / "sd"
    shutil.copytree(tiny_pipeline_dir("sd"), directory)
    unet = pipe_of("sd").unet
    shutil.rmtree(directory / "unet")
    unet.save_pretrained(directory / "unet", safe_serialization=False)
    assert (directory / "unet" / "diffusion_pytorch_model.bin").exists()
    with pytest.raises(InputError, match=r"unet.*diffusion_pytorch_model\.bin.*allow_pickle=True"):
        load_pipeline(str(directory), device="cpu")
    loaded = load_pipeline(str(directory), device="cpu", allow_pickle=True)
    for (name, a), (_, b) in zip(loaded.unet.state_dict().items(), unet.state_dict().items()):
        assert torch.equal(a, b), name
