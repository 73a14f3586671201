"""The one spec syntax of the command lines: ``[NAME=]SPEC`` and ``module:attribute`` plug-ins."""

from __future__ import annotations

import json

import pytest

from spatialscore.specs import SpecError, import_plugin, split_name


def test_split_name_names_a_spec_and_leaves_paths_and_colons_alone():
    assert split_name("ours=spatialscore:runs/export") == ("ours", "spatialscore:runs/export")
    assert split_name(" rule ") == ("rule", "rule")
    assert split_name("spatialscore:/a=b/c") == ("spatialscore:/a=b/c",) * 2  # a name cannot hold ':' or '/'
    for bad in ("", "  ", "x="):
        with pytest.raises(SpecError, match="empty name or spec"):
            split_name(bad)


def test_import_plugin_reads_module_colon_attribute_and_the_deprecated_dotted_form_only_when_asked():
    assert import_plugin("json:JSONDecoder", what="reward") is json.JSONDecoder
    assert import_plugin("json:decoder.JSONDecodeError", what="scorer") is json.decoder.JSONDecodeError
    with pytest.warns(FutureWarning, match="write json:JSONDecoder"):
        assert import_plugin("json.JSONDecoder", what="reward", dotted=True) is json.JSONDecoder
    with pytest.raises(SpecError, match="perturber 'json.JSONDecoder': a plug-in must be module:attribute"):
        import_plugin("json.JSONDecoder", what="perturber")
    with pytest.raises(SpecError, match="cannot import module 'no_such_module_xyz'"):
        import_plugin("no_such_module_xyz:f", what="scorer")
    with pytest.raises(SpecError, match="'json' has no attribute 'Nope'"):
        import_plugin("json:Nope", what="scorer")
    with pytest.raises(SpecError, match="Python identifiers"):
        import_plugin("json:1x", what="scorer")
