import os
import stat

import pytest

from polymodal.io import atomic_path, read_json, write_json


def test_atomic_write_keeps_the_old_file_when_the_block_fails(tmp_path):
    target = tmp_path / "state.json"
    write_json(target, {"step": 1})
    with pytest.raises(RuntimeError):
        with atomic_path(target) as tmp:
            tmp.write_text("{ half written")
            raise RuntimeError("crash mid-write")
    assert read_json(target) == {"step": 1}
    assert [p.name for p in tmp_path.iterdir()] == ["state.json"], "no temporary file left behind"


def test_saved_files_get_the_usual_permissions_not_private_ones(tmp_path):
    umask = os.umask(0o022)
    try:
        write_json(tmp_path / "meta.json", {"a": 1})
    finally:
        os.umask(umask)
    assert stat.S_IMODE((tmp_path / "meta.json").stat().st_mode) == 0o644


def test_read_json_names_the_file_and_position(tmp_path):
    bad = tmp_path / "bad.json"
    bad.write_text('{"a": 1,,}')
    with pytest.raises(ValueError, match=r"bad.json: not valid JSON .* line 1, column 9"):
        read_json(bad)
    with pytest.raises(FileNotFoundError, match="config not found"):
        read_json(tmp_path / "missing.json", "config")
