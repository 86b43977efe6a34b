"""Video files decoded with PyAV: frames equal what the test wrote (exactly for a lossless codec, within codec
tolerance for H.264), num_frames / fps sampling exact and equal to a frame folder's, scores equal a folder's."""
import sys

import numpy as np
import pytest
import torch

from conftest import load_rm, save_frames
from rdfast.errors import InputError
from rdfast.videos import load_video, sample_indices

av = pytest.importorskip("av")


def lossy_codec():
    """H.264 where this PyAV build can encode it, else MPEG-4 part 2."""
    for name in ("libx264", "mpeg4"):
        try:
            av.codec.Codec(name, "w")
            return name
        except Exception:  # noqa: BLE001 - PyAV raises different types for an unknown encoder
            continue
    pytest.skip("this PyAV build has neither an H.264 nor an MPEG-4 encoder")


def write_video(path, frames, rate, codec="ffv1", pix_fmt="bgr0", options=None):
    """frames uint8 [T, H, W, 3] -> a video file written with PyAV at ``rate`` frames per second."""
    with av.open(str(path), "w") as container:
        stream = container.add_stream(codec, rate=rate, options=options or {})
        stream.height, stream.width = frames.shape[1:3]
        stream.pix_fmt = pix_fmt
        for array in frames:
            container.mux(stream.encode(av.VideoFrame.from_ndarray(np.ascontiguousarray(array), format="rgb24")))
        container.mux(stream.encode(None))  # flush the encoder's delayed frames
    return str(path)


def random_frames(gen, t, h, w):
    return (torch.rand(t, h, w, 3, generator=gen) * 255).round().to(torch.uint8).numpy()


def as_tensor(frames):
    """uint8 [T, H, W, 3] -> float [T, 3, H, W] in [0, 1], as rdfast converts 8-bit pixels."""
    return torch.from_numpy(frames).permute(0, 3, 1, 2).float() * (1 / 255)


def test_lossless_file_decodes_to_the_written_frames(tmp_path, gen):
    frames = random_frames(gen, 7, 26, 38)
    path = write_video(tmp_path / "clip.mkv", frames, rate=6)
    decoded, fps = load_video(path, 0, "videos")
    assert decoded.shape == (7, 3, 26, 38) and fps == 6.0
    torch.testing.assert_close(decoded, as_tensor(frames), atol=1e-6, rtol=0)


def test_h264_mp4_decodes_within_codec_tolerance(tmp_path, gen):
    """Smooth moving content through 4:2:0 H.264: the written frames come back to a few grey levels."""
    t, h, w = 9, 48, 64
    y, x = torch.meshgrid(torch.linspace(0, 1, h), torch.linspace(0, 1, w), indexing="ij")
    phase = torch.rand(3, generator=gen) * 6.28
    frames = torch.stack([torch.stack([0.5 + 0.4 * torch.sin(3 * x + 2 * y + phase[c] + 0.3 * k) for c in range(3)], -1)
                          for k in range(t)])
    frames = (frames * 255).round().to(torch.uint8).numpy()
    codec = lossy_codec()
    options = {"crf": "12"} if codec == "libx264" else {"qscale": "2"}
    path = write_video(tmp_path / "clip.mp4", frames, rate=5, codec=codec, pix_fmt="yuv420p", options=options)
    decoded, fps = load_video(path, 0, "videos")
    assert decoded.shape == (t, 3, h, w) and fps == 5.0
    error = (decoded - as_tensor(frames)).abs()
    # measured with libx264: mean 0.009 (4:2:0 chroma round trip; 0.0015 in 4:4:4), max 0.05
    assert error.mean() < 0.02 and error.max() < 0.1, (codec, error.mean().item(), error.max().item())
    unrelated = as_tensor(random_frames(gen, t, h, w))
    assert (decoded - unrelated).abs().mean() > 0.2  # the bound above is tight enough to fail on wrong frames


@pytest.mark.parametrize("sampling, expected", [
    ({"num_frames": 4}, [0, 3, 7, 10]),  # linspace(0, 10, 4) rounded
    ({"num_frames": 1}, [0]),
    ({"num_frames": 30}, list(range(11))),
    ({"fps": 2.0}, [0, 4, 8]),  # 8 fps source: every 4th frame
    ({"fps": 3.0}, [0, 2, 5, 8, 10]),  # steps of 8/3 frames, rounded down
    ({"fps": 50.0}, list(range(11))),
    ({}, list(range(11))),
])
def test_sampling_a_file_is_exact_and_equals_a_frame_folder(tmp_path, gen, sampling, expected):
    frames = random_frames(gen, 11, 20, 30)
    path = write_video(tmp_path / "clip.mkv", frames, rate=8)
    save_frames(tmp_path / "folder", as_tensor(frames))
    decoded, fps = load_video(path, 0, "videos", **sampling)
    assert sample_indices(11, source_fps=8.0, **sampling) == expected
    torch.testing.assert_close(decoded, as_tensor(frames)[expected], atol=1e-6, rtol=0)
    assert fps == sampling.get("fps", 8.0 * len(expected) / 11)
    if "fps" not in sampling:  # a folder has no frame rate of its own, so only num_frames picks alike
        from_folder, _ = load_video(str(tmp_path / "folder"), 0, "videos", **sampling)
        assert torch.equal(decoded, from_folder)


def test_only_the_sampled_frames_are_converted(tmp_path, gen, monkeypatch):
    """A long file sampled to a few frames holds only those in memory as float tensors."""
    import rdfast.videos

    path = write_video(tmp_path / "clip.mkv", random_frames(gen, 40, 8, 8), rate=10)
    converted = []
    real = rdfast.videos.pil_to_tensor
    monkeypatch.setattr(rdfast.videos, "pil_to_tensor", lambda image: converted.append(1) or real(image))
    frames, _ = load_video(path, 0, "videos", num_frames=3)
    assert frames.shape[0] == 3 and len(converted) == 3


@pytest.mark.parametrize("num_frames", [None, 3])
def test_scoring_a_file_equals_scoring_its_frame_folder(family, tmp_path, gen, num_frames):
    """At the default 2 fps a folder and a file carry the same frame rate, so even Qwen2.5-VL's time
    positions agree."""
    rm = load_rm(family)
    frames = random_frames(gen, 4, 56, 56)
    path = write_video(tmp_path / "clip.mkv", frames, rate=2)
    save_frames(tmp_path / "folder", as_tensor(frames))
    prompts = ["waves at night"]
    ours = rm.score(videos=[path], prompts=prompts, num_frames=num_frames)
    folder = rm.score(videos=[str(tmp_path / "folder")], prompts=prompts, num_frames=num_frames)
    assert torch.equal(ours, folder)


def test_bad_video_files_are_named(tmp_path, gen, monkeypatch):
    garbage = tmp_path / "garbage.mp4"
    garbage.write_bytes(bytes(range(256)) * 8)
    with pytest.raises(InputError, match=r"videos\[0\].*cannot read video file .*garbage\.mp4"):
        load_video(str(garbage), 0, "videos")
    path = write_video(tmp_path / "clip.mkv", random_frames(gen, 3, 8, 8), rate=4)
    with pytest.raises(InputError, match=r"videos\[1\].*num_frames must be >= 1"):
        load_video(path, 1, "videos", num_frames=0)
    monkeypatch.setitem(sys.modules, "av", None)  # as if PyAV were not installed
    with pytest.raises(ImportError, match=r"pip install rdfast\[video\]"):
        load_video(path, 0, "videos")
