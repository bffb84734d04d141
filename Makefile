# The README's two commands: `make demo` and `make test`. Each builds the virtual environment
# in .venv/ from the requirements files when it is missing or older than them.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
DEMO_DIR := demo_data/digits
DEMO_OUT := checkpoints/demo
# Pretrained weights come from local files and caches only (hospital servers are often offline).
export HF_HUB_OFFLINE := 1

.PHONY: demo test venv venv-test clean

$(VENV)/.runtime: requirements.txt
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -r requirements.txt
	touch $@

$(VENV)/.test: $(VENV)/.runtime requirements-test.txt
	$(PY) -m pip install --quiet -r requirements-test.txt
	touch $@

venv: $(VENV)/.runtime
venv-test: $(VENV)/.test

$(DEMO_DIR)/images: | $(VENV)/.runtime
	$(PY) -m data.demo $(DEMO_DIR)

demo: $(VENV)/.runtime $(DEMO_DIR)/images
	$(PY) train_clip.py --data-dir $(DEMO_DIR)/images --class-texts-file $(DEMO_DIR)/class_texts_en.json \
		--image-encoder resnet18:scratch --text-encoder all-MiniLM-L6-v2 --freeze-text \
		--img-size 32 --augmentation none --batch-size 64 --epochs 3 --learning-rate 1e-3 \
		--warmup-epochs 0.5 --use-cv --n-splits 5 --num-workers 0 \
		--output-dir $(DEMO_OUT) --overwrite

test: $(VENV)/.test
	$(PY) -m pytest -q -n auto --dist loadfile tests

clean:
	rm -rf $(DEMO_DIR) $(DEMO_OUT)
