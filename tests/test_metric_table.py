"""The one metric table: summary.csv writes every metric it is given in a stable column order, the loggers and
the plot take their tags and panels from the table, and a metric a run step adds reaches all of them."""
import pytest

import train_fg as train_mod
from timm_fgfocus.metric_table import (
    METRICS, PANELS, card_metrics, metric, panel_lines, read_summary, summary_columns, tag_of, write_summary,
)
from timm_fgfocus.training import RunHooks, evaluate_epoch
from timm_fgfocus.training.loggers import EpochLoggers
from train_utils import TINY, read_csv

pytestmark = pytest.mark.usefixtures('one_thread')


def test_summary_writes_every_key_in_table_order_then_new_keys_in_first_seen_order(tmp_path):
    rows = [
        {'epoch': 0, 'lr': 0.1, 'zeta': 1.5, 'train_loss': 2.0},
        {'epoch': 1, 'eval_top1': 50.0, 'lr': 0.01, 'alpha': 3, 'train_loss': 1.0, 'zeta': 0.5},
    ]
    path = tmp_path / 'summary.csv'
    write_summary(path, rows)
    header = path.read_text().splitlines()[0].split(',')
    # table order for the known keys (train_loss before eval_top1 before lr), whatever order the rows give them in
    assert header == ['epoch', 'train_loss', 'eval_top1', 'lr', 'zeta', 'alpha']
    back = read_summary(path)
    assert back[0] == {'epoch': '0', 'train_loss': '2', 'eval_top1': '', 'lr': '0.1', 'zeta': '1.5', 'alpha': ''}
    assert back[1]['alpha'] == '3' and back[1]['eval_top1'] == '50'
    # a row added later never moves the columns the earlier rows had
    assert summary_columns(rows + [{'epoch': 2, 'beta': 1, 'lr_backbone': 0.1}]) == [
        'epoch', 'train_loss', 'eval_top1', 'lr', 'lr_backbone', 'zeta', 'alpha', 'beta']
    assert read_summary(tmp_path / 'none.csv') == []


def test_floats_are_written_to_six_significant_digits(tmp_path):
    write_summary(tmp_path / 's.csv', [{'epoch': 0, 'lr': 0.0123456789, 'eval_samples': 12}])
    assert read_summary(tmp_path / 's.csv') == [{'epoch': '0', 'lr': '0.0123457', 'eval_samples': '12'}]


def test_tags_come_from_the_table_or_the_key():
    assert tag_of('lr') == 'lr/heads' and tag_of('epoch_time') == 'time/epoch_s'
    assert tag_of('eval_top1_image') == 'eval/top1_image'
    assert tag_of('eval_maxboxacc_v2') == 'eval/maxboxacc_v2'   # no row: the first '_' becomes '/'
    assert tag_of('plain') == 'plain'
    assert metric('eval_new').tag == 'eval/new' and metric('eval_new').panels == ()
    assert len({m.key for m in METRICS}) == len(METRICS) and len({m.tag for m in METRICS}) == len(METRICS)


def test_every_panel_draws_something_and_cards_show_each_head():
    for panel in PANELS:
        assert panel_lines(panel), panel
    assert all(m.panels for m in METRICS if m.key.startswith(('train_loss', 'lr')))
    assert [(m.key, m.card_head, m.card_k) for m in card_metrics(ema=False)] == [
        ('eval_top1', 'hybrid', 1), ('eval_top5', 'hybrid', 5), ('eval_top1_image', 'image', 1),
        ('eval_top5_image', 'image', 5)]
    assert [m.key for m in card_metrics(ema=True)] == ['eval_top1_ema']


def test_a_metric_a_run_step_adds_reaches_summary_csv_tensorboard_and_the_checkpoint(data, tmp_path):
    pytest.importorskip('tensorboard')
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    def evaluate(run, epoch):
        return dict(evaluate_epoch(run, epoch), eval_new_score=10.0 + epoch)
    out = tmp_path / 'o'
    train_mod.main(TINY + ['--data-dir', str(data), '--epochs', '2', '--output', str(out), '--log-tensorboard'],
                   hooks=RunHooks(evaluate=evaluate))
    rows = read_csv(out / 'summary.csv')
    assert [r['eval_new_score'] for r in rows] == ['10', '11']
    acc = EventAccumulator(str(out / 'tensorboard'))
    acc.Reload()
    assert [(e.step, e.value) for e in acc.Scalars('eval/new_score')] == [(0, 10.0), (1, 11.0)]
    from timm_fgfocus.checkpoint import load_checkpoint
    assert load_checkpoint(out / 'last.pth')['metrics']['eval_new_score'] == 11.0


