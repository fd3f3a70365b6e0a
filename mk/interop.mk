# ---------------------------------------------------------------- cross-checks against the real libraries
# tests/interop/check_*.py run qlab and the Python libraries whose conventions qlab follows (bitsandbytes,
# tokenizers, transformers, PEFT) on the same inputs and compare. They need a Python environment with
# those libraries (PyPI's torch wheel brings its CUDA libraries: ~4 GB), so they are not part of `make test`.
INTEROP_VENV ?= .interop-venv
INTEROP_PY = $(INTEROP_VENV)/bin/python
INTEROP_PKGS = torch==2.15.0 transformers==5.25.0 peft==0.21.2 bitsandbytes==0.50.2 tokenizers==0.23.3 \
  safetensors==0.8.0 gguf==0.19.0 sentencepiece==0.2.3 protobuf==7.36.2 numpy accelerate

.PHONY: interop interop-deps
interop-deps: ## Create INTEROP_VENV (default .interop-venv) with the pinned Python libraries the cross-checks compare against (~4 GB from PyPI)
	@[ -x $(INTEROP_PY) ] || python3 -m venv $(INTEROP_VENV)
	$(INTEROP_PY) -m pip install -q $(INTEROP_PKGS)

interop: all ## Cross-check qlab against bitsandbytes, tokenizers, transformers and PEFT (needs make interop-deps; data from ../shared/data)
	@[ -x $(INTEROP_PY) ] || { echo "interop: no $(INTEROP_PY): run 'make interop-deps' first (or INTEROP_VENV=dir)" >&2; exit 2; }
	@fail=0; for s in tests/interop/check_*.py; do echo "== $$s"; \
	  OMP_NUM_THREADS=$${OMP_NUM_THREADS:-2} TQDM_DISABLE=1 HF_HUB_DISABLE_PROGRESS_BARS=1 HF_HUB_OFFLINE=1 $(INTEROP_PY) $$s || fail=1; done; \
	if [ $$fail -ne 0 ]; then echo "interop: some checks FAILED" >&2; exit 1; fi; echo "interop: all checks passed"

.PHONY: bench-peers
bench-peers: ## The peers' figures for make bench's model: PyTorch fp32/bf16 training and evaluation, bitsandbytes+PEFT QLoRA step (needs make interop-deps)
	@[ -x $(INTEROP_PY) ] || { echo "bench-peers: no $(INTEROP_PY): run 'make interop-deps' first (or INTEROP_VENV=dir)" >&2; exit 2; }
	@OMP_NUM_THREADS=$${OMP_NUM_THREADS:-2} TQDM_DISABLE=1 HF_HUB_DISABLE_PROGRESS_BARS=1 HF_HUB_OFFLINE=1 \
	  $(INTEROP_PY) tests/interop/bench_pytorch.py
