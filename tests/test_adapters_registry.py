"""Backbone adapters through the plugin registry, in-process (no installs).

The built-in LLaVA adapter comes from vtprune's own ``llava`` entry point; other adapters are
plugin objects registered on a private :class:`Registry` that stands in for the process-wide
one. tests/test_plugins.py installs the example plugin's adapter for real.
"""

from __future__ import annotations

import json
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
import torch

import vtprune
from vtprune import cli
from vtprune.backbones import (
    AdapterSpec,
    BackboneAdapter,
    UnsupportedModelError,
    adapter_specs,
    attach,
    find_adapter,
    get_adapter,
    list_adapters,
    llava,
    register_adapter,
    unregister_adapter,
)
from vtprune.backbones import base as backbones_base
from vtprune.core import PluginError, Registry, UnknownNameError, default_registry
from vtprune.strategies import baselines, stages

EXAMPLE_SRC = Path(__file__).resolve().parents[1] / "examples" / "vtprune-example-plugin" / "src"


class Widget(torch.nn.Module):
    """A model class no built-in adapter drives."""


class Gadget(Widget):
    pass


def make_adapter(adapter_name: str, model_cls: type = Widget) -> type[BackboneAdapter]:
    class Adapter(BackboneAdapter):
        """A stub adapter: supports one model class, drives nothing."""

        name = adapter_name

        @classmethod
        def supports(cls, model: Any) -> bool:
            return isinstance(model, model_cls)

        num_layers = 2  # type: ignore[assignment]
        grid = (2, 2)  # type: ignore[assignment]

        def visual_spans(self, input_ids: torch.Tensor) -> torch.Tensor:
            return torch.zeros_like(input_ids, dtype=torch.bool)

        def signals(self, layer: int | None) -> frozenset[str]:
            return frozenset()

        def install(self, handle: Any) -> None:
            pass

        def remove(self) -> None:
            pass

    Adapter.__qualname__ = f"Adapter[{adapter_name}]"
    return Adapter


def adapter_plugin(*specs: AdapterSpec) -> SimpleNamespace:
    @vtprune.hookimpl
    def vtprune_adapters() -> list[AdapterSpec]:
        return list(specs)

    return SimpleNamespace(vtprune_adapters=vtprune_adapters)


@pytest.fixture
def registry(monkeypatch: pytest.MonkeyPatch) -> Registry:
    """The built-in strategies and LLaVA adapter, standing in for the process-wide registry."""
    reg = Registry()
    for module, name in ((stages, "stages"), (baselines, "baselines"), (llava, "llava")):
        reg.register(module, name=name, distribution="vtprune", version="0.1.0")
    monkeypatch.setattr(backbones_base, "default_registry", lambda: reg)
    monkeypatch.setattr(cli.registry, "default_registry", lambda: reg)
    return reg


# -- the built-in adapter is a plugin of vtprune's own distribution ---------------------------


def test_builtin_llava_adapter_comes_from_the_llava_entry_point() -> None:
    real = default_registry()
    assert "hf-llava" in real.names("adapter")
    assert real.source("adapter", "hf-llava") == "vtprune (plugin 'llava')"
    (info,) = [p for p in real.plugins() if p.name == "llava"]
    assert info.provides == {"adapter": ["hf-llava"]} and info.module == "vtprune.backbones.llava"
    spec = real.spec("adapter", "hf-llava")
    assert spec.adapter is llava.LlavaAdapter
    assert spec.models == ("LlavaForConditionalGeneration", "LlavaModel")
    assert "hf-llava" in list_adapters()
    assert get_adapter("hf-llava") is llava.LlavaAdapter


def test_no_import_side_effect_registers_an_adapter() -> None:
    # importing vtprune.backbones(.llava) registered nothing in this process
    assert not [name for name, src in adapter_specs() if src == backbones_base.EXPLICIT_SOURCE]
    assert "register_adapter" not in Path(llava.__file__).read_text()


