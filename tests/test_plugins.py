"""Third-party plugin discovery, end to end: real installs into a temporary directory.

The example plugin (``examples/vtprune-example-plugin``) is pip-installed once per session into
a temporary ``--target`` directory; small fake distributions (a ``*.dist-info`` with
``METADATA`` and ``entry_points.txt`` plus a module) are written next to it by hand. Every
check runs in a subprocess with ``PYTHONPATH`` pointing there, so the project venv is never
touched and each process discovers plugins from scratch.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
EXAMPLE = ROOT / "examples" / "vtprune-example-plugin"
EXAMPLE_DIST = "vtprune-example-plugin"
PLUGIN_ENV = ("VTPRUNE_PLUGINS", "VTPRUNE_BLOCK_PLUGINS", "VTPRUNE_STRICT_PLUGINS")


def write_fake_dist(
    target: Path, dist: str, version: str, entry_points: dict[str, str], modules: dict[str, str]
) -> None:
    """A minimal installed distribution: ``{dist}-{version}.dist-info`` plus its modules."""
    info = target / f"{dist.replace('-', '_')}-{version}.dist-info"
    info.mkdir(parents=True)
    (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {dist}\nVersion: {version}\n")
    lines = "".join(f"{name} = {module}\n" for name, module in entry_points.items())
    (info / "entry_points.txt").write_text(f"[vtprune]\n{lines}")
    for module, source in modules.items():
        (target / f"{module}.py").write_text(textwrap.dedent(source))


BROKEN_MODULE = """
    import vtprune_dependency_that_is_not_installed  # noqa: F401  (simulated broken plugin)
"""

RIVAL_MODULE = """
    import vtprune

    @vtprune.hookimpl
    def vtprune_strategies():
        return [vtprune.StrategySpec("center_saliency", "random", "global", "topk")]
"""

# A plugin whose entry-point *name* equals a built-in one ("stages"): it must still load.
SAME_EP_NAME_MODULE = """
    import vtprune

    @vtprune.hookimpl
    def vtprune_strategies():
        return [vtprune.StrategySpec("norm_topk", "feature_norm", "global", "topk",
                                     description="largest feature norms")]
"""


# An adapter plugin whose module fails to import: a warning, never a crash.
BROKEN_ADAPTER_MODULE = """
    import vtprune
    import vtprune_adapter_dependency_that_is_not_installed  # noqa: F401

    @vtprune.hookimpl
    def vtprune_adapters():
        return []
"""

# A second distribution registering the example's adapter name.
RIVAL_ADAPTER_MODULE = """
    import vtprune
    from vtprune.backbones import AdapterSpec
    from vtprune_example.adapter import ToyVLMAdapter

    @vtprune.hookimpl
    def vtprune_adapters():
        return [AdapterSpec("toy-vlm", ToyVLMAdapter, models=("ToyVLM",))]
"""


# A plugin whose strategy names a selector nobody registers ("top_k" for "topk"), next to a
# correct strategy of its own: only the first may go missing.
TYPO_MODULE = """
    import vtprune

    @vtprune.hookimpl
    def vtprune_strategies():
        return [vtprune.StrategySpec("edge", "feature_norm", "global", "top_k"),
                vtprune.StrategySpec("edge_norm", "feature_norm", "global", "topk")]
"""


@pytest.fixture(scope="session")
def site(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The example plugin installed (no deps, no network) into a temporary target directory.

    pip builds in the source tree, so it builds from a copy to keep the checkout clean.
    """
    base = tmp_path_factory.mktemp("plugins")
    source = base / "source"
    shutil.copytree(EXAMPLE, source, ignore=shutil.ignore_patterns("build", "*.egg-info", "__pycache__"))
    return pip_install(source, base / "site")


def pip_install(source: Path, target: Path) -> Path:
    """``pip install`` the package at ``source`` into ``target`` (no deps, no network) and
    return ``target``."""
    cmd = [
        sys.executable, "-m", "pip", "install", "--quiet", "--no-deps", "--no-build-isolation",
        "--no-index", "--disable-pip-version-check", "--target", str(target), str(source),
    ]
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, f"installing {source.name} failed:\n{done.stderr}"
    return target


