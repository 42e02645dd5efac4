"""The test set's confusion matrix, as each trial records it, and what is read from it:
each class's accuracy and the chance level.
"""

from __future__ import annotations

from collections.abc import Sequence


def confusion_counts(
    truth: Sequence[int], predicted: Sequence[int], classes: int
) -> list[list[int]]:
    """The confusion matrix as counts: ``[true class][predicted class]``.

    >>> confusion_counts([0, 0, 1, 2], [0, 1, 1, 1], 3)
    [[1, 1, 0], [0, 1, 0], [0, 1, 0]]
    """
    counts = [[0] * classes for _ in range(classes)]
    for true, guess in zip(truth, predicted, strict=True):
        counts[int(true)][int(guess)] += 1
    return counts


def class_accuracies(counts: Sequence[Sequence[int]]) -> list[float | None]:
    """Each class's accuracy (recall): right / its images; None for a class with none.

    >>> class_accuracies([[1, 1, 0], [0, 1, 0], [0, 0, 0]])
    [0.5, 1.0, None]
    """
    return [row[i] / sum(row) if sum(row) else None for i, row in enumerate(counts)]


def chance_level(counts: Sequence[Sequence[int]]) -> tuple[int, float]:
    """The majority class of the test set and the accuracy of always guessing it.

    >>> chance_level([[3, 1], [2, 4]])
    (1, 0.6)
    """
    sizes = [sum(row) for row in counts]
    majority = max(range(len(sizes)), key=lambda i: (sizes[i], -i))
    return majority, sizes[majority] / max(sum(sizes), 1)
