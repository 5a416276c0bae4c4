"""Where the detail that decides an image's class is: ground-truth boxes, and CUB's part keypoints,
for each sample of a data set, so an evaluation can score where a model looked.

Box convention (one for every source): ``(x0, y0, x1, y1)`` in the original image's pixels,
continuous coordinates with ``(0, 0)`` the top-left corner of the image and ``(W, H)`` its
bottom-right corner, ``0 <= x0 < x1 <= W``; a box covering pixel columns 3 to 5 is ``x0 = 3, x1 = 6``.

Sources:

* **A box file** (``--boxes FILE``): a CSV (``.tsv``/``.tab``: tab separated) whose first row, the
  header, names the columns ``path,x0,y0,x1,y1`` (any order, any case; other columns are ignored).
  One row per box, several rows per image allowed. ``path`` names the image the way the data set
  does: for image folders and ``csv`` label tables a path relative to ``base`` (the ``--data-dir``
  folder, the label table's folder; absolute paths work too), e.g. ``val/<class>/a.jpg``; for
  ``hfds/`` data sets the row index of the image in the evaluated split (``0``, ``17``), or the file
  name the data set's ``Image`` feature stored with the image when that name is unique in the split.
* **CUB-200-2011** (``--dataset cub200``): its ``bounding_boxes.txt`` (``<image id> <x> <y> <width>
  <height>``, the bird) and ``parts/part_locs.txt`` (``<image id> <part id> <x> <y> <visible>``, 15
  keypoints per image), read for the evaluated split by :func:`cub_ground_truth`.

Checks, the same for every source. A file without the header's columns, a value that is not a
number, a box with ``x1 < x0`` or ``y1 < y0`` (columns in the wrong order, or ``x, y, width,
height``) is an error naming the file and line (:class:`~timm_fgfocus.errors.EvaluationError`).
An empty box (zero width or height), a box entirely outside its image, a row naming an image
that is not in the split and a row naming an image that cannot be read are skipped; a box partly outside its image is clipped to it; each kind
is counted (:attr:`GroundTruth.counts`) and said in one warning line with an example. Nothing
read is written to.
"""
import csv
import io
import math
import os
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Dict, List, Mapping, NamedTuple, Optional, Sequence, Tuple

import numpy as np

from .errors import EvaluationError
from .images import image_size

__all__ = ['BOX_COLUMNS', 'BoxRow', 'GroundTruth', 'read_box_file', 'boxes_for_samples', 'sample_keys',
           'read_ground_truth', 'cub_ground_truth', 'load_ground_truth', 'write_box_file']

BOX_COLUMNS = ('path', 'x0', 'y0', 'x1', 'y1')
SizeFn = Callable[[int], Tuple[int, int]]  # sample index -> (width, height) of its original image


class BoxRow(NamedTuple):
    """One row of a box file: where it is (file, 1-based line) and what it says."""
    file: str
    line: int
    path: str
    box: Tuple[float, float, float, float]  # x0, y0, x1, y1


@dataclass(frozen=True)
class GroundTruth:
    """Ground truth for each sample ``i`` of one split, in the data set's order.

    Attributes:
        boxes: ``boxes[i]`` is float32[K, 4], the ``(x0, y0, x1, y1)`` boxes of sample ``i`` in its
            original pixels (K = 0: none known).
        parts: None, or ``parts[i]`` float32[P, 3]: ``(x, y, visible)`` keypoints of sample ``i``
            (CUB: P = 15, by part id; ``visible`` is 0 or 1).
        source: the file(s) read.
        counts: rows or boxes read, kept, clipped and skipped (by reason).
    """
    boxes: Tuple[np.ndarray, ...]
    parts: Optional[Tuple[np.ndarray, ...]] = None
    source: str = ''
    counts: Mapping[str, int] = field(default_factory=dict)

    def __len__(self) -> int:
        return len(self.boxes)

    @property
    def num_with_boxes(self) -> int:
        """How many samples have at least one box."""
        return sum(1 for b in self.boxes if len(b))


