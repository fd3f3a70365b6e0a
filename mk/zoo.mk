# The embedded model family and the 4-bit data-type comparison that runs on it (QLoRA Table 2 / Figure 3).
.PHONY: zoo

ZOO_CONFIG ?= experiments/zoo.json

zoo: all ## Pretrain (or reuse from models/zoo/) the embedded LLaMA family; results/zoo.{h5,md}, plots/zoo.png
	@mkdir -p results
	@$(BUILD)/bin/zoo --config $(ZOO_CONFIG) --out results/zoo.h5 && \
	$(QLAB) report results/zoo.h5 --md results/zoo.md --plot plots/zoo.png

# The default config compares the family, so the family is built (or found cached) first; with CONFIG=...
# (e.g. experiments/nf4_vs_fp4_real.json) it is not. The recipe is the Makefile's experiment-% rule.
experiment-nf4-vs-fp4: $(if $(CONFIG),,zoo) ## 4-bit types vs perplexity over the model family (Table 2, Figure 3); CONFIG=experiments/nf4_vs_fp4_real.json for real models

# The paged-optimizer experiment's default base is stories260K from ../shared/data, else the embedded
# zoo-0.3M: without the former, the family is built (or found cached) first.
experiment-paged-optimizer: $(if $(CONFIG),,$(if $(wildcard ../shared/data/models/stories260K.bin),,zoo)) ## QLoRA's paged optimizer under a memory budget, with the sequence-length spike; make zoo first when ../shared/data lacks stories260K
