"""``python -m hf_upload``: publish a train_fg.py checkpoint on the Hugging Face Hub.

See :mod:`timm_fgfocus.hub` and docs/hub.md.
"""
import sys

from timm_fgfocus.hub import main

if __name__ == '__main__':
    sys.exit(main())