def _warn(message: str) -> None:
    print(f'warning: {message}', file=sys.stderr, flush=True)


def _number(text: str, name: str, where: str) -> float:
    try:
        value = float(text)
    except ValueError:
        value = math.nan
    if not math.isfinite(value):
        raise EvaluationError(f'{where}: {name} must be a number, got {text!r}')
    return value


def _header(path: Path, head: List[str]) -> Dict[str, int]:
    names = [c.strip().lower() for c in head]
    missing = [c for c in BOX_COLUMNS if c not in names]
    if missing:
        raise EvaluationError(f'boxes file {path}: the first row must name the columns {",".join(BOX_COLUMNS)} '
                              f'(any order; original image pixels, x1 > x0, y1 > y0); missing {", ".join(missing)}, '
                              f'found {", ".join(repr(c) for c in names) or "nothing"}')
    return {c: names.index(c) for c in BOX_COLUMNS}


def read_box_file(path: os.PathLike) -> List[BoxRow]:
    """Read and check every row of a box file (see the module docstring for its format).

    Returns:
        The rows in file order; empty and zero-area boxes are kept (:func:`boxes_for_samples` counts them).

    Raises:
        EvaluationError: naming the file (and line): missing, unreadable, no header with the five
            columns, a short row, a value that is not a finite number, ``x1 < x0`` or ``y1 < y0``.
    """
    path = Path(path)
    if not path.is_file():
        raise EvaluationError(f'boxes file {path} does not exist')
    delimiter = '\t' if path.suffix.lower() in ('.tsv', '.tab') else ','
    try:
        with open(path, newline='', encoding='utf-8-sig') as f:
            records = [(n, r) for n, r in enumerate(csv.reader(f, delimiter=delimiter), 1) if any(c.strip() for c in r)]
    except (OSError, UnicodeDecodeError, csv.Error) as e:
        raise EvaluationError(f'boxes file {path} cannot be read: {e}') from None
    if not records:
        raise EvaluationError(f'boxes file {path} is empty: expected a header {",".join(BOX_COLUMNS)} and one row '
                              f'per box')
    cols = _header(path, records[0][1])
    rows = []
    for n, record in records[1:]:
        where = f'boxes file {path}, line {n}'
        if len(record) <= max(cols.values()) or not record[cols['path']].strip():
            raise EvaluationError(f'{where}: expected {",".join(BOX_COLUMNS)} with a path, '
                                  f'got {delimiter.join(record)!r}')
        x0, y0, x1, y1 = (_number(record[cols[c]].strip(), c, where) for c in BOX_COLUMNS[1:])
        for lo, hi, a, b in (('x0', 'x1', x0, x1), ('y0', 'y1', y0, y1)):
            if b < a:
                raise EvaluationError(f'{where}: {hi} {b:g} < {lo} {a:g}: boxes are x0,y0,x1,y1 corners with '
                                      f'x1 >= x0 and y1 >= y0 (columns in another order, or x,y,width,height?)')
        rows.append(BoxRow(str(path), n, record[cols['path']].strip(), (x0, y0, x1, y1)))
    return rows


def _clip(box: Tuple[float, float, float, float], size: Tuple[int, int]) -> Tuple[Optional[str], np.ndarray]:
    """(None, box) when inside the image, ('clipped', clipped box), ('empty', _) or ('outside', _)."""
    w, h = size
    x0, y0, x1, y1 = box
    if x1 <= x0 or y1 <= y0:
        return 'empty', np.zeros(4, np.float32)
    if x0 >= w or y0 >= h or x1 <= 0 or y1 <= 0:
        return 'outside', np.zeros(4, np.float32)
    clipped = (max(x0, 0.0), max(y0, 0.0), min(x1, float(w)), min(y1, float(h)))
    return ('clipped' if clipped != box else None), np.asarray(clipped, np.float32)


