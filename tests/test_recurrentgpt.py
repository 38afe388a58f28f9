"""RecurrentGPT's text recurrence: memory and retrieval, the state update, the prompt, the
parser's fallbacks, the char-LM generator, and `rnnlab recurrentgpt` end to end on a tiny LM."""
import json
import random

import numpy as np
import pytest
import torch
from typer.testing import CliRunner

from rnnlab.models import LM
from rnnlab.tools import recurrentgpt_cli
from rnnlab.tools.recurrentgpt import (
    CharLMGenerator,
    RecurrentGPT,
    load_char_lm,
    parse,
    render_prompt,
)
from rnnlab.tools.recurrentgpt_memory import (
    HashingEmbedder,
    LMEmbedder,
    LongTermMemory,
    Recall,
    retrieval_accuracy,
)
from rnnlab.train.text import Vocab

from .helpers import command_group


class TableEmbedder:
    """Hand-set vectors: a text's vector is the table's entry for its first word."""

    dim = 2

    def __init__(self, table):
        self.table = table

    def __call__(self, texts):
        return np.array([self.table[t.split()[0]] for t in texts], dtype=np.float32)


class FakeGenerator:
    """A model that follows the format: paragraph i is about ``topics[i]``; records prompts."""

    def __init__(self, topics, plans=3):
        self.topics, self.plans, self.prompts = topics, plans, []

    def __call__(self, prompt):
        i = len(self.prompts)
        self.prompts.append(prompt)
        plans = "\n".join(f"Plan {j + 1}: plan {j + 1} after paragraph {i + 1}"
                          for j in range(self.plans))
        return (f"{self.topics[i]} was the subject of paragraph {i + 1}.\n"
                f"Memory: summary after paragraph {i + 1}\n{plans}\n")


TOPICS = ["The lighthouse keeper climbed the tower at dusk.",
          "Stock markets in Tokyo fell sharply on Monday.",
          "A storm broke the lighthouse lamp and the keeper repaired it.",
          "Football fans queued for tickets in the rain."]


# --- memory and retrieval -------------------------------------------------------------------
def test_hashing_embedder_is_deterministic_unit_and_lexical():
    emb = HashingEmbedder(dim=256)
    a = emb(["The keeper lit the lamp.", "the KEEPER lit the lamp!", "", "Markets fell."])
    assert a.shape == (4, 256) and a.dtype == np.float32
    assert np.allclose(np.linalg.norm(a[[0, 1, 3]], axis=1), 1) and not a[2].any()
    assert np.allclose(a[0], a[1])  # case and punctuation do not matter
    assert np.array_equal(a, HashingEmbedder(dim=256)(["The keeper lit the lamp.",
                                                       "the KEEPER lit the lamp!", "",
                                                       "Markets fell."]))
    near = emb(["The keeper repaired the lamp."])[0]
    assert near @ a[0] > near @ a[3] + 0.2  # shared words score higher than none
    with pytest.raises(ValueError, match="HashingEmbedder: dim must be an int >= 2, got 1"):
        HashingEmbedder(dim=1)


def test_retrieval_returns_the_most_similar_in_order_and_memory_is_immutable():
    emb = TableEmbedder({"a": [1, 0], "b": [0.6, 0.8], "c": [0, 1], "d": [0.6, 0.8],
                         "q": [1, 0]})
    empty = LongTermMemory.empty(2)
    memory = empty
    for text in ("c one", "b two", "a three", "d four"):
        memory = memory.add(text, emb)
    assert len(empty) == 0 and len(memory) == 4  # add returned new memories
    got = memory.retrieve("q", emb, k=3)
    # cosines 0, 0.6, 1, 0.6: best first, the tie (b, d) to the earlier paragraph
    assert [r.index for r in got] == [2, 1, 3]
    assert got[0] == Recall(2, 1.0, "a three") and got[1].score == pytest.approx(0.6)
    assert [r.index for r in memory.retrieve("q", emb, k=3, skip_last=2)] == [1, 0]
    assert memory.retrieve("q", emb, k=0) == () and empty.retrieve("q", emb, k=2) == ()
    with pytest.raises(ValueError, match="retrieve: k must be an int >= 0, got -1"):
        memory.retrieve("q", emb, k=-1)


