"""TrainConfig: enumerations validated, batching values, JSON-ready."""
import json

import pytest

from rdfast.train import TrainConfig
from rdfast.train.config import BATCHINGS


@pytest.mark.parametrize("field,value", [("paradigm", "listwise"), ("batching", True), ("batching", "packed"),
                                         ("strategy", "zero3"), ("lr_schedule", "step"), ("ties", "drop")])
def test_unknown_values_are_refused(field, value):
    with pytest.raises(ValueError, match=field):
        TrainConfig(**{field: value})


def test_batching_values_and_json_round_trip():
    assert BATCHINGS == ("auto", "length", "varlen", "padded")
    config = TrainConfig(batching="varlen", adam_betas=[0.8, 0.9], lora_targets=["q_proj"])
    assert config.adam_betas == (0.8, 0.9) and config.lora_targets == ("q_proj",)
    assert TrainConfig(**json.loads(json.dumps(config.to_dict()))) == config