# -- the spec ------------------------------------------------------------------------------------


def test_adapter_spec_checks_its_fields_and_fills_the_description() -> None:
    cls = make_adapter("widget")
    spec = AdapterSpec("widget", cls, models="Widget")
    assert spec.models == ("Widget",)  # one class name given as a string
    assert spec.description == "A stub adapter: supports one model class, drives nothing."
    assert AdapterSpec("widget", cls, description="mine").description == "mine"
    with pytest.raises(vtprune.ContractError, match="adapter name 'Widget Adapter' is invalid"):
        AdapterSpec("Widget Adapter", cls)
    with pytest.raises(vtprune.ContractError, match="BackboneAdapter subclass"):
        AdapterSpec("widget", cls(Widget()))  # type: ignore[arg-type]
    with pytest.raises(vtprune.ContractError, match="class names"):
        AdapterSpec("widget", cls, models=(Widget,))  # type: ignore[arg-type]


def test_hook_returning_something_else_is_an_error_naming_the_distribution(registry: Registry) -> None:
    @vtprune.hookimpl
    def vtprune_adapters() -> list[Any]:
        return [make_adapter("widget")]  # a class, not an AdapterSpec

    registry.register(SimpleNamespace(vtprune_adapters=vtprune_adapters), name="raw", distribution="raw-dist")
    with pytest.raises(PluginError, match=r"vtprune_adapters of raw-dist .* expected AdapterSpec"):
        list_adapters()


# -- lookup --------------------------------------------------------------------------------------


def test_plugin_adapters_are_listed_after_the_builtin_with_their_sources(registry: Registry) -> None:
    widget = make_adapter("widget")
    registry.register(adapter_plugin(AdapterSpec("widget", widget, models=("Widget",))),
                      name="widget_plugin", distribution="widget-dist", version="1.0")
    assert list_adapters() == ["hf-llava", "widget"]
    assert [src for _, src in adapter_specs()] == [
        "vtprune (plugin 'llava')", "widget-dist (plugin 'widget_plugin')"
    ]
    assert registry.names("adapter") == ["hf-llava", "widget"]
    assert {p.name: p.provides for p in registry.plugins()}["widget_plugin"] == {"adapter": ["widget"]}


def test_adapter_lookup_ignores_case_and_suggests_close_names(registry: Registry) -> None:
    widget = make_adapter("widget")
    registry.register(adapter_plugin(AdapterSpec("widget", widget)), name="w", distribution="w-dist")
    assert get_adapter("WIDGET") is widget and get_adapter("HF-LLaVA") is llava.LlavaAdapter
    assert registry.spec("adapter", "Widget").adapter is widget
    with pytest.raises(UnknownNameError, match="Did you mean 'widget'"):
        registry.spec("adapter", "widgit")
    with pytest.raises(UnknownNameError, match="Registered adapters: hf-llava, widget"):
        get_adapter("gizmo")


def test_attach_finds_a_plugin_adapter_for_its_model_class(registry: Registry) -> None:
    widget = make_adapter("widget")
    registry.register(adapter_plugin(AdapterSpec("widget", widget, models=("Widget",))),
                      name="w", distribution="w-dist")
    assert find_adapter(Gadget()) is widget  # supports() decides: subclasses too
    handle = attach(Widget(), "uniform", keep=0.5)
    assert isinstance(handle.adapter, widget) and handle.schedule.counts(4) == [2]


def test_unsupported_model_names_every_registered_adapter_and_its_models(registry: Registry) -> None:
    registry.register(adapter_plugin(AdapterSpec("widget", make_adapter("widget"), models=("Widget",))),
                      name="w", distribution="w-dist")
    with pytest.raises(UnsupportedModelError) as err:
        attach(torch.nn.Linear(2, 2), "random")
    message = str(err.value)
    assert "no vtprune backbone adapter supports Linear" in message
    assert "hf-llava (LlavaForConditionalGeneration, LlavaModel); widget (Widget)" in message
    assert "Writing an adapter plugin" in message