_SKIPS = {
    'unknown': 'row(s) name images that are not in the split',
    'unreadable': 'row(s) name images that cannot be read (their boxes are not used)',
    'empty': 'empty box(es) (zero width or height) skipped',
    'outside': 'box(es) entirely outside their image skipped',
    'clipped': 'box(es) partly outside their image clipped to it',
}


def boxes_for_samples(rows: Sequence[BoxRow], keys: Mapping[str, int], num_samples: int, image_size: SizeFn,
                      resolve: Callable[[str], str] = str, elsewhere: Callable[[str], bool] = lambda key: False,
                      source: str = '') -> GroundTruth:
    """Gather box rows into per-sample boxes, checking each against its image.

    Args:
        rows: the box rows (:func:`read_box_file`).
        keys: sample key -> sample index (:func:`sample_keys`).
        num_samples: the split's size.
        image_size: sample index -> (width, height) of its original image; called once per sample
            that has a box (an image it cannot read: its rows are skipped and counted).
        resolve: a row's ``path`` -> its key (e.g. made absolute against the data folder).
        elsewhere: keys of images that belong to another split of the same data (counted as
            ``other_split``, without a warning: one box file may cover every split).
        source: what was read, for :attr:`GroundTruth.source`.

    Returns:
        :class:`GroundTruth` with ``boxes[i]`` float32[K, 4] in the rows' order.
    """
    per_sample: List[List[np.ndarray]] = [[] for _ in range(num_samples)]
    counts = dict.fromkeys(('rows', 'kept', 'other_split', *_SKIPS), 0)
    first: Dict[str, BoxRow] = {}
    sizes: Dict[int, Optional[Tuple[int, int]]] = {}
    for row in rows:
        counts['rows'] += 1
        key = resolve(row.path)
        index = keys.get(key)
        if index is None:
            kind = 'other_split' if elsewhere(key) else 'unknown'
        else:
            if index not in sizes:
                try:
                    sizes[index] = image_size(index)
                except (OSError, SyntaxError, ValueError):  # what PIL raises on a broken image
                    sizes[index] = None
            kind, box = _clip(row.box, sizes[index]) if sizes[index] else ('unreadable', None)
            if kind in (None, 'clipped'):
                per_sample[index].append(box)
                counts['kept'] += 1
        if kind is not None:
            counts[kind] += 1
            first.setdefault(kind, row)
    for kind, text in _SKIPS.items():
        if counts[kind]:
            row = first[kind]
            _warn(f'boxes {source or row.file}: {counts[kind]} {text} (e.g. line {row.line}: {row.path!r})')
    boxes = tuple(np.stack(b).astype(np.float32) if b else np.zeros((0, 4), np.float32) for b in per_sample)
    return GroundTruth(boxes, None, source, counts)


class SampleKeys(NamedTuple):
    """How box rows name the samples of one split (:func:`sample_keys`)."""
    keys: Dict[str, int]   # key -> sample index
    image_size: SizeFn     # sample index -> (width, height) of its original image
    by_path: bool          # keys are normalised absolute file paths (else row indices / stored names)


def _hfds_keys(reader) -> SampleKeys:
    """Keys of an ``hfds/`` split: each row index, and each stored image file name that is unique."""
    keys = {str(i): i for i in range(len(reader.dataset))}
    names = reader.dataset.select_columns([reader.image_key]).flatten()[f'{reader.image_key}.path']
    seen: Dict[str, int] = {}
    for i, name in enumerate(names):
        if name and name not in keys:
            seen[name] = -1 if name in seen else i
    keys.update({name: i for name, i in seen.items() if i >= 0})

    def size(i: int) -> Tuple[int, int]:
        image = reader.dataset[i][reader.image_key]
        return image_size(io.BytesIO(image['bytes']) if image.get('bytes') else image['path'])
    return SampleKeys(keys, size, by_path=False)


