# The embedded model family and the 4-bit data-type comparison that runs on it (QLoRA Table 2 / Figure 3).
# OMP_WAIT_POLICY defaults to PASSIVE here: with OpenBLAS and OpenMP sharing two cores, spinning OpenMP
# workers starve the BLAS threads (measured: up to 10x slower training of the small models).
.PHONY: zoo experiment-nf4-vs-fp4

ZOO_CONFIG ?= experiments/zoo.json

zoo: all ## Pretrain (or reuse from models/zoo/) the embedded LLaMA family; results/zoo.{h5,md}, plots/zoo.png
	@mkdir -p results
	@OMP_WAIT_POLICY=$${OMP_WAIT_POLICY:-PASSIVE} $(BUILD)/bin/zoo --config $(ZOO_CONFIG) --out results/zoo.h5 && \
	$(QLAB) report results/zoo.h5 --md results/zoo.md --plot plots/zoo.png

# With CONFIG=... (e.g. experiments/nf4_vs_fp4_real.json) the zoo is not built first.
experiment-nf4-vs-fp4: $(if $(CONFIG),all,zoo) ## 4-bit types vs perplexity over the model family (Table 2, Figure 3); CONFIG=experiments/nf4_vs_fp4_real.json for real models
	@mkdir -p results
	@OMP_WAIT_POLICY=$${OMP_WAIT_POLICY:-PASSIVE} $(BUILD)/bin/nf4_vs_fp4 --config $${CONFIG:-experiments/nf4_vs_fp4.json} \
	  --out results/nf4_vs_fp4.h5 && \
	$(QLAB) report results/nf4_vs_fp4.h5 --md results/nf4_vs_fp4.md --plot plots/nf4_vs_fp4.png
