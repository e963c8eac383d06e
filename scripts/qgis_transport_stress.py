"""Stress the QGIS transport as the dock uses it: thousands of requests from a worker thread while the GUI
thread processes events.

A worker thread asks a scripted loopback engine ROUNDS x 3 times, each with a new
`EngineClient(url, transport=QgisTransport())` (two requests each: /v1/models and the question), while the
main thread processes Qt events as QGIS's GUI thread does, and prints how many asks failed. Before replies
were deleted in the GUI thread (plugin/qgis_transport.py, `_delete_in_gui_thread`), about one request in
400-900 lost its reply here ("wrapped C/C++ object of type QNetworkReply has been deleted" in a
network-thread slot, then the process aborted, exit status 134, or segfaulted, 139); 150 rounds failed every
time, and never when the main thread only slept. Now 2 x 2100 asks pass (QGIS 3.40, PyQt 5.15).

Usage: QT_QPA_PLATFORM=offscreen python scripts/qgis_transport_stress.py [ROUNDS (150)]
"""
from __future__ import annotations

import sys
import threading
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))

from qgis.core import QgsApplication  # noqa: E402
from qgis.PyQt.QtCore import QCoreApplication  # noqa: E402

ONE_PIXEL_PNG = bytes.fromhex("89504e470d0a1a0a0000000d4948445200000001000000010802000000907753de0000000c49444154"
                              "789c63f8cfc000000301010018dd8db00000000049454e44ae426082")


def main(rounds: int) -> None:
    app = QgsApplication([], False)
    app.initQgis()
    from ask_engines import ScriptedEngine

    from geovlm.core.client import EngineClient
    from geovlm.plugin.qgis_transport import QgisTransport, stop_network_thread

    failures, done = [], threading.Event()
    with ScriptedEngine("geochat", "a field {<10><20><40><60>|<90>}") as engine:
        def asks() -> None:
            for _ in range(rounds * 3):
                try:
                    client = EngineClient(engine.url, transport=QgisTransport(), retry_window=0.0)
                    client.ask(ONE_PIXEL_PNG, None, "Describe the image", max_tokens=8)
                except Exception as exc:  # noqa: BLE001  # counted and shown
                    failures.append(f"{type(exc).__name__}: {exc}")
            done.set()

        threading.Thread(target=asks, daemon=True).start()
        deadline = time.monotonic() + 600
        while not done.is_set() and time.monotonic() < deadline:
            QCoreApplication.processEvents()
            time.sleep(0.005)
    print(f"{rounds * 3} asks, {len(failures)} failed", *failures[:3], sep="\n")
    stop_network_thread()
    app.exitQgis()


if __name__ == "__main__":
    main(int(sys.argv[1]) if len(sys.argv) > 1 else 150)
