"""The model card's measured results (huggingface_hub model-index) and loading a published folder with
transformers (pipeline, AutoModelForImageClassification), offline, against fgfocus-predict."""
import io
import json
import re
import shutil
from contextlib import redirect_stdout

import numpy as np
import pytest
import torch
import yaml
from PIL import Image

import train_fg as train_mod
from timm_fgfocus.demo_data import CLASSES, generate_demo_data
from hf_upload import main as hf_upload
from timm_fgfocus.model_card import read_evaluation, transformers_snippet

from evalkit import FAST, make_checkpoint

NAMES = sorted(CLASSES[:3])
SIX = sorted(CLASSES[:6])  # more than 5 classes: top-5 says something
METRICS = dict(epoch=2, eval_top1=81.25, eval_top5=99.5, eval_top1_image=70.5, eval_top5_image=90.125,
               eval_top1_ema=80.0, eval_samples=64)
REPO = 'timm-fgfocus/fgfocus_test.card'


pytestmark = pytest.mark.usefixtures('one_thread')


def front_matter(card: str):
    return yaml.safe_load(card.split('---\n')[1])


def model_index(card: str):
    """{(metric name, dataset split): value} of the card's model-index."""
    front = front_matter(card)
    out = {}
    for entry in front.get('model-index', []):
        for result in entry['results']:
            assert result['task']['type'] == 'image-classification'
            for m in result['metrics']:
                assert m['type'] == 'accuracy'
                out[(m['name'], result['dataset'].get('split'))] = m['value']
    return out


def dry_run(checkpoint, folder, *extra):
    assert hf_upload(['--checkpoint', str(checkpoint), '--repo-id', REPO, '--dry-run', str(folder), *extra]) == 0
    return (folder / 'README.md').read_text()


def test_model_index_holds_the_checkpoint_metrics_and_nothing_else(tmp_path):
    ckpt = make_checkpoint(tmp_path / 'run' / 'best.pth', SIX, metrics=METRICS, ema=True)
    card = dry_run(ckpt, tmp_path / 'repo')
    hybrid = 'hybrid (the prediction: image + 2 regions)'
    assert model_index(card) == {
        (f'top-1 accuracy (%), {hybrid}', 'val'): 81.25, (f'top-5 accuracy (%), {hybrid}', 'val'): 99.5,
        ('top-1 accuracy (%), image level only', 'val'): 70.5,
        ('top-5 accuracy (%), image level only', 'val'): round(90.125, 2)}  # not the EMA weights' 80.0
    front = front_matter(card)
    assert front['model-index'][0]['name'] == 'fgfocus_test.card'
    assert front['library_name'] == 'timm' and front['pipeline_tag'] == 'image-classification'
    assert 'Evaluation report' not in card
    # the EMA weights: only what was measured on them
    card = dry_run(ckpt, tmp_path / 'ema', '--ema')
    assert model_index(card) == {(f'top-1 accuracy (%), {hybrid}', 'val'): 80.0}
    # nothing measured: no model-index at all
    bare = make_checkpoint(tmp_path / 'bare' / 'best.pth', NAMES, metrics={})
    card = dry_run(bare, tmp_path / 'bare-repo')
    assert 'model-index' not in front_matter(card) and 'No accuracy was recorded' in card


def test_model_index_takes_the_report_of_this_very_checkpoint(tmp_path):
    data = generate_demo_data(tmp_path / 'data', train_per_class=1, val_per_class=3, num_classes=3, image_size=64,
                              wing_units=6, seed=4)
    ckpt = make_checkpoint(tmp_path / 'run' / 'best.pth', NAMES, metrics=METRICS)
    train_mod.main(['--eval-only', '--checkpoint', str(ckpt), '--data-dir', str(data), '--tta'] + FAST)
    report = json.loads((tmp_path / 'run' / 'eval' / 'metrics.json').read_text())
    card = dry_run(ckpt, tmp_path / 'repo')
    index = model_index(card)
    expected = {}
    for head, acc in report['heads'].items():
        from timm_fgfocus.evaluation.collect import head_label
        expected[(f'top-1 accuracy (%), {head_label(head, 2)}', 'val')] = round(acc['top1'], 2)  # 3 classes: no top-5
    assert index == expected
    assert {'region_1', 'region_2', 'region_mean', 'hybrid_tta', 'image_tta'} <= set(report['heads'])
    assert '### Evaluation report' in card and 'region rank 2 alone' in card and 'TTA: logits averaged over' in card
    assert '| head | top-1 % | top-1 % TTA |' in card
    assert f'{report["ece"]["hybrid"]:.2f} %' in card

    # another file (a later save of the checkpoint): its card does not borrow the report
    assert read_evaluation(ckpt) is not None
    assert read_evaluation(ckpt, use_ema=True) is None  # the report was of the raw weights
    make_checkpoint(ckpt, NAMES, metrics=METRICS, epoch=3)
    assert read_evaluation(ckpt) is None
    card = dry_run(ckpt, tmp_path / 'repo2')
    assert 'Evaluation report' not in card and len(model_index(card)) == 2  # top-1 of both heads
    shutil.rmtree(tmp_path / 'run' / 'eval')
    assert read_evaluation(ckpt) is None