@pytest.fixture(scope="session")
def broken_site(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A distribution whose plugin module fails to import, and one reusing the name 'stages'."""
    target = tmp_path_factory.mktemp("broken")
    write_fake_dist(
        target, "vtprune-broken-plugin", "0.3.0",
        {"broken": "vtprune_broken_plugin"}, {"vtprune_broken_plugin": BROKEN_MODULE},
    )
    write_fake_dist(
        target, "vtprune-same-ep-name", "2.0.0",
        {"stages": "vtprune_same_ep_name"}, {"vtprune_same_ep_name": SAME_EP_NAME_MODULE},
    )
    return target


@pytest.fixture(scope="session")
def broken_adapter_site(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A distribution whose adapter plugin fails to import."""
    target = tmp_path_factory.mktemp("broken_adapter")
    write_fake_dist(
        target, "vtprune-broken-adapter", "0.0.1",
        {"broken_adapter": "vtprune_broken_adapter"}, {"vtprune_broken_adapter": BROKEN_ADAPTER_MODULE},
    )
    return target


def plugin_env(paths: list[Path], **env: str) -> dict[str, str]:
    """The environment of a fresh interpreter that sees ``paths`` and this checkout's ``src``
    (first, so that a worktree tests its own code, not the venv's editable install), with
    no plugin-selection variables but those in ``env``."""
    full_env = {k: v for k, v in os.environ.items() if k not in PLUGIN_ENV}
    full_env.update(env)
    full_env["PYTHONPATH"] = os.pathsep.join(str(p) for p in [ROOT / "src", *paths])
    return full_env


def run_python(code: str, paths: list[Path], **env: str) -> dict:
    """Run ``code`` in a fresh interpreter with ``PYTHONPATH=paths``; it prints one JSON object."""
    full_env = plugin_env(paths, **env)
    done = subprocess.run(
        [sys.executable, "-c", textwrap.dedent(code)],
        capture_output=True, text=True, env=full_env, timeout=300,
    )
    assert done.returncode == 0, f"subprocess failed:\n{done.stdout}\n{done.stderr}"
    return json.loads(done.stdout.strip().splitlines()[-1])


DISCOVER = """
    import contextlib, io, json, warnings
    import torch
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        import vtprune
        strategies = vtprune.list_strategies()
    from vtprune.cli import main
    text, js = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(text):
        main(["plugins"])
    with contextlib.redirect_stdout(js):
        main(["plugins", "--json"])

    # A hybrid: the plugin's scorer, built-in allocator and selector, FastV's placement.
    # The example's adapter, found through its entry point; the CLI lists it.
    from vtprune.backbones import adapter_specs, attach
    from vtprune_example import ToyVLM
    adapters_text, adapters_js = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(adapters_text):
        main(["adapters"])
    with contextlib.redirect_stdout(adapters_js):
        main(["adapters", "--json"])
    toy = ToyVLM().eval()
    patches, ids = torch.randn(2, 24, 12), torch.randint(0, 32, (2, 5))
    reference = toy(patches, ids)
    with attach(toy, "center_saliency", keep=0.25) as handle:
        pruned = toy(patches, ids)
    attached = {"adapter": handle.adapter.name, "counts": handle.records[0].counts.tolist(),
                "changed": not torch.allclose(pruned, reference),
                "restored": bool(torch.equal(toy(patches, ids), reference))}

    hybrid = vtprune.compose("center_saliency", "global", "topk", schedule="fastv",
                             center_weight=0.5)
    torch.manual_seed(0)
    ctx = vtprune.PruneContext.create(torch.randn(2, 48, 16), grid=(6, 8), keep=0.25)
    kept = hybrid(ctx)
    scores = vtprune.get_strategy("center_saliency", center_weight=0.5).scores(ctx)
    expected = scores.topk(12, dim=1).indices.sort(dim=1).values
    print(json.dumps({
        "strategies": strategies,
        "scorers": vtprune.list_stages("scorer"),
        "warnings": [str(w.message) for w in caught
                     if type(w.message).__name__ == "PluginLoadWarning"],
        "plugins_text": text.getvalue(),
        "plugins_json": json.loads(js.getvalue()),
        "adapters": [[spec.name, source] for spec, source in adapter_specs()],
        "adapters_text": adapters_text.getvalue(),
        "adapters_json": json.loads(adapters_js.getvalue()),
        "attached": attached,
        "hybrid": {"repr": repr(hybrid), "kept": kept.indices.tolist(),
                   "expected": expected.tolist(),
                   "schedule": [[p.layer, p.keep] for p in hybrid.schedule(4, 0.5).points]},
    }))
"""


@pytest.fixture(scope="module")
def discovered(site: Path, broken_site: Path, broken_adapter_site: Path) -> dict:
    return run_python(DISCOVER, [site, broken_site, broken_adapter_site])


def test_entry_point_discovery_finds_the_example_strategy_and_stage(discovered: dict) -> None:
    assert "center_saliency" in discovered["strategies"]
    assert "center_saliency" in discovered["scorers"]
    assert {"random", "uniform", "fastv"} <= set(discovered["strategies"])  # built-ins too


def test_plugin_reusing_a_builtin_entry_point_name_still_loads(discovered: dict) -> None:
    assert "norm_topk" in discovered["strategies"]


def test_broken_plugin_warns_naming_its_distribution_and_others_load(discovered: dict) -> None:
    (message,) = [m for m in discovered["warnings"] if "'broken'" in m]
    assert "vtprune-broken-plugin" in message and "0.3.0" in message
    assert "vtprune_dependency_that_is_not_installed" in message
    assert "VTPRUNE_BLOCK_PLUGINS" in message  # tells the user what to do
    assert "center_saliency" in discovered["strategies"]


def test_plugins_listing_shows_name_version_distribution_and_provides(discovered: dict) -> None:
    by_dist = {p["distribution"]: p for p in discovered["plugins_json"]}
    by_name = {p["name"]: p for p in discovered["plugins_json"]}
    example = by_name["center_saliency"]
    assert example["distribution"] == EXAMPLE_DIST
    assert example["version"] == "0.1.0"
    assert example["module"] == "vtprune_example.plugin"
    assert example["provides"] == {"scorer": ["center_saliency"], "strategy": ["center_saliency"]}
    assert example["error"] is None
    assert by_dist["vtprune-broken-plugin"]["error"]
    assert by_name["toy_vlm"]["distribution"] == EXAMPLE_DIST
    assert by_name["toy_vlm"]["provides"] == {"adapter": ["toy-vlm"]}
    assert by_name["llava"]["provides"] == {"adapter": ["hf-llava"]}  # vtprune's own
    assert by_name["llava"]["distribution"] == "vtprune"
    line = next(ln for ln in discovered["plugins_text"].splitlines() if ln.startswith("center_saliency"))
    for part in ("center_saliency", "0.1.0", "scorer: center_saliency", "strategy: center_saliency"):
        assert part in line
    broken = next(ln for ln in discovered["plugins_text"].splitlines() if "broken" in ln)
    assert "FAILED" in broken


def test_entry_point_discovery_finds_the_example_adapter_after_the_builtin(discovered: dict) -> None:
    assert discovered["adapters"] == [
        ["hf-llava", "vtprune (plugin 'llava')"],
        ["hf-qwen2-vl", "vtprune (plugin 'qwen2_vl')"],
        ["hf-qwen3-vl", "vtprune (plugin 'qwen3_vl')"],
        ["toy-vlm", f"{EXAMPLE_DIST} (plugin 'toy_vlm')"],
    ]


def test_attach_finds_the_plugin_adapter_for_its_model_class(discovered: dict) -> None:
    assert discovered["attached"] == {
        "adapter": "toy-vlm", "counts": [6, 6], "changed": True, "restored": True
    }


def test_broken_adapter_plugin_warns_and_the_other_adapters_work(discovered: dict) -> None:
    (message,) = [m for m in discovered["warnings"] if "vtprune-broken-adapter" in m]
    assert "'broken_adapter'" in message and "vtprune_adapter_dependency_that_is_not_installed" in message
    assert [name for name, _ in discovered["adapters"]] == ["hf-llava", "hf-qwen2-vl", "hf-qwen3-vl", "toy-vlm"]
    assert discovered["attached"]["adapter"] == "toy-vlm"
    (row,) = [ln for ln in discovered["plugins_text"].splitlines() if ln.startswith("broken_adapter")]
    assert "vtprune-broken-adapter" in row and "FAILED" in row


def test_adapters_command_lists_name_distribution_and_model_classes(discovered: dict) -> None:
    lines = discovered["adapters_text"].splitlines()
    assert lines[0].split() == ["adapter", "from", "models", "description"]
    assert lines[1].split()[:2] == ["hf-llava", "vtprune"]
    assert lines[2].split()[:2] == ["hf-qwen2-vl", "vtprune"]
    assert lines[3].split()[:2] == ["hf-qwen3-vl", "vtprune"]
    assert lines[4].split()[:3] == ["toy-vlm", EXAMPLE_DIST, "ToyVLM"]
    toy = discovered["adapters_json"][3]
    assert toy["class"] == "vtprune_example.adapter.ToyVLMAdapter"
    assert toy["models"] == ["ToyVLM"] and toy["source"].startswith(EXAMPLE_DIST)
    assert toy["description"].startswith("ToyVLM: visual tokens pruned")


def test_two_distributions_registering_one_adapter_name_is_an_error_naming_both(
    site: Path, tmp_path: Path
) -> None:
    write_fake_dist(
        tmp_path, "vtprune-rival-adapter", "0.2.0",
        {"rival_adapter": "vtprune_rival_adapter"}, {"vtprune_rival_adapter": RIVAL_ADAPTER_MODULE},
    )
    code = """
        import json
        from vtprune.backbones import list_adapters
        from vtprune.core import PluginError
        try:
            print(json.dumps({"adapters": list_adapters()}))
        except PluginError as err:
            print(json.dumps({"error": str(err)}))
    """
    out = run_python(code, [site, tmp_path])
    assert "adapter name 'toy-vlm' is registered twice" in out["error"]
    assert EXAMPLE_DIST in out["error"] and "vtprune-rival-adapter" in out["error"]
    out = run_python(code, [site, tmp_path], VTPRUNE_BLOCK_PLUGINS="vtprune-rival-adapter")
    assert out == {"adapters": ["hf-llava", "hf-qwen2-vl", "hf-qwen3-vl", "toy-vlm"]}


def test_hybrid_of_plugin_stage_and_builtin_stages(discovered: dict) -> None:
    hybrid = discovered["hybrid"]
    assert "scorer='center_saliency'" in hybrid["repr"] and "selector='topk'" in hybrid["repr"]
    assert hybrid["kept"] == hybrid["expected"]  # top-12 of the plugin's scores, ascending
    assert hybrid["schedule"] == [[2, 0.5]]  # borrowed FastV's placement: before layer 2


def test_strict_mode_turns_a_broken_plugin_into_an_error(site: Path, broken_site: Path) -> None:
    out = run_python(
        """
        import json, vtprune
        try:
            vtprune.list_strategies()
            print(json.dumps({"error": None}))
        except vtprune.PluginError as err:
            print(json.dumps({"error": str(err)}))
        """,
        [site, broken_site],
        VTPRUNE_STRICT_PLUGINS="1",
    )
    assert out["error"] is not None and "vtprune-broken-plugin" in out["error"]
    assert "VTPRUNE_STRICT_PLUGINS" in out["error"] and "skipped" not in out["error"]


ENV_SCENARIOS = """
    import json, os, warnings
    import vtprune
    results = {}
    for label, env in [
        ("allow_example", {"VTPRUNE_PLUGINS": "vtprune-example-plugin"}),
        ("allow_by_entry_point", {"VTPRUNE_PLUGINS": "center_saliency"}),
        ("allow_normalised", {"VTPRUNE_PLUGINS": "Vtprune_Example.Plugin"}),
        ("allow_other", {"VTPRUNE_PLUGINS": "something-else"}),
        ("block_broken", {"VTPRUNE_BLOCK_PLUGINS": "vtprune-broken-plugin"}),
        ("block_both", {"VTPRUNE_BLOCK_PLUGINS": "broken, vtprune-example-plugin"}),
    ]:
        for var in ("VTPRUNE_PLUGINS", "VTPRUNE_BLOCK_PLUGINS"):
            os.environ.pop(var, None)
        os.environ.update(env)
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            registry = vtprune.reload_plugins()
        results[label] = {
            "strategies": registry.names("strategy"),
            "dists": sorted({p.distribution for p in registry.plugins()}),
            "warnings": len([w for w in caught
                             if type(w.message).__name__ == "PluginLoadWarning"
                             and "vtprune-broken-plugin" in str(w.message)]),
        }
    print(json.dumps(results))
"""


def test_allow_and_block_lists(site: Path, broken_site: Path) -> None:
    r = run_python(ENV_SCENARIOS, [site, broken_site])
    builtins = {"random", "uniform", "fastv"}
    for label in ("allow_example", "allow_by_entry_point", "allow_normalised"):
        assert "center_saliency" in r[label]["strategies"], label
        assert r[label]["warnings"] == 0, label  # the broken plugin was never imported
        assert "vtprune-same-ep-name" not in r[label]["dists"], label
        assert builtins <= set(r[label]["strategies"]), label  # built-ins always load
    assert "center_saliency" not in r["allow_other"]["strategies"]
    assert builtins <= set(r["allow_other"]["strategies"])
    assert r["allow_other"]["warnings"] == 0
    assert r["block_broken"]["warnings"] == 0
    assert {"center_saliency", "norm_topk"} <= set(r["block_broken"]["strategies"])
    assert r["block_both"]["warnings"] == 0
    assert "center_saliency" not in r["block_both"]["strategies"]
    assert "norm_topk" in r["block_both"]["strategies"]


def test_two_distributions_registering_one_strategy_name_is_an_error_naming_both(
    site: Path, tmp_path: Path
) -> None:
    write_fake_dist(
        tmp_path, "vtprune-rival-plugin", "1.2.0",
        {"rival": "vtprune_rival_plugin"}, {"vtprune_rival_plugin": RIVAL_MODULE},
    )
    out = run_python(
        """
        import json, vtprune
        try:
            vtprune.list_strategies()
            print(json.dumps({"error": None}))
        except vtprune.PluginError as err:
            print(json.dumps({"error": str(err)}))
        """,
        [site, tmp_path],
    )
    assert out["error"] is not None
    assert "'center_saliency'" in out["error"]
    assert EXAMPLE_DIST in out["error"] and "vtprune-rival-plugin" in out["error"]
    # Blocking one of them resolves it.
    out = run_python(
        "import json, vtprune; print(json.dumps({'n': vtprune.list_strategies()}))",
        [site, tmp_path],
        VTPRUNE_BLOCK_PLUGINS="vtprune-rival-plugin",
    )
    assert "center_saliency" in out["n"]


TYPO_SCENARIO = """
    import json, os, warnings
    import torch
    import vtprune

    def load():
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            registry = vtprune.reload_plugins()
            names = registry.names("strategy")
        return registry, names, [str(w.message) for w in caught
                                 if type(w.message).__name__ == "PluginLoadWarning"]

    os.environ["VTPRUNE_BLOCK_PLUGINS"] = "vtprune-typo-plugin"
    _, without, _ = load()
    del os.environ["VTPRUNE_BLOCK_PLUGINS"]
    registry, names, warned = load()
    builtins = [n for n in names if registry.source("strategy", n).startswith("vtprune (")]
    ctx = vtprune.PruneContext.create(torch.randn(2, 48, 16), grid=(6, 8), keep=0.25)
    counts = {n: vtprune.get_strategy(n)(ctx).counts.tolist()
              for n in ("center_saliency", "edge_norm", "uniform", "divprune")}
    try:
        vtprune.get_strategy("edge")
        error = None
    except vtprune.PluginError as err:
        error = str(err)
    import contextlib, io
    from vtprune.cli import main
    listing = io.StringIO()
    with contextlib.redirect_stdout(listing):
        main(["plugins"])
    (row,) = [ln for ln in listing.getvalue().splitlines() if ln.startswith("typo ")]
    print(json.dumps({
        "without": without, "names": names, "warned": warned, "error": error, "counts": counts,
        "row": row,
        "builtins": builtins, "built": [vtprune.get_strategy(n).name for n in builtins],
    }))
"""


def test_a_spec_naming_a_missing_stage_leaves_every_other_strategy_working(
    site: Path, tmp_path: Path
) -> None:
    write_fake_dist(
        tmp_path, "vtprune-typo-plugin", "0.0.1", {"typo": "vtprune_typo_plugin"},
        {"vtprune_typo_plugin": TYPO_MODULE},
    )
    out = run_python(TYPO_SCENARIO, [site, tmp_path])
    assert out["names"] == sorted([*out["without"], "edge_norm"])  # only "edge" is missing
    assert {"center_saliency", "altp", "fastv", "uniform"} <= set(out["names"])
    assert out["built"] == out["builtins"] and len(out["builtins"]) >= 10  # every built-in builds
    assert out["counts"] == {n: [12, 12] for n in out["counts"]}
    assert set(out["counts"]) == {"center_saliency", "edge_norm", "uniform", "divprune"}
    (warning,) = out["warned"]
    for part in ("'edge'", "vtprune-typo-plugin", "plugin 'typo'", "selector 'top_k'",
                 "Did you mean 'topk'?", "VTPRUNE_BLOCK_PLUGINS"):
        assert part in warning, part
    assert "vtprune-typo-plugin" in out["error"] and "'top_k'" in out["error"]
    assert "unavailable" in out["error"]
    assert "strategy: edge_norm; UNAVAILABLE: strategy 'edge'" in out["row"]


def test_the_example_plugins_own_test_suite_passes_when_installed(site: Path) -> None:
    """The tutorial's tests (behaviour + conformance kit) against the installed plugin."""
    source = site.parent / "source"  # the copy the plugin was built from
    done = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", str(source / "tests")],
        capture_output=True, text=True, env=plugin_env([site]), cwd=source, timeout=600,
    )
    assert done.returncode == 0, done.stdout[-4000:] + done.stderr[-2000:]
    assert " passed" in done.stdout and "failed" not in done.stdout


