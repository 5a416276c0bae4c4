"""Cost of the integrity digests on a ResNet-50-sized training checkpoint (timm_fgfocus.integrity).

A train_fg ``last.pth`` of ``fgfocus_resnet50`` holds the weights, the EMA weights and the SGD
momentum buffers: three copies of ~25.9 M float32 values, ~310 MB. Timed here, best of
``--repeats`` (wall clock, one process):

* lower bounds, measured in the same run: one ``hashlib.sha256`` pass over the same number of bytes
  in a single buffer (what any checksum of these tensors must read), ``torch.save`` of the
  checkpoint into memory, and ``atomic_save`` / ``torch.load`` of it on disk without the digests;
* ours: :func:`seal_checkpoint` (what :func:`atomic_save` adds) and :func:`verify_checkpoint` (what
  :func:`load_checkpoint` adds), and the published-weights digest (state dict only).

Not run in CI. ``python benchmarks/bench_integrity.py [--model fgfocus_resnet50] [--repeats 5] [--threads 1]``
prints a table with the load average (the machine is shared; the ratios matter, not the seconds).
"""
import argparse
import hashlib
import io
import os
import tempfile

import torch

import timm
import timm_fgfocus  # noqa: F401  registers the models
from timm_fgfocus.checkpoint import atomic_write, checkpoint_dict, load_checkpoint, seal_checkpoint, verify_checkpoint
from timm_fgfocus.integrity import digest

from bench_focus_ops import best_of  # the same minimum-of-n timer (benchmarks/ is on sys.path when run)


def main():
    p = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    p.add_argument('--model', default='fgfocus_resnet50')
    p.add_argument('--num-classes', type=int, default=200)
    p.add_argument('--repeats', type=int, default=5)
    p.add_argument('--threads', type=int, default=0,
                   help='torch threads (0: torch default); 1 on a shared machine, where the finite check\'s '
                        'parallel reductions otherwise wait for busy cores')
    args = p.parse_args()
    if args.threads > 0:
        torch.set_num_threads(args.threads)

    torch.manual_seed(0)
    model = timm.create_model(args.model, num_classes=args.num_classes)
    opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    for prm in model.parameters():
        prm.grad = torch.randn_like(prm)
    opt.step()  # momentum buffers for every parameter
    ema = {k: v.clone() for k, v in model.state_dict().items()}
    ckpt = checkpoint_dict(model, args.model, dict(num_classes=args.num_classes), state_dict_ema=ema,
                           optimizer=opt.state_dict(), epoch=0, metrics={'eval_top1': 0.0})
    nbytes = sum(t.numel() * t.element_size() for part in (ckpt['state_dict'], ema) for t in part.values())
    nbytes += sum(t.numel() * t.element_size() for s in opt.state_dict()['state'].values() for t in s.values()
                  if torch.is_tensor(t))
    flat = os.urandom(nbytes)

    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        path = os.path.join(tmp, 'last.pth')
        sealed = seal_checkpoint(ckpt)
        plain_save = best_of(lambda: atomic_write(path, lambda f: torch.save(ckpt, f)), args.repeats)
        torch.save(sealed, path)
        loaded = torch.load(path, map_location='cpu', weights_only=True)
        rows += [
            ('sha256 of one buffer of the same size (lower bound)', best_of(lambda: hashlib.sha256(flat).digest(),
                                                                            args.repeats)),
            ('torch.save into memory (lower bound)', best_of(lambda: torch.save(ckpt, io.BytesIO()), args.repeats)),
            ('atomic_save without digests (write + fsync)', plain_save),
            ('torch.load from disk (weights_only)', best_of(
                lambda: torch.load(path, map_location='cpu', weights_only=True), args.repeats)),
            ('seal_checkpoint: the digests atomic_save adds', best_of(lambda: seal_checkpoint(ckpt), args.repeats)),
            ('verify_checkpoint: what load_checkpoint adds', best_of(lambda: verify_checkpoint(loaded, path),
                                                                     args.repeats)),
            ('load_checkpoint (torch.load + verify)', best_of(lambda: load_checkpoint(path), args.repeats)),
            ('digest(state_dict): a published model.safetensors', best_of(lambda: digest(ckpt['state_dict']),
                                                                          args.repeats)),
        ]
    bound = rows[0][1]
    print(f'{args.model}: checkpoint tensors {nbytes / 1e6:.0f} MB (weights + EMA + momentum); '
          f'torch {torch.__version__}, {torch.get_num_threads()} threads, load average '
          f'{" ".join(f"{x:.2f}" for x in os.getloadavg())}')
    print('| step | seconds | x sha256 bound |\n|---|---|---|')
    for name, t in rows:
        print(f'| {name} | {t:.3f} | {t / bound:.2f} |')


if __name__ == '__main__':
    main()
