# GeoVLM: two commands on a fresh machine: `make demo` and `make test`.
VENV ?= .venv
PY := $(VENV)/bin/python
SHARED ?= ../shared
PROFILE_DIR ?= $(HOME)/.local/share/QGIS/QGIS3/profiles/default/python/plugins
DEMO_DIR ?= .demo

export HF_HUB_OFFLINE := 1
export TRANSFORMERS_OFFLINE := 1
export QT_QPA_PLATFORM := offscreen
export GDAL_PAM_ENABLED := NO
export GEOVLM_SHARED := $(abspath $(SHARED))
unexport PROJ_LIB PROJ_DATA

.PHONY: setup demo test test-qgis-sid bench lint zip install-plugin clean screenshots

setup: $(VENV)/.stamp

$(VENV)/.stamp: pyproject.toml scripts/setup.sh
	bash scripts/setup.sh

# The main job on the embedded default: the demo model (a tiny random stand-in) answers about a real
# aerial photo shipped in sample/, and the answer's boxes land in a georeferenced layer; then real EarthDial
# answers (also in sample/) become layers. Needs nothing beside the clone.
DEMO_RASTER ?= sample/aerial.tif
DEMO_ANSWERS ?= sample/earthdial_refer.jsonl
demo: setup
	@mkdir -p $(DEMO_DIR)
	$(VENV)/bin/geovlm ask $(DEMO_RASTER) "[grounding]Describe the image and locate what you name." \
		--family geochat --max-new-tokens 48 --out $(DEMO_DIR)/ask.gpkg --overwrite
	$(VENV)/bin/geovlm parse $(DEMO_ANSWERS) --family earthdial --image-size 800x800 \
		--out $(DEMO_DIR)/earthdial_refer.gpkg --overwrite
	@$(PY) scripts/demo_summary.py $(DEMO_DIR)/ask.gpkg $(DEMO_DIR)/earthdial_refer.gpkg

test: setup
	$(PY) -m pytest

# The QGIS-side tests on QGIS 3.44 from Debian sid, in a debootstrap chroot (root, network, minutes).
test-qgis-sid:
	bash scripts/test_qgis_chroot.sh sid

bench: setup
	@for f in bench/bench_*.py; do echo "== $$f"; $(PY) $$f || exit 1; done

lint: setup
	$(VENV)/bin/ruff check .
	$(VENV)/bin/bandit -q -r . -c pyproject.toml

# A release zip for the QGIS plugin repository: one folder geovlm/, no tests, no venv.
zip:
	python3 scripts/make_zip.py dist/geovlm.zip

# Screenshots for the README (the Ask dock, a scene graph, bulk captions) on the shared rasters, under Xvfb.
screenshots: setup
	@command -v xvfb-run >/dev/null || { S=; [ "$$(id -u)" -eq 0 ] || S=sudo; \
		DEBIAN_FRONTEND=noninteractive $$S apt-get install -y -qq --no-install-recommends xvfb xauth; }
	QT_QPA_PLATFORM=xcb xvfb-run -a -s "-screen 0 1600x1000x24" $(PY) scripts/screenshots.py docs/screenshots

install-plugin:
	mkdir -p "$(PROFILE_DIR)"
	ln -sfn "$(CURDIR)" "$(PROFILE_DIR)/geovlm"
	@echo "linked $(CURDIR) as $(PROFILE_DIR)/geovlm; enable GeoVLM in QGIS's plugin manager"

clean:
	rm -rf build dist $(DEMO_DIR) .pytest_cache
