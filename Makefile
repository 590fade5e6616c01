# The only set-up a newcomer needs: `make book` and `make test` create .venv and install everything first.
PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: setup book test test-fast test-browser lab clean assignments

$(STAMP): requirements.txt pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --upgrade-strategy only-if-needed -r requirements.txt
	$(BIN)/python -m pip install --no-deps -e .
	touch $(STAMP)

setup: $(STAMP)

# Execute the notebooks that changed (profile from LABKIT_PROFILE, else the hardware) and build _build/html.
book: setup
	$(BIN)/python scripts/build_book.py

# Every test: labkit unit tests, one ci-profile build of the book (every notebook executed once and checked, the
# website checked as files and in headless Chromium), JupyterLab driven through its UI, and the coursework term.
test: setup
	@start=$$(date +%s); \
	$(BIN)/python -m pytest; status=$$?; \
	echo "make test took $$(( $$(date +%s) - start )) s"; exit $$status

# Unit tests only (seconds): no notebooks, no website build.
test-fast: setup
	$(BIN)/python -m pytest tests -m "not slow"

# The website and JupyterLab in a real headless browser (Debian's chromium; tests/test_browser.py, test_jupyterlab.py).
test-browser: setup
	$(BIN)/python -m pytest tests/test_browser.py tests/test_jupyterlab.py

lab: setup
	$(BIN)/jupyter lab notebooks

# The student release of every assignment, generated from course/source by nbgrader and scanned for leaked answers.
assignments: setup
	$(BIN)/python scripts/course.py release

clean:
	rm -rf _build