def _paths_of(dataset) -> Optional[List[str]]:
    """The image file of each sample, where the data set lists them."""
    reader = getattr(dataset, 'reader', None)
    for holder, attr in ((reader, 'samples'), (dataset, 'samples'), (dataset, '_samples'), (dataset, 'imgs')):
        listed = getattr(holder, attr, None) if holder is not None else None
        if listed is not None:
            return [str(s[0]) for s in listed]
    files = getattr(dataset, '_image_files', None)  # torchvision's FGVCAircraft
    return [str(f) for f in files] if files is not None else None


def sample_keys(dataset) -> SampleKeys:
    """How box rows name the samples of ``dataset`` (a data set of
    :func:`~timm_fgfocus.training.data.create_datasets`, or its ``base``): normalised absolute
    paths for data sets of image files, row indices and unique stored file names for ``hfds/``.

    Raises:
        EvaluationError: when the data set does not say which image a sample is (``wds/`` shards).
    """
    dataset = getattr(dataset, 'base', dataset)
    reader = getattr(dataset, 'reader', None)
    if reader is not None and hasattr(reader, 'label_key') and hasattr(reader, 'dataset'):
        return _hfds_keys(reader)
    paths = _paths_of(dataset)
    if paths is None:
        raise EvaluationError(f'boxes: the samples of {type(dataset).__name__} have no file names to match a '
                              f'boxes file against (image folders, csv, hfds/ and the benchmarks have)')
    keys: Dict[str, int] = {}
    for i, p in enumerate(paths):
        keys.setdefault(os.path.normpath(os.path.abspath(p)), i)
    return SampleKeys(keys, lambda i: image_size(paths[i]), by_path=True)


def read_ground_truth(boxes_file: os.PathLike, dataset, base: Optional[os.PathLike] = None,
                      split_folder: Optional[os.PathLike] = None) -> GroundTruth:
    """Boxes of a box file for each sample of ``dataset``.

    Args:
        boxes_file: the ``path,x0,y0,x1,y1`` file.
        dataset: the evaluated split, as :func:`~timm_fgfocus.training.data.create_datasets` returns it.
        base: the folder relative paths of the file are relative to (the ``--data-dir`` folder, the
            label table's folder); None: the current folder. Not used for ``hfds/`` data sets.
        split_folder: image folders only: the split's folder; rows naming images below ``base``
            but outside it belong to another split and are counted without a warning.

    Raises:
        EvaluationError: a bad file (:func:`read_box_file`) or a data set without file names.
    """
    rows = read_box_file(boxes_file)
    named = sample_keys(dataset)
    base_dir = os.path.abspath(base or '.')
    split_dir = os.path.normpath(os.path.abspath(split_folder)) if split_folder else None

    def resolve(path: str) -> str:
        return os.path.normpath(os.path.join(base_dir, path)) if named.by_path else path

    def elsewhere(key: str) -> bool:
        return bool(split_dir) and key.startswith(base_dir + os.sep) and not key.startswith(split_dir + os.sep)
    return boxes_for_samples(rows, named.keys, len(dataset), named.image_size, resolve, elsewhere,
                             source=str(boxes_file))


# ---------------------------------------------------------------------------------------------------
# CUB-200-2011

def _numeric_lines(path: str, columns: Sequence[str]) -> List[Tuple[int, List[float]]]:
    """``(line number, values)`` of a whitespace-separated file of numbers, one named column each."""
    rows = []
    with open(path, encoding='utf-8') as f:
        for lineno, line in enumerate(f, 1):
            fields = line.split()
            if not fields:
                continue
            if len(fields) != len(columns):
                raise EvaluationError(f'{path}, line {lineno}: expected "{" ".join(f"<{c}>" for c in columns)}", '
                                      f'got {line.strip()!r}')
            rows.append((lineno, [_number(v, c, f'{path}, line {lineno}') for v, c in zip(fields, columns)]))
    return rows