def test_retrieval_accuracy_counts_own_documents_in_the_top_k():
    emb = TableEmbedder({"a": [1, 0], "b": [0, 1], "c": [0.8, 0.6]})
    queries, docs = ["a q", "b q", "c q"], ["a d", "c d", "b d"]
    # a finds "a d" first; b finds "b d" first and its own "c d" second; c's own "b d" is last
    assert retrieval_accuracy(queries, docs, emb, k=1) == pytest.approx(1 / 3)
    assert retrieval_accuracy(queries, docs, emb, k=2) == pytest.approx(2 / 3)
    assert retrieval_accuracy(queries, docs, emb, k=3) == 1
    with pytest.raises(ValueError, match="as many queries as documents"):
        retrieval_accuracy(queries, docs[:2], emb)


def test_lm_embedder_gives_unit_rows():
    vocab = Vocab(list("abc "))
    torch.manual_seed(0)
    emb = LMEmbedder(LM(len(vocab), 16, 1), vocab)
    x = emb(["abc", "", "cab a"])
    assert x.shape == (3, 16) and not x[1].any()
    assert np.allclose(np.linalg.norm(x[[0, 2]], axis=1), 1)


# --- the step -------------------------------------------------------------------------------
def test_step_updates_every_part_of_the_state_and_leaves_the_old_one():
    gen = FakeGenerator(TOPICS)
    rgpt = RecurrentGPT(gen, HashingEmbedder(), top_k=2)
    s0 = rgpt.initial_state("A keeper and a lighthouse.")
    assert s0.plans == ("Begin the story: A keeper and a lighthouse.",)
    out, s1 = rgpt.step(None, s0)
    assert out.plan == s0.plans[0] and out.recalled == ()  # nothing stored yet
    assert s1.short_memory == "summary after paragraph 1"  # replaced, not appended
    assert s1.long_memory.paragraphs == (out.paragraph,) and s1.last_paragraph == out.paragraph
    assert out.paragraph.startswith(TOPICS[0]) and s1.step == 1
    assert s1.plans == tuple(f"plan {j} after paragraph 1" for j in (1, 2, 3))
    assert s0.step == 0 and len(s0.long_memory) == 0 and s0.short_memory.startswith("A keeper")
    out2, s2 = rgpt.step(2, s1)  # the third proposed plan
    assert out2.plan == "plan 3 after paragraph 1"
    assert s2.long_memory.paragraphs == (out.paragraph, out2.paragraph)
    out3, _ = rgpt.step("  My own   plan. ", s2)
    assert out3.plan == "My own plan."


def test_prompt_holds_the_recalled_memories_and_the_plan():
    gen = FakeGenerator(TOPICS + ["x"])
    rgpt = RecurrentGPT(gen, HashingEmbedder(), top_k=1)
    state = rgpt.initial_state("premise")
    for _ in range(3):
        _, state = rgpt.step(None, state)
    plan = "Tokyo stock markets fell sharply again"
    out, _ = rgpt.step(plan, state)
    # paragraph 3 (the last) is in the prompt verbatim; of 1 and 2 the markets one matches
    assert [r.index for r in out.recalled] == [1]
    assert gen.prompts[-1] == out.prompt
    assert f"Related earlier paragraphs:\n1. {state.long_memory.paragraphs[1]}\n" in out.prompt
    assert f"Plan for this paragraph: {plan}\n" in out.prompt
    assert f"Memory (a summary of the story so far): {state.short_memory}\n" in out.prompt
    assert f"Previous paragraph: {state.last_paragraph}\n" in out.prompt
    assert out.prompt.endswith("Paragraph:")
    plain = render_prompt(rgpt.initial_state("p"), "begin", (), 3)
    assert "(none yet)" in plain and "Plan 3: <" in plain


# --- the parser -----------------------------------------------------------------------------
def test_parser_reads_the_format_and_its_variants():
    p = parse("The keeper woke. He ran.\nMemory: he woke\nPlan 1: he sails\nPlan 2. he swims\n"
              "Plan 3) he sleeps\nPlan 4: extra")
    assert (p.paragraph, p.memory, p.plans, p.fallbacks) == (
        "The keeper woke. He ran.", "he woke", ("he sails", "he swims", "he sleeps"), ())
    q = parse("## Output Paragraph: It rained.\n**Output Memory**: wet\nOutput Instruction:\n"
              "1. dry off\n2) find a coat\n- dry off\n", n_plans=3)
    assert (q.paragraph, q.memory, q.plans) == ("It rained.", "wet", ("dry off", "find a coat"))
    # "Memory." and "the plan:" mid-line are prose, not headers
    r = parse("Memory. A plan: none here.\nSummary: s\nInstructions: go on")
    assert r.paragraph == "Memory. A plan: none here." and r.memory == "s"
    assert r.plans == ("go on",)


