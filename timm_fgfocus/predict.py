"""Classify images with an fgfocus model; print the top classes, the regions it looked at, and draw them.

Usage::

    fgfocus-predict IMAGES_OR_FOLDERS... --checkpoint output/train/best.pth [--json] [--save-regions DIR]
    python -m timm_fgfocus.predict photos/ --model hf-hub:ORG/NAME --pretrained

The model comes from a ``train_fg.py`` checkpoint (``--checkpoint``: architecture, its kwargs
and class names are read from it) or from timm (``--model``: a registered name, or
``hf-hub:ORG/NAME`` / ``local-dir:DIR``, whose weights are always loaded; class names from the
config's ``label_names``). Images are read by :func:`timm_fgfocus.images.open_image` (16-bit
images scaled to 8 bits, transparency over white) and prepared
with the model's eval transform (``resolve_data_config`` + ``create_transform``: resize, center
crop, normalize), and the boxes are mapped back through that resize and crop into the
ORIGINAL image's pixels (``x0, y0, x1, y1``, pixel ``i`` covering ``[i, i + 1)``; a box the crop
padded beyond the image is clipped to it).

Output: one line per image, or with ``--json`` one JSON object per line on stdout::

    {"file": ..., "image_size": [W, H], "topk": [{"index": 3, "name": "...", "prob": 0.91}, ...],
     "boxes": [[x0, y0, x1, y1], ...], "scores": [...], "valid": [...], "num_hybrid_regions": 4}

``boxes`` holds all m proposed regions, best first; the first ``num_hybrid_regions`` (l) are
the ones the prediction uses. Errors, the progress bar and the summary go to stderr.

A ``train_fg --baseline`` checkpoint holds a plain timm classifier: the same lines with ``boxes``,
``scores`` and ``valid`` empty and ``num_hybrid_regions`` 0; ``--save-regions`` draws, beside the image,
its attention map made the way fgfocus makes its own (the max over all classes of its class activation
maps, smoothed; :func:`timm_fgfocus.baseline.single_head_forward`).

``--single-pass``: the single-pass model, the image-level head alone (one backbone pass, no
regions), printed the same way; ``--save-regions`` draws the attention map computed from that one
pass. It also takes a plain timm classifier (``--model local-dir:DIR`` of a folder written by
``hf_upload --single-pass``), whose published weights digest is checked.

An image whose forward pass gives NaN / inf (logits, boxes or scores) gets no output line: it
is named on stderr like an unreadable image, and ``--json`` never prints ``NaN``.

Exit status: 0 when every image was classified, 1 when some could not be read or gave a
non-finite output (each is named on stderr, the others are still classified), 2 for a usage
error, a missing or broken checkpoint or model.
"""
import argparse
import json
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence, Tuple

import torch

from .baseline import model_kind, single_head_forward
from .errors import first_line
from .images import open_image

__all__ = ['InputGeometry', 'input_geometry', 'find_images', 'main']

PROG = 'fgfocus-predict'
IMAGE_EXTENSIONS = ('.jpg', '.jpeg', '.png', '.bmp', '.gif', '.tif', '.tiff', '.webp', '.ppm', '.pgm')


class PredictError(Exception):
    """A problem that stops the whole command (reported as one line, exit status 2)."""


# --- geometry: model input pixels <-> original image pixels ---------------------------------

@dataclass(frozen=True)
class InputGeometry:
    """Where the model input sits in the original image: ``input = original * scale - offset``.

    Attributes:
        scale: (sx, sy), input pixels per original pixel.
        offset: (ox, oy), in input pixels (the crop's top-left corner in the resized image,
            negative where the crop padded the image).
        original_size: (W, H) of the original image.
        input_size: (W, H) of the model input.
    """
    scale: Tuple[float, float]
    offset: Tuple[float, float]
    original_size: Tuple[int, int]
    input_size: Tuple[int, int]

    def to_original(self, boxes: torch.Tensor, clip: bool = True) -> torch.Tensor:
        """Tensor[..., 4] boxes in input pixels -> original pixels (clipped to the image)."""
        sx, sy = self.scale
        ox, oy = self.offset
        b = boxes.detach().double().cpu()
        scale = b.new_tensor([sx, sy, sx, sy])
        offset = b.new_tensor([ox, oy, ox, oy])
        out = (b + offset) / scale
        if clip:
            W, H = self.original_size
            out = torch.minimum(out.clamp(min=0), out.new_tensor([W, H, W, H]))
        return out

    def to_input(self, boxes: torch.Tensor) -> torch.Tensor:
        """Tensor[..., 4] boxes in original pixels -> input pixels."""
        sx, sy = self.scale
        ox, oy = self.offset
        b = boxes.double()
        return b * b.new_tensor([sx, sy, sx, sy]) - b.new_tensor([ox, oy, ox, oy])

    def view_box(self) -> List[float]:
        """The model input's extent ``(x0, y0, x1, y1)`` in original pixels (not clipped)."""
        W, H = self.input_size
        return self.to_original(torch.tensor([0.0, 0.0, W, H]), clip=False).tolist()


