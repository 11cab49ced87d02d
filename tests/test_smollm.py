"""Integration tests on the real SmolLM2-135M-Instruct (and a shipped variant), fp32."""

import json
import shutil
import subprocess
import sys

import pytest
import torch

from droidspeak import RecomputePlan, capture, full_prefill, layout, partial_prefill
from droidspeak.core.decode import greedy, stop_ids
from droidspeak.errors import DroidspeakError, IncompatibleModelsError, UnknownModelError, WeightFileError
from droidspeak.models import load_model, resolve
from droidspeak.paths import REPO_DIR as REPO

pytestmark = pytest.mark.smollm
ATOL = 1e-4
CONTEXT = (
    "Meeting notes, harbour committee.\n"
    + " ".join(f"Item {i}: the committee reviewed berth {i * 7 % 31} and the tide tables for week {i}." for i in range(18))
)
REQUEST = "Which berth was reviewed in item 5? Answer briefly."


def _process(*args, timeout=300):
    """The command in a process of its own: where the process's whole output is the point (one-line errors)."""
    return subprocess.run([sys.executable, "-m", "droidspeak", *args], capture_output=True, text=True, timeout=timeout)


def _cli(*args):
    """The command through the CLI's own entry point in this process, its output and exit status as a process's:
    the models this session loaded are not read again."""
    import contextlib
    import io
    import traceback

    from droidspeak.cli.main import main

    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        try:
            code = main([str(a) for a in args])
        except SystemExit as e:  # argparse's own errors
            code = e.code if isinstance(e.code, int) else 1
        except Exception:  # what a process would die of: its traceback on stderr
            traceback.print_exc()
            code = 1
    return subprocess.CompletedProcess(args, code, out.getvalue(), err.getvalue())


def _generate(m, ids, n):
    out = m.model.generate(torch.tensor([ids]), attention_mask=torch.ones(1, len(ids), dtype=torch.long),
                           max_new_tokens=n, do_sample=False, eos_token_id=None,
                           pad_token_id=m.tokenizer.pad_token_id or 0)
    return out[0, len(ids):].tolist()


def test_base_is_smollm2(smol_base):
    f = smol_base.family
    assert (f.num_layers, f.hidden_size, f.num_heads, f.num_kv_heads, f.head_dim) == (30, 576, 9, 3, 64)
    assert f.vocab_size == 49152 and smol_base.spec.kind == "base"


def test_layout_context_is_true_prefix(smol_base):
    tok = smol_base.tokenizer
    p = layout(tok, CONTEXT, REQUEST)
    rendered = tok.apply_chat_template([{"role": "user", "content": CONTEXT}, {"role": "user", "content": REQUEST}],
                                       tokenize=False, add_generation_prompt=True)
    assert tok.decode(p.ids) == rendered
    q = layout(tok, CONTEXT, "A different request entirely?")
    assert p.prefix == q.prefix and p.suffix != q.suffix


@pytest.mark.parametrize("with_suffix", [True, False], ids=["with-suffix", "prompt-is-prefix"])
def test_all_recomputed_equals_variant_full_prefill(smol_base, smol_variant, with_suffix):
    p = layout(smol_base.tokenizer, CONTEXT, REQUEST)
    suffix = list(p.suffix) if with_suffix else []
    cap = capture(smol_base, list(p.prefix))
    full = full_prefill(smol_variant, list(p.prefix) + suffix)
    part = partial_prefill(smol_variant, cap, RecomputePlan.all(30), suffix, assemble_all=True)
    assert torch.max(torch.abs(full.logits - part.logits)) <= ATOL
    got = greedy(smol_variant, part, 16)
    assert got == _generate(smol_variant, list(p.prefix) + suffix, 16)
    # the base's cache alone would not do: full reuse changes the variant's logits
    none = partial_prefill(smol_variant, cap, RecomputePlan.none(30), suffix)
    assert torch.max(torch.abs(full.logits - none.logits)) > 100 * ATOL


@pytest.mark.parametrize("with_suffix", [True, False], ids=["with-suffix", "prompt-is-prefix"])
def test_same_model_nothing_recomputed_equals_full_prefill(smol_base, with_suffix):
    p = layout(smol_base.tokenizer, CONTEXT, REQUEST)
    suffix = list(p.suffix) if with_suffix else []
    cap = capture(smol_base, list(p.prefix))
    full = full_prefill(smol_base, list(p.prefix) + suffix)
    part = partial_prefill(smol_base, cap, RecomputePlan.none(30), suffix)
    assert torch.max(torch.abs(full.logits - part.logits)) <= ATOL
    got = greedy(smol_base, part, 16)
    assert got == _generate(smol_base, list(p.prefix) + suffix, 16)