FENCE = re.compile(
    r"^(?:<!-- (?:excerpt(?P<norun>, not run here)?: (?P<src>\S+)|file: (?P<file>\S+)) -->\n)?"
    r"(?P<indent>[ ]*)```(?P<lang>\w*)\n(?P<body>.*?)^(?P=indent)```",
    re.S | re.M,
)


def code_blocks(markdown: Path) -> list[dict]:
    """Fenced blocks of a Markdown file: language, body, excerpt source, the file of a package
    it is (``<!-- file: PATH -->``), whether to run it (not a file, not marked "not run")."""
    blocks = []
    for m in FENCE.finditer(markdown.read_text()):
        body = textwrap.dedent(m["body"]) if m["indent"] else m["body"]
        run = not m["norun"] and not m["file"]
        blocks.append(
            {"lang": m["lang"], "body": body, "src": m["src"], "file": m["file"], "run": run}
        )
    return blocks


def printed_claims(code: str) -> list[str]:
    """What a block says it prints: the comment after a ``print(...)`` on its line, or on the
    line just below it."""
    lines = code.splitlines()
    claims = []
    for line, below in zip(lines, [*lines[1:], ""]):
        if not line.lstrip().startswith("print("):
            continue
        same = re.search(r"\)\s+# (.+)$", line)
        if same:
            claims.append(same[1])
        elif below.startswith("# "):
            claims.append(below[2:])
    return claims