def _resize_output_size(size, w: int, h: int, max_size: Optional[int]) -> Tuple[int, int]:
    """(W, H) after torchvision ``Resize(size, max_size)`` (mirrors its rounding)."""
    if isinstance(size, (list, tuple)) and len(size) == 2:
        return int(size[1]), int(size[0])
    size = int(size[0] if isinstance(size, (list, tuple)) else size)
    short, long = (w, h) if w <= h else (h, w)
    new_short, new_long = size, int(size * long / short)
    if max_size is not None and new_long > max_size:
        new_short, new_long = int(max_size * new_short / new_long), max_size
    return (new_short, new_long) if w <= h else (new_long, new_short)


_PIXEL_ONLY = {'ToTensor', 'MaybeToTensor', 'PILToTensor', 'MaybePILToTensor', 'Normalize', 'ConvertImageDtype',
               'ToDtype', 'ColorJitter', 'Grayscale', 'ToNumpy'}


def input_geometry(transform, original_size: Tuple[int, int]) -> InputGeometry:
    """Follow an eval transform's resize / crop steps for an image of ``original_size`` (W, H).

    Understands torchvision ``Resize``, ``CenterCrop`` and timm ``ResizeKeepRatio``,
    ``CenterCropOrPad`` (the steps ``timm.data.create_transform(is_training=False)`` makes for
    every ``crop_mode``); pixel-only steps are skipped.

    Raises:
        PredictError: for a geometric step it does not know (boxes could not be mapped back).
    """
    import torchvision.transforms as T
    from timm.data.transforms import CenterCropOrPad, ResizeKeepRatio

    steps = getattr(transform, 'transforms', [transform])
    w, h = original_size
    ax = ay = 1.0  # input = a * original + b
    bx = by = 0.0
    for t in steps:
        if isinstance(t, ResizeKeepRatio):
            th, tw = t.size
            ratio_h, ratio_w = h / th, w / tw
            ratio = max(ratio_h, ratio_w) * t.longest + min(ratio_h, ratio_w) * (1. - t.longest)
            nh, nw = round(h / ratio), round(w / ratio)
        elif isinstance(t, T.Resize):
            nw, nh = _resize_output_size(t.size, w, h, t.max_size)
        elif isinstance(t, (T.CenterCrop, CenterCropOrPad)):
            size = (t.size, t.size) if isinstance(t.size, int) else tuple(t.size)
            ch, cw = size if len(size) == 2 else (size[0], size[0])
            if cw > w:  # both pad (floor on the left) and then crop a centred window
                bx += (cw - w) // 2
                w = cw
            if ch > h:
                by += (ch - h) // 2
                h = ch
            bx -= int(round((w - cw) / 2.0))
            by -= int(round((h - ch) / 2.0))
            w, h = cw, ch
            continue
        elif type(t).__name__ in _PIXEL_ONLY:
            continue
        else:
            raise PredictError(f'cannot map boxes back through the transform step {t!r}')
        sx, sy = nw / w, nh / h
        ax, bx, ay, by = ax * sx, bx * sx, ay * sy, by * sy
        w, h = nw, nh
    return InputGeometry(scale=(ax, ay), offset=(-bx, -by), original_size=tuple(original_size), input_size=(w, h))


# --- inputs -----------------------------------------------------------------------------------

@dataclass
class _Input:
    path: Path
    root: Optional[Path]  # the folder it was found in (for --save-regions names)


