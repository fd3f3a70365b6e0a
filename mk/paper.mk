# `make paper`: every experiment that reproduces part of the QLoRA paper, then results/REPORT.md with a
# verdict per claim (cli/cmd_paper.c; results/paper.md links to it for older bookmarks). An experiment reruns
# only when the bytes of its config or of its program change: results/.NAME.key holds their sha256 and is
# rewritten only when it differs, so a rebuild that produces the same program (the build is reproducible:
# same sources, same binary) or a touched but unchanged config reuses the results. A results file from
# before the keys existed is redone once. The default nf4_vs_fp4 config needs the zoo (make zoo: ~13-40 min
# once, then cached in models/zoo/).
.PHONY: paper paper-force-keys

PAPER_EXPERIMENTS := double_quant vicuna_tables qlora_vs_16bit lora_placement dataset_quality nf4_vs_fp4 \
                     memory_footprint

# Always evaluated; the key file's time changes only with its content.
results/.%.key: experiments/%.json $(BUILD)/bin/% paper-force-keys
	@mkdir -p results
	@cat experiments/$*.json $(BUILD)/bin/$* | sha256sum | cut -d' ' -f1 > $@.tmp
	@if cmp -s $@.tmp $@; then rm -f $@.tmp; else mv $@.tmp $@; fi
paper-force-keys:
.PRECIOUS: results/.%.key

results/%.h5: results/.%.key
	@mkdir -p results plots
	@echo "paper: $* ($$(date -u +%H:%M:%S) UTC; each experiment shows its own progress and ETA)"
	@$(BUILD)/bin/$* --config experiments/$*.json --out $@
	@$(QLAB) report $@ --md results/$*.md --plot plots/$*.png

# The zoo is an order-only prerequisite: building or finding it never makes the results look stale.
results/nf4_vs_fp4.h5: | zoo

paper: all $(PAPER_EXPERIMENTS:%=results/%.h5) ## Run (or reuse: same config and program bytes) every paper experiment, then results/REPORT.md: a verdict per claim
	@$(QLAB) paper --results results --out results/REPORT.md
	@ln -sf REPORT.md results/paper.md
