#!/usr/bin/env python3
"""``hf_upload``: publish a ``train_fg.py`` checkpoint on the Hugging Face Hub in timm's layout.

The command-line entry (``python -m hf_upload``, also installed as the ``hf-upload`` command;
``--help`` lists the options). The folder is written and pushed by :mod:`timm_fgfocus.hub`
(docs/hub.md); this script parses the arguments, dispatches, and turns the user's mistakes into
one line on stderr (exit status 2 for usage errors, 1 for a failed export or push). The token is
never printed: error messages are scrubbed of it.

Examples::

    python -m hf_upload --checkpoint runs/cub200/best.pth --repo-id timm-fgfocus/fgfocus_resnet50.cub200
    python -m hf_upload --checkpoint runs/cub200/best.pth --repo-id ORG/NAME --dry-run /tmp/repo
    python -m hf_upload --checkpoint runs/cub200/best.pth --repo-id ORG/resnet50.cub200-single-pass --single-pass
"""
import argparse
import sys
from pathlib import Path
from typing import Optional, Sequence

from timm_fgfocus.checkpoint import CheckpointError
from timm_fgfocus.fgfocus import HF_ORG
from timm_fgfocus.hub import (
    WEIGHTS_NAME, HubUploadError, check_checkpoint_file, check_folder, check_repo_id, hub_token,
    push_checkpoint_to_hub, read_summary, save_checkpoint_for_hub, scrub,
)

__all__ = ['main']


def _size(n: int) -> str:
    for unit in ('B', 'kB', 'MB', 'GB'):
        if n < 1000 or unit == 'GB':
            return f'{n:.0f} {unit}' if unit == 'B' else f'{n:.1f} {unit}'
        n /= 1000


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog='hf_upload',
        description='Publish a train_fg.py checkpoint on the Hugging Face Hub in timm\'s layout '
                    '(model.safetensors, config.json, README.md model card).')
    p.add_argument('--checkpoint', required=True, help='checkpoint written by train_fg.py (best.pth / last.pth)')
    p.add_argument('--repo-id', required=True, help=f'ORG/NAME, e.g. {HF_ORG}/fgfocus_resnet50.cub200')
    p.add_argument('--private', action='store_true',
                   help='create the repo private (an existing repo keeps its visibility)')
    p.add_argument('--revision', '--branch', dest='revision', default=None,
                   help='branch to push to (created if needed)')
    p.add_argument('--commit-message', default=None)
    p.add_argument('--dry-run', metavar='DIR', default=None,
                   help='write the repo folder into DIR (new or empty) and list what would be pushed; no network, '
                        'no token')
    p.add_argument('--overwrite', action='store_true',
                   help='with --dry-run: write into a folder that has files (README.md, config.json, '
                        'model.safetensors are replaced, other files kept)')
    p.add_argument('--ema', action='store_true', help="publish the checkpoint's EMA weights")
    p.add_argument('--summary', default=None,
                   help='training log for the card (default: summary.csv beside the checkpoint, if any); '
                        'a file named here must exist and be a train_fg.py summary.csv')
    p.add_argument('--license', default=None,
                   help="license of the weights (default: the backbone weights' own, else apache-2.0)")
    p.add_argument('--single-pass', action='store_true',
                   help="publish the backbone and image-level head as a plain timm model of the backbone's own "
                        'architecture (one backbone pass; loads without timm_fgfocus)')
    return p


def main(argv: Optional[Sequence[str]] = None) -> int:
    """``hf_upload`` / ``python -m hf_upload``; returns the exit status (0 ok, 1 error, 2 usage: a bad
    repo id, a ``--dry-run`` folder that is a file or not empty without ``--overwrite``, a missing or
    unreadable ``--summary``)."""
    args = _parser().parse_args(argv)
    try:  # usage errors, before anything is read or written
        check_repo_id(args.repo_id)
        check_checkpoint_file(args.checkpoint)
        if args.overwrite and not args.dry_run:
            raise HubUploadError('--overwrite goes with --dry-run DIR (a push writes into a temporary folder)')
        if args.dry_run:
            check_folder(Path(args.dry_run), args.overwrite)
        if args.summary is not None:
            read_summary(args.summary, required=True)
    except HubUploadError as e:
        print(f'hf_upload: {e}', file=sys.stderr)
        return 2
    token = None
    try:
        if args.dry_run:
            folder, ckpt = save_checkpoint_for_hub(
                args.checkpoint, args.dry_run, args.repo_id, use_ema=args.ema, summary_csv=args.summary,
                revision=args.revision, license=args.license, overwrite=args.overwrite, single_pass=args.single_pass)
            where = args.repo_id + (f'@{args.revision}' if args.revision else '')
            print(f'hf_upload: dry run, nothing pushed. {folder} holds what would be pushed to {where}:')
            for name in ('README.md', 'config.json', WEIGHTS_NAME):
                print(f'  {name:<20} {_size((Path(folder) / name).stat().st_size):>10}')
            print(f"hf_upload: load it with timm.create_model('local-dir:{folder}', pretrained=True)"
                  + (' (timm alone: a plain timm model)' if args.single_pass else ''))
            return 0
        token = hub_token(None)
        info = push_checkpoint_to_hub(
            args.checkpoint, args.repo_id, token=token, private=args.private, revision=args.revision,
            commit_message=args.commit_message, use_ema=args.ema, summary_csv=args.summary, license=args.license,
            single_pass=args.single_pass)
        rev = f'@{args.revision}' if args.revision and args.revision != 'main' else ''
        print(f'hf_upload: pushed README.md, config.json, {WEIGHTS_NAME} to {args.repo_id}{rev} '
              f'(commit {getattr(info, "oid", "?")}): {getattr(info, "commit_url", "")}')
        print(f"hf_upload: load it with timm.create_model('hf-hub:{args.repo_id}{rev}', pretrained=True)")
        return 0
    except (HubUploadError, CheckpointError) as e:
        print(f'hf_upload: {scrub(str(e), [token or ""])}', file=sys.stderr)
        return 1


if __name__ == '__main__':
    sys.exit(main())