def test_top5_is_left_out_with_five_classes_or_fewer(tmp_path):
    """With 5 classes or fewer the true class is always in the top 5: the card says so instead of 100 %."""
    ckpt = make_checkpoint(tmp_path / 'run' / 'best.pth', NAMES, metrics=METRICS)
    with open(ckpt.parent / 'summary.csv', 'w') as f:
        f.write('epoch,train_loss,eval_top1,eval_top5\n0,1.5,50.0,100.0\n1,1.2,60.0,100.0\n')
    card = dry_run(ckpt, tmp_path / 'repo')
    hybrid = 'hybrid (the prediction: image + 2 regions)'
    assert model_index(card) == {(f'top-1 accuracy (%), {hybrid}', 'val'): 81.25,
                                 ('top-1 accuracy (%), image level only', 'val'): 70.5}
    assert 'top-5' not in card.split('## Results')[1].split('## Model Usage')[0].replace(
        'Top-5 accuracy is not reported: with 3 classes the true class is always among the top 5', '')
    assert 'Top-5 accuracy is not reported: with 3 classes the true class is always among the top 5' in card
    assert '| epoch | train_loss | eval_top1 |' in card and 'eval_top5' not in card
    # six classes: top-5 is reported, and no such note
    six = make_checkpoint(tmp_path / 'six' / 'best.pth', SIX, metrics=METRICS)
    card = dry_run(six, tmp_path / 'repo6')
    assert '| top-5, hybrid head | 99.50 |' in card and 'not reported' not in card


@pytest.mark.parametrize('dataset, title', [('', 'image folders'), ('cub200', 'CUB-200-2011'), (None, 'not recorded')])
def test_dataset_line_and_model_index_name_the_same_data(tmp_path, dataset, title):
    ckpt = make_checkpoint(tmp_path / 'run' / 'best.pth', NAMES, metrics=METRICS, dataset=dataset or '')
    if dataset is None:  # a checkpoint whose arguments do not record the data set
        from timm_fgfocus.checkpoint import atomic_save, load_checkpoint
        raw = load_checkpoint(ckpt)
        del raw['args']['dataset']
        atomic_save(raw, ckpt)
    card = dry_run(ckpt, tmp_path / 'repo')
    assert f'- **Dataset:** {title}\n' in card
    assert ' on not recorded' not in card and ' of not recorded' not in card  # a field value, never prose
    names = {result['dataset']['name'] for entry in front_matter(card)['model-index'] for result in entry['results']}
    assert names == {title}


@pytest.mark.parametrize('edit', [{'data': 'cub200'}, {'class_names': None}, {'epoch': 'last'}])
def test_malformed_report_beside_the_checkpoint_is_left_out_of_the_card(tmp_path, edit):
    data = generate_demo_data(tmp_path / 'data', train_per_class=1, val_per_class=1, num_classes=3, image_size=64,
                              wing_units=6, seed=4)
    ckpt = make_checkpoint(tmp_path / 'run' / 'best.pth', NAMES, metrics=METRICS)
    train_mod.main(['--eval-only', '--checkpoint', str(ckpt), '--data-dir', str(data)] + FAST)
    assert read_evaluation(ckpt) is not None
    path = tmp_path / 'run' / 'eval' / 'eval.json'
    meta = json.loads(path.read_text())
    meta.update(edit)
    path.write_text(json.dumps({k: v for k, v in meta.items() if v is not None}))
    assert read_evaluation(ckpt) is None
    card = dry_run(ckpt, tmp_path / 'repo')
    assert 'Evaluation report' not in card and len(model_index(card)) == 2


