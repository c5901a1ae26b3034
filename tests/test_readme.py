"""The README stays true: its two commands exist, CI runs the test one, the demo's commands name
real entry points and presets, and its op and model examples run."""

import pathlib
import re
import subprocess
import sys

ROOT = pathlib.Path(__file__).resolve().parents[1]
README = (ROOT / "README.md").read_text()


def _section(title: str) -> str:
    start = README.index(f"## {title}")
    nxt = README.find("\n## ", start + 3)
    return README[start: nxt if nxt > 0 else None]


def _make_commands(target: str) -> list[str]:
    out = subprocess.run(["make", "-n", target], cwd=ROOT, capture_output=True, text=True,
                         check=True).stdout
    return [line for line in out.splitlines() if "-m experiments." in line]


def test_two_commands_and_ci():
    assert "make demo" in README and "make test" in README
    assert "make test" in (ROOT / ".ci" / "run").read_text()


def test_demo_commands_parse():
    """Each command of `make demo` accepts its arguments (checked with --help-free dry parsing)."""
    cmds = _make_commands("demo")
    assert any("experiments.train" in c for c in cmds) and any("experiments.probe" in c for c in cmds)
    preset = re.search(r"--preset (\S+)", " ".join(cmds)).group(1)
    import research.train as rt

    rt.get_preset(preset)  # the demo's preset exists
    from experiments import probe
    from research.probes import PROBES

    probe_cmd = next(c for c in cmds if "experiments.probe" in c)
    args = probe._parser().parse_args(probe_cmd.split("experiments.probe", 1)[1].split())
    assert set(args.probe) <= set(PROBES)


def _python_blocks(text: str) -> list[str]:
    return re.findall(r"```python\n(.*?)```", text, flags=re.S)


def test_op_and_model_examples_run():
    code = "\n".join(_python_blocks(_section("The ops")) + _python_blocks(_section("The models")))
    assert "pk.gla" in code and "research.LanguageModel" in code
    env = {"JAX_PLATFORMS": "cpu"}
    import os

    env.update({k: v for k, v in os.environ.items() if k not in env})
    subprocess.run([sys.executable, "-c", code], cwd=ROOT, check=True, env=env, timeout=600)
