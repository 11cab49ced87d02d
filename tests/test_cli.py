"""The command line: help everywhere, one-line errors, no tracebacks (no model loading here)."""

import json
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


def test_missing_context_file():
    r = _run("reuse", "--sender", "base", "--receiver", "base", "--context", "/nonexistent", "--prompt", "x")
    assert r.returncode == 2 and "context file not found" in r.stderr


def test_unknown_variant_recipe():
    r = _run("variants", "train", "nope")
    assert r.returncode == 2 and "no training recipe for 'nope'" in r.stderr


def test_recipe_overrides_are_checked_before_training():
    """`variants train --questions/--rank/--lr` refuse what the task cannot do in one line, before loading a model
    (the five commands run in one interpreter, each through the CLI's entry point with its own stderr)."""
    cases = ((["smollm2-code", "--questions", "4"], "asks one request per context"),
             (["smollm2-qa", "--questions", "0"], "--questions must be at least 1"),
             (["smollm2-qa", "--adapter", "alora", "--rank", "0"], "--rank must be at least 1"),
             (["smollm2-qa", "--lr", "0"], "--lr must lie between 0 and 1"),
             (["smollm2-qa", "--lr", "3"], "--lr must lie between 0 and 1"))
    code = ("import contextlib, io, json, sys; from droidspeak.cli import main; out = []\n"
            "for a in json.loads(sys.argv[1]):\n"
            "    err = io.StringIO()\n"
            "    with contextlib.redirect_stderr(err): rc = main(['variants', 'train', *a])\n"
            "    out.append([rc, err.getvalue()])\n"
            "print(json.dumps(out))")
    r = subprocess.run([sys.executable, "-c", code, json.dumps([a for a, _ in cases])], capture_output=True, text=True,
                       timeout=600)
    assert r.returncode == 0, r.stderr[-2000:]
    for (args, message), (rc, stderr) in zip(cases, json.loads(r.stdout.strip().splitlines()[-1])):
        assert rc == 2 and message in stderr and stderr.count("\n") == 1, (args, stderr[-500:])


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
