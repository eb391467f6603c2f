"""mapo-train: MaPO (and Diffusion-DPO / SFT) fine-tuning of SDXL on preference-pair datasets.

The losses are in ``mapo_train.losses``; the trainer in ``mapo_train.train``; the command line in
``mapo_train.cli``. Nothing heavy is imported here, so ``mapo-train --help`` stays fast.
"""
