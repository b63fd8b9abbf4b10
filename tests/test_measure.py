"""Cost accounting: hand computations, FastV's published ratio, KV bytes, average tokens."""

import pytest
from transformers import CLIPVisionConfig, LlamaConfig, LlavaConfig

from vtprune.core import ContractError, Schedule
from vtprune.measure import (
    ModelDims,
    account,
    compare,
    describe_schedule,
    layer_flops,
    visual_per_layer,
)

SMALL = ModelDims(hidden=8, intermediate=16, layers=4, heads=2, kv_heads=1, gated=True)


def test_layer_flops_by_hand_small_gqa_config():
    # d=8, m=16, heads=2, head_dim=4 -> a=8, kv_heads=1 -> g=4; n=10 tokens.
    n = 10
    q_o = 2 * n * 8 * 8           # q and o projections: 1280
    k_v = 2 * n * 8 * 4           # k and v projections at kv width 4: 640
    attn = 2 * n * n * 8          # scores and weighted sum: 1600
    mlp = 3 * n * 8 * 16          # gate, up, down: 3840
    assert layer_flops(SMALL, n) == q_o + k_v + attn + mlp == 7360
    # DESIGN formula ignores GQA: 4nd^2 + 2n^2d + 3ndm
    assert layer_flops(SMALL, n, formula="design") == 4 * n * 64 + 2 * n * n * 8 + 3 * n * 8 * 16
    # a decode step: one query against 11 cached keys
    assert layer_flops(SMALL, 1, 11) == 2 * 8 * 8 + 2 * 8 * 4 + 2 * 11 * 8 + 3 * 8 * 16


def test_design_and_exact_agree_without_gqa():
    mha = ModelDims(hidden=64, intermediate=100, layers=2, heads=4, gated=False)
    for n in (1, 7, 300):
        assert layer_flops(mha, n) == layer_flops(mha, n, formula="design")
        assert layer_flops(mha, n) == 4 * n * 64**2 + 2 * n * n * 64 + 2 * n * 64 * 100


def test_account_by_hand_pre_llm_and_in_llm():
    # 20 visual among 26 prompt tokens, 4 layers.
    pre = account(SMALL, Schedule.pre_llm(0.25), visual=20, total=26)
    assert pre.visual == [5, 5, 5, 5] and pre.tokens == [11, 11, 11, 11]
    assert pre.prefill == 4 * layer_flops(SMALL, 11)
    fv = account(SMALL, Schedule.at_layers([(2, 0.5)]), visual=20, total=26)
    assert fv.visual == [20, 20, 10, 10] and fv.tokens == [26, 26, 16, 16]
    assert fv.prefill == 2 * layer_flops(SMALL, 26) + 2 * layer_flops(SMALL, 16)
    assert fv.avg_visual == 15.0
    pd = account(SMALL, Schedule.at_layers([(1, 0.5), (2, 0.25), (3, 0.1)]), visual=20, total=26)
    assert pd.visual == [20, 10, 5, 2]
    assert pd.avg_visual == pytest.approx(37 / 4)


def test_fastv_published_ratio_with_the_papers_formula():
    # FastV (arXiv 2403.06764): LLaVA-1.5-7B, 32 layers, d=4096, m=11008, 576 image tokens
    # among ~600-650 prompt tokens, K=2, R=50%. The paper's per-layer formula is
    # 4nd^2 + 2n^2d + 2ndm (non-gated MLP): reproduce it by hand and with the accounting.
    d, m, L, K = 4096, 11008, 32, 2
    dims = ModelDims(hidden=d, intermediate=m, layers=L, heads=32, gated=False)

    def per_layer(n: int) -> int:
        return 4 * n * d * d + 2 * n * n * d + 2 * n * d * m

    for total in (600, 611, 650):
        by_hand = (K * per_layer(total) + (L - K) * per_layer(total - 288)) / (L * per_layer(total))
        c = compare(dims, Schedule.at_layers([(K, 0.5)]), visual=576, total=total, formula="design")
        assert c.prefill_ratio == pytest.approx(by_hand, rel=1e-12)
        assert 0.54 <= c.prefill_ratio <= 0.58  # "about 57%" at ~650 tokens
    # LLaVA-1.5-13B (40 layers, d=5120, m=13824): the abstract's "45% fewer FLOPs".
    dims13 = ModelDims(hidden=5120, intermediate=13824, layers=40, heads=40, gated=False)
    c13 = compare(dims13, Schedule.at_layers([(2, 0.5)]), visual=576, total=611, formula="design")
    assert 1 - c13.prefill_ratio == pytest.approx(0.45, abs=0.02)


