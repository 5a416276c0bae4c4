"""Labelled images listed in a CSV or TSV file: ``--dataset csv --data-dir FILE_OR_FOLDER``.

The way many people keep their own labelled data::

    path,label,split
    images/0001.jpg,Laysan_Albatross,train
    /data/birds/0002.jpg,Sooty_Albatross,val

* ``.csv`` files are comma separated, ``.tsv`` (and ``.tab``) files tab separated.
* A first row naming the columns (``path``, ``label``, optionally ``split``; any order, other
  columns ignored) is a header; without one the columns are ``path,label[,split]`` in that order.
* Relative paths are relative to the folder of the file that lists them.
* ``--data-dir FILE``: one file; its ``split`` column picks the rows of ``--train-split`` and
  ``--val-split``. Every row needs a split: the split names of the run or ``train``, ``val``,
  ``test``, compared without regard to case (``Val`` is ``val``; the log says how many rows were read
  that way). A blank or other split cell (``trian``) is an error naming the row and the accepted
  values; rows of a split the run does not read (``test``) are left out.
  ``--data-dir DIR``: one file per split, ``DIR/<split>.csv`` (or ``.tsv``).
* The classes are the train split's labels, sorted; a val label the train split does not have is
  an error. With ``--eval-only`` (no train split read), the classes are the val split's labels.
* An image listed twice in a split with the same label is used once (one warning with the count);
  with two different labels it is an error naming both rows. Images in both the train and the val
  split are kept, with one warning (count and an example): the val accuracy is then not held-out.

Every problem is one line naming the file and row: a row with too few fields or an empty path or
label, a listed image that does not exist, an unknown label or split, a split with no rows, a
header that does not name the ``path`` and ``label`` columns.

The samples are handed to timm's ``ImageDataset`` through
:class:`~.image_folders.SampleListReader`; timm has no reader for label tables (its readers take
folders, tars, HF datasets, TFDS and WebDataset shards).
"""
import csv
import os
import sys
from pathlib import Path
from typing import Dict, List, NamedTuple, Optional, Sequence, Tuple

from timm.data import ImageDataset
from timm.utils.misc import natural_key

from ..errors import TrainError
from .image_folders import SampleListReader

__all__ = ['LabelRow', 'read_label_table', 'create_csv_datasets']

TABLE_SUFFIXES = {'.csv': ',', '.tsv': '\t', '.tab': '\t'}
KNOWN_SPLITS = ('train', 'val', 'test')  # accepted in a split column besides the run's own split names


class LabelRow(NamedTuple):
    """One image of a label table: where it is listed (file, 1-based row) and what it says."""
    file: str
    row: int
    path: str  # absolute
    label: str
    split: Optional[str]  # None: the row has no split column; '': its split cell is blank


def _delimiter(path: Path) -> str:
    try:
        return TABLE_SUFFIXES[path.suffix.lower()]
    except KeyError:
        raise TrainError(f'label table {path}: expected a .csv or .tsv file') from None


def _columns(path: Path, first: List[str], delimiter: str) -> Optional[Dict[str, int]]:
    """Column positions named by a header row, None when ``first`` is a data row.

    A row naming ``path`` or ``label`` is a header; a first row whose path cell is neither an
    existing file nor a name with a suffix (``filename,class``) is taken for a header too, and
    both must name the ``path`` and ``label`` columns.
    """
    head = [c.strip().lower() for c in first]
    if 'path' in head and 'label' in head:
        return {name: head.index(name) for name in ('path', 'label', 'split') if name in head}
    cell = first[0].strip() if first else ''
    candidate = cell if os.path.isabs(cell) else os.path.join(path.parent, cell)
    if 'path' in head or 'label' in head or not (os.path.splitext(cell)[1] or os.path.isfile(candidate)):
        missing = [name for name in ('path', 'label') if name not in head]
        raise TrainError(f'label table {path}, row 1: a header must name the columns path{delimiter}label'
                         f'[{delimiter}split] (any order), found {", ".join(repr(c) for c in head)} (no '
                         f'{" or ".join(missing)} column): rename those columns, or leave the header out '
                         f'(the columns are then path{delimiter}label[{delimiter}split] in that order)')
    return None


