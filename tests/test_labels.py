"""Label tables: every format read as the task has it, every bad table refused naming its line (no TensorFlow)."""

import numpy as np
import pytest

from transferkit.errors import DataError
from transferkit.labels import random_split, read_labels, split_names


@pytest.fixture()
def root(tmp_path):
    """A data folder of six empty "images" (the table reader only checks that they exist)."""
    folder = tmp_path / "data"
    (folder / "sub").mkdir(parents=True)
    for name in ("a.jpg", "b.jpg", "c.jpg", "d.jpg", "sub/e.jpg", "sub/f.jpg"):
        (folder / name).write_bytes(b"")
    return folder


def _table(tmp_path, text, name="labels.csv"):
    path = tmp_path / name
    path.write_text(text)
    return path


def test_multiclass_names_sorted_as_class_folders_are(tmp_path, root):
    path = _table(tmp_path, "path,digit\na.jpg,10\nb.jpg,2\nc.jpg,2\n\nsub/e.jpg,10\n")
    table = read_labels(path, root, "multiclass")
    assert table.names == ("10", "2")  # by name, as scan_folder sorts folders: the same run either way
    assert table.targets.tolist() == [0, 1, 1, 0] and table.targets.dtype == np.int32
    assert table.files[3] == str((root / "sub" / "e.jpg").resolve())
    assert table.lines == (2, 3, 4, 6)  # the blank line is skipped, line numbers stay the file's


def test_multilabel_delimited_found_and_given(tmp_path, root):
    path = _table(tmp_path, "path,tags\na.jpg,cat|dog\nb.jpg,dog\nc.jpg, bird | cat \n")
    table = read_labels(path, root, "multilabel")
    assert table.names == ("bird", "cat", "dog")
    assert table.targets.tolist() == [[0, 1, 1], [0, 0, 1], [1, 1, 0]] and table.targets.dtype == np.float32
    spaced = _table(tmp_path, "path,tags\na.jpg,cat dog\nb.jpg,dog\n", "spaced.csv")
    assert read_labels(spaced, root, "multilabel").targets.tolist() == [[1, 1], [0, 1]]
    given = _table(tmp_path, "path,tags\na.jpg,big cat/dog\nb.jpg,dog\n", "given.csv")
    assert read_labels(given, root, "multilabel", delimiter="/").names == ("big cat", "dog")
    assert split_names(" a ;; b ", ";") == ["a", "b"]


def test_multilabel_zero_one_columns_allow_an_image_with_no_label(tmp_path, root):
    path = _table(tmp_path, "path,cat,dog,bird\na.jpg,1,0,0\nb.jpg,0,0,0\nc.jpg,1,1,1.0\n")
    table = read_labels(path, root, "multilabel")
    assert table.names == ("cat", "dog", "bird")
    assert table.targets.tolist() == [[1, 0, 0], [0, 0, 0], [1, 1, 1]]
    picked = read_labels(path, root, "multilabel", columns=["bird", "cat"])
    assert picked.names == ("bird", "cat") and picked.targets.tolist() == [[0, 1], [0, 0], [1, 1]]


def test_regression_columns_and_tab_separated(tmp_path, root):
    path = _table(tmp_path, "image\tage\tweight\na.jpg\t3\t-1.5e1\nb.jpg\t4.25\t0\n", "targets.tsv")
    table = read_labels(path, root, "regression")
    assert table.names == ("age", "weight")
    np.testing.assert_array_equal(table.targets, np.array([[3, -15], [4.25, 0]], dtype=np.float32))
    assert read_labels(path, root, "regression", columns=["weight"]).targets.shape == (2, 1)


def test_absolute_paths_are_taken_as_they_are(tmp_path, root):
    path = _table(tmp_path, f"path,y\n{root / 'a.jpg'},1\nb.jpg,2\n")
    (tmp_path / "elsewhere").mkdir()
    with pytest.raises(DataError, match="1 image.*line 3: b.jpg"):  # only the relative row is missing there
        read_labels(path, tmp_path / "elsewhere", "regression")
    assert read_labels(path, root, "regression").files[0] == str((root / "a.jpg").resolve())


