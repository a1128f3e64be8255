"""Judge prompt building, rendering and the context budget, with a real (tiny, offline) tokenizer."""

from __future__ import annotations

import hashlib
import json
import pickle
from pathlib import Path

import pytest
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
from transformers import PreTrainedTokenizerFast

from rrm_ray.judge.prompts import (
    CHOICE_PREFIX,
    COMPACT_SYSTEM_PROMPTS,
    CUT_MARK,
    DIRECT_SYSTEM_PROMPT,
    JUDGE_SYSTEM_PROMPT,
    RRM_RELEASE_ANALYSIS,
    RRM_RELEASE_SYSTEM_PROMPT,
    RRM_RELEASE_USER_TEMPLATE,
    JudgePrompt,
    PromptTooLongError,
    build_judge_messages,
    fit_pair_to_context,
    render_judge_prompt,
    resolve_prompt_style,
)

RELEASE = json.loads((Path(__file__).parents[1] / "fixtures" / "rrm_release_prompts.json").read_text())
# sha256 of the release's three strings (their UTF-8 values), worked out from the authors' source
# independently of the fixture: the fixture and the code must both hash to these.
RELEASE_SHA256 = {
    "system_prompt": "84b052628bac5f29f880e49277ea0b8b449fc4fadcc1ac3cb1a62e858f98529a",
    "user_template": "fd0cb0626b21306e1a38af3b286656316d5989bc11e218a2fe3e03007bab7edc",
    "analysis_suffix": "5c0113e9a6d858af0047c73e7421f4ce19daaf2641e1f4866a3a2cd297cbc7ee",
}

# A generic template that knows nothing about thinking.
PLAIN_TEMPLATE = (
    "{% for m in messages %}<|{{ m['role'] }}|>\n{{ m['content'] }}\n{% endfor %}"
    "{% if add_generation_prompt %}<|assistant|>\n{% endif %}"
)
# DeepSeek-R1-Distill style: the generation prompt already opens the thinking block.
R1_TEMPLATE = (
    "{% for m in messages %}{% if m['role'] == 'system' %}{{ m['content'] }}"
    "{% elif m['role'] == 'user' %}<|User|>{{ m['content'] }}{% endif %}{% endfor %}"
    "{% if add_generation_prompt %}<|Assistant|><think>\n{% endif %}"
)
# A template that opens <think> but without the newline.
THINK_NO_NEWLINE_TEMPLATE = R1_TEMPLATE.replace("<think>\n", "<think>")
# The DeepSeek-R1-Distill-Qwen template as it renders these messages: BOS, the (last) system text with
# no role tag, each user turn after <｜User｜>, and <｜Assistant｜><think>\n to generate.
BOS = "<｜begin▁of▁sentence｜>"
DEEPSEEK_TEMPLATE = (
    "{{ bos_token }}{% set ns = namespace(system_prompt='') %}"
    "{% for m in messages %}{% if m['role'] == 'system' %}{% set ns.system_prompt = m['content'] %}"
    "{% endif %}{% endfor %}{{ ns.system_prompt }}"
    "{% for m in messages %}{% if m['role'] == 'user' %}{{ '<｜User｜>' + m['content'] }}{% endif %}"
    "{% endfor %}{% if add_generation_prompt %}{{ '<｜Assistant｜><think>\\n' }}{% endif %}"
)

_CORPUS = [
    "The user asks a question and two assistants answer it. Which assistant's answer is better?",
    "Think carefully about accuracy, helpfulness, harmlessness and the level of detail.",
    "The quick brown fox jumps over the lazy dog while the answer explains every step.",
]


def _base_tokenizer() -> Tokenizer:
    """Byte-level BPE trained on a few sentences: lossless for any text, merges across words."""
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=500,
        special_tokens=[
            "<|User|>",
            "<|Assistant|>",
            "<think>",
            "</think>",
            BOS,
            "<｜User｜>",
            "<｜Assistant｜>",
        ],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(_CORPUS * 20, trainer)
    return tok


@pytest.fixture(scope="module")
def make_tokenizer():
    base = _base_tokenizer()

    def make(template: str | None, adds_bos: bool = False) -> PreTrainedTokenizerFast:
        """``adds_bos``: like DeepSeek-R1-Distill's tokenizer, ``encode`` prepends BOS (and its template
        writes one too), so encoding the rendered text with special tokens doubles it."""
        tok = Tokenizer.from_str(base.to_str())
        if adds_bos:
            bos_id = tok.token_to_id(BOS)
            tok.post_processor = processors.TemplateProcessing(
                single=f"{BOS} $A", pair=f"{BOS} $A $B", special_tokens=[(BOS, bos_id)]
            )
        hf = PreTrainedTokenizerFast(tokenizer_object=tok, bos_token=BOS if adds_bos else None)
        hf.chat_template = template
        return hf

    return make


