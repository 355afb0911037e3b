"""FilterConfig, its loader (``configload``), the shipped filter.yaml and the serve flags."""

from __future__ import annotations

import argparse
import dataclasses

import pytest
import yaml

from spamfilter import configload
from spamfilter.cli.serve import add_serve_arguments
from spamfilter.config import FilterConfig
from spamrig import ROOT

SHIPPED = ROOT / "configs" / "filter" / "filter.yaml"


def test_shipped_config_lists_every_key_with_its_default():
    assert set(yaml.safe_load(SHIPPED.read_text())) == {
        field.name for field in dataclasses.fields(FilterConfig)
    }
    loaded = configload.load(FilterConfig, SHIPPED, {"model": "runs/x"})
    assert loaded == FilterConfig(model="runs/x")


def test_bad_settings_name_every_problem():
    with pytest.raises(configload.ConfigError) as error:
        configload.build(FilterConfig, [("f.yaml", {"model": "m", "relay": "nohost", "tag": 2})])
    assert "f.yaml: unknown key 'tag'" in str(error.value)
    with pytest.raises(configload.ConfigError) as error:
        configload.build(FilterConfig, [("f.yaml", {"relay": "x", "tag_threshold": 1.5})])
    for problem in ("'model' is required", "'relay'", "'tag_threshold'"):
        assert problem in str(error.value)


def test_every_setting_has_a_flag_with_help_default_and_environment_variable():
    parser = argparse.ArgumentParser()
    add_serve_arguments(parser)
    flags = {action.dest: action for action in parser._actions}
    for field in dataclasses.fields(FilterConfig):
        text = flags[field.name].help
        assert field.metadata["help"] in text and "default:" in text
        assert f"SPAMFILTER_{field.name.upper()}" in text
    args = parser.parse_args(["--model", "m", "--no-reject", "--allowed-networks", "10.0.0.0/8"])
    assert (args.model, args.reject, args.allowed_networks) == ("m", False, "10.0.0.0/8")
