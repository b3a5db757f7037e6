"""The package as a whole: a cheap import, a true README, a CI that runs the README's tests."""

from __future__ import annotations

import ast
import json
import os
import re
import shlex
import subprocess
import sys
import time
from pathlib import Path

import nbmonitor
from nbmonitor.cli import TIME_FORMAT
from nbmonitor.events import Event
from nbmonitor.record import Origin, StackFrame
from nbmonitor.repo import Repo
from nbmonitor.templates import SAMPLE, describe

from .helpers import ROOT, Proc, child_env
from .servers import free_port

HEAVY = ("IPython", "ipywidgets", "jupyter_server", "requests", "pynvml", "psutil", "filelock")


def test_import_nbmonitor_pulls_in_nothing_heavy() -> None:
    code = f"import sys, nbmonitor; print([m for m in {HEAVY!r} if m in sys.modules])"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"


def test_the_version_lives_in_package_json_alone() -> None:
    package = json.loads((ROOT / "labextension" / "package.json").read_text())
    assert nbmonitor.__version__ == package["version"]
    assert "version =" not in (ROOT / "pyproject.toml").read_text().split("[project]")[1].split("[")[0]


def test_every_public_name_is_exported_and_real() -> None:
    for name in nbmonitor.__all__:
        assert getattr(nbmonitor, name) is not None


def readme_commands() -> list[str]:
    text = (ROOT / "README.md").read_text()
    return re.findall(r"```bash\n(.+?)\n```", text, flags=re.S)


def test_readme_has_exactly_two_setup_commands_and_ci_runs_the_test_one() -> None:
    commands = readme_commands()
    assert len(commands) == 2
    assert all("\n" not in c for c in commands)
    assert commands[1] in (ROOT / ".ci" / "run").read_text()


def test_the_main_command_opens_the_quickstart_with_the_repository_as_the_servers_root(
    tmp_path: Path,
) -> None:
    # Seen: the notebook's folder was the server's root, so the quickstart's links and the Runs
    # panel's paths did not resolve.
    main = readme_commands()[0]
    assert main.startswith("pip install '.[jupyter]' && jupyter lab ")
    jupyter = shlex.split(main.split(" && ", 1)[1])
    config = {"JUPYTER_CONFIG_DIR": str(tmp_path / "jupyter-config")}
    server = Proc(
        [*jupyter, "--no-browser", "--port", str(free_port())], tmp_path / "repo", cwd=ROOT, env=config
    )
    try:
        server.wait_for("Serving notebooks from local directory:", str(ROOT), timeout=60)
        server.wait_for("http://127.0.0.1:", "/lab/tree/notebooks/quickstart.ipynb?token=", timeout=10)
    finally:
        server.stop()


def test_the_readmes_sample_event_line_is_what_the_watcher_prints() -> None:
    text = (ROOT / "README.md").read_text()
    (sample,) = re.findall(r"of its output, for example:\n\n```text\n(.+?)\n```", text)
    stamp, line = sample[:19], sample[20:]
    time.strptime(stamp, TIME_FORMAT)  # the watcher's stamp, as it writes it
    run = SAMPLE.run.with_changes(
        id="2d5bbffa" + "0" * 24, name="hang", origin=Origin("script", path="/home/me/s1.py"), host="vm",
        pid=3426, step=3, total=10, eta=1.0,
        stack=(StackFrame("wait_for_batch", "/home/me/s1.py", 7),
               StackFrame("<module>", "/home/me/s1.py", 12)),
    )  # fmt: skip
    assert line == describe(Event("stalled", "stalled-3", run, 0.0, 3.2, 2.0, "watcher"))


def readme_examples() -> list[str]:
    return re.findall(r"```python\n(.+?)\n```", (ROOT / "README.md").read_text(), flags=re.S)