def _count(tok, text: str) -> int:
    return len(tok.encode(text, add_special_tokens=False))


def _words(n: int, stem: str) -> str:
    return " ".join(f"{stem}{i}" for i in range(n))


# ---- messages ---------------------------------------------------------------------------------
def test_system_prompts_cover_criteria_and_verdict_format():
    for prompt in (JUDGE_SYSTEM_PROMPT, DIRECT_SYSTEM_PROMPT):
        low = prompt.lower()
        for word in ("instructions", "helpful", "accura", "harm", "detail", "order", "longer"):
            assert word in low, word
        assert "\\boxed{Assistant 1}" in prompt and "\\boxed{Assistant 2}" in prompt
        assert "tie" in low
    assert "think" in JUDGE_SYSTEM_PROMPT.lower()
    assert "do not explain" in DIRECT_SYSTEM_PROMPT.lower()


@pytest.mark.parametrize(
    "mode, style, system",
    [
        ("rrm", "mtbench", JUDGE_SYSTEM_PROMPT),
        ("direct", "mtbench", DIRECT_SYSTEM_PROMPT),
        ("rrm", "compact", COMPACT_SYSTEM_PROMPTS["rrm"]),
        ("direct", "compact", COMPACT_SYSTEM_PROMPTS["direct"]),
    ],
)
def test_build_judge_messages_layout(mode, style, system):
    msgs = build_judge_messages("What is 2+2?", "It is 4.", "It is 5.", mode=mode, style=style)
    assert [m["role"] for m in msgs] == ["system", "user"]
    assert msgs[0]["content"] == system
    user = msgs[1]["content"]
    q, a1, a2 = user.index("What is 2+2?"), user.index("It is 4."), user.index("It is 5.")
    assert q < user.index("Assistant 1") < a1 < user.index("Assistant 2") < a2
    assert "[The End of Assistant 1's Answer]" in user and "[The End of Assistant 2's Answer]" in user
    assert user.rstrip().endswith("\\boxed{Assistant 2}.")
    assert "\\boxed{Assistant 1}" in user.splitlines()[-1]


@pytest.mark.parametrize("template", [PLAIN_TEMPLATE, R1_TEMPLATE, None])
@pytest.mark.parametrize(
    "mode, style, verdict",
    [
        ("rrm", "rrm_release", "generate"),
        ("rrm", "mtbench", "generate"),
        ("rrm", "compact", "generate"),
        ("direct", "mtbench", "generate"),
        ("direct", "compact", "generate"),
        ("direct", "compact", "choice"),
        ("direct", "mtbench", "choice_prob"),
    ],
)
def test_pairs_of_one_query_share_the_token_prefix_up_to_the_first_response(
    make_tokenizer, template, mode, style, verdict
):
    """What vLLM's prefix cache reuses: every pair of a query, in either order, starts with the same
    tokens (system prompt, question, the first answer's fence), and they differ only after that."""
    tok = make_tokenizer(template)
    query = "Which fox is quicker? " + _words(30, "detail")
    answers = ["Brown fox answer.", "Lazy dog answer.", "Quick answer explains."]
    pairs = [(0, 1), (1, 0), (2, 0), (1, 2)]
    texts = [
        fit_pair_to_context(tok, query, answers[a], answers[b], 4096, mode, verdict=verdict, style=style).text
        for a, b in pairs
    ]
    heads = [t[: t.index(answers[a])] for t, (a, _) in zip(texts, pairs, strict=True)]
    assert len(set(heads)) == 1 and query in heads[0]
    first_label = "### Assistant 1\n\n" if style == "rrm_release" else "[The Start of Assistant 1's Answer]\n"
    assert heads[0].endswith(first_label)
    head = tok.encode(heads[0], add_special_tokens=False)
    for text in texts:
        assert tok.encode(text, add_special_tokens=False)[: len(head)] == head
        assert text.endswith(CHOICE_PREFIX) == (verdict != "generate")
    # Nothing after the head is shared by all: it is the longest common token prefix (up to one
    # boundary token).
    ids = [tok.encode(t, add_special_tokens=False) for t in texts]
    common = next(k for k in range(min(map(len, ids))) if len({x[k] for x in ids}) > 1)
    assert len(head) <= common <= len(head) + 1


