"""Parity with transformers' GPT2LMHeadModel on a small randomly initialised GPT-2 (no download: built here)."""

import json
import shutil

import jax.numpy as jnp
import numpy as np
import pytest
import safetensors.numpy as safetensors_numpy
import torch  # CPU build, pinned in requirements.txt; imported plainly so that a missing one fails, not skips
import transformers
from flax import nnx

from labkit.generate import generate
from labkit.hf_gpt2 import gpt2_config, load_gpt2


def save_random_gpt2(directory, *, tied=True, seed=0):
    torch.manual_seed(seed)
    config = transformers.GPT2Config(n_layer=2, n_head=2, n_embd=32, vocab_size=97, n_positions=64,
                                     bos_token_id=0, eos_token_id=0, tie_word_embeddings=tied)
    model = transformers.GPT2LMHeadModel(config).eval()
    with torch.no_grad():  # fresh GPT-2 has LayerNorm 1/0 and zero biases: randomise all, so every mapping counts
        for name, param in model.named_parameters():
            param.copy_((name.endswith("ln_1.weight") or name.endswith("ln_2.weight") or name.endswith("ln_f.weight"))
                        + 0.1 * torch.randn_like(param))
    model.save_pretrained(directory, safe_serialization=True)
    return model


@pytest.fixture(scope="module", params=[True, False], ids=["tied", "untied"])
def checkpoint(request, tmp_path_factory):
    directory = tmp_path_factory.mktemp("gpt2")
    return directory, save_random_gpt2(directory, tied=request.param)


TOKENS = np.array([[5, 17, 96, 0, 42, 42, 7, 63, 1, 88], [3, 1, 4, 1, 5, 9, 2, 6, 5, 3]])


def test_logits_match_transformers(checkpoint):
    directory, hf_model = checkpoint
    model = load_gpt2(directory, rngs=nnx.Rngs(0))
    with torch.no_grad():
        expected = hf_model(torch.tensor(TOKENS)).logits.numpy()
    np.testing.assert_allclose(model(jnp.asarray(TOKENS)), expected, atol=1e-4, rtol=1e-4)
    assert (model.head is None) == hf_model.config.tie_word_embeddings


def test_greedy_generation_matches_transformers(checkpoint):
    directory, hf_model = checkpoint
    model = load_gpt2(directory, rngs=nnx.Rngs(0), attention="blockwise", block_size=4)
    ours = generate(model, jnp.asarray(TOKENS[:, :3]), max_new_tokens=8, key=None, temperature=0.0)
    tokens = torch.tensor(TOKENS[:, :3])
    with torch.no_grad():  # greedy by hand, so that no generation settings of transformers are involved
        for _ in range(8):
            tokens = torch.cat([tokens, hf_model(tokens).logits[:, -1].argmax(-1, keepdim=True)], dim=1)
    np.testing.assert_array_equal(ours, tokens.numpy())


def test_config_mapping(checkpoint):
    directory, _ = checkpoint
    config = gpt2_config(directory)
    assert (config.vocab_size, config.max_len, config.num_layers, config.num_heads, config.width) == (97, 64, 2, 2, 32)
    assert (config.mlp_width, config.norm_eps, config.gelu_approximate, config.norm) == (128, 1e-5, True, "layernorm")


def test_missing_files_are_errors(tmp_path, checkpoint):
    directory, _ = checkpoint
    with pytest.raises(FileNotFoundError, match="checkpoint directory not found"):
        load_gpt2(tmp_path / "nothing", rngs=nnx.Rngs(0))
    with pytest.raises(FileNotFoundError, match="model.safetensors not found"):
        load_gpt2(tmp_path, rngs=nnx.Rngs(0))
    shutil.copy(directory / "model.safetensors", tmp_path / "model.safetensors")
    with pytest.raises(FileNotFoundError, match="config.json not found"):
        load_gpt2(tmp_path, rngs=nnx.Rngs(0))


def _edited_copy(source, target, edit):
    shutil.copy(source / "config.json", target / "config.json")
    tensors = safetensors_numpy.load_file(source / "model.safetensors")
    edit(tensors)
    safetensors_numpy.save_file(tensors, target / "model.safetensors")
    return target


def test_incompatible_shapes_name_the_tensor(tmp_path, checkpoint):
    directory, _ = checkpoint

    def shrink(tensors):
        tensors["transformer.h.1.mlp.c_fc.weight"] = tensors["transformer.h.1.mlp.c_fc.weight"][:, :100]

    with pytest.raises(ValueError, match=r"tensor 'h.1.mlp.c_fc.weight' has shape \(32, 100\).*\(32, 128\)"):
        load_gpt2(_edited_copy(directory, tmp_path, shrink), rngs=nnx.Rngs(0))


def test_missing_and_unexpected_tensors_are_named(tmp_path, checkpoint):
    directory, _ = checkpoint
    with pytest.raises(KeyError, match="'h.0.ln_2.bias' is missing"):
        load_gpt2(_edited_copy(directory, tmp_path, lambda t: t.pop("transformer.h.0.ln_2.bias")), rngs=nnx.Rngs(0))
    with pytest.raises(ValueError, match="tensors that GPT-2 does not: \\['h.9.extra'\\]"):
        load_gpt2(_edited_copy(directory, tmp_path, lambda t: t.update({"h.9.extra": np.zeros(3, np.float32)})),
                  rngs=nnx.Rngs(0))


def test_unsupported_config_is_an_error(tmp_path, checkpoint):
    directory, _ = checkpoint
    config = json.loads((directory / "config.json").read_text())
    with pytest.raises(ValueError, match="activation_function 'relu' is not supported"):
        gpt2_config({**config, "activation_function": "relu"})
    with pytest.raises(ValueError, match="scale_attn_by_inverse_layer_idx=True is not supported"):
        gpt2_config({**config, "scale_attn_by_inverse_layer_idx": True})
    with pytest.raises(ValueError, match="overrides may only set dtype, attention, block_size, dropout.*got positions"):
        gpt2_config(config, positions="rotary")
