# The figure both finetuning experiments draw (plots/lora_placement.gp, plots/qlora_vs_16bit.gp set the titles
# and load this): left, the held-out response NLL during finetuning, one line per configuration (mean over
# seeds) in a band from the best to the worst seed; right, the final NLL of every configuration as a dot
# (mean) with a bar from the best to the worst seed, the reference configuration as a dashed line, and the
# trainable parameters and training-state memory of each beside it.
# Needs: prefix, figure_title, figure_subtitle, reference (a config name).
width = 1700
height = 720
load scriptdir.'/common.gp'

summary = datafile('summary')
curves = datafile('curves')
if (!file_exists(summary) || !file_exists(curves)) { print prefix.'.gp: data files missing under '.datadir; exit status 1 }

set datafile missing 'NaN'
set key noenhanced
configs = system("awk '!/^#/ { gsub(/\"/, \"\", $1); printf \"%s \", $1 }' '".summary."'")
n = words(configs)
if (n == 0) { print prefix.'.gp: empty summary'; exit status 1 }
# Labels hold spaces: read them one by one (column 2 of the summary).
label_of(k) = system(sprintf("awk -F'\"' '!/^#/ { if (++i == %d) print $4 }' '%s'", k, summary))
palette = '#4e79a7 #f28e2b #59a14f #e15759 #76b7b2 #b07aa1 #edc948 #9c755f #ff9da7 #bab0ac'
color_of(k) = word(palette, (k - 1) % words(palette) + 1)
do for [k=1:n] { set linetype k lc rgb color_of(k) lw 2.2 pt 7 ps 1.1 }

stats summary using 9 nooutput
base_nll = STATS_min
stats summary using 12 nooutput
lowest = STATS_min
stats summary using 13 nooutput
highest = STATS_max
ref_row = sum [k=1:n] (word(configs, k) eq reference ? k : 0)

set multiplot title sprintf("{/:Bold %s}\n{/*0.85 %s}", figure_title, figure_subtitle) font ',15'

# ---------------------------------------------------------------- curves
set lmargin at screen 0.06
set rmargin at screen 0.43
set tmargin at screen 0.84
set bmargin at screen 0.11
set title 'held-out NLL during finetuning (line: mean over seeds; band: best to worst seed)' font ',12'
set xlabel 'optimizer steps'
set ylabel 'held-out response NLL (nats/token), lower is better'
set key top right font ',11' spacing 1.1 box lc rgb '#cccccc' opaque
set autoscale x
set yrange [*:*]
set style fill transparent solid 0.15 noborder
plot for [k=1:n] curves using 2:(strcol(1) eq word(configs, k) ? $4 : NaN):5 with filledcurves lc rgb color_of(k) notitle, \
     for [k=1:n] curves using 2:(strcol(1) eq word(configs, k) ? $3 : NaN) with linespoints lt k pi -1 ps 0.6 title label_of(k)

# ---------------------------------------------------------------- final NLL per configuration
set lmargin at screen 0.60
set rmargin at screen 0.80
unset key
set title 'final held-out NLL (dot: mean; bar: best to worst seed)' font ',12'
set xlabel 'held-out response NLL (nats/token)'
unset ylabel
set yrange [0.4:n + 0.6]
set ytics scale 0 font ',12'
set ytics (' ' 0)
do for [k=1:n] { set ytics add (label_of(k) n + 1 - k) }
span = highest - lowest
set xrange [lowest - 0.15 * span - 0.005 : highest + 0.15 * span + 0.005]
set format x '%.2f'
unset arrow
unset label
if (ref_row > 0) {
    stats summary every ::(ref_row - 1)::(ref_row - 1) using 10 nooutput
    set arrow 1 from first STATS_min, graph 0 to first STATS_min, graph 1 nohead dt 2 lw 1.5 lc rgb '#666666'
    set label 1 ' reference: '.label_of(ref_row) at first STATS_min, graph 0.985 left font ',10' tc rgb '#666666'
}
set label 2 sprintf('before finetuning: %.3f (fp32 base)', base_nll) at graph 0, graph -0.13 left font ',10' tc rgb '#666666'
# Trainable parameters and training-state memory (weights + adapters + gradients + AdamW moments), read
# counting from the end of the row since the text columns may hold spaces.
from_end(k, back) = system(sprintf("awk '!/^#/ { if (++i == %d) print $(NF - %d) }' '%s'", k, back, summary)) + 0
set label 3 'trainable params | training-state memory' at screen 0.815, first n + 0.75 left font ',10' tc rgb '#666666'
do for [k=1:n] {
    set label 10 + k sprintf('%8d | %7.0f KiB', from_end(k, 7), from_end(k, 2) / 1024.0) \
        at screen 0.815, first n + 1 - k left font 'Courier,11' tc rgb '#333333'
}
plot summary using 10:(n - $0):12:13:($0 + 1) with xerrorbars lc variable lw 2 pt 7 ps 1.6
unset multiplot