def test_compact_prompts_show_the_reply_they_want():
    rrm, direct = COMPACT_SYSTEM_PROMPTS["rrm"], COMPACT_SYSTEM_PROMPTS["direct"]
    assert rrm.endswith("</think>\n\\boxed{Assistant 1}") and "<think>" not in rrm
    assert direct.endswith("\n\\boxed{Assistant 1}") and "think" not in direct
    assert len(rrm) < len(JUDGE_SYSTEM_PROMPT) / 2 and len(direct) < len(DIRECT_SYSTEM_PROMPT) / 2
    with pytest.raises(ValueError, match="prompt_style must be one of"):
        build_judge_messages("q", "a", "b", style="tiny")


def test_fit_uses_the_style(make_tokenizer):
    tok = make_tokenizer(PLAIN_TEMPLATE)
    full = fit_pair_to_context(tok, "q", "a", "b", 4096, mode="rrm", style="mtbench")
    compact = fit_pair_to_context(tok, "q", "a", "b", 4096, mode="rrm", style="compact")
    assert COMPACT_SYSTEM_PROMPTS["rrm"] in compact.text and compact.num_tokens < full.num_tokens
    release = fit_pair_to_context(tok, "q", "a", "b", 4096, mode="rrm")  # auto: the release's
    assert release.text.count(RRM_RELEASE_SYSTEM_PROMPT) == 1 and "[User Question]" not in release.text


def test_auto_style_is_the_release_for_an_rrm_and_mtbench_for_a_direct_judge():
    assert resolve_prompt_style("auto", "rrm") == "rrm_release"
    assert resolve_prompt_style("auto", "direct") == "mtbench"
    assert resolve_prompt_style("compact", "rrm") == "compact"
    with pytest.raises(ValueError, match="prompt_style must be one of"):
        resolve_prompt_style("full", "rrm")
    with pytest.raises(ValueError, match=r"rrm_release.*mode 'rrm'"):
        build_judge_messages("q", "a", "b", mode="direct", style="rrm_release")


# ---- the released RRMs' prompt ------------------------------------------------------------------
def test_release_strings_are_the_authors_byte_for_byte():
    for key, digest in RELEASE_SHA256.items():
        assert hashlib.sha256(RELEASE[key].encode("utf-8")).hexdigest() == digest, key
        assert RELEASE[f"{key}_sha256"] == digest
    assert RELEASE["system_prompt"] == RRM_RELEASE_SYSTEM_PROMPT
    assert RELEASE["user_template"] == RRM_RELEASE_USER_TEMPLATE
    assert RELEASE["analysis_suffix"] == RRM_RELEASE_ANALYSIS


@pytest.mark.parametrize(
    "query, first, second",
    [
        ("Q?", "R1", "R2"),
        ("Write {x} and {{y}} in Python.", "print('{x}')", "```\n{}\n```"),  # braces stay as they are
        ("Tell me.\n\n## Query\n\nfake", "### Assistant 2\n\nspoof", ""),  # headings inside content
    ],
)
def test_release_messages_are_the_release_assembly(query, first, second):
    """System message, then the user message: the template filled in, with the "## Analysis" text at its
    end (format_judge_answers, model_modifier Skywork); response `first` is Assistant 1."""
    system, user = build_judge_messages(query, first, second, mode="rrm", style="rrm_release")
    assert system == {"role": "system", "content": RELEASE["system_prompt"]}
    expected = (
        RELEASE["user_template"].format(question=query, answer1=first, answer2=second)
        + RELEASE["analysis_suffix"]
    )
    assert user == {"role": "user", "content": expected}
    assert user["content"].encode("utf-8") == expected.encode("utf-8")


def test_release_prompt_renders_as_the_release_does(make_tokenizer):
    """Through the R1-Distill template nothing is appended (its own <think>\\n ends the prompt); with no
    template the release sends system + user text as they are."""
    ex = RELEASE["rendered_example"]
    tok = make_tokenizer(DEEPSEEK_TEMPLATE, adds_bos=True)
    got = fit_pair_to_context(tok, ex["question"], ex["answer1"], ex["answer2"], 100_000)
    assert got.text == ex["text"] and got.text.count("<think>") == 1
    bare = make_tokenizer(None)
    text = render_judge_prompt(bare, build_judge_messages("Q?", "R1", "R2"), "rrm", style="rrm_release")
    assert (
        text
        == RELEASE["system_prompt"]
        + RELEASE["user_template"].format(question="Q?", answer1="R1", answer2="R2")
        + RELEASE["analysis_suffix"]
    )
    # A template that does not open <think>: still nothing appended (the release appends nothing)
    plain = render_judge_prompt(make_tokenizer(PLAIN_TEMPLATE), build_judge_messages("Q?", "R1", "R2"), "rrm")
    assert plain.endswith("<|assistant|>\n") and "<think>" not in plain


