import pytest

from exmodel.config import load_config, parse_overrides, set_path
from exmodel.errors import ConfigError


def write(tmp_path, text):
    p = tmp_path / "cfg.yaml"
    p.write_text(text)
    return p


def test_defaults_and_name_from_file(tmp_path):
    cfg = load_config(write(tmp_path, "scenario: {dataset: mnist}\n"))
    assert cfg.name == "cfg"
    assert cfg.scenario.n_experiences == 5 and cfg.expert.arch == "lenet" and cfg.seeds == [0]


def test_misspelt_nested_key_names_key_and_allowed(tmp_path):
    with pytest.raises(ConfigError, match=r"unknown key 'scenario.n_experience'; allowed: dataset, kind, n_experiences"):
        load_config(write(tmp_path, "scenario: {n_experience: 5}\n"))


def test_misspelt_key_in_list_item(tmp_path):
    with pytest.raises(ConfigError, match=r"unknown key 'strategies.0.parms'; allowed: name, type, params"):
        load_config(write(tmp_path, "strategies: [{name: oracle, parms: {}}]\n"))


def test_bad_value_is_one_line(tmp_path):
    with pytest.raises(ConfigError) as e:
        load_config(write(tmp_path, "scenario: {kind: nx}\n"))
    assert "scenario.kind" in str(e.value) and "\n" not in str(e.value)


def test_overrides_dotted_and_indexed(tmp_path):
    p = write(tmp_path, "strategies: [{name: finetune, params: {epochs: 3}}]\n")
    cfg = load_config(p, ["expert.epochs=2", "strategies.0.params.epochs=1", "seeds=[1, 2]"])
    assert cfg.expert.epochs == 2 and cfg.strategies[0].params == {"epochs": 1} and cfg.seeds == [1, 2]


def test_override_errors():
    with pytest.raises(ConfigError, match="key=value"):
        parse_overrides(["expert.epochs"])
    with pytest.raises(ConfigError, match="--set strategies.3.name: no such entry"):
        load_config(None, ["strategies.3.name=x"], default={"strategies": []})


def test_set_path_creates_nested():
    tree = {}
    set_path(tree, "a.b.c", 1)
    assert tree == {"a": {"b": {"c": 1}}}


def test_missing_and_invalid_yaml(tmp_path):
    with pytest.raises(ConfigError, match="config file not found"):
        load_config(tmp_path / "nope.yaml")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_config(write(tmp_path, "a: [1, 2\n"))
