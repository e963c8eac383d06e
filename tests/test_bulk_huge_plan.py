"""A bulk run over a huge plan (a 10^6 x 10^6 px VRT: 3.8 million tiles of 512 px) walks the plan lazily: the
first tiles are asked without the plan being listed, and a resume counts the tiles done from the ledger and
asks the next ones, not those done (core/bulk.run_tiles, core/ledger.Ledger.pending)."""
import io
import json
import sqlite3

from PIL import Image

from geovlm.core.bulk import run_tiles
from geovlm.core.client import EngineClient
from geovlm.core.georef import GeoTransform
from geovlm.core.ledger import Ledger, RunPlan
from geovlm.core.profiles import get_profile
from geovlm.core.tiling import TilePlan
from geovlm.core.transport import CancelToken, HttpResponse, Transport


class Canned(Transport):
    """An engine on no network that captions every image at once."""

    def request(self, method, url, headers, body=None, timeout=60.0, cancel=None):
        data = ({"data": [{"id": "canned"}]} if url.endswith("/v1/models")
                else {"choices": [{"message": {"content": "a field"}}]})
        return HttpResponse(200, {}, iter([json.dumps(data).encode()]), lambda: None)


class CountedPlan(TilePlan):
    """A TilePlan that counts the tiles it has made (across walks)."""

    def tiles(self):
        for tile in super().tiles():
            object.__setattr__(self, "made", getattr(self, "made", 0) + 1)
            yield tile


def _png():
    buffer = io.BytesIO()
    Image.new("RGB", (32, 32), (10, 120, 30)).save(buffer, format="PNG")
    return buffer.getvalue(), (32, 32)


def _run(plan, out, stop_after):
    profile = get_profile("geochat")
    client = EngineClient("http://127.0.0.1:9", profile=profile, transport=Canned(), max_concurrent=2)
    run = RunPlan("caption", plan, GeoTransform(0.5, 0, 0, 0, -0.5, 0), "q", "caption", "geochat", "canned")
    cancel, image, asked = CancelToken(), _png(), []

    def read(tile):
        asked.append(tile.id)
        return image

    def progress(stats):
        if stats.ok >= stop_after:
            cancel.cancel()

    with Ledger(out, run) as ledger:
        stats = run_tiles(client, ledger, plan, read, "q", "caption", profile, "canned", cancel=cancel,
                          on_progress=progress)
    return stats, asked


def test_a_plan_of_millions_of_tiles_is_walked_lazily_and_resumes_where_it_stopped(tmp_path):
    plan = CountedPlan(1_000_000, 1_000_000, 512)
    assert len(plan) == 3_818_116
    out = tmp_path / "huge.gpkg"
    stats, asked = _run(plan, out, stop_after=5)
    assert stats.total == 3_818_116 and stats.ok >= 5 and stats.cancelled
    assert plan.made <= stats.asked + 16  # the tiles asked and a few read ahead: not the plan's millions
    first = stats.ok
    con = sqlite3.connect(out)
    done = {row[0] for row in con.execute("SELECT tile_id FROM tiles WHERE status = 'ok'")}
    con.close()
    assert len(done) == first
    plan = CountedPlan(1_000_000, 1_000_000, 512)
    stats, again = _run(plan, out, stop_after=3)
    assert stats.resumed == first  # counted from the ledger, not by walking the plan
    assert again and not set(again) & done  # the next tiles, none of those done
    assert plan.made <= first + stats.asked + 16