def test_parser_falls_back_and_says_so():
    p = parse("the dog ran home. it was late and\n\x01dark", old_memory="Before.",
              memory_chars=100)
    assert p.paragraph == "the dog ran home. it was late and dark"
    assert p.memory == "Before. the dog ran home."  # old memory + first sentence
    # the sentence added is cut to a quarter of the memory, at a word
    assert parse("the dog ran home.", "Before.", memory_chars=40).memory == "Before. the dog"
    assert p.plans == ("Continue the story after: the dog ran home. it was late and dark",)
    assert [f.split(":")[0] for f in p.fallbacks] == ["memory", "plans"]
    # the memory keeps its last memory_chars characters, starting at a word
    long = parse("New fact here. More.", old_memory="word " * 30, memory_chars=60)
    assert len(long.memory) <= 60 and long.memory.endswith("word New fact here.")
    assert long.memory.startswith("word ")
    empty = parse("")
    assert empty.paragraph == "" and empty.plans == ("Continue the story.",)
    assert "paragraph: empty" in empty.fallbacks
    text = "One two three. Four five six seven eight nine."
    # cut at a sentence end when that keeps more than half of the cap, else at a word
    assert parse(text, paragraph_chars=26).paragraph == "One two three."
    assert parse(text, paragraph_chars=30).paragraph == "One two three. Four five six"
    # a paragraph cut mid-sentence (a length cap) ends at its last sentence end
    assert parse("One two three four. Five six").paragraph == "One two three four."


def test_parser_never_raises_on_junk():
    rng = random.Random(0)
    alphabet = "ab .:\n1-#Plan Memory Paragraph\x00\ufffd"
    for _ in range(300):
        text = "".join(rng.choice(alphabet) for _ in range(rng.randrange(0, 80)))
        p = parse(text, n_plans=2, paragraph_chars=30, memory_chars=20)
        assert len(p.paragraph) <= 30 and len(p.memory) <= 20 and 1 <= len(p.plans) <= 2
        assert all(p.plans) and "\n" not in p.paragraph + p.memory


# --- errors ---------------------------------------------------------------------------------
def test_bad_arguments_are_named():
    rgpt = RecurrentGPT(FakeGenerator(TOPICS))
    state = rgpt.initial_state("premise")
    with pytest.raises(ValueError, match=r"step: choice must be an int in \[0, 0\], got 1"):
        rgpt.step(1, state)
    with pytest.raises(ValueError, match="a plan of one's own must be non-empty"):
        rgpt.step("  ", state)
    with pytest.raises(ValueError, match="premise must be non-empty"):
        rgpt.initial_state(" \n")
    with pytest.raises(ValueError, match="RecurrentGPT: top_k must be an int >= 0, got -1"):
        RecurrentGPT(FakeGenerator(TOPICS), top_k=-1)
    with pytest.raises(TypeError, match="generator must be a callable"):
        RecurrentGPT("gpt")
    with pytest.raises(TypeError, match="the generator must return str, got int"):
        RecurrentGPT(lambda prompt: 3).step(None, state)


def test_load_char_lm_says_how_to_make_one(tmp_path):
    with pytest.raises(ValueError, match=r"--checkpoint: .*does not exist.*rnnlab train lm "
                                         r"--data <prose> --out .*--train-tiny"):
        load_char_lm(tmp_path / "none")
    (tmp_path / "model").mkdir()
    with pytest.raises(ValueError, match="has no model/config.json, no model/model.safetensors"):
        load_char_lm(tmp_path)


