"""A GLaMM-shaped grounding model small enough to train on a 2-core CPU.

``GroundingModel`` wraps a stock ``transformers.LlavaForConditionalGeneration`` (CLIP-style
vision tower -> projector -> Llama decoder; the LLaVA adapter of ``vtprune.backbones``
applies to ``model.llava`` unchanged) and a light ``MaskDecoder``. Like GLaMM's SAM path, the
mask decoder reads its *own*, unpruned image features and is prompted by the projected last
hidden state of each ``[SEG]`` token. Pruning visual tokens reaches masks only through those
``[SEG]`` states.

Design against the text-only shortcut (see docs/grounding.md): the task is grounded
description (the model names every object it sees, so an unseen object is never named); the
mask decoder sees greyscale only, through a receptive field of 7 pixels, so it can sharpen
edges but cannot find "the red circle" by itself; where the object is comes from a coarse
patch-level location map predicted from the ``[SEG]`` state. The projector ends in a
LayerNorm so visual and text embeddings have comparable scale.
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn
from transformers import CLIPVisionConfig, LlamaConfig, LlavaConfig, LlavaForConditionalGeneration
from transformers.models.llava.modeling_llava import LlavaMultiModalProjector

from . import text
from .scenes import COLOURS, SHAPES, SceneConfig


@dataclass
class GroundingConfig:
    """Sizes of every part. Defaults: 192 px images, 16 px patches -> 144 visual tokens."""

    scene: SceneConfig = field(default_factory=SceneConfig)
    vision_hidden: int = 128
    vision_layers: int = 3
    vision_heads: int = 4
    vision_mlp: int = 256
    text_hidden: int = 128
    text_layers: int = 4
    text_heads: int = 4
    text_mlp: int = 256
    decoder_channels: int = 32

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> GroundingConfig:
        d = dict(d)
        d["scene"] = SceneConfig(**d["scene"])
        return cls(**d)

    @property
    def num_visual_tokens(self) -> int:
        return self.scene.grid ** 2


class NormedProjector(LlavaMultiModalProjector):
    """LLaVA's two-layer projector followed by a LayerNorm (fixes the visual-token scale)."""

    def __init__(self, config: LlavaConfig, init_gain: float = 0.05):
        super().__init__(config)
        self.norm = nn.LayerNorm(self.linear_2.out_features)
        nn.init.constant_(self.norm.weight, init_gain)

    def forward(self, image_features: torch.Tensor) -> torch.Tensor:
        return self.norm(super().forward(image_features))


def llava_config(cfg: GroundingConfig) -> LlavaConfig:
    """The ``LlavaConfig`` of the stand-in (vocabulary from ``text.WORDS``)."""
    ids = text.vocab()
    vision = CLIPVisionConfig(
        image_size=cfg.scene.image_size, patch_size=cfg.scene.patch_size,
        hidden_size=cfg.vision_hidden, intermediate_size=cfg.vision_mlp,
        num_hidden_layers=cfg.vision_layers, num_attention_heads=cfg.vision_heads,
        projection_dim=cfg.vision_hidden,
    )
    lm = LlamaConfig(
        vocab_size=len(text.WORDS), hidden_size=cfg.text_hidden, intermediate_size=cfg.text_mlp,
        num_hidden_layers=cfg.text_layers, num_attention_heads=cfg.text_heads,
        num_key_value_heads=cfg.text_heads, max_position_embeddings=512,
        pad_token_id=ids[text.PAD], bos_token_id=ids[text.BOS], eos_token_id=ids[text.EOS],
        tie_word_embeddings=False,
    )
    return LlavaConfig(  # type: ignore[call-arg]  # transformers 5 accepts image_token_id
        vision_config=vision, text_config=lm, image_token_id=ids[text.IMAGE],
        image_seq_length=cfg.num_visual_tokens, vision_feature_layer=-1,
        vision_feature_select_strategy="default", projector_hidden_act="gelu",
    )


def build_llava(cfg: GroundingConfig) -> LlavaForConditionalGeneration:
    """A randomly initialised LLaVA with the normed projector swapped in."""
    lcfg = llava_config(cfg)
    model = LlavaForConditionalGeneration(lcfg)
    model.model.multi_modal_projector = NormedProjector(lcfg)
    return model


