"""Training and patch-level evaluation of the learned descriptors (``hardnet``, ``exptloss``).

Modules, one concern each:

- :mod:`featmatch.train.datasets`: patch datasets (self-supervised warps of the train photos,
  HPatches / Oxford sequences, UBC PhotoTour) and the fixed test-split patch pairs.
- :mod:`featmatch.train.losses`: the HardNet loss, Exp-TLoss and their miners.
- :mod:`featmatch.train.metrics`: FPR95 and patch mAP.
- :mod:`featmatch.train.loop`: the seeded, resumable training loop.
- :mod:`featmatch.train.cli`: the ``train`` and ``eval-patches`` commands.

Nothing is imported here, so ``import featmatch.train`` stays cheap.
"""
