"""PIL image modes against transformers' Pil image processors: transparency composited on white, other modes
converted alike, 16-bit images scaled (deliberately unlike HF), empty images named. Fresh random pixels each run."""
import numpy as np
import pytest
import torch
from PIL import Image

from conftest import load_rm
from rdfast.errors import InputError
from rdfast.images import load_image, to_rgb

TRANSPARENT = ("RGBA", "LA", "PA", "P+tRNS", "P+index", "L+key", "RGB+key")
OPAQUE = ("L", "1", "CMYK", "P", "YCbCr", "RGB")
PNG_MODES = {"RGBA", "LA", "P+tRNS", "P+index", "L+key", "RGB+key", "L", "1", "P", "RGB"}  # stored as real files
SIZES = ((56, 56), (60, 90))  # (width, height): one kept as is, one resized by the processor
PROCESSORS = {}


def numpy_rng(gen):
    return np.random.default_rng(int(torch.randint(0, 2**31 - 1, (1,), generator=gen)))


def make_image(kind, size, rng):
    """A random PIL image of ``kind`` (a PIL mode, optionally "+" how it carries transparency)."""
    w, h = size
    u8 = lambda *shape: rng.integers(0, 256, shape, dtype=np.uint8)  # noqa: E731
    mode = kind.split("+")[0]
    if mode in ("P", "PA"):
        im = Image.frombytes("P", size, u8(h, w).tobytes())
        im.putpalette(u8(768).tobytes())
        if kind == "P+tRNS":  # one alpha per palette entry, as a PNG tRNS chunk holds it
            im.info["transparency"] = u8(256).tobytes()
        elif kind == "P+index":  # one fully transparent palette index
            im.info["transparency"] = int(np.asarray(im)[0, 0])
        elif mode == "PA":
            im = im.convert("PA")
            im.putdata(list(zip(np.asarray(im)[..., 0].ravel().tolist(), u8(h * w).tolist())))
        return im
    if kind in ("RGBA", "LA", "L", "RGB", "L+key", "RGB+key"):
        channels = {"RGBA": 4, "LA": 2, "RGB": 3}.get(mode)
        im = Image.fromarray(u8(h, w, channels) if channels else u8(h, w))
        if kind.endswith("+key"):  # a colour key: the pixels of one value are fully transparent
            key = np.asarray(im)[0, 0]
            im.info["transparency"] = int(key) if mode == "L" else tuple(int(v) for v in key)
        return im
    if mode == "1":
        return Image.fromarray(u8(h, w) > 127)
    return Image.fromarray(u8(h, w, 3)).convert(mode)  # CMYK, YCbCr


def as_loaded(kind, image, tmp_path):
    """(what rdfast is given, what HF is given): PNG-storable kinds go through a real file and its path."""
    if kind not in PNG_MODES:
        return image, image
    path = tmp_path / f"{kind}-{image.width}x{image.height}.png"
    image.save(path, **({"transparency": image.info["transparency"]} if "transparency" in image.info else {}))
    with Image.open(path) as reopened:
        reopened.load()
    assert reopened.mode == image.mode and ("transparency" in reopened.info) == ("+" in kind)
    return str(path), reopened


def hf_processor(family, rm):
    from transformers import AutoImageProcessor

    if family not in PROCESSORS:
        PROCESSORS[family] = AutoImageProcessor.from_pretrained(rm.model.name_or_path)
        assert PROCESSORS[family].backend == "pil"
    return PROCESSORS[family]


@pytest.mark.parametrize("kind", TRANSPARENT + OPAQUE)
def test_pixels_equal_hf_pil_processor_for_every_mode(family, kind, gen, tmp_path):
    rm = load_rm(family)
    rng = numpy_rng(gen)
    ours, theirs = zip(*(as_loaded(kind, make_image(kind, size, rng), tmp_path) for size in SIZES))
    pixels = rm.build_inputs(prompts=["a cat", "a dog"], images1=list(ours))["pixel_values"]
    kwargs = {"crop_to_patches": True} if family == "internvl" else {}
    hf = hf_processor(family, rm)(images=list(theirs), return_tensors="pt", **kwargs)["pixel_values"]
    torch.testing.assert_close(pixels, hf.float(), atol=1e-6, rtol=0)