def test_loggers_skip_the_epoch_and_booleans(tmp_path):
    logged = []

    class Writer:
        def add_scalar(self, tag, value, step):
            logged.append((tag, value, step))

        def flush(self):
            pass

        def close(self):
            pass

    class Args:
        log_tensorboard, log_wandb = True, False
    loggers = EpochLoggers(Args(), tmp_path, 0, {})
    loggers._opened, loggers.tensorboard = True, Writer()
    loggers.log_epoch(3, {'epoch': 3, 'lr': 0.5, 'flag': True, 'name': 'x', 'eval_top1': 7})
    assert sorted(logged) == [('eval/top1', 7.0, 3), ('lr/heads', 0.5, 3)]


def test_read_summary_round_trips_what_write_summary_wrote(tmp_path):
    rows = [{'epoch': 1, 'note': 'line one\nline two', 'eval_top1': 50.0}, {'epoch': 2, 'eval_top1': 75.5}]
    write_summary(tmp_path / 'summary.csv', rows)
    back = read_summary(tmp_path / 'summary.csv', required=True)
    assert back == [{'epoch': '1', 'eval_top1': '50', 'note': 'line one\nline two'},
                    {'epoch': '2', 'eval_top1': '75.5', 'note': ''}]


def test_read_summary_drops_rows_without_an_epoch(tmp_path):
    (tmp_path / 'summary.csv').write_text('epoch,eval_top1\n1,50\n,60\n2,70\n')
    assert [r['epoch'] for r in read_summary(tmp_path / 'summary.csv')] == ['1', '2']


def test_read_summary_of_a_missing_file(tmp_path):
    assert read_summary(tmp_path / 'none.csv') == []
    with pytest.raises(ValueError) as e:
        read_summary(tmp_path / 'none.csv', required=True)
    assert str(e.value) == f'training log {tmp_path / "none.csv"} does not exist'


@pytest.mark.parametrize('text, message', [
    ('step,loss\n1,2\n', 'is not a train_fg.py summary.csv: no "epoch" column (columns: step, loss)'),
    ('', 'is not a train_fg.py summary.csv: no "epoch" column (columns: none)'),
    ('epoch,loss\n1,2\nx1,3\n', "line 3: epoch 'x1' is not a whole number"),
    ('epoch,loss\n1.5,2\n', "line 2: epoch '1.5' is not a whole number"),
])
def test_read_summary_names_the_file_and_the_problem(tmp_path, text, message):
    path = tmp_path / 'summary.csv'
    path.write_text(text)
    with pytest.raises(ValueError) as e:
        read_summary(path)
    assert str(e.value).startswith(f'training log {path}') and str(e.value).endswith(message), str(e.value)


def test_read_summary_of_a_file_that_is_not_text(tmp_path):
    path = tmp_path / 'summary.csv'
    path.write_bytes(b'\xff\xfe\x00epoch\x00')
    with pytest.raises(ValueError, match=r'is not a readable CSV file') as e:
        read_summary(path)
    assert str(path) in str(e.value)


def test_metric_of_a_table_key_is_its_row_and_of_a_new_key_a_plain_one():
    assert metric(METRICS[0].key) is METRICS[0]
    new = metric('eval_my_score')
    assert new.key == 'eval_my_score' and new.tag == tag_of('eval_my_score') and new.panels == ()


def test_panel_lines_are_the_rows_drawn_in_that_panel_only():
    for panel in PANELS:
        assert panel_lines(panel) == [m for m in METRICS if panel in m.panels]
        assert all(panel in m.panels for m in panel_lines(panel))
    assert panel_lines('no such panel') == []


def test_read_summary_messages_shorten_long_values(tmp_path):
    path = tmp_path / 'summary.csv'
    path.write_text('a,b,c,d,e,f,g\n1,2,3,4,5,6,7\n')
    with pytest.raises(ValueError, match=r'\(columns: a, b, c, d, e\)$'):
        read_summary(path)
    path.write_text('epoch\n' + 'x' * 30 + '\n')
    with pytest.raises(ValueError, match="epoch '" + 'x' * 20 + "' is not"):
        read_summary(path)
