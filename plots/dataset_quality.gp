# Figure of experiments/dataset_quality.c (QLoRA Tables 5/6 on a tiny model): for each training set, the chat
# target (held-out OASST1 response NLL and RougeL of greedy answers) beside MMLU, mean over seeds with 95%
# intervals; the dashed line is the untuned NF4+DQ base, the dotted one MMLU's chance level.
if (!exists("scriptdir")) scriptdir = 'plots'
if (!exists("prefix")) prefix = 'dataset_quality'
width = 1800
height = 620
load scriptdir.'/common.gp'

f = datafile('summary')
if (!file_exists(f)) { print 'dataset_quality.gp: no '.f; exit status 1 }
# The first data row is the untuned base.
stats f every ::0::0 using 6 nooutput
base_nll = STATS_max
stats f every ::0::0 using 8 nooutput
base_rouge = STATS_max
stats f every ::0::0 using 10 nooutput
base_mmlu = STATS_max

set multiplot layout 1, 3 title 'Dataset suitability vs size vs quality (QLoRA Tables 5/6, tiny-model version): chat target vs MMLU' font ',15'
set style fill solid 0.55 border rgb '#444444'
set boxwidth 0.7
set bmargin 7
set xtics rotate by -35 left font ',11' noenhanced
set key top right
# Data rows after the base row (every ::1), x = row index.
set title 'held-out OASST1 response NLL (lower is better)'
set ylabel 'nats / token'
set autoscale y
plot f every ::1 using 0:6:xtic(1) with boxes lc rgb '#4477aa' notitle, \
     '' every ::1 using 0:6:7 with yerrorbars pt 0 lc rgb '#222222' notitle, \
     base_nll with lines dt 2 lc rgb '#aa3377' title 'no tuning'
set title 'RougeL F of greedy answers (higher is better)'
set ylabel 'RougeL'
set yrange [0:*]
plot f every ::1 using 0:8:xtic(1) with boxes lc rgb '#228833' notitle, \
     '' every ::1 using 0:8:9 with yerrorbars pt 0 lc rgb '#222222' notitle, \
     base_rouge with lines dt 2 lc rgb '#aa3377' title 'no tuning'
set title 'MMLU accuracy, qlora zero-shot prompts'
set ylabel 'accuracy'
set yrange [0:1]
plot f every ::1 using 0:10:xtic(1) with boxes lc rgb '#ccbb44' notitle, \
     '' every ::1 using 0:10:11 with yerrorbars pt 0 lc rgb '#222222' notitle, \
     base_mmlu with lines dt 2 lc rgb '#aa3377' title 'no tuning', \
     0.25 with lines dt 3 lc rgb '#666666' title 'chance'
unset multiplot