# --- the char-LM generator ------------------------------------------------------------------
def test_char_lm_generator_is_a_function_of_the_prompt():
    vocab = Vocab(list("abcdefgh .:"))
    torch.manual_seed(0)
    gen = CharLMGenerator(LM(len(vocab), 16, 1), vocab, max_chars=30, seed=3)
    a, b = gen("abc: de"), gen("abc: de")
    assert a == b and len(a) == 30 and set(a) <= set(vocab.chars)
    assert gen("abc: dd") != a  # another prompt, another sample
    assert CharLMGenerator(gen.lm, vocab, max_chars=30, seed=4)("abc: de") != a
    # so a step with it is a pure function of (input, state)
    rgpt = RecurrentGPT(gen, top_k=1, paragraph_chars=30)
    state = rgpt.initial_state("abc")
    (a1, s1), (a2, s2) = rgpt.step(None, state), rgpt.step(None, state)
    assert a1 == a2 and s1.long_memory.paragraphs == s2.long_memory.paragraphs
    assert s1.short_memory == s2.short_memory and s1.plans == s2.plans
    with pytest.raises(ValueError, match="CharLMGenerator: max_chars must be an int >= 1"):
        CharLMGenerator(gen.lm, vocab, max_chars=0)


# --- the command ----------------------------------------------------------------------------
def _app():
    return command_group(recurrentgpt_cli.register)


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory):
    """`rnnlab recurrentgpt --train-tiny` end to end: trains a tiny LM, writes a transcript."""
    root = tmp_path_factory.mktemp("rgpt")
    result = CliRunner().invoke(_app(), [
        "recurrentgpt", "--checkpoint", str(root / "lm"), "--train-tiny", "--tiny-steps", "2",
        "--steps", "3", "--chars", "60", "--check-embedders", "3", "--out", str(root / "out")])
    return root, result


def test_cli_end_to_end_with_a_tiny_lm(tiny_run):
    root, result = tiny_run
    assert result.exit_code == 0, result.output
    assert (root / "lm" / "model" / "model.safetensors").is_file()
    log = json.loads((root / "out" / "transcript.json").read_text())
    assert len(log["steps"]) == 3 and log["lm"]["steps"] == 2 and log["lm"]["val_bpc"] > 0
    assert log["steps"][0]["plan"].startswith("Begin the story: A lighthouse keeper")
    # non-interactive: each step follows the first plan the step before proposed
    for prev, cur in zip(log["steps"], log["steps"][1:]):
        assert cur["plan"] == prev["plans"][0]
    assert [len(r["recalled"]) for r in log["steps"]] == [0, 0, 1]
    assert log["final_state"]["long_memory_paragraphs"] == 3
    assert all(len(r["paragraph"]) <= 60 for r in log["steps"])
    check = log["embedder_check"]
    assert check["articles"] == 3 and all(0 <= check[e]["top1"] <= check[e]["top2"] <= 1
                                          for e in ("hashing", "lm"))


def test_cli_interactive_choice(tiny_run, monkeypatch):
    root, _ = tiny_run
    monkeypatch.setattr("rnnlab.tools.recurrentgpt.CharLMGenerator",
                        lambda *a, **k: FakeGenerator(TOPICS))
    # 1st paragraph: 5 is out of range (one plan), then 1; 2nd: plan 2; 3rd: own; then EOF
    result = CliRunner().invoke(_app(), [
        "recurrentgpt", "--checkpoint", str(root / "lm"), "--interactive", "--steps", "5",
        "--out", str(root / "chat")], input="5\n1\n2\nThe keeper swims home.\n")
    assert result.exit_code == 0, result.output
    assert "choose 1 to 1" in result.output and "stopping after 3 paragraphs" in result.output
    steps = json.loads((root / "chat" / "transcript.json").read_text())["steps"]
    assert [s["plan"] for s in steps[1:]] == ["plan 2 after paragraph 1",
                                              "The keeper swims home."]


@pytest.mark.parametrize("args, message", [
    (["--steps", "0"], "--steps: expected an integer >= 1, got 0"),
    (["--embedder", "bert"], "--embedder: expected one of ['hashing', 'lm'], got 'bert'"),
    (["--temperature", "-1"], "--temperature: expected a number in [0, 100] (0: greedy)"),
    (["--top-k", "21"], "--top-k: expected an integer <= 20, got 21"),
    (["--premise", " "], "--premise: expected non-empty text"),
    (["--checkpoint", "/nonexistent/lm"], "--checkpoint: expected the folder"),
])
def test_cli_bad_arguments(args, message, tmp_path):
    result = CliRunner().invoke(_app(), ["recurrentgpt", "--out", str(tmp_path), *args])
    assert result.exit_code == 2 and message in " ".join(result.output.split()), result.output


def test_cli_help():
    result = CliRunner().invoke(_app(), ["recurrentgpt", "--help"])
    assert result.exit_code == 0 and "--interactive" in result.output
    assert "--train-tiny" in result.output