def _cub_parts(path: str, index_of: Mapping[int, int], num_samples: int) -> Tuple[np.ndarray, ...]:
    """``parts[i]`` float32[P, 3] (x, y, visible) by part id, from ``parts/part_locs.txt``."""
    found: List[List[Tuple[float, float, float, float]]] = [[] for _ in range(num_samples)]
    for lineno, (image_id, part_id, x, y, visible) in _numeric_lines(path, ('image id', 'part id', 'x', 'y',
                                                                          'visible')):
        if visible not in (0, 1):
            raise EvaluationError(f'{path}, line {lineno}: visible must be 0 or 1, got {visible:g}')
        i = index_of.get(int(image_id))
        if i is not None:
            found[i].append((part_id, x, y, visible))
    return tuple(np.asarray([p[1:] for p in sorted(rows)], np.float32).reshape(-1, 3) for rows in found)


def cub_ground_truth(cub) -> Optional[GroundTruth]:
    """CUB-200-2011's object boxes and part keypoints for each sample of a
    :class:`~timm_fgfocus.datasets.Cub200` split (matched by its ``image_ids``).

    ``bounding_boxes.txt`` gives ``x, y, width, height`` (the box ``x, y, x + width, y + height``),
    checked like a box file's rows (:func:`boxes_for_samples`); its lines for the other split are
    not used. Returns None, with a warning, when the copy has no ``bounding_boxes.txt``; ``parts``
    is None when it has no ``parts/part_locs.txt``.

    Raises:
        EvaluationError: a malformed line, naming the file and line.
    """
    cub = getattr(cub, 'base', cub)
    boxes_file = os.path.join(cub.root, 'bounding_boxes.txt')
    parts_file = os.path.join(cub.root, 'parts', 'part_locs.txt')
    if not os.path.isfile(boxes_file):
        _warn(f'no ground-truth boxes for CUB-200-2011: {boxes_file} does not exist')
        return None
    index_of = {image_id: i for i, image_id in enumerate(cub.image_ids)}
    rows = [BoxRow(boxes_file, lineno, str(int(image_id)), (x, y, x + w, y + h))
            for lineno, (image_id, x, y, w, h) in _numeric_lines(boxes_file, ('image id', 'x', 'y', 'width', 'height'))]
    keys = {str(image_id): i for image_id, i in index_of.items()}
    truth = boxes_for_samples(rows, keys, len(cub), lambda i: image_size(cub.samples[i][0]),
                              elsewhere=lambda key: True, source=boxes_file)
    if not os.path.isfile(parts_file):
        return truth
    parts = _cub_parts(parts_file, index_of, len(cub))
    return GroundTruth(truth.boxes, parts, f'{boxes_file}, {parts_file}', truth.counts)


def load_ground_truth(dataset, boxes_file: Optional[os.PathLike] = None, base: Optional[os.PathLike] = None,
                      split_folder: Optional[os.PathLike] = None) -> Optional[GroundTruth]:
    """The ground truth of an evaluated split: a box file when one is given
    (:func:`read_ground_truth`), else CUB-200-2011's own files for a
    :class:`~timm_fgfocus.datasets.Cub200` split (:func:`cub_ground_truth`), else None."""
    if boxes_file:
        return read_ground_truth(boxes_file, dataset, base, split_folder)
    if hasattr(getattr(dataset, 'base', dataset), 'image_ids'):
        return cub_ground_truth(dataset)
    return None


def write_box_file(path: os.PathLike, boxes: Mapping[str, Sequence[Sequence[float]]]) -> Path:
    """Write ``{image path: [(x0, y0, x1, y1), ...]}`` as a box file (header, one row per box,
    in the mapping's order), atomically; whole numbers without a decimal point."""
    from .files import write_text

    lines = [','.join(BOX_COLUMNS)]
    for image, image_boxes in boxes.items():
        lines += [','.join([_csv_cell(image)] + [_number_text(v) for v in box])
                  for box in image_boxes]
    return write_text(path, '\n'.join(lines) + '\n')


def _number_text(value: float) -> str:
    value = float(value)
    return str(int(value)) if value.is_integer() else repr(value)


def _csv_cell(text: str) -> str:
    buf = io.StringIO()
    csv.writer(buf, lineterminator='').writerow([text])
    return buf.getvalue()