def test_stop_ids_include_im_end(smol_base):
    assert smol_base.tokenizer.convert_tokens_to_ids("<|im_end|>") in stop_ids(smol_base.tokenizer)


def test_models_json_lists_one_family():
    r = _cli("models", "--json")
    assert r.returncode == 0, r.stderr
    rows = json.loads(r.stdout)
    names = {x["name"] for x in rows}
    assert "smollm2-135m-instruct" in names
    assert {"smollm2-qa", "smollm2-code", "smollm2-toolcall"} <= names
    smol = [x for x in rows if x["name"] == "smollm2-135m-instruct" or x["parent"] == "smollm2-135m-instruct"]
    assert len({x["family"] for x in smol}) == 1  # the base and its variants: one family
    assert len({x["identity"] for x in rows}) == len(rows)
    assert all(x["parent"] == "smollm2-135m-instruct" for x in rows if x["kind"] in ("lora", "alora")
               and x["name"].startswith("smollm2"))
    # every shipped profile is bound to the shipped weights (a variant retrained without re-profiling
    # fails here), and a profile marked exact says what the contract proves from the weights now
    by_name = {x["name"]: x for x in rows}
    checked = 0
    for f in sorted((REPO / "profiles").glob("*.json")):
        prof = json.loads(f.read_text())
        if prof["sender"] not in by_name or prof["receiver"] not in by_name:
            continue  # a family not installed here (Gemma without `make setup-gemma`)
        checked += 1
        assert prof["sender_identity"] == by_name[prof["sender"]]["identity"], f.name
        assert prof["receiver_identity"] == by_name[prof["receiver"]]["identity"], f.name
        proven = {c["with"]: c for c in by_name[prof["receiver"]]["cache_compatible"]}
        if prof.get("exact"):
            assert proven[prof["sender"]]["plan"] == prof["chosen_plan"], f.name
        else:
            assert prof["sender"] not in proven, f"{f.name}: a profiled pair that the weights prove exact"
    assert checked >= 5


def test_unknown_model_is_one_line():
    r = _process("compat", "--sender", "base", "--receiver", "no-such-model")
    assert r.returncode == 2
    assert r.stderr.count("\n") == 1 and "unknown model 'no-such-model'" in r.stderr
    assert "smollm2-135m-instruct" in r.stderr and "Traceback" not in r.stderr
    with pytest.raises(UnknownModelError):
        resolve("no-such-model")


def _variant_dir():
    from droidspeak.models import BASE_NAME, shipped_variants

    vs = [v for v in shipped_variants() if v.parent == BASE_NAME]  # a SmolLM2 variant (not Gemma's)
    if not vs:
        pytest.skip("no shipped variants")
    return vs[0].path