def test_no_adapter_at_all_hints_at_a_stale_install(monkeypatch: pytest.MonkeyPatch) -> None:
    empty = Registry()
    monkeypatch.setattr(backbones_base, "default_registry", lambda: empty)
    with pytest.raises(UnsupportedModelError, match="Registered adapters: none .*entry points"):
        find_adapter(Widget())


# -- duplicates, conflicts, precedence -------------------------------------------------------------


def test_two_plugins_registering_one_adapter_name_is_an_error_naming_both(registry: Registry) -> None:
    registry.register(adapter_plugin(AdapterSpec("widget", make_adapter("widget"))),
                      name="one", distribution="dist-one")
    registry.register(adapter_plugin(AdapterSpec("widget", make_adapter("widget"))),
                      name="two", distribution="dist-two")
    with pytest.raises(PluginError, match="adapter name 'widget' is registered twice.*dist-one.*dist-two"):
        list_adapters()


def test_a_plugin_reusing_the_builtin_adapter_name_is_an_error(registry: Registry) -> None:
    registry.register(adapter_plugin(AdapterSpec("hf-llava", make_adapter("hf-llava"))),
                      name="rival", distribution="rival-dist")
    with pytest.raises(PluginError, match=r"'hf-llava' is registered twice: by vtprune \(plugin 'llava'\)"):
        find_adapter(Widget())


def test_two_plugin_adapters_claiming_one_model_is_an_error_naming_both(registry: Registry) -> None:
    registry.register(adapter_plugin(AdapterSpec("widget", make_adapter("widget"))),
                      name="one", distribution="dist-one")
    registry.register(adapter_plugin(AdapterSpec("gadget", make_adapter("gadget", Gadget))),
                      name="two", distribution="dist-two")
    assert find_adapter(Widget()).name == "widget"  # only one claims a plain Widget
    with pytest.raises(PluginError, match="2 adapters support Gadget: 'widget' from dist-one.*'gadget' "
                       "from dist-two.*VTPRUNE_BLOCK_PLUGINS"):
        find_adapter(Gadget())
    register_adapter(get_adapter("gadget"))  # the documented way to pick one
    assert find_adapter(Gadget()).name == "gadget"


def test_an_adapter_whose_supports_raises_is_reported_by_its_source(registry: Registry) -> None:
    class Crashing(make_adapter("crash")):  # type: ignore[misc, valid-type]
        @classmethod
        def supports(cls, model: Any) -> bool:
            raise RuntimeError("boom")

    registry.register(adapter_plugin(AdapterSpec("crash", Crashing)), name="c", distribution="crash-dist")
    with pytest.raises(PluginError, match=r"adapter 'crash' from crash-dist \(plugin 'c'\): "
                       r"supports\(Widget\) raised RuntimeError: boom"):
        find_adapter(Widget())


def test_explicitly_registered_adapters_come_first_and_hide_a_plugin_namesake(registry: Registry) -> None:
    plugin_widget = make_adapter("widget")
    registry.register(adapter_plugin(AdapterSpec("widget", plugin_widget)), name="w", distribution="w-dist")
    mine = register_adapter(make_adapter("widget"))
    assert find_adapter(Widget()) is mine and get_adapter("widget") is mine
    assert list_adapters() == ["widget", "hf-llava"]
    assert adapter_specs()[0][1] == "register_adapter (this process)"
    unregister_adapter("widget")
    assert find_adapter(Widget()) is plugin_widget


def test_register_adapter_still_checks_its_argument(registry: Registry) -> None:
    with pytest.raises(TypeError, match="BackboneAdapter subclass with a name"):
        register_adapter(Widget)  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="'My Adapter' is invalid"):
        register_adapter(make_adapter("My Adapter"))


