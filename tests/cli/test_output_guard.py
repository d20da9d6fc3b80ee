"""The CLI refuses every output-over-input case that the Python API refuses, with the same text:
exit 2 and one `error:` line (the API side: tests/test_api.py, whose cases these mirror)."""

from __future__ import annotations

import pytest
from test_api import CASES, EXISTS, OVER, digest, inputs  # noqa: F401,F811  (inputs: the fixture)

from adaptermerge import AdapterMergeError
from adaptermerge.cli.main import main

# id (as in test_api.CASES) -> argv(inputs); --force is added for the forced runs
ARGV = {
    "adapter folder": lambda i: ["linear", i.a, i.c, "-o", i.a],
    "bare file": lambda i: ["linear", i.bare_a, i.bare_c, "--alpha", "8,2", "-o", i.bare_a],
    "inside an input": lambda i: ["linear", i.a, i.c, "-o", i.a / "sub"],
    "above an input": lambda i: ["linear", i.a, i.c, "-o", i.root],
    "base folder, adapter output": lambda i: ["linear", i.a, i.c, "--base", i.base, "-o", i.base],
    "base folder, model output": lambda i: ["linear", i.a, "--base", i.base, "--output", "model", "-o", i.base],
    "inside the base, model output": lambda i: ["linear", i.a, "--base", i.base, "--output", "model", "-o", i.base / "m"],
    "adapter folder, model output": lambda i: ["linear", i.a, "--base", i.base, "--output", "model", "-o", i.a],
    "base folder, requantized": lambda i: ["linear", i.a, "--base", i.base, "--output", "model", "--requantize", "nf4", "-o", i.base],
    "quantize over its input": lambda i: ["quantize", i.base, "--scheme", "int8", "-o", i.base],
    "quantize into its input": lambda i: ["quantize", i.base, "--scheme", "int8", "-o", i.base / "q"],
}
API = {case[0]: case[1] for case in CASES}


def run(argv) -> int:
    with pytest.raises(SystemExit) as info:
        main([str(a) for a in argv])
    return info.value.code


@pytest.mark.parametrize("force", [False, True], ids=["no force", "force"])
@pytest.mark.parametrize("case", list(ARGV))
def test_the_cli_refuses_what_the_api_refuses_with_the_same_line(inputs, capsys, case, force):
    before = digest(inputs.root)
    with pytest.raises(AdapterMergeError) as info:
        API[case](inputs, force)
    assert run(ARGV[case](inputs) + (["--force"] if force else [])) == 2
    err = capsys.readouterr().err.strip()
    assert err == f"error: {info.value}", err  # one line, the API's text
    assert digest(inputs.root) == before


@pytest.mark.parametrize("force", [False, True], ids=["no force", "force"])
def test_a_yaml_config_refuses_an_input_as_its_output(inputs, tmp_path, capsys, force):
    config = tmp_path / "merge.yaml"
    config.write_text(f"merge_method: linear\nmodels:\n  - model: {inputs.a}\n  - model: {inputs.c}\nout: {inputs.a}\n")
    before = digest(inputs.root)
    assert run(["merge", config] + (["--force"] if force else [])) == 2
    expected = OVER.format(out=inputs.a, given=inputs.a) if force else EXISTS.format(out=inputs.a)
    assert capsys.readouterr().err.strip() == f"error: {expected}"
    assert digest(inputs.root) == before