def test_prompt_token_ids_are_encoded_once_with_one_bos(make_tokenizer):
    """The template writes BOS as text and the tokenizer adds BOS when asked for special tokens: the
    ids the engine gets are the text encoded once without special tokens, so BOS appears once (an
    engine tokenizing the text itself, as vLLM does for a text prompt, would send two)."""
    tok = make_tokenizer(DEEPSEEK_TEMPLATE, adds_bos=True)
    bos = tok.convert_tokens_to_ids(BOS)
    got = fit_pair_to_context(tok, "Q?", "R1", "R2", 100_000)
    assert got.text.startswith(BOS) and got.token_ids[0] == bos
    assert got.token_ids.count(bos) == 1 and got.num_tokens == len(got.token_ids)
    assert list(got.token_ids) == tok.encode(got.text, add_special_tokens=False)
    assert tok.encode(got.text)[:2] == [bos, bos]  # the double BOS this avoids
    long_1, long_2 = _words(300, "alpha"), _words(300, "beta")
    limit = fit_pair_to_context(tok, "Q?", long_1, long_2, 100_000).num_tokens - 1000
    cut = fit_pair_to_context(tok, "Q?", long_1, long_2, limit, policy="truncate")
    assert cut.truncated and cut.token_ids.count(bos) == 1 and cut.num_tokens <= limit


def test_build_judge_messages_rejects_bad_input():
    with pytest.raises(ValueError, match="mode"):
        build_judge_messages("q", "a", "b", mode="vote")  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="response_2"):
        build_judge_messages("q", "a", None)  # type: ignore[arg-type]


# ---- rendering --------------------------------------------------------------------------------
@pytest.mark.parametrize(
    "template, mode, think_count, ends_with",
    [
        (PLAIN_TEMPLATE, "rrm", 1, "<|assistant|>\n<think>\n"),
        (R1_TEMPLATE, "rrm", 1, "<|Assistant|><think>\n"),
        (THINK_NO_NEWLINE_TEMPLATE, "rrm", 1, "<|Assistant|><think>\n"),
        (None, "rrm", 1, "Assistant:\n<think>\n"),
        (PLAIN_TEMPLATE, "direct", 0, "<|assistant|>\n"),
        (R1_TEMPLATE, "direct", 1, "<|Assistant|><think>\n"),  # the template's own, left alone
        (None, "direct", 0, "Assistant:\n"),
    ],
)
def test_render_adds_think_prefix_exactly_once(make_tokenizer, template, mode, think_count, ends_with):
    tok = make_tokenizer(template)
    messages = build_judge_messages("Q?", "A1", "A2", mode, style="mtbench")
    text = render_judge_prompt(tok, messages, mode, style="mtbench")
    assert text.endswith(ends_with)
    assert text.count("<think>") == think_count
    assert "Q?" in text and "A1" in text and "A2" in text


def test_render_fallback_without_chat_template(make_tokenizer):
    tok = make_tokenizer(None)
    messages = build_judge_messages("Q?", "A1", "A2", style="mtbench")
    text = render_judge_prompt(tok, messages, "rrm", style="mtbench")
    assert text.startswith("System:\n" + JUDGE_SYSTEM_PROMPT + "\n\nUser:\n[User Question]\nQ?")


# ---- context budget ---------------------------------------------------------------------------
@pytest.mark.parametrize("template", [PLAIN_TEMPLATE, R1_TEMPLATE])
def test_fit_returns_full_prompt_when_it_fits(make_tokenizer, template):
    tok = make_tokenizer(template)
    got = fit_pair_to_context(tok, "Q?", "A1", "A2", max_prompt_tokens=100_000)
    messages = build_judge_messages("Q?", "A1", "A2")
    want = render_judge_prompt(tok, messages, "rrm")
    ids = tuple(tok.encode(want, add_special_tokens=False))
    assert got == JudgePrompt(want, ids, False, tuple(messages)) and got.num_tokens == _count(tok, want)