def find_images(paths: Sequence[str]) -> Tuple[List[_Input], List[Tuple[str, str]], bool]:
    """Expand files and folders (recursively, image extensions only, sorted).

    Returns:
        (inputs, [(path, error)] for paths that do not exist, whether any folder was given).
    """
    found, missing, any_folder = [], [], False
    for p in paths:
        path = Path(p)
        if path.is_dir():
            any_folder = True
            for f in sorted(path.rglob('*')):
                rel = f.relative_to(path)
                if f.is_file() and f.suffix.lower() in IMAGE_EXTENSIONS and not any(
                        part.startswith('.') for part in rel.parts):
                    found.append(_Input(f, path))
        elif path.is_file():
            found.append(_Input(path, None))
        else:
            missing.append((p, 'no such file or folder'))
    return found, missing, any_folder


# --- model ------------------------------------------------------------------------------------

def _read_class_names(path: str) -> List[str]:
    try:
        with open(path, encoding='utf-8') as f:
            return [line.strip() for line in f if line.strip()]
    except OSError as e:
        raise PredictError(f'cannot read class names file {path}: {e.strerror or e}') from None


def load_model(args) -> Tuple[torch.nn.Module, Optional[List[str]]]:
    """The model (eval, on ``args.device``) and its class names (or None)."""
    import timm

    import timm_fgfocus  # noqa: F401  registers the fgfocus models
    from timm_fgfocus.checkpoint import CheckpointError, model_from_checkpoint

    if args.checkpoint:
        try:
            model, ckpt = model_from_checkpoint(args.checkpoint, use_ema=args.use_ema)
        except CheckpointError as e:
            raise PredictError(str(e)) from None
        class_names = ckpt.get('class_names')
        if ckpt.get('baseline'):  # a --baseline run's plain classifier: one head, its attention map a CAM
            return _to_device(model, args), _checked_names(class_names, args, model)
    else:
        from timm_fgfocus.hub import HubConfigError, check_local_dir

        # hf-hub:/local-dir: name a set of weights: they are loaded, never swapped for random ones
        by_location = timm.models.parse_model_name(args.model)[0] in ('hf-hub', 'local-dir')
        if by_location and args.num_classes is not None:
            raise PredictError(f'--num-classes would replace the trained heads of {args.model} with untrained ones; '
                               f'predict with its own classes (drop --num-classes)')
        if not by_location and not args.pretrained:
            print(f'{PROG}: warning: --model {args.model} without --pretrained has random weights: '
                  f'its predictions mean nothing', file=sys.stderr)
        kwargs = {} if args.num_classes is None else dict(num_classes=args.num_classes)
        try:
            check_local_dir(args.model)
            model = timm.create_model(args.model, pretrained=args.pretrained or by_location, **kwargs)
        except HubConfigError as e:
            raise PredictError(str(e)) from None
        except Exception as e:  # unknown name, Hub not reachable, weights that do not fit, ...
            msg = first_line(e)
            if isinstance(e, json.JSONDecodeError):  # an hf-hub: config.json (local-dir: is checked above)
                msg = f'its config.json is not valid JSON ({msg})'
            raise PredictError(f'cannot create model {args.model!r}: {msg}') from None
        class_names = (getattr(model, 'pretrained_cfg', None) or {}).get('label_names')
    if not hasattr(model, 'forward_structured'):
        if not args.single_pass:
            raise PredictError(f'{type(model).__name__} is not an fgfocus model (no forward_structured); a plain '
                               f'timm classifier (e.g. published by hf_upload --single-pass) needs --single-pass')
        from timm_fgfocus.integrity import WeightsIntegrityError, verify_published_weights
        try:  # a plain timm model: timm's loader checks no digest
            verify_published_weights(model.state_dict(), model.pretrained_cfg)
        except WeightsIntegrityError as e:
            raise PredictError(str(e)) from None
    return _to_device(model, args), _checked_names(class_names, args, model)


def _checked_names(class_names: Optional[List[str]], args, model) -> Optional[List[str]]:
    """The class names to print (``--class-names`` over the model's), one per class."""
    if not getattr(model, 'num_classes', 0):
        raise PredictError('the model has no classifier (num_classes=0)')
    if args.class_names:
        class_names = _read_class_names(args.class_names)
    if class_names is not None:
        class_names = [str(n) for n in class_names]
        if len(class_names) != model.num_classes:
            raise PredictError(
                f'{len(class_names)} class names for a model with {model.num_classes} classes')
    return class_names


