import numpy as np
import pytest
import sklearn.metrics
from hypothesis import assume, given, settings
from hypothesis import strategies as st
from sklearn.calibration import calibration_curve

from labkit import metrics

# (label, score) pairs; scores from a coarse grid so that ties, which ROC code must handle, are common
cases = st.lists(st.tuples(st.integers(0, 1), st.integers(0, 20).map(lambda k: k / 20)), min_size=2, max_size=60)


def _split(pairs):
    y, p = zip(*pairs, strict=True)
    return np.array(y), np.array(p)


# ---- hand-worked examples ---------------------------------------------------------------------------------------


def test_counts_and_rates_by_hand():
    y_true = [1, 1, 1, 0, 0, 0, 0, 0]
    y_pred = [1, 1, 0, 1, 0, 0, 0, 0]  # 2 caught, 1 missed, 1 false alarm, 4 cleared
    assert metrics.confusion_counts(y_true, y_pred) == metrics.Counts(tp=2, fp=1, tn=4, fn=1)
    assert metrics.sensitivity(y_true, y_pred) == pytest.approx(2 / 3)
    assert metrics.specificity(y_true, y_pred) == pytest.approx(4 / 5)
    assert metrics.positive_predictive_value(y_true, y_pred) == pytest.approx(2 / 3)
    assert metrics.negative_predictive_value(y_true, y_pred) == pytest.approx(4 / 5)


def test_bool_decisions_are_accepted():
    y_true = np.array([1, 0, 1])
    assert metrics.sensitivity(y_true, np.array([0.9, 0.1, 0.2]) >= 0.5) == 0.5


def test_undefined_rates_are_nan():
    assert np.isnan(metrics.sensitivity([0, 0], [0, 1]))  # no positive cases
    assert np.isnan(metrics.specificity([1, 1], [0, 1]))  # no negative cases
    assert np.isnan(metrics.positive_predictive_value([0, 1], [0, 0]))  # nothing called positive
    assert np.isnan(metrics.negative_predictive_value([0, 1], [1, 1]))  # nothing called negative


def test_breast_cancer_positive_class_is_explicit():
    # scikit-learn's breast_cancer: 0 = malignant, 1 = benign; malignant is the clinically positive class
    targets = np.array([0, 1, 1, 0, 1])
    malignant = metrics.positive_labels(targets, positive=0)
    np.testing.assert_array_equal(malignant, [1, 0, 0, 1, 0])
    benign_score = np.array([0.2, 0.9, 0.7, 0.4, 0.6])
    assert metrics.roc_auc(malignant, 1 - benign_score) == 1.0
    assert metrics.roc_auc(targets, benign_score) == 1.0  # the same ranking, seen from the other class
    with pytest.raises(ValueError, match="positive=2 does not occur"):
        metrics.positive_labels(targets, positive=2)
    with pytest.raises(ValueError, match="non-empty 1-D"):
        metrics.positive_labels(np.zeros((2, 2)), positive=0)


def test_predictive_values_follow_prevalence():
    ppv, npv = metrics.predictive_values(0.9, 0.8, 0.5)
    assert ppv == pytest.approx(0.45 / (0.45 + 0.1)) and npv == pytest.approx(0.4 / (0.4 + 0.05))
    # measured on a sample, Bayes' rule gives the sample's own PPV and NPV back
    y_true = np.array([1] * 40 + [0] * 60)
    y_pred = np.array([1] * 36 + [0] * 4 + [1] * 9 + [0] * 51)
    ppv, npv = metrics.predictive_values(metrics.sensitivity(y_true, y_pred), metrics.specificity(y_true, y_pred), 0.4)
    assert ppv == pytest.approx(metrics.positive_predictive_value(y_true, y_pred))
    assert npv == pytest.approx(metrics.negative_predictive_value(y_true, y_pred))
    rare, common = metrics.predictive_values(0.95, 0.95, 0.001)[0], metrics.predictive_values(0.95, 0.95, 0.3)[0]
    assert rare < 0.02 < 0.8 < common


@pytest.mark.parametrize("args", [(1.1, 0.5, 0.5), (0.5, -0.1, 0.5), (0.5, 0.5, True), (0.5, 0.5, "0.1")])
def test_predictive_values_reject_non_probabilities(args):
    with pytest.raises(ValueError, match="must be a number in \\[0, 1\\]"):
        metrics.predictive_values(*args)


def test_binary_summary_uses_at_or_above_threshold():
    summary = metrics.binary_summary([1, 0, 1, 0], [0.5, 0.49, 0.2, 0.9], threshold=0.5)
    assert summary == pytest.approx({"accuracy": 0.5, "sensitivity": 0.5, "specificity": 0.5, "ppv": 0.5, "npv": 0.5})


