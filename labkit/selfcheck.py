"""Self-checks for the graded assignments in ``course/``: give one your function, and it names the first thing wrong.

Each check runs your function on small inputs, compares it with labkit's own implementation and, at the first
difference, raises ``SelfCheckFailed`` with a message that says what is wrong and, where it can tell, why:

>>> check_causal_mask(lambda t: np.tril(np.ones((t, t), dtype=bool)))
'check_causal_mask: 3 sizes pass'
>>> check_causal_mask(lambda t: np.ones((t, t), dtype=bool))
Traceback (most recent call last):
labkit.selfcheck_core.SelfCheckFailed: check_causal_mask: future positions are attended: query 0 may attend key 1
(T=2); True must mean 'may attend', only for keys j <= i

A check tests your part alone: while it runs, the other parts of the assignment your function calls are labkit's
versions (``ch02_references()`` and the like), so a mistake in ``forward`` shows up in ``check_forward`` and not in
``check_backward`` too. The hidden tests grade the same way. The checks live in one module per assignment
(``selfcheck_ch02``, ``selfcheck_ch03``, ``selfcheck_ch04`` for BPE and the schedule, ``selfcheck_lora``);
``sealed_grader`` is for the hidden tests that grade the assignments (see ``course/``).
"""

from __future__ import annotations

import numpy as np  # noqa: F401 (the examples above use it)

from labkit.grading import forbidden_names, on_references, sealed_grader
from labkit.selfcheck_ch02 import (CH02_FORBIDDEN, backward_reference, ch02_references, check_backward, check_forward,
                                   check_softmax_cross_entropy, check_train, forward_reference,
                                   gradient_descent_reference, softmax_cross_entropy_reference, two_layer_case,
                                   two_layer_reference)
from labkit.selfcheck_ch03 import (CH03_FORBIDDEN, attention_reference, attention_weights_reference,
                                   causal_mask_reference, ch03_references, check_attention, check_attention_weights,
                                   check_causal_mask, check_causal_self_attention, self_attention_params,
                                   self_attention_reference, self_attention_variant)
from labkit.selfcheck_ch04 import (BPE_FORBIDDEN, bpe_references, check_lr_schedule, check_merge, check_pair_counts,
                                   check_train_bpe, merge_reference, pair_counts_reference, schedule_reference)
from labkit.selfcheck_core import SelfCheckFailed
from labkit.selfcheck_lora import (LORA_FORBIDDEN, check_lora_forward, check_lora_merge, check_lora_param_count,
                                   check_lora_step, lora_case, lora_forward_function, lora_forward_reference,
                                   lora_merge_reference, lora_param_count_reference, lora_references,
                                   lora_step_reference)

__all__ = [
    "BPE_FORBIDDEN", "CH02_FORBIDDEN", "CH03_FORBIDDEN", "LORA_FORBIDDEN", "SelfCheckFailed",
    "attention_reference", "attention_weights_reference", "backward_reference", "bpe_references",
    "causal_mask_reference", "ch02_references", "ch03_references", "check_attention", "check_attention_weights",
    "check_backward", "check_causal_mask", "check_causal_self_attention", "check_forward", "check_lora_forward",
    "check_lora_merge", "check_lora_param_count", "check_lora_step", "check_lr_schedule", "check_merge",
    "check_pair_counts", "check_softmax_cross_entropy", "check_train", "check_train_bpe", "forbidden_names",
    "forward_reference", "gradient_descent_reference", "lora_case", "lora_forward_function",
    "lora_forward_reference", "lora_merge_reference", "lora_param_count_reference", "lora_references",
    "lora_step_reference", "merge_reference", "on_references", "pair_counts_reference", "schedule_reference",
    "sealed_grader", "self_attention_params", "self_attention_reference", "self_attention_variant",
    "softmax_cross_entropy_reference", "two_layer_case", "two_layer_reference",
]
