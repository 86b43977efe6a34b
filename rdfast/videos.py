"""Video inputs: loading, validation and frame sampling, before any model work.

A video is a float tensor [T, 3, H, W] in [0, 1] (differentiable), a list of frames (PIL images, paths or
[3, H, W] tensors, all the same size), a folder of frame images (taken in file-name order), or a video file
(mp4, mkv, webm, ...; decoded with PyAV, the optional ``rdfast[video]`` extra). Every kind is sampled by the
same ``sample_indices``, so a file and the folder of its frames give the same frames.
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


def check_sampling(num_frames: int | None, fps: float | None) -> None:
    """Raise ValueError unless at most one of ``num_frames`` (>= 1) and ``fps`` (> 0) is given."""
    if num_frames is not None and fps is not None:
        raise ValueError("pass num_frames or fps, not both")
    if num_frames is not None and num_frames < 1:
        raise ValueError(f"num_frames must be >= 1, got {num_frames}")
    if fps is not None and not fps > 0:
        raise ValueError(f"fps must be positive, got {fps}")


def sample_indices(n_frames: int, num_frames: int | None = None, fps: float | None = None,
                   source_fps: float | None = None) -> list[int]:
    """Frame indices to keep, ascending.

    Args:
        n_frames: frames in the video.
        num_frames: keep this many, spread evenly from the first frame to the last (all if fewer exist).
        fps: keep frames at this rate out of ``source_fps`` (``DEFAULT_FPS`` when None): frame int(k * step),
            step = source_fps / fps, for k = 0, 1, ... while inside the video (all frames when step <= 1).
        source_fps: the video's own frame rate.

    Returns:
        The kept indices; every frame when neither ``num_frames`` nor ``fps`` is given.
    """
    check_sampling(num_frames, fps)
    if num_frames is not None:
        if num_frames >= n_frames:
            return list(range(n_frames))
        return torch.linspace(0, n_frames - 1, num_frames).round().long().tolist()
    if fps is not None:
        step = (source_fps or DEFAULT_FPS) / fps  # source frames per kept frame
        if step <= 1:
            return list(range(n_frames))
        return [int(k * step) for k in range(math.ceil(n_frames / step))]
    return list(range(n_frames))


def _open_video_file(path: str):
    try:
        import av  # optional
    except ImportError as err:
        raise ImportError("reading video files needs PyAV: pip install rdfast[video] (or pip install av)") from err
    container = av.open(path)
    if not container.streams.video:
        container.close()
        raise ValueError("the file holds no video stream")
    stream = container.streams.video[0]
    stream.thread_type = "AUTO"  # frame threads: decoded frames still come out in display order
    return container, stream


def read_video_file(path: str, num_frames: int | None = None,
                    fps: float | None = None) -> tuple[torch.Tensor, int, float | None]:
    """Decode the frames ``sample_indices`` keeps from a video file; only those are converted and held.

    With ``num_frames`` or ``fps`` the file is decoded twice: once to count its frames (container headers
    can be missing or wrong, and sampling must be exact), once to keep the chosen ones.

    Args:
        path: a video file PyAV can read.
        num_frames, fps: the sampling, as in ``sample_indices``.

    Returns:
        (frames float32 [T', 3, H, W] in [0, 1], the file's frame count T, its frame rate or None).
    """
    container, stream = _open_video_file(path)
    with container:
        rate = stream.average_rate or stream.guessed_rate
        source_fps = float(rate) if rate else None
        if num_frames is None and fps is None:
            frames = [pil_to_tensor(f.to_image()) for f in container.decode(stream)]
            return (torch.stack(frames) if frames else torch.empty(0, 3, 0, 0)), len(frames), source_fps
        n_frames = sum(1 for _ in container.decode(stream))
    keep = sample_indices(n_frames, num_frames, fps, source_fps)
    if not keep:
        return torch.empty(0, 3, 0, 0), 0, source_fps
    wanted, kept = set(keep), {}
    container, stream = _open_video_file(path)
    with container:
        for i, frame in enumerate(container.decode(stream)):
            if i in wanted:
                kept[i] = pil_to_tensor(frame.to_image())
            if i == keep[-1]:
                break
    if len(kept) != len(wanted):
        raise ValueError(f"the file gave fewer frames on a second decoding than the {n_frames} counted first")
    return torch.stack([kept[i] for i in keep]), n_frames, source_fps


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


def load_video(video, index: int | None, field: str, num_frames: int | None = None,
               fps: float | None = None) -> tuple[torch.Tensor, float]:
    """Validate one video and sample its frames.

    Args:
        video: a float tensor [T, 3, H, W] in [0, 1], a list of frames, a folder of frame images or a video file.
        index, field: where the video came from, named in errors.
        num_frames, fps: the sampling, as in ``sample_indices``.

    Returns:
        (frames float [T', 3, H, W] in [0, 1], their frame rate).
    """
    try:
        check_sampling(num_frames, fps)
    except ValueError as err:
        raise InputError(str(err), index, field) from err
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
            frames, n_frames, source_fps = read_video_file(path, num_frames, fps)
        except ImportError:
            raise
        except Exception as err:  # decoders raise many types for corrupt files
            raise InputError(f"cannot read video file {path}: {err}", index, field) from err
        if n_frames == 0:
            raise InputError(f"video has zero frames: {path}", index, field)
        check_image_tensor(frames[0], index, field)  # size checks on one frame
        return frames, output_fps(n_frames, frames.shape[0], fps, source_fps)
    if isinstance(video, torch.Tensor):
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
    keep = sample_indices(frames.shape[0], num_frames, fps)
    return (frames if len(keep) == frames.shape[0] else frames[keep]), output_fps(frames.shape[0], len(keep), fps)


def output_fps(n_frames: int, n_kept: int, fps: float | None, source_fps: float | None = None) -> float:
    """The frame rate of ``n_kept`` frames sampled from ``n_frames``: ``fps`` when asked for, else the source
    rate (``DEFAULT_FPS`` when unknown) thinned by the sampling."""
    return fps if fps is not None else (source_fps or DEFAULT_FPS) * n_kept / n_frames
