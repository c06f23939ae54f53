"""``adstack map``: the summary and a route, and one-line errors with exit code 2."""

from adstack.cli import main


def test_map_summary_and_route(capsys):
    assert main(["map", "junction4", "--route", "-80", "-1.75", "1.75", "60", "--yaw", "0", "90"]) == 0
    out = capsys.readouterr().out
    assert "driving lanes:  20" in out and "junctions:      1" in out and "traffic lights: 4" in out
    assert "route length:   138." in out


def test_map_errors_are_one_line(capsys, tmp_path):
    assert main(["map", "Atlantis", "--map-dir", str(tmp_path)]) == 2
    err = capsys.readouterr().err.strip()
    assert "\n" not in err and "unknown map 'Atlantis'" in err
    bad = tmp_path / "bad.xodr"
    bad.write_text("<OpenDRIVE>")
    assert main(["map", str(bad)]) == 2
    err = capsys.readouterr().err.strip()
    assert "\n" not in err and "bad.xodr: not valid OpenDRIVE XML" in err
    assert main(["map", "junction4", "--route", "-80", "-1.75", "80", "1.75"]) == 2
    assert "no route from start" in capsys.readouterr().err
