# Figure of experiments/lora_placement.c (QLoRA Figure 2 on a tiny model): held-out response NLL on Alpaca
# during and after finetuning for full fp32 finetuning, LoRA on q/v, on attention, on all linear layers at
# several ranks, and QLoRA NF4+DQ; the reference line is full finetuning. Drawn by plots/finetune_common.gp.
if (!exists("scriptdir")) scriptdir = 'plots'
if (!exists("prefix")) prefix = 'lora_placement'
figure_title = 'LoRA placement and rank vs full finetuning (QLoRA Figure 2, tiny-model version)'
figure_subtitle = 'stories260K finetuned on Alpaca; metric: held-out NLL of the response tokens (not RougeL); fp32 stands in for 16-bit'
reference = 'full'
load scriptdir.'/finetune_common.gp'