def read_label_table(path: os.PathLike) -> List[LabelRow]:
    """Read and check every row of a ``path,label[,split]`` table.

    Raises:
        TrainError: naming the file and row, for a missing or empty file, a header without the
            ``path`` and ``label`` columns, a short row, an empty path or label, or a listed image
            that does not exist.
    """
    path = Path(path)
    if not path.is_file():
        raise TrainError(f'label table {path} does not exist')
    delimiter = _delimiter(path)
    root = path.parent
    try:
        with open(path, newline='', encoding='utf-8-sig') as f:
            records = [(n, r) for n, r in enumerate(csv.reader(f, delimiter=delimiter), 1)
                       if any(c.strip() for c in r)]
    except (OSError, UnicodeDecodeError, csv.Error) as e:
        raise TrainError(f'label table {path} cannot be read: {e}') from None
    if not records:
        raise TrainError(f'label table {path} is empty: expected rows of path{delimiter}label[{delimiter}split]')

    cols = _columns(path, records[0][1], delimiter)
    if cols is None:
        cols = {'path': 0, 'label': 1, 'split': 2}
    else:
        records = records[1:]
    need = max(cols['path'], cols['label']) + 1

    rows = []
    for n, record in records:
        fields = [c.strip() for c in record]
        if len(fields) < need or not fields[cols['path']] or not fields[cols['label']]:
            raise TrainError(f'label table {path}, row {n}: expected path{delimiter}label[{delimiter}split] '
                             f'with a non-empty path and label, got {delimiter.join(record)!r}')
        image = fields[cols['path']]
        image = os.path.normpath(image if os.path.isabs(image) else os.path.join(root, image))
        if not os.path.isfile(image):
            raise TrainError(f'label table {path}, row {n}: image {image} does not exist')
        split = fields[cols['split']] if 'split' in cols and cols['split'] < len(fields) else None
        if split is None and 'split' in cols:
            split = ''  # a header names a split column: the cell is blank
        rows.append(LabelRow(str(path), n, image, fields[cols['label']], split))
    if not rows:
        raise TrainError(f'label table {path} has a header and no rows')
    return rows


def _split_samples(rows: Sequence[LabelRow], class_to_idx: Dict[str, int]) -> List[Tuple[str, int]]:
    """``(image path, class index)`` of each row; a label not in ``class_to_idx`` is an error naming its row."""
    for r in rows:
        if r.label not in class_to_idx:
            known = sorted(class_to_idx, key=natural_key)
            raise TrainError(f'label table {r.file}, row {r.row}: unknown label {r.label!r} (the train split '
                             f'has {len(known)} classes: {", ".join(known[:5])}{", ..." if len(known) > 5 else ""})')
    return [(r.path, class_to_idx[r.label]) for r in rows]


def _warn(message: str) -> None:
    print(f'warning: {message}', file=sys.stderr, flush=True)


def _rows_by_split(source: Path, rows: Sequence[LabelRow], splits: Sequence[str]) -> Dict[str, List[LabelRow]]:
    """The rows of each split asked for, matched without regard to case; a blank or unknown split
    cell is an error naming its row and the accepted values, rows of other known splits are left out."""
    wanted = {s.lower(): s for s in dict.fromkeys(splits)}
    accepted = list(dict.fromkeys(list(wanted) + list(KNOWN_SPLITS)))
    by_split: Dict[str, List[LabelRow]] = {s: [] for s in wanted.values()}
    by_case: Dict[str, List[LabelRow]] = {}
    for r in rows:
        value = r.split.lower()
        if value not in accepted:
            what = 'an empty split cell' if not r.split else f'split {r.split!r}'
            raise TrainError(f'label table {source}, row {r.row}: {what}; the split column takes '
                             f'{", ".join(accepted)} (any case), or set --train-split/--val-split')
        if value in wanted:
            by_split[wanted[value]].append(r)
            if r.split != wanted[value]:
                by_case.setdefault(wanted[value], []).append(r)
    for split, odd in by_case.items():
        print(f'note: label table {source}: {len(odd)} row(s) with split {odd[0].split!r} (e.g. row {odd[0].row}) '
              f'read as {split!r}: split names are compared without regard to case', file=sys.stderr, flush=True)
    return by_split