def _to_device(model, args):
    try:
        return model.to(args.device).eval()
    except (RuntimeError, AssertionError) as e:
        raise PredictError(f'cannot use device {args.device!r}: {first_line(e)}') from None


# --- output -----------------------------------------------------------------------------------

def _figure_path(item: _Input, out_dir: Path, used: set) -> Path:
    rel = item.path.relative_to(item.root) if item.root is not None else Path(item.path.name)
    base = out_dir / rel.with_suffix('')
    path, n = base.with_name(base.name + '.png'), 1
    while path in used:
        path, n = base.with_name(f'{base.name}_{n}.png'), n + 1
    used.add(path)
    return path


def _label(index: int, class_names: Optional[List[str]]) -> Optional[str]:
    return class_names[index] if class_names is not None else None


def _format_text(file: str, topk: List[Dict]) -> str:
    classes = ', '.join(f'{c["name"] if c["name"] is not None else c["index"]} {100 * c["prob"]:.1f}%' for c in topk)
    return f'{file}: {classes}'


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog=PROG, description='Classify images with an fgfocus model and show the regions it focused on.')
    p.add_argument('inputs', nargs='+', metavar='IMAGE_OR_FOLDER',
                   help='image files, or folders searched recursively for images')
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument('--checkpoint', metavar='PATH', help='a train_fg.py checkpoint (last.pth / best.pth)')
    src.add_argument('--model', metavar='NAME',
                     help='timm model name, or hf-hub:ORG/NAME / local-dir:DIR (their weights are always loaded)')
    p.add_argument('--pretrained', action='store_true',
                   help='with --model NAME: load its pretrained weights (implied for hf-hub: / local-dir:)')
    p.add_argument('--num-classes', type=int, default=None, help='with --model: number of classes')
    p.add_argument('--use-ema', action='store_true', help='with --checkpoint: use its EMA weights')
    p.add_argument('--single-pass', action='store_true',
                   help='the image-level head only: one backbone pass, no regions (the single-pass model); '
                        '--save-regions draws the attention map alone')
    p.add_argument('--class-names', metavar='FILE', help='class names, one per line (overrides the model\'s)')
    p.add_argument('--topk', type=int, default=5, help='classes to report per image (default 5)')
    p.add_argument('-b', '--batch-size', type=int, default=8, help='images per forward pass (default 8)')
    p.add_argument('--device', default=None, help='torch device (default cuda if available, else cpu)')
    p.add_argument('--json', action='store_true', help='one JSON object per image per line on stdout')
    p.add_argument('--save-regions', metavar='DIR',
                   help='write a figure per image (top regions + attention) and a contact sheet to DIR')
    p.add_argument('--draw-regions', type=int, default=None, metavar='N',
                   help='regions drawn per figure (default l, those the prediction uses; at most m)')
    p.add_argument('--figure-size', type=int, default=512, help='longer side of each panel of the per-image figures (default 512)')
    p.add_argument('--sheet-max', type=int, default=64, help='images on the contact sheet (default 64)')
    p.add_argument('--no-progress', action='store_true', help='no progress bar')
    return p


def _predict_batch(model, batch, geoms, topk: int, single_pass: bool = False, with_attention: bool = True):
    """Run one batch; per image (finite, probs topk, boxes in original pixels, scores, valid, attention).

    ``finite`` is False when the image's logits, boxes or scores hold NaN / inf (weights that
    overflow on this input, a broken device): such an image gets no prediction. ``single_pass``: the
    image-level head alone (:func:`timm_fgfocus.baseline.single_head_forward`): no boxes (``[0, 4]``), no scores, and the
    attention map only ``with_attention``.
    """
    x = torch.stack(batch).to(next(model.parameters()).device)
    with torch.no_grad():
        if single_pass or model_kind(model) != 'fgfocus':  # one head, its attention map from the same pass
            logits, attention = single_head_forward(model, x, attention=with_attention)
            boxes, scores = logits.new_zeros(len(x), 0, 4), logits.new_zeros(len(x), 0)
            valid = torch.zeros(len(x), 0, dtype=torch.bool)
        else:
            out = model.forward_structured(x, num_crops=model.num_hybrid_regions)
            logits, boxes, scores, valid, attention = out.logits, out.boxes, out.scores, out.valid, out.attention
    finite = (torch.isfinite(logits.float()).all(dim=-1) & torch.isfinite(boxes.float()).flatten(1).all(dim=1)
              & torch.isfinite(scores.float()).all(dim=-1)).cpu()
    probs = logits.float().softmax(dim=-1).cpu()
    top_p, top_i = probs.topk(min(topk, probs.shape[-1]), dim=-1)
    results = []
    for j, geom in enumerate(geoms):
        results.append((bool(finite[j]), top_p[j], top_i[j], geom.to_original(boxes[j]), scores[j].float().cpu(),
                        valid[j].cpu(), None if attention is None else attention[j].float().cpu()))
    return results


