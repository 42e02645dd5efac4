"""Each test image's prediction, as every trial records it, and what is read from it:
whether the trained network collapsed onto one class.

A trial's ``test_predictions.csv`` has one row per test image: its file (relative to the
data folder), its true class, the predicted class, then one column per class with the
model's probability of it (``p:<class>``, in the order of the model's outputs).

Example:
    >>> text = predictions_csv(["cats/1.jpg", "dogs/2.jpg"], [0, 1],
    ...                        np.array([[0.9, 0.1], [0.6, 0.4]]), ["cats", "dogs"])
    >>> print(text.splitlines()[0])
    path,true_class,predicted_class,p:cats,p:dogs
    >>> read_predictions(text).correct.tolist()
    [1.0, 0.0]
    >>> collapse_reason([1] * 199 + [0], ["cats", "dogs"], last_loss=0.45)
    'predicts dogs for 99.5% of the test images'
    >>> collapse_reason([0, 1], ["cats", "dogs"], last_loss=0.6935)  # ln 2 = 0.6931
    'last training loss 0.6935 is within 1% of ln(2) = 0.6931: it learned nothing'
"""

from __future__ import annotations

import csv
import io
import math
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

COLLAPSED_SHARE = 0.99  # of the test images predicted as one class
COLLAPSED_LOSS = 0.01  # relative distance of the last training loss from ln(classes)
PROBABILITY = "p:"


def predictions_csv(
    paths: Sequence[str],
    truth: Sequence[int],
    probabilities: np.ndarray,
    class_names: Sequence[str],
) -> str:
    """The test set's predictions as CSV text (see the module's docstring)."""
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\n")
    writer.writerow(
        ["path", "true_class", "predicted_class", *(PROBABILITY + n for n in class_names)]
    )
    predicted = np.argmax(probabilities, axis=1)
    for path, true, guess, row in zip(paths, truth, predicted, probabilities, strict=True):
        names = (class_names[int(true)], class_names[int(guess)])
        writer.writerow([path, *names, *(f"{p:.6g}" for p in row)])
    return out.getvalue()


@dataclass(frozen=True)
class Predictions:
    """One trial's test predictions, read back from its CSV."""

    paths: tuple[str, ...]
    true_class: tuple[str, ...]
    predicted_class: tuple[str, ...]
    class_names: tuple[str, ...]
    probabilities: np.ndarray  # images x classes

    @property
    def correct(self) -> np.ndarray:
        """1.0 where the prediction is the true class, else 0.0, per image."""
        pairs = zip(self.true_class, self.predicted_class, strict=True)
        return np.array([float(true == guess) for true, guess in pairs])


def read_predictions(text: str) -> Predictions:
    """A ``test_predictions.csv`` read back."""
    rows = list(csv.reader(io.StringIO(text)))
    header, body = rows[0], rows[1:]
    names = tuple(column.removeprefix(PROBABILITY) for column in header[3:])
    return Predictions(
        paths=tuple(row[0] for row in body),
        true_class=tuple(row[1] for row in body),
        predicted_class=tuple(row[2] for row in body),
        class_names=names,
        probabilities=np.array([[float(p) for p in row[3:]] for row in body]).reshape(
            len(body), len(names)
        ),
    )


def collapse_reason(
    predicted: Sequence[int], class_names: Sequence[str], *, last_loss: float
) -> str | None:
    """Why a trained network counts as collapsed, or None if it does not.

    Collapsed: it predicts one class for at least 99% of the test images, or its last
    training loss is within 1% of ln(classes), the loss of a network that always says
    "each class equally likely". Its outcome is real, but says nothing of the design.
    """
    if predicted:
        top, count = Counter(int(p) for p in predicted).most_common(1)[0]
        if count >= COLLAPSED_SHARE * len(predicted):
            share = 100 * count / len(predicted)
            return f"predicts {class_names[top]} for {share:.1f}% of the test images"
    classes = len(class_names)
    chance = math.log(classes) if classes > 1 else 0.0
    if classes > 1 and abs(last_loss - chance) <= COLLAPSED_LOSS * chance:
        return (
            f"last training loss {last_loss:.4f} is within 1% of ln({classes}) = "
            f"{chance:.4f}: it learned nothing"
        )
    return None
