"""Fine-tuning: make a model better at *your* images, and measure that it did.

Two kinds, one run layout (see :mod:`visdex.train.common`):

* :func:`finetune_labelled` -- metric learning on a labelled folder (one subfolder per class) or
  CSV ``path,label``: a projection head, optionally with the last blocks, for image models
  (effnet-lite0, DINOv2, or any model's image vectors). Saved as a head directory.
* :func:`finetune_captions` -- contrastive image-text fine-tuning of a CLIP / SigLIP model on
  ``(image, caption)`` pairs, whole towers, their last blocks, or a LoRA adapter. Saved with
  ``save_pretrained`` (LoRA merged).

Both save the best epoch on a held-out split, resume from the last epoch, are deterministic for
a seed, and end with the same evaluation ``visdex eval`` runs, before and after.
The library never imports this package; the ``visdex finetune`` command does.

>>> from visdex.train import finetune_labelled                                       # doctest: +SKIP
>>> finetune_labelled("effnet-lite0", "labelled/", "runs/mine", train_blocks=3).change["map@r"]  # doctest: +SKIP
"""

from __future__ import annotations

from .common import FinetuneResult, TrainProgress, TrainSetupError
from .contrastive import finetune_captions
from .metric import finetune_labelled

__all__ = ["FinetuneResult", "TrainProgress", "TrainSetupError", "finetune_captions", "finetune_labelled"]
