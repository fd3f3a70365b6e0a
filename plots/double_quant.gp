# Figure of experiments/double_quant.c: quantization error (SQNR, higher is better) against the bits each
# parameter really costs, one line per 4-bit type, open markers with fp32 block constants and filled
# markers with double-quantized constants, one panel per weight distribution.
if (!exists("scriptdir")) scriptdir = 'plots'
if (!exists("prefix")) prefix = 'double_quant'
load scriptdir.'/common.gp'

tables = 'gaussian student_t stories260k'
titles = '"Gaussian N(0, 1)" "Student-t, {/Symbol n} = 3 (heavy tails)" "stories260K: real projection weights"'
present = ''
do for [k=1:words(tables)] {
    if (file_exists(datafile(word(tables, k)))) { present = present.' '.word(tables, k) }
}
npanels = words(present)
if (npanels == 0) { print 'double_quant.gp: no data files under '.datadir; exit status 1 }
title_of(t) = word(titles, sum [k=1:words(tables)] (word(tables, k) eq t ? k : 0))

# The data types present, in file order (the rows of one type are contiguous).
first = datafile(word(present, 1))
types = system("awk '!/^#/ { gsub(/\"/, \"\", $1); if (!seen[$1]++) printf \"%s \", $1 }' '".first."'")
ntypes = words(types)
dq_types = system("awk '!/^#/ && $3 == 1 { gsub(/\"/, \"\", $1); if (!seen[$1]++) printf \"%s \", $1 }' '".first."'")

# x: bits per parameter, on a log scale of the part above the 4-bit codes, so block sizes 32..4096 are
# evenly spread; the tic labels show the total.
overhead(bits) = bits - 4
set logscale x
set xrange [0.0015:1.4]
set xtics ('4.002' 0.002, '4.01' 0.01, '4.03' 0.03, '4.1' 0.1, '4.3' 0.3, '5' 1.0)
set mxtics default
# Along the top: where each block size sits without DQ (32 bits of fp32 absmax per block). Drawn as
# labels rather than an x2 axis, which gnuplot 5.4 cannot drop again for the legend strip.
block_sizes = '32 64 128 256 512 1024 2048 4096'
top_labels = 'do for [b=1:words(block_sizes)] { bs = word(block_sizes, b) + 0; \
    set label 10 + b sprintf("%d", bs) at first 32.0 / bs, graph 1.035 center font ",10" tc rgb "#666666"; \
    set arrow 10 + b from first 32.0 / bs, graph 1.0 to first 32.0 / bs, graph 1.015 nohead lc rgb "#666666" }; \
    set label 10 "block size (without DQ)" at graph 0.5, graph 1.09 center font ",11" tc rgb "#666666"'
set format y '%g'

left = 0.06; right = 0.985; gap = 0.045; top = 0.72; bottom = 0.25
panel_width = (right - left - (npanels - 1) * gap) / npanels

set multiplot title "{/:Bold Double quantization: the same error for fewer bits}\n{/*0.85 quantization error against the storage each weight really costs (codes + block constants), 4-bit data types, block sizes 32 to 4096}" font ',15'
do for [p=1:npanels] {
    table = word(present, p)
    f = datafile(table)
    set lmargin at screen left + (p - 1) * (panel_width + gap)
    set rmargin at screen left + (p - 1) * (panel_width + gap) + panel_width
    set tmargin at screen top
    set bmargin at screen bottom
    set title title_of(table) font ',14' offset 0, 1.4
    set xlabel 'bits per parameter (log scale above 4)'
    if (p == 1) { set ylabel 'SQNR (dB), higher is better' } else { unset ylabel }
    set autoscale y
    stats [*:*] f using 7 nooutput  # the range: single-column stats would clip to xrange
    set yrange [floor(STATS_min / 2) * 2 - 1 : ceil(STATS_max / 2) * 2 + (p == 1 ? 2 : 1)]
    # The paper's accounting, on the first panel: NF4 at block 64 costs 4.5 bits/param, 4.127 with DQ.
    unset arrow; unset label
    eval top_labels
    if (p == 1) {
        y64 = system("awk -v t='\"nf4\"' '$1 == t && $2 == 64 && $3 == 0 { print $7 }' '".f."'")
        if (strlen(y64) > 0) {
            y64 = y64 + 0.0
            set arrow 1 from 0.5, y64 + 1.7 to 0.127, y64 + 1.7 head filled size screen 0.008, 25 lw 1.5 lc rgb '#333333' front
            set label 1 'NF4, block 64: DQ 4.5 → 4.127 bits' at 0.25, y64 + 2.25 center font ',11' tc rgb '#333333' front
        }
    }
    unset key
    plot for [i=1:ntypes] f using (strcol(1) eq word(types, i) && $3 == 0 ? overhead($4) : NaN):7 \
             with linespoints lw 2 pt type_point(word(types, i)) ps 1.3 lc rgb type_color(word(types, i)) notitle, \
         for [i=1:words(dq_types)] f using (strcol(1) eq word(dq_types, i) && $3 == 1 ? overhead($4) : NaN):7 \
             with linespoints lw 2 dt (4, 3) pt type_point(word(dq_types, i)) + 1 ps 1.3 \
             lc rgb type_color(word(dq_types, i)) notitle
}

# The legend, shared by the panels, in a strip of its own below them.
set lmargin at screen 0.03; set rmargin at screen 0.97; set tmargin at screen 0.13; set bmargin at screen 0.005
unset title; unset xlabel; unset ylabel; unset x2label; unset arrow; unset label
unset border; unset tics; unset grid; unset logscale
set xrange [0:1]; set yrange [0:1]
set key inside center center horizontal maxcols 6 Left reverse samplen 3 width 2 spacing 1.4 font ',12' noenhanced
plot for [i=1:ntypes] keyentry with linespoints lw 2 pt type_point(word(types, i)) ps 1.3 \
         lc rgb type_color(word(types, i)) title word(types, i), \
     keyentry with linespoints lw 2 pt 6 ps 1.3 lc rgb '#222222' title 'fp32 constants (open)', \
     keyentry with linespoints lw 2 dt (4, 3) pt 7 ps 1.3 lc rgb '#222222' title 'double-quantized (filled)', \
     2 notitle  # off the [0:1] range, never drawn: a plot of keyentries alone trips an assertion in gnuplot 5.4
unset multiplot
