import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from labkit import positions as P


def test_sinusoidal_by_hand():
    table = P.sinusoidal_positions(3, 4, base=100.0)
    # Pair i has frequency 100^(-2i/4): 1 and 0.1. Columns: sin(p), cos(p), sin(p/10), cos(p/10).
    p = np.arange(3.0)
    expected = np.stack([np.sin(p), np.cos(p), np.sin(p / 10), np.cos(p / 10)], axis=1)
    np.testing.assert_allclose(table, expected, atol=1e-6)
    np.testing.assert_allclose(P.sinusoidal_positions(2, 4, offset=1, base=100.0), expected[1:], atol=1e-6)


def test_sinusoidal_module_and_learned_table_read_rows_at_an_offset():
    learned = P.LearnedPositions(10, 6, rngs=nnx.Rngs(0))
    assert learned(4).shape == (4, 6)
    np.testing.assert_array_equal(learned(3, offset=5), learned.table[...][5:8])
    np.testing.assert_array_equal(jax.jit(lambda o: learned(3, offset=o))(5), learned.table[...][5:8])
    np.testing.assert_allclose(P.SinusoidalPositions(10, 6)(3, offset=2), P.sinusoidal_positions(5, 6)[2:], atol=1e-6)


@pytest.mark.parametrize("table", [P.LearnedPositions(8, 4, rngs=nnx.Rngs(0)), P.SinusoidalPositions(8, 4)],
                         ids=["learned", "sinusoidal"])
def test_sequence_longer_than_the_table_is_an_error(table):
    with pytest.raises(ValueError, match=r"sequence length T=9 is longer than the positional table \(max_len=8\)"):
        table(9)
    with pytest.raises(ValueError, match=r"positions 6..8 run past the positional table \(max_len=8\)"):
        table(3, offset=6)
    with pytest.raises(ValueError, match="length must be a positive int"):
        table(0)


def test_bad_widths_are_errors():
    with pytest.raises(ValueError, match="width must be a positive even int"):
        P.sinusoidal_positions(4, 5)
    with pytest.raises(ValueError, match="width must be a positive even int"):
        P.SinusoidalPositions(4, 3)
    with pytest.raises(ValueError, match="rotary positions need a positive even head width"):
        P.apply_rotary(jnp.ones((1, 2, 1, 3)), jnp.arange(2))
    with pytest.raises(ValueError, match=r"positions must have shape \(T,\) = \(2,\)"):
        P.apply_rotary(jnp.ones((1, 2, 1, 4)), jnp.arange(3))
    with pytest.raises(ValueError, match="max_len must be a positive int"):
        P.LearnedPositions(0, 4, rngs=nnx.Rngs(0))


def test_rotary_by_hand():
    # H = 2: one pair, frequency 1, so position p rotates (x0, x1) by p radians.
    x = jnp.array([1.0, 0.0]).reshape(1, 1, 1, 2)
    for p in (0, 1, 2):
        rotated = P.apply_rotary(x, jnp.array([p]))[0, 0, 0]
        np.testing.assert_allclose(rotated, [np.cos(p), np.sin(p)], atol=1e-6)


def test_rotary_keeps_norms_and_scores_depend_only_on_the_distance():
    q = jax.random.normal(jax.random.key(0), (1, 1, 2, 8))
    k = jax.random.normal(jax.random.key(1), (1, 1, 2, 8))

    def score(i, j):
        qi = P.apply_rotary(q, jnp.array([i]))
        kj = P.apply_rotary(k, jnp.array([j]))
        return jnp.sum(qi * kj, axis=-1)  # (1, 1, 2): one score per head

    np.testing.assert_allclose(jnp.linalg.norm(P.apply_rotary(q, jnp.array([7])), axis=-1),
                               jnp.linalg.norm(q, axis=-1), rtol=1e-5)
    for shift in (1, 5, 20):
        np.testing.assert_allclose(score(3, 1), score(3 + shift, 1 + shift), rtol=1e-4, atol=1e-5)
    assert not np.allclose(score(3, 1), score(3, 2), atol=1e-3)  # but it does depend on the distance


def test_rotary_per_row_positions():
    x = jax.random.normal(jax.random.key(2), (2, 3, 1, 4))
    positions = jnp.array([[0, 1, 2], [5, 6, 7]])
    both = P.apply_rotary(x, positions)
    np.testing.assert_allclose(both[1], P.apply_rotary(x[1:], jnp.arange(5, 8))[0], atol=1e-6)
