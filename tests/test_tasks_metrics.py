import json

import pytest

from droidspeak import quality as metrics
from droidspeak import tasks
from droidspeak.errors import DroidspeakError
from droidspeak.tasks import code, qa, toolcall


def test_token_f1():
    assert metrics.token_f1("The Korrin", "korrin") == 1.0
    assert metrics.token_f1("born in Korrin city", "Korrin") == pytest.approx(0.4)  # P=1/4, R=1
    assert metrics.token_f1("nothing", "Korrin") == 0.0


def test_edit_similarity_takes_first_code_line():
    assert metrics.edit_similarity("```python\nreturn x + 1\n```", "return x + 1") == 1.0
    assert 0 < metrics.edit_similarity("return x", "return x + 1") < 1


def test_call_fields():
    ref = toolcall.reference_call("refund_order", {"order_id": "A-1", "product": "kettle", "quantity": 3, "city": "Oslo"})
    assert metrics.call_fields(ref, ref) == 1.0
    partial = json.dumps({"name": "refund_order", "arguments": {"order_id": "A-1", "product": "lamp"}})
    assert metrics.call_fields("Sure: " + partial, ref) == pytest.approx(2 / 5)
    assert metrics.call_fields("no json here", ref) == 0.0


def test_rouge_l_uses_rouge_score():
    assert metrics.rouge_l("the cat sat", "the cat sat") == pytest.approx(1.0)


def test_kl_zero_for_equal_logits():
    import torch

    x = torch.randn(50)
    assert metrics.kl_divergence(x, x) == pytest.approx(0.0, abs=1e-9)
    assert metrics.kl_divergence(x, -x) > 0


@pytest.mark.parametrize("gen", [qa.generate, toolcall.generate])
def test_splits_use_different_templates_and_seeds(gen):
    rows = {s: gen(s, 3, tokenizer=None, lengths=(300, 300)) for s in tasks.SPLITS}
    prompts = {s: {r.prompt.split(":")[0] for r in rows[s]} for s in rows}
    assert not (prompts["train"] & prompts["heldout"]) and not (prompts["calib"] & prompts["heldout"])
    assert rows["train"][0].context != rows["heldout"][0].context
    for s in rows:
        for r in rows[s]:
            assert r.reference and (r.reference in r.context or r.task == "toolcall")


def test_generators_are_deterministic():
    a = qa.generate("heldout", 2, None, seed=3, lengths=(200, 200))
    b = qa.generate("heldout", 2, None, seed=3, lengths=(200, 200))
    assert [r.to_json() for r in a] == [r.to_json() for r in b]


def test_code_splits_share_no_source_file():
    files = {s: {p.as_posix() for p in code.source_files(s)} for s in tasks.SPLITS}
    assert files["train"] and files["heldout"] and files["calib"]
    assert not (files["train"] & files["heldout"]) and not (files["train"] & files["calib"])
    assert not (files["calib"] & files["heldout"])


def test_jsonl_roundtrip_and_errors(tmp_path):
    rows = toolcall.generate("calib", 2, None, lengths=(200, 200))
    f = tmp_path / "rows.jsonl"
    tasks.write_jsonl(rows, f)
    back = tasks.read_jsonl(f)
    assert [r.to_json() for r in back] == [r.to_json() for r in rows]
    (tmp_path / "bad.jsonl").write_text('{"context": "x"}\n')
    with pytest.raises(DroidspeakError, match="bad.jsonl:1"):
        tasks.read_jsonl(tmp_path / "bad.jsonl")
    with pytest.raises(DroidspeakError, match="not found"):
        tasks.read_jsonl(tmp_path / "missing.jsonl")


def test_server_chat_prompt_follows_the_layout_rule():
    """The server's conversation layout gives exactly the CLI's tokens for [user: context, user: request]
    (so a context one stored is a hit for the other), and splits any conversation before its last turn."""
    from droidspeak.core.prompt import PromptTokens, chat_prompt, layout

    class Tok:  # a chat tokenizer in miniature: characters as tokens, a template like SmolLM2's
        chat_template = "x"

        def apply_chat_template(self, msgs, tokenize=False, add_generation_prompt=False):
            text = "".join(f"<{m['role']}>{m['content']}</>" for m in msgs) + ("<assistant>" if add_generation_prompt else "")
            return [ord(c) for c in text] if tokenize else text

        def __call__(self, text, add_special_tokens=True):
            return {"input_ids": [ord(c) for c in text]}

    tok = Tok()
    p = layout(tok, "the context", "the request")
    assert chat_prompt(tok, [{"role": "user", "content": "the context"}, {"role": "user", "content": "the request"}]) == p
    conv = [{"role": "system", "content": "s"}, {"role": "user", "content": "a"}, {"role": "assistant", "content": "b"},
            {"role": "user", "content": "c"}]
    got = chat_prompt(tok, conv)
    assert "".join(map(chr, got.prefix)).endswith("<assistant>b</>") and "".join(map(chr, got.suffix)) == "<user>c</><assistant>"
    one = chat_prompt(tok, [{"role": "user", "content": "only"}])
    assert one == PromptTokens(tuple(ord(c) for c in "<user>only</><assistant>"), ())

    class Plain:  # a base model's tokenizer: no chat template (Gemma 3 270M)
        chat_template = None
        bos = 1

        def __call__(self, text, add_special_tokens=True):
            return {"input_ids": ([self.bos] if add_special_tokens else []) + [ord(c) for c in text]}

    plain = Plain()
    two = [{"role": "user", "content": "the context"}, {"role": "user", "content": "the request"}]
    assert chat_prompt(plain, two) == layout(plain, "the context", "the request")
    assert chat_prompt(plain, [{"role": "user", "content": "hi"}]) == PromptTokens((1, *map(ord, "hi\n")), ())


class _Alternating:
    """A tokenizer in miniature whose template alternates roles strictly, like Gemma's."""
    chat_template = "x"

    def apply_chat_template(self, msgs, tokenize=False, add_generation_prompt=False):
        if any(a["role"] == b["role"] for a, b in zip(msgs, msgs[1:])):
            raise ValueError("Conversation roles must alternate user/assistant/user/assistant/...")
        return "".join(f"<t>{m['content']}<e>" for m in msgs) + ("<m>" if add_generation_prompt else "")

    def __call__(self, text, add_special_tokens=True):
        return {"input_ids": [ord(c) for c in text]}


def test_chat_prompt_for_a_template_that_refuses_two_user_turns():
    """A chat of [user: context, user: request] to a model whose template alternates roles strictly is
    laid out as the CLI lays it out (one turn, split where the context ends), not refused."""
    from droidspeak.core.prompt import chat_prompt, layout

    tok = _Alternating()
    two = [{"role": "user", "content": "the context"}, {"role": "user", "content": "the request"}]
    assert chat_prompt(tok, two) == layout(tok, "the context", "the request")
    bad = [{"role": "assistant", "content": "a"}, {"role": "assistant", "content": "b"}]
    with pytest.raises(ValueError, match="alternate"):
        chat_prompt(tok, bad)


def test_layout_for_a_template_that_refuses_two_user_turns():
    """Gemma's template alternates roles strictly: the request joins the context's turn, and the prefix
    ends where the context does (still a true token prefix of every request on that context)."""
    from droidspeak.core.prompt import layout

    tok = _Alternating()
    a, b = layout(tok, "shared doc", "first?"), layout(tok, "shared doc", "second?")
    assert a.prefix == b.prefix and "".join(map(chr, a.prefix)) == "<t>shared doc"
    assert "".join(map(chr, a.prefix + a.suffix)) == "<t>shared doc\n\nfirst?<e><m>"
