"""The commands for experts users bring: ``import`` (a ``torch.export`` file into a bundle),
``card-template`` (the card of a state-dict import) and ``consolidate``. Thin: each parses, calls the
Python API (:mod:`exmodel.experts.imports`, :mod:`exmodel.consolidation`) and prints."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Optional

import typer
from typer.core import TyperCommand

from exmodel.cli import _progress, app, out_console
from exmodel.errors import ExmodelError
from exmodel.text import printable


def _ints(text: Optional[str], what: str) -> Optional[list[int]]:
    """``0,1,2`` or ``0-4`` (or a mix: ``0-2,7``) -> a list of ints."""
    if text is None:
        return None
    out: list[int] = []
    try:
        for part in (p.strip() for p in text.split(",") if p.strip()):
            lo, _, hi = part.partition("-")
            out.extend(range(int(lo), int(hi) + 1) if hi else [int(lo)])
    except ValueError:
        raise ExmodelError(f"{what} expects integers such as 0,1,2 or 0-4, got '{text}'") from None
    return out


def _floats(text: Optional[str], what: str) -> Optional[list[float]]:
    if text is None:
        return None
    try:
        return [float(v) for v in text.split(",") if v.strip()]
    except ValueError:
        raise ExmodelError(f"{what} expects numbers separated by commas, got '{text}'") from None


# The options that describe a model to its card, shared by `import` and `import-checkpoint --factory`.
_CLASSES = typer.Option(None, "--classes", help="Global class id of each output unit, e.g. 0-4 or 5,6,7,8,9 "
                        "(default 0, 1, ...).")
_DATASET = typer.Option(None, "--dataset", help="Known dataset whose class names and count apply (mnist, "
                        "fashion_mnist, cifar10, ...).")
_NAMES = typer.Option(None, "--class-names", help="Comma-separated names, one per class.")
_NUM = typer.Option(None, "--num-classes", help="Size of the global label space.")
_TRAINED = typer.Option(None, "--trained-classes", help="Classes it was trained on (default: all of --classes).")
_MEAN = typer.Option(None, "--mean", help="Per-channel input mean it was trained with, e.g. 0.1307 (default 0).")
_STD = typer.Option(None, "--std", help="Per-channel input std, e.g. 0.3081 (default 1).")
_SHAPE = typer.Option(None, "--input-shape", help="C,H,W (default: from the program).")
_NAME = typer.Option(None, "--name", help="Expert name (default: the file name).")


def _card_options(classes, dataset, class_names, num_classes, trained_classes, mean, std, input_shape) -> dict:
    return {"classes": _ints(classes, "--classes"), "dataset": dataset,
            "class_names": [n.strip() for n in class_names.split(",")] if class_names else None,
            "num_classes": num_classes, "trained_classes": _ints(trained_classes, "--trained-classes"),
            "mean": _floats(mean, "--mean"), "std": _floats(std, "--std"),
            "input_shape": _ints(input_shape, "--input-shape")}


def _written(out: Path, expert) -> None:  # noqa: ANN001
    c = expert.card
    out_console.print(f"bundle written: {out} ({c.arch}: {expert.net.extra_repr() or 'registered'}; classes "
                      f"{c.class_ids} of {c.num_global_classes}; normalization mean {c.normalization.mean} std "
                      f"{c.normalization.std})", markup=False, highlight=False)


@app.command("import")
def import_program_cmd(
        program: Path = typer.Argument(..., help="A torch.export file (.pt2)."),
        out: Path = typer.Option(..., "-o", "--out", help="Bundle folder to write."),
        classes: Optional[str] = _CLASSES, dataset: Optional[str] = _DATASET, class_names: Optional[str] = _NAMES,
        num_classes: Optional[int] = _NUM, trained_classes: Optional[str] = _TRAINED, mean: Optional[str] = _MEAN,
        std: Optional[str] = _STD, input_shape: Optional[str] = _SHAPE, name: Optional[str] = _NAME,
) -> None:
    """Import a torch.export program of any architecture as a validated bundle; nothing in it is unpickled or run."""
    from exmodel.experts.bundle import check_target, save_bundle
    from exmodel.experts.imports import import_program

    check_target(out)
    expert = import_program(program, name=name, **_card_options(classes, dataset, class_names, num_classes,
                                                                 trained_classes, mean, std, input_shape))
    save_bundle(expert, out)
    _written(out, expert)


@app.command("import-checkpoint")
def import_checkpoint_cmd(
        checkpoint: Path = typer.Argument(..., help="A state dict: safetensors, or a torch.save file."),
        out: Path = typer.Option(..., "-o", "--out", help="Bundle folder to write."),
        card: Optional[Path] = typer.Option(None, "--card", help="JSON card fields for a registered architecture "
                                            "(`exmodel card-template` prints one)."),
        factory: Optional[str] = typer.Option(None, "--factory", help="Your own model: package.module:function or "
                                              "file.py:function returning the nn.Module (your code, run here); "
                                              "the bundle is then a torch.export program that needs no code."),
        rename: list[str] = typer.Option([], "--rename", help="Map key prefixes, OLD=NEW (repeatable), "
                                         "e.g. 'fc1.=hidden.0.0.'."),
        rename_file: Optional[Path] = typer.Option(None, "--rename-file", help="JSON object {old prefix: new prefix}."),
        allow_pickle_checkpoint: bool = typer.Option(False, "--allow-pickle-checkpoint",
                                                     help="Allow reading a torch.save pickle (weights_only)."),
        classes: Optional[str] = _CLASSES, dataset: Optional[str] = _DATASET, class_names: Optional[str] = _NAMES,
        num_classes: Optional[int] = _NUM, trained_classes: Optional[str] = _TRAINED, mean: Optional[str] = _MEAN,
        std: Optional[str] = _STD, input_shape: Optional[str] = _SHAPE, name: Optional[str] = _NAME,
) -> None:
    """Convert a state-dict checkpoint into a validated bundle: a registered architecture (--card) or your own
    module (--factory, with the card options of `exmodel import`)."""
    from exmodel.experts.bundle import check_target, save_bundle
    from exmodel.experts.checkpoint import import_checkpoint, import_with_factory, parse_renames

    if (card is None) == (factory is None):
        raise ExmodelError("give either --card (a registered architecture) or --factory (your own module)")
    renames = parse_renames(rename)
    if rename_file is not None:
        try:
            mapping = json.loads(rename_file.read_text())
            assert isinstance(mapping, dict) and all(isinstance(v, str) for v in mapping.values())
        except (OSError, ValueError, AssertionError):
            raise ExmodelError(f"{rename_file}: expected a JSON object of prefix -> prefix") from None
        renames += list(mapping.items())
    check_target(out)
    if card is not None:
        try:
            fields = json.loads(card.read_text())
        except (OSError, json.JSONDecodeError) as e:
            raise ExmodelError(f"{card}: cannot read card fields ({e})") from None
        expert = import_checkpoint(checkpoint, fields, allow_pickle=allow_pickle_checkpoint, renames=renames)
    else:
        expert = import_with_factory(checkpoint, factory, allow_pickle=allow_pickle_checkpoint, renames=renames,
                                     name=name, **_card_options(classes, dataset, class_names, num_classes,
                                                                trained_classes, mean, std, input_shape))
    save_bundle(expert, out)
    _written(out, expert)


def _consolidate_help() -> str:
    from exmodel.consolidation import SOURCES
    from exmodel.models import list_models

    return ("Distil experts (bundles, in stream order) into one model of the chosen architecture, without their "
            f"data.\n\nArchitectures (--arch): {', '.join(list_models())}.\n\nKnowledge sources (--source): "
            f"auto, {', '.join(SOURCES)} (auto, the default: pool when some expert has no BatchNorm statistics and all "
            "take one-channel images, else inversion; inversion: our generator inversion, which matches BatchNorm statistics for "
            "experts that have them and uses a prior that needs none for those that do not; pool: all experts "
            "label one auxiliary pool, printed characters drawn on the fly by default (--set pool=NAME for "
            "another), and each image is learnt from the expert most sure of it).\n\nBudget: "
            "--budget scales distillation iterations and generator steps together; --iterations and "
            "--generator-steps set them. After the run each expert's agreement with the result is printed; an "
            "expert below --min-agreement gets a warning, also recorded in the card.")


class _LazyHelp(TyperCommand):
    """Builds the help text only when help is shown (listing architectures imports torch)."""

    def get_help(self, ctx):  # noqa: ANN001, ANN201
        self.help = _consolidate_help()
        return super().get_help(ctx)


@app.command(cls=_LazyHelp, short_help="Distil expert bundles into one model of the chosen architecture, without their data.")
def consolidate(bundles: list[Path] = typer.Argument(..., help="Expert bundles, in stream order."),
                out: Path = typer.Option(..., "-o", "--out", help="Bundle folder to write the consolidated model to."),
                source: str = typer.Option("auto", "--source", help="auto | inversion | pool | impression | auxiliary | "
                                                                   "noise (auto: from what the experts contain)"),
                arch: str = typer.Option("lenet_bn", "--arch", help="Architecture of the consolidated model."),
                budget: Optional[float] = typer.Option(None, "--budget", help="Scale iterations and generator steps, "
                                                       "e.g. 0.5 for half the time."),
                iterations: Optional[int] = typer.Option(None, "--iterations", min=1,
                                                         help="Distillation iterations per expert (default 1000)."),
                generator_steps: Optional[int] = typer.Option(None, "--generator-steps", min=1,
                                                              help="Generator (or pixel) optimisation steps per expert."),
                min_agreement: float = typer.Option(0.8, "--min-agreement", min=0.0, max=1.0,
                                                    help="Warn about experts the result agrees with less often."),
                borrow: bool = typer.Option(True, "--borrow-statistics/--no-borrow-statistics",
                                            help="Invert experts without BatchNorm with their peers' BN statistics."),
                seed: int = typer.Option(0, "--seed"),
                device: str = typer.Option("cpu", "--device"),
                data_dir: Optional[Path] = typer.Option(None, "--data-dir", help="For auxiliary data."),
                overrides: list[str] = typer.Option([], "--set", help="ED parameter: key=value (e.g. buffer_size=1000)."),
                ) -> None:
    from exmodel.config import parse_overrides
    from exmodel.consolidation import AUTO, SOURCES, budget_params, choose_source
    from exmodel.consolidation import consolidate as run_consolidate

    if source != AUTO and source not in SOURCES:
        raise ExmodelError(f"unknown source '{source}'; available: {', '.join([AUTO, *SOURCES])}")
    from exmodel.devices import check_device

    check_device(device)
    if source == AUTO:  # the budget options depend on the method, so the experts are read first
        from exmodel.experts.bundle import check_target, load_bundle

        check_target(out)  # an existing non-bundle is refused before any work
        bundles = [load_bundle(b) for b in bundles]
        source, reason = choose_source(bundles)
        out_console.print(f"source: {source} ({reason})", markup=False, highlight=False)
    else:
        reason = None
    try:
        params = budget_params(dict(parse_overrides(overrides)), iterations=iterations,
                               generator_steps=generator_steps, budget=budget, strategy=SOURCES[source])
    except ExmodelError as err:
        if reason is None:
            raise
        raise type(err)(f"{err}; source '{source}' was chosen because {reason} (pass --source to choose)") from None
    import warnings

    with _progress() as progress, warnings.catch_warnings():
        warnings.simplefilter("ignore")  # printed below from the card
        result = run_consolidate(bundles, out, source=source, arch=arch, params=params, seed=seed, device=device,
                                 data_dir=str(data_dir) if data_dir else None, min_agreement=min_agreement,
                                 borrow=borrow, progress=progress)
    training = result.card.training
    for row in training.get("agreement", []):
        what = row.get("kind", "synthetic")
        kind = f"held-out {what}" if row["held_out"] else f"{what} (distilled on)"
        score = "n/a" if row["agreement"] is None else f"{100 * row['agreement']:.1f} %"
        out_console.print(f"  {row['expert']}: classes {row['classes']}, agreement {score} "
                          f"on {row['samples']} {kind} samples", markup=False, highlight=False)
    for line in training.get("warnings", []):
        print(f"warning: {printable(line, one_line=True)}", file=sys.stderr)
    out_console.print(f"consolidated {len(bundles)} experts into {out} ({result.card.arch}, classes "
                      f"{result.card.trained_class_ids})", markup=False, highlight=False)


_CARD_FIELDS = {
    "name": "a name for the expert",
    "arch": "a registered architecture (exmodel consolidate --help lists them); other architectures: export "
            "the model with torch.export and use `exmodel import`",
    "arch_kwargs": "the architecture's options, e.g. {\"num_classes\": 5, \"in_channels\": 1, \"input_size\": 28}",
    "class_ids": "the global class id of each output unit of the head, in order",
    "class_names": "one name per class id",
    "trained_class_ids": "the classes it was trained on (a subset of class_ids)",
    "num_global_classes": "size of the global label space (10 for MNIST)",
    "input_shape": "[C, H, W] of its input images",
    "normalization": "per-channel mean and std applied to images in [0, 1]",
}


@app.command("card-template")
def card_template(arch: str = typer.Option("lenet", "--arch", help="Registered architecture to fill in."),
                  explain: bool = typer.Option(False, "--explain", help="Also describe every field (on stderr).")) -> None:
    """Print the card fields `import-checkpoint --card` takes, filled in for ARCH; edit and save as JSON."""
    from exmodel.models.registry import model_signature

    kwargs = {k: v for k, v in model_signature(arch).items() if k not in ("heads",)}
    template = {"name": "my-expert", "arch": arch, "arch_kwargs": kwargs,
                "class_ids": list(range(kwargs.get("num_classes", 10))),
                "class_names": [str(i) for i in range(kwargs.get("num_classes", 10))],
                "trained_class_ids": list(range(kwargs.get("num_classes", 10))), "num_global_classes": 10,
                "input_shape": [kwargs.get("in_channels", 1), kwargs.get("input_size", 28), kwargs.get("input_size", 28)],
                "normalization": {"mean": [0.1307], "std": [0.3081]}}
    print(json.dumps(template, indent=2))
    if explain:
        for key, text in _CARD_FIELDS.items():
            print(f"{key}: {text}", file=sys.stderr)
