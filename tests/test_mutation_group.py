"""tools/mutation_group.py: each group's [tool.mutmut] table, written into a worktree's pyproject.toml."""
import importlib.util
import tomllib
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
spec = importlib.util.spec_from_file_location('mutation_group', REPO / 'tools' / 'mutation_group.py')
mutation_group = importlib.util.module_from_spec(spec)
spec.loader.exec_module(mutation_group)


@pytest.mark.parametrize('group', sorted(mutation_group.GROUPS))
def test_group_config_sets_the_groups_modules_and_tests(group):
    text = (REPO / 'pyproject.toml').read_text()
    table = tomllib.loads(mutation_group.group_config(text, group))['tool']['mutmut']
    modules, tests = mutation_group.GROUPS[group]
    assert table['only_mutate'] == modules and all((REPO / m).is_file() for m in modules)
    selection = table['pytest_add_cli_args_test_selection']
    assert selection[:2] == ['-m', 'not slow'] and selection[2:-2] == tests and all((REPO / t).is_file() for t in tests)
    assert selection[-2:] == ['-k', mutation_group.EXCLUDED] and 'cuda' not in selection[-1].split()
    whole = tomllib.loads(text)['tool']['mutmut']
    assert set(modules) <= set(whole['only_mutate'])  # the groups split the project's own list
    assert {k: v for k, v in table.items() if k not in ('only_mutate', 'pytest_add_cli_args_test_selection')} == {
        k: v for k, v in whole.items() if k not in ('only_mutate', 'pytest_add_cli_args_test_selection')}


def test_every_module_of_the_project_list_has_a_group():
    whole = tomllib.loads((REPO / 'pyproject.toml').read_text())['tool']['mutmut']['only_mutate']
    grouped = [m for modules, _ in mutation_group.GROUPS.values() for m in modules]
    assert sorted(grouped) == sorted(whole)


def test_a_table_without_the_lists_and_a_folder_that_is_not_a_checkout_are_one_line(tmp_path, capsys):
    with pytest.raises(SystemExit, match=r'^pyproject.toml: no "only_mutate = \[...\]" list in \[tool.mutmut\]'):
        mutation_group.group_config('[tool.mutmut]\n', 'ops')
    (tmp_path / 'notes.txt').write_text('mine')
    with pytest.raises(SystemExit, match=rf'^--dir {tmp_path} exists and is not a checkout: give another folder$'):
        mutation_group.main(['ops', '--dir', str(tmp_path)])
    assert [p.name for p in tmp_path.iterdir()] == ['notes.txt']


@pytest.mark.parametrize('argv', [
    ['hub', '--dir', 'd', '--max-children', '2', '--', 'a.x_f__mutmut_1', 'a.x_g__mutmut_2'],
    ['hub', '--', 'a.x_f__mutmut_1', 'a.x_g__mutmut_2'],
    ['--max-children', '2', 'hub', 'a.x_f__mutmut_1', 'a.x_g__mutmut_2', '--dir', 'd'],
])
def test_mutant_names_may_follow_the_options(argv):
    args = mutation_group.parse_args(argv)
    assert args.group == 'hub' and args.mutants == ['a.x_f__mutmut_1', 'a.x_g__mutmut_2']
    assert args.max_children == (2 if '--max-children' in argv else 1)
    assert args.dir == (Path('d') if '--dir' in argv else None)


def test_a_worktree_can_be_given_another_group_or_the_same_again():
    text = (REPO / 'pyproject.toml').read_text()
    once = mutation_group.group_config(text, 'hub')
    again = mutation_group.group_config(once, 'hub')
    assert again == once
    other = tomllib.loads(mutation_group.group_config(once, 'loops'))['tool']['mutmut']
    assert other['only_mutate'] == ['timm_fgfocus/training/loops.py']
    assert other['pytest_add_cli_args_test_selection'][2:-2] == ['tests/test_loops.py']
    assert tomllib.loads(again)['tool']['mutmut']['timeout_constant'] == 10.0  # the rest kept
