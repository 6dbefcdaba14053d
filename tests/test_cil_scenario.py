"""The class-incremental scenario: protocols, class orders and the errors of bad configs."""

import numpy as np
import pytest

from exmodel.config import load_config
from exmodel.errors import ConfigError
from exmodel.scenarios import CILProtocol, build_stream
from exmodel.scenarios.cil import cil_groups, class_order
from tests.test_scenarios import toy


def test_half_base_puts_half_the_classes_first_then_equal_tasks():
    s = build_stream(toy(), "cil", 1, seed=0, shuffle_classes=False, cil=CILProtocol("half_base", 5))
    assert s.kind == "cil" and not s.multi_task
    assert [e.classes for e in s] == [(0, 1, 2, 3, 4), (5,), (6,), (7,), (8,), (9,)]
    for e in s:  # each task sees only its own classes' training data
        assert set(e.train.labels.tolist()) == set(e.classes) == set(e.test.labels.tolist())


def test_from_scratch_and_an_explicit_base():
    order = list(range(10))
    assert cil_groups(10, CILProtocol("from_scratch", 5), order) == [[0, 1], [2, 3], [4, 5], [6, 7], [8, 9]]
    assert cil_groups(10, CILProtocol("half_base", 2, base_classes=6), order) == [[0, 1, 2, 3, 4, 5], [6, 7], [8, 9]]
    assert cil_groups(10, CILProtocol(class_groups=[[3], [1, 2]]), order) == [[3], [1, 2]]


def test_class_order_seed_is_numpys_permutation_for_every_run_seed():
    np.random.seed(1993)  # how iCaRL's and PyCIL's code draw the CIFAR-100 order
    expected = np.random.permutation(100).tolist()
    assert class_order(100, None, 1993, run_seed=0, shuffle=True) == expected
    assert class_order(100, None, 1993, run_seed=7, shuffle=True) == expected
    a = build_stream(toy(), "cil", 1, seed=0, class_order_seed=5, cil=CILProtocol("from_scratch", 5))
    b = build_stream(toy(), "cil", 1, seed=3, class_order_seed=5, cil=CILProtocol("from_scratch", 5))
    assert [e.classes for e in a] == [e.classes for e in b]
    assert [c for e in a for c in e.classes] == np.random.RandomState(5).permutation(10).tolist()


@pytest.mark.parametrize("spec, message", [
    (CILProtocol("half_base", 5, base_classes=12), "base_classes must leave classes for the tasks: between 1 and 9"),
    (CILProtocol("half_base", 5, base_classes=10), "between 1 and 9 for 10 classes, got 10"),
    (CILProtocol("from_scratch", 0), "scenario.n_tasks must be ≥ 1"),
    (CILProtocol("half_base", None), "scenario.n_tasks must be ≥ 1"),
    (CILProtocol("from_scratch", 3), "10 classes cannot be split into 3 equal tasks"),
    (CILProtocol("half_base", 3), "the 5 classes after a base of 5 cannot be split into 3 equal tasks"),
    (CILProtocol(class_groups=[[0, 1], [1, 2]]), "class 1 is in task 0 and task 1"),
    (CILProtocol(class_groups=[[0, 0]]), "class 0 is in task 0 twice"),
    (CILProtocol(class_groups=[[0, 10]]), "class 10 of task 0 is not among the dataset's 10 classes"),
    (CILProtocol(class_groups=[[0], []]), "each with at least one class"),
    (CILProtocol(), "needs scenario.protocol (half_base or from_scratch) or scenario.class_groups"),
    (CILProtocol("from_scratch", 5, base_classes=2), "base_classes applies to protocol 'half_base' only"),
])
def test_bad_protocols_get_one_clear_line(spec, message):
    with pytest.raises(ConfigError, match=message.replace("(", r"\(").replace(")", r"\)")):
        build_stream(toy(), "cil", 1, seed=0, cil=spec)


def test_cil_keys_on_another_kind_are_refused():
    with pytest.raises(ConfigError, match="apply to kind 'cil' only, not 'nc'"):
        build_stream(toy(), "nc", 5, seed=0, cil=CILProtocol("half_base", 5))


def test_the_config_schema_takes_the_protocol(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("scenario: {kind: cil, protocol: half_base, n_tasks: 5, class_order_seed: 1993}\n")
    sc = load_config(path).scenario
    assert (sc.kind, sc.protocol, sc.n_tasks, sc.class_order_seed) == ("cil", "half_base", 5, 1993)
    path.write_text("scenario: {kind: cil, protocol: half}\n")
    with pytest.raises(ConfigError, match="scenario.protocol"):
        load_config(path)
