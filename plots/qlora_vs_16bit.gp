# Figure of experiments/qlora_vs_16bit.c (QLoRA Tables 3-4 on a tiny model): held-out response NLL on Alpaca
# for full fp32 finetuning, LoRA on an fp32 base (the 16-bit stand-in, the reference line) and QLoRA on
# 4-bit bases. Drawn by plots/finetune_common.gp.
if (!exists("scriptdir")) scriptdir = 'plots'
if (!exists("prefix")) prefix = 'qlora_vs_16bit'
figure_title = 'QLoRA on a 4-bit base vs 16-bit finetuning (QLoRA Tables 3-4, tiny-model version)'
figure_subtitle = 'stories260K finetuned on Alpaca, same data, steps and seeds; metric: held-out NLL of the response tokens (not RougeL/MMLU); fp32 stands in for BF16'
reference = 'lora_fp32'
load scriptdir.'/finetune_common.gp'
