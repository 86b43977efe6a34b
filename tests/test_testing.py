"""rdfast.testing: tiny checkpoints load through from_pretrained and run a real multimodal forward."""
import os

os.environ["HF_HUB_OFFLINE"] = "1"  # everything here must work without a hub

import json
import time

import pytest
import torch

from rdfast.testing import FAMILIES, random_images, tiny_checkpoint

transformers = pytest.importorskip("transformers")
from transformers import AutoConfig, AutoImageProcessor, AutoModelForImageTextToText, AutoTokenizer  # noqa: E402

PAIR = [{"role": "user", "content": [
    {"type": "image"}, {"type": "image"},
    {"type": "text", "text": "Is the first image better than the second image? Answer yes or no."}]}]


@pytest.fixture(scope="module")
def cache(tmp_path_factory):
    return tmp_path_factory.mktemp("tiny")


@pytest.fixture(scope="module", params=FAMILIES)
def ckpt(request, cache):
    path = tiny_checkpoint(request.param, cache)
    model = AutoModelForImageTextToText.from_pretrained(path).eval()
    return request.param, path, model, AutoTokenizer.from_pretrained(path), AutoImageProcessor.from_pretrained(path)


def test_layout_and_config(ckpt):
    family, path, model, tok, proc = ckpt
    assert (path / "model.safetensors").exists() and not list(path.glob("*.bin"))
    for name in ("config.json", "tokenizer.json", "tokenizer_config.json", "preprocessor_config.json"):
        assert (path / name).exists(), name
    cfg = AutoConfig.from_pretrained(path)
    assert cfg.model_type == family and not cfg.tie_word_embeddings and model.dtype == torch.float32
    assert model.lm_head.weight.data_ptr() != model.get_input_embeddings().weight.data_ptr()
    assert cfg.text_config.vocab_size >= len(tok)
    assert cfg.text_config.eos_token_id == tok.convert_tokens_to_ids("<|im_end|>") == tok.eos_token_id
    assert tok.pad_token == "<|endoftext|>"
    if family == "internvl":
        assert type(proc).__name__.startswith("GotOcr2ImageProcessor")
        assert cfg.image_token_id == tok.convert_tokens_to_ids("<IMG_CONTEXT>") == tok.context_image_token_id
        assert tok.start_image_token == "<img>" and tok.end_image_token == "</img>"
        v = cfg.vision_config
        seq = (v.image_size[0] // v.patch_size[0]) ** 2 * cfg.downsample_ratio ** 2
        saved = json.loads((path / "processor_config.json").read_text())
        assert cfg.image_seq_length == seq == saved["image_seq_length"]
        assert proc.size.height == v.image_size[0]
    else:
        assert type(proc).__name__.startswith("Qwen2VLImageProcessor")
        for attr, token in [("image_token_id", "<|image_pad|>"), ("video_token_id", "<|video_pad|>"),
                            ("vision_start_token_id", "<|vision_start|>"), ("vision_end_token_id", "<|vision_end|>")]:
            assert getattr(cfg, attr) == tok.convert_tokens_to_ids(token), attr
        rope = cfg.text_config.rope_parameters  # rotary dims: head_dim (64 / 4), Qwen3.5 only a part of it
        assert sum(rope["mrope_section"]) * 2 == 64 // 4 * rope.get("partial_rotary_factor", 1.0)
    if family.startswith("qwen3_5"):  # hybrid: Gated DeltaNet linear attention and full attention
        assert set(cfg.text_config.layer_types) == {"linear_attention", "full_attention"}
    if family.endswith("_moe"):  # a few routed experts, fewer per token
        assert 1 < cfg.text_config.num_experts_per_tok < cfg.text_config.num_experts


def test_chat_template_and_single_token_answers(ckpt):
    family, _, _, tok, _ = ckpt
    text = tok.apply_chat_template(PAIR, tokenize=False, add_generation_prompt=True)
    image = "<IMG_CONTEXT>\n" if family == "internvl" else "<|vision_start|><|image_pad|><|vision_end|>"
    system = "" if family == "internvl" or family.startswith("qwen3") else "<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n"
    turn = f"{system}<|im_start|>user\n{image}{image}{PAIR[0]['content'][2]['text']}<|im_end|>\n<|im_start|>assistant\n"
    if family.startswith("qwen3_5"):  # as the real template: a thinking block opens, or with enable_thinking=False closes empty
        assert text == turn + "<think>\n"
        text = tok.apply_chat_template(PAIR, tokenize=False, add_generation_prompt=True, enable_thinking=False)
        turn += "<think>\n\n</think>\n\n"
    assert text == turn
    base = tok(text)["input_ids"]
    for word in ("yes", "no", "Yes", "No"):
        ids = tok(text + word)["input_ids"]
        assert ids[:len(base)] == base and len(ids) == len(base) + 1, word
    assert tok.apply_chat_template([{"role": "user", "content": "hi"}], tokenize=False).endswith("hi<|im_end|>\n")


def _inputs(family, model, tok, proc, images):
    """What the HF processor would produce, built by hand (the processors need torchvision)."""
    text = tok.apply_chat_template(PAIR, tokenize=False, add_generation_prompt=True)
    pix = proc(images=images, return_tensors="pt")
    cfg = model.config
    if family == "internvl":
        n = pix["num_patches"].tolist()
        parts = text.split("<IMG_CONTEXT>")
        assert len(parts) == len(images) + 1
        text = parts[0] + "".join(f"<img>{'<IMG_CONTEXT>' * cfg.image_seq_length * k}</img>{p}"
                                  for k, p in zip(n, parts[1:]))
        ids = tok(text, return_tensors="pt")["input_ids"]
        assert pix["pixel_values"].shape == (sum(n), 3, 56, 56)
        return dict(input_ids=ids, attention_mask=torch.ones_like(ids), pixel_values=pix["pixel_values"])
    grid = pix["image_grid_thw"]
    unit = proc.patch_size * proc.merge_size
    for (w, h), thw in zip([im.size for im in images], grid.tolist()):
        if w % unit == 0 and h % unit == 0:  # default sizes fit Qwen2-VL's 28 px units: not resized
            assert thw == [1, h // proc.patch_size, w // proc.patch_size]
        assert thw[1] % proc.merge_size == 0 and thw[2] % proc.merge_size == 0
    counts = (grid.prod(-1) // proc.merge_size ** 2).tolist()
    parts = text.split("<|image_pad|>")
    text = parts[0] + "".join("<|image_pad|>" * k + p for k, p in zip(counts, parts[1:]))
    ids = tok(text, return_tensors="pt")["input_ids"]
    assert (ids == cfg.image_token_id).sum() == sum(counts)
    mm = (ids == cfg.image_token_id).long()  # 0 text, 1 image (2 would be video)
    return dict(input_ids=ids, attention_mask=torch.ones_like(ids), pixel_values=pix["pixel_values"],
                image_grid_thw=grid, mm_token_type_ids=mm)


def test_multimodal_forward_and_logits_to_keep(ckpt):
    family, _, model, tok, proc = ckpt
    images = random_images(2, seed=1)
    assert images[0].size != images[1].size
    inputs = _inputs(family, model, tok, proc, images)
    with torch.no_grad():
        full = model(**inputs).logits
        last = model(**inputs, logits_to_keep=1).logits
    assert full.shape == (1, inputs["input_ids"].shape[1], model.config.text_config.vocab_size)
    assert last.shape[1] == 1 and torch.isfinite(full).all()
    torch.testing.assert_close(last[:, 0], full[:, -1], atol=1e-5, rtol=0)
    # The images matter: different pixels give different logits at the answer position.
    inputs["pixel_values"] = torch.randn_like(inputs["pixel_values"])
    with torch.no_grad():
        assert not torch.allclose(model(**inputs, logits_to_keep=1).logits, last)


def test_cache_reuse_determinism_and_overrides(cache, tmp_path):
    first = tiny_checkpoint("qwen2_vl", cache)
    mtime = (first / "model.safetensors").stat().st_mtime_ns
    t = time.perf_counter()
    again = tiny_checkpoint("qwen2_vl", cache)
    assert again == first and time.perf_counter() - t < 0.1
    assert (first / "model.safetensors").stat().st_mtime_ns == mtime
    assert not [p for p in cache.iterdir() if p.name.startswith(".")]  # no temp dirs left behind

    from safetensors.torch import load_file

    def weights(path):
        return load_file(path / "model.safetensors")

    same, other = tiny_checkpoint("qwen2_vl", tmp_path), tiny_checkpoint("qwen2_vl", tmp_path, seed=1)
    assert same.name == first.name and other != same
    a, b, c = weights(first), weights(same), weights(other)
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert not all(torch.equal(a[k], c[k]) for k in a)
    assert (first / "tokenizer.json").read_bytes() == (same / "tokenizer.json").read_bytes()

    deeper = tiny_checkpoint("internvl", tmp_path, text_config={"num_hidden_layers": 3},
                             image_processor={"max_patches": 2})
    assert AutoConfig.from_pretrained(deeper).text_config.num_hidden_layers == 3
    assert AutoImageProcessor.from_pretrained(deeper).max_patches == 2
    with pytest.raises(ValueError):
        tiny_checkpoint("llava", tmp_path)


def test_random_images():
    pil = random_images(3)
    assert [im.size for im in pil] == [(56, 56), (84, 56), (56, 84)] and all(im.mode == "RGB" for im in pil)
    ten = random_images(2, sizes=((28, 56),), seed=3, kind="tensor")
    assert ten[0].shape == (3, 56, 28) and ten[0].dtype == torch.float32
    assert 0 <= ten[0].min() and ten[0].max() <= 1 and not torch.equal(ten[0], ten[1])
    assert torch.equal(random_images(1, seed=3, kind="tensor")[0], random_images(1, seed=3, kind="tensor")[0])