def _dedupe(split: str, rows: Sequence[LabelRow]) -> List[LabelRow]:
    """The rows of one split with each image once: a repeated row is dropped (one warning with the
    count), an image listed with two labels is an error naming both rows."""
    first: Dict[str, LabelRow] = {}
    repeats = []
    for r in rows:
        seen = first.setdefault(r.path, r)
        if seen is r:
            continue
        if seen.label != r.label:
            raise TrainError(f'label table {r.file}, row {r.row}: image {r.path} of the {split} split is labelled '
                             f'{r.label!r} here and {seen.label!r} in {seen.file}, row {seen.row}: give it one label')
        repeats.append((r, seen))
    if repeats:
        r, seen = repeats[0]
        _warn(f'label table {r.file}: {len(repeats)} repeated row(s) in the {split} split (e.g. row {r.row} '
              f'repeats row {seen.row}, {r.path}): each image is used once')
    return list(first.values())


def _warn_overlap(by_split: Dict[str, List[LabelRow]], train: str, val: str) -> None:
    """One warning when images are listed in both the train and the val split."""
    if train == val or train not in by_split or val not in by_split:
        return
    in_train = {r.path: r for r in by_split[train]}
    both = [(in_train[r.path], r) for r in by_split[val] if r.path in in_train]
    if both:
        t, v = both[0]
        _warn(f'{len(both)} image(s) are in both the {train} and the {val} split (e.g. {t.path}: {t.file}, row '
              f'{t.row} and {v.file}, row {v.row}): the {val} accuracy on them is not held-out')


def _table_of(folder: Path, split: str) -> Path:
    for suffix in TABLE_SUFFIXES:
        candidate = folder / f'{split}{suffix}'
        if candidate.is_file():
            return candidate
    raise TrainError(f'label table folder {folder} has no {split}.csv or {split}.tsv '
                     f'(found: {sorted(p.name for p in folder.iterdir() if p.suffix.lower() in TABLE_SUFFIXES)}); '
                     f'or pass --data-dir FILE with a split column')


def _read_splits(source: Path, splits: Sequence[str]) -> Dict[str, List[LabelRow]]:
    """The rows of each split: from ``source/<split>.csv`` files, or from the split column of one file."""
    if source.is_dir():
        # one file per split: the file is the split (a split column in it is not read)
        return {split: read_label_table(_table_of(source, split)) for split in dict.fromkeys(splits)}
    rows = read_label_table(source)
    if all(r.split is None for r in rows):
        raise TrainError(f'label table {source} has no split column: add path,label,split columns '
                         f'(split = {" / ".join(dict.fromkeys(splits))}), or pass a folder of <split>.csv files')
    by_split = _rows_by_split(source, [r._replace(split=r.split or '') for r in rows], splits)
    in_file = sorted({r.split.lower() for r in rows if r.split})
    for split, chosen in by_split.items():
        if not chosen:
            raise TrainError(f'label table {source} has no rows for split {split!r} (its splits: {in_file}); '
                             f'set --train-split/--val-split')
    return by_split


def create_csv_datasets(data_dir: str, splits: Sequence[str], class_split: str) -> Tuple[Dict[str, ImageDataset], List[str]]:
    """timm ``ImageDataset`` s over the rows of each split, and the class names.

    Args:
        data_dir: a ``.csv``/``.tsv`` file with a ``split`` column, or a folder of ``<split>.csv``.
        splits: the split names to read (the train split first when it is read).
        class_split: the split whose labels define the classes (the train split).

    Returns:
        ({split: dataset}, class names in index order).
    """
    if not data_dir:
        raise TrainError('--dataset csv needs --data-dir: a labels.csv with path,label,split columns, '
                         'or a folder holding train.csv and val.csv')
    source = Path(data_dir)
    by_split = {split: _dedupe(split, rows) for split, rows in _read_splits(source, splits).items()}
    if len(by_split) > 1:
        _warn_overlap(by_split, class_split, [s for s in by_split if s != class_split][0])
    classes = sorted({r.label for r in by_split[class_split]}, key=natural_key)
    class_to_idx = {c: i for i, c in enumerate(classes)}
    root = str(source if source.is_dir() else source.parent)
    made = {split: ImageDataset(str(source), reader=SampleListReader(_split_samples(rows, class_to_idx), class_to_idx,
                                                                     root=root))
            for split, rows in by_split.items()}
    return made, classes
