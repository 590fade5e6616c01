"""Every example in labkit's docstrings runs and prints what it shows (doctest), one test per module.

An example may use ``jax``, ``jnp``, ``np``, ``nnx`` and ``optax`` without importing them, as the notebooks' import
cell provides them; every other name comes from the module itself or from the example. An example that needs what a
docstring cannot hold (a trained model, a cluster, a file from the internet) is marked ``# doctest: +SKIP``.
"""

import doctest
import importlib
import pkgutil

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import nnx

import labkit

NAMESPACE = {"jax": jax, "jnp": jnp, "np": np, "nnx": nnx, "optax": optax}
MODULES = sorted(info.name for info in pkgutil.walk_packages(labkit.__path__, "labkit."))


def test_every_module_is_found():
    assert {"labkit.bpe", "labkit.deps", "labkit.train", "labkit.zoo"} <= set(MODULES)


# Examples that train a model (the pretrained GPT of chapter 4, a ViT, ...) take seconds to minutes: `make test` runs
# them, `make test-fast` does not.
SLOW = {"labkit.zoo", "labkit.vit", "labkit.audio", "labkit.tabular"}


@pytest.mark.parametrize("name", [pytest.param(n, marks=pytest.mark.slow) if n in SLOW else n
                                  for n in ["labkit", *MODULES]])
def test_docstring_examples(name):
    module = importlib.import_module(name)
    runner = doctest.DocTestRunner(optionflags=doctest.ELLIPSIS | doctest.NORMALIZE_WHITESPACE)
    report: list[str] = []
    for test in doctest.DocTestFinder().find(module, name, globs={**NAMESPACE, **vars(module)}):
        runner.run(test, out=report.append)
    assert runner.failures == 0, "".join(report)
