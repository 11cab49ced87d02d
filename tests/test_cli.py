"""The command line: help everywhere, one-line errors, no tracebacks (no model loading here)."""

import subprocess
import sys

import pytest


def _run(*args, env=None):
    return subprocess.run([sys.executable, "-m", "droidspeak", *args], capture_output=True, text=True, timeout=600,
                          env=env)


@pytest.mark.parametrize("cmd", [[], ["models"], ["compat"], ["reuse"], ["study"], ["variants"], ["data"], ["demo"],
                                 ["variants", "train"], ["variants", "eval"], ["variants", "export-vllm"],
                                 ["profile"], ["eval"], ["store-server"], ["serve"], ["prefill"], ["answer"]])
def test_help(cmd):
    r = _run(*cmd, "--help")
    assert r.returncode == 0 and "usage: droidspeak" in r.stdout


def test_bad_plan_is_one_line(tmp_path):
    """On a fresh DROIDSPEAK_HOME (the GGUF is converted during this very command, its progress
    bars included), a bad plan is still exactly one line on stderr."""
    import os

    home = tmp_path / "home"
    ctx = tmp_path / "ctx.txt"
    ctx.write_text("hello")
    r = _run("reuse", "--sender", "base", "--receiver", "base", "--context", str(ctx), "--prompt", "x",
             "--plan", "3:99", env={**os.environ, "DROIDSPEAK_HOME": str(home)})
    assert r.returncode == 2 and "outside the model's layers" in r.stderr
    assert r.stderr.count("\n") == 1 and "Traceback" not in r.stderr, r.stderr
    assert list((home / "models").glob("*/model.safetensors")), "the command converted the GGUF in the fresh home"


def test_missing_context_file():
    r = _run("reuse", "--sender", "base", "--receiver", "base", "--context", "/nonexistent", "--prompt", "x")
    assert r.returncode == 2 and "context file not found" in r.stderr


def test_unknown_variant_recipe():
    r = _run("variants", "train", "nope")
    assert r.returncode == 2 and "no training recipe for 'nope'" in r.stderr


def test_recipe_overrides_are_checked_before_training():
    """`variants train --questions/--rank/--lr` refuse what the task cannot do in one line, before loading a model."""
    for args, message in ((["smollm2-code", "--questions", "4"], "asks one request per context"),
                          (["smollm2-qa", "--questions", "0"], "--questions must be at least 1"),
                          (["smollm2-qa", "--adapter", "alora", "--rank", "0"], "--rank must be at least 1"),
                          (["smollm2-qa", "--lr", "0"], "--lr must lie between 0 and 1"),
                          (["smollm2-qa", "--lr", "3"], "--lr must lie between 0 and 1")):
        r = _run("variants", "train", *args)
        assert r.returncode == 2 and message in r.stderr and r.stderr.count("\n") == 1, r.stderr[-500:]


def test_readme_lists_the_fields_ignored_by_design():
    from droidspeak.paths import REPO_DIR
    from droidspeak.serving.schemas import ignored_table

    readme = (REPO_DIR / "README.md").read_text()
    block = readme.split("<!-- ignored:start -->")[1].split("<!-- ignored:end -->")[0]
    assert block.strip() == ignored_table().strip()


def test_readme_settings_table_is_the_settings_table():
    from droidspeak.paths import REPO_DIR
    from droidspeak.serving.config import Settings

    readme = (REPO_DIR / "README.md").read_text()
    block = readme.split("<!-- settings:start -->")[1].split("<!-- settings:end -->")[0]
    assert block.strip() == Settings.markdown()
