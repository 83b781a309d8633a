"""Evaluation and benchmarks: ``featmatch eval`` (accuracy on true homographies) and ``featmatch bench``.

Modules: :mod:`.datasets` (pairs with ground truth), :mod:`.metrics` (corner error, accuracy,
AUC, MMA), :mod:`.runner` (same keypoints for every descriptor), :mod:`.report` (Markdown, PNG),
:mod:`.bench` (speed and memory against OpenCV and kornia), :mod:`.cli` (click commands).
Nothing is imported here, so ``import featmatch.evaluation`` has no cost and no side effects.
"""
