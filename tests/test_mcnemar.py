"""McNemar's exact test against scipy's binomial test on the discordant pairs."""
import numpy as np
import pytest
from scipy.stats import binomtest

from timm_fgfocus.evaluation.metrics import mcnemar_exact


def paired(only_a, only_b, both=7, neither=4, seed=0):
    """Per-image correctness of two models with the given discordant counts, shuffled."""
    a = np.array([1] * only_a + [0] * only_b + [1] * both + [0] * neither, bool)
    b = np.array([0] * only_a + [1] * only_b + [1] * both + [0] * neither, bool)
    order = np.random.default_rng(seed).permutation(len(a))
    return a[order], b[order]


@pytest.mark.parametrize('only_a, only_b', [(3, 3), (5, 0), (0, 5), (7, 2), (2, 7), (12, 30), (60, 41), (250, 210),
                                            (1, 0), (10, 11)])
def test_p_value_is_the_binomial_test_of_the_discordant_pairs(only_a, only_b):
    a, b = paired(only_a, only_b)
    res = mcnemar_exact(a, b)
    assert (res.only_a, res.only_b) == (sum(x and not y for x, y in zip(a, b)), sum(y and not x for x, y in zip(a, b)))
    assert (res.only_a, res.only_b) == (only_a, only_b)
    assert res.p_value == pytest.approx(binomtest(only_a, only_a + only_b, 0.5).pvalue, rel=1e-9, abs=1e-15)


def test_no_discordant_image_gives_p_one():
    a, b = paired(0, 0, both=5, neither=3)
    assert mcnemar_exact(a, b) == (0, 0, 1.0)
    assert mcnemar_exact(np.zeros(0, bool), np.zeros(0, bool)) == (0, 0, 1.0)


def test_ties_give_p_one_and_order_of_models_does_not_matter():
    a, b = paired(9, 9)
    assert mcnemar_exact(a, b).p_value == 1.0
    a, b = paired(4, 15)
    ab, ba = mcnemar_exact(a, b), mcnemar_exact(b, a)
    assert (ab.only_a, ab.only_b) == (ba.only_b, ba.only_a) and ab.p_value == ba.p_value


def test_different_image_lists_are_one_line():
    with pytest.raises(ValueError, match=r'the same images.*\(3,\) and \(4,\)'):
        mcnemar_exact(np.ones(3, bool), np.ones(4, bool))
