"""The demo client's reading of an answer: ``top`` first, else the first row of ``predictions``."""

from __future__ import annotations

from demo.client import top1


def test_top1_reads_the_first_row_of_nested_predictions_and_an_older_agents_flat_ones():
    assert top1({"predictions": [[0.1, 0.7, 0.2], [0.9, 0.0, 0.1]]}) == 1  # [N, K]: row 0, not the batch's max
    assert top1({"predictions": [0.1, 0.2, 0.7]}) == 2  # an older agent's flat row
    assert top1({"predictions": [[0.1, 0.7, 0.2]], "top": [{"index": 0, "label": "a", "score": 0.9}]}) == 0
    assert top1({"task": "detection", "detections": []}) is None
