"""The exported directory: rdfast_config.json is a RewardConfig built by the export, and loads back."""
import dataclasses
import json

from rdfast import RewardModel
from rdfast.reward_config import RewardConfig
from rdfast.testing import tiny_checkpoint
from rdfast.train import TrainConfig
from rdfast.train.export import reward_config, save_model


def test_export_writes_a_reward_config_that_loads_back(tmp_path):
    base = str(tiny_checkpoint("qwen2_vl"))
    rm = RewardModel.from_pretrained(base, device="cpu")
    rm.num_frames = 4
    config = TrainConfig(paradigm="pointwise", finetune="full", instruction="quality", normalize="yes_no",
                         cot_format="reasons_first")
    save_model(tmp_path / "out", rm, config, base)
    written = RewardConfig.load(tmp_path / "out")
    assert written == reward_config(rm, config)
    on_disk = json.loads((tmp_path / "out" / "rdfast_config.json").read_text())
    assert json.loads(json.dumps(dataclasses.asdict(written))) == on_disk
    assert (written.paradigm, written.finetune, written.instruction, written.normalize, written.cot_format) == \
        ("pointwise", "full", "quality", "yes_no", "reasons_first")
    assert written.base_model is None and written.num_frames == 4 and written.fps is None
    assert (written.yes_token_id, written.no_token_id) == (rm.yes_token_id, rm.no_token_id)
    again = RewardModel.from_pretrained(tmp_path / "out", device="cpu")  # scores as recorded
    assert (again.instruction, again.normalize, again.num_frames) == ("quality", "yes_no", 4)
    assert on_disk["template"]["name"] == "rewarddance" and again.template == rm.template  # the whole layout
    assert reward_config(rm, config, base_model=base).base_model == base
