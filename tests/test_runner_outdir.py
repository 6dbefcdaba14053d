import pytest
import yaml

from exmodel.config import load_config
from exmodel.errors import ExmodelError
from exmodel.runner import _check_out_dir


def test_out_dir_accepts_older_config_without_new_default_keys(tmp_path):
    cfg = load_config(None, default={"name": "x", "strategies": [{"name": "oracle"}]})
    old = cfg.model_dump()
    del old["scenario"]["validation_fraction"]  # written before that key existed
    (tmp_path / "config.yaml").write_text(yaml.safe_dump(old))
    _check_out_dir(tmp_path, cfg)
    assert "validation_fraction" in (tmp_path / "config.yaml").read_text()


def test_out_dir_refuses_a_different_config(tmp_path):
    cfg = load_config(None, default={"name": "x", "strategies": [{"name": "oracle"}]})
    _check_out_dir(tmp_path, cfg)
    other = load_config(None, default={"name": "x", "strategies": [{"name": "oracle", "params": {"a": 1}}]})
    with pytest.raises(ExmodelError, match="holds a run of a different config"):
        _check_out_dir(tmp_path, other)


def test_a_run_gains_seeds(tmp_path):
    cfg = load_config(None, default={"name": "x", "strategies": [{"name": "oracle"}], "seeds": [0]})
    _check_out_dir(tmp_path, cfg)
    more = load_config(None, default={"name": "x", "strategies": [{"name": "oracle"}], "seeds": [0, 1, 2]})
    _check_out_dir(tmp_path, more)
    assert yaml.safe_load((tmp_path / "config.yaml").read_text())["seeds"] == [0, 1, 2]