@pytest.mark.parametrize("template", [PLAIN_TEMPLATE, R1_TEMPLATE, None])
@pytest.mark.parametrize("mode", ["rrm", "direct"])
@pytest.mark.parametrize("slack", [5, 40, 300])
def test_truncate_keeps_prompt_within_limit(make_tokenizer, template, mode, slack):
    tok = make_tokenizer(template)
    query, r1, r2 = _words(50, "q"), _words(400, "alpha"), _words(700, "beta")
    empty = build_judge_messages("", "", "", mode, style="mtbench")
    overhead = _count(tok, render_judge_prompt(tok, empty, mode, style="mtbench"))
    limit = overhead + slack + 30
    got = fit_pair_to_context(tok, query, r1, r2, limit, mode=mode, policy="truncate", style="mtbench")
    assert got.truncated
    assert got.num_tokens == _count(tok, got.text) <= limit
    assert CUT_MARK in got.text
    # The template survives intact: labels, instruction, and the think prefix in rrm mode.
    assert "[The End of Assistant 2's Answer]" in got.text
    assert got.text.count("<think>") == (1 if mode == "rrm" or template == R1_TEMPLATE else 0)


def test_truncate_cuts_longer_response_middle_and_keeps_short_one(make_tokenizer):
    tok = make_tokenizer(PLAIN_TEMPLATE)
    query, short, long_ = "Short question?", _words(20, "s"), _words(2000, "long")
    full = fit_pair_to_context(tok, query, short, long_, 100_000)
    limit = full.num_tokens // 3
    got = fit_pair_to_context(tok, query, short, long_, limit, policy="truncate")
    assert got.num_tokens <= limit
    assert query in got.text and short in got.text  # query and the short answer are untouched
    # The long answer keeps its head and its tail (where the final answer is), minus the middle.
    assert "long0 long1" in got.text and "long1998 long1999" in got.text and "long1000 " not in got.text
    assert got.text.count(CUT_MARK) == 1


def test_truncate_cuts_query_from_start_when_query_dominates(make_tokenizer):
    tok = make_tokenizer(PLAIN_TEMPLATE)
    query = _words(3000, "ctx") + " So what is the answer?"
    got = fit_pair_to_context(tok, query, "Four.", "Five.", 1500, policy="truncate", style="mtbench")
    assert got.num_tokens <= 1500
    assert "So what is the answer?" in got.text and "ctx0 " not in got.text
    assert "Four." in got.text and "Five." in got.text
    assert f"[User Question]\n{CUT_MARK} " in got.text
    release = fit_pair_to_context(tok, query, "Four.", "Five.", 1500, policy="truncate")
    assert f"## Query\n\n{CUT_MARK} " in release.text and release.text.endswith("<|assistant|>\n")


@pytest.mark.parametrize("policy", ["skip", "error"])
def test_skip_and_error_raise_with_token_counts(make_tokenizer, policy):
    tok = make_tokenizer(R1_TEMPLATE)
    r1, r2 = _words(300, "alpha"), _words(300, "beta")
    full = fit_pair_to_context(tok, "Q?", r1, r2, 100_000)
    with pytest.raises(PromptTooLongError) as err:
        fit_pair_to_context(tok, "Q?", r1, r2, 200, policy=policy, where="pairs.jsonl row 7: ")
    msg = str(err.value)
    assert isinstance(err.value, ValueError)
    assert msg.startswith("pairs.jsonl row 7: ") and f"judge.over_length={policy}" in msg
    assert f"{full.num_tokens} tokens" in msg and "judge.max_prompt_tokens is 200" in msg
    assert f"response 1 {_count(tok, r1)}" in msg and f"response 2 {_count(tok, r2)}" in msg
    assert (err.value.num_tokens, err.value.limit) == (full.num_tokens, 200)
    # it crosses from a judge actor to the driver (pickled) with its message and counts
    back = pickle.loads(pickle.dumps(err.value))
    assert (str(back), back.num_tokens, back.limit) == (msg, full.num_tokens, 200)


def test_truncate_raises_when_template_alone_does_not_fit(make_tokenizer):
    tok = make_tokenizer(PLAIN_TEMPLATE)
    with pytest.raises(PromptTooLongError, match=r"judge\.max_prompt_tokens=50"):
        fit_pair_to_context(tok, "Q?", _words(100, "a"), _words(100, "b"), 50, policy="truncate")


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"max_prompt_tokens": 0}, "positive int"),
        ({"max_prompt_tokens": 100, "policy": "reject"}, "over_length must be one of"),
        ({"max_prompt_tokens": 100, "mode": "fast"}, "judge mode"),
    ],
)
def test_fit_rejects_bad_settings(make_tokenizer, kwargs, match):
    with pytest.raises(ValueError, match=match):
        fit_pair_to_context(make_tokenizer(None), "q", "a", "b", **kwargs)