class MaskDecoder(nn.Module):
    """[SEG] state + own greyscale features -> mask logits.

    forward(image [B, 3, H, W] in [0, 1], seg [S, D], owner [S] long (image of each [SEG]))
    -> (fine [S, H/4, W/4], coarse [S, g, g]) logits, g = H / patch.
    """

    def __init__(self, hidden: int, channels: int, grid: int):
        super().__init__()
        self.grid = grid
        self.channels = channels
        # Local features only: two 3x3 convs at stride 2 -> receptive field 7 px.
        self.pixels = nn.Sequential(
            nn.Conv2d(1, 16, 3, stride=2, padding=1), nn.GELU(),
            nn.Conv2d(16, channels, 3, stride=2, padding=1), nn.GELU(),
        )
        self.prompt = nn.Sequential(
            nn.Linear(hidden, 2 * hidden), nn.GELU(),
            nn.Linear(2 * hidden, grid * grid + 2 * channels),
        )
        self.head = nn.Sequential(
            nn.Conv2d(channels + 1, channels, 3, padding=1), nn.GELU(),
            nn.Conv2d(channels, 1, 1),
        )

    def forward(self, image: torch.Tensor, seg: torch.Tensor,
                owner: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        grey = image.mean(dim=1, keepdim=True)                        # [B, 1, H, W]
        feats = self.pixels(grey - 0.5)                               # [B, C, H/4, W/4]
        p = self.prompt(seg)                                          # [S, g*g + 2C]
        g, c = self.grid, self.channels
        coarse = p[:, : g * g].view(-1, 1, g, g)                      # [S, 1, g, g]
        gamma = p[:, g * g: g * g + c].view(-1, c, 1, 1)
        beta = p[:, g * g + c:].view(-1, c, 1, 1)
        f = feats[owner] * (1 + gamma) + beta                         # [S, C, h, w]
        up = F.interpolate(coarse, size=f.shape[-2:], mode="bilinear", align_corners=False)
        fine = self.head(torch.cat([f, up], dim=1)) + up              # [S, 1, h, w]
        return fine[:, 0], coarse[:, 0]


class GroundingModel(nn.Module):
    """LLaVA + mask decoder. ``llava`` is a plain ``LlavaForConditionalGeneration``."""

    def __init__(self, cfg: GroundingConfig):
        super().__init__()
        self.cfg = cfg
        self.llava = build_llava(cfg)
        self.decoder = MaskDecoder(cfg.text_hidden, cfg.decoder_channels, cfg.scene.grid)
        # Training-only probe: each visual token predicts the colour+shape of the object that
        # fills most of its patch (0 = background). Speeds up learning visual features; never
        # used at inference.
        self.token_probe = nn.Linear(cfg.text_hidden, 1 + len(COLOURS) * len(SHAPES))
        self.ids = text.vocab()

    # -- vision -------------------------------------------------------------------------
    @staticmethod
    def pixel_values(images: torch.Tensor) -> torch.Tensor:
        """[B, 3, H, W] in [0, 1] -> the vision tower's normalised input."""
        return (images - 0.5) / 0.25

    def visual_features(self, images: torch.Tensor) -> torch.Tensor:
        """Projected visual tokens [B, N, D] of images [B, 3, H, W] in [0, 1]."""
        out = self.llava.model.get_image_features(
            pixel_values=self.pixel_values(images), return_dict=True)
        return torch.stack(list(out.pooler_output))

    # -- language model -----------------------------------------------------------------
    def prefix_ids(self) -> list[int]:
        return [self.ids[text.BOS]]

    def prompt_ids(self) -> list[int]:
        return text.encode(list(text.PROMPT))

    def lm_hidden(self, visual: torch.Tensor, kept: torch.Tensor | None,
                  tokens: torch.Tensor) -> torch.Tensor:
        """Last hidden states (after the final norm) over ``<s> visual prompt+tokens``.

        visual [B, K, D] are the visual tokens fed (K may be 0); kept [B, K] long their
        original indices in 0..N-1 (None: all N in order). Every token keeps its original
        RoPE position. tokens [B, T] are text ids after the image. Returns [B, T, D], the
        states at the text positions only.
        """
        b, k, _ = visual.shape
        n = self.cfg.num_visual_tokens
        t = tokens.shape[1]
        emb = self.llava.get_input_embeddings()
        bos = emb(torch.full((b, 1), self.ids[text.BOS], dtype=torch.long))
        x = torch.cat([bos, visual.to(bos.dtype), emb(tokens)], dim=1)   # [B, 1+K+T, D]
        if kept is None:
            if k != n:
                raise ValueError(f"kept=None needs all {n} visual tokens, got {k}")
            kept = torch.arange(n).expand(b, n)
        pos = torch.cat([
            torch.zeros(b, 1, dtype=torch.long), 1 + kept.long(),
            (1 + n + torch.arange(t)).expand(b, t)], dim=1)
        mask = torch.ones(b, x.shape[1], dtype=torch.long)  # explicit: avoids packed-seq detection
        out = self.llava.model.language_model(inputs_embeds=x, position_ids=pos,
                                              attention_mask=mask, use_cache=False)
        return out.last_hidden_state[:, 1 + k:]

    def logits(self, hidden: torch.Tensor) -> torch.Tensor:
        return self.llava.lm_head(hidden)

    # -- persistence ----------------------------------------------------------------------
    def save(self, directory: str | Path, dtype: torch.dtype | None = None) -> None:
        """Write ``config.json``, ``model.safetensors`` and the tokenizer to ``directory``.

        ``dtype`` (e.g. ``torch.float16``) stores floating weights at that precision; ``load``
        always returns float32.
        """
        from safetensors.torch import save_file

        d = Path(directory)
        d.mkdir(parents=True, exist_ok=True)
        (d / "config.json").write_text(json.dumps(self.cfg.to_dict(), indent=2) + "\n")
        state = {k: (v.detach().to(dtype) if dtype is not None and v.is_floating_point()
                     else v.detach()).contiguous() for k, v in self.state_dict().items()}
        save_file(state, str(d / "model.safetensors"))
        text.build_tokenizer().save_pretrained(str(d / "tokenizer"))

    @classmethod
    def load(cls, directory: str | Path) -> GroundingModel:
        """Inverse of ``save``; raises ``FileNotFoundError`` naming the missing file."""
        from safetensors.torch import load_file

        d = Path(directory)
        for name in ("config.json", "model.safetensors"):
            if not (d / name).is_file():
                raise FileNotFoundError(
                    f"{d / name} not found: expected a directory written by GroundingModel.save "
                    "(train one with scripts/train_grounding.py)")
        cfg = GroundingConfig.from_dict(json.loads((d / "config.json").read_text()))
        model = cls(cfg)
        state = load_file(str(d / "model.safetensors"))
        state = _match_vision_tower_layout(state, model.state_dict().keys())
        model.load_state_dict({k: v.float() if v.is_floating_point() else v
                               for k, v in state.items()})
        model.eval()
        return model


def _match_vision_tower_layout(state: dict[str, Any], expected: Iterable[str]) -> dict[str, Any]:
    """Rename vision-tower keys between the two layouts of transformers 5.x: older releases
    nest the CLIP tower's weights under ``vision_tower.vision_model.``, newer ones (which
    wrote the shipped weights) under ``vision_tower.`` directly. Other keys are unchanged."""
    nested, flat = "vision_tower.vision_model.", "vision_tower."
    want_nested = any(nested in k for k in expected)
    out = {}
    for key, value in state.items():
        if want_nested and flat in key and nested not in key:
            key = key.replace(flat, nested, 1)
        elif not want_nested and nested in key:
            key = key.replace(nested, flat, 1)
        out[key] = value
    return out


WEIGHTS_DIR = Path(__file__).parent / "weights"


def load_pretrained() -> GroundingModel:
    """The trained stand-in shipped with the package (``grounding/weights``, see its README).

    Raises ``FileNotFoundError`` when this install carries no trained weights (they ship only
    if they passed the validity checks); train them with ``scripts/train_grounding.py``.
    """
    if not (WEIGHTS_DIR / "model.safetensors").is_file():
        raise FileNotFoundError(
            f"no trained grounding weights in {WEIGHTS_DIR}: this build ships none. Train with "
            "`python scripts/train_grounding.py --out runs/grounding` and load "
            "GroundingModel.load('runs/grounding/model').")
    return GroundingModel.load(WEIGHTS_DIR)
