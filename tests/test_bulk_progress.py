"""core.bulk's run accounting without an engine: when a progress line is logged (ProgressLog, on a fake clock)
and how unreadable tiles are told apart from the engine's failures (RunStats)."""
from geovlm.core.bulk import ProgressLog, RunStats, counted, eta_text


def test_progress_lines_every_tenth_or_after_a_pause_never_twice():
    now = [0.0]
    log = ProgressLog(200, clock=lambda: now[0])
    logged = [n for n in range(0, 201) if log.due(n)]  # 200 tiles finished quickly
    assert logged == [1] + list(range(20, 201, 20))
    log = ProgressLog(1000, clock=lambda: now[0])
    assert log.due(1) and not log.due(1) and not log.due(2)
    now[0] += 10.0  # a slow run still says where it is every 10 s
    assert log.due(3) and not log.due(4)


def test_unreadable_tiles_are_named_apart_from_engine_failures():
    stats = RunStats(total=16, ok=7, failed=9, asked=7)
    stats.unreadable = {f"r3c{i}": "GDAL cannot read this window (TIFFReadEncodedTile() failed.)" for i in range(4)}
    assert stats.engine_failed == 5
    assert "9 failed (4 unreadable)" in stats.summary_of("features")
    assert stats.summary_of("features").startswith("16 features: ")
    note = stats.unreadable_note()
    assert note.startswith("4 tiles could not be read (r3c0, r3c1, r3c2, r3c3)")
    assert "TIFFReadEncodedTile" in note and note.endswith("a rerun will not help those")
    assert RunStats(total=3, failed=1).unreadable_note() == ""


def test_counts_take_the_singular_for_one():
    assert counted(1, "tiles") == "1 tile" and counted(0, "tiles") == "0 tiles"
    assert counted(2, "features") == "2 features"
    one = RunStats(total=1, asked=1, failed=1)
    one.unreadable = {"r0c0": "damaged"}
    assert one.summary().startswith("1 tile: 1 asked") and one.summary_of("features").startswith("1 feature: ")
    assert one.unreadable_note().startswith("1 tile could not be read (r0c0)")


def test_the_time_left_below_a_second_is_said_so_not_0_s():
    """The screenshot review's bulk log said "15/16 tiles, about 0 s left" (0.4 s at this pace)."""
    assert eta_text(RunStats(total=16, ok=15), elapsed=6.0) == "under 1 s left"
    assert eta_text(RunStats(total=16, ok=14), elapsed=14.0) == "about 2 s left"
    assert eta_text(RunStats(total=16, ok=14), elapsed=3.0) == "under 1 s left"
    assert eta_text(RunStats(total=16, ok=4, failed=2), elapsed=6.0) == "about 10 s left"
    assert eta_text(RunStats(total=16), elapsed=6.0) == ""  # no tile finished: no pace yet
    assert eta_text(RunStats(total=16, ok=15, failed=1), elapsed=6.0) == ""  # every tile finished


def test_a_long_run_says_its_time_left_in_minutes_or_hours_not_thousands_of_seconds():
    """A run of 10 000 tiles at 2.5 s a tile said "about 24998 s left"."""
    assert eta_text(RunStats(total=10_000, ok=1), elapsed=2.5) == "about 6 h 57 min left"
    assert eta_text(RunStats(total=100, ok=40), elapsed=120.0) == "about 3 min left"
    assert eta_text(RunStats(total=100, ok=50), elapsed=59.0) == "about 59 s left"
    assert eta_text(RunStats(total=100, ok=50), elapsed=59.8) == "about 1 min left"  # not "about 60 s"
    assert eta_text(RunStats(total=121, ok=1), elapsed=30.0) == "about 1 h left"  # 3600 s: no "0 min"