def test_threshold_for_sensitivity_by_hand():
    y, p = [1, 1, 1, 1, 0, 0], [0.9, 0.8, 0.3, 0.7, 0.5, 0.1]
    assert metrics.threshold_for_sensitivity(y, p, 0.75) == 0.7
    assert metrics.threshold_for_sensitivity(y, p, 0.76) == 0.3
    assert metrics.threshold_for_sensitivity(y, p, 1.0) == 0.3
    assert metrics.threshold_for_sensitivity(y, p, 0.01) == 0.9


@settings(max_examples=60, deadline=None)
@given(cases, st.floats(0.05, 1.0))
def test_threshold_for_sensitivity_is_the_highest_that_reaches_target(pairs, target):
    y, p = _split(pairs)
    assume(y.sum() > 0)
    t = metrics.threshold_for_sensitivity(y, p, target)
    assert metrics.sensitivity(y, p >= t) >= target - 1e-12
    higher = p[p > t]
    if len(higher):  # the next score up misses the target
        assert metrics.sensitivity(y, p >= higher.min()) < target


def test_roc_by_hand_with_a_tie():
    # positives 0.8, 0.5; negatives 0.5, 0.1: pairs (0.8>0.5, 0.8>0.1, 0.5=0.5 counts 1/2, 0.5>0.1) -> 3.5 / 4
    assert metrics.roc_auc([1, 1, 0, 0], [0.8, 0.5, 0.5, 0.1]) == pytest.approx(0.875)
    fpr, tpr, thresholds = metrics.roc_curve([1, 1, 0, 0], [0.8, 0.5, 0.5, 0.1])
    np.testing.assert_allclose(fpr, [0, 0, 0.5, 1])
    np.testing.assert_allclose(tpr, [0, 0.5, 1, 1])
    np.testing.assert_allclose(thresholds, [np.inf, 0.8, 0.5, 0.1])


def test_calibration_by_hand():
    y, p = [0, 1, 1, 1], [0.25, 0.25, 0.75, 0.75]
    curve = metrics.reliability_curve(y, p, num_bins=4)
    np.testing.assert_allclose(curve.edges, [0, 0.25, 0.5, 0.75, 1])
    np.testing.assert_array_equal(curve.counts, [2, 0, 2, 0])  # bins are (a, b]: 0.25 is in the first
    np.testing.assert_allclose(curve.observed, [0.5, np.nan, 1.0, np.nan])
    np.testing.assert_allclose(curve.mean_predicted, [0.25, np.nan, 0.75, np.nan])
    assert metrics.expected_calibration_error(y, p, num_bins=4) == pytest.approx((2 * 0.25 + 2 * 0.25) / 4)
    assert metrics.expected_calibration_error([0, 1], [0.0, 1.0]) == 0.0
    assert metrics.expected_calibration_error([1, 0], [0.0, 1.0], num_bins=1) == 0.0  # one bin hides everything
    assert metrics.expected_calibration_error([1, 0], [0.0, 1.0], num_bins=2) == 1.0


# ---- parity with scikit-learn -----------------------------------------------------------------------------------


@settings(max_examples=80, deadline=None)
@given(cases)
def test_roc_parity_with_sklearn(pairs):
    y, p = _split(pairs)
    assume(0 < y.sum() < len(y))
    assert metrics.roc_auc(y, p) == pytest.approx(sklearn.metrics.roc_auc_score(y, p), abs=1e-12)
    fpr, tpr, thresholds = metrics.roc_curve(y, p)
    ref_fpr, ref_tpr, ref_thresholds = sklearn.metrics.roc_curve(y, p, drop_intermediate=False)
    np.testing.assert_allclose(fpr, ref_fpr)
    np.testing.assert_allclose(tpr, ref_tpr)
    np.testing.assert_allclose(thresholds, ref_thresholds)


@settings(max_examples=40, deadline=None)
@given(cases, st.sampled_from([0.3, 0.5, 0.7]))
def test_rates_parity_with_sklearn(pairs, threshold):
    y, p = _split(pairs)
    pred = (p >= threshold).astype(int)
    tn, fp, fn, tp = sklearn.metrics.confusion_matrix(y, pred, labels=[0, 1]).ravel()
    assert metrics.confusion_counts(y, pred) == metrics.Counts(tp=tp, fp=fp, tn=tn, fn=fn)
    score = lambda fn, **kw: fn(y, pred, zero_division=np.nan, **kw)  # noqa: E731
    np.testing.assert_allclose(metrics.sensitivity(y, pred), score(sklearn.metrics.recall_score))
    np.testing.assert_allclose(metrics.specificity(y, pred), score(sklearn.metrics.recall_score, pos_label=0))
    np.testing.assert_allclose(metrics.positive_predictive_value(y, pred), score(sklearn.metrics.precision_score))
    np.testing.assert_allclose(metrics.negative_predictive_value(y, pred),
                               score(sklearn.metrics.precision_score, pos_label=0))
    summary = metrics.binary_summary(y, p, threshold=threshold)
    assert summary["accuracy"] == pytest.approx(sklearn.metrics.accuracy_score(y, pred))


