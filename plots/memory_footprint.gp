# Figure of experiments/memory_footprint.c. Left: measured peak resident memory of qlab's finetuning steps
# against the memory model's prediction (log-log, the diagonal and the +-10% target band). Right: the memory
# model at the paper's settings, one panel per setting, memory per component stacked against LLaMA size,
# with the paper's totals as markers.
if (!exists("scriptdir")) scriptdir = 'plots'
if (!exists("prefix")) prefix = 'memory_footprint'
width = 1800
height = 620
load scriptdir.'/common.gp'

measured = datafile('measured')
paper = datafile('paper_settings')
have_paper = file_exists(paper)
if (!file_exists(measured)) { print 'memory_footprint.gp: no measured table under '.datadir; exit status 1 }

# columns of the tables (declared in experiments/memory_footprint.c)
runs = 'full lora qlora-nf4 qlora-nf4-dq'
run_colors = '#4e79a7 #f28e2b #59a14f #e15759'
components = 'quant\_weights fp\_weights adapters gradients input\_gradients optimizer activations scratch'
component_colors = '#59a14f #4e79a7 #f28e2b #e15759 #b07aa1 #edc948 #76b7b2 #9c755f'

npanels = have_paper ? 4 : 1
left = 0.05; right = 0.99; gap = 0.05; top = 0.80; bottom = 0.14
panel_width = (right - left - (npanels - 1) * gap) / npanels
set multiplot title "{/:Bold Memory of finetuning: qlab measured vs the memory model, and the model at the paper's settings}" font ',15'

set lmargin at screen left; set rmargin at screen left + panel_width
set tmargin at screen top; set bmargin at screen bottom
set title "measured peak RSS vs prediction\n{/*0.8 open: no checkpointing, filled: checkpointing}" font ',13'
set logscale xy
set xlabel 'predicted (MB)'
set ylabel 'measured VmHWM (MB)'
set key top left font ',10'
stats measured using 12 nooutput
lo = STATS_min * 0.8; hi = STATS_max * 1.25
set xrange [lo:hi]; set yrange [lo:hi]
plot x with lines lc rgb '#888888' dt 1 title 'measured = predicted', \
     1.1 * x with lines lc rgb '#bbbbbb' dt 2 title '{/Symbol \261}10%', \
     0.9 * x with lines lc rgb '#bbbbbb' dt 2 notitle, \
     for [i=1:words(runs)] measured using (strcol(4) eq word(runs, i) && $5 == 0 ? $12 : NaN):11 \
         with points pt 6 ps 1.4 lc rgb word(run_colors, i) title word(runs, i), \
     for [i=1:words(runs)] measured using (strcol(4) eq word(runs, i) && $5 == 1 ? $12 : NaN):11 \
         with points pt 7 ps 1.1 lc rgb word(run_colors, i) notitle
unset logscale; unset xrange; unset yrange
if (!have_paper) { unset multiplot; exit }

settings = 'full16 lora16 qlora'
setting_titles = '"16-bit full finetuning, Adam" "LoRA r 64 on a 16-bit base" "QLoRA NF4+DQ r 64, paged optimizer"'
set style data histograms
set style histogram rowstacked
set style fill solid 0.85 border lc rgb '#444444'
set boxwidth 0.65
set xlabel 'LLaMA size'
set ylabel 'GB'
set yrange [0:*]
do for [p=1:3] {
    s = word(settings, p)
    src = "< awk '$3 ~ /^\"".s."\"$/' '".paper."'"
    x0 = left + p * (panel_width + gap)
    set lmargin at screen x0; set rmargin at screen x0 + panel_width
    set title word(setting_titles, p) font ',13'
    if (p == 3) { set key top left font ',9' } else { unset key }
    # the paper gives totals for QLoRA and a bound for 16-bit full finetuning of 65B, none for LoRA
    if (p == 2) {
        plot for [c=4:11] src using (column(c) / 1000):xtic(1) lc rgb word(component_colors, c - 3) \
                 title word(components, c - 3)
    } else {
        plot for [c=4:11] src using (column(c) / 1000):xtic(1) lc rgb word(component_colors, c - 3) \
                 title word(components, c - 3), \
             src using 0:15 with points pt 9 ps 2 lc rgb '#000000' title (p == 1 ? "paper: more than" : "paper's total")
    }
}
unset multiplot
