#!/usr/bin/env python3
"""Train an fgfocus model: ``python train_fg.py --demo`` or ``python train_fg.py --data-dir DATA``.

A thin entry into :mod:`timm_fgfocus.train` (also installed as the ``train-fg`` command);
``python train_fg.py --help`` lists the options.
"""
from timm_fgfocus.train import main

if __name__ == '__main__':
    main()
