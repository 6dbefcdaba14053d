"""State-dict checkpoints: safetensors without opt-in, key maps, every mismatch listed, the user's own module."""

from __future__ import annotations

import json
import textwrap

import safetensors.torch
import torch
from torch import nn

from exmodel.cli import main
from exmodel.experts.bundle import load_bundle


class UserMLP(nn.Module):  # written the way users name things, not the way exmodel's mlp does
    def __init__(self) -> None:
        super().__init__()
        self.fc1, self.out = nn.Linear(784, 32), nn.Linear(32, 5)

    def forward(self, x):
        return self.out(torch.relu(self.fc1(x.flatten(1))))


def _card(tmp_path, capsys):
    assert main(["card-template", "--arch", "mlp"]) == 0
    fields = json.loads(capsys.readouterr().out)
    fields["arch_kwargs"].update(num_classes=5, hidden=[32])
    fields.update(class_ids=[0, 1, 2, 3, 4], class_names=list("01234"), trained_class_ids=[0, 1, 2, 3, 4])
    path = tmp_path / "card.json"
    path.write_text(json.dumps(fields))
    return path


def test_safetensors_checkpoint_with_key_map(tmp_path, capsys):
    torch.manual_seed(0)
    user = UserMLP().eval()
    ckpt = tmp_path / "user.safetensors"
    safetensors.torch.save_file(user.state_dict(), str(ckpt))
    card = _card(tmp_path, capsys)
    # Without a key map: one line listing what the architecture needs and what the file has.
    assert main(["import-checkpoint", str(ckpt), "--card", str(card), "-o", str(tmp_path / "a")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1
    assert "arch 'mlp' needs hidden.0.0.weight (32, 784), hidden.0.0.bias (32,), head.weight (5, 32)" in err[0]
    assert "the checkpoint has fc1.bias (32,), fc1.weight (32, 784), out.bias (5,), out.weight (5, 32)" in err[0]
    assert "--rename" in err[0] and not (tmp_path / "a").exists()
    # With one: no --allow-pickle-checkpoint needed for safetensors; same logits as the user's module.
    assert main(["import-checkpoint", str(ckpt), "--card", str(card), "-o", str(tmp_path / "a"),
                 "--rename", "fc1.=hidden.0.0.", "--rename", "out.=head."]) == 0
    x = torch.rand(6, 1, 28, 28)
    with torch.no_grad():
        assert torch.equal(load_bundle(tmp_path / "a")(x), user((x - 0.1307) / 0.3081))  # the template's norm


def test_users_own_module_through_a_factory(tmp_path, capsys):
    source = tmp_path / "mymodels.py"
    source.write_text(textwrap.dedent("""
        import torch
        from torch import nn

        class Net(nn.Module):
            def __init__(self):
                super().__init__()
                self.conv = nn.Conv2d(1, 4, 3)
                self.bn = nn.BatchNorm2d(4)
                self.fc = nn.Linear(4 * 13 * 13, 3)

            def forward(self, x):
                x = torch.max_pool2d(torch.relu(self.bn(self.conv(x))), 2)
                return self.fc(x.flatten(1))

        def make():
            return Net()
    """))
    import importlib.util

    spec = importlib.util.spec_from_file_location("mymodels", source)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    torch.manual_seed(1)
    net = mod.make().eval()
    net.bn.running_mean.uniform_(-1, 1)
    torch.save({"state_dict": net.state_dict()}, tmp_path / "net.pt")
    out = tmp_path / "bundle"
    assert main(["import-checkpoint", str(tmp_path / "net.pt"), "--factory", f"{source}:make",
                 "--classes", "3,7,9", "--dataset", "mnist", "--mean", "0.1307", "--std", "0.3081",
                 "--input-shape", "1,28,28", "-o", str(out)]) == 2  # a pickle needs the opt-in
    assert "--allow-pickle-checkpoint" in capsys.readouterr().err
    assert main(["import-checkpoint", str(tmp_path / "net.pt"), "--factory", f"{source}:make",
                 "--allow-pickle-checkpoint", "--classes", "3,7,9", "--dataset", "mnist", "--mean", "0.1307",
                 "--std", "0.3081", "--input-shape", "1,28,28", "-o", str(out)]) == 0
    expert = load_bundle(out)  # a program: loads without mymodels.py
    assert expert.card.arch == "program" and expert.card.class_names == ["3", "7", "9"]
    x = torch.rand(5, 1, 28, 28)
    with torch.no_grad():
        assert torch.equal(expert(x), net((x - 0.1307) / 0.3081))
    assert len(expert.net.bn_layers()) == 1


def test_factory_errors_are_one_line(tmp_path, capsys):
    torch.save(UserMLP().state_dict(), tmp_path / "m.pt")
    for spec, expected in (("nocolon", "expects package.module:function"),
                           ("no_such_pkg_xyz:make", "No module named 'no_such_pkg_xyz'"),
                           ("json:dumps", "failed: TypeError: dumps() missing"),
                           ("json:JSONDecoder", "returned JSONDecoder, not a torch.nn.Module")):
        code = main(["import-checkpoint", str(tmp_path / "m.pt"), "--factory", spec, "--allow-pickle-checkpoint",
                     "-o", str(tmp_path / "b")])
        err = capsys.readouterr().err.strip().splitlines()
        assert code == 2 and len(err) == 1 and expected in err[0], err
