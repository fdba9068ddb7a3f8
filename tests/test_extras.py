from __future__ import annotations

import pytest

from cropi.errors import CropiError
from cropi.extras import MissingExtra, require


def test_a_missing_engine_is_one_line_naming_its_extra():
    with pytest.raises(MissingExtra) as info:
        require("cropi_no_such_engine_module", "vllm", "--backend vllm")
    msg = str(info.value)
    assert "\n" not in msg and "cropi[vllm]" in msg and "--backend vllm" in msg
    assert isinstance(info.value, CropiError)  # the CLI prints it as one line and exits 2


def test_an_installed_module_is_returned():
    assert require("json", "x", "y").dumps([1]) == "[1]"