def test_kv_bytes_per_layer_cache_length():
    sched = Schedule.at_layers([(2, 0.5)])
    acc = account(SMALL, sched, visual=20, total=26, new_tokens=4, batch=3, dtype="float32")
    row = 2 * 1 * 4 * 4  # k and v, kv_heads=1, head_dim=4, 4 bytes
    assert acc.kv_bytes == 3 * row * (26 + 26 + 16 + 16)
    assert acc.kv_bytes_final == 3 * row * (26 + 26 + 16 + 16 + 4 * 3)  # 3 tokens fed back
    base = account(SMALL, None, visual=20, total=26, new_tokens=4, batch=3, dtype="float32")
    c = compare(SMALL, sched, visual=20, total=26, new_tokens=4, batch=3, dtype="float32")
    assert c.kv_ratio == pytest.approx(acc.kv_bytes / base.kv_bytes)
    assert account(SMALL, None, 20, 26, dtype=2).kv_bytes == account(SMALL, None, 20, 26, dtype="bfloat16").kv_bytes


def test_decode_steps_follow_each_layers_cache_length():
    acc = account(SMALL, Schedule.at_layers([(2, 0.5)]), visual=20, total=26, new_tokens=3)
    assert len(acc.decode_per_step) == 2
    step1 = 2 * layer_flops(SMALL, 1, 27) + 2 * layer_flops(SMALL, 1, 17)
    step2 = 2 * layer_flops(SMALL, 1, 28) + 2 * layer_flops(SMALL, 1, 18)
    assert acc.decode_per_step == [step1, step2]
    assert acc.generate == acc.prefill + step1 + step2


@pytest.mark.parametrize(
    "make",
    [Schedule.pre_llm, lambda k: Schedule.at_layers([(2, k)]), lambda k: Schedule.at_layers([(1, k), (3, k / 2)])],
)
def test_costs_are_monotone_in_keep(make):
    keeps = [0.05, 0.1, 0.25, 0.5, 0.75, 1.0]
    rows = [compare(SMALL, make(k), visual=576, total=620, new_tokens=5) for k in keeps]
    for attr in ("prefill_ratio", "generate_ratio", "kv_ratio", "visual_ratio"):
        values = [getattr(r, attr) for r in rows]
        assert values == sorted(values), attr
        assert all(0 < v <= 1 for v in values)
    keep_all = compare(SMALL, Schedule.pre_llm(1.0), visual=576, total=620, new_tokens=5)
    assert keep_all.prefill_ratio == keep_all.generate_ratio == keep_all.kv_ratio == 1.0


def test_from_config_reads_llava_and_llama_configs():
    text = LlamaConfig(hidden_size=96, intermediate_size=200, num_hidden_layers=3,
                       num_attention_heads=6, num_key_value_heads=2)
    dims = ModelDims.from_config(LlavaConfig(vision_config=CLIPVisionConfig(), text_config=text))
    assert dims == ModelDims(hidden=96, intermediate=200, layers=3, heads=6, kv_heads=2, head_dim=16, gated=True)
    assert ModelDims.from_config(text, gated=False).gated is False
    with pytest.raises(ContractError, match="lacks"):
        ModelDims.from_config(object())


def test_bad_inputs_raise_clear_errors():
    with pytest.raises(ContractError, match="visual <= total"):
        account(SMALL, None, visual=30, total=26)
    with pytest.raises(ContractError, match="do not exist"):
        account(SMALL, Schedule.at_layers([(4, 0.5)]), visual=20, total=26)
    with pytest.raises(ContractError, match="unknown dtype"):
        account(SMALL, None, visual=20, total=26, dtype="float12")
    with pytest.raises(ContractError, match="formula"):
        layer_flops(SMALL, 3, formula="paper")  # type: ignore[arg-type]
    with pytest.raises(ContractError, match="multiple of kv_heads"):
        ModelDims(hidden=8, intermediate=8, layers=1, heads=3, kv_heads=2)
    assert visual_per_layer(None, 7, 3) == [7, 7, 7]


def test_describe_schedule():
    assert describe_schedule(Schedule.pre_llm(0.25), 576) == "pre:144"
    assert describe_schedule(Schedule.at_layers([(8, 0.5), (16, 0.25)]), 576) == "L8:288 L16:144"


def test_from_config_reads_qwen2_vl_family_configs():
    """Qwen2.5-VL-7B's decoder: GQA (28 heads / 4 KV), SwiGLU MLP, untied sizes."""
    from transformers import Qwen2_5_VLConfig, Qwen2VLConfig

    text = {"hidden_size": 3584, "intermediate_size": 18944, "num_hidden_layers": 28,
            "num_attention_heads": 28, "num_key_value_heads": 4, "vocab_size": 152064}
    for config_class in (Qwen2_5_VLConfig, Qwen2VLConfig):
        dims = ModelDims.from_config(config_class(text_config=text))
        assert (dims.hidden, dims.intermediate, dims.layers, dims.heads, dims.kv_heads, dims.head_dim) == (
            3584, 18944, 28, 28, 4, 128)
        assert dims.gated and dims.kv_width == 512
        n = 1000  # MACs per layer: q, o (d x d), k, v (d x 512), scores and values (n^2 d), gated MLP
        expected = n * (2 * 3584 * 3584 + 2 * 3584 * 512) + 2 * n * n * 3584 + 3 * n * 3584 * 18944
        assert layer_flops(dims, n) == expected
