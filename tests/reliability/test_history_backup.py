"""history.csv and the backup commit together: rows past the backup's epoch
are dropped on resume, with a line saying what was kept, and a first backup
cut off while written restarts the run instead of blocking it."""

import json

import pytest

from kpair.errors import BackupError
from kpair.training import callbacks as kcb


def write_history(path, epochs):
    path.write_text("epoch,val_loss\n" + "".join(f"{e},0.5\n" for e in epochs))


def test_rows_past_the_backup_are_dropped_and_named(tmp_path, capsys):
    history = tmp_path / "history.csv"
    write_history(history, [1, 2, 3])
    assert kcb.trim_history(history, 2) == [3]
    assert [r["epoch"] for r in kcb.read_history(history)] == ["1", "2"]
    line = capsys.readouterr().out.strip()
    assert "rows of epoch 3" in line and "epochs 1-2, kept" in line, line


def test_rows_without_any_backup_say_the_run_starts_again(tmp_path, capsys):
    history = tmp_path / "history.csv"
    write_history(history, [1, 2])
    assert kcb.trim_history(history, 0) == [1, 2]
    assert kcb.read_history(history) == []
    line = capsys.readouterr().out.strip()
    assert "epochs 1-2" in line and "training from the start" in line, line


def test_rows_within_the_backup_are_left_alone(tmp_path, capsys):
    history = tmp_path / "history.csv"
    write_history(history, [1, 2])
    before = history.read_text()
    assert kcb.trim_history(history, 2) == []
    assert kcb.trim_history(tmp_path / "none.csv", 0) == []
    assert history.read_text() == before
    assert capsys.readouterr().out == ""


def test_a_first_backup_cut_off_is_removed_and_training_starts_over(
    tmp_path, capsys
):
    backup = tmp_path / "backup"
    backup.mkdir()
    (backup / kcb.BACKUP_WEIGHTS).write_bytes(b"\x89HDF\r\n")  # cut short
    assert kcb.restore_point(backup) == 0
    assert "first backup was cut off" in capsys.readouterr().out
    assert not (backup / kcb.BACKUP_WEIGHTS).exists()


def test_a_damaged_backup_with_a_damaged_previous_one_is_refused(tmp_path):
    backup = tmp_path / "backup"
    backup.mkdir()
    for name in (kcb.BACKUP_WEIGHTS, kcb.BACKUP_WEIGHTS + kcb.PREVIOUS):
        (backup / name).write_bytes(b"\x89HDF\r\n")
    for name in (kcb.BACKUP_METADATA, kcb.BACKUP_METADATA + kcb.PREVIOUS):
        (backup / name).write_text(json.dumps({"epoch": 1}))
    with pytest.raises(BackupError, match="and so is the previous one"):
        kcb.restore_point(backup)