def _regions_folder(path: Optional[str]) -> Optional[Path]:
    """The ``--save-regions`` folder (created when the first figure is written); None without the flag.

    Raises:
        PredictError: it is a file, or a file stands where one of its parent folders should be.
    """
    if not path:
        return None
    folder = Path(path)
    existing = next((p for p in (folder, *folder.parents) if p.exists()), None)
    if existing is not None and not existing.is_dir():
        where = 'is a file' if existing == folder else f'is inside the file {existing}'
        raise PredictError(f'--save-regions {folder} {where}: it must be a folder (new or existing) for the '
                           f'figures and contact_sheet.png')
    return folder


class _Session:
    """One run over the inputs: prints a line per image, writes its figure, keeps thumbnails for the
    contact sheet and counts what failed."""

    def __init__(self, args, model, class_names: Optional[List[str]], out_dir: Optional[Path], failures: list, bar):
        self.args, self.model, self.class_names, self.out_dir, self.bar = args, model, class_names, out_dir, bar
        self.failures = failures
        # the regions the prediction uses: l, none for the single pass or a single-head model
        self.num_hybrid = 0 if args.single_pass or model_kind(model) != 'fgfocus' else model.num_hybrid_regions
        self.num_draw = self.num_hybrid if args.draw_regions is None else args.draw_regions
        self.used_names: set = set()
        self.thumbs: List = []
        self.n_ok = 0

    def report(self, msg: str) -> None:
        from tqdm import tqdm
        tqdm.write(f'{PROG}: {msg}', file=sys.stderr)

    def predict(self, pending: List[Tuple[_Input, Any, torch.Tensor, InputGeometry]]) -> None:
        """Classify a batch of ``(input, image, model input, geometry)`` and write what comes out."""
        if not pending:
            return
        results = _predict_batch(self.model, [p[2] for p in pending], [p[3] for p in pending], self.args.topk,
                                 self.args.single_pass, with_attention=self.out_dir is not None)
        for (item, img, _, geom), (finite, top_p, top_i, boxes, scores, valid, attention) in zip(pending, results):
            if not finite:
                self.failures.append((str(item.path), 'non-finite model output'))
                self.report(f'{item.path}: the model\'s output for this image is NaN or inf, no prediction '
                            f'(its weights overflow on this input?)')
                continue
            topk = [dict(index=int(i), name=_label(int(i), self.class_names), prob=round(float(p), 6))
                    for p, i in zip(top_p, top_i)]
            if self.args.json:  # allow_nan=False: never the invalid JSON tokens NaN / Infinity
                print(json.dumps(dict(
                    file=str(item.path), image_size=list(geom.original_size), topk=topk,
                    boxes=[[round(v, 2) for v in b] for b in boxes.tolist()],
                    scores=[round(float(s), 6) for s in scores], valid=[bool(v) for v in valid],
                    num_hybrid_regions=self.num_hybrid), allow_nan=False), flush=True)
            else:
                print(_format_text(str(item.path), topk), flush=True)
            if self.out_dir is not None:
                self._draw(item, img, geom, topk[0], boxes, valid, attention)
            self.n_ok += 1
        self.bar.update(len(pending))

    def _draw(self, item: _Input, img, geom: InputGeometry, best: Dict, boxes, valid, attention) -> None:
        """The image's figure (regions and attention on the original image), and a thumbnail for the sheet."""
        from timm_fgfocus.visualize import region_figure

        title = f'{best["name"] if best["name"] is not None else "class " + str(best["index"])} ' \
                f'({100 * best["prob"]:.0f}%)'
        fig_args = dict(valid=valid, num_regions=self.num_draw, view_box=geom.view_box(), title=title)
        path = _figure_path(item, self.out_dir, self.used_names)
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            region_figure(img, boxes, attention, side=self.args.figure_size, **fig_args).save(path)
        except OSError as e:
            raise PredictError(f'cannot write {path}: {e.strerror or e}') from None
        if len(self.thumbs) < self.args.sheet_max:
            fig_args['title'] = f'{item.path.name}: {title}'
            self.thumbs.append(region_figure(img, boxes, attention, side=192, **fig_args))

    def contact_sheet(self, any_folder: bool) -> None:
        """``contact_sheet.png`` of the thumbnails, for a folder of images or more than one image."""
        from timm_fgfocus.visualize import make_grid

        if self.out_dir is None or not self.thumbs or not (any_folder or len(self.thumbs) > 1):
            return
        sheet = self.out_dir / 'contact_sheet.png'
        try:
            make_grid(self.thumbs).save(sheet)
        except OSError as e:
            raise PredictError(f'cannot write {sheet}: {e.strerror or e}') from None


