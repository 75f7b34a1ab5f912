import pytest

from kvmesh.evals.jsonl import field_error, read_jsonl, shown


def test_lines_are_numbered_as_an_editor_shows_them(tmp_path):
    path = tmp_path / "rows.jsonl"
    # a BOM, CRLF endings, a blank line, and a line separator inside a string that str.splitlines would cut at
    path.write_bytes('\ufeff{"a": 1}\r\n\r\n{"b": "x\u2028y"}\n'.encode())
    assert list(read_jsonl(path)) == [(f"{path}:1", {"a": 1}), (f"{path}:3", {"b": "x\u2028y"})]


def test_bad_bytes_and_repeated_keys_name_the_line(tmp_path):
    path = tmp_path / "rows.jsonl"
    path.write_bytes(b'{"a": 1}\n{"a": "\xff"}\n')
    with pytest.raises(ValueError, match=r":2: not valid UTF-8 \(byte 0xff at byte 8 of the line\)"):
        list(read_jsonl(path))
    path.write_bytes(b'{"a": 1}\n{"a": 1, "a": 2}\n')
    with pytest.raises(ValueError, match=r":2: key 'a' appears twice in one object"):
        list(read_jsonl(path))


def test_field_errors_show_json_values_briefly():
    assert str(field_error("f:3", "hops", "an integer", "two")) == "f:3: hops must be an integer, got 'two'"
    assert (shown(None), shown(True), shown(3)) == ("null", "true", "3")
    assert shown("x" * 500).endswith("...") and len(shown("x" * 500)) == 80
