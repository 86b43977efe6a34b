"""Preference data from generator samples (toyworld.preference): labels follow the oracle's readings, sources and
attribute counts are recorded, no OOD combination reaches training, a seed fixes everything, save/load round-trips,
and the reward-model stages train on it. Checks read images with the oracle, not the builder's own labels."""
import json
import os

import numpy as np
import pytest

from rdfast import toyworld as tw
from rdfast.toyworld import preference as pref
from rdfast.toyworld import reward_models as trm
from rdfast.toyworld.oracle import Reading


def oracle_right(image, prompt):
    reading = tw.read(np.asarray(image))
    return reading.attributes_right(prompt) if reading.readable else 0


def test_hand_made_readings_are_labelled_as_the_paper_labels_them():
    prompt = tw.Prompt.parse("two blue squares")
    readings = [Reading(2, "blue", "square"),   # 0: aligned, 3 right
                Reading(1, "blue", "square"),   # 1: count wrong, 2 right
                Reading(2, "red", "circle"),    # 2: 1 right
                Reading(0, None, None),         # 3: nothing there: 0 right
                Reading(2, "blue", None),       # 4: shapes disagree: unreadable, 0 right despite count and colour
                Reading(3, "blue", "square")]   # 5: 2 right, ties with 1
    right = [pref.attributes_right(r, prompt) for r in readings]
    assert right == [3, 2, 1, 0, 0, 2]
    pairs = pref.candidate_pairs(right)
    assert set(pairs["aligned"]) == {(0, 1), (0, 2), (0, 3), (0, 4), (0, 5)}
    assert set(pairs["graded"]) == {(1, 2), (1, 3), (1, 4), (5, 2), (5, 3), (5, 4), (2, 3), (2, 4)}  # ties dropped
    assert pref.shows_ood(Reading(1, "red", "triangle")) and not pref.shows_ood(Reading(1, "red", "circle"))


def test_pick_pairs_takes_distinct_pairs_in_turn_and_stops_when_out():
    groups = [pref.candidate_pairs([3, 0, 1]), pref.candidate_pairs([3, 3]), pref.candidate_pairs([2, 1, 0])]
    picks = pref.pick_pairs(groups, 100, graded=0.5, rng=np.random.default_rng(0))
    assert len(picks) == len(set(picks)) == 3 + 0 + 3  # every untied pair once, no more
    only_aligned = pref.pick_pairs(groups, 2, graded=0.0, rng=np.random.default_rng(1))
    assert [(g, k) for g, k, _, _ in only_aligned] == [(0, "aligned"), (2, "graded")]  # prompt 2 has no aligned


def fake_sample(pipe, texts, seeds, steps, batch, log, desc):
    """Stand-in for the generator: per row an aligned, 1-wrong, 2-wrong, blank or OOD-combination render."""
    out = []
    for text, seed in zip(texts, seeds):
        prompt, kind = tw.Prompt.parse(text), seed % 5
        if kind == 0:
            out.append(tw.render(prompt, seed))
        elif kind in (1, 2):
            out.append(tw.render(tw.misaligned_prompt(prompt, seed, ("count", "shape")[:kind]), seed))
        elif kind == 3:
            out.append(np.full((64, 64, 3), 255, np.uint8))
        else:
            out.append(tw.render(prompt.replace(colour="blue", shape="circle"), seed))  # an OOD combination
    return np.stack(out)


@pytest.fixture
def fake_data(monkeypatch):
    monkeypatch.setattr(pref, "_sample", fake_sample)
    return pref.build(object(), 120, 30, seed=5, log=None, samples_per_prompt=6, test_samples_per_prompt=4,
                      ood_samples_per_prompt=4, n_test_pairs=24)


