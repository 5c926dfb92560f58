import pytest

from gdnc.cli import main


def test_list(capsys):
    assert main(["list"]) == 0
    out = capsys.readouterr().out
    for name in ("gdn", "kda", "comba", "retention"):
        assert name in out


def test_show(capsys):
    assert main(["show", "gdn"]) == 0
    out = capsys.readouterr().out
    assert "rank-1 (same key)" in out and "chunked form" in out and "U     = (I + diag(beta) M)⁻¹" in out


def test_show_unknown_variant():
    with pytest.raises(SystemExit, match="unknown variant"):
        main(["show", "nope"])


def test_check_passes(capsys):
    assert main(["check", "gdn", "kda", "--T", "130", "--chunk-size", "32"]) == 0
    out = capsys.readouterr().out
    assert out.count("PASS") == 2 and "dg=" in out and "dh0=" in out
