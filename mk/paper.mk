# `make paper`: every experiment that reproduces part of the QLoRA paper, then results/paper.md with a verdict
# per claim (cli/cmd_paper.c). An experiment reruns only when its config or its program (hence the library)
# is newer than its results file; otherwise the results are reused. The default nf4_vs_fp4 config needs
# the zoo (make zoo: ~22 min once, then cached in models/zoo/).
.PHONY: paper

PAPER_EXPERIMENTS := double_quant vicuna_tables qlora_vs_16bit lora_placement dataset_quality nf4_vs_fp4

results/%.h5: experiments/%.json $(BUILD)/bin/%
	@mkdir -p results plots
	@echo "paper: $* ($$(date -u +%H:%M:%S) UTC; each experiment shows its own progress and ETA)"
	@$(BUILD)/bin/$* --config experiments/$*.json --out $@
	@$(QLAB) report $@ --md results/$*.md --plot plots/$*.png

# The zoo is an order-only prerequisite: building or finding it never makes the results look stale.
results/nf4_vs_fp4.h5: | zoo

paper: all $(PAPER_EXPERIMENTS:%=results/%.h5) ## Run (or reuse) every paper experiment, then results/paper.md: a verdict per claim
	@$(QLAB) paper --results results --out results/paper.md
