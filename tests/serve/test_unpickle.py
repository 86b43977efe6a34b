"""The Flow-GRPO protocol's restricted unpickler: plain data and numeric/string arrays in, every other global out."""
import builtins
import os
import pickle

import numpy as np
import pytest

from rdfast.serve.unpickle import UnsafePickleError, restricted_loads


@pytest.mark.parametrize("protocol", [2, 4, 5])
def test_plain_data_and_arrays_round_trip(protocol):
    rng = np.random.default_rng()
    data = {"images": [rng.bytes(7), b""], "prompts": np.array(["a red fox", "ü"]), "meta": [{"k": (1, 2.5, None, True)}],
            "x": rng.standard_normal((3, 5)).astype(np.float32), "u8": rng.integers(0, 255, (2, 4, 4, 3), dtype=np.uint8),
            "fortran": np.asfortranarray(rng.standard_normal((4, 3))), "scalar": np.float32(rng.standard_normal())}
    out = restricted_loads(pickle.dumps(data, protocol=protocol))
    assert out.keys() == data.keys() and out["images"] == data["images"] and out["meta"] == data["meta"]
    for key in ("prompts", "x", "u8", "fortran"):
        assert out[key].dtype == data[key].dtype and np.array_equal(out[key], data[key])
    assert out["scalar"] == data["scalar"]


class Evil:
    def __init__(self, call, *args):
        self.call, self.args = call, args

    def __reduce__(self):
        return self.call, self.args


@pytest.mark.parametrize("make", [
    lambda path: Evil(os.system, f"touch {path}"),
    lambda path: Evil(builtins.eval, f"open({str(path)!r}, 'w').close()"),
    lambda path: Evil(builtins.exec, f"open({str(path)!r}, 'w').close()"),
    lambda path: {"images": [], "prompts": [Evil(builtins.open, str(path), "w")]},
])
def test_any_other_global_is_refused_before_it_runs(tmp_path, make):
    path = tmp_path / "pwned"
    body = pickle.dumps(make(path))
    assert not path.exists()
    with pytest.raises(UnsafePickleError):
        restricted_loads(body)
    assert not path.exists()


@pytest.mark.parametrize("array", [np.array([1, "a"], dtype=object), np.zeros(2, dtype=[("a", "i4")]),
                                   np.zeros(2, dtype="datetime64[s]")])
def test_object_structured_and_other_dtypes_are_refused(array):
    with pytest.raises(UnsafePickleError):
        restricted_loads(pickle.dumps({"prompts": array}))


def test_array_subclasses_are_refused():
    with pytest.raises(UnsafePickleError):
        restricted_loads(pickle.dumps(np.ma.masked_array([1.0, 2.0])))
