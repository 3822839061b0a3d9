from __future__ import annotations

import pytest
from pydantic import ValidationError

from matteforge.config import BuildConfig, load_config, packaged_config_path


def test_packaged_configs_load_and_validate():
    for name in ("demo", "comp1k"):
        assert packaged_config_path(name).exists()
        assert isinstance(load_config(name), BuildConfig)
    assert load_config("comp1k").composite.per_foreground_train == 100


def test_a_folder_named_like_a_packaged_config_does_not_hide_it(tmp_path, monkeypatch):
    """`matteforge demo --data demo` leaves a folder "demo"; `--config demo` there failed with
    "[Errno 21] Is a directory"."""
    monkeypatch.chdir(tmp_path)
    (tmp_path / "demo").mkdir()
    assert load_config("demo") == load_config(packaged_config_path("demo"))
    (tmp_path / "mine").mkdir()
    with pytest.raises(ValueError, match="config mine is a folder, not a YAML file"):
        load_config("mine")
    (tmp_path / "comp1k").write_text("name: local\n")  # a file of that name is still read
    assert load_config("comp1k").name == "local"


def test_overrides_apply_by_dotted_key_and_none_is_ignored(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("run:\n  shard_size: 8\ntrimap:\n  width: 4\n")
    cfg = load_config(path, **{"run.shard_size": 3, "trimap.width": None, "output": "/x"})
    assert cfg.run.shard_size == 3 and cfg.trimap.width == 4 and cfg.output == "/x"


def test_unknown_keys_and_bad_values_are_refused(tmp_path):
    with pytest.raises(ValidationError):
        load_config({"trimap": {"widht": 3}})
    with pytest.raises(ValidationError):
        load_config({"trimap": {"kernel_shape": "hexagon"}})
    bad = tmp_path / "list.yaml"
    bad.write_text("- 1\n- 2\n")
    with pytest.raises(ValueError, match="mapping"):
        load_config(bad)
    with pytest.raises(FileNotFoundError):
        load_config(tmp_path / "missing.yaml")


def test_config_hash_tracks_outputs_not_locations_or_run_settings():
    base = load_config("demo")
    assert base.config_hash() == load_config("demo", output="/elsewhere").config_hash()
    assert base.config_hash() == load_config("demo", **{"run.shard_size": 7}).config_hash()
    assert base.config_hash() != load_config("demo", **{"trimap.width": 9}).config_hash()
    assert base.config_hash() != load_config("demo", seed=1).config_hash()


def test_yaml_is_loaded_safely(tmp_path):
    evil = tmp_path / "evil.yaml"
    evil.write_text("name: !!python/object/apply:os.system ['echo pwned']\n")
    with pytest.raises(Exception, match=r"constructor|could not determine"):
        load_config(evil)


def test_rvm_recipe_settings_are_rvm_only_and_shape_the_hash():
    default = load_config({})
    assert default.segment.model == ["rvm", "modnet@384"] and default.segment.passes is None
    one_pass = load_config({"segment": {"passes": 1, "size": 384}})
    assert (one_pass.segment.passes, one_pass.segment.size) == (1, 384)
    assert default.config_hash() != one_pass.config_hash()
    with pytest.raises(ValidationError, match="rvm model only"):
        load_config("demo", **{"segment.passes": 2, "segment.model": "modnet"})
    with pytest.raises(ValidationError):
        load_config({"segment": {"passes": 0}})
    with pytest.raises(ValidationError):
        load_config({"segment": {"size": [384, 9000]}})