def test_corrupt_adapter_names_the_file(tmp_path):
    d = tmp_path / "broken"
    shutil.copytree(_variant_dir(), d)
    w = d / "adapter_model.safetensors"
    w.write_bytes(w.read_bytes()[: w.stat().st_size // 2])  # truncated
    with pytest.raises(WeightFileError, match="adapter_model.safetensors"):
        load_model(str(d))
    r = _cli("compat", "--sender", "base", "--receiver", str(d))
    assert r.returncode == 2 and "truncated" in r.stderr and "Traceback" not in r.stderr
    # intact files whose LoRA merges into NaN: refused in one line, never served as NaN logits
    from safetensors.torch import load_file, save_file

    shutil.copytree(_variant_dir(), d, dirs_exist_ok=True)
    t = load_file(str(w))
    k = next(k for k in sorted(t) if "lora_B" in k)
    t[k][0, 0] = float("nan")
    save_file(t, str(w))
    with pytest.raises(WeightFileError, match="non-finite"):
        load_model(str(d))


def test_corrupt_model_dir_names_the_file(tmp_path, smol_base):
    d = tmp_path / "fullmodel"
    d.mkdir()
    (d / "config.json").write_text(smol_base.model.config.to_json_string())
    (d / "model.safetensors").write_bytes(b"\x10\x00\x00\x00\x00\x00\x00\x00{not a header")
    with pytest.raises(WeightFileError, match="model.safetensors"):
        load_model(str(d))


def test_same_name_new_weights_new_identity(tmp_path, smol_base):
    from safetensors.torch import load_file, save_file

    d = tmp_path / "adapter"
    shutil.copytree(_variant_dir(), d)
    first = load_model(str(d)).identity
    w = d / "adapter_model.safetensors"
    t = load_file(str(w))
    k = sorted(t)[0]
    t[k] = t[k] + 0.01
    save_file(t, str(w))
    second = load_model(str(d)).identity
    assert first != second


def test_loaded_models_share_the_base_weights_and_never_change_them(smol_base):
    """Each load is a module of its own over one copy of the base's weights: merging a LoRA, freezing or
    replacing a weight leave the next load's weights the base's; an in-place write into the shared weights
    makes the next load read them from disk again."""
    from droidspeak.models.loaded import summarize

    def same_bytes(m):
        return summarize(m.model, m.family).identity == smol_base.identity

    a, b = load_model("base"), load_model("base")
    pa, pb = dict(a.model.named_parameters()), dict(b.model.named_parameters())
    assert all(pa[k] is not pb[k] and pa[k].data_ptr() == pb[k].data_ptr() for k in pa)  # own objects, one storage
    assert a.model.lm_head.weight is a.model.model.embed_tokens.weight  # the tie survives the copy
    merged = load_model("smollm2-qa")  # a LoRA merged into its own copy of the projections
    q = "model.layers.0.self_attn.q_proj.weight"
    assert merged.model.get_parameter(q).data_ptr() != pa[q].data_ptr()
    from droidspeak.models.loading import attach_adapters

    peft, ((name, _),) = attach_adapters(load_model("base"), [resolve("smollm2-qa")])
    delta = peft.base_model.model.model.layers[0].self_attn.q_proj.get_delta_weight(name)
    assert torch.equal(merged.model.get_parameter(q), pa[q] + delta)  # the base's weight plus the LoRA's product
    a.model.model.layers[0].mlp.up_proj.weight = torch.nn.Parameter(torch.zeros(1))
    a.model.requires_grad_(False)
    assert same_bytes(load_model("base")) and pb["model.norm.weight"].requires_grad
    w = pb["model.layers.3.self_attn.v_proj.weight"]
    kept = w.detach().clone()
    with torch.no_grad():
        w.add_(1.0)  # a holder writes into the shared storage (every holder sees it: load_model's docstring)
    try:
        fresh = load_model("base")
        assert fresh.model.model.layers[3].self_attn.v_proj.weight.data_ptr() != w.data_ptr() and same_bytes(fresh)
    finally:
        with torch.no_grad():
            w.copy_(kept)  # this session's other holders (smol_base) get their bits back


def test_a_weight_summary_is_remembered_per_file_version(tmp_path, smol_base, monkeypatch):
    """A model directory's weights are hashed once per version of its files: the next process reads the summary
    back; files written again (same size, other bytes) or a damaged memo are hashed anew, and files written again
    while a process runs are read again by its next load."""
    from safetensors.torch import load_file, save_file

    import droidspeak.models.loaded as loaded_mod
    from droidspeak.models import loading
    from droidspeak.testing.tiny import tiny_model

    monkeypatch.setenv("DROIDSPEAK_HOME", str(tmp_path / "home"))
    d = tmp_path / "tiny-hf"
    tiny_model(0, vocab_size=smol_base.family.vocab_size).model.save_pretrained(str(d), safe_serialization=True)
    smol_base.tokenizer.save_pretrained(str(d))
    first = load_model(str(d))
    assert len(list((tmp_path / "home" / "summaries").glob("*.json"))) == 1
    hashed = []
    real = loaded_mod.summarize
    monkeypatch.setattr(loaded_mod, "summarize", lambda m, f: hashed.append(1) or real(m, f))

    def fresh():  # as a new process would load it
        loading._BASE_CACHE.pop((str(d), torch.float32))
        return load_model(str(d))

    assert fresh().weights == first.weights and hashed == []  # read back, not hashed
    w = d / "model.safetensors"
    t = load_file(str(w))
    k = next(x for x in sorted(t) if x.endswith("q_proj.weight"))
    t[k] = t[k] + 0.01
    save_file(t, str(w), metadata={"format": "pt"})
    again = load_model(str(d))  # this process too reads the new files, never its copy of the old ones
    assert hashed == [1] and again.identity != first.identity and again.weights.layers[1:] == first.weights.layers[1:]
    assert not torch.equal(again.model.get_parameter(k), first.model.get_parameter(k))
    assert fresh().identity == again.identity and hashed == [1]  # the new version is remembered in turn
    for memo in (tmp_path / "home" / "summaries").glob("*.json"):
        memo.write_text("{not json")
    assert fresh().identity == again.identity and hashed == [1, 1]


def test_a_directory_summary_ties_the_head_as_loading_does(tmp_path, smol_base):
    """A tied model's directory summarized from its files (what vLLM keys by) equals its loaded summary, whether
    its files leave the head out, hold a copy of the embedding, or hold a head of its own (loaded untied)."""
    from safetensors.torch import load_file, save_file

    from droidspeak.models.loading import summarize_dir
    from droidspeak.testing.tiny import tiny_model

    seen = set()
    for how in ("left out", "a copy", "its own"):
        d = _tiny_dir(tmp_path, how.replace(" ", "-"), tiny_model(0, vocab_size=smol_base.family.vocab_size).model,
                      smol_base.tokenizer)
        w = d / "model.safetensors"
        t = load_file(str(w))
        assert "lm_head.weight" not in t
        if how != "left out":
            t["lm_head.weight"] = t["model.embed_tokens.weight"] + (0.5 if how == "its own" else 0.0)
            save_file(t, str(w), metadata={"format": "pt"})
        loaded = load_model(str(d))
        assert summarize_dir(d)[1] == loaded.weights, how
        seen.add(loaded.identity)
    assert len(seen) == 2  # a copy is the same model as none; a head of its own is another


def test_adapter_for_another_base_is_refused(tmp_path, smol_base):
    from peft import LoraConfig, get_peft_model

    from droidspeak.testing.tiny import tiny_model

    tiny = tiny_model(0)
    peft = get_peft_model(tiny.model, LoraConfig(r=4, target_modules=["q_proj", "v_proj"]))
    d = tmp_path / "tiny-adapter"
    peft.save_pretrained(str(d))
    with pytest.raises(IncompatibleModelsError, match="does not fit base"):
        load_model(str(d))
    # and an adapter whose recorded base identity is another model's
    d2 = tmp_path / "renamed"
    shutil.copytree(_variant_dir(), d2)
    meta = json.loads((d2 / "droidspeak.json").read_text())
    meta["base_identity"] = "0" * 32
    (d2 / "droidspeak.json").write_text(json.dumps(meta))
    with pytest.raises(IncompatibleModelsError, match="trained on base"):
        load_model(str(d2))


def test_reuse_cli_json(tmp_path):
    ctx = tmp_path / "doc.txt"
    ctx.write_text(CONTEXT)
    r = _cli("reuse", "--sender", "base", "--receiver", "smollm2-qa", "--context", str(ctx), "--prompt", REQUEST,
             "--plan", "all", "--max-new-tokens", "8", "--json")
    assert r.returncode == 0, r.stderr
    d = json.loads(r.stdout)
    for key in ("answer", "full_answer", "ttft_s", "full_ttft_s", "recomputed_layers", "first_token_kl",
                "answer_f1_vs_full"):
        assert key in d
    assert d["recomputed_layers"] == list(range(30))
    assert d["answer"] == d["full_answer"] and d["first_token_kl"] < 1e-6


def test_sensitivity_study_machinery(smol_base):
    """Sender == receiver: reusing any single layer changes nothing, so every layer scores 1.0."""
    from droidspeak.harness import study
    from droidspeak.tasks import Example

    rows = [Example(CONTEXT[:120], REQUEST, None)]  # short: 31 plans x 30 layers run on it
    res = study.sensitivity(smol_base, smol_base, rows, metric=None, max_new_tokens=4, progress=False)
    assert len(res["layers"]) == 30 and res["critical_layers"] == []
    assert all(x["agreement_f1"] == 1.0 and x["first_token_kl"] < 1e-6 for x in res["layers"])
    assert study.critical_block(res) == "none"  # nothing to recompute when sender == receiver


def test_demo_runs_end_to_end():
    r = _cli("demo", "--tokens", "400", "--max-new-tokens", "4")
    assert r.returncode == 0, r.stderr[-2000:]
    assert "TTFT shared" in r.stdout and "smollm2-qa" in r.stdout
    assert all(f"[{t}] base" in r.stdout for t in ("qa", "toolcall", "code"))  # each task's own document
    assert r.stdout.count("   base    : ") == r.stdout.count("   shared  : ") > 0  # the base's answer beside each


def test_hf_directory_of_another_family_is_refused(tmp_path, smol_base):
    """A Hugging Face model directory loads by path; a different family is refused with the reason."""
    from droidspeak.testing.tiny import tiny_model

    d = tmp_path / "tiny-hf"
    tiny = tiny_model(0, vocab_size=smol_base.family.vocab_size)
    tiny.model.save_pretrained(str(d), safe_serialization=True)
    smol_base.tokenizer.save_pretrained(str(d))
    other = load_model(str(d))
    assert other.spec.kind == "full" and other.family.num_layers == 6
    r = _cli("compat", "--sender", "base", "--receiver", str(d))
    assert r.returncode == 1
    assert "different model families" in r.stdout and "layer count differs (30 vs 6)" in r.stdout
    ctx = tmp_path / "doc.txt"
    ctx.write_text(CONTEXT)
    r = _cli("reuse", "--sender", "base", "--receiver", str(d), "--context", str(ctx), "--prompt", "x")
    assert r.returncode == 2 and "may not share caches" in r.stderr and "Traceback" not in r.stderr


def test_fresh_home_converts_the_gguf_once_and_errors_stay_one_line(tmp_path, smol_base):
    """A fresh DROIDSPEAK_HOME: the first command converts the GGUF (its progress bars included) and a bad
    plan is still exactly one line on stderr; the next load reuses the converted copy untouched, with the
    identity of the model converted elsewhere."""
    import os

    env = {**os.environ, "DROIDSPEAK_HOME": str(tmp_path)}
    ctx = tmp_path / "ctx.txt"
    ctx.write_text("hello")
    r = subprocess.run([sys.executable, "-m", "droidspeak", "reuse", "--sender", "base", "--receiver", "base",
                        "--context", str(ctx), "--prompt", "x", "--plan", "3:99"],
                       capture_output=True, text=True, env=env, timeout=600)
    assert r.returncode == 2 and "outside the model's layers" in r.stderr
    assert r.stderr.count("\n") == 1 and "Traceback" not in r.stderr, r.stderr
    converted = list((tmp_path / "models").glob("*/model.safetensors"))
    assert len(converted) == 1, "the command converted the GGUF in the fresh home"
    before = converted[0].stat()
    code = ("import json; from droidspeak.models import BASES, BASE_NAME, load_model; "
            "from droidspeak.models.gguf import converted_dir; m = load_model('base'); "
            "print(json.dumps({'id': m.identity, 'dir': str(converted_dir(BASES[BASE_NAME]))}))")
    run = json.loads(subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env,
                                    timeout=600, check=True).stdout.strip().splitlines()[-1])
    assert run["id"] == smol_base.identity
    assert __import__("pathlib").Path(run["dir"]) == converted[0].parent
    after = converted[0].stat()
    assert (after.st_ino, after.st_mtime_ns) == (before.st_ino, before.st_mtime_ns), "converted again"


def test_profile_and_eval_cli_on_smollm(tmp_path):
    """`droidspeak profile` writes a profile with plots; `eval` applies it; another pair is refused."""
    out = tmp_path / "p.json"
    r = _cli("profile", "--sender", "base", "--receiver", "smollm2-qa", "--n", "1", "--min-tokens", "200",
             "--max-tokens", "260", "--granularity", "6", "--max-new-tokens", "6", "--search-budget", "2",
             "--out", str(out), "--json")
    assert r.returncode == 0, r.stderr[-2000:]
    prof = json.loads(r.stdout)
    assert prof["quality"]["mode"] == "label-free"
    assert (tmp_path / "p.frontier.png").stat().st_size > 1000 and (tmp_path / "p.sensitivity.png").exists()
    assert prof["data"]["task"] == "qa" and prof["data"]["split"] == "calib"
    # the verified drop, recomputed independently by `eval` (its own captures, partial prefills and decoding)
    # on the very rows the profile was measured on
    r = _cli("eval", "--sender", "base", "--receiver", "smollm2-qa", "--plan", f"profile:{out}", "--n", "1",
             "--split", "calib", "--label-free", "--min-tokens", "200", "--max-tokens", "260", "--max-new-tokens", "6",
             "--json")
    assert r.returncode == 0, r.stderr[-2000:]
    again = json.loads(r.stdout)
    assert again["relative_drop"] == pytest.approx(prof["chosen"]["relative_drop"], abs=1e-9)
    assert again["relative_drop_full_reuse"] == pytest.approx(prof["full_reuse"]["relative_drop"], abs=1e-9)
    r = _cli("eval", "--sender", "base", "--receiver", "smollm2-qa", "--plan", f"profile:{out}", "--n", "1",
             "--min-tokens", "200", "--max-tokens", "260", "--max-new-tokens", "6", "--json")
    assert r.returncode == 0, r.stderr[-2000:]
    ev = json.loads(r.stdout)
    for k in ("quality_full", "quality_plan", "relative_drop", "ttft_speedup", "metric", "rows"):
        assert k in ev
    assert ev["metric"] == "f1" and ev["rows"] == 1 and ev["plan"] == prof["chosen_plan"]
    r = _cli("eval", "--sender", "base", "--receiver", "smollm2-code", "--plan", f"profile:{out}", "--n", "1")
    assert r.returncode == 2 and "another pair or changed weights" in r.stderr and "Traceback" not in r.stderr


def test_two_processes_share_through_redis(tmp_path, redis_server):
    """A sender process stores through a real Redis; a receiver process in another process reuses it,
    and answers exactly as the in-process path does (the code variant: its profile reuses layers;
    the retrained QA LoRA's recomputes all 30)."""
    from droidspeak.core.prompt import layout
    from droidspeak.sharing import ShareOptions, serve_prefill
    from droidspeak.store import CacheStore, MemoryBackend

    ctx = tmp_path / "ctx.txt"
    ctx.write_text(CONTEXT * 3)
    store_args = ["--store", redis_server.url, "--namespace", "t2p"]
    r = _process("prefill", "--model", "base", "--context", str(ctx), *store_args, "--json")
    assert r.returncode == 0, r.stderr[-1500:]
    assert json.loads(r.stdout)["stored_tokens"] > 0
    r = _process("answer", "--model", "smollm2-code", "--context", str(ctx), "--prompt", REQUEST, "--max-new-tokens", "12",
             "--no-store", *store_args, "--json")
    assert r.returncode == 0, r.stderr[-1500:]
    remote = json.loads(r.stdout)
    assert remote["kind"] == "cross-model" and remote["reused_tokens"] > 0 and not remote["missing"]
    # the same, in one process, through an in-process store
    base, qa = load_model("base"), load_model("smollm2-code")
    store = CacheStore(MemoryBackend())
    serve_prefill(base, store, layout(base.tokenizer, ctx.read_text()))  # miss: stores the base's caches
    res = serve_prefill(qa, store, layout(qa.tokenizer, ctx.read_text(), REQUEST), ShareOptions(store_on_miss=False))
    toks = greedy(qa, res, 12, stop_ids(qa.tokenizer))
    assert res.info.plan == remote["plan"] and res.info.kind.value == "cross-model"
    assert qa.tokenizer.decode(toks, skip_special_tokens=True) == remote["answer"]


def _tiny_dir(tmp_path, name, model, tokenizer):
    d = tmp_path / name
    model.save_pretrained(str(d), safe_serialization=True)
    tokenizer.save_pretrained(str(d))
    return d


def test_gemma3_pair_through_the_cli(tmp_path, smol_base):
    """A Gemma 3 pair as Hugging Face directories (a tiny random one: sliding-window layers with
    their own RoPE, scaled embeddings, q/k norms): `reuse --plan all` and the same model with
    `--plan none` give the receiver's own answer, first-token KL < 1e-5."""
    from droidspeak.testing.tiny import tiny_model, tiny_variant

    vocab = smol_base.family.vocab_size
    sender = tiny_model(0, arch="gemma3", vocab_size=vocab)
    receiver = tiny_variant(sender, seed=1)
    ds = _tiny_dir(tmp_path, "gemma-sender", sender.model, smol_base.tokenizer)
    dr = _tiny_dir(tmp_path, "gemma-receiver", receiver.model, smol_base.tokenizer)
    ctx = tmp_path / "doc.txt"
    ctx.write_text(CONTEXT)  # ~500 tokens: well past the tiny model's 24-token sliding window
    for s, r, plan in ((ds, dr, "all"), (ds, ds, "none"), (dr, dr, "none")):
        out = _cli("reuse", "--sender", str(s), "--receiver", str(r), "--context", str(ctx), "--prompt", REQUEST,
                   "--plan", plan, "--max-new-tokens", "8", "--json")
        assert out.returncode == 0, out.stderr[-2000:]
        d = json.loads(out.stdout)
        assert d["answer"] == d["full_answer"] and d["first_token_kl"] < 1e-5, (plan, d)
        assert d["context_tokens"] > 300
    out = _cli("compat", "--sender", str(ds), "--receiver", str(dr), "--json")
    assert out.returncode == 0 and json.loads(out.stdout)["ok"]


def test_unknown_architecture_is_refused_in_one_line(tmp_path, smol_base):
    """An architecture the model surface does not know: refused by the compatibility contract before
    anything runs, with one line naming it."""
    from transformers import GPT2Config, GPT2LMHeadModel

    cfg = GPT2Config(vocab_size=smol_base.family.vocab_size, n_positions=1024, n_embd=64, n_layer=2, n_head=4)
    d = _tiny_dir(tmp_path, "gpt2-tiny", GPT2LMHeadModel(cfg), smol_base.tokenizer)
    ctx = tmp_path / "doc.txt"
    ctx.write_text(CONTEXT)
    r = _cli("compat", "--sender", str(d), "--receiver", str(d))
    assert r.returncode == 1 and "GPT2LMHeadModel is not supported" in r.stdout
    for args in (("--sender", str(d), "--receiver", str(d)), ("--sender", "base", "--receiver", str(d))):
        r = _process("reuse", *args, "--context", str(ctx), "--prompt", "x", "--plan", "all")
        assert r.returncode == 2 and r.stderr.count("\n") == 1 and "Traceback" not in r.stderr, r.stderr
        assert "GPT2LMHeadModel is not supported" in r.stderr


def test_a_base_and_four_variants_decode_together_as_each_alone():
    """The server's engine on SmolLM2: the base, two activated adapters, a LoRA and a top-layer LoRA
    on one shared copy of the base decode in one batch over one shared context (exact hits, same-model
    hits, a profiled or full prefill); every greedy answer equals that model's own generate (PEFT,
    adapters unmerged, a model of its own)."""
    from droidspeak.serving.config import Settings
    from droidspeak.serving.engine import Engine
    from droidspeak.serving.host import ModelHost
    from droidspeak.serving.request import Request, Status
    from droidspeak.store import open_store
    from droidspeak.tasks import generate

    names = ["smollm2-135m-instruct", "smollm2-qa-alora", "smollm2-toolcall-alora", "smollm2-code",
             "smollm2-code-top20"]
    host = ModelHost(names, packed=True)  # the batch's base projections on oneDNN's packed weights
    eng = Engine(host, open_store("memory:1GB"), Settings(max_batch=8))
    tok = host.get(names[0]).loaded.tokenizer
    row = generate("qa", "heldout", 1, tok, seed=9, lengths=(700, 700))[0]
    reqs = [Request(n, layout(tok, row.context, f"{row.prompt} ({n})"), 8, ignore_eos=True) for n in names]
    eng.submit(reqs[0])
    while reqs[0].status == Status.WAITING or reqs[0].status == Status.PREFILLING:
        eng.step()  # the base prefills (and stores) the context first; the others then reuse it
    for r in reqs[1:]:
        eng.submit(r)
    widest = 0
    while any(r.status != Status.FINISHED for r in reqs):
        eng.step()
        widest = max([widest] + [len(g.reqs) for g in eng.scheduler.decode_groups()])
    assert widest >= 4
    assert {r.reuse.kind.value for r in reqs[1:]} >= {"exact-cross-model"}
    for r in reqs:
        own = load_model(r.model, merge=False)
        ids = torch.tensor([r.prompt.ids])
        with torch.inference_mode():  # PEFT's own generate (it finds an activated adapter's invocation itself)
            want = own.model.generate(input_ids=ids, attention_mask=torch.ones_like(ids), max_new_tokens=8,
                                      do_sample=False, eos_token_id=None, pad_token_id=tok.eos_token_id)
        assert r.out == want[0, ids.shape[1]:].tolist(), r.model


def test_variants_eval_adds_columns_on_the_same_rows(tmp_path, capsys, smol_base):
    """`variants eval --add-to FILE` runs only the new variant, on that evaluation's rows, and keeps its
    columns; other rows, a variant already there, or a file that is no evaluation are one-line errors."""
    from droidspeak.training.variants import evaluate

    first = evaluate(["smollm2-qa-alora"], n=1, progress=False, lengths=(300, 500))
    both = evaluate(["smollm2-qa-top20"], n=1, progress=False, lengths=(300, 500), add_to=first)
    assert both["variants"] == ["smollm2-qa-alora", "smollm2-qa-top20"] and both["rows"] == first["rows"] == 1
    old, new = first["per_row"][0], both["per_row"][0]
    assert {k: new[k] for k in old} == old  # the earlier columns (and the base's) kept as they were
    assert set(new) - set(old) == {"smollm2-qa-top20", "smollm2-qa-top20_answer"}
    assert both["scores"]["base"] == first["scores"]["base"]
    # how each was trained travels with the result (the report reads it, not adapters/)
    assert {k: v["adapter"] for k, v in both["trained"].items()} == {"smollm2-qa-alora": "alora",
                                                                      "smollm2-qa-top20": "top:20"}
    assert both["command"].startswith(first["command"] + "; then droidspeak variants eval smollm2-qa-top20")
    # a larger --n adds rows: the first row kept as it was, every column run on the new one
    grown = evaluate([], n=2, progress=False, lengths=(300, 500), add_to=both)
    assert grown["rows"] == 2 and grown["per_row"][0] == new and grown["variants"] == both["variants"]
    assert set(grown["per_row"][1]) == set(new) and grown["identities"] == both["identities"]
    assert grown["command"].endswith("; then droidspeak variants eval --n 2 --min-tokens 300 --max-tokens 500 "
                                     "--add-to <that result>")
    from droidspeak import tasks
    from droidspeak.training.variants import greedy_answer

    row = tasks.generate("qa", "heldout", 2, smol_base.tokenizer, lengths=(300, 500))[1]  # the new row
    assert grown["per_row"][1]["reference"] == row.reference
    m = load_model("smollm2-qa-top20")
    assert grown["per_row"][1]["smollm2-qa-top20_answer"] == greedy_answer(m.model, m.tokenizer, row.context, row.prompt, 16)
    # ... only with the models that filled the columns: by the recorded identity, else by replaying the first row
    stale = json.loads(json.dumps(both))
    stale["identities"]["smollm2-qa-alora"] = "another"
    with pytest.raises(DroidspeakError, match="not the model that filled that evaluation's 'smollm2-qa-alora'"):
        evaluate([], n=2, progress=False, lengths=(300, 500), add_to=stale)
    older = {k: v for k, v in json.loads(json.dumps(both)).items() if k != "identities"}
    older["per_row"][0]["base_answer"] += " (another model)"
    with pytest.raises(DroidspeakError, match="'base' column"):
        evaluate([], n=2, progress=False, lengths=(300, 500), add_to=older)
    out = tmp_path / "first.json"
    out.write_text(json.dumps(first))
    from droidspeak.cli.main import main

    def cli(*args):  # in this process: the models are already loaded
        capsys.readouterr()
        code = main(["variants", "eval", *args])
        return code, capsys.readouterr().err

    for extra, message in ((["smollm2-qa-top20", "--seed", "1"], "not that evaluation's rows"),
                           (["smollm2-qa-alora"], "already in that evaluation"), ([], "or an --n above")):
        code, err = cli(*extra, "--n", "1", "--min-tokens", "300", "--max-tokens", "500", "--add-to", str(out))
        assert code == 2 and message in err and err.count("\n") == 1, err[-800:]
    (tmp_path / "junk.json").write_text("[1, 2]")
    code, err = cli("smollm2-qa-top20", "--add-to", str(tmp_path / "junk.json"))
    assert code == 2 and "is not the result of" in err and "Traceback" not in err
    assert json.loads(out.read_text()) == first  # a refused addition leaves the file as it was


def test_variants_eval_stops_where_the_server_does(smol_base):
    """`variants eval` answers through Hugging Face `generate`; it stops at the end of the turn even where
    the model's generation config names another end (a converted Gemma 3's names `<eos>` only), so its
    answer is the server's greedy answer, not that answer followed by whatever comes after the turn."""
    from droidspeak.core.decode import greedy
    from droidspeak.core.prompt import layout
    from droidspeak.training.variants import greedy_answer

    tok, cfg = smol_base.tokenizer, smol_base.model.generation_config
    saved = cfg.eos_token_id
    cfg.eos_token_id = tok.convert_tokens_to_ids("<|endoftext|>")  # the turn's end <|im_end|> left out
    try:
        got = greedy_answer(smol_base.model, tok, CONTEXT, REQUEST, 24)
    finally:
        cfg.eos_token_id = saved
    own = full_prefill(smol_base, layout(tok, CONTEXT, REQUEST).ids)
    ids = greedy(smol_base, own, 24, stop_ids(tok))
    assert len(ids) < 24, "the server's answer ends before the budget (else the test shows nothing)"
    assert got == tok.decode(ids, skip_special_tokens=True)
