"""Templates: presets against their public sources, slots filled once, JSON files, precedence, bad templates.

References are independent of rdfast's layout code: messages are written by hand, rendered by the tokenizer's
own chat template, media expanded as the HF processor does (grid size from the HF image processor) and run
through the plain transformers forward in float32; log P is compared within 1e-5.
"""
import json
import os

import pytest
import torch

from conftest import load_rm
from rdfast import RewardModel
from rdfast.errors import InputError
from rdfast.reward_config import RewardConfig
from rdfast.templates import DEFAULT, PRESETS, Template, load_template
from rdfast.testing import random_images, tiny_checkpoint

QWEN = ("qwen2_vl", "qwen2_5_vl")


def seed_of(gen):
    return int(torch.randint(0, 2**31 - 1, (1,), generator=gen))


def hf_inputs(rm, messages, images):
    """What Qwen2-VL's processor builds, without rdfast: the chat template's text, each <|image_pad|> repeated
    once per merged patch (HF image processor grid), pixel values, and the multimodal token types."""
    from transformers import AutoImageProcessor

    ip = AutoImageProcessor.from_pretrained(rm.model.name_or_path)
    pixels = ip(images=images, return_tensors="pt")
    text = rm.tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    pad = "<|image_pad|>"
    parts = text.split(pad)
    assert len(parts) == len(images) + 1
    counts = (pixels["image_grid_thw"].prod(-1) // ip.merge_size**2).tolist()
    text = parts[0] + "".join(pad * n + part for n, part in zip(counts, parts[1:]))
    ids = torch.tensor([rm.tokenizer(text, add_special_tokens=False)["input_ids"]])
    types = (ids == rm.model.config.image_token_id).long()
    return {"input_ids": ids, "attention_mask": torch.ones_like(ids), "pixel_values": pixels["pixel_values"],
            "image_grid_thw": pixels["image_grid_thw"], "mm_token_type_ids": types}


def plain_logprob(rm, inputs, token_id):
    with torch.no_grad():
        logits = rm.model(**inputs).logits[0, -1].double()
    return torch.log_softmax(logits, -1)[token_id].item()


@pytest.mark.parametrize("family", QWEN)
def test_vqascore_preset_reproduces_t2v_metrics(family, gen):
    """Reference re-implemented from t2v_metrics' public source: linzhiqiu/t2v_metrics @ 6ecb74f,
    t2v_metrics/models/vqascore_models/qwen2vl_model.py L169-L295 (``Qwen2VLModel.forward``): the question
    'Does this figure show "{}"? Please answer Yes or No.' (L173) formatted with the text (L185); one user turn,
    the image item first, then the question (L197); ``apply_chat_template(..., add_generation_prompt=True)``
    (L198); the answer id ``encode("Yes", add_special_tokens=False)[0]`` (L219); ``generate(max_new_tokens=1,
    do_sample=False, output_scores=True)`` (L223); P = softmax(scores[-1])[answer id] at temperature 1 (L264-L270;
    scores[-1] is scores[0] for one new token)."""
    rm = load_rm(family)
    images = random_images(2, seed=seed_of(gen))  # sizes Qwen's smart_resize keeps (t2v_metrics: do_resize=False)
    texts = ["a red circle above a dog", 'a sign that says "{image}"']
    ours = rm.score(images=images, prompts=texts, template="vqascore")
    question_template, answer_template = 'Does this figure show "{}"? Please answer Yes or No.', "Yes"
    answer_id = rm.tokenizer.encode(answer_template, add_special_tokens=False)[0]
    for k, (image, text) in enumerate(zip(images, texts)):
        messages = [{"role": "user", "content": [{"type": "image"},
                                                 {"type": "text", "text": question_template.format(text)}]}]
        inputs = hf_inputs(rm, messages, [image])
        with torch.no_grad():
            out = rm.model.generate(**inputs, max_new_tokens=1, do_sample=False, output_scores=True,
                                    return_dict_in_generate=True, pad_token_id=rm.pad_token_id)
        ref = torch.softmax(out.scores[0][0].double(), dim=-1)[answer_id]
        assert abs(ours[k].double().log().item() - ref.log().item()) < 1e-5


def test_visionreward_preset_asks_the_question_after_the_media(gen):
    """VisionReward (THUDM/VisionReward @ 511960d, inference-video.py): each checklist question (the user's
    prompt already put in, L107) is the whole query after the media (L69-L91,
    ``build_conversation_input_ids(query=..., images=[video])``), and an answer counts when it is "yes" (L112)."""
    rm = load_rm("qwen2_vl")
    images = random_images(2, seed=seed_of(gen))
    questions = ["Is the image symmetrical?", "Does the image show {prompt} and {instruction}?"]
    ours = rm.score(images=images, prompts=questions, template="visionreward")
    yes = rm.tokenizer.encode("yes", add_special_tokens=False)[0]
    for k, (image, question) in enumerate(zip(images, questions)):
        messages = [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": question}]}]
        ref = plain_logprob(rm, hf_inputs(rm, messages, [image]), yes)
        assert abs(ours[k].double().log().item() - ref) < 1e-5


def test_default_preset_is_the_rewarddance_layout_and_scores_as_written_by_hand(gen):
    rm = load_rm("qwen2_vl")
    images = random_images(4, seed=seed_of(gen))
    prompt = "two {image2} cats {prompt}"  # slot markers in user text stay literal
    instruction = "Judge {instruction} only."
    by_hand = (f"{instruction}\nText description: {prompt}\nImage 1: ", "\nImage 2: ",
               "\nIs image 2 better than image 1? Answer yes or no.")
    messages = [{"role": "user", "content": [{"type": "text", "text": by_hand[0]}, {"type": "image"},
                                             {"type": "text", "text": by_hand[1]}, {"type": "image"},
                                             {"type": "text", "text": by_hand[2]}]}]
    ref = plain_logprob(rm, hf_inputs(rm, messages, images[:2]), rm.yes_token_id)
    ours = rm.compare(images1=images[:1], images2=images[1:2], prompts=[prompt], instruction=instruction)
    assert abs(ours[0].double().log().item() - ref) < 1e-5
    assert rm.compare(images1=images[:1], images2=images[1:2], prompts=[prompt], instruction=instruction,
                      template="rewarddance") == ours
    assert DEFAULT is PRESETS["rewarddance"] and rm.template.name == "rewarddance"
    video = DEFAULT.messages("video_pair_condition", "p", "x")[0]["content"]
    assert [c["type"] for c in video] == ["text", "image", "text", "video", "text", "video", "text"]
    assert video[-1]["text"] == "\nIs video 2 better than video 1? Answer yes or no."
    assert video[2]["text"] == "\nVideo 1: " and video[0]["text"] == "x\nText description: p\nConditioning image: "


def custom_template():
    return {"name": "strict-judge",
            "layouts": {"image": [{"role": "system", "content": "You grade images. {\"format\": \"Yes/No\"}"},
                                  {"role": "user", "content": "{instruction}\n{image}\nCaption: {prompt}\nMatch?"}]},
            "answer_words": ["Yes", "No"], "decision_prefix": "\nVerdict: "}


def test_json_template_file_equals_the_object_and_a_hand_rendered_forward(tmp_path, gen):
    rm = load_rm("qwen2_vl")
    path = tmp_path / "judge.json"
    path.write_text(json.dumps(custom_template()))
    images = random_images(2, seed=seed_of(gen))
    prompts = ["a red house", "see <image> and {image}"]
    from_file = rm.score(images=images, prompts=prompts, instruction="quality", template=str(path))
    from_object = rm.score(images=images, prompts=prompts, instruction="quality",
                           template=Template.from_dict(custom_template()))
    assert torch.equal(from_file, from_object)
    yes = rm.tokenizer.encode("Yes", add_special_tokens=False)[0]
    assert rm.answers_for(str(path)).yes_id == yes and load_template(path).name == "strict-judge"
    from rdfast.prompts import INSTRUCTIONS

    for k, (image, prompt) in enumerate(zip(images, prompts)):
        messages = [{"role": "system", "content": [{"type": "text", "text": 'You grade images. {"format": "Yes/No"}'}]},
                    {"role": "user", "content": [{"type": "text", "text": INSTRUCTIONS["quality"] + "\n"},
                                                 {"type": "image"},
                                                 {"type": "text", "text": f"\nCaption: {prompt}\nMatch?"}]}]
        ref = plain_logprob(rm, hf_inputs(rm, messages, [image]), yes)
        assert abs(from_file[k].double().log().item() - ref) < 1e-5


def test_special_tokens_in_user_text_are_still_refused_under_any_template(gen):
    rm = load_rm("qwen2_vl")
    images = random_images(1, seed=seed_of(gen))
    for template in ("vqascore", "visionreward", "rewarddance"):
        with pytest.raises(InputError, match=r"prompts\[0\]: holds '<\|im_end\|>'"):
            rm.score(images=images, prompts=["a cat<|im_end|>"], template=template)


def test_bad_calls_and_bad_templates_are_clear_errors(tmp_path, gen):
    rm = load_rm("qwen2_vl")
    images = random_images(2, seed=seed_of(gen))
    with pytest.raises(InputError, match="template 'vqascore' has no layout for pairs of images"):
        rm.compare(images1=images[:1], images2=images[1:], prompts=["a cat"], template="vqascore")
    with pytest.raises(InputError, match=r"instruction: template 'vqascore' has no \{instruction\} slot"):
        rm.score(images=images[:1], prompts=["a cat"], instruction="quality", template="vqascore")
    with pytest.raises(ValueError, match="neither a preset"):
        rm.score(images=images[:1], prompts=["a cat"], template="vqa_score")
    bad = custom_template()
    bad["layouts"]["image_pair"] = [{"role": "user", "content": "{image2} {image1} {prompt}"}]
    with pytest.raises(ValueError, match=r"'image_pair' must hold the media markers \['\{image1\}', '\{image2\}'\]"):
        Template.from_dict(bad)
    no_prompt = {"name": "x", "layouts": {"image": [{"role": "user", "content": "{image} Good?"}]}}
    with pytest.raises(ValueError, match=r"no \{prompt\} slot"):
        Template.from_dict(no_prompt)
    path = tmp_path / "t.json"
    path.write_text(json.dumps({**custom_template(), "answer_word": "Yes"}))
    with pytest.raises(ValueError, match=r"t.json: unknown fields \['answer_word'\]"):
        load_template(path)
    multi = {**custom_template(), "answer_words": ["yes please", "no"]}
    with pytest.raises(ValueError, match="'yes please' is not a single token"):
        rm.score(images=images[:1], prompts=["a cat"], template=Template.from_dict(multi))


def linked_copy(src, dst):
    os.makedirs(dst)
    for name in os.listdir(src):
        os.symlink(os.path.join(src, name), os.path.join(dst, name))
    return dst


def test_precedence_call_over_from_pretrained_over_trained_config_over_default(tmp_path, gen):
    base = tiny_checkpoint("qwen2_vl")
    trained = linked_copy(base, tmp_path / "trained")
    RewardConfig(answer_words=("yes", "no"), template=PRESETS["visionreward"].to_dict()).save(trained)
    old = linked_copy(base, tmp_path / "old")  # a directory written before templates were recorded
    old_config = {"answer_words": ["Yes", "No"], "version": 3,
                  "template": {"pointwise_question": "Does the {kind} satisfy these criteria well? Answer yes or no."}}
    (old / "rdfast_config.json").write_text(json.dumps(old_config))
    images = random_images(1, seed=seed_of(gen))
    prompts = ["Is the image symmetrical?"]
    default = load_rm("qwen2_vl")
    rm = RewardModel.from_pretrained(trained, device="cpu")
    assert rm.template.name == "visionreward"
    assert torch.equal(rm.score(images=images, prompts=prompts),
                       default.score(images=images, prompts=prompts, template="visionreward"))
    rm = RewardModel.from_pretrained(trained, device="cpu", template="vqascore")
    assert rm.template.name == "vqascore" and rm.answers.yes_word == "Yes"
    assert torch.equal(rm.score(images=images, prompts=prompts, template="rewarddance"),
                       default.score(images=images, prompts=prompts))
    rm = RewardModel.from_pretrained(old, device="cpu", answer_words=("yes", "no"))
    assert rm.template.name == "rewarddance" and rm.answers.yes_word == "yes"
    rm = RewardModel.from_pretrained(old, device="cpu")
    assert rm.template.name == "rewarddance" and rm.answers.yes_word == "Yes"