def test_plugin_spec_must_name_a_backbone_adapter_of_the_same_name(registry: Registry) -> None:
    class NotAnAdapter:
        @classmethod
        def supports(cls, model: Any) -> bool:
            return False

    registry.register(adapter_plugin(AdapterSpec("fake", NotAnAdapter)), name="fake", distribution="fake-dist")
    with pytest.raises(PluginError, match="'fake' from fake-dist .* not a vtprune.backbones.BackboneAdapter"):
        list_adapters()


def test_plugin_spec_name_must_equal_the_class_name(registry: Registry) -> None:
    registry.register(adapter_plugin(AdapterSpec("other", make_adapter("widget"))), name="o", distribution="o-dist")
    with pytest.raises(PluginError, match="is named 'widget'; the spec's name and the class's `name`"):
        list_adapters()


# -- the example plugin's adapter, registered in-process -------------------------------------------


def test_the_example_toy_adapter_prunes_through_attach(
    registry: Registry, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.syspath_prepend(str(EXAMPLE_SRC))
    from vtprune_example import ToyVLM, adapter

    registry.register(adapter, name="toy_vlm", distribution="vtprune-example-plugin")
    model = ToyVLM().eval()
    patches, ids = torch.randn(3, 24, 12), torch.randint(0, 32, (3, 4))
    reference = model(patches, ids)
    with attach(model, "random", keep=6) as handle:
        pruned = model(patches, ids)
    assert handle.adapter.name == "toy-vlm" and handle.records[0].counts.tolist() == [6, 6, 6]
    assert pruned.shape == reference.shape and not torch.allclose(pruned, reference)
    assert torch.equal(model(patches, ids), reference)


# -- vtprune adapters ------------------------------------------------------------------------------


def test_cli_adapters_lists_name_distribution_and_model_classes(
    registry: Registry, capsys: pytest.CaptureFixture[str]
) -> None:
    registry.register(adapter_plugin(AdapterSpec("widget", make_adapter("widget"), models=("Widget", "Gadget"))),
                      name="w", distribution="widget-dist", version="1.0")
    assert cli.main(["adapters"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].split() == ["adapter", "from", "models", "description"]
    assert lines[1].split()[:4] == ["hf-llava", "vtprune", "LlavaForConditionalGeneration,", "LlavaModel"]
    assert lines[2].split()[:4] == ["widget", "widget-dist", "Widget,", "Gadget"]
    assert lines[2].endswith("A stub adapter: supports one model class, drives nothing.")
    assert cli.main(["adapters", "--json"]) == 0
    records = json.loads(capsys.readouterr().out)
    assert records[0] == {
        "name": "hf-llava", "models": ["LlavaForConditionalGeneration", "LlavaModel"],
        "description": llava.vtprune_adapters()[0].description,
        "class": "vtprune.backbones.llava.LlavaAdapter", "source": "vtprune (plugin 'llava')",
    }
    assert records[1]["source"] == "widget-dist (plugin 'w')"


def test_cli_adapters_reports_a_conflict_as_an_error_message(
    registry: Registry, capsys: pytest.CaptureFixture[str]
) -> None:
    registry.register(adapter_plugin(AdapterSpec("hf-llava", make_adapter("hf-llava"))),
                      name="clash", distribution="clash-dist")
    assert cli.main(["adapters"]) == 1
    out, err = capsys.readouterr()
    assert out == "" and err.startswith("vtprune: error: adapter name 'hf-llava' is registered twice")


def test_cli_adapters_on_the_real_registry(capsys: pytest.CaptureFixture[str]) -> None:
    assert cli.main(["adapters"]) == 0
    out = capsys.readouterr().out
    (row,) = [ln for ln in out.splitlines() if ln.startswith("hf-llava ")]
    assert "vtprune" in row and "LlavaForConditionalGeneration, LlavaModel" in row
