"""RULER-style generators and the NIAH sample: reproducible, fitted, answers derivable."""

import re
from collections import Counter

import pytest

from dhsa.eval.haystack import essay_sentences, insert_at_depths, split_sentences
from dhsa.eval.metrics import string_match_all
from dhsa.eval.niah import niah_sample
from dhsa.eval.ruler import NEEDLE_TASKS, TASKS, make_sample

pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning")


def count_tokens(text: str) -> int:
    """A stand-in tokenizer: one token per 4 characters."""
    return -(-len(text) // 4)


@pytest.fixture(scope="module")
def essays():
    try:
        return essay_sentences()
    except FileNotFoundError:
        text = " ".join(f"Sentence number {i} talks about topic {i % 17}." for i in range(4000))
        return tuple(split_sentences(text))


@pytest.mark.parametrize("task", sorted(TASKS))
def test_same_seed_same_sample_and_fits_length(task, essays):
    length = 1537
    a = make_sample(task, length, 3, count_tokens, essays, seed=11)
    b = make_sample(task, length, 3, count_tokens, essays, seed=11)
    c = make_sample(task, length, 4, count_tokens, essays, seed=11)
    assert a == b
    assert a.prompt != c.prompt
    used = count_tokens(a.prompt)
    assert used <= length - a.max_new_tokens
    # The haystack is as large as fits: within a sentence or a list entry of the limit.
    assert used > 0.9 * (length - a.max_new_tokens)
    # A reply repeating the answers scores 1, one missing the answers scores 0.
    assert string_match_all(" ".join(a.answers), a.answers) == 1.0
    assert string_match_all("I do not know.", a.answers) == 0.0


@pytest.mark.parametrize("task", sorted(NEEDLE_TASKS))
def test_needles_present_once_and_answers_in_context(task, essays):
    sample = make_sample(task, 2011, 0, count_tokens, essays, seed=5)
    spec = NEEDLE_TASKS[task]
    assert len(sample.needles) == spec.num_keys * spec.num_values
    for needle in sample.needles:
        assert sample.prompt.count(needle) == 1
    for answer in sample.answers:
        # Each answer value is the value of exactly one needle, and that needle's key is asked.
        owners = [n for n in sample.needles if n.endswith(f" {answer}.")]
        assert len(owners) == 1
        key = re.match(r"One of the special magic \w+ for (.+) is: ", owners[0]).group(1)
        assert key in sample.prompt.split("\n")[-1]
    assert len(sample.answers) == spec.num_values * spec.num_queries


def test_niah_command_builds_each_cell_at_its_depth(monkeypatch, essays):
    import argparse

    from dhsa.commands import niah as niah_command

    captured = {}

    def record_session(args, *, kind, item_field, items, sample_for):
        captured.update(items=items, sample_for=sample_for)
        raise KeyboardInterrupt

    monkeypatch.setattr("dhsa.eval.session.run_session", record_session)
    with pytest.raises(KeyboardInterrupt):
        niah_command.run(argparse.Namespace(depths="0.1,0.9"))
    assert captured["items"] == [0.1, 0.9]
    # The session calls sample_for(length, index, item, count_tokens, essays, seed).
    for index, depth in ((2, 0.9), (0, 0.1)):
        cell = captured["sample_for"](3001, index, depth, count_tokens, essays, 7)
        assert cell == niah_sample(3001, depth, index, count_tokens, essays, seed=7)


@pytest.mark.parametrize("depth", [0.0, 0.3, 0.77, 1.0])
def test_niah_needle_at_stated_depth_on_sentence_boundary(depth, essays):
    sample = niah_sample(3001, depth, 2, count_tokens, essays, seed=7)
    (needle,) = sample.needles
    header, rest = sample.prompt.split("\n", 1)
    context = rest.rsplit("\n", 1)[0]
    position = context.index(needle)
    assert context.count(needle) == 1
    # Depth as a fraction of the haystack text, within the length of the longest sentence there.
    longest = max(len(s) for s in split_sentences(context))
    assert (
        abs(position / max(len(context) - len(needle), 1) - depth) <= longest / len(context) + 0.01
    )
    before = context[:position].rstrip()
    assert before == "" or before[-1] in ".!?\"')"
    # Every depth of one index hides the same needle in the same haystack.
    other = niah_sample(3001, 0.5, 2, count_tokens, essays, seed=7)
    assert other.needles == sample.needles
    assert other.prompt.replace(needle + " ", "").replace(
        " " + needle, ""
    ) == sample.prompt.replace(needle + " ", "").replace(" " + needle, "")


def test_insert_at_depths_order_and_bounds():
    units = [f"u{i}." for i in range(10)]
    out = insert_at_depths(units, ["A", "B", "C"], [1.0, 0.0, 0.5])
    assert out[0] == "B" and out[-1] == "A" and out[6] == "C"
    assert [u for u in out if u.startswith("u")] == units
    with pytest.raises(ValueError, match="depth"):
        insert_at_depths(units, ["A"], [1.5])


def test_variable_tracking_chain_resolves_to_answers(essays):
    sample = make_sample("vt", 1800, 1, count_tokens, essays, seed=2)
    value = re.search(r"assigned the value (\d+) in the text", sample.prompt).group(1)
    assignments = dict(re.findall(r"VAR (\w+) = (VAR \w+|\d+)\.", sample.prompt))
    holding = {value}
    changed = True
    while changed:
        changed = False
        for name, source in assignments.items():
            ref = source[4:] if source.startswith("VAR ") else source
            if name not in holding and ref in holding:
                holding.add(name)
                changed = True
    assert holding - {value} == set(sample.answers)
    # The chain is written in dependency order: each link comes after the one it copies.
    positions = [sample.prompt.index(f"VAR {name} =") for name in sample.answers]
    assert positions == sorted(positions)


def test_common_words_are_the_most_frequent(essays):
    sample = make_sample("cwe", 2500, 0, count_tokens, essays, seed=3)
    words = re.findall(r"\d+\. (\w+)", sample.prompt)
    counts = Counter(words).most_common()
    top = {w for w, _ in counts[:10]}
    assert top == set(sample.answers)
    assert counts[9][1] > counts[10][1]


def test_frequent_words_are_counted_from_the_text(essays):
    sample = make_sample("fwe", 2222, 0, count_tokens, essays, seed=4)
    text = sample.prompt.split("\n", 1)[1].split(" ....")[0]
    counts = Counter(text.split()).most_common()
    assert [w for w, _ in counts[:3]] == list(sample.answers)
    assert counts[2][1] > counts[3][1]


def test_unknown_task_and_too_short_length(essays):
    with pytest.raises(ValueError, match="unknown RULER task"):
        make_sample("nope", 1000, 0, count_tokens, essays)
    with pytest.raises(ValueError, match="raise the length"):
        make_sample("niah_single_1", 40, 0, count_tokens, essays)