@pytest.mark.parametrize("text, task, kwargs, expected", [
    ("path,y\na.jpg,1\nmissing.jpg,2\nb.jpg,\n", "regression", {}, r"1 image\(s\) not found.*line 3: missing.jpg"),
    ("path,y\na.jpg,1\nb.jpg,x\nc.jpg,inf\n", "regression", {}, r"finite numbers.*line 3 \(y: 'x'\).*line 4 \(y: 'inf'\)"),
    ("path,y\na.jpg,1\nb.jpg,\n", "regression", {}, r"line 3 \(y: ''\)"),
    ("path,label\na.jpg,cat\nb.jpg,\n", "multiclass", {}, r"no label: line 3 \(label\)"),
    ("path,tags\na.jpg,cat\nb.jpg,  \n", "multilabel", {}, r"no label: line 3.*0/1 column per label"),
    ("path,cat,dog\na.jpg,1,2\n", "multilabel", {}, r"0 or 1 .*line 2 \(dog: '2'\)"),
    ("path,cat,dog\na.jpg,1,0\nb.jpg,1,0\n", "multilabel", {}, r"dog .* 0 on every row"),
    ("path,cat,dog\na.jpg,1,0\n", "multilabel", {"delimiter": "|"}, r"--label-delimiter splits one column"),
    ("path,label\na.jpg,cat\nb.jpg,dog\nc.jpg,cow\n", "binary", {}, r"exactly 2 distinct labels.*has 3"),
    ("path,label\na.jpg,cat\nb.jpg,cat\n", "multiclass", {}, r"at least 2 distinct labels.*has 1"),
    ("path,a,b\na.jpg,cat,dog\n", "multiclass", {}, r"one label column.*has 2 \(a, b\).*--label-columns"),
    ("path,age\na.jpg,1\n", "regression", {"columns": ["weight"]}, r"'weight' are not in .*columns are age"),
    ("a.jpg,1\nb.jpg,2\n", "regression", {}, r"starts with 'a.jpg', a file, not a header"),
    ("path,y\na.jpg,1\nb.jpg,2,3\n", "regression", {}, r"header has 2 columns but line 3: 3 cells"),
    ("path,y\na.jpg,1\n./a.jpg,2\n", "regression", {}, r"line 3 repeats line 2"),
    ("path,y\n,1\n", "regression", {}, r"no path on line 2"),
    ("path,a,a\na.jpg,1,0\n", "multilabel", {}, r"repeated column names in its header \('a'\)"),
    ("path,y\na.jpg,1_000\n", "regression", {}, r"line 2 \(y: '1_000'\)"),
    ("path\na.jpg\n", "regression", {}, r"one column \('path'\)"),
    ("path,y\n", "regression", {}, r"only a header"),
    ("", "regression", {}, r"no rows"),
])
def test_bad_tables_are_refused_naming_the_line(tmp_path, root, text, task, kwargs, expected):
    with pytest.raises(DataError, match=expected):
        read_labels(_table(tmp_path, text), root, task, **kwargs)


def test_many_problems_are_counted_not_all_listed(tmp_path, root):
    rows = "".join(f"gone{i}.jpg,{i}\n" for i in range(8))
    with pytest.raises(DataError, match=r"8 image\(s\) not found.*line 6: gone4.jpg and 3 more"):
        read_labels(_table(tmp_path, "path,y\n" + rows), root, "regression")


def test_a_test_table_is_read_onto_the_runs_outputs(tmp_path, root):
    classes = _table(tmp_path, "path,y\na.jpg,dog\nb.jpg,dog\n")
    table = read_labels(classes, root, "multiclass", names=["cat", "dog"])  # one class present is enough
    assert table.names == ("cat", "dog") and table.targets.tolist() == [1, 1]
    with pytest.raises(DataError, match="class\\(s\\) dog that the run was not trained on"):
        read_labels(classes, root, "multiclass", names=["cat", "cow"])
    tags = _table(tmp_path, "path,tags\na.jpg,b\n", "tags.csv")
    assert read_labels(tags, root, "multilabel", names=["a", "b"]).targets.tolist() == [[0, 1]]
    columns = _table(tmp_path, "path,z,b,a\na.jpg,1,0,1\n", "cols.csv")  # the run's columns, in its order
    assert read_labels(columns, root, "multilabel", names=["a", "b"]).targets.tolist() == [[1, 0]]
    with pytest.raises(DataError, match="'c' are not in"):
        read_labels(columns, root, "multilabel", names=["a", "c"])
    values = _table(tmp_path, "path,w,age\na.jpg,3,40\n", "values.csv")
    assert read_labels(values, root, "regression", names=["age"]).targets.tolist() == [[40.0]]


def test_a_test_tables_columns_are_put_in_the_runs_order(tmp_path, root):
    values = _table(tmp_path, "path,a,b\na.jpg,1,2\n")
    picked = read_labels(values, root, "regression", columns=["b", "a"], names=["a", "b"])
    assert picked.names == ("a", "b") and picked.targets.tolist() == [[1.0, 2.0]]  # not swapped silently
    with pytest.raises(DataError, match="gives b; the run has a, b"):
        read_labels(values, root, "regression", columns=["b"], names=["a", "b"])


def test_one_zero_one_column_is_a_binary_task_and_the_folder_must_exist(tmp_path, root):
    with pytest.raises(DataError, match="one yes/no label, a binary task"):
        read_labels(_table(tmp_path, "path,is_cat\na.jpg,1\nb.jpg,0\n"), root, "multilabel")
    with pytest.raises(DataError, match="Data folder .* does not exist"):
        read_labels(_table(tmp_path, "path,y\na.jpg,1\n"), tmp_path / "nowhere", "regression")


def test_a_missing_table_and_an_unknown_task(tmp_path, root):
    with pytest.raises(DataError, match="does not exist"):
        read_labels(tmp_path / "none.csv", root, "regression")
    with pytest.raises(DataError, match="task must be one of"):
        read_labels(_table(tmp_path, "path,y\na.jpg,1\n"), root, "ranking")


def test_random_split_is_seeded_disjoint_and_keeps_both_sides():
    train, val = random_split(10, 0.2, seed=3)
    assert sorted(np.r_[train, val].tolist()) == list(range(10)) and len(val) == 2
    again = random_split(10, 0.2, seed=3)
    assert train.tolist() == again[0].tolist() and val.tolist() == again[1].tolist()
    assert len({tuple(random_split(10, 0.2, seed=s)[1]) for s in range(5)}) > 1  # the seed matters
    assert [len(part) for part in random_split(2, 0.9, seed=0)] == [1, 1]
    with pytest.raises(DataError, match="at least 2 images"):
        random_split(1, 0.2, seed=0)
    with pytest.raises(DataError, match="between 0 and 1"):
        random_split(10, 1.0, seed=0)
