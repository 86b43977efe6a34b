"""Video rewards against plain transformers: scores, positions, gradients, bad input, frame sampling."""
import pytest
import torch

from conftest import load_rm, save_frames
from rdfast.errors import InputError
from rdfast.testing import random_images
from rdfast.videos import load_video, sample_indices

PROMPTS = ["a dog running on a beach", "a red ball bouncing", "waves at night"]


def clips(gen, n, frames=4, size=(56, 56)):
    """Fresh random videos [T, 3, H, W] in [0, 1] (smooth in time, so they look like clips)."""
    out = []
    for _ in range(n):
        base = torch.rand(3, *size, generator=gen)
        drift = torch.rand(frames, 3, *size, generator=gen) * 0.3
        out.append((0.7 * base + drift).clamp(0, 1))
    return out


def reference_logp(rm, inputs):
    with torch.no_grad():
        logits = rm.model(**inputs).logits
    last = (inputs["attention_mask"] * torch.arange(logits.shape[1])).argmax(1)
    logp = logits[torch.arange(len(last)), last].double().log_softmax(-1)
    return logp[:, rm.yes_token_id]


@pytest.mark.parametrize("pairwise", [False, True])
def test_video_scores_equal_plain_transformers_forward(family, pairwise, gen):
    rm = load_rm(family)
    a, b = clips(gen, 3, frames=4), clips(gen, 3, frames=3)  # odd frame count: padded to the temporal patch
    if pairwise:
        ours = rm.compare(videos1=a, videos2=b, prompts=PROMPTS, instruction="t2v")
        inputs = rm.build_inputs(prompts=PROMPTS, videos1=a, videos2=b, instruction="t2v")
    else:
        ours = rm.score(videos=a, prompts=PROMPTS, instruction="motion")
        inputs = rm.build_inputs(prompts=PROMPTS, videos1=a, instruction="motion")
    torch.testing.assert_close(ours.double().log(), reference_logp(rm, inputs), atol=1e-5, rtol=0)


def test_image_to_video_puts_the_conditioning_image_in_context(family, gen):
    rm = load_rm(family)
    cond = random_images(2, sizes=((56, 56),) * 2, seed=int(torch.randint(0, 2**30, (1,), generator=gen)))
    a, b = clips(gen, 2), clips(gen, 2)
    ours = rm.compare(videos1=a, videos2=b, condition_images=cond, prompts=PROMPTS[:2], instruction="i2v")
    inputs = rm.build_inputs(prompts=PROMPTS[:2], videos1=a, videos2=b, condition_images=cond, instruction="i2v")
    torch.testing.assert_close(ours.double().log(), reference_logp(rm, inputs), atol=1e-5, rtol=0)
    text = rm.tokenizer.decode(inputs["input_ids"][0])
    assert text.index("Conditioning image") < text.index("Video 1") < text.index("Video 2")
    debiased = rm.compare(videos1=a, videos2=b, condition_images=cond, prompts=PROMPTS[:2], debias=True)
    swapped = rm.compare(videos1=b, videos2=a, condition_images=cond, prompts=PROMPTS[:2])
    plain = rm.compare(videos1=a, videos2=b, condition_images=cond, prompts=PROMPTS[:2])
    torch.testing.assert_close(debiased, 0.5 * (plain + 1 - swapped), atol=1e-6, rtol=0)


def test_still_video_equals_image_patches_for_qwen(gen):
    """Two identical frames are one temporal patch: exactly what Qwen2-VL makes of a still image."""
    rm = load_rm("qwen2_vl")
    frame = torch.rand(3, 56, 84, generator=gen)
    image = rm.family.encode_image(frame)
    video = rm.family.encode_video(torch.stack([frame, frame]), fps=2.0)
    assert torch.equal(image.pixels, video.pixels) and image.meta == video.meta