def test_pairs_follow_the_oracle_and_record_their_source(fake_data):
    data = fake_data
    assert data.info["generator_pairs"] == 120 and data.info["renderer_pairs"] == 30
    assert data.info["dropped_ood_readings"] > 0
    sources = [r.extra["source"] for r in data.train]
    assert sources.count("generator") == 120 and sources.count("renderer") == 30
    assert {r.extra["source"] for r in data.test_generator + data.test_generator_ood} == {"generator"}
    assert data.test_generator_ood and all(tw.Prompt.parse(r.prompt).ood for r in data.test_generator_ood)
    for rec in data.train + data.test_generator + data.test_generator_ood:
        prompt = tw.Prompt.parse(rec.prompt)
        right = [oracle_right(rec.image1, prompt), oracle_right(rec.image2, prompt)]
        assert rec.extra["right"] == right, rec.extra
        won, lost = (right[1], right[0]) if rec.label == 2 else (right[0], right[1])
        assert won > lost  # aligned beats misaligned, more right beats fewer, never a tie
        assert rec.extra["kind"] == ("aligned" if won == 3 else "graded")
        assert rec.extra["split"] == ("ood" if prompt.ood else "in_domain")
        if not prompt.ood:  # no OOD prompt or OOD combination shown in training or in-domain test pairs
            assert not any(pref.shows_ood(tw.read(np.asarray(image))) for image in (rec.image1, rec.image2))
    assert {r.extra["kind"] for r in data.train if r.extra["source"] == "generator"} == {"aligned", "graded"}
    train_seeds = {s for r in data.train if r.extra["source"] == "generator" for s in r.extra["seeds"]}
    test_seeds = {s for r in data.test_generator + data.test_generator_ood for s in r.extra["seeds"]}
    assert train_seeds and test_seeds and not train_seeds & test_seeds


def test_save_load_round_trip(fake_data, tmp_path):
    folder = pref.save(fake_data, tmp_path / "pd")
    assert sorted(os.listdir(folder)) == ["images.safetensors", "pairs.json"]
    back = pref.load(folder)
    assert back.info == fake_data.info and back.digest() == fake_data.digest()
    assert len(back.test_generator_ood) == len(fake_data.test_generator_ood) > 0
    for a, b in zip(fake_data.train + fake_data.test_generator + fake_data.test_generator_ood,
                    back.train + back.test_generator + back.test_generator_ood):
        assert (a.prompt, a.label, a.instruction, a.extra) == (b.prompt, b.label, b.instruction, b.extra)
        assert np.array_equal(np.asarray(a.image1), np.asarray(b.image1))
        assert np.array_equal(np.asarray(a.image2), np.asarray(b.image2))
    with pytest.raises(FileNotFoundError, match="pairs.json"):
        pref.load(tmp_path)


def test_bad_arguments_are_named():
    with pytest.raises(ValueError, match="n_generator_pairs"):
        pref.build(object(), -1, 0, log=None)
    with pytest.raises(ValueError, match="graded"):
        pref.build(object(), 1, 0, log=None, graded=2.0)


def test_the_generator_data_is_fixed_by_its_seed():
    from rdfast.diffusion.pipelines import load_pipeline

    pipe = load_pipeline("toy:generator", device="cpu")
    kwargs = dict(log=None, samples_per_prompt=2, test_samples_per_prompt=1, ood_samples_per_prompt=1, n_test_pairs=4,
                  steps=1)
    first, again, other = (pref.build(pipe, 10, 2, seed=s, **kwargs) for s in (3, 3, 4))
    assert np.array_equal(first.images, again.images) and first.digest() == again.digest()
    assert first.images.shape == (27 * 3 + 9, 64, 64, 3) and not np.array_equal(first.images, other.images)


def test_reward_model_stages_train_on_preference_data(fake_data, tmp_path):
    out = tmp_path / "rm"
    budget = dict(trm.BUDGETS["smoke"], test_pairs=6)
    results = trm.run(out, ["small"], ["pairwise", "pointwise"], budget, log=None, preference=fake_data)
    assert [r["paradigm"] for r in results] == ["pairwise", "pointwise"]
    for r in results:  # renders in-domain and OOD, held-out generator pairs: each reported apart
        assert {"id_acc", "ood_acc", "generator_acc", "generator_ood_acc"} <= set(r)
        assert 0.0 <= r["generator_acc"] <= 1.0 and 0.0 <= r["generator_ood_acc"] <= 1.0
    assert {"generator_auc", "generator_ood_auc"} <= set(results[1])
    spec = json.loads((out / "data.json").read_text())
    assert spec["train_sources"] == {"generator": 120, "renderer": 30}
    assert spec["preference"]["digest"] == fake_data.digest()
    assert trm.run(out, ["small"], ["pairwise"], budget, log=None, preference=fake_data) == results[:1]  # cached
    fake_data.train.pop()
    with pytest.raises(ValueError, match="other preference data"):
        trm.run(out, ["small"], ["pairwise"], budget, log=None, preference=fake_data)