RUN_BLOCKS = """
    import json, sys
    namespace = {"__name__": "__doc__"}
    blocks = json.load(open(sys.argv[1]))
    for i, code in enumerate(blocks):
        exec(compile(code, f"<block {i}>", "exec"), namespace)
    print(json.dumps({"ran": len(blocks)}))
"""


@pytest.mark.parametrize(
    "markdown",
    [ROOT / "docs" / "writing-a-plugin.md", EXAMPLE / "README.md"],
    ids=["writing-a-plugin", "example-readme"],
)
def test_docs_python_blocks_run_and_excerpts_match_the_example(
    markdown: Path, site: Path, tmp_path: Path
) -> None:
    blocks = code_blocks(markdown)
    excerpts = [b for b in blocks if b["src"]]
    for b in excerpts:
        assert b["body"] in (ROOT / b["src"]).read_text(), f"stale excerpt of {b['src']}"
    code = [b["body"] for b in blocks if b["lang"] == "python" and b["run"]]
    assert code, f"no python blocks found in {markdown}"
    script = tmp_path / "blocks.json"
    script.write_text(json.dumps(code))
    done = subprocess.run(
        [sys.executable, "-c", textwrap.dedent(RUN_BLOCKS), str(script)],
        capture_output=True, text=True, env=plugin_env([site]), cwd=tmp_path, timeout=600,
    )
    assert done.returncode == 0, f"{markdown.name}: a python block failed:\n{done.stderr[-4000:]}"
    assert json.loads(done.stdout.strip().splitlines()[-1]) == {"ran": len(code)}
    claims = [c for block in code for c in printed_claims(block)]
    assert claims, f"no print(...)  # output comments found in {markdown}"
    printed = done.stdout.splitlines()
    for claim in claims:
        assert claim in printed, f"{markdown.name}: no line {claim!r} in:\n{done.stdout}"