@pytest.mark.parametrize("seed", range(5))
@pytest.mark.parametrize("num_bins", [1, 5, 10, 15])
def test_reliability_parity_with_sklearn(seed, num_bins):
    rng = np.random.default_rng(seed)
    p = rng.uniform(size=200) ** 2
    y = (rng.uniform(size=200) < p).astype(int)
    p[:3] = [0.0, 1.0, 0.5]  # the ends and an edge shared by several bin counts
    curve = metrics.reliability_curve(y, p, num_bins=num_bins)
    ref_observed, ref_predicted = calibration_curve(y, p, n_bins=num_bins, strategy="uniform")
    filled = curve.counts > 0
    np.testing.assert_allclose(curve.observed[filled], ref_observed)
    np.testing.assert_allclose(curve.mean_predicted[filled], ref_predicted)
    expected = sum(c / len(y) * abs(o - m)
                   for c, o, m in zip(curve.counts[filled], ref_observed, ref_predicted, strict=True))
    assert metrics.expected_calibration_error(y, p, num_bins=num_bins) == pytest.approx(expected)


# ---- every error path -------------------------------------------------------------------------------------------

SCORE_FUNCTIONS = [metrics.roc_auc, metrics.roc_curve, metrics.reliability_curve, metrics.expected_calibration_error,
                   metrics.binary_summary, lambda y, p: metrics.threshold_for_sensitivity(y, p, 0.9)]
DECISION_FUNCTIONS = [metrics.confusion_counts, metrics.sensitivity, metrics.specificity,
                      metrics.positive_predictive_value, metrics.negative_predictive_value]


@pytest.mark.parametrize("fn", SCORE_FUNCTIONS + DECISION_FUNCTIONS)
def test_mismatched_lengths(fn):
    with pytest.raises(ValueError, match="same length; got 3 and 2"):
        fn([0, 1, 1], [0, 1])


@pytest.mark.parametrize("fn", SCORE_FUNCTIONS + DECISION_FUNCTIONS)
def test_empty_input(fn):
    with pytest.raises(ValueError, match="y_true is empty"):
        fn([], [])


@pytest.mark.parametrize("fn", SCORE_FUNCTIONS + DECISION_FUNCTIONS)
@pytest.mark.parametrize("labels", [[0, 2, 1], [-1, 0, 1], ["a", "b", "a"], [0.5, 1, 0]])
def test_labels_must_be_zero_or_one(fn, labels):
    with pytest.raises(ValueError, match="must hold only 0 \\(negative\\) and 1 \\(positive\\)"):
        fn(labels, [0, 1, 1])


@pytest.mark.parametrize("fn", DECISION_FUNCTIONS)
def test_decisions_must_be_zero_or_one(fn):
    with pytest.raises(ValueError, match="y_pred must hold only 0"):
        fn([0, 1, 1], [0.2, 0.7, 0.9])


@pytest.mark.parametrize("fn", [metrics.reliability_curve, metrics.expected_calibration_error, metrics.binary_summary])
@pytest.mark.parametrize("probs", [[0.2, 1.2, 0.5], [-0.01, 0.5, 0.5]])
def test_probabilities_must_lie_in_unit_interval(fn, probs):
    with pytest.raises(ValueError, match="probabilities in \\[0, 1\\]"):
        fn([0, 1, 1], probs)


def test_scores_may_be_any_finite_numbers_but_not_nan_or_2d():
    assert metrics.roc_auc([0, 1, 1], [-3.0, 2.0, 7.5]) == 1.0  # logits are fine for ranking
    with pytest.raises(ValueError, match="y_score must be finite"):
        metrics.roc_auc([0, 1, 1], [0.1, np.nan, 0.3])
    with pytest.raises(ValueError, match="y_score must be a 1-D array of numbers"):
        metrics.roc_auc([0, 1], [[0.1, 0.2]])
    with pytest.raises(ValueError, match="y_true must be a 1-D array"):
        metrics.roc_auc([[0, 1]], [0.1, 0.2])


@pytest.mark.parametrize("fn", [metrics.roc_auc, metrics.roc_curve])
def test_roc_needs_both_classes(fn):
    with pytest.raises(ValueError, match="needs both classes in y_true; it holds only 1s"):
        fn([1, 1, 1], [0.1, 0.2, 0.3])


def test_threshold_and_bins_arguments():
    with pytest.raises(ValueError, match="at least one positive case"):
        metrics.threshold_for_sensitivity([0, 0], [0.1, 0.2], 0.9)
    for target in (0, 1.5, True, "0.9"):
        with pytest.raises(ValueError, match="target must be a sensitivity in \\(0, 1\\]"):
            metrics.threshold_for_sensitivity([1, 0], [0.1, 0.2], target)
    for num_bins in (0, 2.0, True):
        with pytest.raises(ValueError, match="num_bins must be a positive int"):
            metrics.reliability_curve([1, 0], [0.1, 0.2], num_bins=num_bins)