@pytest.mark.parametrize("kind", TRANSPARENT)
def test_transparency_is_composited_on_white(kind, gen):
    """Independent of transformers: out = colour * alpha + 255 * (1 - alpha), to PIL's rounding."""
    image = make_image(kind, (37, 23), numpy_rng(gen))
    rgba = np.asarray(image.convert("RGBA")).astype(np.float64)
    alpha = rgba[..., 3:] / 255
    expected = rgba[..., :3] * alpha + 255 * (1 - alpha)
    got = np.asarray(load_image(image, 0, "images"))
    assert got.dtype == np.uint8 and got.shape == expected.shape
    assert np.abs(got - expected).max() <= 1.0
    assert (alpha < 1).any()  # the case really holds transparency


@pytest.mark.parametrize("mode", ["I;16", "I;16B", "I", "I;16 png"])
def test_16_bit_images_are_scaled_to_8_bits(mode, gen, tmp_path):
    """value / 257 rounded, on all three channels; HF's Pil processors saturate instead (documented)."""
    rng = numpy_rng(gen)
    values = rng.integers(0, 65536, (19, 31)).astype(np.uint16)
    values[0, :3] = (0, 65535, 128)
    if mode == "I;16B":
        image = Image.frombytes("I;16B", (31, 19), values.astype(">u2").tobytes())
    elif mode == "I":
        image = Image.fromarray(values.astype(np.int32))
    else:
        image = Image.fromarray(values)
    assert image.mode == mode.split()[0]
    given = image
    if mode.endswith("png"):
        given = str(tmp_path / "sixteen.png")
        image.save(given)
    got = np.asarray(load_image(given, 0, "images"))
    expected = np.rint(values / 257).astype(np.uint8)
    assert np.array_equal(got, np.repeat(expected[..., None], 3, axis=-1))
    from transformers.image_transforms import convert_to_rgb

    saturated = convert_to_rgb(image, return_numpy=True)[..., 0]
    assert np.array_equal(saturated, np.minimum(values, 255))  # what we deliberately do not do


def test_16_bit_transparency_and_out_of_range_values(tmp_path):
    values = np.array([[0, 1000, 65535, 1000]], dtype=np.uint16)
    path = tmp_path / "keyed.png"
    Image.fromarray(values).save(path, transparency=1000)
    assert load_image(str(path), 0, "images").getpixel((1, 0)) == (255, 255, 255)
    assert load_image(str(path), 0, "images").getpixel((0, 0)) == (0, 0, 0)
    with pytest.raises(InputError, match=r"images\[2\].*16-bit range.*70000"):
        load_image(Image.fromarray(np.array([[0, 70000]], dtype=np.int32)), 2, "images")


def test_empty_images_are_named_not_a_zero_division():
    for family in ("qwen2_vl", "internvl"):
        rm = load_rm(family)
        good = Image.new("RGB", (28, 28))
        for size in ((0, 0), (0, 5), (5, 0)):
            with pytest.raises(InputError, match=r"images\[1\].*empty \(\d+x\d+ pixels\)"):
                rm.score(images=[good, Image.new("RGB", size)], prompts=["a", "b"])
            with pytest.raises(InputError, match=r"images2\[0\].*empty"):
                rm.compare(images1=[good], images2=[Image.new("RGBA", size)], prompts=["a"])
            with pytest.raises(InputError, match=r"videos\[0\].*empty"):
                rm.score(videos=[[good, Image.new("RGB", size)]], prompts=["a"])
        for shape in ((3, 0, 0), (3, 0, 5), (3, 5, 0)):
            with pytest.raises(InputError, match=r"images\[1\].*too small"):
                rm.score(images=[torch.rand(3, 28, 28), torch.rand(*shape)], prompts=["a", "b"])
            with pytest.raises(InputError, match=r"videos\[0\].*too small"):
                rm.score(videos=[torch.rand(2, *shape)], prompts=["a"])


def test_older_convert_to_rgb_without_return_numpy_gives_the_same_pixels(monkeypatch, gen):
    """transformers 5.17 (the GPU image) has ``convert_to_rgb(image)`` returning PIL, with no ``return_numpy``."""
    import transformers.image_transforms as transforms

    pixels = torch.randint(0, 256, (9, 7, 4), generator=gen, dtype=torch.uint8).numpy()
    image = Image.fromarray(pixels, "RGBA")
    expected = np.asarray(to_rgb(image, 0, "images"))
    stock = transforms.convert_to_rgb
    monkeypatch.setattr(transforms, "convert_to_rgb", lambda image: stock(image, return_numpy=False))
    np.testing.assert_array_equal(np.asarray(to_rgb(image, 0, "images")), expected)