@pytest.fixture(scope='module')
def published(tmp_path_factory):
    """A folder written by hf_upload --dry-run, and an image."""
    root = tmp_path_factory.mktemp('published')
    ckpt = make_checkpoint(root / 'run' / 'best.pth', NAMES, metrics=METRICS, seed=5)
    assert hf_upload(['--checkpoint', str(ckpt), '--repo-id', REPO, '--dry-run', str(root / 'repo')]) == 0
    rng = np.random.default_rng(0)
    img = root / 'bird.png'
    Image.fromarray(rng.integers(0, 255, (70, 90, 3), dtype=np.uint8)).save(img)
    return root / 'repo', img


def _predict_probs(folder, img, capsys):
    from timm_fgfocus.predict import main
    capsys.readouterr()
    assert main([str(img), '--model', f'local-dir:{folder}', '--pretrained', '--json', '--topk', '3']) == 0
    out = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    return {c['name']: c['prob'] for c in out['topk']}


@pytest.mark.slow
def test_transformers_loads_the_folder_with_the_same_probabilities(published, capsys):
    pytest.importorskip('transformers')
    from transformers import AutoImageProcessor, AutoModelForImageClassification, pipeline

    folder, img = published
    config = json.loads((folder / 'config.json').read_text())
    assert 'num_classes' not in config['model_args'] and config['num_classes'] == 3
    expected = _predict_probs(folder, img, capsys)

    classifier = pipeline('image-classification', model=str(folder))
    with Image.open(img) as im:
        got = {p['label']: p['score'] for p in classifier(im.convert('RGB'), top_k=3)}
    assert got.keys() == expected.keys() == set(NAMES)
    for name in NAMES:
        assert got[name] == pytest.approx(expected[name], abs=2e-6)

    model = AutoModelForImageClassification.from_pretrained(str(folder)).eval()
    processor = AutoImageProcessor.from_pretrained(str(folder))
    assert [model.config.id2label[i] for i in range(3)] == NAMES
    with Image.open(img) as im, torch.no_grad():
        probs = model(**processor(im.convert('RGB'), return_tensors='pt')).logits.softmax(-1)[0]
    for i, name in enumerate(NAMES):
        assert float(probs[i]) == pytest.approx(expected[name], abs=2e-6)

    # the card's transformers snippet runs as written (on the folder instead of the Hub id)
    card = (folder / 'README.md').read_text()
    assert transformers_snippet(REPO) in card
    out = io.StringIO()
    with redirect_stdout(out):
        exec(compile(transformers_snippet(str(folder)), 'README.md', 'exec'), {'__name__': '__main__'})
    lines = out.getvalue().splitlines()
    assert len(lines) == 3 and {line.split(':')[0] for line in lines} == set(NAMES)


def test_timm_still_loads_the_folder(published):
    import timm
    folder, _ = published
    model = timm.create_model(f'local-dir:{folder}', pretrained=True)
    assert model.num_classes == 3 and list(model.pretrained_cfg['label_names']) == NAMES
    assert (model.num_regions, model.num_hybrid_regions, model.crop_size) == (3, 2, 32)
    assert re.search(r"pipeline\('image-classification', model='timm-fgfocus/fgfocus_test\.card'\)",
                     (folder / 'README.md').read_text())


@pytest.mark.parametrize('metrics,train_args,ema,first', [
    ({'eval_top1': 50.0, 'epoch': 2}, {'val_split': 'val'}, False,
     'Accuracy (%) on the val split of a data set that was not recorded, measured after epoch 3 by `train_fg.py`:'),
    ({'eval_top1': 50.0}, {'dataset': 'cub200'}, True,
     'Accuracy (%) on CUB-200-2011 by `train_fg.py` (the published weights are the EMA ones):'),
])
def test_a_baseline_cards_results_sentence_names_the_data_in_prose(metrics, train_args, ema, first):
    from timm_fgfocus.plain_cards import _baseline_results
    lines = _baseline_results(metrics, train_args, 10, ema)
    assert lines[0] == first and lines[-2:] == ['| top-1 | 50.00 |', '']
