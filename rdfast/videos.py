"""Video inputs: loading, validation and frame sampling, before any model work.

A video is a float tensor [T, 3, H, W] in [0, 1] (differentiable), a list of frames (PIL images, paths or
[3, H, W] tensors, all the same size), a folder of frame images (taken in file-name order), or a video file
when a decoder (PyAV or imageio) is installed.
"""
from __future__ import annotations

import math
import os

import torch

from .errors import InputError
from .images import check_image_tensor, image_size, load_image, pil_to_tensor

DEFAULT_FPS = 2.0  # what rdfast assumes for frame lists and tensors when the caller gives no fps
FRAME_EXTENSIONS = (".png", ".jpg", ".jpeg", ".webp", ".bmp")


def frame_files(folder: str) -> list[str]:
    """The frame images of a video stored as a folder, in file-name order (000.png, 001.png, ...)."""
    names = sorted(n for n in os.listdir(folder) if n.lower().endswith(FRAME_EXTENSIONS))
    return [os.path.join(folder, n) for n in names]


def sample_indices(n_frames: int, num_frames: int | None = None, fps: float | None = None,
                   source_fps: float | None = None) -> list[int]:
    """Frame indices to keep: ``num_frames`` spread evenly, or every frame at ``fps`` out of ``source_fps``."""
    if num_frames is not None and fps is not None:
        raise ValueError("pass num_frames or fps, not both")
    if num_frames is not None:
        if num_frames < 1:
            raise ValueError(f"num_frames must be >= 1, got {num_frames}")
        if num_frames >= n_frames:
            return list(range(n_frames))
        return torch.linspace(0, n_frames - 1, num_frames).round().long().tolist()
    if fps is not None:
        if fps <= 0:
            raise ValueError(f"fps must be positive, got {fps}")
        step = (source_fps or DEFAULT_FPS) / fps  # source frames per kept frame
        if step <= 1:
            return list(range(n_frames))
        return [int(k * step) for k in range(math.ceil(n_frames / step))]
    return list(range(n_frames))


def _decode_file(path: str):
    """(frames [T, 3, H, W] float in [0, 1], fps) from a video file, with whichever decoder is installed."""
    try:
        import av
    except ImportError:
        av = None
    if av is not None:
        with av.open(path) as container:
            stream = container.streams.video[0]
            fps = float(stream.average_rate) if stream.average_rate else DEFAULT_FPS
            frames = [pil_to_tensor(f.to_image().convert("RGB")) for f in container.decode(stream)]
        return torch.stack(frames) if frames else torch.empty(0, 3, 1, 1), fps
    try:
        import imageio.v3 as iio
    except ImportError as err:
        raise ImportError("reading video files needs a decoder: pip install av (or imageio[pyav])") from err
    meta = iio.immeta(path)
    array = torch.from_numpy(iio.imread(path))  # [T, H, W, 3] uint8
    return array.permute(0, 3, 1, 2).float() / 255, float(meta.get("fps", DEFAULT_FPS))


def as_video_list(videos, field: str) -> list:
    """Split a batch tensor [N, T, 3, H, W] into a list; accept a list/tuple of videos as is."""
    if isinstance(videos, torch.Tensor):
        if videos.dim() == 5:
            return list(videos.unbind(0))
        raise InputError(f"expected a list of videos or a tensor [N, T, 3, H, W], got shape {tuple(videos.shape)}",
                         field=field)
    if isinstance(videos, (str, os.PathLike)):
        raise InputError("expected a list of videos, got a single path", field=field)
    if not isinstance(videos, (list, tuple)):
        raise InputError(f"expected a list of videos, got {type(videos).__name__}", field=field)
    return list(videos)


def load_video(video, index: int | None, field: str, num_frames=None, fps=None):
    """Validate one video and sample its frames. Returns (frames [T, 3, H, W] float in [0, 1], fps)."""
    source_fps = None
    if isinstance(video, (str, os.PathLike)):
        path = os.fspath(video)
        if os.path.isdir(path):
            frames = frame_files(path)
            if not frames:
                raise InputError(f"video folder holds no frame images ({', '.join(FRAME_EXTENSIONS)}): {path}",
                                 index, field)
            return load_video(frames, index, field, num_frames, fps)
        if not os.path.isfile(path):
            raise InputError(f"video file not found: {path}", index, field)
        try:
            frames, source_fps = _decode_file(path)
        except ImportError:
            raise
        except Exception as err:  # decoders raise many types for corrupt files
            raise InputError(f"cannot read video file {path}: {err}", index, field) from err
    elif isinstance(video, torch.Tensor):
        if video.dim() != 4 or video.shape[1] != 3:
            raise InputError(f"video tensor must have shape [T, 3, H, W], got {tuple(video.shape)}", index, field)
        frames = video
    elif isinstance(video, (list, tuple)):
        loaded = [load_image(f, index, field) for f in video]
        sizes = {image_size(f) for f in loaded}
        if len(sizes) > 1:
            raise InputError(f"frames of one video must share one size, got sizes {sorted(sizes)}", index, field)
        frames = torch.stack([f if isinstance(f, torch.Tensor) else pil_to_tensor(f) for f in loaded]) if loaded else None
    else:
        raise InputError(f"unsupported video type {type(video).__name__} (use a [T,3,H,W] tensor, a frame list "
                         "or a file path)", index, field)
    if frames is None or frames.shape[0] == 0:
        raise InputError("video has zero frames", index, field)
    check_image_tensor(frames[0], index, field)  # dtype and size checks on one frame
    with torch.no_grad():
        lo, hi = frames.min().item(), frames.max().item()
    if not (lo >= 0.0 and hi <= 1.0):
        raise InputError(f"video values must lie in [0, 1], got range [{lo:.4g}, {hi:.4g}]", index, field)
    try:
        keep = sample_indices(frames.shape[0], num_frames, fps, source_fps)
    except ValueError as err:
        raise InputError(str(err), index, field) from err
    base_fps = source_fps or DEFAULT_FPS
    out_fps = fps if fps is not None else base_fps * len(keep) / frames.shape[0]
    return (frames if len(keep) == frames.shape[0] else frames[keep]), out_fps
