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
  ``--val-split``. ``--data-dir DIR``: one file per split, ``DIR/<split>.csv`` (or ``.tsv``).
* The classes are the train split's labels, sorted; a val label the train split does not have is
  an error. With ``--eval-only`` (no train split read), the classes are the val split's labels.

Every problem is one line naming the file and row: a row with too few fields or an empty path or
label, a listed image that does not exist, an unknown label, a split with no rows.

The reader is a timm :class:`~timm.data.readers.reader.Reader` used through timm's
``ImageDataset``; timm has no reader for label tables (its readers take folders, tars, HF datasets,
TFDS and WebDataset shards), so this one is written here.
"""
import csv
import os
from pathlib import Path
from typing import Dict, List, NamedTuple, Optional, Sequence, Tuple

from timm.data import ImageDataset
from timm.utils.misc import natural_key

from ..errors import TrainError
from .readers import SampleListReader

__all__ = ['LabelRow', 'read_label_table', 'ReaderCsv', 'create_csv_datasets']

TABLE_SUFFIXES = {'.csv': ',', '.tsv': '\t', '.tab': '\t'}


class LabelRow(NamedTuple):
    """One image of a label table: where it is listed (file, 1-based row) and what it says."""
    file: str
    row: int
    path: str  # absolute
    label: str
    split: Optional[str]


def _delimiter(path: Path) -> str:
    try:
        return TABLE_SUFFIXES[path.suffix.lower()]
    except KeyError:
        raise TrainError(f'label table {path}: expected a .csv or .tsv file') from None


def read_label_table(path: os.PathLike) -> List[LabelRow]:
    """Read and check every row of a ``path,label[,split]`` table.

    Raises:
        TrainError: naming the file and row, for a missing or empty file, a short row, an empty
            path or label, or a listed image that does not exist.
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

    head = [c.strip().lower() for c in records[0][1]]
    if 'path' in head and 'label' in head:
        cols = {name: head.index(name) for name in ('path', 'label', 'split') if name in head}
        records = records[1:]
    else:
        cols = {'path': 0, 'label': 1, 'split': 2}
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
        rows.append(LabelRow(str(path), n, image, fields[cols['label']], split or None))
    if not rows:
        raise TrainError(f'label table {path} has a header and no rows')
    return rows


class ReaderCsv(SampleListReader):
    """timm reader over :class:`LabelRow` s: ``reader[i]`` is ``(open image file, class index)``.

    Args:
        rows: the images of one split.
        class_to_idx: class name -> index; a row whose label is not in it is an error naming
            its file and row.
    """

    def __init__(self, rows: Sequence[LabelRow], class_to_idx: Dict[str, int]):
        for r in rows:
            if r.label not in class_to_idx:
                known = sorted(class_to_idx, key=natural_key)
                raise TrainError(f'label table {r.file}, row {r.row}: unknown label {r.label!r} (the train split '
                                 f'has {len(known)} classes: {", ".join(known[:5])}{", ..." if len(known) > 5 else ""})')
        super().__init__([(r.path, class_to_idx[r.label]) for r in rows], class_to_idx)


def _table_of(folder: Path, split: str) -> Path:
    for suffix in TABLE_SUFFIXES:
        candidate = folder / f'{split}{suffix}'
        if candidate.is_file():
            return candidate
    raise TrainError(f'label table folder {folder} has no {split}.csv or {split}.tsv '
                     f'(found: {sorted(p.name for p in folder.iterdir() if p.suffix.lower() in TABLE_SUFFIXES)}); '
                     f'or pass --data-dir FILE with a split column')


def create_csv_datasets(data_dir: str, splits: Sequence[str], class_split: str) -> Tuple[Dict[str, ImageDataset], List[str]]:
    """timm ``ImageDataset`` s over the rows of each split, and the class names.

    Args:
        data_dir: a ``.csv``/``.tsv`` file with a ``split`` column, or a folder of ``<split>.csv``.
        splits: the split names to read.
        class_split: the split whose labels define the classes (the train split).

    Returns:
        ({split: dataset}, class names in index order).
    """
    if not data_dir:
        raise TrainError('--dataset csv needs --data-dir: a labels.csv with path,label,split columns, '
                         'or a folder holding train.csv and val.csv')
    source = Path(data_dir)
    by_split: Dict[str, List[LabelRow]] = {}
    if source.is_dir():
        # one file per split: the file is the split (a split column in it is not read)
        for split in dict.fromkeys(splits):
            by_split[split] = read_label_table(_table_of(source, split))
    else:
        rows = read_label_table(source)
        in_file = sorted({r.split for r in rows if r.split is not None})
        if not in_file:
            raise TrainError(f'label table {source} has no split column: add path,label,split columns '
                             f'(split = {" / ".join(dict.fromkeys(splits))}), or pass a folder of <split>.csv files')
        for split in dict.fromkeys(splits):
            by_split[split] = [r for r in rows if r.split == split]
            if not by_split[split]:
                raise TrainError(f'label table {source} has no rows for split {split!r} (its splits: {in_file}); '
                                 f'set --train-split/--val-split')
    classes = sorted({r.label for r in by_split[class_split]}, key=natural_key)
    class_to_idx = {c: i for i, c in enumerate(classes)}
    made = {split: ImageDataset(str(source), reader=ReaderCsv(rows, class_to_idx)) for split, rows in by_split.items()}
    return made, classes