@pytest.mark.parametrize("family", ["qwen2_vl", "qwen2_5_vl", "qwen3_vl"])
def test_video_positions_equal_transformers_rope_index(family, gen):
    rm = load_rm(family)
    item = rm.encode(["a dog"], [clips(gen, 1, frames=6)], kind="video", fps=4.0)[0]
    inputs = rm.collate([item])
    base = getattr(rm.model, rm.model.base_model_prefix)
    extra = {"second_per_grid_ts": inputs["second_per_grid_ts"]} if "second_per_grid_ts" in inputs else {}
    ref, _ = base.get_rope_index(input_ids=inputs["input_ids"], video_grid_thw=inputs["video_grid_thw"],
                                 attention_mask=inputs["attention_mask"], mm_token_type_ids=inputs["mm_token_type_ids"],
                                 **extra)
    assert torch.equal(rm.family.position_ids(item.input_ids, item.media), ref[:, 0])


def test_gradients_reach_the_frames(family, gen):
    rm = load_rm(family)
    videos = [v.requires_grad_() for v in clips(gen, 2)]
    rm.compare(videos1=videos[:1], videos2=videos[1:], prompts=PROMPTS[:1]).sum().backward()
    for v in videos:
        assert v.grad is not None and torch.isfinite(v.grad).all()
        assert (v.grad.flatten(1).abs().sum(1) > 0).all()  # every frame matters


def test_bad_videos_are_named(gen):
    rm = load_rm("qwen2_vl")
    good = clips(gen, 1)[0]
    with pytest.raises(InputError, match=r"videos\[1\].*zero frames"):
        rm.score(videos=[good, torch.rand(0, 3, 56, 56)], prompts=["a", "b"])
    with pytest.raises(InputError, match=r"videos\[0\].*one size"):
        rm.score(videos=[[torch.rand(3, 56, 56), torch.rand(3, 56, 84)]], prompts=["a"])
    with pytest.raises(InputError, match=r"videos2\[0\].*\[0, 1\]"):
        rm.compare(videos1=[good], videos2=[good * 3], prompts=["a"])
    with pytest.raises(InputError, match=r"videos\[0\].*\[T, 3, H, W\]"):
        rm.score(videos=[torch.rand(4, 56, 56)], prompts=["a"])
    with pytest.raises(InputError, match="images or videos, not both"):
        rm.score(images=[good[0]], videos=[good], prompts=["a"])


def test_frame_lists_and_sampling(gen):
    video = clips(gen, 1, frames=8)[0]
    frames, fps = load_video(list(video), 0, "videos", num_frames=3)
    assert torch.equal(frames, video[[0, 4, 7]]) or torch.equal(frames, video[[0, 3, 7]])
    assert sample_indices(8, num_frames=3) == [0, 4, 7] or sample_indices(8, num_frames=3) == [0, 3, 7]
    assert sample_indices(10, fps=1.0, source_fps=4.0) == [0, 4, 8]
    assert sample_indices(5, fps=10.0, source_fps=4.0) == [0, 1, 2, 3, 4]
    _, fps = load_video(video, 0, "videos", fps=1.0)
    assert fps == 1.0


def test_folder_of_frames_is_a_video(tmp_path, gen):
    """A folder of PNG frames loads in file-name order and scores as the same frames given as a tensor."""
    video = clips(gen, 1, frames=5)[0]
    quantised = (video * 255).round() / 255  # what the PNG files hold
    save_frames(tmp_path, video, order=[3, 0, 4, 1, 2])  # the names, not the write order, set the sequence
    (tmp_path / "notes.txt").write_text("not a frame")
    frames, _ = load_video(str(tmp_path), 0, "videos")
    torch.testing.assert_close(frames, quantised, atol=1e-6, rtol=0)
    rm = load_rm("qwen2_vl")
    torch.testing.assert_close(rm.score(videos=[str(tmp_path)], prompts=["waves"], num_frames=4),
                               rm.score(videos=[quantised], prompts=["waves"], num_frames=4), atol=1e-6, rtol=1e-5)
    (tmp_path / "empty").mkdir()
    with pytest.raises(InputError, match=r"videos\[0\].*no frame images"):
        rm.score(videos=[str(tmp_path / "empty")], prompts=["a"])
