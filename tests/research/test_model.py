"""LanguageModel: prefill + decode equals the full pass (split anywhere), packed segments equal
separate runs, gradients reach every parameter, config validation, presets' parameter counts."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from conftest import rel_rms
from flax import nnx

import research
from research import MIXERS, ModelConfig
from research.config import PAPER_PARAM_COUNTS

B, T = 2, 21


def tiny(mixer="gla", **kw):
    base = dict(mixer=mixer, vocab_size=64, d_model=32, n_layers=2, n_heads=2, d_ff=48,
                conv_size=3, num_slots=8, d_state=8, window_size=6, gate_low_rank_dim=4,
                chunk_size=8)
    base.update(kw)
    return ModelConfig(**base)


CASES = [(m, {}) for m in MIXERS] + [
    ("hybrid", dict(mixer="deltanet", layer_pattern=("deltanet", "sliding_window_attention"),
                    n_layers=3, attention_layers=(2,))),
]


def jitted(model):
    """(forward(tokens, segment_ids), step(tokens, cache)) jitted once per model: the tests below
    reuse four shapes per model so that compiling stays cheap."""
    graphdef, state = nnx.split(model)
    forward = jax.jit(lambda st, tok, seg: nnx.merge(graphdef, st)(tok, segment_ids=seg))
    step = jax.jit(lambda st, tok, cache: nnx.merge(graphdef, st)(tok, cache=cache))
    return (lambda tok, seg=None: forward(state, tok, seg)), (lambda tok, cache: step(state, tok, cache))


@pytest.mark.parametrize("name,kw", CASES, ids=[c[0] for c in CASES])
def test_decode_and_packing_equal_the_full_pass(name, kw):
    cfg = tiny(name, n_layers=1, **kw) if name != "hybrid" else tiny(**kw)
    model = research.LanguageModel(cfg, rngs=nnx.Rngs(1))
    forward, step = jitted(model)
    tokens = jax.random.randint(jax.random.key(2), (B, T), 0, cfg.vocab_size)
    full = forward(tokens)
    assert full.shape == (B, T, cfg.vocab_size) and full.dtype == jnp.float32

    # Split mid-chunk (chunk_size 8): a 10-token prefill crossing a chunk boundary, one decode
    # step, then a 10-token chunk starting at position 11.
    cache = model.init_cache(batch_size=B, max_length=T)
    outs = []
    for a, b in ((0, 10), (10, 11), (11, T)):
        out, cache = step(tokens[:, a:b], cache)
        outs.append(out)
    assert int(cache["pos"]) == T
    assert rel_rms(jnp.concatenate(outs, 1), full) < 1e-4

    # Packed sequences: row 0 holds two documents (11 + 10 tokens); the second equals its own run.
    seg = jnp.array([[0] * 11 + [1] * (T - 11), [3] * T], jnp.int32)
    packed = forward(tokens, seg)
    alone, _ = step(tokens[:, 11:], model.init_cache(batch_size=B, max_length=T))
    assert rel_rms(packed[0, 11:], alone[0]) < 1e-4
    assert rel_rms(packed[0, :11], full[0, :11]) < 1e-4
    assert rel_rms(packed[1], full[1]) < 1e-4


@pytest.mark.parametrize("name,kw", CASES[:-1], ids=[c[0] for c in CASES[:-1]])
def test_gradients_reach_every_parameter(name, kw):
    cfg = tiny(name, n_layers=1, **kw)
    model = research.LanguageModel(cfg, rngs=nnx.Rngs(0))
    tokens = jax.random.randint(jax.random.key(5), (B, 12), 0, cfg.vocab_size)
    graphdef, params = nnx.split(model)

    @jax.jit
    def grad_fn(params):
        def loss_fn(p):
            logits = nnx.merge(graphdef, p)(tokens[:, :-1])
            return -jnp.mean(jnp.take_along_axis(jax.nn.log_softmax(logits), tokens[:, 1:, None], -1))
        return jax.grad(loss_fn)(params)

    flat = nnx.to_flat_state(grad_fn(params))
    assert len(flat) > 5
    for path, g in flat:
        g = np.asarray(g[...])
        assert np.all(np.isfinite(g)), path
        assert np.any(g != 0), f"all-zero gradient for {'.'.join(map(str, path))}"


def test_sliding_window_cache_does_not_grow_with_max_length():
    model = research.LanguageModel(tiny("sliding_window_attention", n_layers=1), rngs=nnx.Rngs(0))
    cache = model.init_cache(batch_size=B, max_length=1000)
    assert cache["layers"][0]["k"].shape == (B, 6, 2, 16)


def test_layer_pattern_and_attention_layers():
    cfg = tiny(layer_pattern=("deltanet", "sliding_window_attention"), n_layers=5, attention_layers=(4,))
    assert cfg.layer_mixers() == ("deltanet", "sliding_window_attention", "deltanet",
                                  "sliding_window_attention", "attention")
    model = research.LanguageModel(cfg, rngs=nnx.Rngs(0))
    K, V = cfg.head_dims("deltanet")
    with pytest.raises(ValueError, match="seq_len"):
        model.state_size()
    assert model.state_size(seq_len=100) == 2 * 2 * K * V + 2 * 2 * 32 * 6 + 2 * 32 * 100
    assert research.LanguageModel(tiny("gla"), rngs=nnx.Rngs(0)).state_size() == 2 * 2 * 8 * 16


@pytest.mark.parametrize("kw,field", [
    (dict(mixer="mamba3"), "mixer"),
    (dict(n_heads=3), "n_heads"),
    (dict(d_model=0), "d_model"),
    (dict(vocab_size=-1), "vocab_size"),
    (dict(layer_pattern=("gla", "lstm")), "layer_pattern"),
    (dict(attention_layers=(7,)), "attention_layers"),
    (dict(expand_k=0.3), "expand_k"),
    (dict(decay="exponential"), "decay"),
    (dict(mixer="deltanet", decay="scalar"), "decay"),
    (dict(mixer="mamba2", gate_logit_normalizer=4.0), "gate_logit_normalizer"),
    (dict(feature_map="cosine"), "feature_map"),
    (dict(feature_map="taylor"), "feature_map"),
    (dict(chunk_size=48), "chunk_size"),
    (dict(conv_size=-1), "conv_size"),
    (dict(impl="cuda"), "impl"),
    (dict(attention_impl="flash"), "attention_impl"),
    (dict(dtype="float16"), "dtype"),
    (dict(init_half_life=0.0), "init_half_life"),
    (dict(gate_logit_normalizer=-1.0), "gate_logit_normalizer"),
    (dict(mixer="gsa", num_slots=0), "num_slots"),
    (dict(dt_min=0.5, dt_max=0.1), "dt_max"),
    (dict(tie_embeddings="yes"), "tie_embeddings"),
])
def test_bad_config_names_the_field(kw, field):
    with pytest.raises(ValueError, match=f"ModelConfig.{field}"):
        tiny(**kw)


def test_bad_calls_are_value_errors():
    model = research.LanguageModel(tiny(), rngs=nnx.Rngs(0))
    tokens = jnp.zeros((B, 4), jnp.int32) + 3
    with pytest.raises(ValueError, match="tokens"):
        model(tokens.astype(jnp.float32))
    with pytest.raises(ValueError, match="segment_ids"):
        model(tokens, segment_ids=jnp.zeros((B, 5), jnp.int32))
    with pytest.raises(ValueError, match="segment_ids and cache"):
        model(tokens, segment_ids=jnp.zeros((B, 4), jnp.int32), cache=model.init_cache(B, 8))
    with pytest.raises(ValueError, match="batch_size"):
        model(tokens, cache=model.init_cache(B + 1, 8))
    with pytest.raises(ValueError, match="max_length"):
        model.init_cache(B, 0)
    attn = research.LanguageModel(tiny("attention", n_layers=1), rngs=nnx.Rngs(0))
    with pytest.raises(ValueError, match="max_length=3"):
        attn(tokens, cache=attn.init_cache(B, 3))
    with pytest.raises(ValueError, match="config"):
        research.LanguageModel(dict(mixer="gla"), rngs=nnx.Rngs(0))


def test_count_params_matches_the_built_model_and_untied_head():
    cfg = tiny(tie_embeddings=False)
    model = research.LanguageModel(cfg, rngs=nnx.Rngs(0))
    real = sum(x.size for x in jax.tree.leaves(nnx.state(model, nnx.Param)))
    assert research.count_params(cfg) == real
    assert real - research.count_params(cfg.replace(tie_embeddings=True)) == 32 * 64


@pytest.mark.parametrize("name", sorted(PAPER_PARAM_COUNTS))
def test_paper_presets_match_reported_parameter_counts(name):
    n = research.count_params(research.get_preset(name))
    assert abs(n / PAPER_PARAM_COUNTS[name] - 1) < 0.03, (name, n)


def test_presets_and_get_preset():
    assert set(f"tiny-{m}" for m in MIXERS) <= set(research.PRESETS)
    cfg = research.get_preset("tiny-gla", d_model=128)
    assert cfg.d_model == 128 and cfg.mixer == "gla"
    with pytest.raises(ValueError, match="name"):
        research.get_preset("gla-7b")


def test_remat_gives_the_same_loss_and_gradients():
    tokens = jax.random.randint(jax.random.key(0), (B, 10), 0, 64)
    out = []
    for remat in (False, True):
        model = research.LanguageModel(tiny("attention", n_layers=2, remat=remat), rngs=nnx.Rngs(0))
        out.append(nnx.jit(nnx.value_and_grad(lambda m: jnp.mean(m(tokens) ** 2)))(model))
    assert abs(float(out[0][0]) - float(out[1][0])) < 1e-6
    g0, g1 = (jax.tree.leaves(nnx.state(g, nnx.Param)) for _, g in out)
    assert max(float(jnp.abs(a - b).max()) for a, b in zip(g0, g1)) < 1e-6


def test_bfloat16_compute_is_close_to_float32():
    cfg = tiny("gated_deltanet", n_layers=1)
    tokens = jax.random.randint(jax.random.key(0), (B, 16), 0, 64)
    forward = nnx.jit(lambda m, t: m(t))
    f32 = forward(research.LanguageModel(cfg, rngs=nnx.Rngs(0)), tokens)
    bf = forward(research.LanguageModel(cfg.replace(dtype="bfloat16"), rngs=nnx.Rngs(0)), tokens)
    assert bf.dtype == jnp.float32
    assert rel_rms(bf, f32) < 5e-2


@pytest.mark.slow
@pytest.mark.parametrize("name,kw", CASES, ids=[c[0] for c in CASES])
def test_decode_equals_full_pass_at_default_chunk_size(name, kw):
    """As the default-suite test, with the default chunk_size 64 and T spanning three chunks."""
    fields = dict(chunk_size=64, d_model=64, window_size=24, n_layers=2)
    cfg = tiny(name, **fields, **kw) if name != "hybrid" else tiny(**{**fields, **kw})
    model = research.LanguageModel(cfg, rngs=nnx.Rngs(3))
    forward, step = jitted(model)
    n = 150
    tokens = jax.random.randint(jax.random.key(4), (B, n), 0, cfg.vocab_size)
    full = forward(tokens)
    cache = model.init_cache(batch_size=B, max_length=n)
    outs = []
    for a, b in ((0, 70), (70, 71), (71, 72), (72, n)):
        out, cache = step(tokens[:, a:b], cache)
        outs.append(out)
    assert rel_rms(jnp.concatenate(outs, 1), full) < 1e-4


def test_every_parameter_names_its_logical_axes_and_the_graphdef_hashes():
    cfg = tiny(layer_pattern=MIXERS, n_layers=len(MIXERS), tie_embeddings=False)
    abstract = nnx.eval_shape(lambda: research.LanguageModel(cfg, rngs=nnx.Rngs(0)))
    hash(nnx.graphdef(abstract))  # a jit static argument (research.generate) must hash
    for path, var in nnx.to_flat_state(nnx.state(abstract, nnx.Param)):
        names = var.get_metadata().get("out_sharding")
        assert names is not None and len(names) == len(var.shape), (path, names, var.shape)
