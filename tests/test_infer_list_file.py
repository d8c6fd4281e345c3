"""A .txt given to mtlser-infer that is not a list of paths says so once."""

import pytest

from mtlser.infer.audio import find_recordings
from mtlser.utils import MtlserError


def test_text_that_is_not_a_list_is_one_error(tmp_path):
    notes = tmp_path / "notes.txt"
    notes.write_text("# my notes\nthe speakers were recorded in 2019\nsecond line\n")
    with pytest.raises(MtlserError) as e:
        find_recordings([str(notes)])
    assert str(e.value) == (f"{notes}: not a list of audio paths: none of its lines names an existing file or folder "
                            "(line 2: 'the speakers were recorded in 2019'); give audio files, folders, a wav.scp, "
                            "or a text file with one path a line (relative to the file)")


def test_a_list_with_one_missing_path_still_reports_it(tmp_path):
    (tmp_path / "a.wav").write_bytes(b"")
    lst = tmp_path / "list.txt"
    lst.write_text("a.wav\nb.wav\n")
    found = find_recordings([str(lst)])
    assert [r.error for r in found] == [None, "not found"]