def run(args) -> int:
    from timm.data import create_transform, resolve_data_config
    from tqdm import tqdm

    if args.topk < 1 or args.batch_size < 1 or args.figure_size < 16 or args.sheet_max < 0:
        raise PredictError('--topk, --batch-size must be >= 1, --figure-size >= 16, --sheet-max >= 0')
    if args.model is None and (args.pretrained or args.num_classes is not None):
        raise PredictError('--pretrained and --num-classes go with --model (a checkpoint knows its own)')
    if args.single_pass and args.draw_regions is not None:
        raise PredictError('--draw-regions: --single-pass proposes no regions (it draws the attention map alone)')
    args.device = args.device or ('cuda' if torch.cuda.is_available() else 'cpu')

    items, failures, any_folder = find_images(args.inputs)
    for path, err in failures:
        print(f'{PROG}: {path}: {err}', file=sys.stderr)
    if not items:
        raise PredictError('no images found in ' + ' '.join(args.inputs))
    out_dir = _regions_folder(args.save_regions)

    model, class_names = load_model(args)
    transform = create_transform(**resolve_data_config(model=model), is_training=False)
    if args.draw_regions is not None and model_kind(model) != 'fgfocus':
        raise PredictError('--draw-regions: this model proposes no regions (a single-head model); drop the flag')
    if args.draw_regions is not None and not 1 <= args.draw_regions <= model.num_regions:
        raise PredictError(f'--draw-regions must be in [1, m={model.num_regions}], got {args.draw_regions}')

    bar = tqdm(total=len(items), unit='img', file=sys.stderr, disable=args.no_progress or not any_folder,
               dynamic_ncols=True)
    session = _Session(args, model, class_names, out_dir, failures, bar)
    pending = []
    try:
        for item in items:
            try:
                img = open_image(item.path)
            except Exception as e:  # Pillow raises several types for broken / non-image files
                failures.append((str(item.path), str(e)))
                session.report(f'{item.path}: cannot read image ({type(e).__name__}: {first_line(e)})')
                bar.update(1)
                continue
            pending.append((item, img, transform(img), input_geometry(transform, img.size)))
            if len(pending) == args.batch_size:
                session.predict(pending)
                pending = []
        session.predict(pending)
    finally:
        bar.close()
    session.contact_sheet(any_folder)
    if failures:
        print(f'{PROG}: {session.n_ok} image(s) classified, {len(failures)} failed: '
              + ', '.join(p for p, _ in failures), file=sys.stderr)
        return 1
    return 0


def main(argv: Optional[Sequence[str]] = None) -> int:
    """Console entry point ``fgfocus-predict``; returns the exit status."""
    args = build_parser().parse_args(argv)
    try:
        return run(args)
    except PredictError as e:
        print(f'{PROG}: error: {e}', file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f'{PROG}: interrupted', file=sys.stderr)
        return 130


if __name__ == '__main__':
    sys.exit(main())
