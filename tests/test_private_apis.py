"""rdfast.private_apis: every private third-party API rdfast relies on exists in the installed versions."""
import argparse
import importlib.util
import inspect
import json.decoder

import pytest

from rdfast.private_apis import PRIVATE_APIS, PrivateAPI, lookup


def _id(row: PrivateAPI) -> str:
    return f"{row.module}:{row.path}"


@pytest.mark.parametrize("row", PRIVATE_APIS, ids=_id)
def test_private_api_exists(row):
    package = row.module.split(".")[0]
    if importlib.util.find_spec(package) is None:
        pytest.skip(f"{package} is not installed")
    lookup(row.module, row.path)  # raises when the installed version no longer has it
    assert row.why.strip()


def test_table_rows_are_unique():
    keys = [(row.module, row.path) for row in PRIVATE_APIS]
    assert len(keys) == len(set(keys))


def test_lookup_forms():
    """Attributes, instance attributes found in a class's source, parameters; a clear error otherwise."""
    assert lookup("inspect", "Parameter.KEYWORD_ONLY") is inspect.Parameter.KEYWORD_ONLY
    assert lookup("json.decoder", "JSONDecoder.parse_object") is json.decoder.JSONDecoder  # set in __init__
    assert lookup("argparse", "ArgumentParser.prog") is argparse.ArgumentParser            # set in __init__
    assert lookup("inspect", "signature.follow_wrapped").name == "follow_wrapped"          # a parameter
    with pytest.raises(AttributeError, match="no_such_thing"):
        lookup("inspect", "Parameter.no_such_thing")
    with pytest.raises(AttributeError, match="not found"):
        lookup("inspect", "no_such_module_attr.x")
