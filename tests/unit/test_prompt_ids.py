"""Rollout prompts reach vLLM as token ids with BOS once (issue 22: "check what our engines do").

vLLM encodes a TEXT prompt with the tokenizer's special tokens (vllm/renderers/base.py,
`default_cmpl_tok_params`: add_special_tokens=True); a chat template that writes BOS itself (Llama 3,
the DeepSeek-R1 distills the released RRMs are built on) would then start with two."""

from tokenizers import Tokenizer, models, pre_tokenizers, processors
from transformers import PreTrainedTokenizerFast

from rrm_ray.data.prompts import prompt_token_ids

BOS = 0


def bos_adding_tokenizer() -> PreTrainedTokenizerFast:
    """A word-level tokenizer that prepends BOS when asked for special tokens, as Llama's does."""
    core = Tokenizer(models.WordLevel({"<s>": BOS, "<unk>": 1, "hi": 2, "there": 3}, unk_token="<unk>"))
    core.pre_tokenizer = pre_tokenizers.Whitespace()
    core.post_processor = processors.TemplateProcessing(single="<s> $A", special_tokens=[("<s>", BOS)])
    return PreTrainedTokenizerFast(tokenizer_object=core, bos_token="<s>", unk_token="<unk>")


def test_what_vllm_would_do_to_a_template_text_doubles_bos():
    tok = bos_adding_tokenizer()
    assert tok.encode("<s> hi there") == [BOS, BOS, 2, 3]  # add_special_tokens=True, vLLM's default


def test_a_template_text_keeps_its_one_bos_and_a_plain_text_gets_one():
    tok = bos_adding_tokenizer()
    assert prompt_token_ids(tok, "<s> hi there") == [BOS, 2, 3]
    assert prompt_token_ids(tok, "hi there") == [BOS, 2, 3]


def test_a_tokenizer_that_adds_nothing_is_unchanged():
    """SmolLM2 (the tests' and the demo's tokenizer): what vLLM encoded before is what it gets now."""
    from transformers import AutoTokenizer

    from rrm_ray.models import ensure_smollm2

    tok = AutoTokenizer.from_pretrained(str(ensure_smollm2()))
    for text in (tok.apply_chat_template([{"role": "user", "content": "x"}], tokenize=False), "2 + 2 ="):
        assert prompt_token_ids(tok, text) == tok.encode(text)