MINIMAL_PACKAGE_RUN = """
    import json, warnings
    import torch
    import vtprune
    from vtprune.conformance_tests import check_strategy, summarize
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # the package loads without a plugin warning
        source = vtprune.core.default_registry().source("strategy", "edge")
    valid = torch.arange(48).expand(2, 48) < torch.tensor([[48], [30]])
    ctx = vtprune.PruneContext.create(torch.randn(2, 48, 16), grid=(6, 8), keep=0.25, valid=valid)
    print(json.dumps({
        "source": source,
        "counts": vtprune.get_strategy("edge")(ctx).counts.tolist(),
        "summary": summarize(check_strategy("edge")),
    }))
"""


def test_the_guides_minimal_package_is_built_installed_and_run(tmp_path: Path) -> None:
    guide = ROOT / "docs" / "writing-a-plugin.md"
    files = {b["file"]: b["body"] for b in code_blocks(guide) if b["file"]}
    assert sorted(files) == [
        "pyproject.toml", "src/vtprune_edge/__init__.py", "src/vtprune_edge/plugin.py"
    ]
    package = tmp_path / "vtprune-edge"
    for name, body in files.items():
        (package / name).parent.mkdir(parents=True, exist_ok=True)
        (package / name).write_text(body)
    out = run_python(MINIMAL_PACKAGE_RUN, [pip_install(package, tmp_path / "site")])
    assert out["source"] == "vtprune-edge (plugin 'edge')"
    assert out["counts"] == [12, 8]  # a quarter of 48 and of 30 valid tokens
    (claimed,) = re.findall(r"^edge: .*$", guide.read_text(), re.M)
    assert out["summary"] == claimed
