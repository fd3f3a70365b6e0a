# Figure of experiments/paged_optimizer.c: left, the accounted memory (peak so far) step by step of a QLoRA
# finetune whose sequence length jumps mid-run, without a budget and under the budget with the plain and the
# paged optimizer (the plain one stops at the spike: a cross marks where); right, the step time of the
# paged optimizer against the plain one with no memory pressure.
if (!exists("scriptdir")) scriptdir = 'plots'
if (!exists("prefix")) prefix = 'paged_optimizer'
width = 1600
height = 650
load scriptdir.'/common.gp'

steps = datafile('steps')
timing = datafile('timing')
if (!file_exists(steps) || !file_exists(timing)) { print prefix.'.gp: data files missing under '.datadir; exit status 1 }
set key noenhanced
mib(b) = b / 1048576.0

runs = 'unbudgeted paged_unbudgeted budget_plain budget_paged'
titles = '"plain optimizer, no budget" "paged optimizer, no budget" "plain optimizer, budget: stopped" "paged optimizer, budget"'
colors = '#4e79a7 #76b7b2 #e15759 #59a14f'
do for [k=1:4] { set linetype k lc rgb word(colors, k) lw 2.4 dt solid pt 7 ps 0.7 }
set linetype 2 dt 2

stats steps using 5 nooutput
budget = STATS_max
stats steps using (strcol(1) eq 'budget_plain' ? $2 : NaN) nooutput
stop_step = STATS_max
stop_peak = 0
stats steps using (strcol(1) eq 'budget_plain' && $2 == stop_step ? $4 : NaN) nooutput
stop_peak = STATS_max
stats steps using 3 nooutput
short_len = STATS_min
long_len = STATS_max

set multiplot title "{/:Bold Paged optimizer: the sequence-length spike under a memory budget}\n{/*0.85 QLoRA NF4+DQ; memory is qlab's exact accounting (fp32 base copy, 4-bit weights, adapters, gradients, optimizer, activations, scratch)}" font ',15'

set lmargin at screen 0.07
set rmargin at screen 0.60
set tmargin at screen 0.80
set bmargin at screen 0.12
set title sprintf('accounted memory, peak so far (rows of %d tokens, then %d)', short_len, long_len) font ',12'
set xlabel 'optimizer step'
set ylabel 'MiB'
set key at graph 0.03, graph 0.78 left Left reverse font ',11' spacing 1.15 box lc rgb '#cccccc' opaque
set arrow 1 from graph 0, first mib(budget) to graph 1, first mib(budget) nohead dt 3 lw 1.8 lc rgb '#222222'
set label 1 sprintf('budget %.2f MiB', mib(budget)) at graph 0.99, first mib(budget) right offset 0, 0.7 font ',11'
set label 2 sprintf('refused at step %d', stop_step + 1) at first stop_step, first mib(stop_peak) left offset 1, -0.8 font ',10' tc rgb '#e15759'
set yrange [0:*]
plot for [k=1:4] steps using 2:(strcol(1) eq word(runs, k) ? mib($4) : NaN) with linespoints lt k title word(titles, k), \
     steps using 2:(strcol(1) eq 'budget_plain' && $2 == stop_step ? mib($4) : NaN) with points pt 2 ps 3 lw 3 lc rgb '#e15759' notitle

unset arrow
unset label
set lmargin at screen 0.68
set rmargin at screen 0.97
set title "step time, no memory pressure (median over repeats)\n{/*0.85 labels vs plain: whole step / the update alone (share of a step)}" font ',12'
set xlabel ''
set ylabel 'seconds per step'
unset key
set style fill solid 0.75 noborder
set boxwidth 0.6
set yrange [0:*]
set xrange [-0.6:2.6]
set xtics ('plain' 0, "paged,\nsmall resident" 1, "paged,\nall resident" 2) font ',11'
plot timing using 0:2:($0 + 1) with boxes lc variable, \
     timing using 0:2:(sprintf("step %+.1f%%\nupdate %+.2f%%", $4, $6)) with labels offset 0, 1.3 font ',11'
unset multiplot
