"""Model families the plugin can load: transformers classes keyed on the config's ``model_type``.

A family says how to load a model and its processor from ``pretrained`` and how to turn an
lmms-eval context into the prompt text the processor expands (one ``<image>`` per image).
Families: ``llava``, ``qwen2_vl`` and ``qwen2_5_vl`` (Qwen's processor resizes each image to
its own grid, so a batch mixes visual-token counts) and the grounding stand-in. Adding one is
one more entry in :data:`FAMILIES`; ``vtprune.attach`` then decides at load time whether it
can prune it.

``pretrained`` is a local directory (``save_pretrained`` layout, nothing is downloaded when
``HF_HUB_OFFLINE=1``) or ``vtprune:grounding``: the trained grounding stand-in shipped as
package data (``vtprune.grounding``), with a processor built in code.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

GROUNDING = "vtprune:grounding"


@dataclass(frozen=True)
class Loaded:
    """A model ready for ``attach``, its processor and its prompt format.

    Attributes:
        model: the transformers model (eval mode, on ``device``).
        processor: callable as ``processor(text=[...], images=[...], return_tensors="pt",
            padding=True)``; ``processor.tokenizer`` is the tokenizer.
        prompt: context string -> full prompt text containing one image placeholder.
        family: the family's name (``llava``, ``qwen2_vl``, ``qwen2_5_vl``,
            ``vtprune_grounding``).
    """

    model: Any
    processor: Any
    prompt: Callable[[str], str]
    family: str


@dataclass(frozen=True)
class Family:
    """How to load one model family.

    Attributes:
        name: the config ``model_type`` it serves.
        load: ``(pretrained, dtype, device, attn_implementation) -> Loaded``.
        loglikelihood: whether the family can score continuations (teacher-forced ``generate``).
    """

    name: str
    load: Callable[[str, Any, str, str | None], Loaded]
    loglikelihood: bool = True


def _llava_prompt(tokenizer: Any, image_token: str) -> Callable[[str], str]:
    """The checkpoint's chat template when it has one, else LLaVA-1.5's plain format."""
    template = getattr(tokenizer, "chat_template", None)

    def prompt(context: str) -> str:
        content = context if image_token in context else f"{image_token}\n{context}"
        if template:
            return str(tokenizer.apply_chat_template(
                [{"role": "user", "content": content}], tokenize=False, add_generation_prompt=True))
        return f"USER: {content} ASSISTANT:"

    return prompt


def _load_llava(pretrained: str, dtype: Any, device: str, attn: str | None) -> Loaded:
    from transformers import AutoProcessor, LlavaForConditionalGeneration

    kwargs: dict[str, Any] = {"dtype": dtype}
    if attn is not None:
        kwargs["attn_implementation"] = attn
    model: Any = LlavaForConditionalGeneration.from_pretrained(pretrained, **kwargs)
    processor = AutoProcessor.from_pretrained(pretrained)
    processor.tokenizer.padding_side = "left"
    image_token = getattr(processor, "image_token", "<image>")
    return Loaded(model.to(device).eval(), processor, _llava_prompt(processor.tokenizer, image_token),
                  "llava")


def _qwen_prompt(processor: Any) -> Callable[[str], str]:
    """The processor's chat template, one user turn: the image, then the context. The
    processor expands the template's one image pad token to the image's own token count."""

    def prompt(context: str) -> str:
        messages = [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": context}]}]
        return str(processor.apply_chat_template(messages, tokenize=False, add_generation_prompt=True))

    return prompt


def _qwen_loader(family: str) -> Callable[[str, Any, str, str | None], Loaded]:
    classes = {"qwen2_vl": "Qwen2VLForConditionalGeneration",
               "qwen2_5_vl": "Qwen2_5_VLForConditionalGeneration"}

    def load_qwen(pretrained: str, dtype: Any, device: str, attn: str | None) -> Loaded:
        import transformers
        from transformers import AutoProcessor

        kwargs: dict[str, Any] = {"dtype": dtype}
        if attn is not None:
            kwargs["attn_implementation"] = attn
        model: Any = getattr(transformers, classes[family]).from_pretrained(pretrained, **kwargs)
        processor = AutoProcessor.from_pretrained(pretrained)
        processor.tokenizer.padding_side = "left"
        if not getattr(processor, "chat_template", None):
            raise ValueError(
                f"{pretrained}: the {family} processor has no chat template (chat_template.jinja); "
                "the plugin builds Qwen prompts with it")
        return Loaded(model.to(device).eval(), processor, _qwen_prompt(processor), family)

    return load_qwen


def _load_grounding(pretrained: str, dtype: Any, device: str, attn: str | None) -> Loaded:
    """The shipped stand-in: its stock LLaVA, word tokenizer and (x - 0.5) / 0.25 pixels."""
    from transformers import CLIPImageProcessor, LlavaProcessor

    from vtprune.grounding import load_pretrained
    from vtprune.grounding import text as words

    grounding = load_pretrained()
    model = grounding.llava
    if attn is not None:
        model.set_attn_implementation(attn)
    size = grounding.cfg.scene.image_size
    image_processor = CLIPImageProcessor(
        size={"height": size, "width": size}, do_center_crop=False, do_resize=True,
        image_mean=[0.5, 0.5, 0.5], image_std=[0.25, 0.25, 0.25])
    tokenizer = words.build_tokenizer()
    tokenizer.padding_side = "left"
    processor = LlavaProcessor(
        image_processor=image_processor, tokenizer=tokenizer, patch_size=grounding.cfg.scene.patch_size,
        vision_feature_select_strategy="default", num_additional_image_tokens=1,
        image_token=words.IMAGE)

    def prompt(context: str) -> str:
        return f"{words.BOS} {words.IMAGE} {context}"

    model = model.to(device=device, dtype=dtype if dtype != "auto" else None).eval()
    return Loaded(model, processor, prompt, "vtprune_grounding")


FAMILIES: dict[str, Family] = {
    "llava": Family("llava", _load_llava),
    "qwen2_vl": Family("qwen2_vl", _qwen_loader("qwen2_vl")),
    "qwen2_5_vl": Family("qwen2_5_vl", _qwen_loader("qwen2_5_vl")),
    "vtprune_grounding": Family("vtprune_grounding", _load_grounding),
}
"""model_type -> family."""


def model_type(pretrained: str) -> str:
    """The family key of ``pretrained``: its config's ``model_type`` (read without loading)."""
    if pretrained == GROUNDING:
        return "vtprune_grounding"
    if not Path(pretrained).is_dir():
        raise FileNotFoundError(
            f"pretrained={pretrained!r} is not a local directory: pass a directory written by "
            f"save_pretrained (a model and its processor), or {GROUNDING!r} for the shipped "
            "grounding stand-in; vtprune's lmms-eval plugin never downloads weights")
    from transformers import AutoConfig

    return str(AutoConfig.from_pretrained(pretrained).model_type)


def family_of(pretrained: str) -> Family:
    """The :class:`Family` serving ``pretrained``; raises ``ValueError`` naming the known ones."""
    kind = model_type(pretrained)
    if kind not in FAMILIES:
        raise ValueError(
            f"{pretrained}: model_type {kind!r} is not supported by vtprune's lmms-eval plugin; "
            f"supported: {sorted(FAMILIES)} (vtprune adapters: `vtprune adapters`)")
    return FAMILIES[kind]


def load(pretrained: str, dtype: Any = "auto", device: str = "cpu",
         attn_implementation: str | None = None) -> tuple[Family, Loaded]:
    """Load ``pretrained`` with its family's classes."""
    family = family_of(pretrained)
    return family, family.load(pretrained, dtype, device, attn_implementation)