def test_every_readme_example_runs(tmp_path: Path) -> None:
    examples = readme_examples()
    assert len(examples) >= 4
    env = child_env(tmp_path / "repo") | {"NBMONITOR_CHECKPOINT_DIR": str(tmp_path / "checkpoints")}
    for example in examples:
        done = subprocess.run([sys.executable, "-c", example], env=env, capture_output=True, text=True)
        assert done.returncode == 0, f"{example}\n{done.stderr}"
    runs = {r.name: r for r in Repo(tmp_path / "repo").runs()}
    assert runs["train"].status == "finished"
    assert (runs["train"].step, runs["train"].total) == (3, 3)
    assert (runs["eval"].status, runs["eval"].step) == ("finished", 1000)
    assert (runs["fit"].status, runs["fit"].progress) == ("finished", 1000)
    assert runs["aim-style"].status == "finished"
    assert runs["gives-up"].status == "failed"
    assert (runs["shards"].status, runs["shards"].progress) == ("finished", 2000)
    assert runs["resumable"].status == "finished"
    saved = sorted(p.name.split("-")[1] for p in (tmp_path / "checkpoints" / "resumable").iterdir())
    assert saved == ["000000000099", "000000000199", "000000000299"]


def test_binder_installs_nbmonitor_with_node_for_its_lab_extension() -> None:
    environment = (ROOT / "binder" / "environment.yml").read_text()
    assert "nodejs" in environment
    post_build = ROOT / "binder" / "postBuild"
    assert os.access(post_build, os.X_OK)
    assert "pip install --no-cache-dir '.[jupyter]'" in post_build.read_text()
    assert (ROOT / "notebooks" / "quickstart.ipynb").exists()


def test_the_benchmark_script_loads_and_documents_its_command() -> None:
    # The benchmarks themselves are timed, so they never run in the test suite (benchmarks/RESULTS.md).
    done = subprocess.run(
        [sys.executable, str(ROOT / "benchmarks" / "run.py"), "--help"],
        capture_output=True,
        text=True,
        check=True,
    )
    assert "python benchmarks/run.py" in done.stdout
    assert "--quick" in done.stdout


def test_installing_enables_the_server_and_lab_extensions() -> None:
    server = subprocess.run(["jupyter", "server", "extension", "list"], capture_output=True, text=True)
    lab = subprocess.run(["jupyter", "labextension", "list"], capture_output=True, text=True)
    plain = re.sub(r"\x1b\[[0-9;]*m", "", server.stdout + server.stderr)
    # jupyter_server 2.4 (the lowest tested) says how long the import took, in a line between.
    version = re.escape(nbmonitor.__version__)
    took = r"(?:Package nbmonitor took [0-9.]+s to import\s+)?"
    validated = rf"nbmonitor enabled\s+- Validating nbmonitor\.\.\.\s+{took}nbmonitor {version} OK"
    assert re.search(validated, plain)
    plain = re.sub(r"\x1b\[[0-9;]*m", "", lab.stdout + lab.stderr)
    assert re.search(rf"nbmonitor v{version} enabled OK \(python, nbmonitor\)", plain)


def _layers() -> dict[str, int]:
    """Each module's layer, as docs/ARCHITECTURE.md's table says."""
    text = (ROOT / "docs" / "ARCHITECTURE.md").read_text()
    layers: dict[str, int] = {}
    for number, modules in re.findall(r"^\| (\d) \|[^|]+\| (.+) \|$", text, flags=re.M):
        for module in re.findall(r"`([\w]+)`", modules):
            assert module not in layers, f"{module} is in two layers"
            layers[module] = int(number)
    return layers


def _imports(path: Path) -> set[str]:
    """The nbmonitor modules ``path`` imports, at the top or inside a function."""
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.level == 1:
            found |= {node.module.split(".")[0]} if node.module else {a.name for a in node.names}
    return found


def test_imports_go_one_way_as_the_architecture_page_says() -> None:
    layers = _layers()
    modules = {p.stem for p in (ROOT / "nbmonitor").glob("*.py")}
    assert set(layers) == modules, "every module is in exactly one layer of docs/ARCHITECTURE.md"
    for module in sorted(modules):
        for imported in _imports(ROOT / "nbmonitor" / f"{module}.py"):
            assert layers[imported] <= layers[module], (
                f"{module} (layer {layers[module]}) imports {imported} (layer {layers[imported]})"
            )


def test_every_test_cited_in_the_reliability_table_exists() -> None:
    text = (ROOT / "docs" / "RELIABILITY.md").read_text()
    cited = re.findall(r"`(?:tests/)?(test_\w+\.py)(?:::(\w+))?", text)
    assert len(cited) > 30
    for module, name in cited:
        source = (ROOT / "tests" / module).read_text()
        if name and not name.endswith("_"):
            assert f"def {name}(" in source, f"{module}::{name} is cited but does not exist"
