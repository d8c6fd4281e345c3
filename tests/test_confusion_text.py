"""result.txt's confusion matrix stays aligned for labels of any length."""

import numpy as np

from mtlser.score.fold import confusion_lines


def test_long_labels_and_counts_align():
    assert confusion_lines(np.array([[3, 120000], [0, 7]]), ["frustrated", "hap"]) == [
        "           frustrated        hap",
        "frustrated          3     120000",
        "hap                 0          7",
    ]


def test_short_labels_keep_width_five():
    assert confusion_lines(np.array([[1, 2], [3, 4]]), ["a", "b"]) == [
        "          a     b",
        "a         1     2",
        "b         3     4",
    ]
