import json

import pytest

from droidspeak import metrics, tasks
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
